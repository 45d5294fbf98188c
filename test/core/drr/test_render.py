"""End-to-end DRR rendering against analytic phantoms, patches, batches, gradients."""

import math

import pytest
import torch

from diffdrr_ros.core.drr import RenderSettings, plan_patches, render, to_intensity
from diffdrr_ros.core.geometry import Detector, carm_to_matrix, detector_points
from diffdrr_ros.core.geometry.rotations import apply_transform, invert_transform
from diffdrr_ros.core.volume import Volume
from diffdrr_ros.core.volume.phantoms import box_phantom, sphere_phantom

D = torch.float64
POSES = [  # (theta, phi, gamma) rad, translation mm
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((0.3, -0.5, 0.2), (4.0, -3.0, 2.0)),
    ((-0.7, 1.2, -0.4), (-6.0, 5.0, -3.0)),
    ((0.0, math.pi / 2, 0.0), (0.0, 0.0, 0.0)),  # lateral: rays parallel to voxel planes
]


def _pose(angles, trans, center):
    return carm_to_matrix(torch.tensor(angles, dtype=D), torch.tensor(trans, dtype=D), center)


def _rays_ct(pose, det):
    src, pix = detector_points(det, dtype=D)
    t_ct_cam = invert_transform(pose)
    return apply_transform(t_ct_cam, src[None])[0], apply_transform(t_ct_cam, pix.reshape(-1, 3))


def _box_chord_mm(src, tgt, lo, hi):
    d = tgt - src
    a0, a1 = (lo - src) / d, (hi - src) / d
    amin = torch.minimum(a0, a1).amax(-1).clamp_min(0)
    amax = torch.maximum(a0, a1).amin(-1).clamp_max(1)
    return (amax - amin).clamp_min(0) * d.norm(dim=-1)


def _sphere_chord_mm(src, tgt, center, radius):
    u = torch.nn.functional.normalize(tgt - src, dim=-1)
    w = center - src
    dist2 = (w * w).sum(-1) - (w * u).sum(-1) ** 2
    return 2 * torch.sqrt((radius**2 - dist2).clamp_min(0))


DET = Detector(24, 20, spacing_mm=(2.5, 3.0), sdd_mm=1000.0, sid_mm=600.0, principal_point_mm=(1.5, -2.0))


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
@pytest.mark.parametrize("angles,trans", POSES)
def test_box_line_integrals_equal_chord_lengths(angles, trans, method):
    # Faces on voxel boundaries (grid centred at 0, spacing 2 mm): Siddon is exact there.
    lo, hi = torch.tensor([-10.0, -6.0, -8.0], dtype=D), torch.tensor([8.0, 10.0, 4.0], dtype=D)
    vol = box_phantom(lo.tolist(), hi.tolist(), value=1.0, shape=(20, 20, 16), spacing=2.0, dtype=D)
    pose = _pose(angles, trans, vol.center)
    drr = render(vol, pose, DET, method=method, n_samples=400)
    src, tgt = _rays_ct(pose, DET)
    expected = _box_chord_mm(src, tgt, lo, hi).reshape(DET.shape)
    assert expected.max() > 10 and (expected == 0).any()
    if method == "siddon":
        torch.testing.assert_close(drr, expected, atol=1e-6, rtol=0)
    else:  # trilinear blurs the faces by one voxel: compare away from them
        interior = (drr - expected).abs()[expected > 4.0]
        assert interior.median() < 0.5


@pytest.mark.parametrize("angles,trans", POSES[:3])
def test_sphere_line_integrals_close_to_chords(angles, trans):
    center, radius = torch.tensor([3.0, -2.0, 1.0], dtype=D), 18.0
    vol = sphere_phantom(radius, center.tolist(), value=1.0, shape=64, spacing=0.75, dtype=D)
    pose = _pose(angles, trans, vol.center)
    drr = render(vol, pose, DET)
    src, tgt = _rays_ct(pose, DET)
    expected = _sphere_chord_mm(src, tgt, center, radius).reshape(DET.shape)
    assert expected.max() > 30
    err = (drr - expected).abs()
    # Voxelisation at 0.75 mm: small on average; near the rim chords are steep in the
    # distance to the centre, so the bound on single rays is taken away from the rim.
    assert err.mean() < 0.35
    assert err[expected > 0.6 * 2 * radius].max() < 1.5


