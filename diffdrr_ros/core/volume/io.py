"""CT loaders: DICOM series, Enhanced (multi-frame) CT, NIfTI and ``.npy`` files to :class:`.Volume` (HU, LPS, mm).

Conventions are those of :mod:`.volume` (LPS, voxel centres on the affine, float32 data).
pydicom and nibabel do the file formats (compressed DICOM pixel data through pydicom's
plugins: JPEG Lossless / JPEG-LS / JPEG 2000 / RLE, see :mod:`..xray_files.dicom_pixels`);
what is written here is the geometry: slice ordering along the normal, affines from the
DICOM orientation tags (per file, or per frame in an Enhanced CT's functional groups), RAS -> LPS.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..xray_files.dicom_pixels import PixelDataError, decode_pixels
from .volume import RAS_TO_LPS, Volume, as3

__all__ = ["VolumeLoadError", "load_dicom_series", "load_nifti", "load_npy", "load_volume"]


class VolumeLoadError(ValueError):
    """A volume could not be loaded (missing path, bad/mixed/irregular series, bad format...)."""


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
    allow_gantry_tilt: bool = False,
) -> Volume:
    """Load a CT volume, dispatching on what ``path`` is.

    * a directory -> :func:`load_dicom_series` (``series_uid`` selects a series in mixed dirs;
      ``allow_gantry_tilt`` loads a tilted series on a sheared grid);
    * ``*.nii`` / ``*.nii.gz`` -> :func:`load_nifti`;
    * ``*.npy`` -> :func:`load_npy` (``spacing`` is required);
    * any other file is tried as DICOM: the series it belongs to is loaded from its directory
      (an Enhanced CT file is a whole series by itself).

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
        return load_dicom_series(p, series_uid=series_uid, allow_gantry_tilt=allow_gantry_tilt)
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
    return load_dicom_series(p.parent, series_uid=uid, allow_gantry_tilt=allow_gantry_tilt)


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
        sp = as3(spacing, "spacing")
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
    * An Enhanced (multi-frame) CT file holds many slices: each frame's ImagePositionPatient,
      ImageOrientationPatient, PixelSpacing and rescale come from its
      PerFrameFunctionalGroupsSequence item (PlanePositionSequence, PlaneOrientationSequence,
      PixelMeasuresSequence, PixelValueTransformationSequence), else from the
      SharedFunctionalGroupsSequence; its frames are then treated as the slices below.
    * Compressed pixel data (JPEG Lossless, JPEG-LS, JPEG 2000, RLE) is decoded by pydicom's
      plugins; a missing plugin raises, naming the transfer syntax and the package to install.
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
    slices = [sl for f, ds in items for sl in _slices_of(f, ds, label)]
    if len(slices) < 2:
        raise VolumeLoadError(f"{label} has a single slice; at least 2 are needed to define the slice spacing")
    modality = str(items[0][1].get("Modality", "CT") or "CT")  # CT -> HU, anything else -> raw
    return _assemble_series(slices, modality, label, allow_gantry_tilt=allow_gantry_tilt)


@dataclass(frozen=True)
class _Slice:
    """One image plane of a series: a classic slice file, or one frame of an Enhanced CT file."""

    name: str
    ipp: np.ndarray  # ImagePositionPatient (3,), LPS mm
    iop: np.ndarray  # ImageOrientationPatient (6,): row then column direction cosines
    ps: np.ndarray  # PixelSpacing (2,): row spacing, column spacing (mm)
    rows: int
    cols: int
    slope: float
    intercept: float
    stored: Callable[[], np.ndarray]  # the stored pixel values (rows, cols), decoded on demand


