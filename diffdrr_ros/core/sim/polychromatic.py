"""Polychromatic, two-material X-ray frames: physics the DRR's forward model does not make.

The DRR (:func:`diffdrr_ros.core.drr.render` of a ``hu_to_mu`` volume) is monochromatic: one
attenuation per voxel, ``exp(-line integral)``. A real tube emits a spectrum, and soft tissue
and bone attenuate its energies differently, so the effective attenuation of a ray depends on
what it crossed (beam hardening, bone harder than water). This module simulates that, so that
registration can be tested on frames its renderer's model did not produce:

The physics is :mod:`diffdrr_ros.core.physics`, shared with the polychromatic DRR
(``RenderSettings.poly``); its names are re-exported here:

1. **Materials** (:func:`decompose_hu`, :class:`MaterialCT`): the CT in HU becomes two
   density volumes (g/cm^3), soft tissue (water-like) and cortical bone, by the continuous
   piecewise-linear water/bone mapping of :mod:`~diffdrr_ros.core.physics.materials`.
2. **Mass attenuation** (:func:`mass_attenuation`): NIST SRD 126 mu/rho (cm^2/g), log-log
   interpolated (:mod:`~diffdrr_ros.core.physics.attenuation`).
3. **Spectrum** (:class:`Spectrum`): a Kramers tungsten spectrum filtered by aluminium, in
   energy bins (:mod:`~diffdrr_ros.core.physics.spectrum`).
4. **Projection** (:func:`material_line_integrals`, :func:`polychromatic_transmission`,
   :func:`polychromatic_intensity`): the project's renderer integrates each density volume
   (g/cm^3 x mm, /10 -> g/cm^2: ``A_soft``, ``A_bone``); an energy-integrating detector then
   sees ``I = i0 sum_E w(E) E exp(-(mu_soft(E) A_soft + mu_bone(E) A_bone)) / sum_E w(E) E``.
5. **The frame** (:func:`simulate_polychromatic_xray`): scatter, heel effect, detector blur,
   quantum and electronic noise, collimator, bit depth and inversion exactly as
   :func:`~.xray.simulate_xray` applies them (it is called on the effective optical depth
   ``-log(I / i0)``, so its ``exp`` gives back the polychromatic primary).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..drr.render import RenderSettings, render
from ..geometry.detector import Detector
from ..physics.attenuation import AL_DENSITY, E_MAX_KEV, E_MIN_KEV, MU_RHO_TABLE, mass_attenuation
from ..physics.materials import BONE_DENSITY, BONE_HU, SOFT_END_HU, decompose_hu
from ..physics.poly_model import PolyModel, primary_transmission
from ..physics.spectrum import DEFAULT_SPECTRUM, Spectrum
from ..volume.material_volume import MaterialVolume
from ..volume.volume import Volume
from .xray import XRayStyle, simulate_xray

__all__ = [
    "AL_DENSITY",
    "BONE_DENSITY",
    "BONE_HU",
    "E_MAX_KEV",
    "E_MIN_KEV",
    "MU_RHO_TABLE",
    "SOFT_END_HU",
    "MaterialCT",
    "Spectrum",
    "decompose_hu",
    "mass_attenuation",
    "material_line_integrals",
    "polychromatic_intensity",
    "polychromatic_transmission",
    "simulate_polychromatic_xray",
]

# --------------------------------------------------------------------------------------------
# Materials
# --------------------------------------------------------------------------------------------


_MATERIAL_CACHE: weakref.WeakKeyDictionary[Volume, MaterialCT] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class MaterialCT:
    """The two density volumes (g/cm^3, ``kind="raw"``, same grid) of one CT.

    Build it once per CT (:meth:`from_hu` caches per volume object) and render many frames.
    """

    soft: Volume
    bone: Volume

    def __post_init__(self) -> None:
        if self.soft.shape != self.bone.shape or not torch.allclose(self.soft.affine, self.bone.affine):
            raise ValueError("MaterialCT: soft and bone volumes must share one grid (shape and affine)")

    @classmethod
    def from_hu(cls, volume: Volume, *, cache: bool = True) -> MaterialCT:
        """Decompose a ``kind="hu"`` volume with :func:`decompose_hu`.

        With ``cache`` the result is remembered for this volume object (weakly: it goes with
        the volume), so repeated calls are free; edit a volume's data in place and the cache
        is stale, so pass ``cache=False`` then.
        """
        if volume.kind != "hu":
            raise ValueError(f"MaterialCT.from_hu needs a 'hu' volume, this one is {volume.kind!r}")
        if cache and (hit := _MATERIAL_CACHE.get(volume)) is not None:
            return hit
        soft, bone = decompose_hu(volume.data)
        out = cls(volume.with_data(soft, kind="raw"), volume.with_data(bone, kind="raw"))
        if cache:
            _MATERIAL_CACHE[volume] = out
        return out

    @property
    def center(self) -> Float[Tensor, "3"]:
        """LPS centre (mm) of the grid, as :attr:`Volume.center` (for :func:`carm_to_matrix`)."""
        return self.soft.center

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MaterialCT:
        """Both volumes moved / cast (see :meth:`Volume.to`)."""
        return MaterialCT(self.soft.to(device, dtype), self.bone.to(device, dtype))

    def to_material_volume(self) -> MaterialVolume:
        """The same densities as the renderer's two-channel :class:`MaterialVolume` (soft, bone)."""
        return MaterialVolume(torch.stack([self.soft.data, self.bone.data]), self.soft.affine, ("soft", "bone"))


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


