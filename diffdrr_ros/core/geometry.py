"""C-arm projection geometry: frames, the seed's 6-DoF pose, and X-ray generation.

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

from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from .rotations import make_transform, rot_x, rot_z

Scalar = float | Tensor

# Camera axes (columns) expressed in the iso/LPS frame for the AP view at zero angles:
# u = patient right (-x), v = inferior (-z), beam = anterior (-y).  det = +1.
_R_ISO_CAM0 = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T


@dataclass(frozen=True)
class Detector:
    """Flat-panel detector and source geometry (intrinsics).

    Fields may be Python floats or 0-d tensors; tensors with ``requires_grad`` make the
    DRR differentiable with respect to them.

    Attributes:
        height, width: pixels (rows, columns).
        spacing_mm: (dy, dx) pixel pitch in mm (row pitch, column pitch).
        sdd_mm: source-to-detector distance (mm); the seed's ``2 * rho``.
        sid_mm: source-to-isocentre distance (mm); ``None`` means ``sdd_mm / 2``.
        principal_point_mm: (x0, y0) offset of the principal point (foot of the
            perpendicular from the source) from the detector centre, mm, in the
            column / row directions.
    """

    height: int
    width: int
    spacing_mm: tuple[Scalar, Scalar] = (1.0, 1.0)
    sdd_mm: Scalar = 1020.0
    sid_mm: Scalar | None = None
    principal_point_mm: tuple[Scalar, Scalar] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if int(self.height) < 1 or int(self.width) < 1:
            raise ValueError(f"detector size must be positive, got {self.height}x{self.width}")
        if _float(self.sdd_mm) <= 0:
            raise ValueError(f"sdd_mm must be positive, got {_float(self.sdd_mm)}")
        if self.sid_mm is not None and not 0 < _float(self.sid_mm) < _float(self.sdd_mm):
            raise ValueError(f"sid_mm must lie in (0, sdd_mm), got {_float(self.sid_mm)}")
        if _float(self.spacing_mm[0]) <= 0 or _float(self.spacing_mm[1]) <= 0:
            raise ValueError(f"pixel spacing must be positive, got {self.spacing_mm}")

    @property
    def sid(self) -> Scalar:
        """Source-to-isocentre distance (mm)."""
        return self.sdd_mm / 2 if self.sid_mm is None else self.sid_mm

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.height), int(self.width)

    def scaled(self, factor: float) -> Detector:
        """The same field of view with ``factor`` times fewer pixels per side (for pyramids)."""
        h = max(1, round(self.height / factor))
        w = max(1, round(self.width / factor))
        dy = self.spacing_mm[0] * self.height / h
        dx = self.spacing_mm[1] * self.width / w
        return replace(self, height=h, width=w, spacing_mm=(dy, dx))

    def intrinsic_matrix(self) -> Float[Tensor, "3 3"]:
        """Pinhole K in pixels for the ``cam`` frame translated to the source (a CameraInfo K)."""
        dy, dx = (_float(s) for s in self.spacing_mm)
        x0, y0 = (_float(p) for p in self.principal_point_mm)
        sdd = _float(self.sdd_mm)
        cx = (self.width - 1) / 2 - x0 / dx
        cy = (self.height - 1) / 2 - y0 / dy
        return torch.tensor([[sdd / dx, 0.0, cx], [0.0, sdd / dy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _float(x: Scalar) -> float:
    """A Python float of a float or (possibly grad-requiring) 0-d tensor, for validation."""
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


def _as_tensor(x: Scalar, like: Tensor) -> Tensor:
    return x.to(like) if isinstance(x, Tensor) else torch.as_tensor(x, dtype=like.dtype, device=like.device)


def detector_points(
    det: Detector,
    *,
    rows: slice | None = None,
    cols: slice | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Float[Tensor, " 3"], Float[Tensor, "h w 3"]]:
    """Source position and pixel-centre positions in the ``cam`` frame (mm).

    ``rows`` / ``cols`` select a patch of the detector (for patch-wise rendering).
    """
    ref = torch.zeros((), dtype=dtype, device=device)
    dy, dx = (_as_tensor(s, ref) for s in det.spacing_mm)
    x0, y0 = (_as_tensor(p, ref) for p in det.principal_point_mm)
    sdd, sid = _as_tensor(det.sdd_mm, ref), _as_tensor(det.sid, ref)
    r = torch.arange(det.height, dtype=dtype, device=device)[rows or slice(None)]
    c = torch.arange(det.width, dtype=dtype, device=device)[cols or slice(None)]
    v = (r - (det.height - 1) / 2) * dy + y0
    u = (c - (det.width - 1) / 2) * dx + x0
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    zz = (sdd - sid).expand_as(uu)
    pixels = torch.stack([uu, vv, zz], -1)
    source = torch.stack([ref, ref, -sid])
    return source, pixels


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


def iso_to_cam(angles: Float[Tensor, "... 3"]) -> Float[Tensor, "... 4 4"]:
    """``T_cam_iso`` for C-arm angles: the camera frame seen from the isocentre frame."""
    rot_cam_iso = carm_rotation(angles).transpose(-1, -2)
    return make_transform(rot_cam_iso, torch.zeros_like(angles))

