"""CUDA Siddon and trilinear kernels: the per-ray functions of :mod:`.per_ray`, one thread per ray.

The GPU runs the very source the CPU kernels run (compiled by numba's CUDA target instead
of its CPU target), so both compute the same numbers, float64 arithmetic included, and
return the same analytic end-point Jacobian; autograd chains it to the pose exactly as on
the CPU. Why numba-cuda rather than Triton (which nanodrr uses for its trilinear kernel):
a Siddon walk is a data-dependent loop whose length differs from ray to ray, natural as
one thread per ray and awkward as Triton's block-of-lanes programs; and one source for
both devices means one thing to test. Float64 costs little on data-centre GPUs
(H100/A100: half the float32 rate) and a lot on consumer cards (1/64): measure there.

Install the CUDA target with ``scripts/setup.sh --gpu`` (``requirements/gpu.txt``:
``numba-cuda[cu12]``, which brings NVVM and libdevice as wheels). Without it, or without
a GPU, :func:`available` is False and ``backend="auto"`` (:mod:`.backends`) falls back to the
torch references on CUDA tensors.

Tests: with ``NUMBA_ENABLE_CUDASIM=1`` numba runs these kernels in its CUDA simulator on
the CPU (on CPU tensors), where the test suite checks them against the CPU kernels; on a
lent GPU, ``test_render.py`` compares the CUDA and CPU images and gradients.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .per_ray import compile_ray_functions, raymarch_ray, retarget, siddon_ray, stack_array, store_ray

log = logging.getLogger(__name__)

#: Threads per block (per block in the simulator, where each thread is a Python thread).
THREADS_PER_BLOCK = 128
SIMULATOR_THREADS_PER_BLOCK = 32


def simulating() -> bool:
    """True when numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``): kernels take CPU tensors."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.cache
def available() -> bool:
    """Whether numba's CUDA target imports and sees a GPU (or the simulator is on)."""
    try:
        from numba import cuda
    except Exception as err:
        log.debug("numba.cuda unavailable: %s", err)
        return False
    try:
        return bool(cuda.is_available())
    except Exception as err:
        log.debug("numba.cuda.is_available() failed: %s", err)
        return False


#: ``numba.cuda``, bound in the kernels' own globals by :func:`_kernels` (imported lazily:
#: the import costs 0.4 s and most processes never render on a GPU).
cuda = None


def _siddon_kernel(flat, nx, ny, nz, src, tgt, out, jac, want_jac):  # pragma: no cover - device code
    """One thread per ray: ``out[r] = S`` and, when ``want_jac``, ``jac[r] = dS/d(src, tgt)``."""
    r = cuda.grid(1)
    if r < src.shape[0]:
        res = siddon_ray(flat, nx, ny, nz, src[r, 0], src[r, 1], src[r, 2], tgt[r, 0], tgt[r, 1], tgt[r, 2],
                         want_jac)
        store_ray(out, jac, r, res, want_jac)


def _raymarch_kernel(flat, nx, ny, nz, src, tgt, n_fixed, step, out, jac, want_jac):  # pragma: no cover
    """One thread per ray, trilinear; outputs as :func:`_siddon_kernel`."""
    r = cuda.grid(1)
    if r < src.shape[0]:
        res = raymarch_ray(flat, nx, ny, nz, src[r, 0], src[r, 1], src[r, 2], tgt[r, 0], tgt[r, 1], tgt[r, 2],
                           n_fixed, step, want_jac)
        store_ray(out, jac, r, res, want_jac)


@functools.cache
def _kernels() -> tuple[Callable, Callable]:
    """Compile (lazily, once) the two kernels, linked to the per-ray functions compiled for CUDA."""
    from numba import cuda as cuda_module

    # The simulator runs the source as Python (its cuda.local.array is np.empty); compiled, an alloca.
    scratch = np.empty if simulating() else stack_array
    dev = compile_ray_functions(functools.partial(cuda_module.jit, device=True), local_array=scratch)
    return (
        retarget(_siddon_kernel, cuda_module.jit, cuda=cuda_module, siddon_ray=dev.siddon_ray, store_ray=dev.store_ray),
        retarget(_raymarch_kernel, cuda_module.jit, cuda=cuda_module, raymarch_ray=dev.raymarch_ray,
                 store_ray=dev.store_ray),
    )


