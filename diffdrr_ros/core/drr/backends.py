"""The one place where a ray tracer is chosen: devices, backends, and :func:`trace_rays`.

* ``numba`` (CPU; gradient to pose and intrinsics): the per-ray kernels (:mod:`.per_ray`)
  compiled for the CPU (:mod:`.cpu`); :func:`.render.render` fuses the rays with the pose
  there (:mod:`.fused`);
* ``cuda`` (CUDA; pose and intrinsics): the same kernels compiled for CUDA (:mod:`.cuda`,
  needs numba-cuda);
* ``torch`` (any device; pose, intrinsics and volume): the plain-torch references
  (:mod:`.reference`), autograd.

``auto`` takes ``numba`` on the CPU, ``cuda`` on a GPU when its one-time self-check passes
(:func:`.cuda.ready`), and ``torch`` otherwise, and whenever the volume itself needs a
gradient (the kernels give none). An unknown name is a ``ValueError`` listing the choices.
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float
from torch import Tensor

from . import cpu, cuda, reference
from .autograd import trace_with_gradient
from .per_ray import sampling_args

METHODS = ("siddon", "trilinear")
BACKENDS = ("auto", "numba", "cuda", "torch")


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> :func:`default_device`; ``"cuda"`` without a GPU is an error."""
    if device is None or str(device) == "auto":
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return dev


def resolve_backend(backend: str, device: torch.device, volume_needs_grad: bool = False) -> str:
    """The concrete backend (``numba``, ``cuda`` or ``torch``) for ``backend`` on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "auto":
        if device.type == "cpu":
            return "torch" if volume_needs_grad else "numba"
        return "cuda" if cuda.ready(device, volume_needs_grad) else "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError("the numba kernels run on the CPU only; use backend='cuda' or 'torch' on CUDA")
    if backend == "cuda" and device.type != "cuda" and not cuda.simulating():
        raise ValueError("backend='cuda' needs the volume on a CUDA device")
    return backend


def check_method(method: str, n_samples: int | None = None, step_voxels: float = 1.0) -> None:
    """Raise ``ValueError`` for an unknown method or bad trilinear sampling."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if n_samples is not None and int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if n_samples is None and not step_voxels > 0:
        raise ValueError(f"step_voxels must be > 0, got {step_voxels}")


def trace_rays(
    method: str,
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    *,
    backend: str = "auto",
    n_samples: int | None = None,
    step_voxels: float = 1.0,
    reorder: bool = True,
) -> Float[Tensor, " N"]:
    """Radiological path ``S`` per ray (alpha units; see :mod:`.reference`), differentiable.

    Args:
        method: ``"siddon"`` (exact) or ``"trilinear"`` (ray marching).
        data: the volume; ``src``, ``tgt``: ray end points in grid coordinates.
        backend: see the module table.
        n_samples, step_voxels: trilinear sampling: a fixed count, or ``None`` for per-ray
            counts with samples ``step_voxels`` apart along the dominant axis.
        reorder: CPU kernels: walk a cached copy of the volume whose contiguous axis follows
            the rays, rays grouped by neighbourhood (:mod:`.cpu`); same result, faster.
    """
    check_method(method, n_samples, step_voxels)
    backend = resolve_backend(backend, src.device, data.requires_grad)
    if backend == "torch":
        if method == "siddon":
            return reference.siddon_torch(data, src, tgt)
        return reference.raymarch_torch(data, src, tgt, n_samples, step_voxels)
    n_fixed, step = sampling_args(n_samples, step_voxels)
    if backend == "numba":
        tracer = functools.partial(cpu.trace_rays, method, data, n_fixed=n_fixed, step=step, reorder=reorder)
    else:
        tracer = functools.partial(cuda.trace_rays, method, data, n_fixed=n_fixed, step=step)
    return trace_with_gradient(tracer, src, tgt)


def siddon(
    data: Float[Tensor, "I J K"], src: Float[Tensor, "N 3"], tgt: Float[Tensor, "N 3"],
    backend: str = "auto", reorder: bool = True,
) -> Float[Tensor, " N"]:
    """Exact Siddon radiological path per ray: :func:`trace_rays` with ``method="siddon"``."""
    return trace_rays("siddon", data, src, tgt, backend=backend, reorder=reorder)


def raymarch(
    data: Float[Tensor, "I J K"], src: Float[Tensor, "N 3"], tgt: Float[Tensor, "N 3"],
    n_samples: int | None = None, backend: str = "auto", reorder: bool = True, step_voxels: float = 1.0,
) -> Float[Tensor, " N"]:
    """Trilinear line integral per ray: :func:`trace_rays` with ``method="trilinear"``."""
    return trace_rays("trilinear", data, src, tgt, backend=backend, n_samples=n_samples, step_voxels=step_voxels,
                      reorder=reorder)


__all__ = [
    "BACKENDS",
    "METHODS",
    "check_method",
    "default_device",
    "raymarch",
    "resolve_backend",
    "resolve_device",
    "siddon",
    "trace_rays",
]
