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
* :func:`siddon_numba` - the fast CPU kernel: incremental (Jacobs) traversal, one thread
  per ray, memory ``O(rays)``. It returns the analytic gradient of ``S`` with respect to
  the ray end points in the same pass: crossing plane ``x_a = P`` at ``alpha`` with a
  jump ``J = V_before - V_after`` (outside the volume ``V = 0``) contributes
  ``dS/dsrc_a += J (alpha - 1) / d_a`` and ``dS/dtgt_a += -J alpha / d_a``, ``d = tgt - src``.
  So forward + backward costs one traversal.

:func:`siddon` dispatches between them.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


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


@numba.njit(cache=True, inline="always")
def _start_index(p: float, d: float, n: int) -> int:
    """Voxel index along one axis of the segment that starts at grid coordinate ``p``."""
    i = math.floor(p) if d >= 0 else math.ceil(p) - 1
    return min(max(i, 0), n - 1)


@numba.njit(cache=True, inline="always")
def _next_crossing(i: int, step: int, s: float, inv_d: float) -> float:
    """Alpha of the next plane crossed when leaving voxel ``i`` in direction ``step``."""
    if step == 0:
        return math.inf
    plane = i + 1 if step > 0 else i
    return (plane - s) * inv_d


@numba.njit(parallel=True, cache=True, fastmath=False)
def _siddon_kernel(vol, src, tgt, out, jac, want_jac):  # pragma: no cover - compiled
    nx, ny, nz = vol.shape
    dims = (nx, ny, nz)
    for r in numba.prange(src.shape[0]):
        s = (src[r, 0], src[r, 1], src[r, 2])
        d = (tgt[r, 0] - s[0], tgt[r, 1] - s[1], tgt[r, 2] - s[2])
        out[r] = 0.0
        if want_jac:
            for q in range(6):
                jac[r, q] = 0.0
        amin, amax = 0.0, 1.0
        ain, aout = -1, -1
        ok = True
        for a in range(3):
            if d[a] != 0.0:
                a0 = -s[a] / d[a]
                a1 = (dims[a] - s[a]) / d[a]
                lo, hi = min(a0, a1), max(a0, a1)
                if lo > amin:
                    amin, ain = lo, a
                if hi < amax:
                    amax, aout = hi, a
            elif s[a] < 0.0 or s[a] > dims[a]:
                ok = False
        if not ok or amin >= amax:
            continue
        step = (
            (1 if d[0] > 0 else (-1 if d[0] < 0 else 0)),
            (1 if d[1] > 0 else (-1 if d[1] < 0 else 0)),
            (1 if d[2] > 0 else (-1 if d[2] < 0 else 0)),
        )
        inv = (
            1.0 / d[0] if d[0] != 0.0 else 0.0,
            1.0 / d[1] if d[1] != 0.0 else 0.0,
            1.0 / d[2] if d[2] != 0.0 else 0.0,
        )
        ix = _start_index(s[0] + amin * d[0], d[0], nx)
        iy = _start_index(s[1] + amin * d[1], d[1], ny)
        iz = _start_index(s[2] + amin * d[2], d[2], nz)
        nxt_x = _next_crossing(ix, step[0], s[0], inv[0])
        nxt_y = _next_crossing(iy, step[1], s[1], inv[1])
        nxt_z = _next_crossing(iz, step[2], s[2], inv[2])
        v = np.float64(vol[ix, iy, iz])
        g0 = g1 = g2 = h0 = h1 = h2 = 0.0  # dS/dsrc, dS/dtgt
        if want_jac and ain >= 0:  # entering through a plane: jump 0 -> v
            jump = -v
            if ain == 0:
                g0 += jump * (amin - 1.0) * inv[0]
                h0 -= jump * amin * inv[0]
            elif ain == 1:
                g1 += jump * (amin - 1.0) * inv[1]
                h1 -= jump * amin * inv[1]
            else:
                g2 += jump * (amin - 1.0) * inv[2]
                h2 -= jump * amin * inv[2]
        acc = 0.0
        a_cur = amin
        while True:
            if nxt_x <= nxt_y and nxt_x <= nxt_z:
                axis, a_next = 0, nxt_x
            elif nxt_y <= nxt_z:
                axis, a_next = 1, nxt_y
            else:
                axis, a_next = 2, nxt_z
            if a_next >= amax:
                break
            acc += (a_next - a_cur) * v
            a_cur = a_next
            if axis == 0:
                ix += step[0]
                if ix < 0 or ix >= nx:
                    break
                nxt_x = _next_crossing(ix, step[0], s[0], inv[0])
            elif axis == 1:
                iy += step[1]
                if iy < 0 or iy >= ny:
                    break
                nxt_y = _next_crossing(iy, step[1], s[1], inv[1])
            else:
                iz += step[2]
                if iz < 0 or iz >= nz:
                    break
                nxt_z = _next_crossing(iz, step[2], s[2], inv[2])
            v_new = np.float64(vol[ix, iy, iz])
            if want_jac:
                jump = v - v_new
                if axis == 0:
                    g0 += jump * (a_cur - 1.0) * inv[0]
                    h0 -= jump * a_cur * inv[0]
                elif axis == 1:
                    g1 += jump * (a_cur - 1.0) * inv[1]
                    h1 -= jump * a_cur * inv[1]
                else:
                    g2 += jump * (a_cur - 1.0) * inv[2]
                    h2 -= jump * a_cur * inv[2]
            v = v_new
        acc += (amax - a_cur) * v
        out[r] = acc
        if want_jac:
            if aout >= 0:  # leaving through a plane: jump v -> 0
                jump = v
                if aout == 0:
                    g0 += jump * (amax - 1.0) * inv[0]
                    h0 -= jump * amax * inv[0]
                elif aout == 1:
                    g1 += jump * (amax - 1.0) * inv[1]
                    h1 -= jump * amax * inv[1]
                else:
                    g2 += jump * (amax - 1.0) * inv[2]
                    h2 -= jump * amax * inv[2]
            jac[r, 0], jac[r, 1], jac[r, 2] = g0, g1, g2
            jac[r, 3], jac[r, 4], jac[r, 5] = h0, h1, h2


