"""Tabulated mass attenuation coefficients (cm^2/g) and their log-log interpolation.

Source: J. H. Hubbell and S. M. Seltzer, *NIST Standard Reference Database 126: X-Ray Mass
Attenuation Coefficients* (NISTIR 5632, 1996): total mu/rho with coherent scattering, Table 3
for aluminium (Z = 13), Table 4 for "Water, Liquid" and "Bone, Cortical (ICRU-44)", at the
table's nodes from 10 to 150 keV. Between nodes the values are interpolated linearly in
``(log E, log mu/rho)``, as NIST recommends; none of the three materials has an absorption
edge in this range. No extrapolation outside [10, 150] keV.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["AL_DENSITY", "ENERGY_NODES_KEV", "E_MAX_KEV", "E_MIN_KEV", "MATERIAL_ALIASES", "MU_RHO_TABLE",
           "mass_attenuation", "material_key"]

#: Density (g/cm^3) of aluminium (NIST SRD 126, Table 1), for the tube filter.
AL_DENSITY: float = 2.699

#: Table energies (keV): the NIST SRD 126 nodes from 10 to 150 keV.
ENERGY_NODES_KEV: tuple[float, ...] = (10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0)

#: Mass attenuation coefficients mu/rho (cm^2/g, total with coherent scattering) at
#: :data:`ENERGY_NODES_KEV`, from NIST SRD 126 (Hubbell & Seltzer, NISTIR 5632).
MU_RHO_TABLE: dict[str, tuple[float, ...]] = {
    # "Water, Liquid" (Table 4).
    "soft": (5.329, 1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505),
    # "Bone, Cortical (ICRU-44)" (Table 4).
    "bone": (28.51, 9.032, 4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480),
    # Aluminium, Z = 13 (Table 3).
    "aluminium": (26.23, 7.955, 3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378),
}
#: Other names accepted for the tabulated materials.
MATERIAL_ALIASES: dict[str, str] = {"water": "soft", "cortical_bone": "bone", "aluminum": "aluminium",
                                    "al": "aluminium"}

#: Lowest and highest tabulated energies (keV).
E_MIN_KEV, E_MAX_KEV = ENERGY_NODES_KEV[0], ENERGY_NODES_KEV[-1]


def material_key(material: str) -> str:
    """The :data:`MU_RHO_TABLE` key of ``material`` (aliases resolved); ``ValueError`` if unknown."""
    key = MATERIAL_ALIASES.get(material.lower(), material.lower())
    if key not in MU_RHO_TABLE:
        raise ValueError(f"unknown material {material!r}; choose from {sorted(MU_RHO_TABLE)} "
                         f"(or {sorted(MATERIAL_ALIASES)})")
    return key


def mass_attenuation(material: str, energy_kev: Float[Tensor, "*shape"] | float | Sequence[float]) -> Tensor:
    """Mass attenuation coefficient mu/rho (cm^2/g) of ``material`` at ``energy_kev`` (keV).

    ``material``: ``"soft"`` (liquid water; alias ``"water"``), ``"bone"`` (ICRU-44 cortical
    bone) or ``"aluminium"`` (``"aluminum"``, ``"al"``). Log-log interpolation of
    :data:`MU_RHO_TABLE`; energies must lie in [10, 150] keV. Floating tensors keep their dtype
    and device, anything else becomes float64.
    """
    key = material_key(material)
    e = energy_kev if isinstance(energy_kev, Tensor) else torch.as_tensor(energy_kev, dtype=torch.float64)
    if not e.is_floating_point():
        e = e.to(torch.float64)
    if e.numel() and (float(e.min()) < E_MIN_KEV - 1e-9 or float(e.max()) > E_MAX_KEV + 1e-9):
        raise ValueError(f"energies must lie in [{E_MIN_KEV}, {E_MAX_KEV}] keV, got {float(e.min())}..{float(e.max())}")
    log_e_nodes = torch.log(torch.tensor(ENERGY_NODES_KEV, dtype=torch.float64, device=e.device))
    log_mu_nodes = torch.log(torch.tensor(MU_RHO_TABLE[key], dtype=torch.float64, device=e.device))
    log_e = torch.log(e.to(torch.float64).clamp(E_MIN_KEV, E_MAX_KEV))
    i = torch.searchsorted(log_e_nodes, log_e.contiguous(), right=True).clamp(1, len(ENERGY_NODES_KEV) - 1)
    x0, x1 = log_e_nodes[i - 1], log_e_nodes[i]
    y0, y1 = log_mu_nodes[i - 1], log_mu_nodes[i]
    return torch.exp(y0 + (y1 - y0) * (log_e - x0) / (x1 - x0)).to(e.dtype)