def _device_array(t: Tensor):
    """Zero-copy view of a contiguous tensor for numba: CUDA array on a GPU, numpy in the simulator."""
    if simulating():
        return t.detach().numpy()
    from numba import cuda

    return cuda.as_cuda_array(t.detach())


def trace_rays(
    method: str,
    data: Float[Tensor, "I J K"],
    src: Float[Tensor, "N 3"],
    tgt: Float[Tensor, "N 3"],
    want_jac: bool,
    n_fixed: int = 0,
    step: float = 0.0,
) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 6"] | None]:
    """Run the CUDA kernel of ``method`` (``siddon`` or ``trilinear``) on rays in grid coordinates.

    Returns float64 ``S`` per ray and, when ``want_jac``, ``dS/d(src, tgt)``. Tensors must be on
    a CUDA device (CPU tensors in the simulator). ``n_fixed``/``step``: see :func:`.per_ray.raymarch_ray`.
    """
    if not available():
        raise RuntimeError("numba's CUDA target is not available (install requirements/gpu.txt; needs a GPU)")
    device = src.device
    if device.type != ("cpu" if simulating() else "cuda"):
        raise ValueError(f"CUDA kernels need {'CPU' if simulating() else 'CUDA'} tensors here, got {device}")
    n = src.shape[0]
    vol = data.detach()
    if vol.dtype not in (torch.float32, torch.float64):
        vol = vol.float()
    flat = vol.contiguous().reshape(-1)
    src64 = src.detach().to(torch.float64).contiguous()
    tgt64 = tgt.detach().to(torch.float64).contiguous()
    out = torch.empty(n, dtype=torch.float64, device=device)
    jac = torch.zeros((n, 6) if want_jac else (1, 6), dtype=torch.float64, device=device)
    if n == 0:
        return out, (jac if want_jac else None)
    siddon_kernel, raymarch_kernel = _kernels()
    threads = SIMULATOR_THREADS_PER_BLOCK if simulating() else THREADS_PER_BLOCK
    blocks = math.ceil(n / threads)
    nx, ny, nz = (int(s) for s in vol.shape)
    args = [_device_array(flat), nx, ny, nz, _device_array(src64), _device_array(tgt64)]
    if method == "siddon":
        kernel = siddon_kernel
    elif method == "trilinear":
        kernel = raymarch_kernel
        args += [int(n_fixed), float(step)]
    else:
        raise ValueError(f"unknown method {method!r} (siddon, trilinear)")
    args += [_device_array(out), _device_array(jac), bool(want_jac)]
    if simulating():
        kernel[blocks, threads](*args)
    else:
        from numba import cuda

        with cuda.gpus[device.index if device.index is not None else torch.cuda.current_device()]:
            stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
            kernel[blocks, threads, stream](*args)
    return out, (jac if want_jac else None)


#: Outcome of the one-time check of :func:`ready` (None: not checked yet).
_ready: list[bool] = []


def ready(device: torch.device, volume_needs_grad: bool = False) -> bool:
    """What ``backend="auto"`` asks on ``device``: can the CUDA kernels serve here?

    True on a CUDA device when numba's CUDA target is available and, the first time, both
    kernels compiled and ran on a few rays (a missing NVVM or an unsupported GPU shows up
    there; then one warning, and ``auto`` uses the torch reference for the rest of the
    process). False when the volume needs a gradient (the kernels give none).
    """
    if device.type != "cuda" or volume_needs_grad or not available():
        return False
    if not _ready:
        try:
            data = torch.ones(2, 2, 2, device=device)
            src = torch.tensor([[-1.0, 1.0, 1.0]], device=device, dtype=torch.float64)
            tgt = torch.tensor([[3.0, 1.0, 1.0]], device=device, dtype=torch.float64)
            for method in ("siddon", "trilinear"):
                out, _ = trace_rays(method, data, src, tgt, True, n_fixed=4)
                if not math.isclose(float(out[0]), 0.5, rel_tol=1e-9):  # 2 voxels of a 4-voxel-long ray
                    raise RuntimeError(f"{method} kernel self-check gave {float(out[0])}, expected 0.5")
            _ready.append(True)
        except Exception as err:
            log.warning("CUDA kernels unusable (%s: %s); rendering on CUDA uses the torch reference",
                        type(err).__name__, err)
            _ready.append(False)
    return _ready[0]
