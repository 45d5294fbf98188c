"""The Siddon walk generic over channels (:func:`.per_ray.siddon_walk`): one channel is the
single-channel kernel, ``C`` channels are ``C`` single-channel walks, compiled and as plain Python."""

import numpy as np
import pytest
import torch
from test_per_ray import _rays  # the same rays: along a voxel plane, inside, missing, random

from diffdrr_ros.core.drr import cpu
from diffdrr_ros.core.drr import per_ray as rk


def _single(vol, src, tgt, want_jac):
    out, jac = np.empty(len(src)), np.zeros((len(src), 6))
    cpu.siddon_rays_cpu(np.ascontiguousarray(vol), src, tgt, out, jac, want_jac)
    return out, jac


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_channel_walk_equals_one_single_channel_walk_per_channel(channels, dtype):
    shape = (6, 5, 7)
    vols = np.random.default_rng(channels).random((channels, *shape)).astype(dtype)
    src, tgt = _rays(shape, 40, seed=4)
    flat = np.ascontiguousarray(np.moveaxis(vols, 0, -1)).reshape(-1)  # channel-last
    kernel = cpu.siddon_channel_rays_cpu(channels)
    for want_jac in (False, True):
        out, jac = np.empty((len(src), channels)), np.zeros((channels, len(src), 6))
        kernel(flat, np.array(shape, dtype=np.int64), src, tgt, out, jac, want_jac)
        for c in range(channels):
            want, want_j = _single(vols[c], src, tgt, want_jac)
            np.testing.assert_array_equal(out[:, c], want)  # the same operations in the same order
            if want_jac:
                np.testing.assert_array_equal(jac[c], want_j)


def test_one_channel_walk_is_the_single_channel_kernel_and_its_python_source():
    shape = (4, 6, 5)
    vol = np.random.default_rng(2).random(shape).astype(np.float32)
    src, tgt = _rays(shape, 16, seed=3)
    flat = vol.reshape(-1)
    two = rk.retarget(rk.siddon_walk, lambda f: f, CHANNELS=2)  # plain Python, two channels
    flat2 = np.ascontiguousarray(np.stack([vol, 2 * vol], -1)).reshape(-1)
    for s, t in zip(src, tgt, strict=True):
        for want_jac in (False, True):
            res = np.empty(7)
            cpu.CPU.siddon_walk(flat, *shape, *s, *t, want_jac, res)
            np.testing.assert_array_equal(res, cpu.CPU.siddon_ray(flat, *shape, *s, *t, want_jac))
            py = np.empty(7)
            rk.siddon_walk(flat, *shape, *s, *t, want_jac, py)
            np.testing.assert_allclose(res, py, rtol=1e-13, atol=1e-15)
            res2 = np.empty(14)
            two(flat2, *shape, *s, *t, want_jac, res2)
            np.testing.assert_allclose(res2[:7], py, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(res2[7:], 2 * py, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("reorder", [True, False])
def test_trace_rays_on_a_channel_volume_equals_one_trace_per_channel(reorder):
    """The layout (dominant axis, ray order) and its inverse, for ``C x N`` values and ``C x N x 6`` Jacobians."""
    shape = (9, 7, 8)
    data = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    src, tgt = _rays(shape, 600, seed=5)
    s, j = cpu.trace_rays("siddon", data, src, tgt, True, reorder=reorder)
    assert s.shape == (600, 2) and j.shape == (2, 600, 6)
    for c in range(2):
        s_c, j_c = cpu.trace_rays("siddon", data[c], src, tgt, True, reorder=reorder)
        np.testing.assert_array_equal(s[:, c], s_c)
        np.testing.assert_array_equal(j[c], j_c)
    with pytest.raises(ValueError, match="siddon"):
        cpu.trace_rays("trilinear", data, src, tgt, False)
