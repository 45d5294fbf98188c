"""The CPU kernels: the per-ray functions compiled by numba, and how they are fed.

:func:`trace_rays` runs the per-ray functions of :mod:`.per_ray` (compiled here for the CPU)
over rays in grid coordinates, returning ``S`` and the end-point Jacobian (the CPU twin of
:func:`.cuda.trace_rays`). The kernels walk each ray through the volume.
What decides their speed is mostly how often that walk leaves the CPU caches, and how the
cores are shared; both are settled here, outside the kernels, so the kernels stay simple:

* **Contiguous axis.** A ray that runs along the volume's last (contiguous) axis reads
  neighbouring floats, 16 voxels per cache line; a ray along the first axis reads one
  voxel per cache line, a few hundred kilobytes apart. :func:`volume_along` returns a
  C-contiguous copy of the volume whose last axis is the one most parallel to the rays
  (:func:`dominant_axis`), cached per volume tensor, so registration loops pay for the
  copy once. The ray coordinates are permuted the same way (:class:`KernelRays`) and the
  Jacobian is permuted back.
* **Ray order.** Neighbouring rays share voxels. Rays are grouped by where they cross the
  middle plane of the dominant axis, in tiles of ``TILE_VOXELS`` voxels square
  (:func:`coherent_order`), so that rays that read the same lines of voxels run close
  together in time and on the same thread.
* **Threads.** The kernels are serial and release the GIL; :func:`run_chunked` hands
  chunks of rays to a small pool of Python threads (``numba.get_num_threads()`` of them,
  so ``NUMBA_NUM_THREADS`` / ``numba.set_num_threads`` apply) that sleep when idle. We do
  not use ``numba.prange``: its OpenMP layer is a second OpenMP runtime next to PyTorch's,
  and after every parallel region the workers of each runtime spin for milliseconds,
  stealing the cores from the other. In a render -> loss -> backward loop on 2 cores that
  tripled the time per iteration; idle pool threads cost nothing.

None of this changes a result: each ray is summed in the same order along the ray.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from .per_ray import compile_ray_functions, compile_siddon_walk, retarget, stack_array

#: Side of the ray-grouping tiles, in voxels of the two non-dominant axes.
TILE_VOXELS = 16
#: Smallest number of rays worth handing to a worker thread.
MIN_CHUNK_RAYS = 256
#: Chunks per thread: enough that a thread that gets less CPU time (shared machine) does less.
CHUNKS_PER_THREAD = 8
#: Floating-point contraction and reassociation only (no finite-math assumptions): lets
#: LLVM turn the trilinear sample loop into SIMD gathers with vector reductions.
CPU_FASTMATH = {"reassoc", "contract", "nsz"}



CPU = compile_ray_functions(numba.njit(nogil=True), numba.njit(nogil=True, fastmath=CPU_FASTMATH), stack_array)
_siddon_ray_cpu = CPU.siddon_ray
siddon_walk = CPU.siddon_walk  # one channel; :func:`siddon_channel_rays_cpu` rebinds it per channel count
_raymarch_ray_cpu = CPU.raymarch_ray
_store_ray_cpu = CPU.store_ray


@numba.njit(nogil=True, cache=True)
def siddon_rays_cpu(vol, src, tgt, out, jac, want_jac):  # pragma: no cover - compiled
    """Siddon over rays ``src[r] -> tgt[r]`` (``N x 3``): ``out[r] = S``, ``jac[r] = dS/d(src, tgt)``.

    Serial and GIL-free: :func:`run_chunked` runs it on chunks of rays in a pool of
    threads (see there for why not ``numba.prange``). ``jac`` is only written when ``want_jac``.
    """
    nx, ny, nz = vol.shape
    flat = vol.reshape(-1)
    for r in range(src.shape[0]):
        res = _siddon_ray_cpu(flat, nx, ny, nz, src[r, 0], src[r, 1], src[r, 2],
                              tgt[r, 0], tgt[r, 1], tgt[r, 2], want_jac)
        _store_ray_cpu(out, jac, r, res, want_jac)


@numba.njit(nogil=True, cache=True)
def raymarch_rays_cpu(vol, src, tgt, n_fixed, step, out, jac, want_jac):  # pragma: no cover - compiled
    """Trilinear marching over rays (see :func:`.per_ray.raymarch_ray`); outputs as :func:`siddon_rays_cpu`."""
    nx, ny, nz = vol.shape
    flat = vol.reshape(-1)
    for r in range(src.shape[0]):
        res = _raymarch_ray_cpu(flat, nx, ny, nz, src[r, 0], src[r, 1], src[r, 2],
                                tgt[r, 0], tgt[r, 1], tgt[r, 2], n_fixed, step, want_jac)
        _store_ray_cpu(out, jac, r, res, want_jac)


def _siddon_channel_rays(flat, shape, src, tgt, out, jac, want_jac):  # pragma: no cover - compiled
    """Siddon through the channel-last ``flat`` volume of grid ``shape`` over rays ``src[r] -> tgt[r]``:
    ``out[r, c] = S_c`` and (when ``want_jac``) ``jac[c, r] = dS_c/d(src, tgt)``. Compiled per channel
    count by :func:`siddon_channel_rays_cpu`; serial and GIL-free, as :func:`siddon_rays_cpu`."""
    nx, ny, nz = shape[0], shape[1], shape[2]
    n_ch = out.shape[1]
    res = np.empty(7 * n_ch)
    for r in range(src.shape[0]):
        siddon_walk(flat, nx, ny, nz, src[r, 0], src[r, 1], src[r, 2], tgt[r, 0], tgt[r, 1], tgt[r, 2],
                    want_jac, res)
        for c in range(n_ch):
            out[r, c] = res[7 * c]
            if want_jac:
                for i in range(6):
                    jac[c, r, i] = res[7 * c + 1 + i]


@functools.cache
def siddon_channel_rays_cpu(channels: int) -> Callable:
    """The batch kernel of :func:`_siddon_channel_rays` for ``channels`` channels (compiled once per count)."""
    walk = compile_siddon_walk(numba.njit(nogil=True), channels, stack_array, CPU.clip_to_box)
    return retarget(_siddon_channel_rays, numba.njit(nogil=True), siddon_walk=walk)


_lock = threading.Lock()
# id(tensor) -> (weak reference to the tensor, tensor._version, axis, dtype, permuted copy)
_cache: dict[int, tuple[weakref.ref, int, int, np.dtype, np.ndarray]] = {}
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)


def kernel_threads() -> int:
    """Threads for the kernels: numba's setting (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``)."""
    return max(1, int(numba.get_num_threads()))


