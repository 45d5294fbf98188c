"""Siddon kernels against closed-form chords, a brute-force reference, and each other."""

import functools

import pytest
import torch

from diffdrr_ros.core.drr import siddon, siddon_torch

siddon_numba = functools.partial(siddon, backend="numba")

D = torch.float64
BACKENDS = [siddon_numba, siddon_torch]


def _box_volume():
    """Shape (10, 12, 8), ones in voxels [2:7, 3:9, 1:6]: the box [2,7]x[3,9]x[1,6] in grid units."""
    vol = torch.zeros(10, 12, 8, dtype=D)
    vol[2:7, 3:9, 1:6] = 1.0
    return vol, torch.tensor([2.0, 3.0, 1.0], dtype=D), torch.tensor([7.0, 9.0, 6.0], dtype=D)


def _chord_alpha(src, tgt, lo, hi):
    """Exact length (alpha units) of the part of each segment inside the box [lo, hi]."""
    d = tgt - src
    with torch.no_grad():
        inv = 1 / d
        a0, a1 = (lo - src) * inv, (hi - src) * inv
        lo_a = torch.minimum(a0, a1)
        hi_a = torch.maximum(a0, a1)
        par = d == 0
        inside = (src > lo) & (src < hi)
        lo_a = torch.where(par, torch.where(inside, -torch.inf, torch.inf), lo_a)
        hi_a = torch.where(par, torch.where(inside, torch.inf, -torch.inf), hi_a)
        amin = lo_a.amax(-1).clamp_min(0)
        amax = hi_a.amin(-1).clamp_max(1)
    return (amax - amin).clamp_min(0)


def _random_rays(n, seed, spread=15.0, center=(5.0, 6.0, 4.0)):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(center, dtype=D)
    return (torch.randn(n, 3, generator=g, dtype=D) * spread + c, torch.randn(n, 3, generator=g, dtype=D) * spread + c)