def _random_volume(seed=0, shape=(12, 10, 9), spacing=(3.0, 2.5, 4.0)):
    g = torch.Generator().manual_seed(seed)
    return Volume.from_array(torch.rand(*shape, generator=g, dtype=D), spacing, kind="raw")


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_patchwise_equals_whole_image_with_gradients(backend, method):
    vol = _random_volume()
    det = Detector(17, 13, spacing_mm=(3.0, 3.0), sdd_mm=800.0)
    angles = torch.tensor([0.2, 0.4, -0.1], dtype=D, requires_grad=True)
    trans = torch.tensor([1.0, 2.0, -1.0], dtype=D, requires_grad=True)
    out = {}
    for name, kw in (("whole", {}), ("patch", {"patch_size": (5, 4)}), ("budget", {"memory_budget_mb": 0.01})):
        angles.grad = trans.grad = None
        img = render(vol, carm_to_matrix(angles, trans, vol.center), det, method=method, backend=backend,
                     n_samples=50, **kw)
        (img * torch.linspace(0, 1, img.numel(), dtype=D).reshape(img.shape)).sum().backward()
        out[name] = (img.detach(), angles.grad.clone(), trans.grad.clone())
    for name in ("patch", "budget"):
        for a, b in zip(out[name], out["whole"], strict=True):
            torch.testing.assert_close(a, b)


def test_budget_tiling_actually_splits():
    tiles = plan_patches(1500, 1500, 100_000)
    assert len(tiles) > 1 and all((r.stop - r.start) * (c.stop - c.start) <= 100_000 for r, c in tiles)
    covered = sum((r.stop - r.start) * (c.stop - c.start) for r, c in tiles)
    assert covered == 1500 * 1500
    assert len(plan_patches(10, 10, 7)) == 25  # a row exceeds the budget: square 2x2 tiles


def test_batch_equals_loop_and_backends_agree():
    vol = _random_volume(seed=1)
    det = Detector(9, 11, spacing_mm=(4.0, 4.0), sdd_mm=900.0)
    g = torch.Generator().manual_seed(2)
    angles = (torch.rand(3, 3, generator=g, dtype=D) - 0.5)
    trans = torch.randn(3, 3, generator=g, dtype=D) * 5
    poses = carm_to_matrix(angles, trans, vol.center)
    for method in ("siddon", "trilinear"):
        batch = render(vol, poses, det, method=method, n_samples=60)
        loop = torch.stack([render(vol, p, det, method=method, n_samples=60) for p in poses])
        torch.testing.assert_close(batch, loop)
        ref = render(vol, poses, det, method=method, backend="torch", n_samples=60)
        torch.testing.assert_close(batch, ref, atol=1e-9, rtol=1e-9)


def _smooth_volume():
    axes = [torch.arange(n, dtype=D) for n in (16, 14, 12)]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    data = torch.exp(-((x - 8) ** 2 / 20 + (y - 6) ** 2 / 12 + (z - 5) ** 2 / 9)) + 0.3 * (x > 10) * (z < 4)
    return Volume.from_array(data, (2.0, 2.0, 2.5), kind="raw")


@pytest.mark.parametrize("method", ["siddon", "trilinear"])
def test_pose_gradients_match_finite_differences(method):
    vol = _smooth_volume()
    det = Detector(12, 10, spacing_mm=(4.0, 4.0), sdd_mm=900.0)
    params = torch.tensor([0.1, -0.3, 0.2, 2.0, -1.0, 3.0], dtype=D, requires_grad=True)
    weights = torch.linspace(-1, 1, 120, dtype=D).reshape(12, 10) ** 2

    def loss(p):
        pose = carm_to_matrix(p[:3], p[3:], vol.center)
        return (render(vol, pose, det, method=method, n_samples=80) * weights).sum()

    loss(params).backward()
    for i in range(6):
        # Both integrals are piecewise smooth in the pose (kinks where a ray or a sample
        # crosses a voxel edge or centre): a small step keeps the difference on one piece.
        h = 1e-7 if i < 3 else 1e-6
        e = torch.zeros(6, dtype=D)
        e[i] = h
        with torch.no_grad():
            fd = (loss(params + e) - loss(params - e)) / (2 * h)
        assert math.isclose(params.grad[i].item(), fd.item(), rel_tol=1e-4, abs_tol=1e-5), (i, params.grad[i], fd)


