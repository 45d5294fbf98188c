"""Pose error split into in-plane and along-beam parts, against hand-made displacements."""

import torch

from diffdrr_ros.core.geometry.rotations import make_transform, rot_z
from diffdrr_ros.core.metrics import (
    inplane_depth_error,
    mean_target_registration_error,
    target_errors_cam,
    target_points,
)

D = torch.float64


def test_a_pure_depth_shift_is_all_along_the_beam_and_equals_the_mtre():
    pts = target_points(torch.zeros(3, dtype=D), torch.tensor([100.0, 80.0, 60.0], dtype=D))
    truth = make_transform(rot_z(torch.tensor(0.3, dtype=D)), torch.tensor([1.0, 2.0, 500.0], dtype=D))
    est = truth.clone()
    est[2, 3] += 4.0  # 4 mm further from the source
    d = target_errors_cam(est, truth, pts)
    torch.testing.assert_close(d, torch.tensor([0.0, 0.0, 4.0], dtype=D).expand(27, 3))
    inplane, depth, bias = inplane_depth_error(est, truth, pts)
    assert float(inplane) == 0.0 and abs(float(depth) - 4.0) < 1e-12 and abs(float(bias) - 4.0) < 1e-12
    assert abs(float(mean_target_registration_error(est, truth, pts)) - 4.0) < 1e-12


def test_in_plane_shift_and_batch():
    pts = target_points(torch.zeros(3, dtype=D), torch.full((3,), 90.0, dtype=D))
    truth = torch.eye(4, dtype=D)
    est = torch.eye(4, dtype=D).repeat(2, 1, 1)
    est[0, 0, 3] = 3.0
    est[1, 1, 3] = -4.0
    est[1, 2, 3] = -1.5
    inplane, depth, bias = inplane_depth_error(est, truth, pts)
    torch.testing.assert_close(inplane, torch.tensor([3.0, 4.0], dtype=D))
    torch.testing.assert_close(depth, torch.tensor([0.0, 1.5], dtype=D))
    torch.testing.assert_close(bias, torch.tensor([0.0, -1.5], dtype=D))


def test_a_rotation_about_the_centre_has_depth_errors_of_both_signs():
    pts = target_points(torch.zeros(3, dtype=D), torch.full((3,), 90.0, dtype=D))
    truth = torch.eye(4, dtype=D)
    est = make_transform(rot_z(torch.tensor(0.0, dtype=D)), torch.zeros(3, dtype=D))
    est[:3, :3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.9998, -0.02], [0.0, 0.02, 0.9998]], dtype=D)  # about x
    err = inplane_depth_error(est, truth, pts)
    assert float(err.depth_mm) > 0.3 and abs(float(err.depth_bias_mm)) < 1e-9