def _floats(values, name: str, n: int, label: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.shape != (n,):
        raise VolumeLoadError(f"{label}: malformed {name} {list(values)}")
    return arr


def _decoder(f: Path, ds, label: str) -> Callable[[int | None], np.ndarray]:
    """Decode ``ds``'s pixel data once (all frames), then hand out frames."""

    @functools.cache
    def all_frames() -> np.ndarray:
        try:
            return decode_pixels(ds, label=f"{label}: {f.name}")
        except PixelDataError as exc:
            raise VolumeLoadError(str(exc)) from exc

    def frame(index: int | None) -> np.ndarray:
        px = all_frames()
        return px if index is None else px[index]

    return frame


def _slices_of(f: Path, ds, label: str) -> list[_Slice]:
    """The slices of one file: itself (classic) or each frame (Enhanced CT, functional groups)."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeLoadError(f"{label}: {f.name} is not a single-channel (grey-scale) image")
    for k in ("Rows", "Columns"):
        if k not in ds:
            raise VolumeLoadError(f"{label}: {f.name} lacks {k}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    decode = _decoder(f, ds, label)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        if n_frames > 1:
            raise VolumeLoadError(
                f"{label}: {f.name} is multi-frame without functional groups (not an Enhanced CT); "
                "its frames have no positions"
            )
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
        if missing:
            raise VolumeLoadError(f"{label}: {f.name} lacks {', '.join(missing)}")
        return [_Slice(f.name, _floats(ds.ImagePositionPatient, "ImagePositionPatient", 3, label),
                       _floats(ds.ImageOrientationPatient, "ImageOrientationPatient", 6, label),
                       _floats(ds.PixelSpacing, "PixelSpacing", 2, label), rows, cols,
                       float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0),
                       functools.partial(decode, None))]
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) not in (0, n_frames):
        raise VolumeLoadError(
            f"{label}: {f.name} has {len(per_frame)} PerFrameFunctionalGroupsSequence items for {n_frames} frames"
        )

    def group(index: int, sequence: str, keyword: str, required: bool = True):
        for source in ((per_frame[index] if per_frame else None), shared):
            items = None if source is None else source.get(sequence)
            if items and keyword in items[0]:
                return items[0][keyword].value
        if required:
            raise VolumeLoadError(
                f"{label}: {f.name} frame {index + 1}: no {sequence} > {keyword} in its per-frame or shared "
                "functional groups"
            )
        return None

    out = []
    for i in range(n_frames):
        slope = group(i, "PixelValueTransformationSequence", "RescaleSlope", required=False)
        intercept = group(i, "PixelValueTransformationSequence", "RescaleIntercept", required=False)
        out.append(_Slice(
            f"{f.name} frame {i + 1}",
            _floats(group(i, "PlanePositionSequence", "ImagePositionPatient"), "ImagePositionPatient", 3, label),
            _floats(group(i, "PlaneOrientationSequence", "ImageOrientationPatient"), "ImageOrientationPatient", 6,
                    label),
            _floats(group(i, "PixelMeasuresSequence", "PixelSpacing"), "PixelSpacing", 2, label), rows, cols,
            float(slope if slope not in (None, "") else 1.0), float(intercept if intercept not in (None, "") else 0.0),
            functools.partial(decode, i)))
    return out


def _assemble_series(slices: list[_Slice], modality: str, label: str, *, allow_gantry_tilt: bool) -> Volume:
    """Sort, check and stack the slices of one series (see :func:`load_dicom_series`)."""
    first = slices[0]
    iop0, ps0, rows0, cols0 = first.iop, first.ps, first.rows, first.cols
    for sl in slices:
        if sl.rows != rows0 or sl.cols != cols0:
            raise VolumeLoadError(f"{label}: {sl.name} is {sl.rows}x{sl.cols}, other slices are {rows0}x{cols0}")
        if not np.allclose(sl.iop, iop0, atol=1e-4):
            raise VolumeLoadError(f"{label}: {sl.name} has a different ImageOrientationPatient")
        if not np.allclose(sl.ps, ps0, rtol=1e-4, atol=1e-6):
            raise VolumeLoadError(f"{label}: {sl.name} has a different PixelSpacing ({sl.ps} vs {ps0})")
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

    pos = np.stack([sl.ipp for sl in slices])
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    slices = [slices[i] for i in order]
    proj = pos @ normal
    gaps = np.diff(proj)
    n = len(slices)
    if np.min(np.abs(gaps)) < 1e-6:
        k = int(np.argmin(np.abs(gaps)))
        raise VolumeLoadError(
            f"{label}: slices {slices[k].name} and {slices[k + 1].name} share the same position "
            "(several acquisitions/echoes/stacks in one series?)"
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

    planes = []
    for sl in slices:
        px = np.asarray(sl.stored(), dtype=np.float64)
        if px.shape != (rows0, cols0):
            raise VolumeLoadError(f"{label}: {sl.name} pixel array has shape {px.shape}, expected {(rows0, cols0)}")
        planes.append((px * sl.slope + sl.intercept).T.astype(np.float32))  # (columns, rows) = (i, j)
    data = torch.from_numpy(np.ascontiguousarray(np.stack(planes, axis=-1)))

    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, 0] = torch.from_numpy(row_cos * ps0[1])
    affine[:3, 1] = torch.from_numpy(col_cos * ps0[0])
    affine[:3, 2] = torch.from_numpy(step)
    affine[:3, 3] = torch.from_numpy(pos[0])
    return Volume(data, affine, "hu" if modality.upper() == "CT" else "raw")
