"""Readable references in plain PyTorch: exact Siddon and trilinear ray marching.

Both work in *grid coordinates*: continuous voxel coordinates in which voxel ``(i, j, k)``
occupies the unit cube ``[i, i+1) x [j, j+1) x [k, k+1)`` (voxel centres at ``index + 0.5``;
the volume is the box ``[0, I] x [0, J] x [0, K]``). A ray runs from ``src`` (alpha = 0) to
``tgt`` (alpha = 1); the result is in alpha units, so the line integral in mm is
``S * |tgt - src|_mm`` (alpha is invariant under the grid -> CT affine; the caller multiplies
by the length).

* :func:`siddon_torch` - every plane crossing of every ray as a tensor, sorted, midpoints
  looked up: ``S = sum_m (alpha_{m+1} - alpha_m) V[voxel_m]``. Memory ``O(rays x (I + J + K))``.
* :func:`raymarch_torch` - trilinear samples at ``n`` midpoints of the ray's chord through the
  volume, ``alpha_m = alpha_in + (m + 1/2) h``, ``S = h sum_m V(src + alpha_m d)``, with ``V``
  interpolated between voxel centres (clamped at the border, like ``grid_sample(padding_mode=
  "border", align_corners=True)``). ``n`` is fixed (``n_samples``) or per ray from a step
  (:func:`sample_counts`): ``n = ceil(max_a |chord_a| / step_voxels)`` voxels of the dominant
  axis (within 2e-4 relative RMS of a 4000-sample reference on the 512 x 512 x 133 chest CT at
  ``step_voxels = 1``). The count is piecewise constant in the pose; fix ``n_samples`` for
  finite differences.

Differentiable by autograd (pose and volume), on any device. The fast kernels
(:mod:`.per_ray`, compiled for the CPU in :mod:`.cpu` and for CUDA in :mod:`.cuda`) compute
the same numbers and are tested against these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .per_ray import COUNT_SLACK


def box_clip(
    src: Float[Tensor, "N 3"], d: Float[Tensor, "N 3"], size: Float[Tensor, " 3"]
) -> tuple[Float[Tensor, " N"], Float[Tensor, " N"]]:
    """Entry and exit alpha of each ray in the box ``[0, size]``, clipped to ``[0, 1]``."""
    inv = 1.0 / d  # +-inf where d == 0
    a0 = (0.0 - src) * inv
    a1 = (size - src) * inv
    lo = torch.minimum(a0, a1)
    hi = torch.maximum(a0, a1)
    parallel = d == 0
    inside = (src >= 0) & (src <= size)
    lo = torch.where(parallel, torch.where(inside, -math.inf, math.inf), lo)
    hi = torch.where(parallel, torch.where(inside, math.inf, -math.inf), hi)
    amin = lo.amax(-1).clamp_min(0.0)
    amax = hi.amin(-1).clamp_max(1.0)
    return amin, amax


def siddon_torch(
    data: Float[Tensor, "I J K"], src: Float[Tensor, "N 3"], tgt: Float[Tensor, "N 3"]
) -> Float[Tensor, " N"]:
    """Reference Siddon: all crossings per ray, sorted; differentiable by autograd."""
    shape = data.shape
    size = torch.tensor(shape, dtype=src.dtype, device=src.device)
    d = tgt - src
    amin, amax = box_clip(src, d, size)
    alphas = [amin[:, None], amax[:, None]]
    for axis, n in enumerate(shape):
        planes = torch.arange(n + 1, dtype=src.dtype, device=src.device)
        da = d[:, axis : axis + 1]
        a = (planes[None, :] - src[:, axis : axis + 1]) / torch.where(da == 0, torch.ones_like(da), da)
        a = torch.where(da == 0, amax[:, None], a)  # no crossings on this axis
        alphas.append(a)
    alpha = torch.cat(alphas, -1)
    # Crossings outside [amin, amax] collapse onto the ends and give zero-length segments.
    alpha = torch.minimum(torch.maximum(alpha, amin[:, None]), amax[:, None])
    alpha = torch.sort(alpha, dim=-1).values
    seg = alpha[:, 1:] - alpha[:, :-1]
    mid = 0.5 * (alpha[:, 1:] + alpha[:, :-1])
    pos = src[:, None, :] + mid[..., None] * d[:, None, :]
    idx = pos.detach().floor().long()
    for axis, n in enumerate(shape):
        idx[..., axis].clamp_(0, n - 1)
    flat = (idx[..., 0] * shape[1] + idx[..., 1]) * shape[2] + idx[..., 2]
    values = data.reshape(-1)[flat]
    seg = torch.where(amax[:, None] > amin[:, None], seg, torch.zeros_like(seg))
    return (seg * values).sum(-1)


def sample_counts(
    d: Float[Tensor, "N 3"], amin: Float[Tensor, " N"], amax: Float[Tensor, " N"], step_voxels: float
) -> Tensor:
    """Samples per ray for a step of ``step_voxels`` along the dominant axis (at least 1).

    ``ceil(extent / step - COUNT_SLACK)``: a ray through the whole volume has an extent of
    exactly ``n`` voxels, up to rounding, and rounding must not decide between n and n + 1.
    """
    span = (amax - amin).clamp_min(0)
    return torch.ceil(d.abs().amax(-1) * span / step_voxels - COUNT_SLACK).clamp_min(1).long()


def raymarch_torch(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    n_samples: int | None,
    step_voxels: float = 1.0,
) -> Float[Tensor, " N"]:
    """Reference trilinear line integral (autograd through ``grid_sample``).

    ``n_samples=None``: per-ray counts from ``step_voxels`` (rays padded to the longest,
    padding masked out).
    """
    shape = data.shape
    size = torch.tensor(shape, dtype=src.dtype, device=src.device)
    d = tgt - src
    amin, amax = box_clip(src, d, size)
    hit = amax > amin
    amax = torch.where(hit, amax, amin)
    if n_samples is None:
        counts = sample_counts(d.detach(), amin.detach(), amax.detach(), step_voxels)
        n_max = int(counts.max()) if counts.numel() else 1
        m = torch.arange(n_max, dtype=src.dtype, device=src.device)
        t = (m[None, :] + 0.5) / counts[:, None].to(src.dtype)  # N n_max
        valid = m[None, :] < counts[:, None]
        n_div = counts.to(src.dtype)
    else:
        n_max = int(n_samples)
        t = ((torch.arange(n_max, dtype=src.dtype, device=src.device) + 0.5) / n_max)[None, :]
        valid = None
        n_div = torch.full_like(amin, float(n_max))
    alpha = amin[:, None] + t * (amax - amin)[:, None]  # N n
    pos = src[:, None, :] + alpha[..., None] * d[:, None, :] - 0.5  # voxel-centre coordinates
    denom = (size - 1).clamp_min(1)
    norm = 2 * pos / denom - 1  # align_corners=True: -1 -> centre of voxel 0
    grid = norm.flip(-1).reshape(1, 1, -1, n_max, 3).to(data.dtype)  # (x, y, z) = (k, j, i)
    samples = F.grid_sample(
        data[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    ).reshape(-1, n_max).to(src.dtype)
    if valid is not None:
        samples = torch.where(valid, samples, torch.zeros_like(samples))
    h = (amax - amin) / n_div
    return h * samples.sum(-1)
