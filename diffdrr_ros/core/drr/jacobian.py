"""The DRR and its per-pixel pose Jacobian in one pass (CPU), for Gauss-Newton / Levenberg-Marquardt.

The fused CPU kernels already return, with each ray's line integral ``O = S L``, its gradient
with respect to the ray's end points in grid coordinates (:func:`.fused.trace_fused`). A pose
change is applied in the camera frame about a pivot ``c`` (the CT centre there):
``x' = R(w) (x - c) + c + t``, ``xi = (t, w)`` (mm, rad, camera axes), the parameters of
:mod:`..registration.uncertainty`. A camera point ``q`` (the source, a pixel centre) then maps
to grid coordinates through ``M inv(P(xi))`` with ``inv(P)(q) = R(w)^T (q - c - t) + c``, so at
``xi = 0``

    d q_grid / d t = -M_lin,    d q_grid / d w = M_lin skew(q - c),

and a ray's row of the Jacobian is ``g_s . d s/d xi + g_t . d p/d xi`` with ``g = dO/dq_grid``:
``dO/dt = -(g_s + g_t) M_lin``, ``dO/dw = (g_s M_lin) x (s - c) + (g_t M_lin) x (p - c)``.
No autograd graph, no finite differences: one kernel pass gives the image and its ``H x W x 6``
Jacobian. With a detector blur the Jacobian follows the blur's chain rule (blur of ``-I dL``).

Polychromatic (``settings.poly``, a material volume): the kernel pass (one walk for both
channels on the CPU, :mod:`.fused_pair`; else one pass per channel) gives each material's
mass thickness ``A_m`` and ``dA_m / dxi``, combined by the chain rule of :mod:`.poly`
(``dL_eff = sum_m mu_eff_m dA_m`` without scatter and heel) before the blur.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.detector import Detector, detector_points_np
from ..geometry.rotations import axis_angle_to_matrix, make_transform
from . import cuda
from .fused import trace_fused
from .fused_pair import trace_pair_fused
from .per_ray import sampling_args
from .poly import MM_PER_CM, channel_volumes, effective_line_integral, pair_path
from .rays import grid_from_cam
from .render import RenderSettings, VolumeLike, gaussian_blur


def step_pose(
    pose: Float[Tensor, "4 4"], pivot_cam: Float[Tensor, " 3"], xi: Float[Tensor, "K 6"]
) -> Float[Tensor, "K 4 4"]:
    """``K`` poses ``P(xi) @ pose``: translate by ``xi[:, :3]`` (mm, camera axes), rotate by ``xi[:, 3:]``
    (rad) about the pivot (camera frame)."""
    rot = axis_angle_to_matrix(xi[:, 3:])  # K 3 3
    r = rot @ pose[:3, :3]
    t = (rot @ (pose[:3, 3] - pivot_cam)[:, None])[..., 0] + pivot_cam + xi[:, :3]
    return make_transform(r, t)


def render_with_pose_jacobian(
    volume: VolumeLike,
    pose: Float[Tensor, "B 4 4"],
    detector: Detector,
    pivot_cam: Float[Tensor, "B 3"],
    settings: RenderSettings | None = None,
    want_jacobian: bool = True,
) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W 6"] | None]:
    """DRRs at ``pose`` (``T_cam_ct``) and ``d DRR / d xi`` for ``x' = R(w)(x - c) + c + t`` about ``pivot_cam``.

    On the volume's device: the fused numba kernels on the CPU, the numba-cuda kernels on a
    GPU (:func:`pose_jacobian_on_rays`; ``requirements/gpu.txt``); the whole detector in one
    tile (tracking sizes). ``settings``: method, sampling and the detector blur as for
    :func:`.render.render`. ``want_jacobian=False``: the same DRRs alone (None for the
    Jacobian), from the same kernel (a trial step of Levenberg-Marquardt needs only its loss).
    Returned on the volume's device, float64. With ``settings.poly`` and a material volume: the
    effective line integral ``-log I`` and its Jacobian (module docstring).
    """
    settings = settings or RenderSettings()
    if settings.poly is not None or volume.data.ndim == 4:
        channels = channel_volumes(volume, settings.poly)
        if volume.data.device.type == "cpu" and pair_path(volume, settings, detector):  # both in one walk
            a, da = _fused_cpu_pair(volume, pose, detector, pivot_cam, settings, want_jacobian)
        else:  # one pass per material (the reference of the pair path)
            parts = [_kernel_pass(ch, pose, detector, pivot_cam, settings, want_jacobian) for ch in channels]
            a = torch.stack([p[0] for p in parts], 1)
            da = torch.stack([p[1] for p in parts], 1) if want_jacobian else None
        a = a / MM_PER_CM  # B C H W, g/cm^2
        if da is not None:  # B C H W 6, g/cm^2 per mm or rad, in place (the kernels' own fresh arrays)
            if da.device.type == "cpu":
                np.divide(da.numpy(), MM_PER_CM, out=da.numpy())  # NumPy: no wait for PyTorch's threads
            else:
                da = da.div_(MM_PER_CM)
        image, jac = effective_line_integral(settings.poly, a, da)
        return _with_blur(image, jac, settings.blur_sigma_px)
    image, jac = _kernel_pass(volume, pose, detector, pivot_cam, settings, want_jacobian)
    return _with_blur(image, jac, settings.blur_sigma_px)


def _kernel_pass(volume: VolumeLike, pose: Tensor, detector: Detector, pivot_cam: Tensor, settings: RenderSettings,
                 want_jacobian: bool) -> tuple[Tensor, Tensor | None]:
    """One volume's line integrals and their pose Jacobian, no blur, from the kernels of its device."""
    device = volume.data.device
    if device.type == "cpu":
        image, jac = _fused_cpu(volume, pose, detector, pivot_cam, settings, want_jacobian)
    elif cuda.ready(device):
        image, jac = pose_jacobian_on_rays(volume, pose, detector, pivot_cam, settings, want_jacobian,
                                           tracer=cuda.trace_rays)
    else:
        raise ValueError(f"the pose Jacobian on {device} needs the CUDA kernels (numba-cuda, requirements/gpu.txt)")
    return image, jac


