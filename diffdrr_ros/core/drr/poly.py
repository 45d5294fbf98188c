"""The polychromatic DRR: per-material mass thicknesses through the same kernels, one effective line integral.

With ``RenderSettings.poly`` (a :class:`~diffdrr_ros.core.physics.PolyModel`) and a material
volume (:class:`~diffdrr_ros.core.volume.MaterialVolume`: ``C`` density channels, g/cm^3),
:func:`.render.render` renders every channel's line integral with the monochromatic kernels
(g/cm^3 x mm / 10 = mass thickness ``A_m``, g/cm^2), and the detector model turns them into
the detected intensity

    I = G (P + spr * K * P),    P = sum_E q_E exp(-sum_m mu_m(E) A_m)

(``P`` the primary, :func:`~diffdrr_ros.core.physics.primary_transmission`; ``K`` a broad
Gaussian, the scatter estimate, and ``G`` the heel gain down the rows, both off unless
configured), blurred by the detector PSF when ``blur_sigma_px`` is set, and returned as the
effective line integral ``L_eff = -log I``. Every consumer of line integrals (similarities in
either domain, the search, Adam, Levenberg-Marquardt) works on it unchanged.

Two channels with Siddon on the CPU (soft tissue and bone, the default) go through one walk
(:mod:`.fused_pair`, :func:`mass_thicknesses`); the reference, one :func:`.render.render` per
channel (any channel count, method and device), gives the same numbers and is tested against it.

Gradients: autograd through the kernels' pose path (:func:`.render.render`), or, for the
per-pixel pose Jacobian (:func:`.jacobian.render_with_pose_jacobian`), the chain rule
``dP = -P sum_m mu_eff_m dA_m``, then the same linear scatter and gain on ``dP``, and
``dL_eff = -dI / I`` (without scatter and heel: ``dL_eff = sum_m mu_eff_m dA_m``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..geometry.detector import Detector, detector_points_np
from ..geometry.rotations import invert_transform
from ..physics.poly_model import PolyModel, primary_transmission
from .backends import resolve_backend
from .fused_pair import effective_line_integral_cpu, primary_transmission_cpu, render_pair_fused
from .rays import grid_from_ct_transform
from .render import RenderSettings, VolumeLike, _group_rows, _intrinsics, gaussian_blur, plan_patches, render

__all__ = ["channel_volumes", "detected_intensity", "effective_line_integral", "mass_thicknesses", "pair_path",
           "render_poly", "scatter_blur"]

#: Unit conversion: density (g/cm^3) x path (mm) / 10 = mass thickness (g/cm^2).
MM_PER_CM = 10.0


def channel_volumes(volume: VolumeLike, model: PolyModel | None) -> tuple[VolumeLike, ...]:
    """The material volume's channels (3-D volumes), checked against the model's materials."""
    if model is None:
        raise ValueError("a material volume (C, I, J, K) renders with a polychromatic model: set RenderSettings.poly")
    channels = getattr(volume, "channels", None)
    if channels is None or volume.data.ndim != 4:
        raise ValueError("RenderSettings.poly needs a material volume (e.g. MaterialVolume.from_hu(ct)), "
                         f"got data of shape {tuple(volume.data.shape)}")
    materials = tuple(getattr(volume, "materials", ()))
    if materials != model.materials:
        raise ValueError(f"the volume's materials {materials} differ from the model's {model.materials}")
    return tuple(channels)


def pair_path(volume: VolumeLike, settings: RenderSettings, detector: Detector) -> bool:
    """Whether the two channels go through one walk (:mod:`.fused_pair`): two channels, Siddon, the
    numba backend, no intrinsics gradient, no fixed patches. Otherwise one render per channel."""
    if volume.data.shape[0] != 2 or settings.method != "siddon" or settings.patch_size is not None:
        return False
    if resolve_backend(settings.backend, volume.data.device, volume.data.requires_grad) != "numba":
        return False
    return not (torch.is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad
                                                for x in _intrinsics(detector)))


def mass_thicknesses(
    volume: VolumeLike, poses: Float[Tensor, "B 4 4"], detector: Detector, settings: RenderSettings, fast: bool = True
) -> Float[Tensor, "B C H W"]:
    """Each material's mass thickness ``A_m`` (g/cm^2) along every pixel's ray, differentiable w.r.t. the poses.

    ``fast`` (default): both channels in one walk where :func:`pair_path` allows; else, and
    with ``fast=False`` (the reference), :func:`.render.render` of each channel. Dtype of ``poses``.
    """
    return _channel_line_integrals(volume, poses, detector, settings, fast) / MM_PER_CM


def _channel_line_integrals(volume: VolumeLike, poses: Tensor, detector: Detector, settings: RenderSettings,
                            fast: bool = True) -> Tensor:
    """Each channel's line integral (g/cm^3 x mm), ``(B, C, H, W)``: :func:`mass_thicknesses` x 10."""
    channels = channel_volumes(volume, settings.poly)
    if not (fast and pair_path(volume, settings, detector)):
        per_channel = replace(settings, poly=None, blur_sigma_px=0.0)
        return torch.stack([render(ch, poses, detector, per_channel) for ch in channels], 1)
    data = volume.data
    dtype = poses.dtype if poses.dtype in (torch.float32, torch.float64) else torch.float32
    poses = poses.to(device=data.device, dtype=dtype)
    m_grid_cam = grid_from_ct_transform(volume.affine).to(dtype) @ invert_transform(poses)
    a_ct_grid = volume.affine[:3, :3].to(torch.float64).numpy()
    h, w = detector.shape
    b = poses.shape[0]
    per_ray = 2 * 256 * b  # the fused kernels' float64 state, twice
    tiles = plan_patches(h, w, int(settings.memory_budget_mb * 2**20 / per_ray))
    out_rows = []
    for rows in _group_rows(tiles):
        parts = []
        for rs, cs in rows:
            source_np, pixels_np = detector_points_np(detector, rs, cs)
            part = render_pair_fused(data, m_grid_cam, a_ct_grid, source_np, pixels_np, settings.reorder)
            parts.append(part.reshape(b, 2, rs.stop - rs.start, cs.stop - cs.start))
        out_rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, -1))
    return out_rows[0] if len(out_rows) == 1 else torch.cat(out_rows, -2)


