"""Two material channels in one Siddon walk (CPU): the fast path of the polychromatic DRR.

The polychromatic DRR needs, per ray, the line integrals of two density volumes (soft
tissue, bone) on one grid. Rendering them one after the other (:func:`.render.render` per
channel, the reference this module is tested against) walks every ray twice. Here the walk
of :func:`.per_ray.siddon_ray` is done once, on a volume whose two channels are interleaved
(voxel ``idx`` of channel ``c`` at ``2 idx + c``: both values in one cache line), with one
accumulator, and one set of jump sums for the end-point gradient, per channel. Everything
else is the fused path's (:mod:`.fused`): rays built in numba from the pose matrices, the
coherent ray order and the dominant-axis volume layout of :mod:`.cpu`, the chain of the
end-point gradient to ``d(S L)/d(src, tgt)`` and, for autograd, to ``dLoss/dM``.
"""

from __future__ import annotations

import math
import threading
import weakref

import numba
import numpy as np
import torch
from torch import Tensor

from .cpu import CPU, axis_permutation, coherent_order, dominant_axis, run_chunked
from .fused import _grad_m, _make_rays, _output_jacobian

_clip_to_box = CPU.clip_to_box

__all__ = ["effective_line_integral_cpu", "interleaved_along", "primary_transmission_cpu", "render_pair_fused",
           "trace_pair", "trace_pair_fused"]


