"""Trilinear ray marching: fused kernel vs reference, gradients, agreement with Siddon."""

import functools

import pytest
import torch

from diffdrr_ros.core.drr import raymarch, raymarch_torch, siddon_torch

raymarch_numba = functools.partial(raymarch, backend="numba")

D = torch.float64


def _rays(n, seed, spread, center):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(center, dtype=D)
    return torch.randn(n, 3, generator=g, dtype=D) * spread + c, torch.randn(n, 3, generator=g, dtype=D) * spread + c


def _smooth_volume(shape=(14, 12, 10), width=12.0):
    axes = [torch.arange(n, dtype=D) + 0.5 for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    c = [n / 2 for n in shape]
    return torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / width)


def test_numba_equals_reference_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(7, 9, 5, generator=g, dtype=D)
    src, tgt = _rays(200, 1, 10.0, (3.5, 4.5, 2.5))
    s1, t1 = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    s2, t2 = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    a = raymarch_torch(vol, s1, t1, 33)
    b = raymarch_numba(vol.float(), s2, t2, 33)
    assert (a > 0).sum() > 20
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    w = torch.randn(200, generator=g, dtype=D)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(s2.grad, s1.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t2.grad, t1.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fn", [raymarch_numba, raymarch_torch])
def test_gradient_matches_finite_differences(fn):
    vol = _smooth_volume()
    src, tgt = _rays(20, 2, 12.0, (7.0, 6.0, 5.0))
    s, t = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    fn(vol, s, t, 64).sum().backward()
    h = 1e-6
    for is_src, grad in ((True, s.grad), (False, t.grad)):
        for axis in range(3):
            delta = torch.zeros_like(src)
            delta[:, axis] = h
            if is_src:
                fd = (fn(vol, src + delta, tgt, 64) - fn(vol, src - delta, tgt, 64)) / (2 * h)
            else:
                fd = (fn(vol, src, tgt + delta, 64) - fn(vol, src, tgt - delta, 64)) / (2 * h)
            torch.testing.assert_close(grad[:, axis], fd, atol=1e-5, rtol=1e-4)


def test_close_to_siddon_on_a_smooth_volume():
    vol = _smooth_volume((24, 24, 24), width=60.0)
    src, tgt = _rays(100, 3, 12.0, (12.0, 12.0, 12.0))
    exact = siddon_torch(vol, src, tgt)
    approx = raymarch_numba(vol, src, tgt, 200)
    hit = exact > 0.2 * exact.max()
    assert hit.sum() > 10
    rel = ((approx - exact).abs()[hit] / exact[hit]).max()
    assert rel < 0.03, rel  # discretisation differences only (5.7% at width 12)


def test_dispatch_and_errors():
    vol = _smooth_volume()
    src, tgt = _rays(5, 4, 5.0, (7.0, 6.0, 5.0))
    torch.testing.assert_close(raymarch(vol, src, tgt, 16), raymarch_torch(vol, src, tgt, 16))
    with pytest.raises(ValueError):
        raymarch(vol, src, tgt, 16, backend="nope")