def _get_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != threads:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="drr-kernel"))
        return _pool[2]


def run_chunked(fn: Callable[[int, int], None], n_rays: int, threads: int | None = None) -> None:
    """Run ``fn(lo, hi)`` over chunks of ``[0, n_rays)`` on the kernel thread pool.

    ``fn`` must release the GIL for the threads to run in parallel (numba ``nogil=True``).
    Small jobs, and ``threads == 1``, run in the calling thread.
    """
    threads = kernel_threads() if threads is None else threads
    if threads <= 1 or n_rays < 2 * MIN_CHUNK_RAYS:
        fn(0, n_rays)
        return
    n_chunks = max(1, min(CHUNKS_PER_THREAD * threads, n_rays // MIN_CHUNK_RAYS))
    bounds = [round(i * n_rays / n_chunks) for i in range(n_chunks + 1)]
    pool = _get_pool(threads)
    futures = [pool.submit(fn, lo, hi) for lo, hi in itertools.pairwise(bounds)]
    for f in futures:
        f.result()


def as_numpy_volume(data: Tensor) -> np.ndarray:
    """Zero-copy view for CPU float32/float64 tensors (the kernels compile for both)."""
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    return data.detach().to("cpu", dtype).contiguous().numpy()


def axis_permutation(axis: int) -> tuple[int, int, int]:
    """Original axes in the order of the permuted volume: the two others, then ``axis``."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    first, second = (a for a in (0, 1, 2) if a != axis)
    return first, second, axis


def dominant_axis(src: np.ndarray, tgt: np.ndarray) -> int:
    """The grid axis along which the rays ``src -> tgt`` (``N x 3``) advance the most."""
    if len(src) == 0:
        return 2
    step = max(1, len(src) // 4096)  # a sample of the rays decides
    d = np.abs(np.asarray(tgt)[::step] - np.asarray(src)[::step]).sum(0)
    return int(np.argmax(d))


def volume_along(data: Tensor, axis: int) -> np.ndarray:
    """The volume as a C-contiguous array whose last grid axis is ``axis`` (cached per tensor).

    A 3-D volume ``(I, J, K)`` comes back with that axis last; a channel volume ``(C, I, J, K)``
    channel-last, ``(., ., ., C)`` (the layout of :func:`.per_ray.siddon_walk`: a voxel's channels
    side by side). A 3-D ``axis == 2`` is the stored layout (no copy). Otherwise the permuted
    copy is kept while the tensor lives and is not modified in place (``tensor._version``); one
    copy per tensor, replaced when another axis is asked for.
    """
    base = as_numpy_volume(data)
    if base.ndim == 3 and axis == 2:
        return base
    key = id(data)
    version = data._version
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]() is data and hit[1] == version and hit[2] == axis and hit[3] == base.dtype:
            return hit[4]
    perm = axis_permutation(axis)
    layout = perm if base.ndim == 3 else (1 + perm[0], 1 + perm[1], 1 + perm[2], 0)
    arr = np.ascontiguousarray(base.transpose(layout))

    def _drop(_ref: weakref.ref, key: int = key) -> None:
        with _lock:
            entry = _cache.get(key)
            if entry is not None and entry[0] is _ref:
                del _cache[key]

    with _lock:
        _cache[key] = (weakref.ref(data, _drop), version, axis, base.dtype, arr)
    return arr


def clear_cache() -> None:
    """Forget every cached permuted volume."""
    with _lock:
        _cache.clear()


@numba.njit(cache=True)
def _counting_order(keys: np.ndarray, n_keys: int) -> np.ndarray:  # pragma: no cover - compiled
    """Stable permutation that sorts small non-negative integer ``keys``."""
    start = np.zeros(n_keys + 1, np.int64)
    for k in keys:
        start[k + 1] += 1
    for k in range(n_keys):
        start[k + 1] += start[k]
    order = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        order[start[k]] = i
        start[k] += 1
    return order


def coherent_order(
    src: np.ndarray,
    tgt: np.ndarray,
    shape: tuple[int, int, int],
    perm: tuple[int, int, int] = (0, 1, 2),
    tile: int = TILE_VOXELS,
) -> np.ndarray:
    """A permutation of the rays that groups them by tile where they cross the mid-plane.

    ``src``, ``tgt`` (``N x 3``) are in grid coordinates; ``perm`` names the original axes
    of the permuted volume of ``shape`` (:func:`axis_permutation`), whose *last* axis is the
    dominant one. Within a tile rays keep their order; rays parallel to the mid-plane
    count as crossing it at their midpoint.
    """
    n = src.shape[0]
    if n < 2:
        return np.arange(n)
    a, b, c = perm
    dz = tgt[:, c] - src[:, c]
    safe = np.where(dz == 0, 1.0, dz)
    t = np.where(dz == 0, 0.5, (0.5 * shape[2] - src[:, c]) / safe)
    na = shape[0] // tile + 2
    nb = shape[1] // tile + 2
    pa = src[:, a] + t * (tgt[:, a] - src[:, a])
    pb = src[:, b] + t * (tgt[:, b] - src[:, b])
    ka = np.clip(np.floor(pa / tile) + 1, 0, na - 1).astype(np.int64)
    kb = np.clip(np.floor(pb / tile) + 1, 0, nb - 1).astype(np.int64)
    return _counting_order(ka * nb + kb, int(na * nb))


@dataclass
class KernelRays:
    """Rays and volume laid out for a kernel call, and the way back.

    ``vol``, ``src``, ``tgt`` go to the kernel; :meth:`restore` maps the kernel's per-ray
    output (``N``, or ``N x C``) and end-point Jacobian (``N x 6``, or ``C x N x 6``) back to
    the caller's ray order and axes. A channel volume (``C x I x J x K``) is laid out
    channel-last (:func:`volume_along`).
    """

    vol: np.ndarray
    src: np.ndarray
    tgt: np.ndarray
    perm: tuple[int, int, int] | None
    order: np.ndarray | None

    @classmethod
    def prepare(cls, data: Tensor, src: np.ndarray, tgt: np.ndarray, reorder: bool = True) -> KernelRays:
        """Lay out ``src``, ``tgt`` (``N x 3`` float64 grid coordinates) and the volume."""
        if not reorder or len(src) == 0:
            vol = as_numpy_volume(data) if data.ndim == 3 else volume_along(data, 2)
            return cls(vol, src, tgt, None, None)
        axis = dominant_axis(src, tgt)
        vol = volume_along(data, axis)
        perm = axis_permutation(axis)
        order = coherent_order(src, tgt, vol.shape[:3], perm)
        index = (order[:, None], np.array(perm)[None, :])
        return cls(vol, src[index], tgt[index], perm, order)

    def restore(self, out: np.ndarray, jac: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-ray output and Jacobian back in the caller's ray order and axes."""
        if self.order is None or self.perm is None:
            return out, jac
        full = np.empty_like(out)
        full[self.order] = out
        if jac is not None:
            cols = np.array([*self.perm, *(p + 3 for p in self.perm)])
            full_j = np.empty_like(jac)
            full_j[..., self.order[:, None], cols[None, :]] = jac
            jac = full_j
        return full, jac


def trace_rays(
    method: str,
    data: Tensor,
    src: np.ndarray | Tensor,
    tgt: np.ndarray | Tensor,
    want_jac: bool,
    n_fixed: int = 0,
    step: float = 0.0,
    reorder: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the CPU kernel of ``method`` (``siddon``/``trilinear``) over rays ``src -> tgt``.

    ``src``, ``tgt``: ``N x 3`` grid coordinates (tensors are copied to float64 arrays). Lays
    the volume and the rays out
    (:class:`KernelRays`), runs chunks on the kernel threads, and returns ``S`` (``N``) and,
    when ``want_jac``, ``dS/d(src, tgt)`` (``N x 6``), in the caller's ray order and axes.
    The CPU counterpart of :func:`.cuda.trace_rays`.

    A channel volume ``data`` (``C x I x J x K``, Siddon only) goes through one walk for all
    channels (:func:`siddon_channel_rays_cpu`): ``S`` is then ``N x C`` and the Jacobian ``C x N x 6``.
    """
    if isinstance(src, Tensor):
        src = src.detach().to("cpu", torch.float64).contiguous().numpy()
    if isinstance(tgt, Tensor):
        tgt = tgt.detach().to("cpu", torch.float64).contiguous().numpy()
    if data.ndim == 4 and method != "siddon":
        raise ValueError(f"a channel volume {tuple(data.shape)} renders with method 'siddon' only, got {method!r}")
    rays = KernelRays.prepare(data, src, tgt, reorder)
    n = src.shape[0]
    if data.ndim == 4:
        n_ch = rays.vol.shape[3]
        out = np.empty((n, n_ch), dtype=np.float64)
        jac = np.empty((n_ch, n, 6) if want_jac else (n_ch, 1, 6), dtype=np.float64)
        kernel = siddon_channel_rays_cpu(n_ch)
        shape = np.array(rays.vol.shape[:3], dtype=np.int64)
        flat = rays.vol.reshape(-1)

        def chunk(lo: int, hi: int) -> None:
            kernel(flat, shape, rays.src[lo:hi], rays.tgt[lo:hi], out[lo:hi], jac[:, lo:hi] if want_jac else jac,
                   want_jac)

        run_chunked(chunk, n)
        return rays.restore(out, jac if want_jac else None)
    out = np.empty(n, dtype=np.float64)
    jac = np.empty((n, 6) if want_jac else (1, 6), dtype=np.float64)
    if method == "siddon":

        def chunk(lo: int, hi: int) -> None:
            siddon_rays_cpu(rays.vol, rays.src[lo:hi], rays.tgt[lo:hi], out[lo:hi],
                            jac[lo:hi] if want_jac else jac, want_jac)

    elif method == "trilinear":

        def chunk(lo: int, hi: int) -> None:
            raymarch_rays_cpu(rays.vol, rays.src[lo:hi], rays.tgt[lo:hi], n_fixed, step, out[lo:hi],
                              jac[lo:hi] if want_jac else jac, want_jac)

    else:
        raise ValueError(f"unknown method {method!r} (siddon, trilinear)")
    run_chunked(chunk, n)
    return rays.restore(out, jac if want_jac else None)
