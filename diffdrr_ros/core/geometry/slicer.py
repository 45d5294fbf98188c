"""3D Slicer's coordinates (RAS, mm) <-> the package's (the CT's LPS axes; metres on ROS, mm in the core).

Pure torch, no ROS. Used by the OpenIGTLink bridge (``diffdrr_ros/ros/igtl_bridge.py``); the
matrices are written down in ``docs/geometry.md`` ("OpenIGTLink / 3D Slicer").

* The CT frame ``ct`` has the CT's DICOM **LPS** axes (x patient left, y posterior, z superior);
  the C-arm frame ``carm_isocenter`` has axes parallel to a supine patient's LPS axes. Slicer
  uses **RAS** (x right, y anterior, z superior) for both, in **millimetres**.
* ``F = diag(-1, -1, 1, 1)`` maps LPS coordinates to RAS ones (and back: ``F = F^-1``).
  A transform ``T_a_b`` between two LPS frames (``x_a = T_a_b @ x_b``) is, between the
  same frames with RAS axes, ``F @ T_a_b @ F``: the rotation's off-diagonal terms that mix
  x or y with z change sign, the translation's x and y change sign.
* ``S = diag(1000, 1000, 1000, 1)`` turns a transform in metres into one in mm (``S T S^-1``:
  the rotation is unchanged, the translation scaled).

So ``T_ras_mm = S F T_lps_m F S^-1`` (:func:`lps_m_to_ras_mm`) and back
``T_lps_m = S^-1 F T_ras_mm F S`` (:func:`ras_mm_to_lps_m`). Every function takes any number
of leading batch dimensions and keeps the dtype and device of its input.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "MM_PER_M",
    "lps_m_to_ras_mm",
    "lps_to_ras",
    "lps_to_ras_points",
    "ras_mm_to_lps_m",
    "ras_to_lps",
    "ras_to_lps_points",
]

#: Millimetres per metre (ROS lengths are metres, Slicer's millimetres).
MM_PER_M = 1000.0

# Signs of F = diag(-1, -1, 1, 1): row i times sign i, column j times sign j gives F T F.
_SIGNS = (-1.0, -1.0, 1.0, 1.0)


def _flip(tf: Tensor) -> Tensor:
    s = torch.tensor(_SIGNS, dtype=tf.dtype, device=tf.device)
    return tf * s[:, None] * s[None, :]


def lps_to_ras(tf_lps: Float[Tensor, "... 4 4"]) -> Float[Tensor, "... 4 4"]:
    """``F @ T @ F``: a transform between two frames with LPS axes -> the same with RAS axes.

    Units unchanged. ``x_a = T_a_b @ x_b`` in LPS coordinates of ``a`` and ``b`` becomes
    ``x_a' = T' @ x_b'`` in their RAS coordinates (``x' = F x``).
    """
    return _flip(tf_lps)


def ras_to_lps(tf_ras: Float[Tensor, "... 4 4"]) -> Float[Tensor, "... 4 4"]:
    """The inverse of :func:`lps_to_ras` (the same map: ``F`` is its own inverse)."""
    return _flip(tf_ras)


def lps_m_to_ras_mm(tf_lps_m: Float[Tensor, "... 4 4"]) -> Float[Tensor, "... 4 4"]:
    """A ROS transform (LPS axes, translation in m) -> Slicer's (RAS axes, translation in mm).

    ``T_ras_mm = S F T F S^-1``: ``R' = F3 R F3``, ``t' = 1000 F3 t`` with ``F3 = diag(-1, -1, 1)``.
    For ``T_carm_ct`` (the registered pose on ``/tf``) the result maps the CT's RAS mm
    coordinates (those Slicer gives the CT volume) to the C-arm frame's RAS mm coordinates.
    """
    out = _flip(tf_lps_m).clone()
    out[..., :3, 3] = out[..., :3, 3] * MM_PER_M
    return out


def ras_mm_to_lps_m(tf_ras_mm: Float[Tensor, "... 4 4"]) -> Float[Tensor, "... 4 4"]:
    """Slicer's transform (RAS axes, mm) -> the ROS one (LPS axes, m); the inverse of :func:`lps_m_to_ras_mm`."""
    out = _flip(tf_ras_mm).clone()
    out[..., :3, 3] = out[..., :3, 3] / MM_PER_M
    return out


def lps_to_ras_points(pts_lps: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
    """Point coordinates LPS -> RAS (``x, y`` negated; units unchanged)."""
    s = torch.tensor(_SIGNS[:3], dtype=pts_lps.dtype, device=pts_lps.device)
    return pts_lps * s


def ras_to_lps_points(pts_ras: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
    """Point coordinates RAS -> LPS (the same map)."""
    return lps_to_ras_points(pts_ras)
