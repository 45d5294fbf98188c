"""X-ray frames from physics this package did not write: SpekPy spectra, xraydb attenuation, DiffDRR rays.

The simulator of this package (``diffdrr_ros/core/sim/polychromatic.py``) shares the
renderer's Siddon, its NIST tables and its two-material HU split, so registration results on
its frames are an upper bound. This module makes frames from other projects' physics; only
the scene (CT in HU, :class:`~diffdrr_ros.core.geometry.Detector`, pose ``T_cam_ct``) and
the plain arithmetic that combines the pieces are ours. Each step, with its units:

1. **Spectrum** (SpekPy 2.5.4, Poludniowski et al., its default ``casim`` physics): tungsten
   reflection anode, ``kvp`` (80 kV), anode angle ``anode_angle_deg`` (16 deg), inherent
   filtration left at SpekPy's default plus ``filtration_mm_al`` (2.5 mm Al), bins of
   ``energy_bin_kev`` (1 keV: 1.5 .. 79.5 keV mid-bin). SpekPy gives the fluence
   (photons / cm^2 per bin) at each point ``(x, y, z)`` cm from the focus; it is evaluated on
   a 33 x 33 grid over the detector (``x``: anode-cathode axis = detector rows, the anode on
   the side of row 0; ``y``: columns; ``z``: SDD) and interpolated bilinearly to every pixel,
   times the pixel's obliquity ``cos(theta)``. So the **heel effect** (anode-side intensity
   fall-off *and* hardening), the oblique filtration and the inverse-square fall-off are
   SpekPy's physics, not a gain ramp (``heel=False``: the central-axis spectrum everywhere).
   The spectrum is scaled so that the detector's central pixel receives ``photons`` quanta
   (2e4) with nothing in the beam.
2. **Attenuation** (xraydb 4.5.8: Elam, Ravel & Sieber 2002 elemental cross sections):
   ``mu/rho`` (cm^2/g) of each material = sum over elements of mass fraction x
   ``xraydb.mu_elam(Z, E, kind)``, with ``kind="total"`` (photoelectric + coherent +
   incoherent: narrow-beam attenuation of the primary; what leaves the primary by scattering
   is returned through the scatter model below). ``attenuation="photo+incoherent"`` drops the
   coherent part.
3. **Materials** (ours, Schneider-style, deliberately not this package's water/bone split):
   four tissues with ICRP compositions (NIST's material composition data, ICRP Publication
   23 values: lung, adipose, skeletal muscle, cortical bone ICRP at 1.85 g/cm^3; this
   package's tables use water and ICRU-44 cortical bone at 1.92). HU -> mass density
   (g/cm^3), piecewise linear through ``(-1000, 0)``, ``(-200, 0.82)``, ``(-120, 0.926)``,
   ``(-20, 0.99)``, ``(40, 1.05)``, ``(120, 1.09)``, ``(1500, 1.85)``, extrapolated above 1500 HU
   with the last slope. -1000 HU is density 0: the flat field was taken through the same
   room air, so the CT's air attenuates nothing extra. Mass fractions: lung below -200 HU,
   lung -> adipose from -200 to -120 HU, adipose to -50 HU, adipose -> muscle to 20 HU,
   muscle to 120 HU, then muscle + cortical bone mixed **by volume** so that the mixture has
   the density of the curve (bone volume fraction ``(rho - 1.09) / (1.85 - 1.09)``, mass
   fraction ``v 1.85 / rho``), cortical bone above 1500 HU. One density volume per material
   (g/cm^3, ``rho(HU) w_m(HU)``).
4. **Line integrals** (DiffDRR 0.6.1: its ``DRR.render`` and exact Siddon renderer): each
   material's density volume is integrated along this package's rays (the source and
   pixel centres of :func:`~diffdrr_ros.core.geometry.detector_points` at the pose, mapped
   from the CT's LPS frame into DiffDRR's RAS world exactly as ``bench/bench_render.py``
   does); g/cm^3 x mm / 10 -> mass thickness ``A_m`` in g/cm^2. :func:`geometry_check`
   renders a linear-attenuation volume with DiffDRR and with this package's renderer at one
   pose and compares them.
5. **Primary** (energy-integrating detector, keV per pixel):
   ``P = sum_E N(E) E exp(-sum_m mu_m(E) A_m)``, ``N(E)`` the pixel's photons in bin ``E``,
   zero outside the circular collimator (radius ``collimator_radius`` x the smaller side,
   0.47, the one of ``diffdrr_ros.core.sim.collimator_mask``).
6. **Scatter** (ours, not this package's Gaussian of the primary): the scatter-kernel
   superposition of Ohnesorge et al. (Med. Phys. 1999): a source term ``P t ln(1 / t)`` per
   pixel (``t = P / P_open``: scatter is made where the beam is attenuated, nothing where it
   passes freely or is stopped), convolved (zero padded, so scatter falls off near the
   collimator and lands outside it) with a sum of two isotropic Gaussians on the detector,
   ``scatter_sigmas_mm`` (15, 60) mm with weights ``scatter_weights`` (0.4, 0.6), scaled so
   that mean scatter / mean primary behind the object (collimated pixels whose primary
   transmission is below 0.9: :meth:`ExternalProjector.shadow`) is ``scatter_to_primary``
   (0.25); the open field around the object then gets the scatter that spreads into it.
   Scattered quanta are counted at the pixel's mean primary energy.
7. **Noise** (compound Poisson of an energy-integrating detector): the primary quanta are
   Poisson per pixel *and* energy bin, each weighted by its energy; the scatter quanta are
   Poisson at the pixel's mean energy. Quantum noise comes before the blur (the scintillator
   spreads the light of each absorbed photon), so the noise is correlated as on a real panel.
8. **Blur**: a Gaussian detector/focal-spot PSF of ``blur_sigma_px`` (0.7 px), SciPy's
   ``gaussian_filter`` (edge pixels replicated), on primary + scatter.
9. **Read-out**: gain ``i0_counts / P_open(centre)`` counts per keV (the centre of an open
   field reads ``i0_counts`` = 3000), Gaussian electronic noise ``electronic_noise`` (4
   counts rms) everywhere (also outside the collimator), a ``bits``-bit ADC (12: round, clip
   to 0 .. 4095). No offset (dark-corrected); no gain (flat-field) correction, so the heel
   and the inverse-square fall-off stay in the frame as on a raw frame.

The frame is a float32 ``(H, W)`` array of integer counts (a 16-bit-range frame like the
simulator's ``uint16``); :class:`ExternalFrame` also carries the I0 a user would tell the
node: ``i0`` = the mean of a noise-free open (flat) field inside the collimator, counts
(``i0_center``: the centre pixel's, ``i0_counts``). Run this file for a quick look::

    .venv-bench/bin/python bench/external_projector.py --phantom head --size 128
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffdrr_ros.core.geometry import Detector, detector_points  # noqa: E402
from diffdrr_ros.core.geometry.rotations import apply_transform, invert_transform  # noqa: E402
from diffdrr_ros.core.sim.xray import collimator_mask  # noqa: E402
from diffdrr_ros.core.volume import Volume  # noqa: E402

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse

#: Elemental mass fractions (ICRP Publication 23 compositions as tabulated by NIST's material
#: composition data) and the ICRP reference densities (g/cm^3; the density used here is the
#: HU curve's, these are for the record and for cortical bone's end point).
COMPOSITIONS: dict[str, dict[str, float]] = {
    "lung": {"H": 0.101278, "C": 0.102310, "N": 0.028650, "O": 0.757072, "Na": 0.001840, "Mg": 0.000730,
             "P": 0.000800, "S": 0.002250, "Cl": 0.002660, "K": 0.001940, "Ca": 0.000090, "Fe": 0.000370,
             "Zn": 0.000010},
    "adipose": {"H": 0.119477, "C": 0.637240, "N": 0.007970, "O": 0.232333, "Na": 0.000500, "Mg": 0.000020,
                "P": 0.000160, "S": 0.000730, "Cl": 0.001190, "K": 0.000320, "Ca": 0.000020, "Fe": 0.000020,
                "Zn": 0.000020},
    "muscle": {"H": 0.100637, "C": 0.107830, "N": 0.027680, "O": 0.754773, "Na": 0.000750, "Mg": 0.000190,
               "P": 0.001800, "S": 0.002410, "Cl": 0.000790, "K": 0.003020, "Ca": 0.000030, "Fe": 0.000040,
               "Zn": 0.000050},
    "bone": {"H": 0.047234, "C": 0.144330, "N": 0.041990, "O": 0.446096, "Mg": 0.002200, "P": 0.104970,
             "S": 0.003150, "Ca": 0.209930, "Zn": 0.000100},
}
REFERENCE_DENSITY = {"lung": 1.05, "adipose": 0.92, "muscle": 1.04, "bone": 1.85}
MATERIALS = tuple(COMPOSITIONS)

#: HU -> mass density (g/cm^3) nodes; linear between, the last slope continued above.
DENSITY_NODES = ((-1000.0, 0.0), (-200.0, 0.82), (-120.0, 0.926), (-20.0, 0.99), (40.0, 1.05), (120.0, 1.09),
                 (1500.0, 1.85))
#: Where the soft-tissue / bone mixture starts and pure cortical bone begins (HU).
MIX_START_HU, BONE_HU = 120.0, 1500.0


def hu_to_materials(hu: np.ndarray | torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(density, {material: partial density})`` in g/cm^3 of CT voxels in HU (module docstring, step 3).

    ``density`` is the mixture's mass density; the partial densities (``density x mass
    fraction``) sum to it. float64 arrays of ``hu``'s shape.
    """
    h = np.asarray(hu.detach().cpu().numpy() if isinstance(hu, torch.Tensor) else hu, dtype=np.float64)
    xs, ys = (np.array(v) for v in zip(*DENSITY_NODES, strict=True))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    rho = np.where(h > xs[-1], ys[-1] + slope * (h - xs[-1]), np.interp(np.clip(h, xs[0], None), xs, ys))
    rho = np.clip(rho, 0.0, None)

    def ramp(a: float, b: float) -> np.ndarray:  # 0 below a, 1 above b, linear between
        return np.clip((h - a) / (b - a), 0.0, 1.0)

    lung_to_fat, fat_to_muscle = ramp(-200.0, -120.0), ramp(-50.0, 20.0)
    rho_s, rho_b = float(np.interp(MIX_START_HU, xs, ys)), REFERENCE_DENSITY["bone"]
    v_bone = np.clip((rho - rho_s) / (rho_b - rho_s), 0.0, 1.0) * (h > MIX_START_HU)
    w_bone = np.where(rho > 0, v_bone * rho_b / np.maximum(rho, 1e-12), 0.0)
    w_bone = np.where(h >= BONE_HU, 1.0, np.clip(w_bone, 0.0, 1.0))  # denser than 1500 HU: denser bone
    w = {"lung": 1.0 - lung_to_fat, "adipose": lung_to_fat * (1.0 - fat_to_muscle),
         "muscle": fat_to_muscle * (1.0 - w_bone), "bone": w_bone}
    return rho, {m: rho * w[m] for m in MATERIALS}