def _as_numpy_volume(data: Tensor) -> np.ndarray:
    """Zero-copy view for CPU float32/float64 tensors (the kernels compile for both)."""
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    return data.detach().to("cpu", dtype).contiguous().numpy()


class _SiddonNumba(torch.autograd.Function):
    """Autograd wrapper: forward returns ``S``; the saved Jacobian gives the backward."""

    @staticmethod
    def forward(ctx, data: Tensor, src: Tensor, tgt: Tensor) -> Tensor:  # type: ignore[override]
        want_jac = src.requires_grad or tgt.requires_grad
        src_np = src.detach().to("cpu", torch.float64).contiguous().numpy()
        tgt_np = tgt.detach().to("cpu", torch.float64).contiguous().numpy()
        n = src_np.shape[0]
        out = np.empty(n, dtype=np.float64)
        jac = np.empty((n, 6) if want_jac else (1, 6), dtype=np.float64)
        _siddon_kernel(_as_numpy_volume(data), src_np, tgt_np, out, jac, want_jac)
        if want_jac:
            ctx.save_for_backward(torch.from_numpy(jac).to(src.dtype))
        return torch.from_numpy(out).to(src.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (jac,) = ctx.saved_tensors
        g = grad_out[:, None] * jac
        return None, g[:, :3], g[:, 3:]


def siddon_numba(
    data: Float[Tensor, "I J K"], src: Float[Tensor, "N 3"], tgt: Float[Tensor, "N 3"]
) -> Float[Tensor, " N"]:
    """Fast CPU Siddon (numba, all cores) with the analytic gradient w.r.t. ``src``, ``tgt``.

    The volume itself gets no gradient (registration optimises the pose).
    """
    return _SiddonNumba.apply(data, src, tgt)


def siddon(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    backend: str = "auto",
) -> Float[Tensor, " N"]:
    """Siddon radiological path ``S`` per ray; ``backend`` is ``auto``, ``numba`` or ``torch``.

    ``auto`` takes the fused numba kernel on the CPU and the torch reference elsewhere
    (CUDA), and the reference whenever the volume itself needs a gradient.
    """
    if backend == "auto":
        backend = "numba" if src.device.type == "cpu" and not data.requires_grad else "torch"
    if backend == "numba":
        return siddon_numba(data, src, tgt)
    if backend == "torch":
        return siddon_torch(data, src, tgt)
    raise ValueError(f"unknown Siddon backend {backend!r} (auto, numba, torch)")
