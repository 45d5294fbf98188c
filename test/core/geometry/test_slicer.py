"""Slicer's RAS mm <-> the package's LPS (m on ROS): the matrices of docs/geometry.md ("OpenIGTLink / 3D Slicer")."""

import torch

from diffdrr_ros.core.geometry import rotations as rt
from diffdrr_ros.core.geometry.slicer import (
    lps_m_to_ras_mm,
    lps_to_ras,
    lps_to_ras_points,
    ras_mm_to_lps_m,
    ras_to_lps,
    ras_to_lps_points,
)

F = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
S = torch.diag(torch.tensor([1000.0, 1000.0, 1000.0, 1.0], dtype=torch.float64))


def _random_transforms(n: int, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rot = rt.quaternion_to_matrix(torch.randn(n, 4, generator=g, dtype=torch.float64))
    return rt.make_transform(rot, scale * torch.randn(n, 3, generator=g, dtype=torch.float64))


def test_matches_the_documented_matrices():
    t = _random_transforms(20)
    torch.testing.assert_close(lps_m_to_ras_mm(t), S @ F @ t @ F @ torch.linalg.inv(S))
    torch.testing.assert_close(lps_to_ras(t), F @ t @ F)


def test_round_trips_and_the_inverse_is_the_inverse():
    t = _random_transforms(50, seed=1)
    torch.testing.assert_close(ras_mm_to_lps_m(lps_m_to_ras_mm(t)), t)
    torch.testing.assert_close(lps_m_to_ras_mm(ras_mm_to_lps_m(t)), t)
    torch.testing.assert_close(ras_to_lps(lps_to_ras(t)), t)
    pts = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(ras_to_lps_points(lps_to_ras_points(pts)), pts)


def test_a_known_point_maps_to_the_documented_ras_coordinates():
    # The CT 10 mm to the patient's left, 20 mm posterior, 30 mm superior of the isocentre,
    # turned 90 deg about the patient's long axis (z): LPS, metres, as on /tf.
    rot = rt.rot_z(torch.tensor(torch.pi / 2, dtype=torch.float64))
    t_lps_m = rt.make_transform(rot, torch.tensor([0.010, 0.020, 0.030], dtype=torch.float64))
    t_ras_mm = lps_m_to_ras_mm(t_lps_m)
    # Its origin in RAS: 10 mm left (R = -10), 20 mm posterior (A = -20), 30 mm superior (S = 30).
    torch.testing.assert_close(t_ras_mm[:3, 3], torch.tensor([-10.0, -20.0, 30.0], dtype=torch.float64))
    # A CT point 5 mm along the CT's own +L axis: in LPS m it is at T @ (0.005, 0, 0) = (0.010, 0.025, 0.030)
    # (the 90 deg turn takes +L to +P); in RAS mm it is (R, A, S) = (-10, -25, 30) and the CT's RAS
    # coordinates of that point are (-5, 0, 0).
    p_ct_ras = torch.tensor([-5.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(t_ras_mm @ p_ct_ras, torch.tensor([-10.0, -25.0, 30.0, 1.0], dtype=torch.float64))
    # The same through LPS: x_lps_m = T @ x_ct_lps_m, then F and mm.
    p_ct_lps_m = torch.tensor([0.005, 0.0, 0.0, 1.0], dtype=torch.float64)
    x = t_lps_m @ p_ct_lps_m
    torch.testing.assert_close(lps_to_ras_points(x[:3] * 1000.0), torch.tensor([-10.0, -25.0, 30.0],
                                                                               dtype=torch.float64))


def test_rotation_stays_a_rotation_batched_and_keeps_dtype():
    t = _random_transforms(12, seed=2).reshape(3, 4, 4, 4).to(torch.float32)
    before = t.clone()
    out = lps_m_to_ras_mm(t)
    torch.testing.assert_close(t, before, atol=0, rtol=0)  # the input is not changed in place
    assert out.shape == t.shape and out.dtype == torch.float32
    r = out[..., :3, :3]
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3).expand_as(r), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 3, :], t[..., 3, :])  # bottom row (0, 0, 0, 1) stays
    torch.testing.assert_close(ras_mm_to_lps_m(out), t)
