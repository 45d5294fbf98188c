"""C-arm kinematics: joint readings -> the camera frame, and the registration prior.

Frames (see :mod:`.carm`): ``iso`` is fixed in the room (origin at the
isocentre, axes along a supine patient's LPS axes when the table is at zero), ``cam`` moves
with the C-arm, ``ct`` is the CT volume's frame. The table carries the patient: a table
translation ``t`` (mm, in ``iso`` axes) moves the CT by ``t``.

* :func:`cam_from_iso` - ``T_cam_iso`` for the C-arm angles of a joint reading.
* :func:`initial_pose` - ``T_cam_ct`` from joints and a prior placement of the CT on the
  table (``T_table_ct``), the starting point of the first registration.
* :func:`propagate_pose` - tracking: carry the last good ``T_cam_ct`` through the C-arm
  and table motion between two joint readings.

Units: mm and rad here; the ROS layer converts joint positions from metres (REP-103).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .carm import carm_rotation
from .rotations import invert_transform, make_transform


@dataclass(frozen=True)
class CArmJoints:
    """One C-arm reading. Angles in rad, lengths in mm.

    Attributes:
        lao_rad: primary angle, LAO positive (the seed's phi).
        cranial_rad: secondary angle, cranial positive (the seed's theta).
        detector_rotation_rad: detector rotation about the beam (the seed's gamma).
        sdd_mm: source-to-detector distance, or ``None`` when the C-arm does not report it.
        table_mm: table translation (x, y, z) in the ``iso`` axes.
    """

    lao_rad: float
    cranial_rad: float
    detector_rotation_rad: float = 0.0
    sdd_mm: float | None = None
    table_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def angles(self) -> Float[Tensor, " 3"]:
        """``(theta, phi, gamma)`` in the order :func:`geometry.carm_rotation` expects."""
        return torch.tensor([self.cranial_rad, self.lao_rad, self.detector_rotation_rad], dtype=torch.float64)


def cam_from_iso(joints: CArmJoints) -> Float[Tensor, "4 4"]:
    """``T_cam_iso``: the camera frame's view of the room for these C-arm angles.

    Built once per joint reading (cached) and returned as a fresh copy, so the several uses
    per frame (start pose, TF, covariance axes) do not rebuild it.
    """
    return _cam_from_iso(joints.lao_rad, joints.cranial_rad, joints.detector_rotation_rad).clone()


@functools.lru_cache(maxsize=64)
def _cam_from_iso(lao_rad: float, cranial_rad: float, detector_rotation_rad: float) -> Tensor:
    angles = torch.tensor([cranial_rad, lao_rad, detector_rotation_rad], dtype=torch.float64)
    r_cam_iso = carm_rotation(angles).transpose(-1, -2)
    return make_transform(r_cam_iso, torch.zeros(3, dtype=torch.float64))


def table_transform(joints: CArmJoints) -> Float[Tensor, "4 4"]:
    """``T_iso_table``: the table displaced by its translation joints."""
    return make_transform(torch.eye(3, dtype=torch.float64), torch.tensor(joints.table_mm, dtype=torch.float64))


def default_prior(ct_center: Float[Tensor, " 3"]) -> Float[Tensor, "4 4"]:
    """``T_table_ct`` with the CT axes along the table's and the CT centre at the isocentre."""
    return make_transform(torch.eye(3, dtype=torch.float64), -ct_center.to(torch.float64))


def placement_prior(
    rotation: Float[Tensor, "3 3"], center_mm: Float[Tensor, " 3"], ct_center: Float[Tensor, " 3"]
) -> Float[Tensor, "4 4"]:
    """``T_table_ct``: the CT rotated by ``rotation`` about its centre, the centre put at ``center_mm`` (table axes)."""
    return make_transform(rotation.to(torch.float64), center_mm.to(torch.float64)) @ default_prior(ct_center)


def initial_pose(joints: CArmJoints, table_from_ct: Float[Tensor, "4 4"]) -> Float[Tensor, "4 4"]:
    """``T_cam_ct = T_cam_iso(angles) @ T_iso_table(table) @ T_table_ct(prior)``."""
    return cam_from_iso(joints) @ table_transform(joints) @ table_from_ct.to(torch.float64)


def iso_from_ct(pose_cam_ct: Float[Tensor, "4 4"], joints: CArmJoints) -> Float[Tensor, "4 4"]:
    """``T_iso_ct`` (what the node publishes on TF) from a registered ``T_cam_ct``."""
    return invert_transform(cam_from_iso(joints)) @ pose_cam_ct.to(torch.float64)


def camera_motion(joints_then: CArmJoints, joints_now: CArmJoints) -> Float[Tensor, "4 4"]:
    """``T_cam(now)_cam(then)``: how a patient still on the table moves in the camera frame between two readings.

    ``T_cam_ct(now) = camera_motion(then, now) @ T_cam_ct(then)``: the C-arm and the table move,
    ``T_table_ct`` is kept. Also the relative camera of two views of one registration.
    """
    then = cam_from_iso(joints_then) @ table_transform(joints_then)
    return cam_from_iso(joints_now) @ table_transform(joints_now) @ invert_transform(then)


def propagate_pose(
    pose_cam_ct: Float[Tensor, "4 4"], joints_then: CArmJoints, joints_now: CArmJoints
) -> Float[Tensor, "4 4"]:
    """Carry ``T_cam_ct`` registered at ``joints_then`` to the C-arm and table at ``joints_now``.

    The patient is assumed still on the table: ``T_table_ct`` is kept, the C-arm and the
    table move.
    """
    table_from_ct = invert_transform(table_transform(joints_then)) @ iso_from_ct(pose_cam_ct, joints_then)
    return initial_pose(joints_now, table_from_ct)


def beam_separation_rad(joints_a: CArmJoints, joints_b: CArmJoints) -> float:
    """Angle (rad) between the beam directions of two C-arm readings: what a second view adds in depth.

    Two views ``a`` apart turn depth into in-plane position, ``sigma_depth ~ sigma_in_plane / sin(a)``;
    identical angles add no depth information (detector rotation about the beam does not count).
    """
    beam_a = invert_transform(cam_from_iso(joints_a))[:3, 2]
    beam_b = invert_transform(cam_from_iso(joints_b))[:3, 2]
    return float(torch.arccos(torch.clamp(beam_a @ beam_b, -1.0, 1.0)))
