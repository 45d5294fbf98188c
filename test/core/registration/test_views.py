"""One pose from several views: K = 1 is the single-view path, the joint gradient is right, depth is resolved."""

import math

import pytest
import torch

from diffdrr_ros.core.drr import render
from diffdrr_ros.core.geometry import CArmJoints, Detector, camera_motion, default_prior, initial_pose
from diffdrr_ros.core.geometry.rotations import axis_angle_to_matrix, make_transform
from diffdrr_ros.core.metrics import inplane_depth_error, zncc
from diffdrr_ros.core.registration import (
    Registrar,
    RegistrationConfig,
    View,
    ViewStack,
    pose_covariance,
    prepare_fixed,
    view_from_joints,
)
from diffdrr_ros.core.sim import MaterialCT, Spectrum, XRayStyle, simulate_polychromatic_xray
from diffdrr_ros.core.volume import make_phantom

D = torch.float64
DET = Detector(32, 32, spacing_mm=(12.0, 12.0), sdd_mm=1020.0, sid_mm=750.0)
FAST = dict(pyramid=(2, 1), init_search=False, max_iterations=60, patience=10)


def test_a_duplicate_view_gives_the_single_view_result():
    reg = Registrar(make_phantom("head_tiny"), DET, RegistrationConfig(**FAST), device="cpu")
    truth = reg.pose_from_carm([0.1, 0.2, 0.0], [3.0, -2.0, 4.0])
    fixed = reg.render(truth[None])[0]
    init = reg.pose_from_carm([0.15, 0.15, 0.05], [8.0, 2.0, -3.0])
    one = reg.register(fixed, init, truth=truth)
    two = reg.register(fixed, init, truth=truth, views=[View(fixed, torch.eye(4, dtype=D))])
    assert float(reg.mtre(two.pose, one.pose)) < 1e-6
    assert two.iterations == one.iterations and len(two.view_zncc) == 2 and len(one.view_zncc) == 1
    assert two.view_zncc[0] == pytest.approx(one.zncc, abs=1e-9)


def test_joint_loss_gradient_matches_finite_differences():
    vol = make_phantom("head_tiny").to_attenuation()
    a, b = CArmJoints(0.0, 0.1), CArmJoints(math.radians(40), 0.1, table_mm=(0.0, 0.0, 10.0))
    prior = default_prior(vol.center)
    fixed = torch.stack([render(vol, initial_pose(j, prior), DET) for j in (a, b)])
    stack = ViewStack(fixed, None, torch.stack([torch.eye(4, dtype=D), camera_motion(a, b)]))
    start = make_transform(axis_angle_to_matrix(torch.tensor([0.02, -0.03, 0.01], dtype=D)),
                           torch.tensor([2.0, -1.0, 3.0], dtype=D)) @ initial_pose(a, prior)

    def loss(xi: torch.Tensor) -> torch.Tensor:
        pose = make_transform(axis_angle_to_matrix(xi[3:]), xi[:3]) @ start
        drr = render(vol, stack.poses(pose[None]), DET, method="trilinear", n_samples=48)
        return -stack.similarity(zncc, drr, 1)[0]

    xi = torch.zeros(6, dtype=D, requires_grad=True)
    loss(xi).backward()
    steps = [0.005] * 3 + [1e-5] * 3  # converged: the trilinear image is smooth at this scale
    for i, h in enumerate(steps):
        e = torch.zeros(6, dtype=D)
        e[i] = h
        with torch.no_grad():
            fd = (loss(e) - loss(-e)) / (2 * h)
        assert float(xi.grad[i]) == pytest.approx(float(fd), rel=1e-2, abs=1e-6), i


@pytest.fixture(scope="module")
def poly_scene():
    """Frames from the polychromatic two-material simulator: physics the DRR does not share."""
    vol = make_phantom("head_small")
    det = Detector(64, 64, spacing_mm=(6.25, 6.25), sdd_mm=1020.0, sid_mm=750.0)
    reg = Registrar(vol, det, RegistrationConfig(similarity="gncc", compare="intensity", init_search=False,
                                                 drr_blur_sigma_px=0.7), device="cpu")
    table_ct = make_transform(axis_angle_to_matrix(torch.tensor([0.03, -0.02, 0.04], dtype=D)),
                              torch.tensor([5.0, -4.0, 6.0], dtype=D)) @ default_prior(reg.center)
    style = XRayStyle(scatter_to_primary=0.25, heel_gain=0.15, blur_sigma_px=0.7, collimator_radius=0.0)
    mct = MaterialCT.from_hu(vol)
    joints = [CArmJoints(0.0, math.radians(5)), CArmJoints(math.radians(30), math.radians(5))]
    frames = [prepare_fixed(simulate_polychromatic_xray(mct, initial_pose(j, table_ct), det, style, Spectrum(),
                                                        torch.Generator().manual_seed(i)),
                            log_transform=True, i0=style.i0) for i, j in enumerate(joints)]
    truth = initial_pose(joints[0], table_ct)
    single = reg.register(frames[0], initial_pose(joints[0], default_prior(reg.center)), truth=truth)
    return reg, joints, frames, truth, single