def _fused_cpu(volume: VolumeLike, pose: Tensor, detector: Detector, pivot_cam: Tensor, settings: RenderSettings,
               want_jacobian: bool) -> tuple[Tensor, Tensor | None]:
    """The CPU path: rays, kernel and the chain to the pose step in numba / NumPy (no torch fork-joins)."""
    pose = pose.to(torch.float64).cpu()
    m = np.ascontiguousarray(grid_from_cam(volume.affine, pose).numpy())  # B 4 4: camera -> grid
    a_ct_grid = np.ascontiguousarray(volume.affine[:3, :3].to(torch.float64).numpy())
    source, pixels = detector_points_np(detector)
    values, jac = trace_fused(volume.data, m, a_ct_grid, source, pixels, settings.method, settings.n_samples,
                              settings.step_voxels, settings.reorder, want_jacobian)
    h, w = detector.shape
    image = torch.from_numpy(values).reshape(m.shape[0], h, w)
    if not want_jacobian:
        return image, None
    return image, _chain_to_step(jac, m, source, pixels, pivot_cam, h, w)


def _fused_cpu_pair(volume: VolumeLike, pose: Tensor, detector: Detector, pivot_cam: Tensor, settings: RenderSettings,
                    want_jacobian: bool) -> tuple[Tensor, Tensor | None]:
    """:func:`_fused_cpu` for a two-channel material volume in one walk (:mod:`.fused_pair`):
    ``(B, 2, H, W)`` line integrals and ``(B, 2, H, W, 6)`` Jacobians (strided views, no copies)."""
    pose = pose.to(torch.float64).cpu()
    m = np.ascontiguousarray(grid_from_cam(volume.affine, pose).numpy())
    a_ct_grid = np.ascontiguousarray(volume.affine[:3, :3].to(torch.float64).numpy())
    source, pixels = detector_points_np(detector)
    values, jac = trace_pair_fused(volume.data, m, a_ct_grid, source, pixels, settings.reorder, want_jacobian)
    b, (h, w) = m.shape[0], detector.shape
    image = torch.from_numpy(values.reshape(b, h, w, 2)).permute(0, 3, 1, 2)
    if not want_jacobian:
        return image, None
    return image, _chain_to_step(jac, m, source, pixels, pivot_cam, h, w).permute(1, 0, 2, 3, 4)


def _chain_to_step(jac: np.ndarray, m: np.ndarray, source: np.ndarray, pixels: np.ndarray, pivot_cam: Tensor,
                   h: int, w: int) -> Tensor:
    """``dO/d(src, tgt)`` in grid coordinates (``[C x] B P x 6``) -> ``dO/dxi`` (``[C x] B x H x W x 6``),
    module docstring; a leading channel axis is chained alike."""
    b, n_pix = m.shape[0], pixels.shape[0]
    lead = jac.shape[:-2] if jac.ndim == 3 else ()
    jac = jac.reshape(*lead, b, n_pix, 6)
    m_lin = m[:, :3, :3]  # B 3 3
    g_s = jac[..., :3] @ m_lin  # dO/d source (camera), [C] B P 3 (matmul: BLAS, 10x einsum here)
    g_t = jac[..., 3:] @ m_lin  # dO/d pixel (camera)
    c = pivot_cam.to(torch.float64).cpu().numpy().reshape(b, 1, 3)
    out = np.empty((*lead, b, n_pix, 6))
    out[..., :3] = -(g_s + g_t)
    out[..., 3:] = np.cross(g_s, source[None, None, :] - c) + np.cross(g_t, pixels[None] - c)
    return torch.from_numpy(out).reshape(*lead, b, h, w, 6)


