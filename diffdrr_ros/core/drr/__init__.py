"""The differentiable DRR: :func:`render` (poses + detector + CT -> line integrals), patch-wise, any device.

* :mod:`.render` - the one entry point; :mod:`.rays` - the camera -> CT -> grid frame chain;
* :mod:`.backends` - the one backend choice and :func:`trace_rays`;
* :mod:`.reference` - readable plain-torch Siddon and trilinear references;
* :mod:`.per_ray` - the per-ray kernel source, compiled for the CPU (:mod:`.cpu`, fused with
  the pose in :mod:`.fused`) and for CUDA (:mod:`.cuda`); :mod:`.autograd` - their analytic
  end-point Jacobian as the backward pass;
* :mod:`.poly` - the polychromatic DRR of a material volume (``RenderSettings.poly``), two
  channels in one CPU walk (:func:`.per_ray.siddon_walk` is generic over channels; :mod:`.fused_pair`).
"""

from .backends import BACKENDS, METHODS, default_device, raymarch, resolve_backend, resolve_device, siddon, trace_rays
from .rays import grid_from_cam, grid_from_ct_transform, rays_in_grid
from .reference import box_clip, raymarch_torch, sample_counts, siddon_torch
from .render import RenderSettings, VolumeLike, gaussian_blur, plan_patches, render, to_intensity

__all__ = [
    "BACKENDS",
    "METHODS",
    "RenderSettings",
    "VolumeLike",
    "box_clip",
    "default_device",
    "gaussian_blur",
    "grid_from_cam",
    "grid_from_ct_transform",
    "plan_patches",
    "raymarch",
    "raymarch_torch",
    "rays_in_grid",
    "render",
    "resolve_backend",
    "resolve_device",
    "sample_counts",
    "siddon",
    "siddon_torch",
    "to_intensity",
    "trace_rays",
]
