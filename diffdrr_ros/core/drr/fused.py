"""The fused CPU path of :func:`.render.render`: pose matrices in, DRR pixels out, all in numba.

The generic path builds every ray in PyTorch (detector points, two rigid transforms, the
ray length) and lets autograd chain the kernels' end-point Jacobians back to the pose.
That is a dozen tensor operations of ``rays x 3`` elements forward and as many backward.
Each is cheap, but each is a fork-join over PyTorch's threads, and on a machine whose
cores are shared with other processes a fork-join waits for its slowest thread: a
0.3 ms matrix product then takes a scheduler time slice (measured: 15 ms on 2 busy cores,
and 3x the whole render time). Here the per-ray work is done by numba instead:

* forward: ``rays = M_b (p, 1)`` for the source and each pixel (``M_b`` = grid <- camera
  for pose ``b``), the ray length in mm ``L = |A d_g|`` (``A`` = linear part of the
  grid -> CT affine, so any affine pose is handled exactly), the Siddon or trilinear
  kernel (:mod:`.cpu`) and ``O = S L``;
* backward: the kernels' end-point Jacobians ``dS/dsrc``, ``dS/dtgt`` and the length's
  ``dL/dd = A^T A d / L`` are combined in the forward pass into ``d(S L)/d(src, tgt)``
  (six float64 per ray, the only per-ray state kept for the backward), then contracted
  with the upstream gradient and the homogeneous camera points into ``dLoss/dM_b``
  (``B x 3 x 4``), which autograd chains to the pose through a few 4 x 4 products.

Only the pose is differentiable here; :func:`.render.render` takes the generic path when
detector intrinsics require a gradient, and on CUDA.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from .cpu import run_chunked, trace_rays
from .per_ray import sampling_args


@numba.njit(nogil=True, cache=True)
def _make_rays(m, a, source, pixels, src, tgt, length):  # pragma: no cover - compiled
    """Grid-coordinate end points and mm lengths of ``B x P`` rays (index ``b * P + p``)."""
    n_pix = pixels.shape[0]
    for b in range(m.shape[0]):
        s0 = m[b, 0, 0] * source[0] + m[b, 0, 1] * source[1] + m[b, 0, 2] * source[2] + m[b, 0, 3]
        s1 = m[b, 1, 0] * source[0] + m[b, 1, 1] * source[1] + m[b, 1, 2] * source[2] + m[b, 1, 3]
        s2 = m[b, 2, 0] * source[0] + m[b, 2, 1] * source[1] + m[b, 2, 2] * source[2] + m[b, 2, 3]
        for p in range(n_pix):
            r = b * n_pix + p
            x, y, z = pixels[p, 0], pixels[p, 1], pixels[p, 2]
            t0 = m[b, 0, 0] * x + m[b, 0, 1] * y + m[b, 0, 2] * z + m[b, 0, 3]
            t1 = m[b, 1, 0] * x + m[b, 1, 1] * y + m[b, 1, 2] * z + m[b, 1, 3]
            t2 = m[b, 2, 0] * x + m[b, 2, 1] * y + m[b, 2, 2] * z + m[b, 2, 3]
            src[r, 0], src[r, 1], src[r, 2] = s0, s1, s2
            tgt[r, 0], tgt[r, 1], tgt[r, 2] = t0, t1, t2
            d0, d1, d2 = t0 - s0, t1 - s1, t2 - s2
            e0 = a[0, 0] * d0 + a[0, 1] * d1 + a[0, 2] * d2
            e1 = a[1, 0] * d0 + a[1, 1] * d1 + a[1, 2] * d2
            e2 = a[2, 0] * d0 + a[2, 1] * d1 + a[2, 2] * d2
            length[r] = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)


@numba.njit(nogil=True, cache=True)
def _output_jacobian(a, src, tgt, s_val, length, jac):  # pragma: no cover - compiled
    """In place: ``jac`` (``dS/d(src, tgt)``) becomes ``d(S L)/d(src, tgt)``, ``L = |A (tgt - src)|``."""
    for r in range(jac.shape[0]):
        ln = length[r]
        sv = s_val[r]
        if ln > 0.0:
            d0, d1, d2 = tgt[r, 0] - src[r, 0], tgt[r, 1] - src[r, 1], tgt[r, 2] - src[r, 2]
            e0 = a[0, 0] * d0 + a[0, 1] * d1 + a[0, 2] * d2
            e1 = a[1, 0] * d0 + a[1, 1] * d1 + a[1, 2] * d2
            e2 = a[2, 0] * d0 + a[2, 1] * d1 + a[2, 2] * d2
            # dL/d tgt = A^T A d / L = A^T e / L
            w0 = (a[0, 0] * e0 + a[1, 0] * e1 + a[2, 0] * e2) / ln
            w1 = (a[0, 1] * e0 + a[1, 1] * e1 + a[2, 1] * e2) / ln
            w2 = (a[0, 2] * e0 + a[1, 2] * e1 + a[2, 2] * e2) / ln
        else:
            w0 = w1 = w2 = 0.0
        jac[r, 0] = ln * jac[r, 0] - sv * w0
        jac[r, 1] = ln * jac[r, 1] - sv * w1
        jac[r, 2] = ln * jac[r, 2] - sv * w2
        jac[r, 3] = ln * jac[r, 3] + sv * w0
        jac[r, 4] = ln * jac[r, 4] + sv * w1
        jac[r, 5] = ln * jac[r, 5] + sv * w2


@numba.njit(nogil=True, cache=True)
def _grad_m(lo, hi, source, pixels, jac_out, g, out):  # pragma: no cover - compiled
    """Accumulate ``dLoss/dM`` (``B x 3 x 4``) over rays ``lo:hi`` into ``out``.

    ``src_g = M (source, 1)`` and ``tgt_g = M (pixel, 1)``, so ray ``r`` of pose ``b`` adds
    ``g_r (J_src (source, 1)^T + J_tgt (pixel, 1)^T)`` to ``dLoss/dM_b``.
    """
    n_pix = pixels.shape[0]
    for r in range(lo, hi):
        gr = g[r]
        if gr == 0.0:
            continue
        b = r // n_pix
        p = r - b * n_pix
        x, y, z = pixels[p, 0], pixels[p, 1], pixels[p, 2]
        for i in range(3):
            js = gr * jac_out[r, i]
            jt = gr * jac_out[r, 3 + i]
            out[b, i, 0] += js * source[0] + jt * x
            out[b, i, 1] += js * source[1] + jt * y
            out[b, i, 2] += js * source[2] + jt * z
            out[b, i, 3] += js + jt


def trace_fused(
    data: Tensor,
    m: np.ndarray,
    a_ct_grid: np.ndarray,
    source: np.ndarray,
    pixels: np.ndarray,
    method: str,
    n_samples: int | None,
    step_voxels: float,
    reorder: bool,
    want_jac: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Line integrals ``O = S L`` of the ``B x P`` rays (index ``b * P + p``) and, when ``want_jac``,
    ``dO/d(src, tgt)`` in grid coordinates (``B P x 6``): the forward pass of the fused path.

    ``m`` (``B x 4 x 4`` float64) maps camera points to grid coordinates. Also the per-pixel pose
    Jacobian's source (:mod:`.jacobian`). A channel volume (``C x I x J x K``, Siddon) goes
    through one walk (:func:`.cpu.trace_rays`): ``O`` is then ``B P x C`` and ``dO/d(src, tgt)``
    ``C x B P x 6``.
    """
    n = m.shape[0] * pixels.shape[0]
    src = np.empty((n, 3))
    tgt = np.empty((n, 3))
    length = np.empty(n)
    _make_rays(m, a_ct_grid, source, pixels, src, tgt, length)
    n_fixed, step = sampling_args(n_samples, step_voxels)
    s_val, jac_r = trace_rays(method, data, src, tgt, want_jac, n_fixed, step, reorder)
    if s_val.ndim == 1:
        if want_jac:
            _output_jacobian(a_ct_grid, src, tgt, s_val, length, jac_r)
        return s_val * length, jac_r
    if want_jac:
        for c in range(s_val.shape[1]):
            jc = np.ascontiguousarray(jac_r[c])
            _output_jacobian(a_ct_grid, src, tgt, np.ascontiguousarray(s_val[:, c]), length, jc)
            jac_r[c] = jc
    return s_val * length[:, None], jac_r