def mass_attenuation(material: str, energies_kev: np.ndarray, kind: str = "total") -> np.ndarray:
    """``mu/rho`` (cm^2/g) of one of :data:`COMPOSITIONS` at ``energies_kev`` from xraydb (mixture rule).

    ``kind``: ``"total"`` (photoelectric + coherent + incoherent) or ``"photo+incoherent"``.
    """
    import xraydb

    e_ev = np.asarray(energies_kev, dtype=np.float64) * 1e3
    comp = COMPOSITIONS[material]
    total = sum(comp.values())
    kinds = {"total": ("total",), "photo+incoherent": ("photo", "incoh")}[kind]
    out = np.zeros_like(e_ev)
    for el, frac in comp.items():
        for k in kinds:
            out += frac / total * np.asarray(xraydb.mu_elam(el, e_ev, kind=k), dtype=np.float64)
    return out


@dataclass(frozen=True)
class ExternalStyle:
    """The projector's settings (module docstring; units in the names)."""

    kvp: float = 80.0
    anode_angle_deg: float = 16.0
    filtration_mm_al: float = 2.5
    energy_bin_kev: float = 1.0
    heel: bool = True  # SpekPy's off-axis spectra (heel, oblique filtration, inverse square)
    attenuation: str = "total"  # or "photo+incoherent"
    scatter_to_primary: float = 0.25
    scatter_sigmas_mm: tuple[float, ...] = (15.0, 60.0)
    scatter_weights: tuple[float, ...] = (0.4, 0.6)
    blur_sigma_px: float = 0.7
    photons: float = 2.0e4  # quanta reaching the central pixel with nothing in the beam
    i0_counts: float = 3000.0  # counts of the central pixel of an open field
    electronic_noise: float = 4.0  # counts rms
    bits: int = 12
    collimator_radius: float = 0.47  # fraction of the detector's smaller side; 0: none
    spectrum_grid: int = 33  # SpekPy evaluations per detector axis (interpolated between)

    def __post_init__(self) -> None:
        if self.attenuation not in ("total", "photo+incoherent"):
            raise ValueError(f"attenuation must be 'total' or 'photo+incoherent', got {self.attenuation!r}")
        if len(self.scatter_sigmas_mm) != len(self.scatter_weights) or min(self.scatter_sigmas_mm) <= 0:
            raise ValueError("scatter_sigmas_mm and scatter_weights: same length, sigmas > 0")
        if self.scatter_to_primary < 0 or self.photons <= 0 or self.i0_counts <= 0:
            raise ValueError("scatter_to_primary >= 0, photons > 0 and i0_counts > 0 needed")