def polychromatic_transmission(
    a_soft: Float[Tensor, "*shape"], a_bone: Float[Tensor, "*shape"], spectrum: Spectrum = DEFAULT_SPECTRUM
) -> Float[Tensor, "*shape"]:
    """Detected primary fraction ``I / i0`` for mass thicknesses ``a_soft``, ``a_bone`` (g/cm^2).

    ``sum_E w(E) E exp(-(mu_soft(E) a_soft + mu_bone(E) a_bone)) / sum_E w(E) E``: an
    energy-integrating detector (signal per photon proportional to its energy). float64, on
    the inputs' device; 1 where both thicknesses are 0.
    """
    a_s, a_b = torch.broadcast_tensors(torch.as_tensor(a_soft), torch.as_tensor(a_bone))
    model = PolyModel.from_spectrum(spectrum, ("soft", "bone"))
    a = torch.stack([a_s, a_b]).reshape(1, 2, 1, -1)  # B C H W for the shared signal model
    return primary_transmission(model, a)[0].reshape(a_s.shape)


def material_line_integrals(
    material_ct: MaterialCT,
    pose: Float[Tensor, "B 4 4"],
    detector: Detector,
    settings: RenderSettings | None = None,
) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W"]]:
    """Mass thicknesses ``(A_soft, A_bone)`` in g/cm^2 along each pixel's ray (:func:`render` / 10).

    ``pose``: ``T_cam_ct``, ``(B, 4, 4)`` or ``(4, 4)`` (then ``(H, W)`` images). ``settings``
    as for :func:`render`, except that its ``blur_sigma_px`` is ignored (it models the detector on
    attenuation images; the frame's blur is the style's).
    """
    settings = replace(settings, blur_sigma_px=0.0) if settings is not None else RenderSettings()
    a_soft = render(material_ct.soft, pose, detector, settings) / 10.0
    a_bone = render(material_ct.bone, pose, detector, settings) / 10.0
    return a_soft, a_bone


def polychromatic_intensity(
    material_ct: MaterialCT,
    pose: Float[Tensor, "B 4 4"],
    detector: Detector,
    spectrum: Spectrum = DEFAULT_SPECTRUM,
    i0: float = 1.0,
    settings: RenderSettings | None = None,
) -> Float[Tensor, "B H W"]:
    """Noise-free primary intensity (``i0`` where a ray meets no matter), float64 ``(B, H, W)``
    (``(H, W)`` for a ``(4, 4)`` pose): :func:`material_line_integrals` then
    :func:`polychromatic_transmission`."""
    a_soft, a_bone = material_line_integrals(material_ct, pose, detector, settings)
    return i0 * polychromatic_transmission(a_soft, a_bone, spectrum)


def simulate_polychromatic_xray(
    material_ct: MaterialCT,
    pose: Float[Tensor, "4 4"],
    detector: Detector,
    style: XRayStyle | None = None,
    spectrum: Spectrum = DEFAULT_SPECTRUM,
    generator: torch.Generator | None = None,
    settings: RenderSettings | None = None,
) -> np.ndarray:
    """The ``uint16 (H, W)`` frame a C-arm would give at one pose ``T_cam_ct`` (``(4, 4)`` or ``(1, 4, 4)``).

    The polychromatic primary replaces ``exp(-line integral)``; everything after it (scatter,
    heel, blur, noise, collimator, bits, inversion, and ``style.i0`` / ``style.photons`` for an
    unattenuated ray) is :func:`~.xray.simulate_xray`'s. ``style.beam_hardening`` is ignored:
    the spectrum is the beam hardening. ``style`` defaults to ``XRayStyle()``; ``generator``
    seeds the noise.
    """
    style = style or XRayStyle()
    if pose.dim() == 3:
        if pose.shape[0] != 1:
            raise ValueError(f"simulate_polychromatic_xray renders one pose, got {pose.shape[0]}")
        pose = pose[0]
    with torch.no_grad():
        primary = polychromatic_intensity(material_ct, pose, detector, spectrum, 1.0, settings)
    optical_depth = -torch.log(primary.clamp_min(1e-300))  # simulate_xray's exp gives the primary back
    return simulate_xray(optical_depth, replace(style, beam_hardening=0.0), generator)
