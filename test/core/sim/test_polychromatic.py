"""Polychromatic, two-material X-ray frames (diffdrr_ros.core.sim.polychromatic)."""

import itertools
import math

import numpy as np
import pytest
import torch

from diffdrr_ros.core.drr import render
from diffdrr_ros.core.geometry import Detector, carm_to_matrix, detector_points
from diffdrr_ros.core.sim import (
    MaterialCT,
    Spectrum,
    XRayStyle,
    collimator_mask,
    decompose_hu,
    mass_attenuation,
    material_line_integrals,
    polychromatic_intensity,
    polychromatic_transmission,
    simulate_polychromatic_xray,
)
from diffdrr_ros.core.sim.polychromatic import BONE_DENSITY, MU_RHO_TABLE
from diffdrr_ros.core.volume import Volume, make_phantom

ZERO3 = torch.zeros(3, dtype=torch.float64)


def _pose(volume):
    return carm_to_matrix(ZERO3, ZERO3, volume.center)


def test_mass_attenuation_table_and_log_log_interpolation():
    # NIST SRD 126 values at the nodes.
    nodes = {("soft", 60.0): 0.2059, ("water", 20.0): 0.8096, ("bone", 60.0): 0.3148, ("bone", 100.0): 0.1855,
             ("aluminium", 60.0): 0.2778, ("al", 30.0): 1.128}
    for (material, e), value in nodes.items():
        assert float(mass_attenuation(material, e)) == pytest.approx(value, rel=1e-9)
    energies = torch.linspace(10.0, 150.0, 400, dtype=torch.float64)
    for material in MU_RHO_TABLE:
        mu = mass_attenuation(material, energies)
        assert bool(torch.all(mu[1:] < mu[:-1]))  # no edges in 10-150 keV: strictly decreasing
        # log-log linear between nodes: the geometric mean energy gives the geometric mean value.
        mid = float(mass_attenuation(material, math.sqrt(60.0 * 80.0)))
        table = dict(zip((10, 15, 20, 30, 40, 50, 60, 80, 100, 150), MU_RHO_TABLE[material], strict=True))
        assert mid == pytest.approx(math.sqrt(table[60] * table[80]), rel=1e-9)
    assert mass_attenuation("bone", torch.tensor([60.0], dtype=torch.float32)).dtype == torch.float32
    with pytest.raises(ValueError):
        mass_attenuation("bone", 9.0)
    with pytest.raises(ValueError):
        mass_attenuation("lead", 60.0)


def test_decompose_hu():
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 100.0, 850.0, 1600.0, 2000.0])
    soft, bone = decompose_hu(hu)
    torch.testing.assert_close(soft[:3], torch.tensor([0.0, 0.0, 1.0]))  # below air, air, water
    torch.testing.assert_close(bone[:4], torch.zeros(4))
    torch.testing.assert_close(soft[4:6], torch.tensor([0.55, 0.0]))  # half-way mix, pure bone
    torch.testing.assert_close(bone[4:6], torch.tensor([0.96, BONE_DENSITY]))
    assert soft[6] == 0 and bone[6] > BONE_DENSITY  # dense bone: all bone, denser than 1.92
    # Continuous in HU, shape and dtype kept, integer input accepted.
    grid = torch.linspace(-1100.0, 3000.0, 4101, dtype=torch.float64)
    s, b = decompose_hu(grid)
    assert s.dtype == torch.float64 and float((s.diff().abs() + b.diff().abs()).max()) < 0.01
    s3, b3 = decompose_hu(torch.zeros(2, 3, 4, dtype=torch.int16))
    assert s3.shape == b3.shape == (2, 3, 4) and s3.dtype == torch.float32
    # Consistent with the HU scale at a CT's effective energy (70 keV): HU back from the densities.
    e = torch.tensor(70.0, dtype=torch.float64)
    mu_w = mass_attenuation("water", e)
    mu = s * mu_w + b * mass_attenuation("bone", e)
    hu_back = 1000 * (mu / mu_w - 1)
    inside = (grid >= -1000) & (grid <= 1600)
    assert float((hu_back[inside] - grid[inside]).abs().max()) < 10.0


