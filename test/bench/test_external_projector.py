"""bench/external_projector.py: X-ray frames from SpekPy, xraydb and DiffDRR (the benchmark venv only).

Run with ``.venv-bench/bin/python -m pytest test/bench`` (``scripts/setup_bench.sh`` makes the
venv); elsewhere every test is skipped, since SpekPy, xraydb and DiffDRR are never installed
next to the runtime stack.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

REASON = "benchmark venv only (scripts/setup_bench.sh): needs {}"
pytest.importorskip("spekpy", reason=REASON.format("SpekPy"))
pytest.importorskip("xraydb", reason=REASON.format("xraydb"))
pytest.importorskip("diffdrr.drr", reason=REASON.format("DiffDRR 0.6.1"))
pytest.importorskip("torchio", reason=REASON.format("torchio (DiffDRR's reader)"))

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import external_projector as ep  # noqa: E402

from diffdrr_ros.core.geometry import CArmJoints, Detector, default_prior, initial_pose  # noqa: E402
from diffdrr_ros.core.geometry.rotations import axis_angle_to_matrix, make_transform  # noqa: E402
from diffdrr_ros.core.volume import Volume, make_phantom  # noqa: E402

SIZE = 48


def _detector(size: int = SIZE) -> Detector:
    return Detector(size, size, spacing_mm=(400 / size,) * 2, sdd_mm=1020.0, sid_mm=750.0)


@pytest.fixture(scope="module")
def head() -> Volume:
    return make_phantom("head_small")


@pytest.fixture(scope="module")
def oblique_pose(head: Volume) -> torch.Tensor:
    table = make_transform(axis_angle_to_matrix(torch.tensor([0.03, -0.05, 0.04], dtype=torch.float64)),
                           torch.tensor([6.0, -5.0, 9.0], dtype=torch.float64)) @ default_prior(head.center)
    return initial_pose(CArmJoints(math.radians(35.0), math.radians(12.0)), table)


@pytest.fixture(scope="module")
def projector(head: Volume) -> ep.ExternalProjector:
    return ep.ExternalProjector(head, _detector())


def test_diffdrr_mono_line_integral_matches_ours(head, oblique_pose, projector):
    check = ep.geometry_check(head, projector.detector, oblique_pose, projector.rays)
    assert check["max_line_integral_ours"] > 1.0  # the rays cross the head
    assert check["rel_rms"] < 1e-4, check
    assert check["max_abs_over_max"] < 1e-3, check


def test_geometry_check_detects_a_wrong_pose(head, oblique_pose, projector):
    """The check can fail: a 2 mm shift of the CT changes DiffDRR's image against ours by far more than 1e-4."""
    from diffdrr_ros.core.drr import render

    mu = head.to_attenuation()
    shifted = oblique_pose @ make_transform(torch.eye(3, dtype=torch.float64),
                                            torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
    dd = projector.rays.integrate(mu.data, shifted)
    ours = render(mu, oblique_pose, projector.detector, method="siddon").double().numpy()
    assert np.linalg.norm(dd - ours) / np.linalg.norm(ours) > 1e-2


def test_spectrum_mean_energy_is_sane_for_80_kvp(projector):
    e = projector.mean_energy_kev()
    assert 38.0 < e < 48.0, e  # a 2.5 mm Al filtered 80 kVp tungsten beam: about 42-43 keV
    assert projector.energies.max() < 80.0
    hard = ep.ExternalProjector(make_phantom("head_tiny"), _detector(16), ep.ExternalStyle(kvp=120.0))
    assert hard.mean_energy_kev() > e + 5.0


def test_heel_effect_darkens_the_anode_side(head):
    det = _detector(32)
    with_heel = ep.ExternalProjector(make_phantom("head_tiny"), det).photons.sum(0)
    without = ep.ExternalProjector(make_phantom("head_tiny"), det, ep.ExternalStyle(heel=False)).photons.sum(0)
    rows = with_heel.mean(1)
    assert rows[2] < 0.9 * rows[det.height // 2]  # anode at row 0
    assert rows[-3] > 0.95 * rows[det.height // 2]
    assert np.allclose(without, without[0, 0])


def _slab_phantom(insert_hu: float) -> Volume:
    """40 x 40 x 40 voxels of 3 mm: water-like tissue (40 HU) with a central cube of ``insert_hu``."""
    data = torch.full((40, 40, 40), -1000.0)
    data[5:35, 5:35, 5:35] = 40.0
    data[14:26, 14:26, 14:26] = insert_hu
    return Volume.from_array(data, (3.0, 3.0, 3.0), kind="hu")


def test_more_bone_gives_a_darker_frame():
    det = _detector(32)
    frames = {}
    for hu in (300.0, 1200.0):
        vol = _slab_phantom(hu)
        pose = initial_pose(CArmJoints(0.0, 0.0), default_prior(vol.center))
        frames[hu] = ep.ExternalProjector(vol, det, ep.ExternalStyle(photons=1e6)).frame(pose, 0)
    centre = (slice(13, 19), slice(13, 19))
    assert frames[1200.0].frame[centre].mean() < 0.9 * frames[300.0].frame[centre].mean()
    assert frames[1200.0].thickness["bone"][centre].mean() > 2 * frames[300.0].thickness["bone"][centre].mean()
    ring = np.zeros((32, 32), dtype=bool)  # the tissue around the insert's shadow looks the same
    ring[6:9, 10:22] = True
    assert np.allclose(frames[1200.0].primary[ring], frames[300.0].primary[ring], rtol=1e-6)


@pytest.mark.parametrize("spr", [0.0, 0.25, 0.5])
def test_scatter_to_primary_ratio_is_as_configured(head, oblique_pose, projector, spr):
    proj = ep.ExternalProjector.__new__(ep.ExternalProjector)
    proj.__dict__.update(projector.__dict__)
    proj.style = replace(projector.style, scatter_to_primary=spr)
    fr = proj.frame(oblique_pose, 1)
    m = proj.shadow(fr.primary, fr.open_field)
    assert m.sum() > 0.3 * fr.mask.sum()  # behind the head: a good part of the field
    assert fr.scatter[m].mean() / fr.primary[m].mean() == pytest.approx(spr, abs=1e-9)
    if spr > 0:  # broad: it fills the shadow of the head, and reaches outside the collimator
        assert fr.scatter[m].min() > 0.05 * fr.scatter[m].max()
        assert fr.scatter[~fr.mask].max() > 0


def test_frame_is_a_12_bit_frame_with_the_flat_field_i0(head, oblique_pose, projector):
    fr = projector.frame(oblique_pose, 2)
    assert fr.frame.dtype == np.float32 and fr.frame.shape == (SIZE, SIZE)
    assert np.array_equal(fr.frame, np.round(fr.frame)) and fr.frame.min() >= 0 and fr.frame.max() <= 4095
    assert fr.i0_center == 3000.0 and 0.8 * 3000 < fr.i0 < 1.05 * 3000
    corners = np.concatenate([fr.frame[:4, :4], fr.frame[:4, -4:], fr.frame[-4:, :4], fr.frame[-4:, -4:]])
    assert corners.mean() < 0.05 * fr.i0  # collimated: scatter and electronic noise only
    # seeded: the same frame again, another with another seed
    assert np.array_equal(projector.frame(oblique_pose, 2).frame, fr.frame)
    assert not np.array_equal(projector.frame(oblique_pose, 3).frame, fr.frame)


def test_hu_decomposition():
    hu = np.linspace(-1000.0, 3000.0, 401)
    rho, parts = ep.hu_to_materials(hu)
    assert set(parts) == {"lung", "adipose", "muscle", "bone"}
    assert np.allclose(sum(parts.values()), rho)
    assert rho[0] == 0.0 and np.all(np.diff(rho) > 0)
    assert parts["bone"][hu < 120].max() == 0.0 and np.allclose(parts["bone"][hu >= 1500], rho[hu >= 1500])
    # consistent with the HU scale: at 70 keV (a CT's effective energy) mu / mu_water - 1 tracks HU
    import xraydb

    mu_w = 0.111894 * xraydb.mu_elam("H", 70e3) + 0.888106 * xraydb.mu_elam("O", 70e3)
    probe = np.array([-500.0, -100.0, 0.0, 50.0, 300.0, 1000.0])
    _, parts_p = ep.hu_to_materials(probe)
    mu = sum(parts_p[m] * ep.mass_attenuation(m, np.array([70.0]))[0] for m in ep.MATERIALS)
    assert np.abs(1000 * (mu / mu_w - 1) - probe).max() < 60.0


def test_mass_attenuation_kinds():
    e = np.array([30.0, 60.0])
    total = ep.mass_attenuation("bone", e)
    assert ep.mass_attenuation("bone", e, "photo+incoherent").max() < total.max()
    assert 0.25 < total[1] < 0.4  # cortical bone at 60 keV: about 0.31 cm^2/g
