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

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .layout import KernelRays, run_chunked
from .siddon import _box_clip

#: Slack in the per-ray sample count (see :func:`sample_counts`).
COUNT_SLACK = 1e-6


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


#: Floating-point contraction and reassociation only (no finite-math assumptions): lets
#: LLVM turn the sample loop into SIMD gathers with vector reductions.
_FASTMATH = {"reassoc", "contract", "nsz"}


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _raymarch_kernel(vol, src, tgt, n_fixed, step, out, jac, want_jac):  # pragma: no cover - compiled
    """Trilinear midpoint rule per ray; ``jac`` gets ``dS/d(src, tgt)``.

    ``n_fixed`` samples per ray, or, when ``step > 0``, ``ceil(max_a |d_a| span / step)``.
    Serial and GIL-free, run on chunks of rays by :func:`.layout.run_chunked`.

    The sample loop has no branches (clamping by ``min``/``max``, border weights by
    selects) so that it vectorises. For the gradient it keeps only
    ``G0 = sum_m grad V(p_m)`` and ``T = sum_m t_m grad V(p_m)``: with
    ``alpha_m = a_in + t_m (a_out - a_in)`` and ``h = (a_out - a_in) / n``,

        dS/dsrc = h sum (1 - alpha_m) grad V,   dS/dtgt = h sum alpha_m grad V,

    and the motion of the clip points ``a_in`` / ``a_out`` (when they lie on a volume face)
    enters through ``dS/da_in = -mean V + h d . (G0 - T)`` and
    ``dS/da_out = mean V + h d . T``.
    """
    nx, ny, nz = vol.shape
    flat = vol.reshape(-1)
    s0 = ny * nz
    s1 = nz
    fxm, fym, fzm = nx - 1.0, ny - 1.0, nz - 1.0
    for r in range(src.shape[0]):
        sx, sy, sz = src[r, 0], src[r, 1], src[r, 2]
        dx, dy, dz = tgt[r, 0] - sx, tgt[r, 1] - sy, tgt[r, 2] - sz
        out[r] = 0.0
        if want_jac:
            for q in range(6):
                jac[r, q] = 0.0
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
        span = amax - amin
        n_samples = n_fixed
        if step > 0.0:
            n_samples = max(1, math.ceil(max(abs(dx), abs(dy), abs(dz)) * span / step - COUNT_SLACK))
        h = span / n_samples
        # Sample m sits at alpha = amin + (m + 1/2) h; positions in voxel-centre coordinates.
        a_first = amin + 0.5 * h
        px0 = sx + a_first * dx - 0.5
        py0 = sy + a_first * dy - 0.5
        pz0 = sz + a_first * dz - 0.5
        hx, hy, hz = h * dx, h * dy, h * dz
        sum_v = 0.0
        g0x = g0y = g0z = 0.0
        tx = ty = tz = 0.0
        for m in range(n_samples):
            fx = px0 + m * hx
            fy = py0 + m * hy
            fz = pz0 + m * hz
            cx = min(max(fx, 0.0), fxm)
            cy = min(max(fy, 0.0), fym)
            cz = min(max(fz, 0.0), fzm)
            i0 = min(int(cx), nx - 1)
            j0 = min(int(cy), ny - 1)
            k0 = min(int(cz), nz - 1)
            di = s0 if i0 + 1 < nx else 0
            dj = s1 if j0 + 1 < ny else 0
            dk = 1 if k0 + 1 < nz else 0
            wx = cx - i0
            wy = cy - j0
            wz = cz - k0
            b = i0 * s0 + j0 * s1 + k0
            c000 = np.float64(flat[b])
            c001 = np.float64(flat[b + dk])
            c010 = np.float64(flat[b + dj])
            c011 = np.float64(flat[b + dj + dk])
            c100 = np.float64(flat[b + di])
            c101 = np.float64(flat[b + di + dk])
            c110 = np.float64(flat[b + di + dj])
            c111 = np.float64(flat[b + di + dj + dk])
            e00 = c001 - c000
            e01 = c011 - c010
            e10 = c101 - c100
            e11 = c111 - c110
            c00 = c000 + wz * e00
            c01 = c010 + wz * e01
            c10 = c100 + wz * e10
            c11 = c110 + wz * e11
            f0 = c01 - c00
            f1 = c11 - c10
            c0 = c00 + wy * f0
            c1 = c10 + wy * f1
            sum_v += c0 + wx * (c1 - c0)
            if want_jac:
                # d/dp of the interpolant; zero where the sample is clamped to the border.
                gx = (c1 - c0) if (fx > 0.0 and fx < fxm) else 0.0
                gy = (f0 + wx * (f1 - f0)) if (fy > 0.0 and fy < fym) else 0.0
                e0 = e00 + wy * (e01 - e00)
                e1 = e10 + wy * (e11 - e10)
                gz = (e0 + wx * (e1 - e0)) if (fz > 0.0 and fz < fzm) else 0.0
                t = (m + 0.5) / n_samples
                g0x += gx
                g0y += gy
                g0z += gz
                tx += t * gx
                ty += t * gy
                tz += t * gz
        out[r] = h * sum_v
        if want_jac:
            a1x = amin * g0x + span * tx  # sum alpha_m grad V
            a1y = amin * g0y + span * ty
            a1z = amin * g0z + span * tz
            gsx, gsy, gsz = h * (g0x - a1x), h * (g0y - a1y), h * (g0z - a1z)
            gtx, gty, gtz = h * a1x, h * a1y, h * a1z
            gdt = tx * dx + ty * dy + tz * dz
            gd0 = g0x * dx + g0y * dy + g0z * dz
            ds_dain = -sum_v / n_samples + h * (gd0 - gdt)
            ds_daout = sum_v / n_samples + h * gdt
            for face, a_face, ds in ((ain, amin, ds_dain), (aout, amax, ds_daout)):
                if face < 0:
                    continue
                inv = 1.0 / (dx if face == 0 else (dy if face == 1 else dz))
                u = ds * (a_face - 1.0) * inv
                w = -ds * a_face * inv
                if face == 0:
                    gsx += u
                    gtx += w
                elif face == 1:
                    gsy += u
                    gty += w
                else:
                    gsz += u
                    gtz += w
            jac[r, 0] = gsx
            jac[r, 1] = gsy
            jac[r, 2] = gsz
            jac[r, 3] = gtx
            jac[r, 4] = gty
            jac[r, 5] = gtz


