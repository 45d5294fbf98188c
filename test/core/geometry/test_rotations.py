"""Rotation conversions: round trips, agreement between parameterisations, se(3)."""

import math

import torch

from diffdrr_ros.core.geometry import rotations as rt


def _random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return rt.quaternion_to_matrix(q)


def test_matrices_are_rotations():
    r = _random_rotations(50)
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(50, dtype=torch.float64))


def test_quaternion_round_trip():
    r = _random_rotations(100, seed=1)
    torch.testing.assert_close(rt.quaternion_to_matrix(rt.matrix_to_quaternion(r)), r)


def test_axis_angle_round_trip_including_near_pi_and_zero():
    g = torch.Generator().manual_seed(2)
    axis = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=-1)
    angles = torch.tensor([0.0, 1e-9, 0.3, 2.0, math.pi - 1e-6, 3.0], dtype=torch.float64)
    omega = axis * angles[:, None]
    back = rt.matrix_to_axis_angle(rt.axis_angle_to_matrix(omega))
    torch.testing.assert_close(rt.axis_angle_to_matrix(back), rt.axis_angle_to_matrix(omega))
    torch.testing.assert_close(back.norm(dim=-1), angles, atol=1e-6, rtol=0)


def test_axis_angle_matches_elementary_rotations():
    a = torch.tensor(0.7, dtype=torch.float64)
    for axis, fn in ((0, rt.rot_x), (1, rt.rot_y), (2, rt.rot_z)):
        omega = torch.zeros(3, dtype=torch.float64)
        omega[axis] = a
        torch.testing.assert_close(rt.axis_angle_to_matrix(omega), fn(a))


def test_rotation_6d_round_trip():
    r = _random_rotations(20, seed=3)
    torch.testing.assert_close(rt.rotation_6d_to_matrix(rt.matrix_to_rotation_6d(r)), r)


def test_transform_inverse_and_apply():
    r = _random_rotations(4, seed=4)
    t = torch.randn(4, 3, dtype=torch.float64) * 100
    tf = rt.make_transform(r, t)
    pts = torch.randn(4, 7, 3, dtype=torch.float64)
    back = rt.apply_transform(rt.invert_transform(tf), rt.apply_transform(tf, pts))
    torch.testing.assert_close(back, pts)
    torch.testing.assert_close(tf @ rt.invert_transform(tf), torch.eye(4, dtype=torch.float64).expand(4, 4, 4))


def test_se3_exp_matches_rotation_and_small_translation():
    xi = torch.tensor([10.0, -5.0, 2.0, 0.1, -0.2, 0.3], dtype=torch.float64)
    tf = rt.se3_exp(xi)
    torch.testing.assert_close(tf[:3, :3], rt.axis_angle_to_matrix(xi[3:]))
    # A pure translation twist is a pure translation.
    tf0 = rt.se3_exp(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(tf0[:3, 3], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_axis_angle_gradient_finite_at_zero():
    omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    rt.axis_angle_to_matrix(omega).sum().backward()
    assert torch.isfinite(omega.grad).all()


def test_geodesic_angle():
    a = _random_rotations(5, seed=5)
    delta = rt.rot_z(torch.tensor(0.25, dtype=torch.float64))
    torch.testing.assert_close(rt.geodesic_angle(a, a @ delta), torch.full((5,), 0.25, dtype=torch.float64))