class _FusedRender(torch.autograd.Function):
    """``M (B, 4, 4)`` -> line integrals ``(B, P)``, or ``(B, C, P)`` for a channel volume (the
    backward then sums the channels' ``dLoss/dM``); see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        m_grid_cam: Tensor,
        data: Tensor,
        a_ct_grid: np.ndarray,
        source: np.ndarray,
        pixels: np.ndarray,
        method: str,
        n_samples: int | None,
        step_voxels: float,
        reorder: bool,
    ) -> Tensor:
        m = np.ascontiguousarray(m_grid_cam.detach().to("cpu", torch.float64).numpy())
        b, n_pix = m.shape[0], pixels.shape[0]
        want_jac = m_grid_cam.requires_grad
        values, jac_r = trace_fused(data, m, a_ct_grid, source, pixels, method, n_samples, step_voxels, reorder,
                                    want_jac)
        if want_jac:
            ctx.fused = (m.shape[0], source, pixels, jac_r)  # 48 bytes per ray (and channel) kept
            ctx.out_dtype = m_grid_cam.dtype
        if values.ndim == 1:
            return torch.from_numpy(values).reshape(b, n_pix).to(m_grid_cam.dtype)
        return torch.from_numpy(values.reshape(b, n_pix, -1).transpose(0, 2, 1).copy()).to(m_grid_cam.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        n_pose, source, pixels, jac = ctx.fused
        g_all = grad_out.detach().to("cpu", torch.float64).numpy()  # B P, or B C P
        channels = [(g_all, jac)] if jac.ndim == 2 else [(g_all[:, c], jac[c]) for c in range(jac.shape[0])]
        partials: list[np.ndarray] = []
        for g_c, jac_out in channels:
            g = np.ascontiguousarray(g_c.reshape(-1))

            def chunk(lo: int, hi: int, g: np.ndarray = g, jac_out: np.ndarray = jac_out) -> None:
                part = np.zeros((n_pose, 3, 4))
                _grad_m(lo, hi, source, pixels, jac_out, g, part)
                partials.append(part)

            run_chunked(chunk, g.shape[0])
        grad = np.zeros((n_pose, 4, 4))
        grad[:, :3, :] = np.sum(partials, axis=0)
        return torch.from_numpy(grad).to(ctx.out_dtype), None, None, None, None, None, None, None, None


def render_rays_fused(
    data: Tensor,
    m_grid_cam: Tensor,
    a_ct_grid: np.ndarray,
    source: np.ndarray,
    pixels: np.ndarray,
    method: str,
    n_samples: int | None,
    step_voxels: float,
    reorder: bool,
) -> Tensor:
    """Line integrals (mm x value) ``(B, P)`` of rays ``source -> pixels`` (camera frame, mm);
    ``(B, C, P)`` for a channel volume ``data`` (``C x I x J x K``, Siddon: one walk for all channels).

    ``m_grid_cam`` (``B x 4 x 4``, may require grad) maps camera points to grid coordinates;
    ``a_ct_grid`` (3 x 3) maps grid directions to mm (for the ray length).
    """
    return _FusedRender.apply(
        m_grid_cam, data, np.ascontiguousarray(a_ct_grid, dtype=np.float64),
        np.ascontiguousarray(source, dtype=np.float64), np.ascontiguousarray(pixels, dtype=np.float64),
        method, n_samples, step_voxels, reorder,
    )
