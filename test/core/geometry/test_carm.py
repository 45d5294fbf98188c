"""C-arm geometry: the frame conventions documented in geometry.py, and round trips."""

import math

import torch

from diffdrr_ros.core.geometry import (
    Detector,
    carm_angles,
    carm_rotation,
    carm_to_matrix,
    detector_points,
    matrix_to_carm,
)
from diffdrr_ros.core.geometry.rotations import apply_transform, invert_transform

D = torch.float64


def _source_and_detector_in_iso(angles):
    """Source and detector centre in the iso (LPS-aligned) frame for C-arm angles."""
    t_cam_iso = carm_to_matrix(angles, torch.zeros(3, dtype=D), torch.zeros(3, dtype=D))
    t_iso_cam = invert_transform(t_cam_iso)
    pts = torch.tensor([[0.0, 0.0, -500.0], [0.0, 0.0, 500.0]], dtype=D)
    return apply_transform(t_iso_cam, pts)


def test_ap_view_source_posterior_detector_anterior():
    src, det = _source_and_detector_in_iso(torch.zeros(3, dtype=D))
    torch.testing.assert_close(src, torch.tensor([0.0, 500.0, 0.0], dtype=D))  # +y = posterior
    torch.testing.assert_close(det, torch.tensor([0.0, -500.0, 0.0], dtype=D))


def test_lao_moves_detector_to_patient_left_and_cranial_to_head():
    _, det = _source_and_detector_in_iso(torch.tensor([0.0, math.pi / 2, 0.0], dtype=D))
    torch.testing.assert_close(det, torch.tensor([500.0, 0.0, 0.0], dtype=D), atol=1e-9, rtol=0)
    _, det = _source_and_detector_in_iso(torch.tensor([math.radians(30), 0.0, 0.0], dtype=D))
    assert det[2] > 0 and det[1] < 0  # towards the head (+z superior), still anterior


def test_detector_rotation_keeps_beam_axis():
    r0 = carm_rotation(torch.zeros(3, dtype=D))
    r = carm_rotation(torch.tensor([0.0, 0.0, 0.4], dtype=D))
    torch.testing.assert_close(r[:, 2], r0[:, 2])
    assert not torch.allclose(r[:, 0], r0[:, 0])


def test_carm_round_trip_random():
    g = torch.Generator().manual_seed(0)
    angles = (torch.rand(64, 3, generator=g, dtype=D) - 0.5) * torch.tensor([2.8, 6.0, 6.0], dtype=D)
    trans = torch.randn(64, 3, generator=g, dtype=D) * 50
    center = torch.tensor([10.0, -20.0, 30.0], dtype=D)
    tf = carm_to_matrix(angles, trans, center)
    a2, t2 = matrix_to_carm(tf, center)
    torch.testing.assert_close(carm_to_matrix(a2, t2, center), tf)
    torch.testing.assert_close(t2, trans)
    wrap = torch.remainder(a2 - angles + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(wrap, torch.zeros_like(wrap), atol=1e-9, rtol=0)
    torch.testing.assert_close(carm_angles(carm_rotation(angles)), a2)


def test_ct_centre_maps_to_isocentre_at_zero_translation():
    center = torch.tensor([5.0, 6.0, 7.0], dtype=D)
    tf = carm_to_matrix(torch.tensor([0.3, -0.2, 0.1], dtype=D), torch.zeros(3, dtype=D), center)
    torch.testing.assert_close(apply_transform(tf, center[None])[0], torch.zeros(3, dtype=D))


def test_detector_points_layout():
    det = Detector(3, 4, spacing_mm=(2.0, 0.5), sdd_mm=1000.0, sid_mm=600.0, principal_point_mm=(1.0, -2.0))
    src, pix = detector_points(det, dtype=D)
    torch.testing.assert_close(src, torch.tensor([0.0, 0.0, -600.0], dtype=D))
    assert pix.shape == (3, 4, 3)
    # Column spacing along x, row spacing along y, plane at SDD - SID.
    torch.testing.assert_close(pix[0, 1, 0] - pix[0, 0, 0], torch.tensor(0.5, dtype=D))
    torch.testing.assert_close(pix[1, 0, 1] - pix[0, 0, 1], torch.tensor(2.0, dtype=D))
    torch.testing.assert_close(pix[..., 2], torch.full((3, 4), 400.0, dtype=D))
    # Principal point offset moves the pixel grid.
    torch.testing.assert_close(pix[..., 0].mean(), torch.tensor(1.0, dtype=D))
    torch.testing.assert_close(pix[..., 1].mean(), torch.tensor(-2.0, dtype=D))


def test_detector_defaults_and_validation():
    det = Detector(10, 20, sdd_mm=1000.0)
    assert det.sid == 500.0 and det.shape == (10, 20)
    half = det.scaled(2)
    assert half.shape == (5, 10) and half.spacing_mm == (2.0, 2.0)
    for bad in (dict(height=0, width=5), dict(height=5, width=5, sdd_mm=-1), dict(height=5, width=5, sid_mm=2000)):
        try:
            Detector(**bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_intrinsic_matrix_projects_like_the_rays():
    det = Detector(5, 7, spacing_mm=(1.5, 1.0), sdd_mm=900.0, principal_point_mm=(2.0, 3.0))
    src, pix = detector_points(det, dtype=D)
    k = det.intrinsic_matrix()
    rel = pix - src  # rays from the source, camera axes
    uvw = rel.reshape(-1, 3) @ k.T
    uv = uvw[:, :2] / uvw[:, 2:]
    rows, cols = torch.meshgrid(torch.arange(5, dtype=D), torch.arange(7, dtype=D), indexing="ij")
    torch.testing.assert_close(uv, torch.stack([cols.ravel(), rows.ravel()], -1))
