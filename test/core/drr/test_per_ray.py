"""The per-ray kernels: one source, and every compiled form computes what the source says."""

import numpy as np
import pytest

from diffdrr_ros.core.drr import cpu
from diffdrr_ros.core.drr import per_ray as rk


def _rays(shape, n, seed):
    g = np.random.default_rng(seed)
    size = np.array(shape, dtype=float)
    src = g.uniform(-0.5, 1.5, (n, 3)) * size
    tgt = g.uniform(-0.5, 1.5, (n, 3)) * size
    src[0], tgt[0] = [-2.0, 1.0, 1.5], [size[0] + 2.0, 1.0, 1.5]  # along x, on a voxel plane in y
    src[1], tgt[1] = size * 0.3, size * 0.7  # both ends inside
    src[2], tgt[2] = [-1.0, -1.0, -1.0], [-2.0, 5.0, 3.0]  # misses
    return src, tgt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_cpu_functions_equal_their_python_source(dtype):
    """Plain Python runs the same source numba compiles: a check of the compiled types (a
    ``float()`` of a float32 voxel would silently stay float32 in numba; ``np.float64`` does not)."""
    shape = (6, 5, 7)
    vol = np.random.default_rng(0).random(shape).astype(dtype)
    flat = vol.reshape(-1)
    src, tgt = _rays(shape, 24, seed=1)
    for r in range(len(src)):
        args = (flat, *shape, *src[r], *tgt[r])
        for want_jac in (False, True):
            np.testing.assert_allclose(cpu.CPU.siddon_ray(*args, want_jac), rk.siddon_ray(*args, want_jac),
                                       rtol=1e-13, atol=1e-15)
            for n_fixed, step in ((5, 0.0), (0, 0.8)):
                np.testing.assert_allclose(cpu.CPU.raymarch_ray(*args, n_fixed, step, want_jac),
                                           rk.raymarch_ray(*args, n_fixed, step, want_jac), rtol=1e-12, atol=1e-14)


def test_batch_kernels_equal_per_ray_calls():
    shape = (4, 6, 5)
    vol = np.random.default_rng(2).random(shape).astype(np.float32)
    src, tgt = _rays(shape, 16, seed=3)
    out, jac = np.empty(len(src)), np.empty((len(src), 6))
    cpu.siddon_rays_cpu(vol, src, tgt, out, jac, True)
    want = np.array([cpu.CPU.siddon_ray(vol.reshape(-1), *shape, *s, *t, True) for s, t in zip(src, tgt, strict=True)])
    np.testing.assert_array_equal(out, want[:, 0])
    np.testing.assert_array_equal(jac, want[:, 1:])
    assert out[2] == 0 and not jac[2].any()  # the ray that misses
    cpu.raymarch_rays_cpu(vol, src, tgt, 7, 0.0, out, jac, True)
    want = np.array([cpu.CPU.raymarch_ray(vol.reshape(-1), *shape, *s, *t, 7, 0.0, True)
                     for s, t in zip(src, tgt, strict=True)])
    np.testing.assert_allclose(out, want[:, 0], rtol=1e-14)
    np.testing.assert_allclose(jac, want[:, 1:], rtol=1e-12, atol=1e-15)


def test_clip_to_box_reports_the_faces_crossed():
    amin, amax, ain, aout, hit = cpu.CPU.clip_to_box(-1.0, 0.5, 0.5, 4.0, 0.0, 0.0, 2, 1, 1)
    assert hit and (amin, amax, ain, aout) == (0.25, 0.75, 0, 0)
    amin, amax, ain, aout, hit = cpu.CPU.clip_to_box(0.5, 0.5, 0.5, 4.0, 0.0, 0.0, 2, 1, 1)
    assert hit and (amin, ain) == (0.0, -1) and aout == 0  # starts inside
    assert not cpu.CPU.clip_to_box(-1.0, 2.0, 0.5, 4.0, 0.0, 0.0, 2, 1, 1)[4]  # parallel, outside