def pose_jacobian_on_rays(
    volume: VolumeLike,
    pose: Float[Tensor, "B 4 4"],
    detector: Detector,
    pivot_cam: Float[Tensor, "B 3"],
    settings: RenderSettings,
    want_jacobian: bool,
    tracer: Callable[..., tuple[Tensor | np.ndarray, Tensor | np.ndarray | None]],
) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W 6"] | None]:
    """The same DRR and Jacobian in plain torch on the volume's device, around any end-point kernel.

    ``tracer(method, data, src, tgt, want_jac, n_fixed, step)`` is :func:`.cuda.trace_rays` (the
    GPU path) or :func:`.cpu.trace_rays` (then this is the readable reference of the fused CPU
    path, tested against it). The chain, written out: ``O = S L`` with ``L = |A (t - s)|``, so
    ``dO/ds = L dS/ds - S dL/dt``, ``dO/dt = L dS/dt + S dL/dt``, ``dL/dt = A^T A (t - s) / L``;
    then to the camera points through ``M_lin`` and to the pose step as in the module docstring.
    No blur (the caller applies it).
    """
    device = volume.data.device
    pose = pose.to(device, torch.float64)
    m = grid_from_cam(volume.affine, pose).to(device)  # B 4 4: camera -> grid
    m_lin, m_t = m[:, :3, :3], m[:, :3, 3]
    a = volume.affine[:3, :3].to(device, torch.float64)  # grid -> CT, linear
    source, pixels = (torch.as_tensor(x, device=device) for x in detector_points_np(detector))
    b, n_pix = m.shape[0], pixels.shape[0]
    src = ((m_lin @ source) + m_t)[:, None, :].expand(b, n_pix, 3)  # B P 3, grid coordinates
    tgt = pixels @ m_lin.transpose(1, 2) + m_t[:, None, :]
    e = (tgt - src) @ a.T  # the ray in CT mm
    length = e.norm(dim=-1)
    n_fixed, step = sampling_args(settings.n_samples, settings.step_voxels)
    s_val, jac_r = tracer(settings.method, volume.data, src.reshape(-1, 3).contiguous(),
                          tgt.reshape(-1, 3).contiguous(), want_jacobian, n_fixed, step)
    s_val = torch.as_tensor(s_val, device=device).reshape(b, n_pix)
    h, w = detector.shape
    image = (s_val * length).reshape(b, h, w)
    if not want_jacobian:
        return image, None
    jac_r = torch.as_tensor(jac_r, device=device).reshape(b, n_pix, 6)
    dl_dt = (e @ a) / length.clamp_min(1e-30)[..., None]  # B P 3
    d_src = length[..., None] * jac_r[..., :3] - s_val[..., None] * dl_dt
    d_tgt = length[..., None] * jac_r[..., 3:] + s_val[..., None] * dl_dt
    g_s, g_t = d_src @ m_lin, d_tgt @ m_lin  # dO / d camera point
    c = pivot_cam.to(device, torch.float64).reshape(b, 1, 3)
    out = torch.cat([-(g_s + g_t), torch.linalg.cross(g_s, source - c) + torch.linalg.cross(g_t, pixels[None] - c)], -1)
    return image, out.reshape(b, h, w, 6)


def _with_blur(image: Tensor, jacobian: Tensor | None, sigma_px: float) -> tuple[Tensor, Tensor | None]:
    """The detector PSF: ``DRR = -log blur(exp(-L))``, ``dDRR = blur(exp(-L) dL) / blur(exp(-L))``."""
    if sigma_px <= 0:
        return image, jacobian
    i = torch.exp(-image)
    blurred = gaussian_blur(i, sigma_px).clamp_min(1e-30)
    if jacobian is None:
        return -torch.log(blurred), None
    b, h, w = image.shape
    weighted = (i[..., None] * jacobian).permute(0, 3, 1, 2).reshape(b * 6, h, w)
    d_blur = gaussian_blur(weighted, sigma_px).reshape(b, 6, h, w).permute(0, 2, 3, 1)
    return -torch.log(blurred), d_blur / blurred[..., None]


__all__ = ["pose_jacobian_on_rays", "render_with_pose_jacobian", "step_pose"]
