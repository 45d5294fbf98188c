"""Pose error: the 27 fixed targets, their mean error (mTRE), and its in-plane / along-beam split.

Poses are ``T_cam_ct`` (CT/LPS mm -> camera frame, ``z`` along the beam). From one view the
error along the beam (depth, seen only through magnification) is typically several times the
in-plane error, so it is reported apart: :func:`target_errors_cam`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.rotations import apply_transform


def target_points(
    center: Float[Tensor, " 3"], extent_mm: Float[Tensor, " 3"], fraction: float = 0.5
) -> Float[Tensor, "27 3"]:
    """The fixed mTRE targets: a 3x3x3 grid spanning ``fraction`` of the CT extent (mm, CT frame).

    With the default 0.5 the points sit at 25 %, 50 % and 75 % of the volume along each
    axis, i.e. spread through the anatomy rather than at its far corners.
    """
    steps = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64) * fraction
    g = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    return center.to(torch.float64) + g * extent_mm.to(torch.float64)


def mean_target_registration_error(
    pose_estimate: Float[Tensor, "... 4 4"],
    pose_truth: Float[Tensor, "... 4 4"],
    points_ct: Float[Tensor, "P 3"],
) -> Float[Tensor, "..."]:
    """mTRE (mm): mean distance between the targets mapped by the two ``T_cam_ct`` poses."""
    return target_errors_cam(pose_estimate, pose_truth, points_ct).norm(dim=-1).mean(-1)


def target_errors_cam(
    pose_estimate: Float[Tensor, "... 4 4"],
    pose_truth: Float[Tensor, "... 4 4"],
    points_ct: Float[Tensor, "P 3"],
) -> Float[Tensor, "... P 3"]:
    """Target displacement (estimate - truth) in the true camera axes, mm: ``x, y`` in-plane, ``z`` along the beam."""
    pts = points_ct.to(pose_estimate)
    a = apply_transform(pose_estimate, pts.expand(*pose_estimate.shape[:-2], -1, 3))
    b = apply_transform(pose_truth.to(pose_estimate), pts.expand(*pose_truth.shape[:-2], -1, 3))
    return a - b


class CameraAxisError(NamedTuple):
    """Target errors in camera axes, mm: the mean in-plane distance, the mean absolute and the mean
    signed error along the beam (+ = away from the source; a bias has one sign on every target)."""

    inplane_mm: Tensor
    depth_mm: Tensor
    depth_bias_mm: Tensor


def inplane_depth_error(
    pose_estimate: Float[Tensor, "... 4 4"],
    pose_truth: Float[Tensor, "... 4 4"],
    points_ct: Float[Tensor, "P 3"],
) -> CameraAxisError:
    """The in-plane and along-beam parts of the target error (see :class:`CameraAxisError`)."""
    d = target_errors_cam(pose_estimate, pose_truth, points_ct)
    return CameraAxisError(d[..., :2].norm(dim=-1).mean(-1), d[..., 2].abs().mean(-1), d[..., 2].mean(-1))
