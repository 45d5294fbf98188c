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

import numba
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .layout import KernelRays, as_numpy_volume, run_chunked


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


@numba.njit(nogil=True, cache=True, fastmath=False)
def _siddon_kernel(vol, src, tgt, out, jac, want_jac):  # pragma: no cover - compiled
    """Siddon/Jacobs traversal, one ray per iteration; ``jac`` gets ``dS/d(src, tgt)``.

    Serial and GIL-free: :func:`.layout.run_chunked` runs it on chunks of rays in a pool of
    threads (see there for why not ``numba.prange``).

    The walk keeps, per axis, the coordinate of the next plane (stepped by +-1, exact in
    floating point, so every crossing ``(plane - s) * (1 / d)`` is computed afresh: no drift,
    the same tie-breaking everywhere), the flat-index stride and the voxels left before the
    face.
    For the gradient, each crossing of a plane on axis ``a`` at ``alpha`` with jump
    ``J = V_before - V_after`` adds ``J`` to ``Q_a`` and ``J alpha`` to ``P_a``; then
    ``dS/dsrc_a = (P_a - Q_a) / d_a`` and ``dS/dtgt_a = -P_a / d_a``.
    """
    nx, ny, nz = vol.shape
    flat = vol.reshape(-1)
    for r in range(src.shape[0]):
        sx, sy, sz = src[r, 0], src[r, 1], src[r, 2]
        dx, dy, dz = tgt[r, 0] - sx, tgt[r, 1] - sy, tgt[r, 2] - sz
        out[r] = 0.0
        if want_jac:
            for q in range(6):
                jac[r, q] = 0.0
        # Clip to the box [0, n]: entry/exit alpha and the axis of the face crossed there.
        amin, amax = 0.0, 1.0
        ain, aout = -1, -1
        ok = True
        for a in range(3):
            sa = sx if a == 0 else (sy if a == 1 else sz)
            da = dx if a == 0 else (dy if a == 1 else dz)
            na = nx if a == 0 else (ny if a == 1 else nz)
            if da != 0.0:
                a0 = -sa / da
                a1 = (na - sa) / da
                lo, hi = min(a0, a1), max(a0, a1)
                if lo > amin:
                    amin, ain = lo, a
                if hi < amax:
                    amax, aout = hi, a
            elif sa < 0.0 or sa > na:
                ok = False
        if not ok or amin >= amax:
            continue
        ivx = 1.0 / dx if dx != 0.0 else 0.0
        ivy = 1.0 / dy if dy != 0.0 else 0.0
        ivz = 1.0 / dz if dz != 0.0 else 0.0
        # First voxel: the one the segment starting at amin lies in.
        px, py, pz = sx + amin * dx, sy + amin * dy, sz + amin * dz
        ix = min(max(math.floor(px) if dx >= 0 else math.ceil(px) - 1, 0), nx - 1)
        iy = min(max(math.floor(py) if dy >= 0 else math.ceil(py) - 1, 0), ny - 1)
        iz = min(max(math.floor(pz) if dz >= 0 else math.ceil(pz) - 1, 0), nz - 1)
        # Per axis: next plane, its alpha, plane step, flat-index step, voxels left.
        if dx > 0:
            plx, stepx, strx, leftx = ix + 1.0, 1.0, ny * nz, nx - 1 - ix
        elif dx < 0:
            plx, stepx, strx, leftx = ix * 1.0, -1.0, -(ny * nz), ix
        else:
            plx, stepx, strx, leftx = 0.0, 0.0, 0, 0
        if dy > 0:
            ply, stepy, stry, lefty = iy + 1.0, 1.0, nz, ny - 1 - iy
        elif dy < 0:
            ply, stepy, stry, lefty = iy * 1.0, -1.0, -nz, iy
        else:
            ply, stepy, stry, lefty = 0.0, 0.0, 0, 0
        if dz > 0:
            plz, stepz, strz, leftz = iz + 1.0, 1.0, 1, nz - 1 - iz
        elif dz < 0:
            plz, stepz, strz, leftz = iz * 1.0, -1.0, -1, iz
        else:
            plz, stepz, strz, leftz = 0.0, 0.0, 0, 0
        nxt_x = (plx - sx) * ivx if dx != 0.0 else math.inf
        nxt_y = (ply - sy) * ivy if dy != 0.0 else math.inf
        nxt_z = (plz - sz) * ivz if dz != 0.0 else math.inf
        idx = (ix * ny + iy) * nz + iz
        v = np.float64(flat[idx])
        acc = 0.0
        a_cur = amin
        if not want_jac:
            while True:
                if nxt_x <= nxt_y and nxt_x <= nxt_z:
                    if nxt_x >= amax or leftx == 0:
                        break
                    acc += (nxt_x - a_cur) * v
                    a_cur = nxt_x
                    plx += stepx
                    nxt_x = (plx - sx) * ivx
                    idx += strx
                    leftx -= 1
                elif nxt_y <= nxt_z:
                    if nxt_y >= amax or lefty == 0:
                        break
                    acc += (nxt_y - a_cur) * v
                    a_cur = nxt_y
                    ply += stepy
                    nxt_y = (ply - sy) * ivy
                    idx += stry
                    lefty -= 1
                else:
                    if nxt_z >= amax or leftz == 0:
                        break
                    acc += (nxt_z - a_cur) * v
                    a_cur = nxt_z
                    plz += stepz
                    nxt_z = (plz - sz) * ivz
                    idx += strz
                    leftz -= 1
                v = np.float64(flat[idx])
            out[r] = acc + (amax - a_cur) * v
            continue
        qx = qy = qz = 0.0  # sum of jumps per axis
        wx = wy = wz = 0.0  # sum of jump * alpha per axis
        if ain == 0:  # entering through a face: jump 0 -> v
            qx -= v
            wx -= v * amin
        elif ain == 1:
            qy -= v
            wy -= v * amin
        elif ain == 2:
            qz -= v
            wz -= v * amin
        while True:
            if nxt_x <= nxt_y and nxt_x <= nxt_z:
                if nxt_x >= amax or leftx == 0:
                    break
                acc += (nxt_x - a_cur) * v
                a_cur = nxt_x
                plx += stepx
                nxt_x = (plx - sx) * ivx
                idx += strx
                leftx -= 1
                vn = np.float64(flat[idx])
                qx += v - vn
                wx += (v - vn) * a_cur
            elif nxt_y <= nxt_z:
                if nxt_y >= amax or lefty == 0:
                    break
                acc += (nxt_y - a_cur) * v
                a_cur = nxt_y
                ply += stepy
                nxt_y = (ply - sy) * ivy
                idx += stry
                lefty -= 1
                vn = np.float64(flat[idx])
                qy += v - vn
                wy += (v - vn) * a_cur
            else:
                if nxt_z >= amax or leftz == 0:
                    break
                acc += (nxt_z - a_cur) * v
                a_cur = nxt_z
                plz += stepz
                nxt_z = (plz - sz) * ivz
                idx += strz
                leftz -= 1
                vn = np.float64(flat[idx])
                qz += v - vn
                wz += (v - vn) * a_cur
            v = vn
        out[r] = acc + (amax - a_cur) * v
        if aout == 0:  # leaving through a face: jump v -> 0
            qx += v
            wx += v * amax
        elif aout == 1:
            qy += v
            wy += v * amax
        elif aout == 2:
            qz += v
            wz += v * amax
        jac[r, 0] = ivx * (wx - qx)
        jac[r, 1] = ivy * (wy - qy)
        jac[r, 2] = ivz * (wz - qz)
        jac[r, 3] = -ivx * wx
        jac[r, 4] = -ivy * wy
        jac[r, 5] = -ivz * wz


