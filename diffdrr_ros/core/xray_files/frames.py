"""Reading an X-ray frame file in the right domain: line integrals ``L`` (attenuation x mm) out.

What a file holds decides how it is read (``read_frame``):

* a sidecar ``<file>.json`` (a file diffdrr-ros wrote, :mod:`.frame_sidecar`) states the domain
  and the scaling: the physical values are recovered exactly (up to 16-bit quantisation);
* a DICOM file: PixelIntensityRelationship (0028,1040) ``LOG`` means line integrals, ``LIN``,
  ``DISP`` or absent mean intensities (the normal case for XA / RF / DX); RescaleSlope /
  RescaleIntercept (the Modality LUT) are applied; PixelIntensityRelationshipSign (0028,1041)
  -1, or MONOCHROME1 without that tag, means higher values are less X-ray intensity (inverted);
* a detector image (PNG / TIFF / ...) without a sidecar: intensities;
* a ``.npy`` without a sidecar: line integrals (what ``diffdrr-ros render`` wrote before sidecars).

Intensities become ``L = -log(I / I0)`` (``I0``: given, the sidecar's, else the frame's maximum).
A ``domain`` given by the caller must agree with what the file says; line integrals must lie
in a physical range (:data:`LINE_INTEGRAL_RANGE`). Either failure raises :class:`FrameDomainError`
with a hint, so a frame in the wrong domain is refused instead of registered.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from jaxtyping import Float, Shaped

from .dicom_pixels import decode_pixels
from .dicom_xray import XRAY_MODALITIES, XRayGeometry, read_xray_geometry
from .frame_sidecar import FRAME_DOMAINS, FrameSidecar, sidecar_path

__all__ = [
    "DICOM_SUFFIXES",
    "LINE_INTEGRAL_RANGE",
    "FrameDomainError",
    "XRayFrame",
    "is_dicom_path",
    "read_frame",
    "read_stored_image",
]

# Line integrals of attenuation (optical depths). A 16-bit detector resolves I/I0 down to
# 1/65535 (L = 11.1); 30 leaves room for simulated frames. Below 0: only noise around I0.
LINE_INTEGRAL_RANGE = (-0.5, 30.0)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_MIN_FRACTION_OF_I0 = 1e-6  # intensities are clamped here before the log (zero-photon pixels)


class FrameDomainError(ValueError):
    """A frame whose values cannot be what they are taken for (wrong domain, range or flags)."""


@dataclass(frozen=True)
class XRayFrame:
    """One X-ray frame read from a file, in line integrals.

    Attributes:
        line_integral: ``(H, W)`` float32 optical depths ``L`` (attenuation x mm).
        domain: what the file held, ``"line_integral"`` or ``"intensity"``.
        description: one line saying how the values were read (for the user).
        geometry: the projection geometry the file states (DICOM header or sidecar), or ``None``.
        sidecar: the sidecar, when the file has one.
    """

    line_integral: Float[np.ndarray, "H W"]
    domain: str
    description: str
    geometry: XRayGeometry | None = None
    sidecar: FrameSidecar | None = None


def is_dicom_path(path: str | Path) -> bool:
    """A ``.dcm`` / ``.dicom`` / ``.ima`` file, or any other (e.g. suffix-less) file with the DICOM preamble."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with p.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_stored_image(path: str | Path, *, frame_index: int = 0) -> Shaped[np.ndarray, "H W"]:
    """The stored pixel values of a frame file (no domain conversion): .npy, image file or DICOM."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        return np.load(p, allow_pickle=False)
    if is_dicom_path(p):
        import pydicom

        return decode_pixels(pydicom.dcmread(p), index=frame_index, label=str(p))
    import cv2

    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"could not read image {p}")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    return img


def _domain_hint(domain: str) -> str:
    return {"intensity": "--frame-domain intensity (or --log-transform)",
            "line_integral": "--frame-domain line_integral"}[domain]


_PLURAL = {"line_integral": "line integrals", "intensity": "intensities"}


def _check_domain(path: Path, stated: str, by: str, requested: str | None) -> str:
    if requested is not None and requested != stated:
        raise FrameDomainError(
            f"{path}: {by} says it holds {_PLURAL[stated]}, but {_PLURAL[requested]} were requested; "
            f"drop {_domain_hint(requested)} to read it as the file says"
        )
    return stated


def _to_line_integral(values: np.ndarray, domain: str, i0: float | None, path: Path) -> tuple[np.ndarray, str]:
    if domain == "line_integral":
        return values, "line integrals"
    if float(values.min()) < 0:
        raise FrameDomainError(
            f"{path}: values down to {float(values.min()):.4g} cannot be X-ray intensities (they are not >= 0); "
            f"if the file holds line integrals pass {_domain_hint('line_integral')}"
        )
    ref = float(values.max()) if i0 is None else float(i0)
    if ref <= 0:
        raise FrameDomainError(f"{path}: intensities need a positive I0, got {ref:.4g}")
    clamped = np.maximum(values, ref * _MIN_FRACTION_OF_I0)
    how = "the frame's maximum" if i0 is None else f"{ref:.6g}"
    return -np.log(clamped / ref), f"intensities, L = -log(I / I0), I0 = {how}"


def _check_line_integral_range(line_integral: np.ndarray, path: Path, domain: str) -> None:
    lo, hi = float(line_integral.min()), float(line_integral.max())
    if not np.isfinite([lo, hi]).all():
        raise FrameDomainError(f"{path}: the frame has NaN / Inf values")
    if lo < LINE_INTEGRAL_RANGE[0] or hi > LINE_INTEGRAL_RANGE[1]:
        hint = (f"if the file holds detector intensities pass {_domain_hint('intensity')}; if it holds line "
                "integrals scaled to the file's range (a PNG of an older 'diffdrr-ros render'), pass "
                "--scaled-range MIN MAX with the min and max render printed"
                if domain == "line_integral" else "check --i0 (the intensity of an unattenuated ray)")
        raise FrameDomainError(
            f"{path}: values {lo:.4g}..{hi:.4g} cannot be line integrals of attenuation (expected "
            f"{LINE_INTEGRAL_RANGE[0]}..{LINE_INTEGRAL_RANGE[1]}); {hint}"
        )


def _looks_stretched(stored: np.ndarray) -> bool:
    """An integer image that spans its type's full range exactly: min-max scaled for display."""
    if not np.issubdtype(stored.dtype, np.unsignedinteger):
        return False
    return int(stored.min()) == 0 and int(stored.max()) == int(np.iinfo(stored.dtype).max)