def test_spectrum_weights_match_kramers_filtered_by_aluminium():
    spec = Spectrum(kvp=80.0, filtration_mm_al=2.5, bins=6)
    e, w = spec.weights()
    assert e.shape == w.shape == (6,) and float(w.sum()) == pytest.approx(1.0)
    # Independent fine-grid integral of (kVp - E) / E * exp(-mu_Al rho t), NumPy log-log interpolation.
    nodes = np.array([10, 15, 20, 30, 40, 50, 60, 80, 100, 150], dtype=float)
    grid = np.linspace(10.0, 80.0, 70001)
    mu_al = np.exp(np.interp(np.log(grid), np.log(nodes), np.log(MU_RHO_TABLE["aluminium"])))
    phi = (80.0 - grid) / grid * np.exp(-mu_al * 2.699 * 0.25)
    edges = np.linspace(10.0, 80.0, 7)
    ref_w, ref_e = [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (grid >= lo) & (grid <= hi)
        ref_w.append(np.trapezoid(phi[sel], grid[sel]))
        ref_e.append(np.trapezoid(phi[sel] * grid[sel], grid[sel]) / ref_w[-1])
    np.testing.assert_allclose(w.numpy(), np.array(ref_w) / sum(ref_w), rtol=1e-3)
    np.testing.assert_allclose(e.numpy(), ref_e, rtol=1e-4)
    assert 35.0 < spec.mean_energy() < 50.0  # 80 kVp, 2.5 mm Al: mean energy about 40 keV
    assert Spectrum(filtration_mm_al=6.0).mean_energy() > spec.mean_energy()  # filtration hardens the beam
    for bad in ({"kvp": 200.0}, {"bins": 0}, {"filtration_mm_al": -1.0}, {"min_kev": 5.0}):
        with pytest.raises(ValueError):
            Spectrum(**bad)


def test_transmission_is_the_per_energy_sum():
    spec = Spectrum(kvp=90.0, filtration_mm_al=3.0, bins=5)
    a_soft = torch.tensor([[0.0, 5.0, 20.0], [2.0, 0.0, 10.0]], dtype=torch.float64)
    a_bone = torch.tensor([[0.0, 0.0, 1.0], [3.0, 2.5, 0.5]], dtype=torch.float64)
    got = polychromatic_transmission(a_soft, a_bone, spec)
    e, w = spec.weights()
    mu_s = [float(mass_attenuation("soft", x)) for x in e]
    mu_b = [float(mass_attenuation("bone", x)) for x in e]
    norm = sum(float(wi * ei) for wi, ei in zip(w, e, strict=True))
    for idx in np.ndindex(*a_soft.shape):
        s, b = float(a_soft[idx]), float(a_bone[idx])
        ref = sum(float(w[k] * e[k]) * math.exp(-(mu_s[k] * s + mu_b[k] * b)) for k in range(len(e))) / norm
        assert float(got[idx]) == pytest.approx(ref, rel=1e-12)
    assert float(got[0, 0]) == pytest.approx(1.0)  # an unattenuated ray
    # The energy weighting matters: a photon-counting sum (weights w only) would differ.
    counting = sum(float(w[k]) * math.exp(-(mu_s[k] * 20.0 + mu_b[k] * 1.0)) for k in range(len(e)))
    assert abs(counting - float(got[0, 2])) > 1e-3 * float(got[0, 2])


def test_beam_hardening_is_real_and_one_bin_is_beer_lambert():
    t_cm = torch.linspace(0.25, 4.0, 16, dtype=torch.float64)  # bone thickness
    a_bone = BONE_DENSITY * t_cm
    zero = torch.zeros_like(t_cm)
    depth = -torch.log(polychromatic_transmission(zero, a_bone, Spectrum()))
    mu_eff = depth / t_cm
    assert bool(torch.all(mu_eff.diff() < 0))  # effective attenuation per cm falls with thickness
    assert bool(torch.all(depth.diff(n=2) < 0))  # log-intensity concave in thickness
    assert float(mu_eff[0] / mu_eff[-1]) > 1.2  # strongly, for bone at 80 kVp
    # The effective energy depends on the material: bone hardens the beam more than water does.
    soft_depth = -torch.log(polychromatic_transmission(a_bone * 3, zero, Spectrum()))
    assert float((soft_depth / (a_bone * 3))[0] / (soft_depth / (a_bone * 3))[-1]) < float(mu_eff[0] / mu_eff[-1])
    # One bin: exactly Beer-Lambert at the bin's energy, linear in thickness.
    mono = Spectrum(bins=1)
    (e,), _ = mono.weights()
    a_soft = 2.0 * t_cm
    got = polychromatic_transmission(a_soft, a_bone, mono)
    ref = torch.exp(-(mass_attenuation("soft", e) * a_soft + mass_attenuation("bone", e) * a_bone))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    assert float(e) == pytest.approx(Spectrum().mean_energy(), rel=1e-5)


def test_two_material_line_integrals_match_analytic_chords():
    """A bone sphere (1600 HU: 1.92 g/cm^3) inside a water sphere (0 HU), 1 mm voxels."""
    n, r_water, r_bone = 71, 30.0, 12.0
    ax = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")
    r = torch.sqrt(x**2 + y**2 + z**2)
    hu = torch.full((n, n, n), -1000.0, dtype=torch.float64)
    hu[r <= r_water] = 0.0
    hu[r <= r_bone] = 1600.0
    vol = Volume.from_array(hu.float(), 1.0, kind="hu")
    mct = MaterialCT.from_hu(vol)
    assert MaterialCT.from_hu(vol) is mct and MaterialCT.from_hu(vol, cache=False) is not mct
    det = Detector(33, 33, spacing_mm=(3.0, 3.0), sdd_mm=1020.0, sid_mm=750.0)
    a_soft, a_bone = material_line_integrals(mct, _pose(vol)[None], det)
    assert a_soft.shape == a_bone.shape == (1, 33, 33)
    # Analytic chords: distance of each source -> pixel line from the sphere centre (the isocentre).
    src, pix = detector_points(det, dtype=torch.float64)
    d = torch.linalg.cross(pix - src, -src.expand_as(pix), dim=-1).norm(dim=-1) / (pix - src).norm(dim=-1)

    def chord(radius):
        return 2 * torch.sqrt((radius**2 - d**2).clamp_min(0))

    soft_ref = (chord(r_water) - chord(r_bone)) / 10 * 1.0  # g/cm^2
    bone_ref = chord(r_bone) / 10 * BONE_DENSITY
    inner = d < r_bone - 2  # rays well inside both spheres (no grazing chords)
    assert int(inner.sum()) > 50
    # Voxelisation (staircase spheres of 1 mm voxels): within 2.5 mm of material per ray, 1.2 mm on average.
    for got, ref, rho in ((a_soft[0], soft_ref, 1.0), (a_bone[0], bone_ref, BONE_DENSITY)):
        err = (got - ref)[inner] / rho  # cm of material
        assert float(err.abs().max()) < 0.25 and float(err.abs().mean()) < 0.12 and abs(float(err.mean())) < 0.06
    # The central ray crosses whole voxels: 36 of water (3.6 g/cm^2) and 25 of bone (2.5 cm x 1.92).
    torch.testing.assert_close(a_soft[0, 16, 16].item(), 3.6, atol=1e-6, rtol=0)
    torch.testing.assert_close(a_bone[0, 16, 16].item(), 2.5 * BONE_DENSITY, atol=1e-6, rtol=0)
    # Rays between the spheres see only water; rays beyond both see nothing.
    ring = (d > r_bone + 2) & (d < r_water - 2)
    assert float(a_bone[0][ring].abs().max()) == 0.0 and float((a_soft[0] - soft_ref)[ring].abs().max()) < 0.2
    assert float(a_soft[0][d > r_water + 2].abs().max()) == 0.0
    with pytest.raises(ValueError):
        MaterialCT.from_hu(vol.with_data(vol.data, kind="raw"))


def test_frame_conventions_and_determinism():
    vol = make_phantom("head_small")
    mct = MaterialCT.from_hu(vol)
    det = Detector(64, 64, spacing_mm=(6.25, 6.25), sdd_mm=1020.0, sid_mm=750.0)
    pose = _pose(vol)
    style = XRayStyle.mismatched()
    frame = simulate_polychromatic_xray(mct, pose, det, style, Spectrum(), torch.Generator().manual_seed(7))
    again = simulate_polychromatic_xray(mct, pose[None], det, style, Spectrum(), torch.Generator().manual_seed(7))
    other = simulate_polychromatic_xray(mct, pose, det, style, Spectrum(), torch.Generator().manual_seed(8))
    assert frame.dtype == np.uint16 and frame.shape == (64, 64)
    np.testing.assert_array_equal(frame, again)
    assert np.any(frame != other)
    inside = collimator_mask(64, 64, style.collimator_radius)
    assert np.all(frame[~inside] == 0) and int(frame.max()) <= 4095 and frame[inside].min() < frame[inside].max()
    # Noise-free, no scatter/heel/blur/collimator: the frame is i0 x the primary, air is exactly i0.
    quiet = XRayStyle(i0=3000.0, poisson=False, gaussian_noise=0.0, blur_sigma_px=0.0, collimator_radius=0.0,
                      bits=16, beam_hardening=0.5)  # beam_hardening is ignored: the spectrum is the hardening
    clean = simulate_polychromatic_xray(mct, pose, det, quiet)
    primary = polychromatic_intensity(mct, pose, det, Spectrum(), i0=3000.0)
    np.testing.assert_array_equal(clean, np.round(primary.numpy()).astype(np.uint16))
    assert clean[0, 0] == 3000 and clean[32, 32] < 1000
    with pytest.raises(ValueError):
        simulate_polychromatic_xray(mct, pose.expand(2, 4, 4), det, quiet)
    # Not the DRR's model: the frame's optical depth is no fixed multiple of the DRR's line integral.
    drr = render(vol.to_attenuation(), pose, det)
    depth = -torch.log(primary / 3000.0)
    ratio = (depth / drr)[drr > 0.5]
    assert float(ratio.max() / ratio.min()) > 1.3
