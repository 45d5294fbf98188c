"""What an energy-integrating detector sees through C materials: the polychromatic signal model.

A ray crossing mass thicknesses ``A_m`` (g/cm^2) of materials ``m`` transmits, of a tube
spectrum binned into energies ``E`` (keV) with fluence weights ``w_E``, the fraction

    T = sum_E q_E exp(-sum_m mu_m(E) A_m),    q_E = w_E E / sum_E' w_E' E'

(an energy-integrating detector: the signal per photon is proportional to its energy; a
photon-counting one has ``q = w``), ``mu_m(E)`` the mass attenuation (cm^2/g) of
:mod:`.attenuation`. Its effective line integral ``-log T`` has the pose derivative
``sum_m mu_eff_m dA_m`` with ``mu_eff_m = sum_E q_E mu_m(E) e_E / sum_E q_E e_E``,
``e_E = exp(-sum_m mu_m(E) A_m)``: the spectrum-weighted attenuation of what reaches the pixel
(beam hardening: it falls as the ray crosses more matter).

:class:`PolyModel` holds the binned spectrum, the materials' coefficients and the optional
detector-side effects the renderer applies to ``T`` (scatter, heel; off by default, parameters
as the simulator's :class:`~diffdrr_ros.core.sim.xray.XRayStyle`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .attenuation import mass_attenuation, material_key
from .spectrum import DEFAULT_SPECTRUM, Spectrum

__all__ = ["PolyModel", "primary_transmission", "primary_transmission_reference"]


@dataclass(frozen=True, eq=False)
class PolyModel:
    """The polychromatic signal model (module docstring) in ``E`` energy bins for ``C`` materials.

    Attributes:
        energies_kev: ``(E,)`` bin energies, keV (float64, CPU).
        detector_weights: ``(E,)`` ``q_E``, summing to 1 (fluence x energy for an
            energy-integrating detector).
        mu_rho: ``(C, E)`` mass attenuation coefficients, cm^2/g, of the materials at the energies.
        materials: the ``C`` materials' names, in the material volume's channel order.
        scatter_to_primary: scatter estimate ``spr * G_sigma * T`` added to the primary ``T``
            (a broad Gaussian of the primary; 0: off), as ``XRayStyle.scatter_to_primary``.
        scatter_sigma_fraction: that Gaussian's standard deviation, fraction of the detector's
            larger side (so the same at every pyramid level).
        heel_gain: peak-to-peak gain change down the detector rows, ``1 + heel * (row / (H - 1) - 0.5)``
            multiplies the detected intensity (anode heel effect; 0: off), as ``XRayStyle.heel_gain``.
    """

    energies_kev: Float[Tensor, " E"]
    detector_weights: Float[Tensor, " E"]
    mu_rho: Float[Tensor, "C E"]
    materials: tuple[str, ...]
    scatter_to_primary: float = 0.0
    scatter_sigma_fraction: float = 0.15
    heel_gain: float = 0.0

    def __post_init__(self) -> None:
        e = torch.as_tensor(self.energies_kev, dtype=torch.float64).cpu().reshape(-1)
        q = torch.as_tensor(self.detector_weights, dtype=torch.float64).cpu().reshape(-1)
        mu = torch.as_tensor(self.mu_rho, dtype=torch.float64).cpu()
        if q.shape != e.shape or mu.ndim != 2 or mu.shape[1] != e.shape[0] or mu.shape[0] != len(self.materials):
            raise ValueError(f"PolyModel: energies {tuple(e.shape)}, weights {tuple(q.shape)}, mu_rho "
                             f"{tuple(mu.shape)} and {len(self.materials)} materials do not agree")
        if bool(torch.any(q < 0)) or not float(q.sum()) > 0 or bool(torch.any(mu < 0)):
            raise ValueError("PolyModel: weights and mu_rho must be >= 0, the weights not all 0")
        if self.scatter_to_primary < 0 or self.heel_gain < 0 or not 0 < self.scatter_sigma_fraction <= 1:
            raise ValueError("PolyModel: need scatter_to_primary >= 0, heel_gain >= 0, 0 < scatter_sigma_fraction <= 1")
        object.__setattr__(self, "energies_kev", e)
        object.__setattr__(self, "detector_weights", q / q.sum())
        object.__setattr__(self, "mu_rho", mu)
        object.__setattr__(self, "materials", tuple(material_key(m) for m in self.materials))

    @classmethod
    def from_spectrum(
        cls,
        spectrum: Spectrum = DEFAULT_SPECTRUM,
        materials: Sequence[str] = ("soft", "bone"),
        *,
        energy_integrating: bool = True,
        scatter_to_primary: float = 0.0,
        scatter_sigma_fraction: float = 0.15,
        heel_gain: float = 0.0,
    ) -> PolyModel:
        """The model of a tube :class:`.spectrum.Spectrum` (kVp, mm Al, bins) for ``materials``
        (NIST coefficients at the bins' energies); the simulator's detector by default."""
        energies, w = spectrum.weights()
        q = w * energies if energy_integrating else w
        mu = torch.stack([mass_attenuation(m, energies) for m in materials])
        return cls(energies, q, mu, tuple(materials), scatter_to_primary, scatter_sigma_fraction, heel_gain)

    @property
    def bins(self) -> int:
        return int(self.energies_kev.shape[0])

    @property
    def has_detector_effects(self) -> bool:
        """Whether scatter or heel are on (then the renderer applies them to the primary)."""
        return self.scatter_to_primary > 0 or self.heel_gain > 0


def primary_transmission(
    model: PolyModel, mass_thickness: Float[Tensor, "B C H W"], want_mu_eff: bool = False
) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B C H W"] | None]:
    """``T = sum_E q_E exp(-sum_m mu_m(E) A_m)`` of mass thicknesses ``A`` (g/cm^2, channel dim 1).

    Float64 on ``A``'s device, differentiable in ``A``. With ``want_mu_eff`` also ``mu_eff_m``
    (cm^2/g, module docstring) per pixel, so that ``d(-log T) = sum_m mu_eff_m dA_m``.
    """
    a = mass_thickness.to(torch.float64)
    mu = model.mu_rho.to(a.device)
    q = model.detector_weights.to(a.device)
    optical = torch.einsum("bchw,ce->bhwe", a, mu)  # dimensionless, per energy bin
    e = q * torch.exp(-optical)  # B H W E
    t = e.sum(-1)
    if not want_mu_eff:
        return t, None
    mu_eff = torch.einsum("bhwe,ce->bchw", e, mu) / t.clamp_min(1e-300)[:, None]
    return t, mu_eff


def primary_transmission_reference(model: PolyModel, mass_thickness: Float[Tensor, "B C H W"]) -> Tensor:
    """:func:`primary_transmission` written as its definition: a loop over energies and materials."""
    a = mass_thickness.to(torch.float64)
    t = torch.zeros(a.shape[0], *a.shape[2:], dtype=torch.float64, device=a.device)
    for k in range(model.bins):
        optical = torch.zeros_like(t)
        for m in range(len(model.materials)):
            optical = optical + float(model.mu_rho[m, k]) * a[:, m]
        t = t + float(model.detector_weights[k]) * torch.exp(-optical)
    return t
