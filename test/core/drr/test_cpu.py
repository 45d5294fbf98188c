"""The speed machinery of the CPU kernels changes no result: layout, ray order, threads, fusion."""

import functools
import math

import numpy as np
import pytest
import torch

from diffdrr_ros.core.drr import RenderSettings, box_clip, raymarch, raymarch_torch, render, sample_counts, siddon
from diffdrr_ros.core.drr import cpu as layout
from diffdrr_ros.core.geometry import Detector, carm_to_matrix, detector_points, detector_points_np
from diffdrr_ros.core.volume import Volume

siddon_numba = functools.partial(siddon, backend="numba")
raymarch_numba = functools.partial(raymarch, backend="numba")

D = torch.float64


def _rays(n, seed, spread, center):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(center, dtype=D)
    return torch.randn(n, 3, generator=g, dtype=D) * spread + c, torch.randn(n, 3, generator=g, dtype=D) * spread + c


def _beam(n, shape, axis, seed=0):
    """Rays that cross a ``shape`` volume mostly along ``axis`` (so that axis dominates)."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor(shape, dtype=D)
    src = torch.rand(n, 3, generator=g, dtype=D) * size
    tgt = torch.rand(n, 3, generator=g, dtype=D) * size
    src[:, axis] = -5.0
    tgt[:, axis] = shape[axis] + 5.0
    return src, tgt


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_reordering_changes_no_value_and_no_gradient(axis, method):
    g = torch.Generator().manual_seed(axis)
    vol = torch.rand(13, 9, 11, generator=g, dtype=torch.float32)
    src, tgt = _beam(700, vol.shape, axis, seed=axis)
    assert layout.dominant_axis(src.numpy(), tgt.numpy()) == axis
    out = {}
    for reorder in (False, True):
        s, t = src.clone().requires_grad_(), tgt.clone().requires_grad_()
        if method == "siddon":
            val = siddon_numba(vol, s, t, reorder=reorder)
        else:
            val = raymarch_numba(vol, s, t, 40, reorder=reorder)
        (val * torch.linspace(-1, 2, len(val), dtype=D)).sum().backward()
        out[reorder] = (val.detach(), s.grad, t.grad)
    for a, b in zip(out[False], out[True], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_volume_copy_is_cached_permuted_and_invalidated():
    layout.clear_cache()
    data = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(4, 5, 6)
    a1 = layout.volume_along(data, 1)
    assert a1.shape == (4, 6, 5) and a1.flags.c_contiguous
    np.testing.assert_array_equal(a1, data.numpy().transpose(0, 2, 1))
    assert layout.volume_along(data, 1) is a1  # cached
    assert np.shares_memory(layout.volume_along(data, 2), data.numpy())  # stored layout: no copy
    a0 = layout.volume_along(data, 0)
    np.testing.assert_array_equal(a0, data.numpy().transpose(1, 2, 0))
    data[0, 0, 0] = -1.0  # in-place change: the copy is rebuilt
    assert layout.volume_along(data, 0)[0, 0, 0] == -1.0
    del data
    assert not layout._cache  # dropped with the tensor


def test_coherent_order_is_a_permutation_grouping_neighbours():
    src, tgt = _beam(5000, (64, 48, 80), 2, seed=3)
    s, t = src.numpy(), tgt.numpy()
    order = layout.coherent_order(s, t, (64, 48, 80))
    assert sorted(order.tolist()) == list(range(5000))
    mid = s + 0.5 * (t - s)  # all these rays cross z = 40 near their midpoint... roughly
    tiles = np.floor(mid[order, :2] / layout.TILE_VOXELS)
    changes = np.count_nonzero(np.any(np.diff(tiles, axis=0) != 0, axis=1))
    assert changes < 100  # consecutive rays mostly share a tile (random order: ~5000)


def test_run_chunked_visits_every_ray_once():
    seen = np.zeros(10_000, dtype=np.int64)

    def fn(lo, hi):
        seen[lo:hi] += 1

    layout.run_chunked(fn, 10_000, threads=3)
    assert (seen == 1).all()
    seen[:] = 0
    layout.run_chunked(fn, 100, threads=4)  # small: in the calling thread
    assert (seen[:100] == 1).all()


def test_per_ray_sample_counts_match_fixed_counts():
    g = torch.Generator().manual_seed(5)
    vol = torch.rand(10, 14, 8, generator=g, dtype=D)
    src, tgt = _rays(120, 6, 12.0, (5.0, 7.0, 4.0))
    step = 0.7
    d = tgt - src
    amin, amax = box_clip(src, d, torch.tensor(vol.shape, dtype=D))
    counts = sample_counts(d, amin, torch.maximum(amax, amin), step)
    assert counts.min() >= 1 and len(set(counts.tolist())) > 5
    s1, t1 = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    s2, t2 = src.clone().requires_grad_(), tgt.clone().requires_grad_()
    a = raymarch_torch(vol, s1, t1, None, step)
    b = raymarch_numba(vol, s2, t2, None, step_voxels=step)
    torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)
    w = torch.randn(120, generator=g, dtype=D)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(s2.grad, s1.grad, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(t2.grad, t1.grad, atol=1e-9, rtol=1e-7)
    for n in counts.unique().tolist():  # each ray as if rendered with its own fixed count
        sel = counts == n
        torch.testing.assert_close(b[sel].detach(), raymarch_torch(vol, src[sel], tgt[sel], n), atol=1e-10, rtol=0)
    with pytest.raises(ValueError):
        raymarch(vol, src, tgt, None, step_voxels=0.0)


def _volume(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Volume.from_array(torch.rand(18, 15, 12, generator=g, dtype=D), (2.0, 2.5, 3.0), kind="raw")


@pytest.mark.parametrize("method,kw", [("siddon", {}), ("trilinear", {"n_samples": 30}), ("trilinear", {})])
def test_fused_cpu_path_equals_torch_reference_with_pose_gradients(method, kw):
    vol = _volume()
    det = Detector(11, 13, spacing_mm=(4.0, 3.5), sdd_mm=900.0, sid_mm=600.0, principal_point_mm=(2.0, -1.0))
    angles = torch.tensor([[0.2, 0.4, -0.1], [-0.5, 1.3, 0.3]], dtype=D, requires_grad=True)
    trans = torch.tensor([[1.0, 2.0, -1.0], [-3.0, 0.5, 2.0]], dtype=D, requires_grad=True)
    weights = torch.linspace(-1, 1, 2 * 11 * 13, dtype=D).reshape(2, 11, 13)
    out = {}
    for backend, extra in (("numba", {}), ("numba", {"patch_size": (4, 5)}), ("torch", {})):
        angles.grad = trans.grad = None
        img = render(vol, carm_to_matrix(angles, trans, vol.center), det, method=method, backend=backend,
                     **kw, **extra)
        (img * weights).sum().backward()
        out[(backend, bool(extra))] = (img.detach(), angles.grad.clone(), trans.grad.clone())
    ref = out[("torch", False)]
    for key in (("numba", False), ("numba", True)):
        for a, b in zip(out[key], ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_fused_path_handles_a_non_rigid_affine_pose():
    # The ray length is taken in the CT frame, so even a scaled "pose" matches the reference.
    vol = _volume(1)
    det = Detector(6, 7, spacing_mm=(5.0, 5.0), sdd_mm=800.0)
    pose = carm_to_matrix(torch.tensor([0.1, 0.2, 0.3], dtype=D), torch.zeros(3, dtype=D), vol.center)
    pose = (pose @ torch.diag(torch.tensor([1.1, 0.9, 1.05, 1.0], dtype=D))).requires_grad_()
    a = render(vol, pose, det, backend="numba")
    a.sum().backward()
    ga = pose.grad.clone()
    pose.grad = None
    b = render(vol, pose, det, backend="torch")
    b.sum().backward()
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ga, pose.grad, atol=1e-9, rtol=1e-7)


def test_numpy_detector_points_equal_torch_ones():
    det = Detector(9, 7, spacing_mm=(1.5, 2.5), sdd_mm=1000.0, sid_mm=700.0, principal_point_mm=(3.0, -2.0))
    rows, cols = slice(2, 8), slice(1, 5)
    src_t, pix_t = detector_points(det, rows=rows, cols=cols, dtype=D)
    src_n, pix_n = detector_points_np(det, rows, cols)
    np.testing.assert_array_equal(src_n, src_t.numpy())
    np.testing.assert_array_equal(pix_n, pix_t.reshape(-1, 3).numpy())


def test_step_setting_validation_and_budget():
    with pytest.raises(ValueError):
        RenderSettings(step_voxels=0.0)
    with pytest.raises(ValueError):
        RenderSettings(patch_size=(0, 4))
    axes = [torch.arange(n, dtype=D) for n in (20, 16, 12)]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    smooth = torch.exp(-((x - 10) ** 2 / 30 + (y - 8) ** 2 / 20 + (z - 6) ** 2 / 15))
    vol = Volume.from_array(smooth, (2.0, 2.5, 3.0), kind="raw")
    det = Detector(8, 8, spacing_mm=(4.0, 4.0), sdd_mm=900.0)
    pose = carm_to_matrix(torch.tensor([0.0, 0.3, 0.0], dtype=D), torch.zeros(3, dtype=D), vol.center)
    coarse = render(vol, pose, det, method="trilinear", step_voxels=2.0)
    fine = render(vol, pose, det, method="trilinear", step_voxels=0.25)
    assert math.isclose(float(coarse.sum()), float(fine.sum()), rel_tol=0.01)