@dataclass
class ExternalFrame:
    """One frame and what went into it (counts; keV per pixel for the noise-free parts)."""

    frame: np.ndarray  # float32 (H, W), integer counts 0 .. 2**bits - 1
    i0: float  # mean open-field counts inside the collimator (what the node is told)
    i0_center: float  # open-field counts of the central pixel (= style.i0_counts)
    primary: np.ndarray  # noise-free primary, keV per pixel
    scatter: np.ndarray  # noise-free scatter, keV per pixel
    open_field: np.ndarray  # noise-free open field (no object), keV per pixel, collimated
    mask: np.ndarray  # the collimator, bool (H, W)
    thickness: dict[str, np.ndarray] = field(default_factory=dict)  # A_m, g/cm^2


class DiffDRRRays:
    """DiffDRR 0.6.1's ``DRR.render`` (exact Siddon) on this package's rays for one CT grid.

    The grid (shape, LPS affine) of ``volume`` becomes a torchio image in RAS that
    ``diffdrr.data.read`` centres on DiffDRR's world origin; a point of our CT frame maps
    to DiffDRR's world by ``A_dd A_ours^-1`` (the mapping of ``bench/bench_render.py``).
    :meth:`integrate` renders any volume on that grid (voxel value x mm).
    """

    def __init__(self, volume: Volume, detector: Detector, patch_size: int | None = None) -> None:
        from diffdrr.data import read
        from diffdrr.drr import DRR
        from torchio import ScalarImage

        self.detector = detector
        self.affine = volume.affine.to(torch.float64)
        ras = torch.from_numpy(LPS_RAS) @ self.affine
        hu = volume.data.to(torch.float32)[None]  # read() converts it to its own density, which is never used
        subject = read(ScalarImage(tensor=hu, affine=ras.numpy()), orientation=None)
        spacing = float(detector.spacing_mm[1])
        self.drr = DRR(subject, sdd=float(detector.sdd_mm), height=detector.height, width=detector.width,
                       delx=spacing, dely=float(detector.spacing_mm[0]), renderer="siddon", patch_size=patch_size)
        a_dd = torch.as_tensor(np.asarray(subject.volume.affine, dtype=np.float64))
        self.ours_to_dd = a_dd @ torch.linalg.inv(self.affine)

    def rays(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ``(3,)`` and pixel centres ``(H*W, 3)`` in DiffDRR's world (mm), float64."""
        src_cam, pix_cam = detector_points(self.detector, dtype=torch.float64)
        t_ct_cam = invert_transform(pose.to(torch.float64))
        src = apply_transform(t_ct_cam, src_cam[None])[0]
        pix = apply_transform(t_ct_cam, pix_cam.reshape(-1, 3))
        m = self.ours_to_dd
        return src @ m[:3, :3].T + m[:3, 3], pix @ m[:3, :3].T + m[:3, 3]

    @torch.no_grad()
    def integrate(self, data: torch.Tensor | np.ndarray, pose: torch.Tensor) -> np.ndarray:
        """Line integrals (voxel value x mm) of ``data`` (``(I, J, K)`` on the grid) at ``T_cam_ct``, (H, W) float64."""
        src, pix = self.rays(pose[0] if pose.dim() == 3 else pose)
        density = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
        img = self.drr.render(density.to(torch.float32).contiguous(), src.to(torch.float32)[None, None],
                              pix.to(torch.float32)[None])
        return img.reshape(self.detector.height, self.detector.width).to(torch.float64).numpy()


def spekpy_tube(style: ExternalStyle, z_cm: float = 100.0):
    """A SpekPy ``Spek`` of the tube: tungsten, ``kvp``, anode angle, ``filtration_mm_al`` mm Al added."""
    import spekpy

    s = spekpy.Spek(kvp=style.kvp, th=style.anode_angle_deg, dk=style.energy_bin_kev, z=z_cm)
    if style.filtration_mm_al > 0:
        s.filter("Al", style.filtration_mm_al)
    return s


def spekpy_spectrum(tube, x_cm: float = 0.0, y_cm: float = 0.0, z_cm: float = 100.0):
    """``(energies_keV, photons / cm^2 per bin)`` of a :func:`spekpy_tube` at ``(x, y, z)`` cm from the focus."""
    k, f = tube.get_spectrum(x=x_cm, y=y_cm, z=z_cm, flu=True, diff=False)
    return np.asarray(k, dtype=np.float64), np.asarray(f, dtype=np.float64)


class ExternalProjector:
    """Frames of one CT (``kind="hu"``) on one detector: :meth:`frame` at a pose ``T_cam_ct``."""

    def __init__(self, volume: Volume, detector: Detector, style: ExternalStyle | None = None,
                 patch_size: int | None = None) -> None:
        if volume.kind != "hu":
            raise ValueError(f"ExternalProjector needs a CT in HU, got kind {volume.kind!r}")
        self.style = style = style or ExternalStyle()
        self.detector = detector
        self.rays = DiffDRRRays(volume, detector, patch_size=patch_size)
        _, partial = hu_to_materials(volume.data)
        self.densities = {m: torch.from_numpy(v.astype(np.float32)) for m, v in partial.items()}
        self.energies, self.photons = self._spectra()  # (E,), (E, H, W) quanta per pixel and bin
        self.mu_rho = np.stack([mass_attenuation(m, self.energies, style.attenuation) for m in MATERIALS])
        self.mask = collimator_mask(detector.height, detector.width, style.collimator_radius)  # the same disc

    # -- the tube ------------------------------------------------------------------------
    def _spectra(self) -> tuple[np.ndarray, np.ndarray]:
        st, det = self.style, self.detector
        h, w = det.height, det.width
        _, pix = detector_points(det, dtype=torch.float64)  # the source sits on the z axis of the camera frame
        u, v = pix[0, :, 0].numpy(), pix[:, 0, 1].numpy()  # mm from the central ray
        sdd_cm = float(det.sdd_mm) / 10.0
        tube = spekpy_tube(st, sdd_cm)
        k, f0 = spekpy_spectrum(tube, 0.0, 0.0, sdd_cm)
        keep = f0 > f0.max() * 1e-7  # drop bins the filter has emptied
        k = k[keep]
        if st.heel:
            n = st.spectrum_grid
            gv, gu = np.linspace(v.min(), v.max(), n), np.linspace(u.min(), u.max(), n)
            grid = np.empty((n, n, len(k)))
            for i, vv in enumerate(gv):  # SpekPy x: anode-cathode axis (rows; anode at row 0), y: columns
                for j, uu in enumerate(gu):
                    grid[i, j] = spekpy_spectrum(tube, vv / 10.0, uu / 10.0, sdd_cm)[1][keep]
            from scipy.interpolate import RegularGridInterpolator

            interp = RegularGridInterpolator((gv, gu), grid)
            vv, uu = np.meshgrid(v, u, indexing="ij")
            flu = interp(np.stack([vv.ravel(), uu.ravel()], -1)).reshape(h, w, -1)
            cos = float(det.sdd_mm) / np.sqrt(float(det.sdd_mm) ** 2 + vv**2 + uu**2)
            flu = flu * cos[..., None]  # a flat panel: obliquity of incidence
        else:
            flu = np.broadcast_to(f0[keep], (h, w, len(k))).copy()
        centre = self._centre_value(flu)
        photons = flu / centre.sum() * st.photons
        return k, np.ascontiguousarray(np.moveaxis(photons, -1, 0))

    def _centre_value(self, per_pixel: np.ndarray) -> np.ndarray:
        """The value at the detector's centre (mean of the 1, 2 or 4 pixels around it)."""
        h, w = per_pixel.shape[:2]
        rs = [h // 2] if h % 2 else [h // 2 - 1, h // 2]
        cs = [w // 2] if w % 2 else [w // 2 - 1, w // 2]
        return per_pixel[np.ix_(rs, cs)].reshape(len(rs) * len(cs), *per_pixel.shape[2:]).mean(0)

    def mean_energy_kev(self) -> float:
        """Fluence-weighted mean photon energy (keV) of the central pixel's spectrum."""
        c = self.photons[:, self.detector.height // 2, self.detector.width // 2]
        return float((c * self.energies).sum() / c.sum())

    # -- the patient ---------------------------------------------------------------------
    def thickness(self, pose: torch.Tensor) -> dict[str, np.ndarray]:
        """Mass thickness ``A_m`` (g/cm^2) per material along every pixel's ray: DiffDRR's Siddon / 10."""
        return {m: self.rays.integrate(d, pose) / 10.0 for m, d in self.densities.items()}

    def primary_quanta(self, thickness: dict[str, np.ndarray]) -> np.ndarray:
        """Expected primary quanta per energy bin and pixel, ``(E, H, W)``, zero outside the collimator."""
        a = np.stack([thickness[m] for m in MATERIALS])  # (M, H, W)
        tau = np.einsum("me,mhw->ehw", self.mu_rho, a)
        return self.photons * np.exp(-tau) * self.mask

    def open_field(self) -> np.ndarray:
        """Noise-free open-field signal (keV per pixel), collimated."""
        return np.einsum("e,ehw->hw", self.energies, self.photons) * self.mask

    def scatter(self, primary: np.ndarray, open_field: np.ndarray) -> np.ndarray:
        """Expected scatter signal (keV per pixel): Ohnesorge source term, two-Gaussian kernel, SPR scaling."""
        st = self.style
        if st.scatter_to_primary == 0 or not self.mask.any():
            return np.zeros_like(primary)
        from scipy.signal import fftconvolve

        t = np.where(open_field > 0, primary / np.maximum(open_field, 1e-300), 1.0)
        source = primary * -np.log(np.clip(t, 1e-12, 1.0))
        pitch = float(np.mean([float(s) for s in self.detector.spacing_mm]))
        reach = math.ceil(3 * max(st.scatter_sigmas_mm) / pitch)
        yy, xx = np.mgrid[-reach:reach + 1, -reach:reach + 1] * pitch
        r2 = xx**2 + yy**2
        kernel = sum(wt * np.exp(-r2 / (2 * s**2)) / (2 * np.pi * s**2)
                     for s, wt in zip(st.scatter_sigmas_mm, st.scatter_weights, strict=True))
        kernel = kernel / kernel.sum()
        spread = np.clip(fftconvolve(source, kernel, mode="same"), 0.0, None)
        region = self.shadow(primary, open_field)
        inside = spread[region].mean()
        if inside <= 0:
            return np.zeros_like(primary)
        return spread * (st.scatter_to_primary * primary[region].mean() / inside)

    def shadow(self, primary: np.ndarray, open_field: np.ndarray) -> np.ndarray:
        """Where the scatter-to-primary ratio is defined: collimated pixels behind the object (primary
        transmission below 0.9); the whole collimated field if there are none."""
        t = np.where(open_field > 0, primary / np.maximum(open_field, 1e-300), 1.0)
        region = self.mask & (t < 0.9)
        return region if region.any() else self.mask

    def frame(self, pose: torch.Tensor, rng: np.random.Generator | int | None = None) -> ExternalFrame:
        """The frame at ``T_cam_ct`` (``(4, 4)`` or ``(1, 4, 4)``); ``rng`` seeds the noise."""
        from scipy.ndimage import gaussian_filter

        st = self.style
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        thick = self.thickness(pose)
        quanta = self.primary_quanta(thick)
        primary = np.einsum("e,ehw->hw", self.energies, quanta)
        open_field = self.open_field()
        scatter = self.scatter(primary, open_field)
        n_primary = quanta.sum(0)
        fallback = float((primary.sum() / n_primary.sum()) if n_primary.sum() > 0 else self.mean_energy_kev())
        mean_e = np.where(n_primary > 0, primary / np.maximum(n_primary, 1e-300), fallback)
        signal = np.einsum("e,ehw->hw", self.energies, rng.poisson(quanta).astype(np.float64))
        signal = signal + rng.poisson(scatter / mean_e) * mean_e
        if st.blur_sigma_px > 0:
            signal = gaussian_filter(signal, st.blur_sigma_px, mode="nearest")
        full_open = np.einsum("e,ehw->hw", self.energies, self.photons)
        gain = st.i0_counts / float(self._centre_value(full_open))  # counts per keV
        counts = signal * gain + st.electronic_noise * rng.standard_normal(signal.shape)
        counts = np.clip(np.round(counts), 0, 2**st.bits - 1).astype(np.float32)
        i0 = float((open_field * gain)[self.mask].mean()) if self.mask.any() else st.i0_counts
        return ExternalFrame(counts, i0, st.i0_counts, primary, scatter, open_field, self.mask, thick)


def geometry_check(volume: Volume, detector: Detector, pose: torch.Tensor,
                   rays: DiffDRRRays | None = None) -> dict[str, float]:
    """DiffDRR's mono line integral against this package's (``diffdrr_ros.core.drr.render``, Siddon).

    Both integrate the same linear-attenuation volume (``volume.to_attenuation()``, 1/mm) at
    ``pose``. Returns the relative RMS difference ``|dd - ours| / |ours|``, the largest
    absolute difference relative to the largest line integral, the Pearson correlation and
    the two images' maxima.
    """
    from diffdrr_ros.core.drr import render

    mu = volume.to_attenuation() if volume.kind != "mu" else volume
    rays = rays or DiffDRRRays(volume, detector)
    dd = rays.integrate(mu.data, pose)
    with torch.no_grad():
        ours = render(mu, pose.to(torch.float64), detector, method="siddon").reshape(dd.shape).double().numpy()
    return {"rel_rms": float(np.linalg.norm(dd - ours) / np.linalg.norm(ours)),
            "max_abs_over_max": float(np.abs(dd - ours).max() / np.abs(ours).max()),
            "corr": float(np.corrcoef(dd.ravel(), ours.ravel())[0, 1]),
            "max_line_integral_ours": float(ours.max()), "max_line_integral_diffdrr": float(dd.max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phantom", default="head")
    ap.add_argument("--ct", default=None)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "external_frame.png")
    args = ap.parse_args()
    from diffdrr_ros.core.geometry import CArmJoints, default_prior, initial_pose
    from diffdrr_ros.core.volume import ct_source, open_ct

    vol = open_ct(ct_source(args.ct, args.phantom))
    det = Detector(args.size, args.size, spacing_mm=(400 / args.size,) * 2, sdd_mm=1020.0, sid_mm=750.0)
    pose = initial_pose(CArmJoints(0.0, 0.0), default_prior(vol.center))
    proj = ExternalProjector(vol, det)
    print("geometry check:", geometry_check(vol, det, pose, proj.rays))
    fr = proj.frame(pose, 0)
    m = proj.shadow(fr.primary, fr.open_field)
    print(f"mean energy {proj.mean_energy_kev():.1f} keV; I0 {fr.i0:.0f} (centre {fr.i0_center:.0f}); "
          f"SPR {fr.scatter[m].mean() / fr.primary[m].mean():.3f}; "
          f"frame {fr.frame[m].min():.0f}..{fr.frame[m].max():.0f}; "
          f"open field inside the collimator {fr.open_field[fr.mask].min() / fr.open_field[fr.mask].max():.3f} "
          "of its maximum")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(args.out, fr.frame, cmap="gray")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