def _sidecar_geometry(sidecar: FrameSidecar, path: Path, shape: tuple[int, int]) -> XRayGeometry | None:
    det = sidecar.detector
    if det is None:
        return None
    if (int(det["height"]), int(det["width"])) != shape:
        raise FrameDomainError(
            f"{path}: the frame is {shape[0]}x{shape[1]} but its sidecar {sidecar_path(path).name} describes a "
            f"{det['height']}x{det['width']} detector; the file was changed after it was written"
        )
    pose = sidecar.pose_carm_deg_mm
    src = sidecar_path(path).name
    return XRayGeometry(
        rows=shape[0], columns=shape[1], spacing_mm=(float(det["spacing_mm"][0]), float(det["spacing_mm"][1])),
        sdd_mm=float(det["sdd_mm"]), sid_mm=float(det["sid_mm"]),
        lao_deg=None if pose is None else pose[1], cranial_deg=None if pose is None else pose[0],
        detector_rotation_deg=0.0 if pose is None else pose[2],
        principal_point_mm=(float(det["principal_point_mm"][0]), float(det["principal_point_mm"][1])),
        sources={k: src for k in ("spacing", "sdd", "sid", "lao", "cranial")}, label=str(path),
    )


_LETTER_AXES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}


def _orientation_vector(letters: str) -> np.ndarray | None:
    """A PatientOrientation value (``"L"``, ``"RF"`` ...) as a unit direction in LPS, or ``None``."""
    if not letters or any(c not in _LETTER_AXES for c in letters):
        return None
    v = np.sum([np.asarray(_LETTER_AXES[c], dtype=np.float64) for c in letters], axis=0)
    n = float(np.linalg.norm(v))
    return None if n == 0 else v / n


