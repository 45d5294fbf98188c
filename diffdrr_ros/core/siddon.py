"""Exact Siddon ray tracing: the radiological path of rays through a voxel grid.

Both implementations work in *grid coordinates*: continuous voxel coordinates in which
voxel ``(i, j, k)`` occupies the unit cube ``[i, i+1) x [j, j+1) x [k, k+1)`` (so voxel
centres sit at ``index + 0.5`` and the volume is the box ``[0, I] x [0, J] x [0, K]``).
A ray runs from ``src`` (alpha = 0) to ``tgt`` (alpha = 1); the result is

    S = sum_m (alpha_{m+1} - alpha_m) * V[voxel_m]            (dimensionless alpha units)

so the line integral in mm is ``S * |tgt - src|_mm`` (alpha is invariant under the affine
that maps grid coordinates to the CT frame; the caller multiplies by the length).

* :func:`siddon_torch` - the readable reference: every plane crossing of every ray as a
  tensor, sorted, midpoints looked up. Differentiable through autograd; runs on any
  device; memory ``O(rays x (I + J + K))``.
* :func:`siddon_numba` - the fast CPU kernel: incremental (Jacobs) traversal, chunks of
  rays on all cores, memory ``O(rays)``, on a copy of the volume whose contiguous axis follows the
  rays and with the rays grouped by neighbourhood (:mod:`.layout`). It returns the
  analytic gradient of ``S`` with respect to the ray end points in the same pass:
  crossing plane ``x_a = P`` at ``alpha`` with a jump ``J = V_before - V_after`` (outside
  the volume ``V = 0``) contributes ``dS/dsrc_a += J (alpha - 1) / d_a`` and
  ``dS/dtgt_a += -J alpha / d_a``, ``d = tgt - src``. So forward + backward costs one
  traversal.

:func:`siddon` dispatches between them.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from . import cuda_kernels
from .layout import trace_rays_cpu
from .ray_kernels import trace_with_gradient


def _box_clip(
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
    amin, amax = _box_clip(src, d, size)
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


def siddon_numba(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    reorder: bool = True,
) -> Float[Tensor, " N"]:
    """Fast CPU Siddon (numba, all cores) with the analytic gradient w.r.t. ``src``, ``tgt``.

    The volume itself gets no gradient (registration optimises the pose). ``reorder`` lets
    the kernel walk a cached copy of the volume whose contiguous axis is the one most
    parallel to the rays, with the rays grouped by neighbourhood (:mod:`.layout`); the
    result is the same either way, only faster.
    """
    def trace(s: Tensor, t: Tensor, want_jac: bool):
        return trace_rays_cpu("siddon", data, s, t, want_jac, reorder=reorder)

    return trace_with_gradient(trace, src, tgt)


def siddon(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    backend: str = "auto",
    reorder: bool = True,
) -> Float[Tensor, " N"]:
    """Siddon radiological path ``S`` per ray; ``backend``: ``auto``, ``numba``, ``cuda`` or ``torch``.

    ``auto`` takes the numba kernel on the CPU, the CUDA kernel (:mod:`.cuda_kernels`, the
    same per-ray code) on a GPU when numba's CUDA target is installed, and the torch
    reference otherwise, and whenever the volume itself needs a gradient (see
    :func:`.cuda_kernels.ready`: a CUDA target that fails its first use is warned about once
    and not used again). ``reorder``: see :func:`siddon_numba` (CPU only).
    """
    if backend == "auto":
        if src.device.type == "cpu" and not data.requires_grad:
            backend = "numba"
        else:
            backend = "cuda" if cuda_kernels.ready(src.device, data.requires_grad) else "torch"
    if backend == "numba":
        return siddon_numba(data, src, tgt, reorder)
    if backend == "cuda":
        return cuda_kernels.siddon_cuda(data, src, tgt)
    if backend == "torch":
        return siddon_torch(data, src, tgt)
    raise ValueError(f"unknown Siddon backend {backend!r} (auto, numba, cuda, torch)")