@numba.njit(nogil=True, cache=True)
def siddon_ray_pair(flat, nx, ny, nz, sx, sy, sz, tx, ty, tz, want_jac, res):  # pragma: no cover - compiled
    """:func:`.per_ray.siddon_ray` for two interleaved channels; ``res`` (14) gets ``(S, dS/dsrc, dS/dtgt)``
    of channel 0, then of channel 1 (the same walk, the same tie-breaking)."""
    for i in range(14):
        res[i] = 0.0
    dx, dy, dz = tx - sx, ty - sy, tz - sz
    amin, amax, ain, aout, hit = _clip_to_box(sx, sy, sz, dx, dy, dz, nx, ny, nz)
    if not hit:
        return
    ivx = 1.0 / dx if dx != 0.0 else 0.0
    ivy = 1.0 / dy if dy != 0.0 else 0.0
    ivz = 1.0 / dz if dz != 0.0 else 0.0
    px, py, pz = sx + amin * dx, sy + amin * dy, sz + amin * dz
    ix = min(max(int(math.floor(px)) if dx >= 0 else int(math.ceil(px)) - 1, 0), nx - 1)  # noqa: RUF046
    iy = min(max(int(math.floor(py)) if dy >= 0 else int(math.ceil(py)) - 1, 0), ny - 1)  # noqa: RUF046
    iz = min(max(int(math.floor(pz)) if dz >= 0 else int(math.ceil(pz)) - 1, 0), nz - 1)  # noqa: RUF046
    if dx > 0:
        plx, stepx, strx, leftx = ix + 1.0, 1.0, 2 * ny * nz, nx - 1 - ix
    elif dx < 0:
        plx, stepx, strx, leftx = ix * 1.0, -1.0, -2 * ny * nz, ix
    else:
        plx, stepx, strx, leftx = 0.0, 0.0, 0, 0
    if dy > 0:
        ply, stepy, stry, lefty = iy + 1.0, 1.0, 2 * nz, ny - 1 - iy
    elif dy < 0:
        ply, stepy, stry, lefty = iy * 1.0, -1.0, -2 * nz, iy
    else:
        ply, stepy, stry, lefty = 0.0, 0.0, 0, 0
    if dz > 0:
        plz, stepz, strz, leftz = iz + 1.0, 1.0, 2, nz - 1 - iz
    elif dz < 0:
        plz, stepz, strz, leftz = iz * 1.0, -1.0, -2, iz
    else:
        plz, stepz, strz, leftz = 0.0, 0.0, 0, 0
    nxt_x = (plx - sx) * ivx if dx != 0.0 else math.inf
    nxt_y = (ply - sy) * ivy if dy != 0.0 else math.inf
    nxt_z = (plz - sz) * ivz if dz != 0.0 else math.inf
    idx = 2 * ((ix * ny + iy) * nz + iz)
    v0 = np.float64(flat[idx])
    v1 = np.float64(flat[idx + 1])
    acc0 = 0.0
    acc1 = 0.0
    a_cur = amin
    # Per channel and axis: sum of jumps (q) and of jump * alpha (w), as siddon_ray.
    q0x = q0y = q0z = w0x = w0y = w0z = 0.0
    q1x = q1y = q1z = w1x = w1y = w1z = 0.0
    if want_jac:
        if ain == 0:
            q0x -= v0
            w0x -= v0 * amin
            q1x -= v1
            w1x -= v1 * amin
        elif ain == 1:
            q0y -= v0
            w0y -= v0 * amin
            q1y -= v1
            w1y -= v1 * amin
        elif ain == 2:
            q0z -= v0
            w0z -= v0 * amin
            q1z -= v1
            w1z -= v1 * amin
    while True:
        if nxt_x <= nxt_y and nxt_x <= nxt_z:
            if nxt_x >= amax or leftx == 0:
                break
            seg = nxt_x - a_cur
            a_cur = nxt_x
            plx += stepx
            nxt_x = (plx - sx) * ivx
            idx += strx
            leftx -= 1
            axis = 0
        elif nxt_y <= nxt_z:
            if nxt_y >= amax or lefty == 0:
                break
            seg = nxt_y - a_cur
            a_cur = nxt_y
            ply += stepy
            nxt_y = (ply - sy) * ivy
            idx += stry
            lefty -= 1
            axis = 1
        else:
            if nxt_z >= amax or leftz == 0:
                break
            seg = nxt_z - a_cur
            a_cur = nxt_z
            plz += stepz
            nxt_z = (plz - sz) * ivz
            idx += strz
            leftz -= 1
            axis = 2
        acc0 += seg * v0
        acc1 += seg * v1
        n0 = np.float64(flat[idx])
        n1 = np.float64(flat[idx + 1])
        if want_jac:
            j0, j1 = v0 - n0, v1 - n1
            if axis == 0:
                q0x += j0
                w0x += j0 * a_cur
                q1x += j1
                w1x += j1 * a_cur
            elif axis == 1:
                q0y += j0
                w0y += j0 * a_cur
                q1y += j1
                w1y += j1 * a_cur
            else:
                q0z += j0
                w0z += j0 * a_cur
                q1z += j1
                w1z += j1 * a_cur
        v0, v1 = n0, n1
    res[0] = acc0 + (amax - a_cur) * v0
    res[7] = acc1 + (amax - a_cur) * v1
    if not want_jac:
        return
    if aout == 0:
        q0x += v0
        w0x += v0 * amax
        q1x += v1
        w1x += v1 * amax
    elif aout == 1:
        q0y += v0
        w0y += v0 * amax
        q1y += v1
        w1y += v1 * amax
    elif aout == 2:
        q0z += v0
        w0z += v0 * amax
        q1z += v1
        w1z += v1 * amax
    res[1], res[2], res[3] = ivx * (w0x - q0x), ivy * (w0y - q0y), ivz * (w0z - q0z)
    res[4], res[5], res[6] = -ivx * w0x, -ivy * w0y, -ivz * w0z
    res[8], res[9], res[10] = ivx * (w1x - q1x), ivy * (w1y - q1y), ivz * (w1z - q1z)
    res[11], res[12], res[13] = -ivx * w1x, -ivy * w1y, -ivz * w1z


