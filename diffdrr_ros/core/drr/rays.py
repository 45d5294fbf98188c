"""Rays from the C-arm to the CT grid: the frame chain the renderers share.

``T_cam_ct`` (the pose) maps CT/LPS mm to the camera frame; rays start at the source and end
at pixel centres, both in the camera frame (:mod:`..geometry.detector`). The kernels work in
*grid coordinates* (voxel index + 0.5, see :mod:`.reference`), so every ray is mapped by

    grid <- ct <- cam:   M = grid_from_ct @ inv(T_cam_ct)

and its length in mm (which turns the kernels' alpha units into a line integral) is taken
in the CT frame.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.rotations import apply_transform, invert_transform


def grid_from_ct_transform(affine: Float[Tensor, "4 4"]) -> Float[Tensor, "4 4"]:
    """CT/LPS mm -> grid coordinates (voxel index + 0.5; see :mod:`.reference`), float64 on the CPU."""
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = 0.5
    return shift @ torch.linalg.inv(affine.to(torch.float64).cpu())


def grid_from_cam(affine: Float[Tensor, "4 4"], pose: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """``M_b = grid_from_ct @ inv(T_cam_ct_b)``: camera points to grid coordinates, per pose."""
    return grid_from_ct_transform(affine).to(pose) @ invert_transform(pose)


def rays_in_grid(
    grid_from_ct: Float[Tensor, "4 4"],
    t_ct_cam: Float[Tensor, "B 4 4"],
    source_cam: Float[Tensor, " 3"],
    pixels_cam: Float[Tensor, "P 3"],
) -> tuple[Float[Tensor, "BP 3"], Float[Tensor, "BP 3"], Float[Tensor, "B P"]]:
    """End points in grid coordinates (pose-major, ``b * P + p``) and ray lengths in mm.

    Differentiable with respect to the pose and to the camera-frame points (intrinsics).
    """
    b = t_ct_cam.shape[0]
    src_ct = apply_transform(t_ct_cam, source_cam.expand(b, 1, 3))  # B 1 3
    tgt_ct = apply_transform(t_ct_cam, pixels_cam.expand(b, -1, 3))  # B P 3
    length = (tgt_ct - src_ct).norm(dim=-1)
    src_g = apply_transform(grid_from_ct, src_ct).expand_as(tgt_ct).reshape(-1, 3)
    tgt_g = apply_transform(grid_from_ct, tgt_ct).reshape(-1, 3)
    return src_g, tgt_g, length


__all__ = ["grid_from_cam", "grid_from_ct_transform", "rays_in_grid"]
