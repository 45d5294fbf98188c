"""C-arm projection geometry: the frames and the seed's 6-DoF pose on a sphere.

All lengths are mm, all angles radians. The frames (see ``docs/geometry.md``)::

                         detector (H x W pixels, spacing dy x dx mm)
                 +----------------------------+    z_cam = SDD - SID
                 |  (0,0) -> u / x_cam, col   |
                 |    |                       |
                 |    v  v / y_cam, row       |
                 +-------------+--------------+
                               ^  beam = +z_cam
                               |
                     isocentre o  <- origin of the camera frame "cam"
                               |     (CT centre sits here at zero translation)
                               |
                        source *   z_cam = -SID

* ``ct``  - the CT / patient frame, DICOM LPS (x = patient left, y = posterior,
  z = superior), mm. Volumes carry the voxel-index -> ``ct`` affine.
* ``iso`` - the isocentre frame: origin at the C-arm isocentre, axes parallel to the
  patient (LPS) axes of a supine patient on the table.
* ``cam`` - the source/detector frame: origin at the isocentre, z along the beam
  (source -> detector), x along detector columns, y along detector rows (the ROS
  ``_optical`` convention). The source is at ``(0, 0, -SID)`` and the detector centre at
  ``(0, 0, SDD - SID)``. With ``SID = SDD / 2 = rho`` both lie on the seed's sphere.

The seed's pose ``(theta, phi, gamma, bx, by, bz)``:

* ``phi``   LAO (+) / RAO (-): primary C-arm rotation about the patient's long axis
  (+z_iso); positive moves the detector towards the patient's left.
* ``theta`` cranial (+) / caudal (-): secondary rotation about the (rotated) left-right
  axis; positive tilts the detector towards the head.
* ``gamma`` detector rotation about the beam axis (+z_cam).
* ``b = (bx, by, bz)`` translation of the CT centre from the isocentre, in ``iso`` (mm).

``T_cam_ct = R_cam_iso(theta, phi, gamma) o Trans(b - c_ct)``, where ``c_ct`` is the
CT volume centre, so that at ``b = 0`` the CT centre sits on the isocentre. At all
angles zero the view is AP: the source is posterior, the detector anterior.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .rotations import make_transform, rot_x, rot_z

# Camera axes (columns) expressed in the iso/LPS frame for the AP view at zero angles:
# u = patient right (-x), v = inferior (-z), beam = anterior (-y).  det = +1.
_R_ISO_CAM0 = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T


def carm_rotation(angles: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3 3"]:
    """``R_iso_cam`` for C-arm angles ``(theta cranial, phi LAO, gamma detector)`` in rad.

    ``R_iso_cam = Rz(phi) @ Rx(-theta) @ R0 @ Rz(gamma)``, where ``R0`` is the AP view.
    """
    theta, phi, gamma = angles.unbind(-1)
    r0 = _R_ISO_CAM0.to(angles)
    return rot_z(phi) @ rot_x(-theta) @ r0 @ rot_z(gamma)


def carm_angles(rot_iso_cam: Float[Tensor, "... 3 3"]) -> Float[Tensor, "... 3"]:
    """Inverse of :func:`carm_rotation` (for ``|theta| < pi/2``)."""
    # R_iso_cam @ R0^T = Rz(phi) Rx(-theta) Ry(-gamma)  (R0 Rz(g) R0^T = Ry(-g)).
    a = rot_iso_cam @ _R_ISO_CAM0.to(rot_iso_cam).transpose(-1, -2)
    b = torch.asin(a[..., 2, 1].clamp(-1.0, 1.0))
    c = torch.atan2(-a[..., 2, 0], a[..., 2, 2])
    phi = torch.atan2(-a[..., 0, 1], a[..., 1, 1])
    return torch.stack([-b, phi, -c], -1)


def carm_to_matrix(
    angles: Float[Tensor, "... 3"],
    translation: Float[Tensor, "... 3"],
    ct_center: Float[Tensor, " 3"],
) -> Float[Tensor, "... 4 4"]:
    """The seed's 6-DoF pose to ``T_cam_ct`` (maps CT/LPS mm points into the ``cam`` frame)."""
    rot_cam_iso = carm_rotation(angles).transpose(-1, -2)
    offset = translation - ct_center.to(translation)
    return make_transform(rot_cam_iso, (rot_cam_iso @ offset[..., None])[..., 0])


def matrix_to_carm(
    t_cam_ct: Float[Tensor, "... 4 4"], ct_center: Float[Tensor, " 3"]
) -> tuple[Float[Tensor, "... 3"], Float[Tensor, "... 3"]]:
    """Inverse of :func:`carm_to_matrix`: ``(angles, translation)``."""
    rot_cam_iso = t_cam_ct[..., :3, :3]
    rot_iso_cam = rot_cam_iso.transpose(-1, -2)
    offset = (rot_iso_cam @ t_cam_ct[..., :3, 3:4])[..., 0]
    return carm_angles(rot_iso_cam), offset + ct_center.to(offset)


def perturb_pose(
    pose: Float[Tensor, "B 4 4"],
    ct_center: Float[Tensor, " 3"],
    max_angle_rad: float,
    max_translation_mm: float,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "B 4 4"]:
    """Perturb the seed's C-arm parameters uniformly in ``+-max_angle`` and ``+-max_translation``.

    This is the seed's Monte Carlo protocol (45 degrees, 60 mm along each axis).
    """
    angles, trans = matrix_to_carm(pose.to(torch.float64), ct_center.to(torch.float64))
    b = angles.shape[0]
    da = (torch.rand(b, 3, generator=generator, dtype=torch.float64) * 2 - 1) * max_angle_rad
    dt = (torch.rand(b, 3, generator=generator, dtype=torch.float64) * 2 - 1) * max_translation_mm
    return carm_to_matrix(angles + da.to(angles), trans + dt.to(trans), ct_center.to(torch.float64))