def test_intrinsic_gradients_match_finite_differences():
    vol = _smooth_volume()
    pose = carm_to_matrix(torch.tensor([0.1, 0.2, 0.0], dtype=D), torch.zeros(3, dtype=D), vol.center)
    sdd = torch.tensor(900.0, dtype=D, requires_grad=True)
    dx = torch.tensor(4.0, dtype=D, requires_grad=True)

    def loss(s, x):
        det = Detector(12, 10, spacing_mm=(4.0, x), sdd_mm=s, sid_mm=500.0)
        return render(vol, pose, det).pow(2).sum()

    loss(sdd, dx).backward()
    with torch.no_grad():
        fd_sdd = (loss(sdd + 1e-3, dx) - loss(sdd - 1e-3, dx)) / 2e-3
        fd_dx = (loss(sdd, dx + 1e-5) - loss(sdd, dx - 1e-5)) / 2e-5
    assert math.isclose(sdd.grad.item(), fd_sdd.item(), rel_tol=1e-3)
    assert math.isclose(dx.grad.item(), fd_dx.item(), rel_tol=1e-3)


def test_intensity_and_settings_validation():
    torch.testing.assert_close(to_intensity(torch.zeros(2)), torch.ones(2))
    with pytest.raises(ValueError):
        RenderSettings(method="nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (checked on the lent GPU only)")
@pytest.mark.parametrize("method", ["siddon", "trilinear"])
@pytest.mark.parametrize("backend", ["auto", "cuda", "torch"])
def test_cpu_equals_cuda(method, backend):
    """Images and pose gradients on the GPU equal the CPU's (CUDA kernels and torch references)."""
    from diffdrr_ros.core.drr import cuda as cuda_kernels

    if backend == "cuda" and not cuda_kernels.available():
        pytest.skip("numba's CUDA target is not installed (requirements/gpu.txt)")
    vol = _random_volume(seed=4)
    det = Detector(16, 16, spacing_mm=(3.0, 3.0), sdd_mm=900.0)
    weights = torch.linspace(-1, 1, 256, dtype=D).reshape(16, 16)
    out = {}
    for device, be in (("cpu", "auto"), ("cuda", backend)):
        pose = carm_to_matrix(torch.tensor([0.2, 0.1, 0.0], dtype=D), torch.zeros(3, dtype=D), vol.center)
        pose = pose.to(device).requires_grad_()
        img = render(vol.to(device), pose, det, RenderSettings(method=method, backend=be, n_samples=24))
        (img[0] * weights.to(device)).sum().backward()
        out[device] = (img.detach().cpu(), pose.grad.cpu())
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], atol=1e-6, rtol=1e-5)


def test_blur_setting_is_a_normalised_gaussian_psf():
    from diffdrr_ros.core.drr import gaussian_blur

    vol = _random_volume(seed=5)
    det = Detector(15, 15, spacing_mm=(4.0, 4.0), sdd_mm=900.0)
    pose = carm_to_matrix(torch.zeros(3, dtype=D), torch.zeros(3, dtype=D), vol.center)
    vol = Volume(vol.data * 0.02, vol.affine, "mu")  # attenuation-like values: optical depths of order 1
    sharp = render(vol, pose, det)
    blurred = render(vol, pose, det, blur_sigma_px=1.0)
    assert not torch.allclose(sharp, blurred)
    # The PSF acts on the transmitted intensity: photons are kept (up to the borders).
    torch.testing.assert_close(torch.exp(-blurred).sum(), torch.exp(-sharp).sum(), rtol=0.02, atol=0)
    torch.testing.assert_close(blurred, -torch.log(gaussian_blur(torch.exp(-sharp)[None], 1.0)[0]))
    impulse = torch.zeros(1, 9, 9, dtype=D)
    impulse[0, 4, 4] = 1.0
    psf = gaussian_blur(impulse, 1.0)[0]
    torch.testing.assert_close(psf.sum(), torch.tensor(1.0, dtype=D))
    assert psf[4, 4] == psf.max() and torch.allclose(psf, psf.T) and torch.allclose(psf, psf.flip(0))
    with pytest.raises(ValueError):
        RenderSettings(blur_sigma_px=-1.0)


@pytest.mark.parametrize("sigma", [0.3, 0.6, 2.09, 2.5, 4.0])
def test_the_sliced_blur_is_the_convolution(sigma):
    from diffdrr_ros.core.drr.render import SLICED_BLUR_MAX_HALF_WIDTH, gaussian_blur, gaussian_blur_reference

    x = torch.rand(3, 37, 41, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_blur(x, sigma), gaussian_blur_reference(x, sigma), rtol=0, atol=1e-14)
    assert math.ceil(3 * 2.5) <= SLICED_BLUR_MAX_HALF_WIDTH < math.ceil(3 * 4.0)  # both paths are exercised
