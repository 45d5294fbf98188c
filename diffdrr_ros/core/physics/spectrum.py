"""The X-ray tube's spectrum: a filtered tungsten bremsstrahlung spectrum in a few energy bins.

Kramers' law (H. A. Kramers, Phil. Mag. 46, 836, 1923): photons per keV ``N(E) ~ (kVp - E) / E``,
filtered by ``filtration_mm_al`` mm of aluminium (2.699 g/cm^3): ``N(E) exp(-mu_Al(E) rho_Al t)``.
The range ``[min_kev, kVp]`` is cut into ``bins`` equal bins; each bin's weight is its integrated
filtered fluence and its energy the fluence-weighted mean energy in it (midpoint quadrature,
steps of at most 0.25 keV). Characteristic tungsten K lines (58-69 keV) and the anode's
self-filtration are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .attenuation import AL_DENSITY, E_MAX_KEV, E_MIN_KEV, mass_attenuation

__all__ = ["DEFAULT_SPECTRUM", "Spectrum"]

_QUADRATURE_STEP_KEV = 0.25  # midpoint-rule step within a bin (at least 8 points per bin)


@dataclass(frozen=True)
class Spectrum:
    """A filtered tungsten-tube spectrum in ``bins`` energy bins (Kramers' law; module docstring).

    ``kvp`` (peak kilovoltage, keV) must lie in ``(min_kev, 150]``; ``min_kev >= 10`` (the table's
    lower end; a 2.5 mm Al filter transmits about 2e-8 at 10 keV anyway). ``bins=1`` is a
    monochromatic beam at the spectrum's mean energy (exact Beer-Lambert).
    """

    kvp: float = 80.0
    filtration_mm_al: float = 2.5
    bins: int = 6
    min_kev: float = E_MIN_KEV

    def __post_init__(self) -> None:
        if int(self.bins) != self.bins or self.bins < 1:
            raise ValueError(f"bins must be a positive integer, got {self.bins}")
        if not E_MIN_KEV <= self.min_kev < self.kvp <= E_MAX_KEV:
            raise ValueError(f"need {E_MIN_KEV} <= min_kev < kvp <= {E_MAX_KEV} keV, got {self.min_kev}, {self.kvp}")
        if not (self.filtration_mm_al >= 0 and math.isfinite(self.filtration_mm_al)):
            raise ValueError(f"filtration_mm_al must be finite and >= 0, got {self.filtration_mm_al}")

    def fluence(self, energy_kev: Tensor) -> Tensor:
        """Filtered photon fluence per keV (arbitrary scale) at ``energy_kev`` in [min_kev, kvp]."""
        mu_al = mass_attenuation("aluminium", energy_kev)
        return (self.kvp - energy_kev) / energy_kev * torch.exp(-mu_al * AL_DENSITY * self.filtration_mm_al / 10.0)

    def weights(self) -> tuple[Float[Tensor, " E"], Float[Tensor, " E"]]:
        """``(energies_keV, fluence weights)``, float64 ``(bins,)``; the weights sum to 1.

        Energy of a bin: its fluence-weighted mean energy; weight: its integrated fluence.
        """
        edges = torch.linspace(self.min_kev, self.kvp, self.bins + 1, dtype=torch.float64)
        width = (self.kvp - self.min_kev) / self.bins
        n = max(8, math.ceil(width / _QUADRATURE_STEP_KEV))
        mid = edges[:-1, None] + (torch.arange(n, dtype=torch.float64) + 0.5) / n * width
        phi = self.fluence(mid)
        total = phi.sum(1)
        if not bool(torch.all(total > 0)):
            raise ValueError("the filtration absorbs a whole bin; use less filtration or fewer bins")
        return (phi * mid).sum(1) / total, total / total.sum()

    def mean_energy(self) -> float:
        """Fluence-weighted mean energy (keV)."""
        e, w = self.weights()
        return float((e * w).sum())


#: The default tube: 80 kVp, 2.5 mm Al, 6 bins.
DEFAULT_SPECTRUM = Spectrum()
