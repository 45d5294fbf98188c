"""Polychromatic, two-material X-ray frames: physics the DRR's forward model does not make.

The DRR (:func:`diffdrr_ros.core.drr.render` of a ``hu_to_mu`` volume) is monochromatic: one
attenuation per voxel, ``exp(-line integral)``. A real tube emits a spectrum, and soft tissue
and bone attenuate its energies differently, so the effective attenuation of a ray depends on
what it crossed (beam hardening, bone harder than water). This module simulates that, so that
registration can be tested on frames its renderer's model did not produce:

1. **Materials** (:func:`decompose_hu`, :class:`MaterialCT`): the CT in HU becomes two
   density volumes (g/cm^3), soft tissue (water-like) and cortical bone, by a piecewise-linear
   water/bone mapping (the usual two-material "bi-linear" decomposition of beam-hardening
   correction and CT-based simulation, e.g. DeepDRR's soft-tissue/bone split; here without
   hard thresholds so that it is continuous in HU):

   ============================  ===================================  ===================
   HU                            soft tissue (g/cm^3)                 bone (g/cm^3)
   ============================  ===================================  ===================
   ``<= -1000`` (air)            0                                    0
   ``-1000 .. 100``              ``1 + HU / 1000`` (0 -> 1.1)         0
   ``100 .. 1600``               ``1.1 (1 - f)``                      ``1.92 f``
   ``>= 1600``                   0                                    ``1.92 (1000 + HU) / 2600``
   ============================  ===================================  ===================

   with ``f = (HU - 100) / 1500``. Below 100 HU the HU definition is taken literally for a
   water-like medium (density proportional to ``1 + HU / 1000``; water 0 HU -> 1.0). 1600 HU is
   pure ICRU-44 cortical bone (1.92 g/cm^3): with the tables below, ``1000 (1.92 mu_bone /
   mu_water - 1)`` is 1594 HU at 70 keV, the effective energy of a 120 kVp CT beam, so the
   mapping is consistent with the HU scale (linear attenuation linear in HU on every piece at
   that energy). Denser voxels (teeth, metal) are bone of proportionally higher density.
2. **Mass attenuation** (:func:`mass_attenuation`): total mu/rho with coherent scattering,
   cm^2/g, from J. H. Hubbell and S. M. Seltzer, *NIST Standard Reference Database 126: X-Ray
   Mass Attenuation Coefficients* (NISTIR 5632, 1996; Table 3 for aluminium Z = 13, Table 4 for
   "Water, Liquid" and "Bone, Cortical (ICRU-44)"), at the table's nodes from 10 to 150 keV,
   interpolated log-log (linear in ``log E``, ``log mu/rho``), as NIST recommends between
   nodes. None of the three has an absorption edge in this range.
3. **Spectrum** (:class:`Spectrum`): an unfiltered tungsten-anode bremsstrahlung spectrum by
   Kramers' law, photons per keV ``N(E) ~ (kVp - E) / E`` (H. A. Kramers, Phil. Mag. 46, 836,
   1923), filtered by ``filtration_mm_al`` mm of aluminium (density 2.699 g/cm^3):
   ``N(E) exp(-mu_Al(E) rho_Al t)``. The range ``[min_kev, kVp]`` is cut into ``bins`` equal
   bins; each bin's weight is its integrated filtered fluence and its energy the fluence-
   weighted mean energy in it (midpoint quadrature, steps of at most 0.25 keV). Characteristic
   tungsten K lines (58-69 keV) and the anode's self-filtration are ignored.
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

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..drr.render import RenderSettings, render
from ..geometry.detector import Detector
from ..volume.volume import Volume
from .xray import XRayStyle, simulate_xray

__all__ = [
    "AL_DENSITY",
    "BONE_DENSITY",
    "BONE_HU",
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

#: Density (g/cm^3) of ICRU-44 cortical bone (NIST SRD 126, Table 2).
BONE_DENSITY: float = 1.92
#: Density (g/cm^3) of aluminium (NIST SRD 126, Table 1).
AL_DENSITY: float = 2.699
#: HU where pure (water-like) soft tissue ends and the soft-tissue/bone mix begins.
SOFT_END_HU: float = 100.0
#: HU of pure cortical bone (1.92 g/cm^3); see the module docstring for why 1600.
BONE_HU: float = 1600.0

#: Table energies (keV): the NIST SRD 126 nodes from 10 to 150 keV.
_ENERGY_KEV = (10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0)

#: Mass attenuation coefficients mu/rho (cm^2/g, total with coherent scattering) at
#: :data:`_ENERGY_KEV`, from NIST SRD 126 (Hubbell & Seltzer, NISTIR 5632).
MU_RHO_TABLE: dict[str, tuple[float, ...]] = {
    # "Water, Liquid" (Table 4).
    "soft": (5.329, 1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505),
    # "Bone, Cortical (ICRU-44)" (Table 4).
    "bone": (28.51, 9.032, 4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480),
    # Aluminium, Z = 13 (Table 3).
    "aluminium": (26.23, 7.955, 3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378),
}
_ALIASES = {"water": "soft", "cortical_bone": "bone", "aluminum": "aluminium", "al": "aluminium"}

#: Lowest and highest tabulated energies (keV); :func:`mass_attenuation` does not extrapolate.
E_MIN_KEV, E_MAX_KEV = _ENERGY_KEV[0], _ENERGY_KEV[-1]
_QUADRATURE_STEP_KEV = 0.25  # midpoint-rule step within a spectrum bin (at least 8 points per bin)


# --------------------------------------------------------------------------------------------
# Tables and materials
# --------------------------------------------------------------------------------------------


def mass_attenuation(material: str, energy_kev: Float[Tensor, "*shape"] | float | Sequence[float]) -> Tensor:
    """Mass attenuation coefficient mu/rho (cm^2/g) of ``material`` at ``energy_kev``.

    ``material``: ``"soft"`` (liquid water; alias ``"water"``), ``"bone"`` (ICRU-44 cortical
    bone) or ``"aluminium"`` (``"aluminum"``, ``"al"``). Log-log interpolation of
    :data:`MU_RHO_TABLE`; energies must lie in [10, 150] keV. Floating tensors keep their dtype
    and device, anything else becomes float64.
    """
    key = _ALIASES.get(material.lower(), material.lower())
    if key not in MU_RHO_TABLE:
        raise ValueError(f"unknown material {material!r}; choose from {sorted(MU_RHO_TABLE)} (or {sorted(_ALIASES)})")
    e = energy_kev if isinstance(energy_kev, Tensor) else torch.as_tensor(energy_kev, dtype=torch.float64)
    if not e.is_floating_point():
        e = e.to(torch.float64)
    if e.numel() and (float(e.min()) < E_MIN_KEV - 1e-9 or float(e.max()) > E_MAX_KEV + 1e-9):
        raise ValueError(f"energies must lie in [{E_MIN_KEV}, {E_MAX_KEV}] keV, got {float(e.min())}..{float(e.max())}")
    log_e_nodes = torch.log(torch.tensor(_ENERGY_KEV, dtype=torch.float64, device=e.device))
    log_mu_nodes = torch.log(torch.tensor(MU_RHO_TABLE[key], dtype=torch.float64, device=e.device))
    log_e = torch.log(e.to(torch.float64).clamp(E_MIN_KEV, E_MAX_KEV))
    i = torch.searchsorted(log_e_nodes, log_e.contiguous(), right=True).clamp(1, len(_ENERGY_KEV) - 1)
    x0, x1 = log_e_nodes[i - 1], log_e_nodes[i]
    y0, y1 = log_mu_nodes[i - 1], log_mu_nodes[i]
    return torch.exp(y0 + (y1 - y0) * (log_e - x0) / (x1 - x0)).to(e.dtype)


def decompose_hu(
    hu: Float[Tensor, "*shape"], *, soft_end_hu: float = SOFT_END_HU, bone_hu: float = BONE_HU
) -> tuple[Float[Tensor, "*shape"], Float[Tensor, "*shape"]]:
    """Soft-tissue and cortical-bone densities (g/cm^3) of CT voxels in HU.

    The piecewise-linear water/bone mapping of the module docstring (continuous in HU): air 0,
    water-like ``1 + HU / 1000`` up to ``soft_end_hu``, then soft tissue is replaced linearly by
    1.92 g/cm^3 bone up to ``bone_hu``, above which bone density grows as ``1000 + HU``. Pure
    function: shape, floating dtype and device kept (integers -> float32).
    """
    if not -1000.0 < soft_end_hu < bone_hu:
        raise ValueError(f"need -1000 < soft_end_hu < bone_hu, got {soft_end_hu}, {bone_hu}")
    hu = torch.as_tensor(hu)
    if not hu.is_floating_point():
        hu = hu.to(torch.float32)
    soft_end_density = 1.0 + soft_end_hu / 1000.0
    f = ((hu - soft_end_hu) / (bone_hu - soft_end_hu)).clamp(0.0, 1.0)
    soft = torch.where(hu <= soft_end_hu, (1.0 + hu / 1000.0).clamp_min(0.0), soft_end_density * (1.0 - f))
    bone = BONE_DENSITY * torch.where(hu <= bone_hu, f, (1000.0 + hu) / (1000.0 + bone_hu))
    return soft, bone


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


# --------------------------------------------------------------------------------------------
# Spectrum
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


def polychromatic_transmission(
    a_soft: Float[Tensor, "*shape"], a_bone: Float[Tensor, "*shape"], spectrum: Spectrum = Spectrum()
) -> Float[Tensor, "*shape"]:
    """Detected primary fraction ``I / i0`` for mass thicknesses ``a_soft``, ``a_bone`` (g/cm^2).

    ``sum_E w(E) E exp(-(mu_soft(E) a_soft + mu_bone(E) a_bone)) / sum_E w(E) E``: an
    energy-integrating detector (signal per photon proportional to its energy). float64, on
    the inputs' device; 1 where both thicknesses are 0.
    """
    energies, w = spectrum.weights()
    a_s, a_b = torch.broadcast_tensors(torch.as_tensor(a_soft), torch.as_tensor(a_bone))
    device = a_s.device
    q = (w * energies).to(device)
    q = q / q.sum()
    mu_s = mass_attenuation("soft", energies).to(device)
    mu_b = mass_attenuation("bone", energies).to(device)
    optical = a_s.to(torch.float64)[..., None] * mu_s + a_b.to(torch.float64)[..., None] * mu_b
    return (q * torch.exp(-optical)).sum(-1)


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
    spectrum: Spectrum = Spectrum(),
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
    spectrum: Spectrum = Spectrum(),
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