def _mirror_from_orientation(ds, geometry: XRayGeometry) -> str | None:
    """``"columns"`` / ``"rows"`` when PatientOrientation (0020,0020) shows a mirrored image, else ``None``.

    The project's images are seen from the source (``x_cam`` x ``y_cam`` = the beam,
    ``docs/geometry.md``); a header whose row x column directions point against the beam at
    its own positioner angles is the mirror image (e.g. displayed facing the patient). The
    flip chosen is the one that brings the directions closest to the project's.
    """
    value = ds.get("PatientOrientation")
    if value is None or len(value) != 2 or not geometry.has_angles:
        return None
    row, col = (_orientation_vector(str(v).upper()) for v in value)
    if row is None or col is None:
        return None
    import torch

    from ..geometry import carm_rotation

    angles = torch.tensor([np.radians(geometry.cranial_deg), np.radians(geometry.lao_deg), 0.0], dtype=torch.float64)
    r_iso_cam = carm_rotation(angles).numpy()
    if float(np.cross(row, col) @ r_iso_cam[:, 2]) >= 0:
        return None
    flip_columns = float(-row @ r_iso_cam[:, 0] + col @ r_iso_cam[:, 1])
    flip_rows = float(row @ r_iso_cam[:, 0] - col @ r_iso_cam[:, 1])
    return "columns" if flip_columns >= flip_rows else "rows"


