"""The fixed image: a raw X-ray frame checked and turned into DRR-like units, its pyramid and centroid."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..drr.render import gaussian_blur
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


def smooth_image(
    img: Float[Tensor, "*K H W"], sigma_px: float, mask: Tensor | None = None
) -> Float[Tensor, "*K H W"]:
    """Line-integral images blurred as the DRR's PSF blurs (a Gaussian of ``sigma_px`` on ``exp(-L)``, back to ``L``).

    A fixed image smoothed by ``s`` matches a DRR rendered with ``blur_sigma_px = sqrt(b**2 + s**2)`` (``b``:
    the DRR's own blur): the same pixel grid on both sides, so no sampling mismatch (unlike a coarser level).
    With a ``mask`` (same shape, bool), only the masked pixels are averaged (normalised convolution): the
    collimator's or dark pixels do not bleed into the pixels next to them.
    """
    if sigma_px <= 0:
        return img
    flat = torch.exp(-img.reshape(-1, *img.shape[-2:]))
    if mask is None:
        out = gaussian_blur(flat, float(sigma_px))
    else:
        w = mask.reshape(flat.shape).to(flat)
        out = gaussian_blur(flat * w, float(sigma_px)) / gaussian_blur(w, float(sigma_px)).clamp_min(1e-12)
        out = torch.where(w > 0, out, flat)
    return -torch.log(out.clamp_min(1e-30)).reshape(img.shape)


def erode_mask(mask: Tensor | None, radius_px: int, keep_fraction: float = 0.0) -> Tensor | None:
    """``(*K, H, W)`` bool mask eroded by a square of ``2 radius + 1`` px (the image border is not an edge).

    Returns ``mask`` itself where the erosion would keep less than ``keep_fraction`` of its pixels (a mask
    with many holes, e.g. of dark pixels, would vanish).
    """
    if mask is None or radius_px <= 0:
        return mask
    m = mask.to(torch.float64).reshape(-1, 1, *mask.shape[-2:])
    out = (-F.max_pool2d(-m, 2 * radius_px + 1, 1, radius_px)).reshape(mask.shape) > 0.5
    return out if float(out.sum()) >= keep_fraction * float(mask.sum()) else mask


def centroid_mm(img: Tensor, det: Detector, mask: Tensor | None) -> Tensor:
    """Intensity centroid ``(u, v)`` in mm on the detector of ``(B, H, W)`` images (min removed)."""
    b = img.shape[0]
    w = img - img.reshape(b, -1).min(-1).values[:, None, None]
    if mask is not None:
        w = w * mask.to(w)
    u, v = pixel_axes_mm(det, dtype=img.dtype, device=img.device)
    total = w.sum((-1, -2)).clamp_min(1e-12)
    return torch.stack([(w.sum(-2) * u).sum(-1) / total, (w.sum(-1) * v).sum(-1) / total], -1)