def test_a_second_view_resolves_the_depth_one_view_gets_wrong(poly_scene):
    reg, joints, frames, truth, single = poly_scene
    joint = reg.register(frames[0], single.pose, truth=truth, views=[view_from_joints(frames[1], joints[1], joints[0])])
    one, two = inplane_depth_error(single.pose, truth, reg.targets), inplane_depth_error(joint.pose, truth, reg.targets)
    assert float(one.depth_mm) > 2.0 and abs(float(one.depth_bias_mm)) > 2.0  # a bias, one sign on every target
    assert float(two.depth_mm) < 0.5 * float(one.depth_mm)
    assert joint.mtre_mm < 0.6 * single.mtre_mm and float(two.inplane_mm) < 1.0


def test_covariance_says_one_view_leaves_the_depth_unknown_and_two_views_resolve_it(poly_scene):
    reg, joints, frames, _, single = poly_scene
    second = view_from_joints(frames[1], joints[1], joints[0])
    same_angle = View(frames[0], torch.eye(4, dtype=D))
    kw = dict(compare="intensity", scale_uncertainty=0.003)
    one = pose_covariance(reg, frames[0], single.pose, **kw).target_sigma_mm(reg.targets)
    two = pose_covariance(reg, frames[0], single.pose, views=[second], **kw).target_sigma_mm(reg.targets)
    dup = pose_covariance(reg, frames[0], single.pose, views=[same_angle], **kw).target_sigma_mm(reg.targets)
    assert float(one[2]) > 2.0 > float(one[:2].max())  # along the beam: 0.3 % of size is 2.3 mm of depth
    assert float(two[2]) < 0.6 * float(one[2])  # 30 deg: the bias mostly cancels (measured: 3.3 -> 1.1 mm)
    assert float(dup[2]) > 1.5  # the same angle again adds no depth direction
    white = pose_covariance(reg, frames[0], single.pose, compare="intensity", correlated=False)
    assert float(white.target_sigma_mm(reg.targets)[2]) < float(one[2]) / 3


def test_a_view_the_patient_may_have_moved_since_constrains_less(poly_scene):
    """Two views 30 deg apart turn a patient motion m between them into ~m / sin(30 deg) of depth:
    the joint fit weighs the views by their noise, so the motion it is told of enters as a sandwich."""
    reg, joints, frames, _, single = poly_scene
    second = view_from_joints(frames[1], joints[1], joints[0])
    kw = dict(compare="intensity", scale_uncertainty=0.0)
    one = float(pose_covariance(reg, frames[0], single.pose, **kw).target_sigma_mm(reg.targets)[2])

    def depth(motion):
        cov = pose_covariance(reg, frames[0], single.pose, views=[second], view_motion_mm=[motion], **kw)
        return float(cov.target_sigma_mm(reg.targets)[2]), cov

    still, base = depth(0.0)
    moved, cov = depth(1.0)
    assert still < one and moved > still + 0.5  # 1 mm of motion: ~1-2 mm more depth at 30 deg
    assert depth(5.0)[0] > one  # the fit still uses the moved view: worse than one view alone
    torch.testing.assert_close(cov.statistical, base.statistical)  # the steps' scale: noise only


