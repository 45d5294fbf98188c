"""Image similarity for 2D/3D registration (the loss is its negative).

Image similarities compare a fixed image (the X-ray) with moving DRRs, batched over the
moving images: ``similarity(moving (B, H, W), fixed (H, W) | (B, H, W), mask) -> (B,)``,
higher is more similar. Losses are their negatives (``loss = -similarity``), as in the
seed (negative ZNCC); L2 is already a distance and is returned as ``-mse``.

* ``zncc``  - zero-normalised cross-correlation of the whole image, in [-1, 1].
* ``l2``    - negative mean squared difference after z-scoring both images (so the
  intensity scale of an X-ray and a DRR does not matter). Note: for z-scored images
  ``mse = 2 - 2 * zncc`` exactly, so ``l2`` ranks poses like ``zncc`` (same landscape).
* ``mse``   - negative mean squared difference of the raw images (the seed's plain L2;
  only meaningful when the fixed image is in the DRR's units, e.g. a DRR).
* ``pncc``  - patch-wise (local) NCC averaged over non-overlapping patches.
* ``mncc``  - multiscale NCC: mean of ZNCC and patch-wise NCC at a few patch sizes.
* ``gncc``  - gradient NCC: ZNCC of the Sobel gradients (x and y), robust to the smooth
  intensity differences between a real fluoroscopy frame and a DRR.
* ``mncc+gncc`` - the xvr recipe, ``0.5 * mncc + 0.5 * gncc``.

Masks (``(H, W)`` bool, True = use the pixel) drop collimator edges or instruments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

_EPS = 1e-8


def _flatten(moving: Tensor, fixed: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    b = moving.shape[0]
    fixed = fixed.expand_as(moving)
    w = torch.ones_like(moving) if mask is None else mask.to(moving.dtype).expand_as(moving)
    return moving.reshape(b, -1), fixed.reshape(b, -1), w.reshape(b, -1)


def zncc(
    moving: Float[Tensor, "B H W"],
    fixed: Float[Tensor, "#B H W"] | Float[Tensor, "H W"],
    mask: Bool[Tensor, "H W"] | None = None,
) -> Float[Tensor, " B"]:
    """Zero-normalised cross-correlation per batch element (masked pixels only)."""
    m, f, w = _flatten(moving, fixed, mask)
    n = w.sum(-1).clamp_min(1)
    mu_m = (m * w).sum(-1, keepdim=True) / n[:, None]
    mu_f = (f * w).sum(-1, keepdim=True) / n[:, None]
    dm, df = (m - mu_m) * w, (f - mu_f) * w
    cov = (dm * df).sum(-1)
    return cov / torch.sqrt((dm * dm).sum(-1) * (df * df).sum(-1) + _EPS)


def _zscore(x: Tensor, w: Tensor) -> Tensor:
    n = w.sum(-1, keepdim=True).clamp_min(1)
    mu = (x * w).sum(-1, keepdim=True) / n
    sd = torch.sqrt((((x - mu) * w) ** 2).sum(-1, keepdim=True) / n + _EPS)
    return (x - mu) / sd


def neg_l2(moving: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Float[Tensor, " B"]:
    """Negative mean squared difference of the z-scored images (higher is better, max 0)."""
    m, f, w = _flatten(moving, fixed, mask)
    d = (_zscore(m, w) - _zscore(f, w)) * w
    return -(d * d).sum(-1) / w.sum(-1).clamp_min(1)


def neg_mse(moving: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Float[Tensor, " B"]:
    """Negative mean squared difference of the raw images (no normalisation)."""
    m, f, w = _flatten(moving, fixed, mask)
    d = (m - f) * w
    return -(d * d).sum(-1) / w.sum(-1).clamp_min(1)


def patch_ncc(moving: Tensor, fixed: Tensor, mask: Tensor | None = None, patch: int = 8) -> Float[Tensor, " B"]:
    """Mean ZNCC over non-overlapping ``patch x patch`` tiles (edge remainders dropped)."""
    b, h, w = moving.shape
    p = max(2, min(patch, h, w))
    hh, ww = (h // p) * p, (w // p) * p
    fixed = fixed.expand_as(moving)

    def tiles(x: Tensor) -> Tensor:
        x = x[:, :hh, :ww].reshape(b, hh // p, p, ww // p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(-1, p, p)

    n_tiles = (hh // p) * (ww // p)
    tmask = None if mask is None else tiles(mask.expand_as(moving).to(moving.dtype)) > 0.5
    if tmask is None:
        scores = zncc(tiles(moving), tiles(fixed))
        return scores.reshape(b, n_tiles).mean(-1)
    # Tiles that are mostly masked out do not vote.
    m, f, wt = tiles(moving).reshape(-1, p * p), tiles(fixed).reshape(-1, p * p), tmask.reshape(-1, p * p)
    scores = _masked_zncc_rows(m, f, wt)
    vote = (wt.float().mean(-1) > 0.5).to(moving.dtype)
    scores, vote = scores.reshape(b, n_tiles), vote.reshape(b, n_tiles)
    return (scores * vote).sum(-1) / vote.sum(-1).clamp_min(1)


def _masked_zncc_rows(m: Tensor, f: Tensor, w: Tensor) -> Tensor:
    w = w.to(m.dtype)
    n = w.sum(-1, keepdim=True).clamp_min(1)
    dm = (m - (m * w).sum(-1, keepdim=True) / n) * w
    df = (f - (f * w).sum(-1, keepdim=True) / n) * w
    return (dm * df).sum(-1) / torch.sqrt((dm * dm).sum(-1) * (df * df).sum(-1) + _EPS)


def multiscale_ncc(
    moving: Tensor, fixed: Tensor, mask: Tensor | None = None, patches: tuple[int, ...] = (16, 8)
) -> Float[Tensor, " B"]:
    """Mean of global ZNCC and patch-wise NCC at the given patch sizes."""
    scores = [zncc(moving, fixed, mask)] + [patch_ncc(moving, fixed, mask, p) for p in patches]
    return torch.stack(scores, 0).mean(0)


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8


def image_gradients(x: Float[Tensor, "B H W"]) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W"]]:
    """Sobel gradients (d/dcol, d/drow) with replicate padding: [1 2 1] / 8 across, central difference along.

    Shifted slices on the CPU (float64 ``conv2d`` is slow there); elsewhere :func:`image_gradients_reference`
    (one convolution launch per direction).
    """
    if x.device.type != "cpu":
        return image_gradients_reference(x)
    xp = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    across_rows = xp[:, :-2, :] + 2 * xp[:, 1:-1, :] + xp[:, 2:, :]  # B H W+2
    across_cols = xp[:, :, :-2] + 2 * xp[:, :, 1:-1] + xp[:, :, 2:]  # B H+2 W
    return (across_rows[:, :, 2:] - across_rows[:, :, :-2]) / 8, (across_cols[:, 2:, :] - across_cols[:, :-2, :]) / 8


def image_gradients_reference(x: Float[Tensor, "B H W"]) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W"]]:
    """:func:`image_gradients` by convolution with the Sobel kernels (the readable reference)."""
    k = _SOBEL.to(x)
    xp = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(xp, k[None, None])[:, 0]
    gy = F.conv2d(xp, k.T[None, None])[:, 0]
    return gx, gy


def gradient_ncc(moving: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Float[Tensor, " B"]:
    """Mean ZNCC of the x and y Sobel gradient images."""
    mgx, mgy = image_gradients(moving)
    fgx, fgy = image_gradients(fixed.expand_as(moving))
    if mask is not None:  # gradients at the mask border are artefacts: erode by one pixel (per image)
        m = mask.to(moving.dtype)
        mask = (-F.max_pool2d(-m.reshape(-1, 1, *m.shape[-2:]), 3, 1, 1)).reshape(m.shape) > 0.5
    return 0.5 * (zncc(mgx, fgx, mask) + zncc(mgy, fgy, mask))


def mncc_gncc(moving: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Float[Tensor, " B"]:
    """``0.5 * multiscale NCC + 0.5 * gradient NCC`` (the xvr pipeline's similarity)."""
    return 0.5 * multiscale_ncc(moving, fixed, mask) + 0.5 * gradient_ncc(moving, fixed, mask)


SIMILARITIES: dict[str, Callable[..., Tensor]] = {
    "zncc": zncc,
    "l2": neg_l2,
    "mse": neg_mse,
    "pncc": patch_ncc,
    "mncc": multiscale_ncc,
    "gncc": gradient_ncc,
    "mncc+gncc": mncc_gncc,
}


def get_similarity(name: str) -> Callable[..., Tensor]:
    """Look a similarity up by name (see :data:`SIMILARITIES`)."""
    try:
        return SIMILARITIES[name]
    except KeyError:
        raise ValueError(f"unknown similarity {name!r}; choose from {sorted(SIMILARITIES)}") from None