class _RaymarchNumba(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, data: Tensor, src: Tensor, tgt: Tensor, n_samples: int | None, step_voxels: float, reorder: bool
    ) -> Tensor:
        want_jac = src.requires_grad or tgt.requires_grad
        src_np = src.detach().to("cpu", torch.float64).contiguous().numpy()
        tgt_np = tgt.detach().to("cpu", torch.float64).contiguous().numpy()
        rays = KernelRays.prepare(data, src_np, tgt_np, reorder)
        n = src_np.shape[0]
        out = np.empty(n, dtype=np.float64)
        jac = np.empty((n, 6) if want_jac else (1, 6), dtype=np.float64)
        n_fixed = 0 if n_samples is None else int(n_samples)
        step = float(step_voxels) if n_samples is None else 0.0

        def chunk(lo: int, hi: int) -> None:
            _raymarch_kernel(rays.vol, rays.src[lo:hi], rays.tgt[lo:hi], n_fixed, step, out[lo:hi],
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
        return None, g[:, :3], g[:, 3:], None, None, None


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
    return _RaymarchNumba.apply(data, src, tgt, n_samples, step_voxels, reorder)


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
    """Trilinear line integral ``S`` per ray; ``backend`` is ``auto``, ``numba`` or ``torch``.

    ``n_samples`` per ray, or ``None`` for per-ray counts with a step of ``step_voxels``.
    """
    if backend == "auto":
        backend = "numba" if src.device.type == "cpu" and not data.requires_grad else "torch"
    if backend == "numba":
        return raymarch_numba(data, src, tgt, n_samples, reorder, step_voxels)
    if backend == "torch":
        _check_samples(n_samples, step_voxels)
        return raymarch_torch(data, src, tgt, n_samples, step_voxels)
    raise ValueError(f"unknown ray-marching backend {backend!r} (auto, numba, torch)")