def test_a_view_on_another_detector_biplane():
    """A biplane's second panel has its own intrinsics: rendered in its own batch, same pose found."""
    reg = Registrar(make_phantom("head_tiny"), DET, RegistrationConfig(**FAST), device="cpu")
    panel_b = Detector(24, 28, spacing_mm=(14.0, 12.0), sdd_mm=1100.0, sid_mm=700.0)
    a, b = CArmJoints(0.0, 0.1), CArmJoints(math.radians(90), 0.1)
    truth = reg.pose_from_carm([0.1, 0.0, 0.0], [3.0, -2.0, 4.0])
    cam_b = camera_motion(a, b)
    fixed_a = reg.render(truth[None])[0]
    fixed_b = render(reg.volume, cam_b @ truth, panel_b)
    init = reg.pose_from_carm([0.15, -0.05, 0.05], [8.0, 2.0, -3.0])
    res = reg.register(fixed_a, init, truth=truth, views=[View(fixed_b, cam_b, None, panel_b)])
    assert res.mtre_mm < 0.5 and len(res.view_zncc) == 2 and min(res.view_zncc) > 0.99
    noisy_a = fixed_a + 0.01 * torch.randn(fixed_a.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    noisy_b = fixed_b + 0.01 * torch.randn(fixed_b.shape, generator=torch.Generator().manual_seed(2), dtype=D)
    one = pose_covariance(reg, noisy_a, res.pose, scale_uncertainty=0.003).target_sigma_mm(reg.targets)
    two = pose_covariance(reg, noisy_a, res.pose, views=[View(noisy_b, cam_b, None, panel_b)],
                          scale_uncertainty=0.003).target_sigma_mm(reg.targets)
    assert float(two[2]) < 0.5 * float(one[2])  # the lateral panel sees the AP panel's depth in plane
    with pytest.raises(ValueError, match="detector expects"):
        reg.register(fixed_a, init, views=[View(fixed_a, cam_b, None, panel_b)])  # wrong size for panel B


def test_a_wide_pair_carries_fewer_candidates_and_may_search_on_the_reference_alone():
    """init_keep_joint: the pair ranks the search's candidates, fewer go on; coarse_views="reference": the search
    and the coarse level see the reference frame only (a third of the rays), the pair joins at the finest level."""
    panel_b = Detector(24, 28, spacing_mm=(14.0, 12.0), sdd_mm=1100.0, sid_mm=700.0)
    cfg = dict(pyramid=(2, 1), max_iterations=40, patience=10, init_candidates=32, init_refine=4,
               init_refine_iterations=5, init_keep=4, init_keep_joint=2)
    vol = make_phantom("head_tiny")
    a, b = CArmJoints(0.0, 0.1), CArmJoints(math.radians(90), 0.1)
    cam_b = camera_motion(a, b)
    results = {}
    for coarse in ("all", "reference"):
        reg = Registrar(vol, DET, RegistrationConfig(**cfg, coarse_views=coarse), device="cpu")
        truth = reg.pose_from_carm([0.1, 0.0, 0.0], [3.0, -2.0, 4.0])
        fixed_a, fixed_b = reg.render(truth[None])[0], render(reg.volume, cam_b @ truth, panel_b)
        init = reg.pose_from_carm([0.2, -0.1, 0.1], [0.0, 0.0, 0.0])
        results[coarse] = reg.register(fixed_a, init, truth=truth, views=[View(fixed_b, cam_b, None, panel_b)])
        alone = reg.register(fixed_a, init, truth=truth)
        assert [s["batch"] for s in alone.stages[1:]] == [4, 2]  # one view: init_keep, halved per level
        assert [s["batch"] for s in results[coarse].stages[1:]] == [2, 1]  # a pair: init_keep_joint
    for coarse, res in results.items():
        assert res.mtre_mm < 1.0 and len(res.view_zncc) == 2 and min(res.view_zncc) > 0.99, coarse
    rays = {c: [s["rays"] / max(1, s["iterations"]) for s in r.stages] for c, r in results.items()}
    assert rays["reference"][1] == pytest.approx(rays["all"][1] / 2)  # x2: the reference frame alone
    assert rays["reference"][2] == pytest.approx(rays["all"][2])  # the finest level: both views
    with pytest.raises(ValueError, match="coarse_views"):
        RegistrationConfig(coarse_views="plane_b")
    with pytest.raises(ValueError, match="init_keep_joint"):
        RegistrationConfig(init_keep_joint=0)


def test_view_stacks_group_the_views_by_panel_at_a_level():
    reg = Registrar(make_phantom("head_tiny"), DET, RegistrationConfig(**FAST), device="cpu")
    panel_b = Detector(24, 28, spacing_mm=(14.0, 12.0), sdd_mm=1100.0, sid_mm=700.0)
    pose = reg.pose_from_carm([0.1, 0.0, 0.0], [0.0, 0.0, 0.0])
    cam_b = camera_motion(CArmJoints(0.0, 0.1), CArmJoints(math.radians(90), 0.1))
    fixed_a, fixed_b = reg.render(pose[None])[0], render(reg.volume, cam_b @ pose, panel_b)
    views = [View(fixed_a, torch.eye(4, dtype=D)), View(fixed_b, cam_b, None, panel_b)]
    fine = reg.view_stacks(fixed_a, None, views)
    assert [g.indices for g in fine] == [(0, 1), (2,)]  # plane A's two frames in one batch, plane B's own
    assert tuple(fine[0].fixed.shape) == (2, 32, 32) and tuple(fine[1].fixed.shape) == (1, 24, 28)
    coarse = reg.view_stacks(fixed_a, None, views, level=0)  # pyramid (2, 1): half the pixels a side
    assert tuple(coarse[0].fixed.shape) == (2, 16, 16) and tuple(coarse[1].fixed.shape) == (1, 12, 14)
