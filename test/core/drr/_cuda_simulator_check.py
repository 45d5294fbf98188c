"""Run by test_cuda.py in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1.

Exits non-zero (with a message) when a CUDA kernel, run by numba's CUDA simulator, differs
from the CPU kernel on the same rays. The simulator must be switched on before numba.cuda
is first imported, hence a separate process.
"""

import functools
import os
import sys

import numpy as np
import torch

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"


from diffdrr_ros.core.drr import cuda as cuda_kernels  # noqa: E402
from diffdrr_ros.core.drr import raymarch, siddon  # noqa: E402
from diffdrr_ros.core.drr.cpu import raymarch_rays_cpu, siddon_rays_cpu  # noqa: E402

siddon_numba = functools.partial(siddon, backend="numba")
raymarch_numba = functools.partial(raymarch, backend="numba")


def rays(shape, n, seed):
    """Random rays through and around the box, plus axis-parallel, grazing and inside rays."""
    g = np.random.default_rng(seed)
    size = np.array(shape, dtype=float)
    src = g.uniform(-0.5, 1.5, (n, 3)) * size
    tgt = g.uniform(-0.5, 1.5, (n, 3)) * size
    extra_s, extra_t = [], []
    for a in range(3):  # parallel to two axes, on voxel planes and between them
        for off in (0.0, 1.0, 2.5, size[(a + 1) % 3]):
            s = size / 2
            s = s.copy()
            s[(a + 1) % 3] = off
            t = s.copy()
            s[a], t[a] = -3.0, size[a] + 3.0
            extra_s.append(s)
            extra_t.append(t)
    extra_s.append(size * 0.3)  # both ends inside
    extra_t.append(size * 0.6)
    extra_s.append(np.array([0.0, 0.0, -2.0]))  # along an edge
    extra_t.append(np.array([0.0, 0.0, size[2] + 2.0]))
    return np.vstack([src, extra_s]), np.vstack([tgt, extra_t])


def check(name, got, want, tol=1e-12):
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want)))) if np.size(want) else 0.0
    print(f"{name}: max |CUDA - CPU| = {err:.3g}")
    if not err <= tol:
        sys.exit(f"{name}: CUDA kernel differs from the CPU kernel by {err}")


def main():
    assert cuda_kernels.available() and cuda_kernels.simulating()
    shape = (7, 9, 5)
    vol = torch.from_numpy(np.random.default_rng(0).random(shape).astype(np.float32))
    src, tgt = rays(shape, 48, seed=1)
    n = src.shape[0]
    st, tt = torch.from_numpy(src), torch.from_numpy(tgt)
    v = vol.numpy()
    for want_jac in (False, True):
        out = np.empty(n)
        jac = np.zeros((n, 6))
        siddon_rays_cpu(v, src, tgt, out, jac, want_jac)
        s_gpu, j_gpu = cuda_kernels.trace_rays("siddon", vol, st, tt, want_jac)
        check(f"siddon value (jac={want_jac})", s_gpu.numpy(), out)
        if want_jac:
            check("siddon jacobian", j_gpu.numpy(), jac)
        for n_fixed, step in ((6, 0.0), (0, 0.7)):
            out = np.empty(n)
            jac = np.zeros((n, 6))
            raymarch_rays_cpu(v, src, tgt, n_fixed, step, out, jac, want_jac)
            r_gpu, rj_gpu = cuda_kernels.trace_rays("trilinear", vol, st, tt, want_jac, n_fixed, step)
            check(f"trilinear value (n={n_fixed}, step={step}, jac={want_jac})", r_gpu.numpy(), out, 1e-10)
            if want_jac:
                check(f"trilinear jacobian (n={n_fixed}, step={step})", rj_gpu.numpy(), jac, 1e-10)
    # Through the dispatchers and autograd, as render() uses them.
    w = torch.linspace(-1, 2, n, dtype=torch.float64)
    for label, gpu_fn, cpu_fn in (
        ("siddon autograd", lambda s, t: siddon(vol, s, t, backend="cuda"),
         lambda s, t: siddon_numba(vol, s, t, reorder=False)),
        ("trilinear autograd", lambda s, t: raymarch(vol, s, t, None, backend="cuda", step_voxels=0.5),
         lambda s, t: raymarch_numba(vol, s, t, None, reorder=False, step_voxels=0.5)),
    ):
        grads = []
        for fn in (gpu_fn, cpu_fn):
            s, t = st.clone().requires_grad_(), tt.clone().requires_grad_()
            (fn(s, t) * w).sum().backward()
            grads.append(torch.cat([s.grad, t.grad], 1).numpy())
        check(label, grads[0], grads[1], 1e-10)
    # The per-pixel pose Jacobian of Levenberg-Marquardt: the torch chain around the CUDA kernel
    # (the GPU path of render_with_pose_jacobian) against the fused CPU path.
    from diffdrr_ros.core.drr import RenderSettings
    from diffdrr_ros.core.drr.jacobian import _with_blur, pose_jacobian_on_rays, render_with_pose_jacobian
    from diffdrr_ros.core.geometry import Detector, carm_to_matrix
    from diffdrr_ros.core.volume import make_phantom

    phantom = make_phantom("head_tiny").to_attenuation()
    det = Detector(10, 12, spacing_mm=(24.0, 24.0), sdd_mm=1020.0, sid_mm=750.0)
    pose = carm_to_matrix(torch.tensor([0.1, 0.4, -0.05], dtype=torch.float64),
                          torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64), phantom.center)[None]
    pivot = (pose[0, :3, :3] @ phantom.center.to(torch.float64) + pose[0, :3, 3])[None]
    for settings in (RenderSettings(method="siddon", blur_sigma_px=0.8), RenderSettings(method="trilinear",
                                                                                          n_samples=40)):
        want = render_with_pose_jacobian(phantom, pose, det, pivot, settings)  # the CPU tensors: the fused path
        got = _with_blur(*pose_jacobian_on_rays(phantom, pose, det, pivot, settings, True,
                                                tracer=cuda_kernels.trace_rays), settings.blur_sigma_px)
        check(f"{settings.method} pose jacobian image", got[0].numpy(), want[0].numpy(), 1e-9)
        check(f"{settings.method} pose jacobian", got[1].numpy(), want[1].numpy(), 1e-7 * float(want[1].abs().max()))
    print("CUDA kernels equal the CPU kernels")


if __name__ == "__main__":
    main()
