"""Autograd for the fast kernels: their analytic end-point Jacobian is the backward pass.

The kernels (CPU and CUDA alike) return, in the forward pass, ``S`` per ray and
``dS/d(src, tgt)`` (``N x 6``); :func:`trace_with_gradient` wraps such a tracer so that
autograd chains that Jacobian to whatever built the rays (the pose, the intrinsics), with no
autograd graph through the kernel. The volume gets no gradient (use the torch reference).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``trace(src, tgt, want_jac) -> (S, dS/d(src, tgt) or None)``: N, N x 6 (arrays or tensors).
Tracer = Callable[[Tensor, Tensor, bool], tuple[object, object | None]]


class _EndpointTrace(torch.autograd.Function):
    """Forward: ``S`` from a tracer; backward: the Jacobian the tracer returned in the same pass."""

    @staticmethod
    def forward(ctx, src: Tensor, tgt: Tensor, trace: Tracer) -> Tensor:  # type: ignore[override]
        want_jac = src.requires_grad or tgt.requires_grad
        out, jac = trace(src.detach(), tgt.detach(), want_jac)
        if want_jac:
            ctx.save_for_backward(torch.as_tensor(jac, device=src.device).to(src.dtype))
        return torch.as_tensor(out, device=src.device).to(src.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (jac,) = ctx.saved_tensors
        g = grad_out[:, None] * jac
        return g[:, :3], g[:, 3:], None


def trace_with_gradient(trace: Tracer, src: Tensor, tgt: Tensor) -> Tensor:
    """``S`` per ray, differentiable with respect to ``src`` and ``tgt`` (not the volume) through
    the analytic Jacobian ``trace`` computes with it (no autograd graph through the kernel)."""
    return _EndpointTrace.apply(src, tgt, trace)
