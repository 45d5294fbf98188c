"""X-ray physics shared by the simulator and the DRR: materials, attenuation tables, spectrum, signal model.

* :mod:`.materials` - HU -> soft tissue / bone densities (g/cm^3), piecewise linear, or a user's table;
* :mod:`.attenuation` - NIST SRD 126 mass attenuation coefficients (cm^2/g), log-log interpolated;
* :mod:`.spectrum` - the tube spectrum (kVp, mm Al filtration, energy bins), Kramers' law;
* :mod:`.poly_model` - what an energy-integrating detector sees through C materials (:class:`PolyModel`).

Pure torch: no import of the renderer or of ROS.
"""

from .attenuation import (
    AL_DENSITY,
    E_MAX_KEV,
    E_MIN_KEV,
    ENERGY_NODES_KEV,
    MU_RHO_TABLE,
    mass_attenuation,
    material_key,
)
from .materials import BONE_DENSITY, BONE_HU, DEFAULT_TABLE, SOFT_END_HU, MaterialTable, decompose_hu
from .poly_model import PolyModel, primary_transmission, primary_transmission_reference
from .spectrum import DEFAULT_SPECTRUM, Spectrum

__all__ = [
    "AL_DENSITY",
    "BONE_DENSITY",
    "BONE_HU",
    "DEFAULT_SPECTRUM",
    "DEFAULT_TABLE",
    "ENERGY_NODES_KEV",
    "E_MAX_KEV",
    "E_MIN_KEV",
    "MU_RHO_TABLE",
    "SOFT_END_HU",
    "MaterialTable",
    "PolyModel",
    "Spectrum",
    "decompose_hu",
    "mass_attenuation",
    "material_key",
    "primary_transmission",
    "primary_transmission_reference",
]
