"""DRR-on-X-ray overlays for a monitor in the OR (and for the demo's PNGs).

The frame is shown in grey, the DRR at the registered pose is drawn over it either as
edges (Canny, in colour) or alpha-blended. Input images are any float/int 2-D arrays;
output is ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_uint8(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Robust min-max scaling of a 2-D image to uint8 (percentile window)."""
    img = np.asarray(image, dtype=np.float64)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    return (np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def overlay(
    frame: np.ndarray,
    drr: np.ndarray,
    mode: str = "edges",
    color: tuple[int, int, int] = (0, 255, 0),
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw ``drr`` over ``frame`` (same shape). ``mode``: ``edges`` or ``blend``. Returns RGB uint8."""
    if frame.shape != drr.shape:
        raise ValueError(f"frame {frame.shape} and DRR {drr.shape} differ in shape")
    base = cv2.cvtColor(to_uint8(frame), cv2.COLOR_GRAY2RGB)
    moving = to_uint8(drr)
    if mode == "blend":
        tint = np.zeros_like(base)
        tint[..., :] = np.array(color, dtype=np.uint8)
        weight = (moving.astype(np.float64) / 255.0)[..., None] * alpha
        return (base * (1 - weight) + tint * weight).round().astype(np.uint8)
    if mode != "edges":
        raise ValueError(f"unknown overlay mode {mode!r} (edges, blend)")
    blurred = cv2.GaussianBlur(moving, (3, 3), 0)
    hi = max(10.0, float(np.percentile(blurred, 90)) * 0.5)
    edges = cv2.Canny(blurred, hi * 0.5, hi) > 0
    out = base.copy()
    out[edges] = color
    return out


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Concatenate RGB or grey images horizontally (grey ones are scaled to uint8)."""
    tiles = [img if img.ndim == 3 else cv2.cvtColor(to_uint8(img), cv2.COLOR_GRAY2RGB) for img in images]
    return np.concatenate(tiles, axis=1)


def save_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (OpenCV expects BGR)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