def _dicom_frame(path: Path, frame_index: int, requested: str | None, i0: float | None,
                 sidecar: FrameSidecar | None) -> XRayFrame:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise OSError(f"cannot read DICOM file {path}: {type(exc).__name__}: {exc}") from exc
    modality = str(ds.get("Modality", "") or "")
    if modality and modality.upper() not in XRAY_MODALITIES:
        raise FrameDomainError(
            f"{path}: Modality {modality} is not a projection X-ray ({', '.join(XRAY_MODALITIES)}); "
            + ("a CT goes to --ct" if modality.upper() == "CT" else "expected an XA / RF / DX frame")
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise FrameDomainError(f"{path}: PhotometricInterpretation {photometric}: expected a grey X-ray frame")
    stored = decode_pixels(ds, index=frame_index, label=str(path))
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    relationship = str(ds.get("PixelIntensityRelationship", "") or "").upper()
    stated = {"LOG": "line_integral", "LIN": "intensity"}.get(relationship)  # DISP / absent: either
    if stated is not None:
        domain = _check_domain(path, stated, f"its PixelIntensityRelationship (0028,1040) {relationship}", requested)
    else:
        domain = requested or (sidecar.domain if sidecar is not None else "intensity")
    if sidecar is not None:
        _check_domain(path, sidecar.domain, f"its sidecar {sidecar_path(path).name}", domain)
    # Canonical: intensities grow with the beam intensity (sign +1), line integrals with the
    # attenuation (sign -1). The other sign, or MONOCHROME1 without a sign tag, is inverted.
    sign_tag = ds.get("PixelIntensityRelationshipSign")
    canonical = 1 if domain == "intensity" else -1
    if sign_tag not in (None, ""):
        inverted, why = int(sign_tag) != canonical, f"PixelIntensityRelationshipSign {int(sign_tag):+d}"
    else:
        inverted, why = photometric == "MONOCHROME1", "MONOCHROME1"
    notes = [f"{modality or 'DICOM'} {ds.file_meta.TransferSyntaxUID.name}"]
    if relationship == "DISP":
        notes.append("DISP: values processed for display")
    if inverted:
        bits = int(ds.get("BitsStored", 16))
        top = float(np.asarray(apply_modality_lut(np.array([2**bits - 1]), ds), dtype=np.float64)[0])
        values = (top - values) if domain == "intensity" else (values.max() - values)
        notes.append(f"inverted ({why})")
    line_integral, how = _to_line_integral(
        values, domain, i0 if i0 is not None else (sidecar.i0 if sidecar is not None else None), path)
    geometry = read_xray_geometry(ds, frame_index=frame_index, label=str(path))
    if sidecar is not None and sidecar.pose_carm_deg_mm is not None:  # XA has no detector-rotation tag
        geometry = replace(geometry, detector_rotation_deg=sidecar.pose_carm_deg_mm[2])
    mirror = _mirror_from_orientation(ds, geometry)
    if mirror is not None:
        line_integral = line_integral[:, ::-1] if mirror == "columns" else line_integral[::-1, :]
        letters = "/".join(str(v) for v in ds.PatientOrientation)
        notes.append(f"{mirror} flipped (PatientOrientation {letters}: a mirror image "
                     "of the view from the source)")
    _check_line_integral_range(line_integral, path, domain)
    return XRayFrame(line_integral.astype(np.float32), domain, f"{how}; {', '.join(notes)}", geometry, sidecar)


def read_frame(
    path: str | Path,
    *,
    domain: str | None = None,
    i0: float | None = None,
    scaled_range: tuple[float, float] | None = None,
    frame_index: int = 0,
) -> XRayFrame:
    """Read an X-ray frame file as line integrals (see the module doc for the rules).

    Args:
        path: ``.npy``, an image file (``.png`` / ``.tif`` ...) or a DICOM file.
        domain: what the caller says the file holds (``"line_integral"`` / ``"intensity"``);
            ``None`` lets the file decide. Must agree with a sidecar or DICOM header that says.
        i0: intensity of an unattenuated ray, for intensity frames (default: the sidecar's, else
            the frame's maximum).
        scaled_range: for a file without a sidecar: its minimum and maximum stand for these
            values (a min-max scaled image whose original range is known).
        frame_index: the frame of a multi-frame DICOM file (0-based).

    Raises:
        FrameDomainError: contradicting flags and file, or values that cannot be line integrals.
        MissingTagError / PixelDataError: from the DICOM header or pixel data.
        OSError: a file that cannot be read.
    """
    p = Path(path)
    if domain is not None and domain not in FRAME_DOMAINS:
        raise ValueError(f"domain must be one of {FRAME_DOMAINS}, got {domain!r}")
    if not p.is_file():
        raise OSError(f"frame file does not exist: {p}")
    sidecar = FrameSidecar.read(p)
    if sidecar is not None and scaled_range is not None:
        raise FrameDomainError(f"{p}: its sidecar {sidecar_path(p).name} gives the scaling; drop --scaled-range")
    if sidecar is not None and sidecar.volume_values != "attenuation":
        raise FrameDomainError(
            f"{p}: its sidecar says it integrates {sidecar.volume_values} voxel values, not attenuation; "
            "register a frame rendered without --raw"
        )
    if p.suffix.lower() != ".npy" and is_dicom_path(p):
        if scaled_range is not None:
            raise FrameDomainError(f"{p}: a DICOM file carries its own scaling (RescaleSlope / RescaleIntercept)")
        return _dicom_frame(p, frame_index, domain, i0, sidecar)

    stored = read_stored_image(p)
    if stored.ndim != 2:
        raise FrameDomainError(f"{p}: expected a 2-D grey frame, got shape {stored.shape}")
    geometry = None
    if sidecar is not None:
        held = _check_domain(p, sidecar.domain, f"its sidecar {sidecar_path(p).name}", domain)
        values = sidecar.values(stored)
        if sidecar.full_scale is not None and sidecar.stored_range[1] > sidecar.stored_range[0] and (
                int(stored.min()) != 0 or int(stored.max()) != sidecar.full_scale):
            raise FrameDomainError(
                f"{p}: stored values {int(stored.min())}..{int(stored.max())} do not span 0..{sidecar.full_scale} as "
                f"its sidecar {sidecar_path(p).name} says; the file was changed after it was written"
            )
        geometry = _sidecar_geometry(sidecar, p, tuple(stored.shape))
        line_integral, how = _to_line_integral(values, held, sidecar.i0 if i0 is None else i0, p)
        how = f"{how}; scaling from {sidecar_path(p).name}"
    else:
        is_npy = p.suffix.lower() == ".npy"
        held = domain or ("line_integral" if is_npy else "intensity")
        values = np.asarray(stored, dtype=np.float64)
        if scaled_range is not None:
            lo, hi = (float(v) for v in scaled_range)
            vmin, vmax = float(values.min()), float(values.max())
            values = lo + (values - vmin) / max(vmax - vmin, 1e-300) * (hi - lo)
        elif domain is None and not is_npy and _looks_stretched(stored):
            raise FrameDomainError(
                f"{p}: stored values span exactly 0..{int(stored.max())} (min-max scaled, and no sidecar "
                f"{sidecar_path(p).name} says what they are). A PNG of an older 'diffdrr-ros render' holds "
                "scaled line integrals: pass --frame-domain line_integral --scaled-range MIN MAX (the min and "
                "max render printed), or re-render it; if it does hold detector intensities, pass "
                "--frame-domain intensity"
            )
        line_integral, how = _to_line_integral(values, held, i0, p)
        if scaled_range is not None:
            how = f"{how}; scaled to {scaled_range[0]:.6g}..{scaled_range[1]:.6g}"
    _check_line_integral_range(line_integral, p, held)
    return XRayFrame(line_integral.astype(np.float32), held, how, geometry, sidecar)