@numba.njit(nogil=True, cache=True)
def siddon_pair_rays_cpu(vol, shape, src, tgt, out, jac, want_jac):  # pragma: no cover - compiled
    """Rays ``src[r] -> tgt[r]`` through the interleaved two-channel ``vol`` (flat) of grid ``shape``:
    ``out[r, c] = S_c``, ``jac[c, r] = dS_c/d(src, tgt)`` (when ``want_jac``)."""
    nx, ny, nz = shape[0], shape[1], shape[2]
    res = np.empty(14)
    for r in range(src.shape[0]):
        siddon_ray_pair(vol, nx, ny, nz, src[r, 0], src[r, 1], src[r, 2], tgt[r, 0], tgt[r, 1], tgt[r, 2],
                        want_jac, res)
        out[r, 0] = res[0]
        out[r, 1] = res[7]
        if want_jac:
            for i in range(6):
                jac[0, r, i] = res[1 + i]
                jac[1, r, i] = res[8 + i]


_lock = threading.Lock()
_cache: dict[int, tuple[weakref.ref, int, int, np.ndarray]] = {}


def interleaved_along(data: Tensor, axis: int) -> np.ndarray:
    """``(2, I, J, K)`` densities as one flat float32/64 array, grid axes permuted so that ``axis`` is
    the last (:func:`.cpu.axis_permutation`), the two channels interleaved; cached per tensor
    while it lives and is not modified in place."""
    key, version = id(data), data._version
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]() is data and hit[1] == version and hit[2] == axis:
            return hit[3]
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    base = data.detach().to("cpu", dtype).numpy()
    perm = axis_permutation(axis)
    arr = np.ascontiguousarray(base.transpose(1 + perm[0], 1 + perm[1], 1 + perm[2], 0))

    def _drop(_ref: weakref.ref, key: int = key) -> None:
        with _lock:
            entry = _cache.get(key)
            if entry is not None and entry[0] is _ref:
                del _cache[key]

    with _lock:
        _cache[key] = (weakref.ref(data, _drop), version, axis, arr)
    return arr


