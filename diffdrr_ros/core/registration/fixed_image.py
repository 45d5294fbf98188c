"""The fixed image: a raw X-ray frame checked and turned into DRR-like units, its pyramid and centroid."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..geometry.detector import Detector, pixel_axes_mm


class FixedImageError(ValueError):
    """The X-ray frame cannot be used (NaN/Inf, constant, empty, wrong shape or type)."""


def prepare_fixed(
    image: np.ndarray | Tensor,
    *,
    log_transform: bool = False,
    i0: float | None = None,
    invert: bool = False,
) -> Float[Tensor, "H W"]:
    """Turn a raw X-ray frame into a float image comparable with a DRR (line integrals).

    Args:
        image: ``(H, W)`` uint8/uint16/int/float array or tensor (a singleton channel is
            squeezed; colour images must be converted to grey by the caller).
        log_transform: apply Beer-Lambert, ``-log(I / I0)``: raw detector intensities become
            line integrals. ``i0`` defaults to the frame's maximum (the unattenuated level).
        invert: negate the image (for displays that show bone dark).

    Raises:
        FixedImageError: empty, not 2-D, non-finite or constant images.
    """
    arr = image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if arr.dim() == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.squeeze(0) if arr.shape[0] == 1 else arr.squeeze(-1)
    if arr.dim() != 2:
        raise FixedImageError(f"expected a 2-D grey image, got shape {tuple(arr.shape)}")
    if arr.numel() == 0:
        raise FixedImageError("empty image")
    if arr.dtype == torch.bool or arr.is_complex():
        raise FixedImageError(f"unsupported pixel type {arr.dtype}")
    x = arr.to(torch.float32)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise FixedImageError(f"image has {bad} NaN/Inf pixels")
    if float(x.max() - x.min()) <= 1e-12 * max(1.0, float(x.abs().max())):
        raise FixedImageError("image is constant (no structure to register)")
    if log_transform:
        ref = float(x.max()) if i0 is None else float(i0)
        if ref <= 0:
            raise FixedImageError("log transform needs a positive I0")
        x = -torch.log(x.clamp_min(ref * 1e-6) / ref)
    return -x if invert else x


def downsample_image(img: Float[Tensor, "*K H W"], det: Detector) -> Float[Tensor, "*K h w"]:
    """Area-average ``img`` (any leading dims) to ``det``'s shape (the detector pyramid of the fixed image)."""
    if tuple(img.shape[-2:]) == det.shape:
        return img
    flat = img.reshape(-1, 1, *img.shape[-2:])
    return F.interpolate(flat, size=det.shape, mode="area").reshape(*img.shape[:-2], *det.shape)


def centroid_mm(img: Tensor, det: Detector, mask: Tensor | None) -> Tensor:
    """Intensity centroid ``(u, v)`` in mm on the detector of ``(B, H, W)`` images (min removed)."""
    b = img.shape[0]
    w = img - img.reshape(b, -1).min(-1).values[:, None, None]
    if mask is not None:
        w = w * mask.to(w)
    u, v = pixel_axes_mm(det, dtype=img.dtype, device=img.device)
    total = w.sum((-1, -2)).clamp_min(1e-12)
    return torch.stack([(w.sum(-2) * u).sum(-1) / total, (w.sum(-1) * v).sum(-1) / total], -1)
