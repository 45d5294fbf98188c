"""Trilinear ray marching: a smooth approximation of the Siddon line integral.

Same grid coordinates and output as :mod:`diffdrr_ros.core.siddon` (voxel ``(i, j, k)``
occupies ``[i, i+1) x [j, j+1) x [k, k+1)``, result in alpha units). Each ray is clipped to
the volume box ``[alpha_in, alpha_out]`` and sampled at ``n`` midpoints

    alpha_m = alpha_in + (m + 1/2) h,   h = (alpha_out - alpha_in) / n,
    S = h * sum_m V(src + alpha_m (tgt - src)),

with ``V`` trilinearly interpolated between voxel centres (clamped at the border, like
``grid_sample(padding_mode="border", align_corners=True)``). Samples follow the ray's
own chord, not the whole source-detector segment, so none are wasted in air.

``n`` is either fixed (``n_samples``) or chosen per ray from a step length
(``n_samples=None``): ``n = ceil(max_a |chord_a| / step_voxels)``, where ``chord_a`` is the
extent of the ray's chord along grid axis ``a`` in voxels, so that consecutive samples are
at most ``step_voxels`` voxels apart along every axis (one sample per voxel of the
dominant axis for the default ``step_voxels = 1``). On the 512 x 512 x 133 chest CT this
is within 2e-4 (relative RMS) of a 4000-sample reference, against 3e-3 to 6e-3 between
the trilinear and the Siddon image. The count is piecewise constant in the pose, so the
image can jump by that much when a ray gains a sample; fix ``n_samples`` when that matters
(finite differences).

* :func:`raymarch_torch` - the reference, ``torch.nn.functional.grid_sample`` and autograd.
* :func:`raymarch_numba` - fused CPU kernel; the analytic gradient with respect to the
  end points (direct terms plus the motion of ``alpha_in`` / ``alpha_out``) is accumulated
  in the same pass. The sample loop is branch-free and vectorises (SIMD gathers); the
  volume copy and ray order of :mod:`.layout` keep it in cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from . import cuda_kernels
from .layout import trace_rays_cpu
from .ray_kernels import COUNT_SLACK, sampling_args, trace_with_gradient
from .siddon import _box_clip


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
    amin, amax = _box_clip(src, d, size)
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


def raymarch_numba(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    n_samples: int | None,
    reorder: bool = True,
    step_voxels: float = 1.0,
) -> Float[Tensor, " N"]:
    """Fused CPU trilinear marching with the analytic end-point gradient.

    ``n_samples=None``: per-ray counts from ``step_voxels``. ``reorder``: walk a cached copy
    of the volume whose contiguous axis follows the rays, rays grouped by neighbourhood
    (:mod:`.layout`); same result, faster.
    """
    _check_samples(n_samples, step_voxels)
    n_fixed, step = sampling_args(n_samples, step_voxels)

    def trace(s: Tensor, t: Tensor, want_jac: bool):
        return trace_rays_cpu("trilinear", data, s, t, want_jac, n_fixed, step, reorder)

    return trace_with_gradient(trace, src, tgt)


def _check_samples(n_samples: int | None, step_voxels: float) -> None:
    if n_samples is not None and int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if n_samples is None and not step_voxels > 0:
        raise ValueError(f"step_voxels must be > 0, got {step_voxels}")


def raymarch(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    n_samples: int | None,
    backend: str = "auto",
    reorder: bool = True,
    step_voxels: float = 1.0,
) -> Float[Tensor, " N"]:
    """Trilinear line integral ``S`` per ray; ``backend``: ``auto``, ``numba``, ``cuda`` or ``torch``.

    ``n_samples`` per ray, or ``None`` for per-ray counts with a step of ``step_voxels``.
    ``auto`` chooses as :func:`.siddon.siddon` does.
    """
    _check_samples(n_samples, step_voxels)
    if backend == "auto":
        if src.device.type == "cpu" and not data.requires_grad:
            backend = "numba"
        else:
            backend = "cuda" if cuda_kernels.ready(src.device, data.requires_grad) else "torch"
    if backend == "numba":
        return raymarch_numba(data, src, tgt, n_samples, reorder, step_voxels)
    if backend == "cuda":
        return cuda_kernels.raymarch_cuda(data, src, tgt, n_samples, step_voxels)
    if backend == "torch":
        return raymarch_torch(data, src, tgt, n_samples, step_voxels)
    raise ValueError(f"unknown ray-marching backend {backend!r} (auto, numba, cuda, torch)")