@pytest.mark.parametrize("fn", BACKENDS)
def test_box_chords_exact_for_random_rays(fn):
    vol, lo, hi = _box_volume()
    src, tgt = _random_rays(500, seed=0, spread=6.0)
    expected = _chord_alpha(src, tgt, lo, hi)
    assert (expected > 0).sum() > 50  # the test exercises hits and misses
    torch.testing.assert_close(fn(vol, src, tgt), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("fn", BACKENDS)
def test_rays_parallel_to_voxel_planes(fn):
    vol, lo, hi = _box_volume()
    # Along each axis, through the box interior and just outside each face.
    src = torch.tensor(
        [[-5.0, 4.5, 2.5], [4.5, -3.0, 3.0], [3.5, 5.5, -10.0], [1.999999, 4.5, 2.5], [2.000001, 4.5, 2.5],
         [4.5, 9.000001, 3.0], [4.5, 8.999999, 3.0]],
        dtype=D,
    )
    tgt = src.clone()
    tgt[0, 0], tgt[1, 1], tgt[2, 2] = 20.0, 20.0, 20.0
    tgt[3:5, 1] = 30.0
    tgt[3:5, 1] = 30.0
    tgt[5:7, 0] = 30.0
    expected = _chord_alpha(src, tgt, lo, hi)
    assert expected[3] == 0 and expected[4] > 0 and expected[5] == 0 and expected[6] > 0
    torch.testing.assert_close(fn(vol, src, tgt), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("fn", BACKENDS)
def test_rays_grazing_box_edges_and_corners(fn):
    vol, lo, hi = _box_volume()
    eps = 1e-7
    # Diagonal rays that pass just inside / just outside the edge x=2, y=3 of the box.
    src = torch.tensor([[2 - 5 + eps, 3 + 5, 2.5], [2 - 5 - eps, 3 + 5, 2.5]], dtype=D)
    tgt = torch.tensor([[2 + 5 + eps, 3 - 5, 2.5], [2 + 5 - eps, 3 - 5, 2.5]], dtype=D)
    # And a ray straight through a corner of the box along the main diagonal.
    src = torch.cat([src, torch.tensor([[0.0, 1.0, -1.0]], dtype=D)])
    tgt = torch.cat([tgt, torch.tensor([[9.0, 10.0, 8.0]], dtype=D)])
    expected = _chord_alpha(src, tgt, lo, hi)
    torch.testing.assert_close(fn(vol, src, tgt), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fn", BACKENDS)
def test_source_and_target_inside_the_volume(fn):
    vol, lo, hi = _box_volume()
    src = torch.tensor([[4.0, 5.0, 3.0], [0.5, 0.5, 0.5]], dtype=D)
    tgt = torch.tensor([[6.5, 8.0, 5.5], [9.5, 11.5, 7.5]], dtype=D)
    torch.testing.assert_close(fn(vol, src, tgt), _chord_alpha(src, tgt, lo, hi), atol=1e-10, rtol=0)


def _brute_force(vol, src, tgt, steps=20000):
    """Nearest-voxel midpoint sampling with a very fine step (alpha units)."""
    t = (torch.arange(steps, dtype=D) + 0.5) / steps
    pos = src[:, None] + t[None, :, None] * (tgt - src)[:, None]
    idx = pos.floor().long()
    size = torch.tensor(vol.shape)
    inside = ((idx >= 0) & (idx < size)).all(-1)
    idx = torch.minimum(idx.clamp_min(0), size - 1)
    vals = vol[idx[..., 0], idx[..., 1], idx[..., 2]] * inside
    return vals.sum(-1) / steps


@pytest.mark.parametrize("fn", BACKENDS)
def test_random_volume_matches_brute_force(fn):
    g = torch.Generator().manual_seed(1)
    vol = torch.rand(6, 7, 5, generator=g, dtype=D)
    src, tgt = _random_rays(40, seed=2, spread=8.0, center=(3.0, 3.5, 2.5))
    ref = _brute_force(vol, src, tgt)
    # Each plane crossing is resolved to 1/steps of alpha: error <= crossings / steps.
    torch.testing.assert_close(fn(vol, src, tgt), ref, atol=2e-3, rtol=0)


def test_numba_equals_torch_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    vol = torch.rand(9, 7, 8, generator=g, dtype=D)
    src, tgt = _random_rays(300, seed=4, spread=12.0, center=(4.5, 3.5, 4.0))
    s1, t1 = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    s2, t2 = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    w = torch.randn(300, generator=g, dtype=D)
    a = siddon_torch(vol, s1, t1)
    b = siddon_numba(vol.float(), s2, t2)
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(s2.grad, s1.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t2.grad, t1.grad, atol=1e-6, rtol=1e-5)


def test_numba_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(5)
    vol = torch.rand(6, 6, 6, generator=g, dtype=D)
    src, tgt = _random_rays(30, seed=6, spread=10.0, center=(3.0, 3.0, 3.0))
    hit = siddon_torch(vol, src, tgt) > 0
    src, tgt = src[hit], tgt[hit]
    s, t = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    siddon_numba(vol, s, t).sum().backward()
    h = 1e-6
    for which, grad in ((src, s.grad), (tgt, t.grad)):
        for axis in range(3):
            plus, minus = which.clone(), which.clone()
            plus[:, axis] += h
            minus[:, axis] -= h
            args_p = (plus, tgt) if which is src else (src, plus)
            args_m = (minus, tgt) if which is src else (src, minus)
            fd = (siddon_numba(vol, *args_p) - siddon_numba(vol, *args_m)) / (2 * h)
            torch.testing.assert_close(grad[:, axis], fd, atol=1e-5, rtol=1e-4)


def test_dispatch():
    vol, _, _ = _box_volume()
    src, tgt = _random_rays(10, seed=7)
    torch.testing.assert_close(siddon(vol, src, tgt), siddon(vol, src, tgt, backend="torch"))
    with pytest.raises(ValueError, match="unknown backend"):
        siddon(vol, src, tgt, backend="cuda-magic")
