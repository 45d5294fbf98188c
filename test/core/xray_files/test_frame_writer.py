"""Writing frames: formats, 16-bit scaling, the sidecar beside each file."""

import json

import numpy as np
import pytest

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.xray_files import FrameSidecar, read_stored_image, stored_uint16, write_frame

DET = Detector(8, 12, spacing_mm=(3.0, 3.0), sdd_mm=1020.0)


def test_stored_uint16_spans_the_full_scale_and_inverts_exactly():
    x = np.linspace(0.25, 7.5, 96).reshape(8, 12)
    stored, lo, hi = stored_uint16(x)
    assert stored.dtype == np.uint16 and (stored.min(), stored.max()) == (0, 65535) and (lo, hi) == (0.25, 7.5)
    np.testing.assert_allclose(lo + stored / 65535 * (hi - lo), x, atol=(hi - lo) / 65535)
    flat, lo, hi = stored_uint16(np.full((2, 2), 3.0))
    assert flat.max() == 0 and lo == hi == 3.0


def test_every_format_gets_a_sidecar_with_scaling_pose_and_detector(tmp_path):
    x = np.linspace(0.0, 5.0, 96, dtype=np.float32).reshape(8, 12)
    for suffix in (".npy", ".png", ".tif", ".dcm"):
        path, side = write_frame(tmp_path / f"f{suffix}", x, domain="line_integral", detector=DET,
                                 pose_carm_deg_mm=[1, 2, 3, 4, 5, 6])
        payload = json.loads(side.read_text())
        assert side.name == f"f{suffix}.json" and payload["format"] == "diffdrr-ros frame"
        assert payload["pose_carm_deg_mm"] == [1, 2, 3, 4, 5, 6] and payload["detector"]["sid_mm"] == 510.0
        sidecar = FrameSidecar.read(path)
        if suffix == ".npy":
            assert sidecar.stored_range is None
            np.testing.assert_array_equal(np.load(path), x)
        else:
            assert sidecar.stored_range == (0.0, 5.0) and sidecar.full_scale == 65535
            np.testing.assert_allclose(sidecar.values(read_stored_image(path)), x, atol=5.0 / 65535)


def test_unsupported_formats_and_domains_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported frame format \.jpg"):
        write_frame(tmp_path / "f.jpg", np.ones((8, 12)), domain="intensity", detector=DET, pose_carm_deg_mm=[0] * 6)
    with pytest.raises(ValueError, match="domain must be one of"):
        write_frame(tmp_path / "f.png", np.ones((8, 12)), domain="counts", detector=DET, pose_carm_deg_mm=[0] * 6)