def trace_pair(data: Tensor, src: np.ndarray, tgt: np.ndarray, want_jac: bool,
               reorder: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Siddon through both channels of ``data`` (``2 x I x J x K``) along rays ``src -> tgt`` (``N x 3``
    float64 grid coordinates): ``S`` (``N x 2``) and ``dS/d(src, tgt)`` (``2 x N x 6``), caller's order."""
    n = src.shape[0]
    axis = dominant_axis(src, tgt) if reorder else 2
    vol = interleaved_along(data, axis)
    perm = axis_permutation(axis)
    order = coherent_order(src, tgt, vol.shape[:3], perm) if reorder and n > 1 else np.arange(n)
    index = (order[:, None], np.array(perm)[None, :])
    s_src, s_tgt = np.ascontiguousarray(src[index]), np.ascontiguousarray(tgt[index])
    shape = np.array(vol.shape[:3], dtype=np.int64)
    flat = vol.reshape(-1)
    out = np.empty((n, 2))
    jac = np.empty((2, n, 6) if want_jac else (2, 1, 6))

    def chunk(lo: int, hi: int) -> None:
        siddon_pair_rays_cpu(flat, shape, s_src[lo:hi], s_tgt[lo:hi], out[lo:hi],
                             jac[:, lo:hi] if want_jac else jac, want_jac)

    run_chunked(chunk, n)
    full = np.empty_like(out)
    full[order] = out
    if not want_jac:
        return full, None
    cols = np.array([*perm, *(p + 3 for p in perm)])  # kernel column k is the caller's column cols[k]
    full_j = np.empty_like(jac)
    full_j[:, order] = jac[:, :, np.argsort(cols)]
    return full, full_j


def trace_pair_fused(data: Tensor, m: np.ndarray, a_ct_grid: np.ndarray, source: np.ndarray, pixels: np.ndarray,
                     reorder: bool, want_jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`.fused.trace_fused` for two channels: ``O_c = S_c L`` (``B P x 2``, index ``b * P + p``) and
    ``dO_c/d(src, tgt)`` in grid coordinates (``2 x B P x 6``)."""
    n = m.shape[0] * pixels.shape[0]
    src = np.empty((n, 3))
    tgt = np.empty((n, 3))
    length = np.empty(n)
    _make_rays(m, a_ct_grid, source, pixels, src, tgt, length)
    s_val, jac = trace_pair(data, src, tgt, want_jac, reorder)
    if want_jac:
        for c in range(2):
            jc = np.ascontiguousarray(jac[c])
            _output_jacobian(a_ct_grid, src, tgt, np.ascontiguousarray(s_val[:, c]), length, jc)
            jac[c] = jc
    return s_val * length[:, None], jac


class _FusedPairRender(torch.autograd.Function):
    """``M (B, 4, 4)`` -> two channels' line integrals ``(B, 2, P)``; the backward sums the channels' ``dLoss/dM``."""

    @staticmethod
    def forward(ctx, m_grid_cam: Tensor, data: Tensor, a_ct_grid: np.ndarray, source: np.ndarray,  # type: ignore[override]
                pixels: np.ndarray, reorder: bool) -> Tensor:
        m = np.ascontiguousarray(m_grid_cam.detach().to("cpu", torch.float64).numpy())
        b, n_pix = m.shape[0], pixels.shape[0]
        want_jac = m_grid_cam.requires_grad
        values, jac = trace_pair_fused(data, m, a_ct_grid, source, pixels, reorder, want_jac)
        if want_jac:
            ctx.fused = (b, source, pixels, jac)
            ctx.out_dtype = m_grid_cam.dtype
        return torch.from_numpy(values.reshape(b, n_pix, 2).transpose(0, 2, 1).copy()).to(m_grid_cam.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        n_pose, source, pixels, jac = ctx.fused
        g_all = grad_out.detach().to("cpu", torch.float64).numpy()  # B 2 P
        partials: list[np.ndarray] = []
        for c in range(2):
            g = np.ascontiguousarray(g_all[:, c].reshape(-1))
            jc = jac[c]

            def chunk(lo: int, hi: int, g: np.ndarray = g, jc: np.ndarray = jc) -> None:
                part = np.zeros((n_pose, 3, 4))
                _grad_m(lo, hi, source, pixels, jc, g, part)
                partials.append(part)

            run_chunked(chunk, g.shape[0])
        grad = np.zeros((n_pose, 4, 4))
        grad[:, :3, :] = np.sum(partials, axis=0)
        return torch.from_numpy(grad).to(ctx.out_dtype), None, None, None, None, None


def render_pair_fused(data: Tensor, m_grid_cam: Tensor, a_ct_grid: np.ndarray, source: np.ndarray,
                      pixels: np.ndarray, reorder: bool) -> Tensor:
    """Line integrals (g/cm^3 x mm) ``(B, 2, P)`` of the two channels of ``data`` along rays ``source -> pixels``
    (camera mm); ``m_grid_cam`` (``B x 4 x 4``, may require grad) maps camera points to grid coordinates."""
    return _FusedPairRender.apply(m_grid_cam, data, np.ascontiguousarray(a_ct_grid, dtype=np.float64),
                                  np.ascontiguousarray(source, dtype=np.float64),
                                  np.ascontiguousarray(pixels, dtype=np.float64), reorder)


@numba.njit(nogil=True, cache=True)
def _primary_rows(a, mu, q, t, mu_eff, lo, hi):  # pragma: no cover - compiled
    """Rays ``lo:hi`` (index ``b * P + p``) of ``a`` (``B x C x P``, g/cm^2): ``t = sum_E q_E e_E`` and
    ``mu_eff_c = sum_E q_E mu_cE e_E / t`` with ``e_E = exp(-sum_c mu_cE a_c)`` (:mod:`..physics.poly_model`)."""
    n_c, n_e = mu.shape
    n_pix = a.shape[2]
    for n in range(lo, hi):
        b = n // n_pix
        p = n - b * n_pix
        for c in range(n_c):
            mu_eff[b, c, p] = 0.0
        total = 0.0
        for e in range(n_e):
            optical = 0.0
            for c in range(n_c):
                optical += mu[c, e] * a[b, c, p]
            x = q[e] * math.exp(-optical)
            total += x
            for c in range(n_c):
                mu_eff[b, c, p] += x * mu[c, e]
        t[b, p] = total
        inv = 1.0 / total if total > 1e-300 else 0.0
        for c in range(n_c):
            mu_eff[b, c, p] *= inv


class _PrimaryCPU(torch.autograd.Function):
    """``A (B, C, H, W)`` -> ``(T (B, H, W), mu_eff (B, C, H, W))``; ``dT/dA_c = -T mu_eff_c`` as the backward."""

    @staticmethod
    def forward(ctx, a: Tensor, mu: np.ndarray, q: np.ndarray) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        b, c, h, w = a.shape
        a_np = np.ascontiguousarray(a.detach().to(torch.float64).numpy().reshape(b, c, h * w))
        t = np.empty((b, h * w))
        mu_eff = np.empty((b, c, h * w))
        run_chunked(lambda lo, hi: _primary_rows(a_np, mu, q, t, mu_eff, lo, hi), b * h * w)
        t_t = torch.from_numpy(t.reshape(b, h, w))
        mu_t = torch.from_numpy(mu_eff.reshape(b, c, h, w))
        ctx.save_for_backward(t_t, mu_t)
        ctx.mark_non_differentiable(mu_t)
        return t_t, mu_t

    @staticmethod
    def backward(ctx, grad_t: Tensor, _grad_mu: Tensor):  # type: ignore[override]
        t, mu_eff = ctx.saved_tensors
        g = (grad_t.detach().to(torch.float64).numpy() * t.numpy())[:, None]  # numpy: no torch fork-joins
        return torch.from_numpy(-g * mu_eff.numpy()), None, None


def primary_transmission_cpu(mu_rho: Tensor, weights: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`..physics.primary_transmission` with ``mu_eff`` on the CPU in numba (float64; differentiable
    in ``a``): the torch version's dozen operations on ``B x H x W x E`` tensors each wait for the
    slowest of PyTorch's threads, which on busy shared cores cost more than the DRR itself."""
    mu = np.ascontiguousarray(mu_rho.to(torch.float64).numpy())
    q = np.ascontiguousarray(weights.to(torch.float64).numpy())
    return _PrimaryCPU.apply(a, mu, q)


class _EffectiveCPU(torch.autograd.Function):
    """Channel line integrals ``O (B, C, H, W)`` (g/cm^3 x mm) -> ``L_eff = -log T(O / 10)`` (``B, H, W``);
    the backward is ``dL_eff/dO_c = mu_eff_c / 10``. One node in the graph, NumPy/numba only."""

    @staticmethod
    def forward(ctx, o: Tensor, mu: np.ndarray, q: np.ndarray, scale: float) -> Tensor:  # type: ignore[override]
        b, c, h, w = o.shape
        a_np = np.ascontiguousarray(o.detach().to(torch.float64).numpy().reshape(b, c, h * w)) * scale
        t = np.empty((b, h * w))
        mu_eff = np.empty((b, c, h * w))
        run_chunked(lambda lo, hi: _primary_rows(a_np, mu, q, t, mu_eff, lo, hi), b * h * w)
        ctx.mu_eff = mu_eff.reshape(b, c, h, w) * scale
        ctx.in_dtype = o.dtype
        return torch.from_numpy(-np.log(np.maximum(t, 1e-30)).reshape(b, h, w)).to(o.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        g = grad.detach().to(torch.float64).numpy()[:, None] * ctx.mu_eff
        return torch.from_numpy(g).to(ctx.in_dtype), None, None, None


def effective_line_integral_cpu(mu_rho: Tensor, weights: Tensor, line_integrals: Tensor, scale: float) -> Tensor:
    """``-log T`` of mass thicknesses ``scale x line_integrals`` (``B x C x H x W``; ``scale`` 1/10 turns
    g/cm^3 x mm into g/cm^2), differentiable, dtype of the input: the poly DRR without scatter, heel
    and blur in one graph node (:func:`..physics.primary_transmission`'s numbers)."""
    mu = np.ascontiguousarray(mu_rho.to(torch.float64).numpy())
    q = np.ascontiguousarray(weights.to(torch.float64).numpy())
    return _EffectiveCPU.apply(line_integrals, mu, q, float(scale))
