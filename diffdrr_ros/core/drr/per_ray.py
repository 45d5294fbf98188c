"""Per-ray kernels, written once and compiled for two targets: the CPU (numba) and CUDA.

Each function below traces *one* ray through a voxel grid, in grid coordinates (voxel
``(i, j, k)`` occupies ``[i, i+1) x [j, j+1) x [k, k+1)``; see :mod:`.reference`), and returns
the radiological path ``S`` (alpha units) with its analytic gradient with respect to the
ray's end points:

    (S, dS/dsrc_x, dS/dsrc_y, dS/dsrc_z, dS/dtgt_x, dS/dtgt_y, dS/dtgt_z)

The Siddon walk (:func:`siddon_walk`) does so for every channel of a channel-last volume in
one traversal (the polychromatic DRR's materials), compiled per channel count
(:func:`compile_siddon_walk`); :func:`siddon_ray` is its one-channel form.

They use scalars, ``math``, ``np.float64`` casts (``float()`` of a float32 stays float32 in
numba) and 1-D array reads only, the subset that numba compiles both
for the CPU and for CUDA (and plain Python runs, slowly, for debugging). The same source
is therefore compiled twice by :func:`compile_ray_functions`:

* CPU: ``numba.njit`` functions, looped over chunks of rays by :mod:`.cpu` (serial,
  GIL-free, on a pool of threads);
* CUDA: ``numba.cuda.jit(device=True)`` functions, one thread per ray (:mod:`.cuda`).

So the GPU computes exactly what the CPU kernels compute (same operations in the same
order, float64), and the tests compare them bit for bit under numba's CUDA simulator.
numba has no notion of "one function, two targets" for functions that call each other,
so :func:`retarget` rebinds each function's helpers to the helper compiled for the same
target (a copy of the function with its own globals; the source is not duplicated).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

#: Slack in the per-ray sample count of the trilinear kernel (see :func:`.reference.sample_counts`).
COUNT_SLACK = 1e-6
#: Channels of :func:`siddon_walk`: a compile-time constant, rebound by :func:`compile_siddon_walk`
#: (this value is the one plain Python runs with).
CHANNELS = 1
#: ``local_array(shape, dtype)``: per-ray scratch (the signature of ``np.empty`` and of
#: ``cuda.local.array``), rebound for each target by :func:`compile_ray_functions`.
local_array = np.empty

# ---------------------------------------------------------------------------------------
# The per-ray functions (pure Python source; compiled by compile_ray_functions)
# ---------------------------------------------------------------------------------------


def clip_to_box(sx, sy, sz, dx, dy, dz, nx, ny, nz):  # pragma: no cover - compiled
    """Clip the segment ``src + alpha d``, ``alpha in [0, 1]``, to the box ``[0, n]``.

    Returns ``(alpha_in, alpha_out, axis_in, axis_out, hit)``; ``axis_*`` is the axis of the
    box face crossed at that end, or -1 when the segment starts / ends inside the box.
    """
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
    return amin, amax, ain, aout, ok and amin < amax


def siddon_walk(flat, nx, ny, nz, sx, sy, sz, tx, ty, tz, want_jac, res):  # pragma: no cover - compiled
    """Exact Siddon/Jacobs traversal of one ray through the ``CHANNELS`` channels of a volume.

    ``flat`` is the channel-last C-order volume, raveled (channel ``c`` of voxel ``(i, j, k)`` at
    ``CHANNELS ((i ny + j) nz + k) + c``; with one channel, the volume itself). ``res``
    (``7 CHANNELS``) gets, for each channel ``c``, ``res[7 c : 7 c + 7] = (S, dS/dsrc, dS/dtgt)``:
    one walk, one tie-breaking, for every channel.

    The walk keeps, per axis, the coordinate of the next plane (stepped by +-1, exact in
    floating point, so every crossing ``(plane - s) * (1 / d)`` is computed afresh: no drift,
    the same tie-breaking everywhere), the flat-index stride and the voxels left before the
    face. For the gradient, each crossing of a plane on axis ``a`` at ``alpha`` with jump
    ``J = V_before - V_after`` (``V = 0`` outside) adds ``J`` to ``Q_a`` and ``J alpha`` to
    ``P_a``; then ``dS/dsrc_a = (P_a - Q_a) / d_a`` and ``dS/dtgt_a = -P_a / d_a``.

    ``CHANNELS`` is a compile-time constant (bound by :func:`compile_siddon_walk`): the
    per-channel state lives in :data:`local_array` s of that size (:func:`stack_array` when
    compiled, ``np.empty`` in plain Python), whose loops the compilers unroll and whose
    elements they keep in registers; with one channel the walk compiles to the scalar loop a
    single-channel walk would be.
    """
    for i in range(7 * CHANNELS):
        res[i] = 0.0
    dx, dy, dz = tx - sx, ty - sy, tz - sz
    amin, amax, ain, aout, hit = clip_to_box(sx, sy, sz, dx, dy, dz, nx, ny, nz)
    if not hit:
        return
    ivx = 1.0 / dx if dx != 0.0 else 0.0
    ivy = 1.0 / dy if dy != 0.0 else 0.0
    ivz = 1.0 / dz if dz != 0.0 else 0.0
    # First voxel: the one the segment starting at amin lies in. (int(): in numba's CUDA
    # target math.floor / math.ceil return floats, and a float cannot index.)
    px, py, pz = sx + amin * dx, sy + amin * dy, sz + amin * dz
    ix = min(max(int(math.floor(px)) if dx >= 0 else int(math.ceil(px)) - 1, 0), nx - 1)  # noqa: RUF046
    iy = min(max(int(math.floor(py)) if dy >= 0 else int(math.ceil(py)) - 1, 0), ny - 1)  # noqa: RUF046
    iz = min(max(int(math.floor(pz)) if dz >= 0 else int(math.ceil(pz)) - 1, 0), nz - 1)  # noqa: RUF046
    # Per axis: next plane, plane step, flat-index step, voxels left.
    if dx > 0:
        plx, stepx, strx, leftx = ix + 1.0, 1.0, CHANNELS * ny * nz, nx - 1 - ix
    elif dx < 0:
        plx, stepx, strx, leftx = ix * 1.0, -1.0, -(CHANNELS * ny * nz), ix
    else:
        plx, stepx, strx, leftx = 0.0, 0.0, 0, 0
    if dy > 0:
        ply, stepy, stry, lefty = iy + 1.0, 1.0, CHANNELS * nz, ny - 1 - iy
    elif dy < 0:
        ply, stepy, stry, lefty = iy * 1.0, -1.0, -(CHANNELS * nz), iy
    else:
        ply, stepy, stry, lefty = 0.0, 0.0, 0, 0
    if dz > 0:
        plz, stepz, strz, leftz = iz + 1.0, 1.0, CHANNELS, nz - 1 - iz
    elif dz < 0:
        plz, stepz, strz, leftz = iz * 1.0, -1.0, -CHANNELS, iz
    else:
        plz, stepz, strz, leftz = 0.0, 0.0, 0, 0
    nxt_x = (plx - sx) * ivx if dx != 0.0 else math.inf
    nxt_y = (ply - sy) * ivy if dy != 0.0 else math.inf
    nxt_z = (plz - sz) * ivz if dz != 0.0 else math.inf
    idx = CHANNELS * ((ix * ny + iy) * nz + iz)
    v = local_array(CHANNELS, np.float64)  # per channel: the current voxel's value
    acc = local_array(CHANNELS, np.float64)  # the path so far
    for c in range(CHANNELS):
        v[c] = np.float64(flat[idx + c])
        acc[c] = 0.0
    a_cur = amin
    # Two copies of the walk, forward only and with the jump bookkeeping: one loop with
    # ``if want_jac`` inside measured 8-9 % slower in both modes (LLVM does not unswitch it).
    if not want_jac:  # forward only: no jump bookkeeping
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
            elif nxt_y <= nxt_z:
                if nxt_y >= amax or lefty == 0:
                    break
                seg = nxt_y - a_cur
                a_cur = nxt_y
                ply += stepy
                nxt_y = (ply - sy) * ivy
                idx += stry
                lefty -= 1
            else:
                if nxt_z >= amax or leftz == 0:
                    break
                seg = nxt_z - a_cur
                a_cur = nxt_z
                plz += stepz
                nxt_z = (plz - sz) * ivz
                idx += strz
                leftz -= 1
            for c in range(CHANNELS):
                acc[c] += seg * v[c]
                v[c] = np.float64(flat[idx + c])
        for c in range(CHANNELS):
            res[7 * c] = acc[c] + (amax - a_cur) * v[c]
        return
    qx = local_array(CHANNELS, np.float64)  # per channel and axis: sum of jumps
    qy = local_array(CHANNELS, np.float64)
    qz = local_array(CHANNELS, np.float64)
    wx = local_array(CHANNELS, np.float64)  # per channel and axis: sum of jump * alpha
    wy = local_array(CHANNELS, np.float64)
    wz = local_array(CHANNELS, np.float64)
    for c in range(CHANNELS):
        qx[c] = qy[c] = qz[c] = wx[c] = wy[c] = wz[c] = 0.0
        if ain == 0:  # entering through a face: jump 0 -> v
            qx[c] -= v[c]
            wx[c] -= v[c] * amin
        elif ain == 1:
            qy[c] -= v[c]
            wy[c] -= v[c] * amin
        elif ain == 2:
            qz[c] -= v[c]
            wz[c] -= v[c] * amin
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
            for c in range(CHANNELS):
                acc[c] += seg * v[c]
                vn = np.float64(flat[idx + c])
                qx[c] += v[c] - vn
                wx[c] += (v[c] - vn) * a_cur
                v[c] = vn
        elif nxt_y <= nxt_z:
            if nxt_y >= amax or lefty == 0:
                break
            seg = nxt_y - a_cur
            a_cur = nxt_y
            ply += stepy
            nxt_y = (ply - sy) * ivy
            idx += stry
            lefty -= 1
            for c in range(CHANNELS):
                acc[c] += seg * v[c]
                vn = np.float64(flat[idx + c])
                qy[c] += v[c] - vn
                wy[c] += (v[c] - vn) * a_cur
                v[c] = vn
        else:
            if nxt_z >= amax or leftz == 0:
                break
            seg = nxt_z - a_cur
            a_cur = nxt_z
            plz += stepz
            nxt_z = (plz - sz) * ivz
            idx += strz
            leftz -= 1
            for c in range(CHANNELS):
                acc[c] += seg * v[c]
                vn = np.float64(flat[idx + c])
                qz[c] += v[c] - vn
                wz[c] += (v[c] - vn) * a_cur
                v[c] = vn
    for c in range(CHANNELS):
        if aout == 0:  # leaving through a face: jump v -> 0
            qx[c] += v[c]
            wx[c] += v[c] * amax
        elif aout == 1:
            qy[c] += v[c]
            wy[c] += v[c] * amax
        elif aout == 2:
            qz[c] += v[c]
            wz[c] += v[c] * amax
        r = 7 * c
        res[r] = acc[c] + (amax - a_cur) * v[c]
        res[r + 1], res[r + 2], res[r + 3] = ivx * (wx[c] - qx[c]), ivy * (wy[c] - qy[c]), ivz * (wz[c] - qz[c])
        res[r + 4], res[r + 5], res[r + 6] = -ivx * wx[c], -ivy * wy[c], -ivz * wz[c]


def siddon_ray(flat, nx, ny, nz, sx, sy, sz, tx, ty, tz, want_jac):  # pragma: no cover - compiled
    """:func:`siddon_walk` of a one-channel volume: ``(S, dS/dsrc, dS/dtgt)`` as seven numbers."""
    res = local_array(7, np.float64)
    siddon_walk(flat, nx, ny, nz, sx, sy, sz, tx, ty, tz, want_jac, res)
    return res[0], res[1], res[2], res[3], res[4], res[5], res[6]


def face_motion(face, a_face, ds, dx, dy, dz):  # pragma: no cover - compiled
    """Gradient terms from a clip point ``alpha_face`` that lies on a volume face.

    The clip point of a face on axis ``a`` moves with the end points:
    ``d alpha / dsrc_a = (alpha - 1) / d_a``, ``d alpha / dtgt_a = -alpha / d_a``. Returns the
    contributions ``ds * d alpha / d(src, tgt)`` as six numbers (zero when ``face < 0``).
    """
    if face < 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    inv = 1.0 / (dx if face == 0 else (dy if face == 1 else dz))
    u = ds * (a_face - 1.0) * inv
    w = -ds * a_face * inv
    if face == 0:
        return u, 0.0, 0.0, w, 0.0, 0.0
    if face == 1:
        return 0.0, u, 0.0, 0.0, w, 0.0
    return 0.0, 0.0, u, 0.0, 0.0, w


def march_samples(flat, nx, ny, nz, sx, sy, sz, dx, dy, dz, amin, h, n_samples, want_jac):  # pragma: no cover
    """The sample loop of :func:`raymarch_ray`: ``(sum V, G0, T)`` (``G0``, ``T``: 3 numbers each).

    Branch-free (clamping by ``min``/``max``, border weights by selects) so that it
    vectorises on the CPU, where it alone is compiled with :data:`.cpu.CPU_FASTMATH`: the
    reassociation it allows is confined to these sums.
    """
    s0 = ny * nz
    s1 = nz
    fxm, fym, fzm = nx - 1.0, ny - 1.0, nz - 1.0
    # Sample m sits at alpha = amin + (m + 1/2) h; positions in voxel-centre coordinates.
    a_first = amin + 0.5 * h
    px0 = sx + a_first * dx - 0.5
    py0 = sy + a_first * dy - 0.5
    pz0 = sz + a_first * dz - 0.5
    hx, hy, hz = h * dx, h * dy, h * dz
    sum_v = 0.0
    g0x = g0y = g0z = 0.0
    t_x = t_y = t_z = 0.0
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
            t_x += t * gx
            t_y += t * gy
            t_z += t * gz
    return sum_v, g0x, g0y, g0z, t_x, t_y, t_z


def raymarch_ray(flat, nx, ny, nz, sx, sy, sz, tx, ty, tz, n_fixed, step, want_jac):  # pragma: no cover
    """Trilinear midpoint rule along the clipped ray (see :mod:`.raymarch`).

    ``n_fixed`` samples, or, when ``step > 0``, ``ceil(max_a |d_a| span / step)``. For the
    gradient the loop (:func:`march_samples`) keeps only ``G0 = sum_m grad V(p_m)`` and
    ``T = sum_m t_m grad V(p_m)``: with ``alpha_m = a_in + t_m (a_out - a_in)`` and
    ``h = (a_out - a_in) / n``,

        dS/dsrc = h sum (1 - alpha_m) grad V,   dS/dtgt = h sum alpha_m grad V,

    and the motion of the clip points (when they lie on a volume face) enters through
    ``dS/da_in = -mean V + h d . (G0 - T)`` and ``dS/da_out = mean V + h d . T``.
    """
    dx, dy, dz = tx - sx, ty - sy, tz - sz
    amin, amax, ain, aout, hit = clip_to_box(sx, sy, sz, dx, dy, dz, nx, ny, nz)
    if not hit:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    span = amax - amin
    n_samples = n_fixed
    if step > 0.0:
        n_samples = max(1, int(math.ceil(max(abs(dx), abs(dy), abs(dz)) * span / step - COUNT_SLACK)))  # noqa: RUF046 (CUDA)
    h = span / n_samples
    sum_v, g0x, g0y, g0z, t_x, t_y, t_z = march_samples(
        flat, nx, ny, nz, sx, sy, sz, dx, dy, dz, amin, h, n_samples, want_jac
    )
    s = h * sum_v
    if not want_jac:
        return s, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    a1x = amin * g0x + span * t_x  # sum alpha_m grad V
    a1y = amin * g0y + span * t_y
    a1z = amin * g0z + span * t_z
    gdt = t_x * dx + t_y * dy + t_z * dz
    gd0 = g0x * dx + g0y * dy + g0z * dz
    ds_dain = -sum_v / n_samples + h * (gd0 - gdt)
    ds_daout = sum_v / n_samples + h * gdt
    i0, i1, i2, i3, i4, i5 = face_motion(ain, amin, ds_dain, dx, dy, dz)
    o0, o1, o2, o3, o4, o5 = face_motion(aout, amax, ds_daout, dx, dy, dz)
    return (
        s,
        h * (g0x - a1x) + i0 + o0,
        h * (g0y - a1y) + i1 + o1,
        h * (g0z - a1z) + i2 + o2,
        h * a1x + i3 + o3,
        h * a1y + i4 + o4,
        h * a1z + i5 + o5,
    )


def store_ray(out, jac, r, res, want_jac):  # pragma: no cover - compiled
    """Write a per-ray result ``(S, dS/dsrc, dS/dtgt)`` to ``out[r]`` and (when ``want_jac``) ``jac[r]``."""
    out[r] = res[0]
    if want_jac:
        jac[r, 0] = res[1]
        jac[r, 1] = res[2]
        jac[r, 2] = res[3]
        jac[r, 3] = res[4]
        jac[r, 4] = res[5]
        jac[r, 5] = res[6]


def sampling_args(n_samples: int | None, step_voxels: float) -> tuple[int, float]:
    """``(n_fixed, step)`` of :func:`raymarch_ray` for ``n_samples`` per ray, or per-ray counts (``None``)."""
    if n_samples is None:
        return 0, float(step_voxels)
    return int(n_samples), 0.0


@intrinsic(target="generic")
def stack_array(typingctx, shape, dtype):  # pragma: no cover - compiled
    """``np.empty(shape, dtype)`` in the calling function's stack frame (uninitialised; ``shape`` a
    compile-time integer), for compiled code on any target (an ``alloca``: what ``cuda.local.array``
    is on CUDA): per-ray scratch that costs no allocation, and that LLVM / NVVM keep in registers
    when every index is a constant (see :func:`siddon_walk`). The :data:`local_array` of the CPU
    and CUDA targets."""
    if not isinstance(shape, nbtypes.IntegerLiteral):
        return None
    elem = dtype.instance_type if isinstance(dtype, (nbtypes.NumberClass, nbtypes.DType)) else None
    if not isinstance(elem, nbtypes.Number):
        return None
    arr_t = nbtypes.Array(elem, 1, "C")
    size = int(shape.literal_value)

    def codegen(context, builder, signature, args):
        ll_elem = context.get_value_type(elem)
        itemsize = context.get_abi_sizeof(ll_elem)
        ary = context.make_array(arr_t)(context, builder)
        context.populate_array(ary, data=cgutils.alloca_once(builder, ll_elem, size=size),
                               shape=[context.get_constant(nbtypes.intp, size)],
                               strides=[context.get_constant(nbtypes.intp, itemsize)],
                               itemsize=context.get_constant(nbtypes.intp, itemsize), meminfo=None)
        return ary._getvalue()

    return arr_t(shape, dtype), codegen


# ---------------------------------------------------------------------------------------
# Compilation for a target
# ---------------------------------------------------------------------------------------


class RayFunctions(NamedTuple):
    """The per-ray functions compiled for one target (the Siddon walk for one channel)."""

    clip_to_box: Callable
    siddon_walk: Callable
    siddon_ray: Callable
    raymarch_ray: Callable
    store_ray: Callable


def retarget(fn: Callable, jit: Callable, **helpers: object) -> Callable:
    """``jit`` applied to a copy of ``fn`` whose globals named in ``helpers`` are rebound to them."""
    scope = dict(fn.__globals__)
    scope.update(helpers)
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    return jit(copy)


def compile_siddon_walk(jit: Callable, channels: int, local_array: Callable, clip: Callable | None = None) -> Callable:
    """:func:`siddon_walk` for ``channels`` channels, compiled with ``jit``; ``local_array`` is the
    target's per-ray scratch (see :data:`local_array`), ``clip`` its :func:`clip_to_box`."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    clip = retarget(clip_to_box, jit) if clip is None else clip
    return retarget(siddon_walk, jit, clip_to_box=clip, CHANNELS=int(channels), local_array=local_array)


def compile_ray_functions(jit: Callable, jit_sampling: Callable | None = None,
                          local_array: Callable = np.empty) -> RayFunctions:
    """Compile the per-ray functions with ``jit`` (``jit_sampling`` for the trilinear sample loop).

    ``jit`` is e.g. ``numba.njit(nogil=True)`` or ``numba.cuda.jit(device=True)``, and
    ``local_array`` the target's per-ray scratch (:data:`local_array`: :func:`stack_array` when
    compiled, ``np.empty`` where the source runs as Python, as in numba's CUDA simulator).
    """
    jit_sampling = jit if jit_sampling is None else jit_sampling
    clip = retarget(clip_to_box, jit)
    face = retarget(face_motion, jit)
    samples = retarget(march_samples, jit_sampling)
    walk = compile_siddon_walk(jit, 1, local_array, clip)
    return RayFunctions(
        clip_to_box=clip,
        siddon_walk=walk,
        siddon_ray=retarget(siddon_ray, jit, siddon_walk=walk, local_array=local_array),
        raymarch_ray=retarget(raymarch_ray, jit, clip_to_box=clip, face_motion=face, march_samples=samples),
        store_ray=retarget(store_ray, jit),
    )