def scatter_blur(image: Float[Tensor, "B H W"], sigma_px: float) -> Float[Tensor, "B H W"]:
    """A broad Gaussian (``sigma_px``, replicate borders), linear and differentiable: the scatter kernel.

    Wide kernels are applied to a copy box-averaged by ``floor(sigma / 4)`` and bilinearly
    upsampled (the simulator's approximation, :func:`diffdrr_ros.core.sim.xray.simulate_xray`),
    so the cost does not grow with sigma; up to 8 px it is :func:`.render.gaussian_blur` itself.
    """
    factor = max(1, int(sigma_px // 4))
    if factor == 1:
        return gaussian_blur(image, sigma_px)
    small = F.avg_pool2d(image[:, None], factor, ceil_mode=True)[:, 0]
    small = gaussian_blur(small, sigma_px / factor)
    return F.interpolate(small[:, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _detector_effects(model: PolyModel, x: Tensor, primary: Tensor) -> Tensor:
    """Scatter and heel applied to ``x`` (``(N, H, W)``, the primary or a derivative of it): linear in ``x``."""
    h, w = primary.shape[-2:]
    if model.scatter_to_primary > 0:
        x = x + model.scatter_to_primary * scatter_blur(x, model.scatter_sigma_fraction * max(h, w))
    if model.heel_gain > 0:
        rows = torch.linspace(-0.5, 0.5, h, dtype=x.dtype, device=x.device)[:, None]
        x = x * (1 + model.heel_gain * rows)
    return x


def detected_intensity(
    model: PolyModel,
    mass_thickness: Float[Tensor, "B C H W"],
    d_mass_thickness: Float[Tensor, "B C H W K"] | None = None,
) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W K"] | None]:
    """Detected intensity ``I`` (fraction of an unattenuated ray, float64) of mass thicknesses (g/cm^2),
    and, given their derivatives ``dA`` (``K`` parameters), ``dI`` by the chain rule (module docstring).

    On the CPU the primary is computed in numba (:func:`.fused_pair.primary_transmission_cpu`), elsewhere
    by :func:`~diffdrr_ros.core.physics.primary_transmission` (the reference; the same numbers)."""
    if mass_thickness.device.type == "cpu":
        primary, mu_eff = primary_transmission_cpu(model.mu_rho, model.detector_weights, mass_thickness)
    else:
        primary, mu_eff = primary_transmission(model, mass_thickness, want_mu_eff=d_mass_thickness is not None)
    intensity = _detector_effects(model, primary, primary) if model.has_detector_effects else primary
    if d_mass_thickness is None:
        return intensity, None
    dp = -primary[..., None] * torch.einsum("bchw,bchwk->bhwk", mu_eff, d_mass_thickness.to(torch.float64))
    if model.has_detector_effects:
        b, h, w, k = dp.shape
        flat = dp.permute(0, 3, 1, 2).reshape(b * k, h, w)
        dp = _detector_effects(model, flat, primary).reshape(b, k, h, w).permute(0, 2, 3, 1)
    return intensity, dp


def effective_line_integral(
    model: PolyModel,
    mass_thickness: Float[Tensor, "B C H W"],
    d_mass_thickness: Float[Tensor, "B C H W K"] | None = None,
) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W K"] | None]:
    """``L_eff = -log I`` (float64) of :func:`detected_intensity`, and ``dL_eff = -dI / I`` given ``dA``.

    On the CPU without scatter and heel, ``dL_eff = sum_m mu_eff_m dA_m`` directly, in NumPy (not
    differentiable; the Jacobian path's, whose consumers need no graph)."""
    if mass_thickness.device.type == "cpu" and not model.has_detector_effects and d_mass_thickness is not None:
        t, mu_eff = primary_transmission_cpu(model.mu_rho, model.detector_weights, mass_thickness.detach())
        line = -np.log(np.maximum(t.numpy(), 1e-30))
        d_line = np.einsum("bchw,bchwk->bhwk", mu_eff.numpy(), d_mass_thickness.detach().to(torch.float64).numpy())
        return torch.from_numpy(line), torch.from_numpy(d_line)
    i, di = detected_intensity(model, mass_thickness, d_mass_thickness)
    i = i.clamp_min(1e-30)
    return -torch.log(i), None if di is None else -di / i[..., None]


def render_poly(
    volume: VolumeLike, pose: Float[Tensor, "B 4 4"], detector: Detector, settings: RenderSettings
) -> Float[Tensor, "B H W"]:
    """:func:`.render.render` with ``settings.poly``: the effective line integral ``-log I`` (module docstring).

    ``(B, H, W)`` (``(H, W)`` for a ``(4, 4)`` pose), dtype of ``pose``; differentiable w.r.t. the
    pose (and intrinsics) through each channel's render.
    """
    model = settings.poly
    squeeze = pose.dim() == 2
    o = _channel_line_integrals(volume, pose[None] if squeeze else pose, detector, settings)  # B C H W
    if o.device.type == "cpu" and not model.has_detector_effects and settings.blur_sigma_px <= 0:
        image = effective_line_integral_cpu(model.mu_rho, model.detector_weights, o, 1.0 / MM_PER_CM)
        return image[0] if squeeze else image  # the common case in one graph node (no waits for torch's threads)
    a = o / MM_PER_CM
    intensity, _ = detected_intensity(model, a)
    if settings.blur_sigma_px > 0:  # the detector PSF blurs the detected photons, as in the mono path
        intensity = gaussian_blur(intensity, settings.blur_sigma_px)
    image = (-torch.log(intensity.clamp_min(1e-30))).to(a.dtype)
    return image[0] if squeeze else image
