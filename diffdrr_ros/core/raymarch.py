"""Trilinear ray marching: a smooth approximation of the Siddon line integral.

Same grid coordinates and output as :mod:`diffdrr_ros.core.siddon` (voxel ``(i, j, k)``
occupies ``[i, i+1) x [j, j+1) x [k, k+1)``, result in alpha units). Each ray is clipped to
the volume box ``[alpha_in, alpha_out]`` and sampled at ``n`` midpoints

    alpha_m = alpha_in + (m + 1/2) h,   h = (alpha_out - alpha_in) / n,
    S = h * sum_m V(src + alpha_m (tgt - src)),

with ``V`` trilinearly interpolated between voxel centres (clamped at the border, like
``grid_sample(padding_mode="border", align_corners=True)``). Samples follow the ray's
own chord, not the whole source-detector segment, so none are wasted in air.

* :func:`raymarch_torch` - the reference, ``torch.nn.functional.grid_sample`` and autograd.
* :func:`raymarch_numba` - fused CPU kernel; the analytic gradient with respect to the
  end points (direct terms plus the motion of ``alpha_in`` / ``alpha_out``) is accumulated
  in the same pass.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .siddon import _as_numpy_volume, _box_clip


def raymarch_torch(
    data: Float[Tensor, "I J K"], src: Float[Tensor, "N 3"], tgt: Float[Tensor, "N 3"], n_samples: int
) -> Float[Tensor, " N"]:
    """Reference trilinear line integral (autograd through ``grid_sample``)."""
    shape = data.shape
    size = torch.tensor(shape, dtype=src.dtype, device=src.device)
    d = tgt - src
    amin, amax = _box_clip(src, d, size)
    hit = amax > amin
    amax = torch.where(hit, amax, amin)
    t = (torch.arange(n_samples, dtype=src.dtype, device=src.device) + 0.5) / n_samples
    alpha = amin[:, None] + t[None, :] * (amax - amin)[:, None]  # N n
    pos = src[:, None, :] + alpha[..., None] * d[:, None, :] - 0.5  # voxel-centre coordinates
    denom = (size - 1).clamp_min(1)
    norm = 2 * pos / denom - 1  # align_corners=True: -1 -> centre of voxel 0
    grid = norm.flip(-1).reshape(1, 1, -1, n_samples, 3).to(data.dtype)  # (x, y, z) = (k, j, i)
    samples = F.grid_sample(
        data[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    ).reshape(-1, n_samples)
    h = (amax - amin) / n_samples
    return h * samples.to(src.dtype).sum(-1)


@numba.njit(cache=True, inline="always")
def _lerp_axis(p: float, n: int):
    """Lower index, upper index, weight and d(weight)/dp of linear interpolation on one axis."""
    f = p - 0.5
    if f <= 0.0:
        return 0, 0, 0.0, 0.0
    if f >= n - 1:
        return n - 1, n - 1, 0.0, 0.0
    i0 = math.floor(f)
    return i0, i0 + 1, f - i0, 1.0


@numba.njit(parallel=True, cache=True, fastmath=False)
def _raymarch_kernel(vol, src, tgt, n_samples, out, jac, want_jac):  # pragma: no cover - compiled
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
        h = (amax - amin) / n_samples
        sum_v = 0.0
        # Direct gradient sums and the d-projected gradient sums for alpha_in / alpha_out.
        gx = gy = gz = 0.0
        ax_ = ay_ = az_ = 0.0
        s_in = s_out = 0.0
        for m in range(n_samples):
            t = (m + 0.5) / n_samples
            alpha = amin + t * (amax - amin)
            px = s[0] + alpha * d[0]
            py = s[1] + alpha * d[1]
            pz = s[2] + alpha * d[2]
            i0, i1, wx, dwx = _lerp_axis(px, nx)
            j0, j1, wy, dwy = _lerp_axis(py, ny)
            k0, k1, wz, dwz = _lerp_axis(pz, nz)
            c000 = vol[i0, j0, k0]
            c001 = vol[i0, j0, k1]
            c010 = vol[i0, j1, k0]
            c011 = vol[i0, j1, k1]
            c100 = vol[i1, j0, k0]
            c101 = vol[i1, j0, k1]
            c110 = vol[i1, j1, k0]
            c111 = vol[i1, j1, k1]
            c00 = c000 + wz * (c001 - c000)
            c01 = c010 + wz * (c011 - c010)
            c10 = c100 + wz * (c101 - c100)
            c11 = c110 + wz * (c111 - c110)
            c0 = c00 + wy * (c01 - c00)
            c1 = c10 + wy * (c11 - c10)
            sum_v += c0 + wx * (c1 - c0)
            if want_jac:
                dvx = dwx * (c1 - c0)
                dvy = dwy * ((1.0 - wx) * (c01 - c00) + wx * (c11 - c10))
                e0 = c001 - c000 + wy * (c011 - c010 - c001 + c000)
                e1 = c101 - c100 + wy * (c111 - c110 - c101 + c100)
                dvz = dwz * ((1.0 - wx) * e0 + wx * e1)
                gx += dvx * (1.0 - alpha)
                gy += dvy * (1.0 - alpha)
                gz += dvz * (1.0 - alpha)
                ax_ += dvx * alpha
                ay_ += dvy * alpha
                az_ += dvz * alpha
                gd = dvx * d[0] + dvy * d[1] + dvz * d[2]
                s_in += gd * (1.0 - t)
                s_out += gd * t
        out[r] = h * sum_v
        if want_jac:
            # dS/dsrc and dS/dtgt at fixed alpha_in / alpha_out ...
            g = [h * gx, h * gy, h * gz, h * ax_, h * ay_, h * az_]
            # ... plus the motion of the clip points when they sit on a volume face.
            ds_dain = -sum_v / n_samples + h * s_in
            ds_daout = sum_v / n_samples + h * s_out
            if ain >= 0:
                inv = 1.0 / d[ain]
                g[ain] += ds_dain * (amin - 1.0) * inv
                g[3 + ain] -= ds_dain * amin * inv
            if aout >= 0:
                inv = 1.0 / d[aout]
                g[aout] += ds_daout * (amax - 1.0) * inv
                g[3 + aout] -= ds_daout * amax * inv
            for q in range(6):
                jac[r, q] = g[q]


class _RaymarchNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, data: Tensor, src: Tensor, tgt: Tensor, n_samples: int) -> Tensor:  # type: ignore[override]
        want_jac = src.requires_grad or tgt.requires_grad
        src_np = src.detach().to("cpu", torch.float64).contiguous().numpy()
        tgt_np = tgt.detach().to("cpu", torch.float64).contiguous().numpy()
        n = src_np.shape[0]
        out = np.empty(n, dtype=np.float64)
        jac = np.empty((n, 6) if want_jac else (1, 6), dtype=np.float64)
        _raymarch_kernel(_as_numpy_volume(data), src_np, tgt_np, int(n_samples), out, jac, want_jac)
        if want_jac:
            ctx.save_for_backward(torch.from_numpy(jac).to(src.dtype))
        return torch.from_numpy(out).to(src.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (jac,) = ctx.saved_tensors
        g = grad_out[:, None] * jac
        return None, g[:, :3], g[:, 3:], None


def raymarch_numba(
    data: Float[Tensor, "I J K"], src: Float[Tensor, "N 3"], tgt: Float[Tensor, "N 3"], n_samples: int
) -> Float[Tensor, " N"]:
    """Fused CPU trilinear marching with the analytic end-point gradient."""
    return _RaymarchNumba.apply(data, src, tgt, n_samples)


def raymarch(
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    n_samples: int,
    backend: str = "auto",
) -> Float[Tensor, " N"]:
    """Trilinear line integral ``S`` per ray; ``backend`` is ``auto``, ``numba`` or ``torch``."""
    if backend == "auto":
        backend = "numba" if src.device.type == "cpu" and not data.requires_grad else "torch"
    if backend == "numba":
        return raymarch_numba(data, src, tgt, n_samples)
    if backend == "torch":
        return raymarch_torch(data, src, tgt, n_samples)
    raise ValueError(f"unknown ray-marching backend {backend!r} (auto, numba, torch)")
