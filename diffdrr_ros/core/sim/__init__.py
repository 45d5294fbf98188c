"""Simulation: X-ray-like frames (noise, blur, scatter, beam hardening, heel), polychromatic two-material
frames, and C-arm trajectories."""

from .polychromatic import (
    MaterialCT,
    Spectrum,
    decompose_hu,
    mass_attenuation,
    material_line_integrals,
    polychromatic_intensity,
    polychromatic_transmission,
    simulate_polychromatic_xray,
)
from .trajectory import JointSensor, Trajectory
from .xray import XRayStyle, collimator_mask, simulate_xray

__all__ = [
    "JointSensor",
    "MaterialCT",
    "Spectrum",
    "Trajectory",
    "XRayStyle",
    "collimator_mask",
    "decompose_hu",
    "mass_attenuation",
    "material_line_integrals",
    "polychromatic_intensity",
    "polychromatic_transmission",
    "simulate_polychromatic_xray",
    "simulate_xray",
]