def _as_numpy_volume(data: Tensor) -> np.ndarray:
    """Zero-copy view for CPU float32/float64 tensors (kept for callers of the old name)."""
    return as_numpy_volume(data)


class _SiddonNumba(torch.autograd.Function):
    """Autograd wrapper: forward returns ``S``; the saved Jacobian gives the backward."""

    @staticmethod
    def forward(ctx, data: Tensor, src: Tensor, tgt: Tensor, reorder: bool = True) -> Tensor:  # type: ignore[override]
        want_jac = src.requires_grad or tgt.requires_grad
        src_np = src.detach().to("cpu", torch.float64).contiguous().numpy()
        tgt_np = tgt.detach().to("cpu", torch.float64).contiguous().numpy()
        rays = KernelRays.prepare(data, src_np, tgt_np, reorder)
        n = src_np.shape[0]
        out = np.empty(n, dtype=np.float64)
        jac = np.empty((n, 6) if want_jac else (1, 6), dtype=np.float64)

        def chunk(lo: int, hi: int) -> None:
            _siddon_kernel(rays.vol, rays.src[lo:hi], rays.tgt[lo:hi], out[lo:hi],
                           jac[lo:hi] if want_jac else jac, want_jac)

        run_chunked(chunk, n)
        out, jac = rays.restore(out, jac if want_jac else None)
        if want_jac:
            ctx.save_for_backward(torch.from_numpy(jac).to(src.dtype))
        return torch.from_numpy(out).to(src.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (jac,) = ctx.saved_tensors
        g = grad_out[:, None] * jac
        return None, g[:, :3], g[:, 3:], None


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
    return _SiddonNumba.apply(data, src, tgt, reorder)


def siddon(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    backend: str = "auto",
    reorder: bool = True,
) -> Float[Tensor, " N"]:
    """Siddon radiological path ``S`` per ray; ``backend`` is ``auto``, ``numba`` or ``torch``.

    ``auto`` takes the fused numba kernel on the CPU and the torch reference elsewhere
    (CUDA), and the reference whenever the volume itself needs a gradient. ``reorder``:
    see :func:`siddon_numba` (ignored by the torch reference).
    """
    if backend == "auto":
        backend = "numba" if src.device.type == "cpu" and not data.requires_grad else "torch"
    if backend == "numba":
        return siddon_numba(data, src, tgt, reorder)
    if backend == "torch":
        return siddon_torch(data, src, tgt)
    raise ValueError(f"unknown Siddon backend {backend!r} (auto, numba, torch)")
