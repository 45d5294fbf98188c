"""The per-pixel pose Jacobian of the DRR from the kernels' end-point Jacobian: against the autograd
backward pass (another path through the same kernels) for every method, and against finite differences."""

import pytest
import torch

from diffdrr_ros.core.drr import RenderSettings, render
from diffdrr_ros.core.drr.jacobian import render_with_pose_jacobian, step_pose
from diffdrr_ros.core.geometry import Detector, carm_to_matrix
from diffdrr_ros.core.volume import make_phantom

D = torch.float64
DET = Detector(20, 24, spacing_mm=(16.0, 16.0), sdd_mm=1020.0, sid_mm=750.0)
SETTINGS = {
    "siddon": RenderSettings(method="siddon"),
    "trilinear": RenderSettings(method="trilinear", n_samples=40),
    "trilinear_blur": RenderSettings(method="trilinear", n_samples=40, blur_sigma_px=0.8),
    "siddon_blur": RenderSettings(method="siddon", blur_sigma_px=0.8),
}


def _scene():
    vol = make_phantom("head_tiny").to_attenuation()
    pose = carm_to_matrix(torch.tensor([0.1, 0.4, -0.05], dtype=D), torch.tensor([3.0, -2.0, 5.0], dtype=D),
                          vol.center)
    return vol, pose, pose[:3, :3] @ vol.center.to(D) + pose[:3, 3]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_pose_jacobian_equals_the_autograd_gradient(name):
    vol, pose, pivot = _scene()
    settings = SETTINGS[name]
    img, jac = render_with_pose_jacobian(vol, pose[None], DET, pivot[None], settings)
    torch.testing.assert_close(img[0], render(vol, pose, DET, settings).to(D), atol=1e-9, rtol=1e-9)
    alone, none = render_with_pose_jacobian(vol, pose[None], DET, pivot[None], settings, want_jacobian=False)
    assert none is None  # the trial steps' path: the same image without the Jacobian
    torch.testing.assert_close(alone, img, atol=1e-12, rtol=1e-12)
    for seed in range(3):  # three random projections of the H x W x 6 Jacobian
        w = torch.randn(DET.shape, dtype=D, generator=torch.Generator().manual_seed(seed))
        xi = torch.zeros(1, 6, dtype=D, requires_grad=True)
        (w * render(vol, step_pose(pose, pivot, xi), DET, settings)[0]).sum().backward()
        torch.testing.assert_close((w[..., None] * jac[0]).sum((0, 1)), xi.grad[0], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_torch_chain_around_the_kernels_equals_the_fused_cpu_path(name):
    """The readable torch version (the GPU path, here around the CPU kernel) against the fused numba path."""
    from diffdrr_ros.core.drr import cpu
    from diffdrr_ros.core.drr.jacobian import _with_blur, pose_jacobian_on_rays

    vol, pose, pivot = _scene()
    settings = SETTINGS[name]
    want = render_with_pose_jacobian(vol, pose[None], DET, pivot[None], settings)
    for with_jac in (True, False):
        img, jac = _with_blur(*pose_jacobian_on_rays(vol, pose[None], DET, pivot[None], settings, with_jac,
                                                     tracer=cpu.trace_rays), settings.blur_sigma_px)
        torch.testing.assert_close(img, want[0], atol=1e-10, rtol=1e-10)
        if with_jac:
            torch.testing.assert_close(jac, want[1], atol=1e-9, rtol=1e-8)
        else:
            assert jac is None


def test_pose_jacobian_matches_finite_differences():
    vol, pose, pivot = _scene()
    settings = SETTINGS["trilinear_blur"]
    _, jac = render_with_pose_jacobian(vol, pose[None], DET, pivot[None], settings)
    for i, h in enumerate([1e-4] * 3 + [1e-6] * 3):  # small: the sampled ray chord moves in steps
        xi = torch.zeros(2, 6, dtype=D)
        xi[0, i], xi[1, i] = h, -h
        plus, minus = render(vol, step_pose(pose, pivot, xi), DET, settings).to(D)
        fd = (plus - minus) / (2 * h)
        assert float(fd.abs().max()) > 0
        assert float((jac[0, ..., i] - fd).abs().max()) < 2e-3 * float(fd.abs().max()), i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (checked on the lent GPU only)")
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_pose_jacobian_on_cuda_equals_the_cpu_one(name):
    """The LM's GPU path (numba-cuda kernels, the torch chain and blur on the device) against the fused CPU path."""
    from diffdrr_ros.core.drr import cuda as cuda_kernels

    if not cuda_kernels.available():
        pytest.skip("numba-cuda is not installed (requirements/gpu.txt)")
    vol, pose, pivot = _scene()
    settings = SETTINGS[name]
    want = render_with_pose_jacobian(vol, pose[None], DET, pivot[None], settings)
    img, jac = render_with_pose_jacobian(vol.to("cuda"), pose[None].cuda(), DET, pivot[None].cuda(), settings)
    torch.testing.assert_close(img.cpu().to(D), want[0], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(jac.cpu().to(D), want[1], atol=1e-8, rtol=1e-7)
