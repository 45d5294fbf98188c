"""The polychromatic, two-material DRR (diffdrr_ros.core.drr.poly): chords, spectrum, gradients, mono unchanged."""

from dataclasses import replace

import pytest
import torch

from diffdrr_ros.core.drr import RenderSettings, render
from diffdrr_ros.core.drr.jacobian import render_with_pose_jacobian, step_pose
from diffdrr_ros.core.drr.poly import detected_intensity, scatter_blur
from diffdrr_ros.core.geometry import Detector, carm_to_matrix, detector_points
from diffdrr_ros.core.physics import PolyModel, Spectrum, mass_attenuation
from diffdrr_ros.core.registration.registrar import coarsen_to_footprint
from diffdrr_ros.core.sim import MaterialCT, polychromatic_intensity
from diffdrr_ros.core.volume import MaterialVolume, Volume, make_phantom

D = torch.float64
ZERO3 = torch.zeros(3, dtype=D)
POLY = PolyModel.from_spectrum(Spectrum(kvp=80.0, filtration_mm_al=2.5, bins=6))


# ------------------------------------------------------------------ two-material chords


def _spheres(n=96, voxel_mm=0.5, r_water=20.0, r_bone=8.0):
    """A cortical-bone sphere inside a water sphere, both centred at the grid centre (0, 0, 0).

    Partial-volume voxels: the fraction of a voxel inside a sphere is ``clamp(1/2 - (|x| - r) / h)``
    (the signed distance over the voxel size, exact to second order for a surface this smooth).
    """
    ax = (torch.arange(n, dtype=D) - (n - 1) / 2) * voxel_mm
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")
    dist = (x * x + y * y + z * z).sqrt()
    inside_water = (0.5 - (dist - r_water) / voxel_mm).clamp(0, 1)
    inside_bone = (0.5 - (dist - r_bone) / voxel_mm).clamp(0, 1)
    soft = 1.0 * (inside_water - inside_bone)  # g/cm^3: water where there is no bone
    bone = 1.92 * inside_bone
    affine = Volume.from_array(torch.zeros(1, 1, 1), voxel_mm).affine.clone()
    affine[:3, 3] = -(n - 1) / 2 * voxel_mm
    return MaterialVolume(torch.stack([soft, bone]).to(torch.float32), affine, ("water", "cortical_bone"))


def _chord(source, pixels, r):
    """Analytic chord (mm) of the rays source -> pixels through a sphere of radius ``r`` at the origin."""
    u = pixels - source
    u = u / u.norm(dim=-1, keepdim=True)
    d2 = (source * source).sum() - (u @ source) ** 2  # squared distance of the centre from each ray
    return 2 * (r * r - d2).clamp_min(0).sqrt(), d2.sqrt()


def test_two_material_line_integrals_match_analytic_chords():
    """Siddon through partial-volume voxels against the analytic chords ``2 sqrt(r^2 - d^2)``.

    What is left is the voxelisation (a staircase of 0.25 mm voxels for a smooth surface): each of
    the ray's surface crossings is off by a fraction of a voxel, so a chord within one voxel (0.25 mm)
    and, on average over the rays, within a tenth of one per sphere crossed (measured: soft tissue
    0.19 / 0.026 mm max / mean, bone 0.11 / 0.002 mm). The exact Siddon sum on a voxelised
    sphere is :func:`test_voxelised_spheres_from_hu_exact_chord_through_the_centre`.
    """
    h, r_w, r_b = 0.25, 10.0, 4.0
    vol = _spheres(96, h, r_w, r_b)
    det = Detector(25, 25, spacing_mm=(1.4, 1.4), sdd_mm=1000.0, sid_mm=700.0)  # 1 mm at the isocentre
    pose = carm_to_matrix(torch.tensor([0.3, 0.2, 0.0], dtype=D), ZERO3, ZERO3)  # oblique to the grid
    a = torch.stack([render(ch, pose, det, RenderSettings()) for ch in vol.channels]) / 10  # g/cm^2
    source, pixels = detector_points(det, dtype=D)
    # Concentric spheres at the CT origin, which this pose puts at the isocentre (camera origin).
    chord_w, d = _chord(source, pixels, r_w)
    chord_b, _ = _chord(source, pixels, r_b)
    want_soft, want_bone = 1.0 * (chord_w - chord_b) / 10, 1.92 * chord_b / 10
    assert float(d.min()) < 0.1 and float(d.max()) > r_w + 5  # rays through the centre, off centre, outside
    assert int(((d > 0.5) & (d < r_b)).sum()) > 20  # through the bone off centre
    err_soft = (a[0].to(D) - want_soft).abs() / 0.1  # as mm of chord (1 g/cm^3 water: 0.1 g/cm^2 per mm)
    err_bone = (a[1].to(D) - want_bone).abs() / 0.192
    # A ray grazing a surface (d within ~4 voxels of r) sees the staircase over a long path: excluded from the max.
    away = ((d - r_w).abs() > 4 * h) & ((d - r_b).abs() > 4 * h)
    assert float(err_soft[away].max()) < h and float(err_bone[away].max()) < h
    # On average a tenth of a voxel per sphere crossed (the soft tissue's chord has both spheres' surfaces).
    assert float(err_soft[away].mean()) < 0.2 * h and float(err_bone[away].mean()) < 0.1 * h
    # The polychromatic DRR of the same volume is -log of the spectrum combination of those thicknesses.
    poly = render(vol, pose, det, RenderSettings(poly=PolyModel.from_spectrum(materials=("soft", "bone"))))
    e, w = Spectrum().weights()
    direct = sum(wk * ek * torch.exp(-(mass_attenuation("soft", ek) * want_soft + mass_attenuation("bone", ek)
                                       * want_bone)) for ek, wk in zip(e, w, strict=True)) / float((w * e).sum())
    assert float((poly.to(D) + torch.log(direct)).abs()[away].max()) < 0.01


