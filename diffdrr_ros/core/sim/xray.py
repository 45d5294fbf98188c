"""Simulated X-ray frames from DRR line integrals (the C-arm's motion is in :mod:`.trajectory`).

Frames look like fluoroscopy, not like a clean DRR: Beer-Lambert intensities
``I0 * exp(-line integral)`` with Poisson (quantum) and Gaussian (electronic) noise, a
detector blur, a circular collimator (no exposure outside it), optional inversion, and a
12- or 16-bit range. Optionally (off by default; :meth:`XRayStyle.mismatched`) the physics
a DRR does not model, so that registration is not tested only on its own forward model
(the "inverse crime"): beam hardening (a polyenergetic beam sees less attenuation through
thick paths), scatter (a smooth background added to the primary) and the heel effect (a
gain gradient across the detector).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..drr.render import gaussian_blur


@dataclass(frozen=True)
class XRayStyle:
    """How a DRR becomes a detector frame. Intensities in detector counts.

    ``photons`` quanta reach an unattenuated pixel (binned fluoroscopy pixels of a few mm
    collect 1e4 to 1e5 per frame); the detector maps them to ``i0`` counts.
    """

    i0: float = 3000.0  # counts of an unattenuated pixel
    photons: float = 20000.0  # X-ray quanta reaching an unattenuated pixel (sets the quantum noise)
    gaussian_noise: float = 4.0  # electronic noise, counts (std)
    poisson: bool = True  # quantum noise
    blur_sigma_px: float = 0.6
    collimator_radius: float = 0.47  # fraction of the detector's smaller side; 0 disables
    bits: int = 12  # 12 or 16
    invert: bool = False  # bone dark -> bone bright
    # Physics the DRR does not model (0: off).
    beam_hardening: float = 0.0  # effective line integral L / (1 + b L): b per unit of L
    scatter_to_primary: float = 0.0  # scatter / primary at the mean primary level
    scatter_sigma_fraction: float = 0.15  # width of the scatter kernel, fraction of the detector's larger side
    heel_gain: float = 0.0  # peak-to-peak gain change across the detector rows (anode heel effect)

    def __post_init__(self) -> None:
        if self.bits not in (12, 16):
            raise ValueError("bits must be 12 or 16")
        if min(self.beam_hardening, self.scatter_to_primary, self.heel_gain) < 0:
            raise ValueError("beam_hardening, scatter_to_primary and heel_gain must be >= 0")
        if not 0 < self.scatter_sigma_fraction <= 1:
            raise ValueError("scatter_sigma_fraction must lie in (0, 1]")

    @classmethod
    def mismatched(cls, **overrides) -> XRayStyle:
        """A frame with the physics a DRR leaves out, at plausible strengths for a head: beam
        hardening 0.05 (a line integral of 6 is seen as 4.6), scatter-to-primary 0.3, a 10 %
        heel-effect gain gradient."""
        return cls(**{"beam_hardening": 0.05, "scatter_to_primary": 0.3, "heel_gain": 0.1, **overrides})


def collimator_mask(height: int, width: int, radius_fraction: float) -> np.ndarray:
    """Boolean ``(H, W)``: True inside the circular collimator (all True when disabled)."""
    if radius_fraction <= 0:
        return np.ones((height, width), dtype=bool)
    y, x = np.mgrid[:height, :width]
    r = radius_fraction * min(height, width)
    return (x - (width - 1) / 2) ** 2 + (y - (height - 1) / 2) ** 2 <= r * r


def simulate_xray(
    line_integral: Float[Tensor, "H W"], style: XRayStyle = XRayStyle(), generator: torch.Generator | None = None
) -> np.ndarray:
    """An X-ray-like ``uint16`` frame from a line-integral image (attenuation x mm)."""
    line = line_integral.detach().to(torch.float64).cpu()
    if style.beam_hardening > 0:
        line = line / (1 + style.beam_hardening * line)
    img = torch.exp(-line)  # transmitted fraction (primary)
    if style.scatter_to_primary > 0:  # a smooth background following the primary
        img = img + style.scatter_to_primary * _smooth(img, style.scatter_sigma_fraction * max(img.shape))
    if style.heel_gain > 0:
        rows = torch.linspace(-0.5, 0.5, img.shape[0], dtype=img.dtype)[:, None]
        img = img * (1 + style.heel_gain * rows)
    if style.blur_sigma_px > 0:  # the same PSF model the registration can apply to its DRRs
        img = gaussian_blur(img[None], style.blur_sigma_px)[0]
    if style.poisson:  # count quanta, then scale to detector counts
        img = torch.poisson(img * style.photons, generator=generator) / style.photons
    img = img * style.i0
    if style.gaussian_noise > 0:
        img = img + style.gaussian_noise * torch.randn(img.shape, generator=generator, dtype=torch.float64)
    top = 2**style.bits - 1
    mask = torch.from_numpy(collimator_mask(*img.shape, style.collimator_radius))
    img = torch.where(mask, img, torch.zeros_like(img))
    img = img.clamp(0, top)
    if style.invert:
        img = torch.where(mask, top - img, img)
    return img.round().numpy().astype(np.uint16)


def _smooth(img: Tensor, sigma_px: float) -> Tensor:
    """Wide Gaussian smoothing (replicate border) through a downsampled copy: cheap at any sigma."""
    factor = max(1, int(sigma_px // 4))
    small = torch.nn.functional.avg_pool2d(img[None, None], factor, ceil_mode=True)[0] if factor > 1 else img[None]
    small = gaussian_blur(small, sigma_px / factor)
    return torch.nn.functional.interpolate(small[None], size=img.shape, mode="bilinear", align_corners=False)[0, 0]
