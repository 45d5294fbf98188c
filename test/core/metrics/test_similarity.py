"""Similarity metrics and the mTRE."""

import math

import pytest
import torch

from diffdrr_ros.core import metrics as m
from diffdrr_ros.core.geometry.rotations import make_transform, rot_z

D = torch.float64


def _img(seed=0, shape=(1, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=D)
    return torch.nn.functional.avg_pool2d(x[:, None], 3, 1, 1)[:, 0]  # some spatial correlation


@pytest.mark.parametrize("name", sorted(m.SIMILARITIES))
def test_similarity_maximal_for_identical_and_invariant_to_affine_intensity(name):
    sim = m.get_similarity(name)
    a = _img()
    same = sim(a, a[0])
    other = sim(_img(seed=1), a[0])
    assert float(same) > float(other)
    if name == "mse":  # raw L2: not intensity invariant, by design
        torch.testing.assert_close(same, torch.zeros(1, dtype=D))
        assert float(sim(3.0 * a + 7.0, a[0])) < float(same)
        return
    scaled = sim(3.0 * a + 7.0, a[0])
    torch.testing.assert_close(same, scaled, atol=1e-6, rtol=0)
    if name != "l2":
        torch.testing.assert_close(same, torch.ones(1, dtype=D), atol=1e-6, rtol=0)


def test_zscored_l2_is_an_affine_function_of_zncc():
    a, b = _img(seed=2, shape=(4, 32, 32)), _img(seed=3)[0]
    torch.testing.assert_close(-m.neg_l2(a, b), 2 - 2 * m.zncc(a, b), atol=1e-6, rtol=0)


def test_mse_values_and_mask():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=D)
    y = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=D)
    torch.testing.assert_close(m.neg_mse(x, y), torch.tensor([-1.0], dtype=D))
    mask = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(m.neg_mse(x, y, mask), torch.tensor([0.0], dtype=D))


def test_zncc_values():
    a = _img()
    torch.testing.assert_close(m.zncc(-a, a[0]), -torch.ones(1, dtype=D), atol=1e-6, rtol=0)
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=D)
    y = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=D)
    xf, yf = x.flatten(), y.flatten()
    ref = torch.corrcoef(torch.stack([xf, yf]))[0, 1]
    torch.testing.assert_close(m.zncc(x, y)[0], ref)


def test_mask_ignores_pixels():
    a = _img()
    b = a.clone()
    b[:, :, :8] = 100 * torch.rand(1, 32, 8, dtype=D)  # garbage where the mask is off
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[:, :8] = False
    assert float(m.zncc(b, a[0])) < 0.9
    torch.testing.assert_close(m.zncc(b, a[0], mask), torch.ones(1, dtype=D), atol=1e-6, rtol=0)
    assert float(m.gradient_ncc(b, a[0], mask)) > 0.99


def test_batched_similarity_shapes_and_gradient():
    a = _img(shape=(4, 16, 16)).requires_grad_()
    for name in m.SIMILARITIES:
        s = m.get_similarity(name)(a, a[0].detach())
        assert s.shape == (4,)
        s.sum().backward()
        assert torch.isfinite(a.grad).all()
        a.grad = None


def test_unknown_similarity():
    with pytest.raises(ValueError, match="unknown similarity"):
        m.get_similarity("mutual-information")


def test_target_points_and_mtre():
    pts = m.target_points(torch.tensor([1.0, 2.0, 3.0], dtype=D), torch.tensor([100.0, 200.0, 40.0], dtype=D))
    assert pts.shape == (27, 3)
    torch.testing.assert_close(pts.mean(0), torch.tensor([1.0, 2.0, 3.0], dtype=D))
    torch.testing.assert_close(pts[:, 0].max() - pts[:, 0].min(), torch.tensor(50.0, dtype=D))
    eye = torch.eye(4, dtype=D)
    shifted = make_transform(torch.eye(3, dtype=D), torch.tensor([3.0, 4.0, 0.0], dtype=D))
    torch.testing.assert_close(m.mean_target_registration_error(shifted, eye, pts), torch.tensor(5.0, dtype=D))
    # A rotation about the centroid: mean distance = mean of 2 r sin(a/2) over the points.
    a = 0.1
    rot = make_transform(rot_z(torch.tensor(a, dtype=D)), torch.zeros(3, dtype=D))
    centred = pts - pts.mean(0)
    r = centred[:, :2].norm(dim=-1)
    expected = (2 * r * math.sin(a / 2)).mean()
    torch.testing.assert_close(m.mean_target_registration_error(rot, eye, centred), expected)


def test_the_sliced_sobel_gradients_are_the_convolution():
    from diffdrr_ros.core.metrics.similarity import image_gradients, image_gradients_reference

    x = torch.rand(2, 19, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for fast, ref in zip(image_gradients(x), image_gradients_reference(x), strict=True):
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-15)
    ramp = torch.arange(23, dtype=torch.float64).expand(1, 19, 23)  # d/dcol = 1 inside, 1/2 at the replicated edge
    gx, gy = image_gradients(ramp)
    assert torch.allclose(gx[0, :, 1:-1], torch.ones(19, 21, dtype=torch.float64)) and float(gy.abs().max()) == 0
    assert torch.allclose(gx[0, :, [0, -1]], torch.full((19, 2), 0.5, dtype=torch.float64))
