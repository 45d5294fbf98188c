"""Writing a rendered frame to a file that says what it holds (.npy, .png, .tif, .dcm + sidecar).

* ``.npy``: the float32 values as they are;
* ``.png`` / ``.tif`` / ``.tiff``: 16-bit, min-max scaled to 0..65535;
* ``.dcm``: an XA DICOM file (:mod:`.dicom_writer`), 16-bit with RescaleSlope / Intercept.

Every file gets a sidecar ``<file>.json`` (:mod:`.frame_sidecar`) with the domain, the
scaling (so the values are recovered exactly, up to 16-bit quantisation), the pose and the
detector; :func:`.frames.read_frame` reads it back.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt16

from ..geometry import CArmJoints, Detector
from .dicom_writer import write_xa_dicom
from .frame_sidecar import FRAME_DOMAINS, FrameSidecar

__all__ = ["FRAME_SUFFIXES", "stored_uint16", "write_frame"]

FRAME_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".dcm")
FULL_SCALE = 65535


def stored_uint16(values: Float[np.ndarray, "H W"]) -> tuple[UInt16[np.ndarray, "H W"], float, float]:
    """Min-max scale ``values`` to 0..65535: ``(stored, lo, hi)`` with ``value = lo + stored / 65535 (hi - lo)``."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    scaled = np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)
    return (scaled * FULL_SCALE).round().astype(np.uint16), lo, hi


def write_frame(
    path: str | Path,
    values: Float[np.ndarray, "H W"],
    *,
    domain: str,
    detector: Detector,
    pose_carm_deg_mm: tuple[float, ...] | list[float],
    volume_values: str = "attenuation",
    i0: float = 1.0,
) -> list[Path]:
    """Write ``values`` (line integrals, or intensities ``i0 exp(-L)``) and its sidecar; returns both paths.

    Args:
        domain: ``"line_integral"`` or ``"intensity"``.
        detector: the detector the frame was rendered on.
        pose_carm_deg_mm: ``(theta, phi, gamma, bx, by, bz)``, deg and mm.
        volume_values: ``"attenuation"`` or ``"raw"`` (voxel values integrated as they are).

    Raises:
        ValueError: an unknown domain or an unsupported suffix (see :data:`FRAME_SUFFIXES`).
        OSError: the file could not be written.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if domain not in FRAME_DOMAINS:
        raise ValueError(f"domain must be one of {FRAME_DOMAINS}, got {domain!r}")
    if suffix not in FRAME_SUFFIXES:
        raise ValueError(f"{p}: unsupported frame format {suffix or '(none)'}; use one of {', '.join(FRAME_SUFFIXES)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray(values, dtype=np.float32)
    pose = tuple(float(v) for v in pose_carm_deg_mm)
    sidecar = FrameSidecar(domain=domain, i0=float(i0), volume_values=volume_values, pose_carm_deg_mm=pose,
                           detector=FrameSidecar.detector_dict(detector))
    if suffix == ".npy":
        np.save(p, x)
    else:
        stored, lo, hi = stored_uint16(x)
        sidecar = FrameSidecar(**{**sidecar.__dict__, "stored_range": (lo, hi), "full_scale": FULL_SCALE})
        if suffix == ".dcm":
            joints = CArmJoints(lao_rad=math.radians(pose[1]), cranial_rad=math.radians(pose[0]),
                                detector_rotation_rad=math.radians(pose[2]))
            slope = (hi - lo) / FULL_SCALE if hi > lo else 1.0
            what = "line integrals (attenuation x mm)" if domain == "line_integral" else f"intensities (I0 = {i0:g})"
            write_xa_dicom(p, stored, rescale=(slope, lo), domain=domain, detector=detector, joints=joints,
                           description=f"diffdrr-ros DRR: {what}; pose theta phi gamma (deg) bx by bz (mm) "
                                       + " ".join(f"{v:g}" for v in pose))
        else:
            import cv2

            if not cv2.imwrite(str(p), stored):
                raise OSError(f"could not write {p}")
    return [p, sidecar.write(p)]
