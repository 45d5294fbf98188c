"""Simulation: X-ray-like frames (noise, blur, scatter, beam hardening, heel) and C-arm trajectories."""

from .trajectory import JointSensor, Trajectory
from .xray import XRayStyle, collimator_mask, simulate_xray

__all__ = ["JointSensor", "Trajectory", "XRayStyle", "collimator_mask", "simulate_xray"]
