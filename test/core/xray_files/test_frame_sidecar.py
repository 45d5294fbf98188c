"""The frame sidecar: round trip, validation, foreign or broken JSON."""

import pytest

from diffdrr_ros.core.xray_files import FrameSidecar, SidecarError, sidecar_path


def test_round_trip_and_validation(tmp_path):
    frame = tmp_path / "f.png"
    side = FrameSidecar(domain="intensity", stored_range=(0.01, 0.9), full_scale=65535, i0=2.0,
                        pose_carm_deg_mm=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0), detector={"height": 2, "width": 3})
    assert side.write(frame) == sidecar_path(frame) == tmp_path / "f.png.json"
    assert FrameSidecar.read(frame) == side
    assert FrameSidecar.read(tmp_path / "other.png") is None
    with pytest.raises(SidecarError, match="domain"):
        FrameSidecar(domain="counts")
    with pytest.raises(SidecarError, match="go together"):
        FrameSidecar(domain="intensity", stored_range=(0.0, 1.0))


def test_foreign_or_broken_sidecars_are_named(tmp_path):
    frame = tmp_path / "f.png"
    sidecar_path(frame).write_text('{"something": "else"}')
    with pytest.raises(SidecarError, match="not a 'diffdrr-ros frame' sidecar"):
        FrameSidecar.read(frame)
    sidecar_path(frame).write_text("{not json")
    with pytest.raises(SidecarError, match="cannot read"):
        FrameSidecar.read(frame)
