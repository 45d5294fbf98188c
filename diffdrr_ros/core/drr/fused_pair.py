"""The polychromatic DRR's CPU fast path: two material channels in one walk, and the primary in numba.

The polychromatic DRR needs, per ray, the line integrals of two density volumes (soft
tissue, bone) on one grid. Rendering them one after the other (:func:`.render.render` per
channel, the reference this module is tested against) walks every ray twice. The fused path
(:mod:`.fused`) takes the two-channel volume itself: :func:`.per_ray.siddon_walk`, compiled for
two channels (:func:`.cpu.siddon_channel_rays_cpu`), walks each ray once on the channel-last
layout (both values of a voxel in one cache line), with one accumulator, and one set of jump
sums for the end-point gradient, per channel. :func:`trace_pair_fused` and
:func:`render_pair_fused` are that path for the Siddon method (everything else, the rays built
in numba from the pose matrices, the coherent ray order and the dominant-axis volume layout of
:mod:`.cpu`, the chain of the end-point gradient to ``d(S L)/d(src, tgt)`` and, for autograd, to
``dLoss/dM``, is the fused path's). Then the detector model's primary transmission and effective
line integral, in numba too (:func:`primary_transmission_cpu`, :func:`effective_line_integral_cpu`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from .cpu import run_chunked
from .fused import render_rays_fused, trace_fused

__all__ = ["effective_line_integral_cpu", "primary_transmission_cpu", "render_pair_fused", "trace_pair_fused"]


def trace_pair_fused(data: Tensor, m: np.ndarray, a_ct_grid: np.ndarray, source: np.ndarray, pixels: np.ndarray,
                     reorder: bool, want_jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`.fused.trace_fused` (Siddon) for the channels of ``data`` (``2 x I x J x K``): ``O_c = S_c L``
    (``B P x 2``, index ``b * P + p``) and ``dO_c/d(src, tgt)`` in grid coordinates (``2 x B P x 6``)."""
    return trace_fused(data, m, a_ct_grid, source, pixels, "siddon", None, 0.0, reorder, want_jac)


def render_pair_fused(data: Tensor, m_grid_cam: Tensor, a_ct_grid: np.ndarray, source: np.ndarray,
                      pixels: np.ndarray, reorder: bool) -> Tensor:
    """Line integrals (g/cm^3 x mm) ``(B, 2, P)`` of the two channels of ``data`` along rays ``source -> pixels``
    (camera mm); ``m_grid_cam`` (``B x 4 x 4``, may require grad) maps camera points to grid coordinates."""
    return render_rays_fused(data, m_grid_cam, a_ct_grid, source, pixels, "siddon", None, 0.0, reorder)


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
