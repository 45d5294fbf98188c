"""How the optimiser sees a pose: ``(rotation, translation)`` parameters <-> ``T_cam_ct``.

* ``"camera"`` - rotation (axis-angle, camera axes) about the CT centre and translation of
  the CT centre in the camera frame (in-plane x/y, depth z): rotating does not move the CT
  centre's projection, so rotation and translation are nearly decoupled (the default).
* ``"so3"`` - axis-angle about the current pose, translation in the seed's iso frame
  (rotations turn the C-arm about the isocentre, moving an off-centre CT).
* ``"carm"`` - the seed's own parameters ``(theta, phi, gamma, bx, by, bz)``.

Rotations in rad, translations in mm; a batch dimension throughout.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.carm import carm_to_matrix, matrix_to_carm
from ..geometry.rotations import axis_angle_to_matrix, make_transform

PARAMETERIZATIONS = ("camera", "so3", "carm")

#: What :func:`initial_params` hands to :func:`params_to_pose` besides the parameters.
Base = tuple[Tensor, Tensor]


def initial_params(
    kind: str, pose: Float[Tensor, "B 4 4"], center: Float[Tensor, " 3"]
) -> tuple[Float[Tensor, "B 3"], Float[Tensor, "B 3"], Base]:
    """Parameters ``(rot, trans)`` of ``pose`` (zero for the relative kinds) and their base."""
    if kind == "camera":
        r0 = pose[..., :3, :3].clone()
        p_c = (r0 @ center.to(pose)[:, None])[..., 0] + pose[..., :3, 3]
        zeros = torch.zeros_like(p_c)
        return zeros, zeros.clone(), (r0, p_c)
    angles, trans = matrix_to_carm(pose, center.to(pose))
    base = pose[..., :3, :3].transpose(-1, -2)
    rot = angles.clone() if kind == "carm" else torch.zeros_like(angles)
    return rot, trans.clone(), (base, base)


def params_to_pose(
    kind: str, rot: Float[Tensor, "B 3"], trans: Float[Tensor, "B 3"], base: Base, center: Float[Tensor, " 3"]
) -> Float[Tensor, "B 4 4"]:
    """``T_cam_ct`` from the parameters (differentiable)."""
    center = center.to(trans)
    if kind == "carm":
        return carm_to_matrix(rot, trans, center)
    if kind == "camera":
        # x_cam = exp(rot) R0 (x - c) + p_c + trans: rotation about the CT centre.
        r0, p_c = base
        r = axis_angle_to_matrix(rot) @ r0
        t = p_c + trans - (r @ center[:, None])[..., 0]
        return make_transform(r, t)
    base_rot_iso_cam = base[0]
    r_iso_cam = base_rot_iso_cam @ axis_angle_to_matrix(rot)
    r_cam_iso = r_iso_cam.transpose(-1, -2)
    offset = trans - center
    return make_transform(r_cam_iso, (r_cam_iso @ offset[..., None])[..., 0])


__all__ = ["PARAMETERIZATIONS", "initial_params", "params_to_pose"]
