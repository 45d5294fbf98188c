"""The flat-panel detector: intrinsics, the one pixel grid, and ``K`` <-> :class:`Detector`.

Frames and units as in :mod:`.carm`: the ``cam`` frame has its origin at the isocentre,
``z`` along the beam, the source at ``(0, 0, -SID)`` and the detector plane at
``z = SDD - SID``; pixel ``(row, col)`` has its centre at ``x = u(col)``, ``y = v(row)``
(:func:`pixel_centre_mm`). Lengths in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

Scalar = float | Tensor


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

    @classmethod
    def from_intrinsic_matrix(
        cls,
        k: Float[Tensor, "3 3"] | list[float],
        height: int,
        width: int,
        spacing_mm: tuple[float, float],
        sid_mm: float | None = None,
    ) -> Detector:
        """Inverse of :meth:`intrinsic_matrix`: size, principal point and SDD from a pinhole ``K``.

        ``K = [f/dx 0 cx; 0 f/dy cy; 0 0 1]`` in pixels with ``f`` the SDD (the source is the
        pinhole); the pixel pitch ``(dy, dx)`` (mm) is not in ``K`` and comes from the caller.
        ``k`` may be the 9 row-major values of a ``sensor_msgs/CameraInfo`` ``k``.

        Raises:
            ValueError: an uncalibrated ``K`` (``K[0, 0] <= 0`` or ``K[1, 1] <= 0``).
        """
        k = [float(v) for v in torch.as_tensor(k, dtype=torch.float64).reshape(-1).tolist()]
        if k[0] <= 0 or k[4] <= 0:
            raise ValueError("CameraInfo is uncalibrated (K[0] == 0)")
        dy, dx = (float(v) for v in spacing_mm)
        x0 = ((width - 1) / 2 - k[2]) * dx
        y0 = ((height - 1) / 2 - k[5]) * dy
        return cls(int(height), int(width), spacing_mm=(dy, dx), sdd_mm=k[0] * dx, sid_mm=sid_mm,
                   principal_point_mm=(x0, y0))

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


def pixel_centre_mm(index, n: int, pitch, offset):
    """Position (mm) of pixel centre ``index`` of ``n`` along one detector axis, from the centre.

    ``(index - (n - 1) / 2) * pitch + offset``: the one definition of the pixel grid (rows go
    with ``y_cam`` and the row pitch, columns with ``x_cam``; ``offset`` is the principal
    point's). Plain arithmetic, so it works on floats, NumPy arrays and tensors alike.
    """
    return (index - (n - 1) / 2) * pitch + offset


def pixel_axes_mm(
    det: Detector, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[Float[Tensor, " W"], Float[Tensor, " H"]]:
    """Pixel-centre coordinates ``u`` (columns, ``x_cam``) and ``v`` (rows, ``y_cam``), mm."""
    ref = torch.zeros((), dtype=dtype, device=device)
    dy, dx = (_as_tensor(s, ref) for s in det.spacing_mm)
    x0, y0 = (_as_tensor(p, ref) for p in det.principal_point_mm)
    u = pixel_centre_mm(torch.arange(det.width, dtype=dtype, device=device), det.width, dx, x0)
    v = pixel_centre_mm(torch.arange(det.height, dtype=dtype, device=device), det.height, dy, y0)
    return u, v


def detector_points(
    det: Detector,
    *,
    rows: slice | None = None,
    cols: slice | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Float[Tensor, " 3"], Float[Tensor, "h w 3"]]:
    """Source position and pixel-centre positions in the ``cam`` frame (mm).

    ``rows`` / ``cols`` select a patch of the detector (for patch-wise rendering). Intrinsics
    that are tensors requiring grad keep their gradient.
    """
    ref = torch.zeros((), dtype=dtype, device=device)
    dy, dx = (_as_tensor(s, ref) for s in det.spacing_mm)
    x0, y0 = (_as_tensor(p, ref) for p in det.principal_point_mm)
    sdd, sid = _as_tensor(det.sdd_mm, ref), _as_tensor(det.sid, ref)
    r = torch.arange(det.height, dtype=dtype, device=device)[rows or slice(None)]
    c = torch.arange(det.width, dtype=dtype, device=device)[cols or slice(None)]
    v = pixel_centre_mm(r, det.height, dy, y0)
    u = pixel_centre_mm(c, det.width, dx, x0)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    zz = (sdd - sid).expand_as(uu)
    pixels = torch.stack([uu, vv, zz], -1)
    source = torch.stack([ref, ref, -sid])
    return source, pixels


def detector_points_np(
    det: Detector, rows: slice = slice(None), cols: slice = slice(None)
) -> tuple[Float[np.ndarray, " 3"], Float[np.ndarray, "P 3"]]:
    """:func:`detector_points` in NumPy float64 (intrinsics without gradients): ``(3,)``, ``(h*w, 3)``.

    The fused CPU renderer's input; NumPy rather than torch because each torch operation is a
    fork-join over its threads, which costs a time slice on busy cores (see ``drr.fused``).
    """
    dy, dx = (_float(v) for v in det.spacing_mm)
    x0, y0 = (_float(v) for v in det.principal_point_mm)
    sdd, sid = _float(det.sdd_mm), _float(det.sid)
    v = pixel_centre_mm(np.arange(det.height, dtype=np.float64)[rows], det.height, dy, y0)
    u = pixel_centre_mm(np.arange(det.width, dtype=np.float64)[cols], det.width, dx, x0)
    pixels = np.empty((len(v), len(u), 3))
    pixels[..., 0] = u[None, :]
    pixels[..., 1] = v[:, None]
    pixels[..., 2] = sdd - sid
    return np.array([0.0, 0.0, -sid]), pixels.reshape(-1, 3)