def test_voxelised_spheres_from_hu_exact_chord_through_the_centre():
    """Axis-aligned central ray through a centre-in voxelised phantom: Siddon's sum is exactly the voxel count."""
    n, h = 41, 1.0
    ax = (torch.arange(n, dtype=D) - (n - 1) / 2) * h
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")
    dist = (x * x + y * y + z * z).sqrt()
    hu = torch.full((n, n, n), -1000.0)
    hu[dist <= 15.0] = 0.0
    hu[dist <= 6.0] = 1600.0
    ct = Volume.from_array(hu, h)
    vol = MaterialVolume.from_hu(ct)
    det = Detector(1, 1, spacing_mm=(0.1, 0.1), sdd_mm=1000.0, sid_mm=500.0)
    a = torch.stack([render(ch, carm_to_matrix(ZERO3, ZERO3, ct.center), det) for ch in vol.channels]) / 10
    line = dist[(n - 1) // 2, (n - 1) // 2]  # the central ray runs along the grid's third axis through voxel centres
    n_bone = int((line <= 6.0).sum())
    n_soft = int((line <= 15.0).sum()) - n_bone
    torch.testing.assert_close(a.flatten().to(D), torch.tensor([n_soft * h / 10, 1.92 * n_bone * h / 10], dtype=D),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ spectrum combination and the simulator


def _head(name="head_tiny"):
    ct = make_phantom(name)
    return ct, MaterialVolume.from_hu(ct)


def test_poly_render_is_the_simulators_transmission_and_a_per_energy_sum():
    ct, vol = _head()
    det = Detector(12, 14, spacing_mm=(24.0, 24.0), sdd_mm=1020.0, sid_mm=750.0)
    poses = torch.stack([carm_to_matrix(torch.tensor(a, dtype=D), torch.tensor([2.0, -3.0, 4.0], dtype=D), ct.center)
                         for a in ([0.1, 0.4, -0.05], [0.0, 1.2, 0.3])])
    spec = Spectrum(kvp=100.0, filtration_mm_al=3.0, bins=5)
    out = render(vol, poses, det, RenderSettings(poly=PolyModel.from_spectrum(spec)))
    assert out.shape == (2, *det.shape) and out.dtype == D
    sim = torch.stack([polychromatic_intensity(MaterialCT.from_hu(ct), p, det, spec) for p in poses])
    # float32 densities: the table and decompose_hu round differently in the last bit.
    torch.testing.assert_close(out, -torch.log(sim), atol=1e-6, rtol=1e-6)
    a = torch.stack([render(ch, poses, det) for ch in vol.channels], 1) / 10  # B C H W
    direct = torch.zeros_like(out)
    e, w = spec.weights()
    for ek, wk in zip(e, w, strict=True):  # a loop over energies of the weighted Beer-Lambert
        mu_s, mu_b = mass_attenuation("soft", ek), mass_attenuation("bone", ek)
        direct += wk * ek * torch.exp(-(mu_s * a[:, 0] + mu_b * a[:, 1]))
    torch.testing.assert_close(out, -torch.log(direct / float((w * e).sum())), atol=1e-10, rtol=1e-10)
    # A (4, 4) pose gives one (H, W) image; bins=1 is Beer-Lambert at the mean energy.
    single = render(vol, poses[0], det, RenderSettings(poly=PolyModel.from_spectrum(spec)))
    torch.testing.assert_close(single, out[0])
    f32 = render(vol, poses[0].float(), det, RenderSettings(poly=PolyModel.from_spectrum(spec)))
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32, out[0].float(), atol=1e-4, rtol=1e-4)
    mono_e = Spectrum(kvp=100.0, filtration_mm_al=3.0, bins=1)
    one = render(vol, poses[0], det, RenderSettings(poly=PolyModel.from_spectrum(mono_e)))
    eff = mono_e.weights()[0]
    torch.testing.assert_close(one, mass_attenuation("soft", eff)[0] * a[0, 0] + mass_attenuation("bone", eff)[0]
                               * a[0, 1], atol=1e-10, rtol=1e-10)


def test_scatter_and_heel_on_the_intensity():
    model = replace(POLY, scatter_to_primary=0.3, heel_gain=0.1)
    a = torch.rand(1, 2, 40, 30, dtype=D, generator=torch.Generator().manual_seed(1)) * 5
    primary, _ = detected_intensity(POLY, a)
    i, _ = detected_intensity(model, a)
    rows = torch.linspace(-0.5, 0.5, 40, dtype=D)[:, None]
    want = (primary + 0.3 * scatter_blur(primary, 0.15 * 40)) * (1 + 0.1 * rows)
    torch.testing.assert_close(i, want)
    # The scatter kernel is a normalised Gaussian: a constant image stays constant.
    torch.testing.assert_close(scatter_blur(torch.ones(1, 40, 30, dtype=D), 9.0), torch.ones(1, 40, 30, dtype=D))


def test_material_volume_grid_operations_and_errors():
    ct, vol = _head()
    assert vol.shape == ct.shape and vol.materials == ("soft", "bone")
    torch.testing.assert_close(vol.center, ct.center)
    coarse = coarsen_to_footprint(vol, 15.0)
    assert coarse.shape == (16, 16, 16) and coarse.data.shape == (2, 16, 16, 16)
    torch.testing.assert_close(coarse.data[1], vol.channels[1].box_average([2, 2, 2]).data)
    # Block averages conserve mass: the coarse grid holds the same grams of bone.
    assert float(coarse.data[1].sum()) * 8 == pytest.approx(float(vol.data[1].sum()), rel=1e-5)
    torch.testing.assert_close(coarse.affine, ct.box_average([2, 2, 2]).affine)
    assert vol.downsample(2).shape == (16, 16, 16) and vol.to("cpu", D).dtype == D
    assert MaterialVolume.from_hu(ct) is vol  # cached per CT
    det = Detector(4, 4, spacing_mm=(24.0, 24.0), sdd_mm=1020.0, sid_mm=750.0)
    pose = carm_to_matrix(ZERO3, ZERO3, ct.center)
    with pytest.raises(ValueError, match="poly"):
        render(vol, pose, det)  # a material volume needs the model
    with pytest.raises(ValueError, match="material volume"):
        render(ct.to_attenuation(), pose, det, RenderSettings(poly=POLY))
    with pytest.raises(ValueError, match="materials"):
        render(MaterialVolume(vol.data[:1], vol.affine, ("soft",)), pose, det, RenderSettings(poly=POLY))
    with pytest.raises(ValueError, match="HU"):
        MaterialVolume.from_hu(ct.to_attenuation())


# ------------------------------------------------------------------ gradients


DET = Detector(10, 12, spacing_mm=(30.0, 30.0), sdd_mm=1020.0, sid_mm=750.0)
GRAD_SETTINGS = {
    "siddon": RenderSettings(method="siddon", poly=POLY),
    "trilinear": RenderSettings(method="trilinear", n_samples=40, poly=POLY),
    "siddon_scatter_heel_blur": RenderSettings(method="siddon", blur_sigma_px=0.8,
                                               poly=replace(POLY, scatter_to_primary=0.2, heel_gain=0.1)),
}


def _scene():
    ct, vol = _head()
    pose = carm_to_matrix(torch.tensor([0.1, 0.4, -0.05], dtype=D), torch.tensor([3.0, -2.0, 5.0], dtype=D),
                          ct.center)
    return vol, pose, pose[:3, :3] @ ct.center.to(D) + pose[:3, 3]


@pytest.mark.parametrize("name", sorted(GRAD_SETTINGS))
def test_poly_jacobian_equals_autograd_and_finite_differences(name):
    vol, pose, pivot = _scene()
    settings = GRAD_SETTINGS[name]
    poses = torch.stack([pose, step_pose(pose, pivot, torch.tensor([[4.0, -3.0, 20.0, 0.05, -0.1, 0.02]], dtype=D))[0]])
    pivots = torch.stack([pivot, pivot + torch.tensor([4.0, -3.0, 20.0], dtype=D)])
    img, jac = render_with_pose_jacobian(vol, poses, DET, pivots, settings)  # batched: two poses
    assert img.shape == (2, *DET.shape) and jac.shape == (2, *DET.shape, 6)
    torch.testing.assert_close(img, render(vol, poses, DET, settings), atol=1e-9, rtol=1e-9)
    alone, none = render_with_pose_jacobian(vol, poses, DET, pivots, settings, want_jacobian=False)
    assert none is None
    torch.testing.assert_close(alone, img, atol=1e-12, rtol=1e-12)
    for b in range(2):
        # Autograd through the kernels' pose path, three random projections of the H x W x 6 Jacobian.
        for seed in range(3):
            w = torch.randn(DET.shape, dtype=D, generator=torch.Generator().manual_seed(seed))
            xi = torch.zeros(1, 6, dtype=D, requires_grad=True)
            (w * render(vol, step_pose(poses[b], pivots[b], xi), DET, settings)[0]).sum().backward()
            torch.testing.assert_close((w[..., None] * jac[b]).sum((0, 1)), xi.grad[0], atol=1e-9, rtol=1e-7)
        # Central differences for every pose parameter (small steps: Siddon is piecewise smooth).
        for i, h in enumerate([1e-4] * 3 + [1e-6] * 3):
            xi = torch.zeros(2, 6, dtype=D)
            xi[0, i], xi[1, i] = h, -h
            plus, minus = render(vol, step_pose(poses[b], pivots[b], xi), DET, settings)
            fd = (plus - minus) / (2 * h)
            assert float(fd.abs().max()) > 0
            assert float((jac[b, ..., i] - fd).abs().max()) < 2e-3 * float(fd.abs().max()), (b, i)


@pytest.mark.parametrize("reorder", [True, False])
def test_the_two_channel_walk_equals_one_render_per_channel(reorder):
    """The fast path (:mod:`.fused_pair`: both channels in one Siddon walk) against its reference, the
    per-channel renders: images, autograd pose gradients and per-pixel Jacobians, batched."""
    from diffdrr_ros.core.drr.jacobian import _fused_cpu_pair, _kernel_pass
    from diffdrr_ros.core.drr.poly import mass_thicknesses, pair_path

    vol, pose, pivot = _scene()
    settings = RenderSettings(poly=POLY, reorder=reorder)
    assert pair_path(vol, settings, DET) and not pair_path(vol, replace(settings, method="trilinear"), DET)
    poses = torch.stack([pose, step_pose(pose, pivot, torch.tensor([[4.0, -3.0, 20.0, 0.3, -0.6, 0.2]], dtype=D))[0]])
    pivots = torch.stack([pivot, pivot + torch.tensor([4.0, -3.0, 20.0], dtype=D)])
    w = torch.randn(2, 2, *DET.shape, dtype=D, generator=torch.Generator().manual_seed(3))
    images, grads = [], []
    for fast in (True, False):
        xi = torch.zeros(2, 6, dtype=D, requires_grad=True)
        moved = torch.stack([step_pose(poses[b], pivots[b], xi[b : b + 1])[0] for b in range(2)])
        a = mass_thicknesses(vol, moved, DET, settings, fast=fast)
        (w * a).sum().backward()
        images.append(a.detach())
        grads.append(xi.grad)
    assert images[0].shape == (2, 2, *DET.shape) and float(images[0][:, 1].max()) > 0  # bone seen
    torch.testing.assert_close(images[0], images[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)
    a, da = _fused_cpu_pair(vol, poses, DET, pivots, settings, True)
    for c, ch in enumerate(vol.channels):
        img_c, jac_c = _kernel_pass(ch, poses, DET, pivots, settings, True)
        torch.testing.assert_close(a[:, c], img_c, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(da[:, c], jac_c, atol=1e-10, rtol=1e-10)
    alone, none = _fused_cpu_pair(vol, poses, DET, pivots, settings, False)
    assert none is None
    torch.testing.assert_close(alone, a, atol=0, rtol=0)


def test_poly_render_on_the_torch_reference_backend_and_its_gradient():
    """The readable torch kernels (the path of other devices) give the same poly DRR and pose gradient."""
    vol, pose, pivot = _scene()
    fast, ref = RenderSettings(poly=POLY), RenderSettings(poly=POLY, backend="torch")
    torch.testing.assert_close(render(vol, pose, DET, ref), render(vol, pose, DET, fast), atol=1e-9, rtol=1e-9)
    grads = []
    for settings in (fast, ref):
        xi = torch.zeros(1, 6, dtype=D, requires_grad=True)
        render(vol, step_pose(pose, pivot, xi), DET, settings).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-8, rtol=1e-6)


def test_poly_jacobian_is_the_mu_eff_weighted_sum_of_the_material_jacobians():
    vol, pose, pivot = _scene()
    mono = RenderSettings(method="siddon")
    parts = [render_with_pose_jacobian(ch, pose[None], DET, pivot[None], mono) for ch in vol.channels]
    a = torch.stack([p[0] for p in parts], 1) / 10
    from diffdrr_ros.core.physics import primary_transmission

    _, mu_eff = primary_transmission(POLY, a, want_mu_eff=True)
    want = sum(mu_eff[:, c, ..., None] * parts[c][1] / 10 for c in range(2))
    _, jac = render_with_pose_jacobian(vol, pose[None], DET, pivot[None], RenderSettings(poly=POLY))
    torch.testing.assert_close(jac, want, atol=1e-12, rtol=1e-10)


def test_mono_render_unchanged_by_the_poly_field():
    ct, _ = _head()
    mu = ct.to_attenuation()
    pose = carm_to_matrix(torch.tensor([0.1, 0.4, -0.05], dtype=D), ZERO3, ct.center)
    assert RenderSettings().poly is None
    torch.testing.assert_close(render(mu, pose, DET, RenderSettings(poly=None)), render(mu, pose, DET), rtol=0, atol=0)


def test_material_volume_from_a_users_table():
    from diffdrr_ros.core.physics import MaterialTable

    ct, default = _head()
    table = MaterialTable((-1000.0, 0.0, 2000.0), {"soft": (0.0, 1.0, 1.0), "bone": (0.0, 0.0, 2.0)})
    vol = MaterialVolume.from_hu(ct, table)
    assert vol is not default and vol is MaterialVolume.from_hu(ct, MaterialTable(table.hu, dict(table.densities)))
    torch.testing.assert_close(vol.data, table(ct.data))
    assert float((vol.data - default.data).abs().max()) > 0.1  # another mapping, other densities


def test_the_numba_primary_equals_the_torch_reference():
    from diffdrr_ros.core.drr.fused_pair import primary_transmission_cpu
    from diffdrr_ros.core.physics import primary_transmission

    a = (torch.rand(2, 2, 5, 7, dtype=D, generator=torch.Generator().manual_seed(4)) * 8).requires_grad_(True)
    t, mu_eff = primary_transmission_cpu(POLY.mu_rho, POLY.detector_weights, a)
    t_ref, mu_ref = primary_transmission(POLY, a, want_mu_eff=True)
    torch.testing.assert_close(t, t_ref, atol=0, rtol=1e-13)
    torch.testing.assert_close(mu_eff, mu_ref.detach(), atol=0, rtol=1e-12)
    w = torch.randn(2, 5, 7, dtype=D, generator=torch.Generator().manual_seed(5))
    (g,) = torch.autograd.grad((w * t).sum(), a)
    (g_ref,) = torch.autograd.grad((w * t_ref).sum(), a)
    torch.testing.assert_close(g, g_ref, atol=1e-14, rtol=1e-12)
