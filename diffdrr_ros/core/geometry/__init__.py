"""Geometry: rotations, the C-arm pose on the seed's sphere, the detector, the C-arm kinematics.

Frames, units and signs are written down once in ``docs/geometry.md`` and :mod:`.carm`.
"""

from .carm import carm_angles, carm_rotation, carm_to_matrix, matrix_to_carm, perturb_pose
from .detector import Detector, detector_points, detector_points_np, pixel_axes_mm, pixel_centre_mm
from .kinematics import (
    CArmJoints,
    beam_separation_rad,
    cam_from_iso,
    camera_motion,
    default_prior,
    initial_pose,
    iso_from_ct,
    placement_prior,
    propagate_pose,
    table_transform,
)

__all__ = [
    "CArmJoints",
    "Detector",
    "beam_separation_rad",
    "cam_from_iso",
    "camera_motion",
    "carm_angles",
    "carm_rotation",
    "carm_to_matrix",
    "default_prior",
    "detector_points",
    "detector_points_np",
    "initial_pose",
    "iso_from_ct",
    "matrix_to_carm",
    "perturb_pose",
    "pixel_axes_mm",
    "pixel_centre_mm",
    "placement_prior",
    "propagate_pose",
    "table_transform",
]
