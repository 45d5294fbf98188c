"""Levenberg-Marquardt on the analytic pose Jacobian: a handful of steps where Adam takes a hundred."""

import math

import pytest
import torch

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.registration import Registrar, RegistrationConfig, perturb_pose
from diffdrr_ros.core.registration.gauss_newton import lm_refine, residuals
from diffdrr_ros.core.registration.views import ViewStack
from diffdrr_ros.core.volume import make_phantom

D = torch.float64
DET = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)


@pytest.fixture(scope="module")
def problem():
    reg = Registrar(make_phantom("head_small"), DET, RegistrationConfig(init_search=False, pyramid=(1,)), device="cpu")
    truth = reg.pose_from_carm([0.1, 0.3, 0.0], [5.0, -3.0, 2.0])
    return reg, truth, reg.render(truth[None])[0].to(D)


@pytest.mark.parametrize("similarity,compare", [("zncc", "line_integral"), ("gncc", "intensity")])
def test_residuals_give_one_minus_the_similarity(problem, similarity, compare):
    from diffdrr_ros.core.drr.jacobian import render_with_pose_jacobian
    from diffdrr_ros.core.registration import similarity_fn

    reg, truth, fixed = problem
    pose = perturb_pose(truth[None], reg.center, math.radians(3), 5.0, torch.Generator().manual_seed(1))
    lvl = reg.levels[-1]
    drr, jac = render_with_pose_jacobian(lvl.volume, pose, DET, pose[:, :3, :3] @ reg.center + pose[:, :3, 3],
                                         reg.settings(1))
    r, a, loss = residuals(drr, jac, fixed[None], None, similarity, compare)
    sim = similarity_fn(RegistrationConfig(similarity=similarity, compare=compare))(drr, fixed, None)
    assert loss == pytest.approx(1.0 - float(sim[0]), rel=1e-3, abs=1e-6)
    assert float((r**2).sum()) == pytest.approx(loss * (2 if similarity == "gncc" else 1), rel=1e-6)
    assert a.shape == (r.shape[0], 6)


def test_lm_converges_from_5_deg_10_mm_in_a_few_steps(problem):
    reg, truth, fixed = problem
    starts = perturb_pose(truth.expand(4, 4, 4), reg.center, math.radians(5), 10.0, torch.Generator().manual_seed(0))
    lvl = reg.levels[-1]
    for start in starts:
        pose, _, its, reason = lm_refine(lvl.volume, [ViewStack(fixed[None], None, None)], lvl.detector, start,
                                         reg.center, reg.settings(1), "zncc", "line_integral", max_iterations=15)
        assert reason in ("converged", "stalled") and float(reg.mtre(pose, truth)) < 0.1, (reason, its)
        assert its <= 12  # Adam: 100-200 steps from such starts


def test_lm_through_the_registrar_matches_adam_and_is_the_tracking_path(problem):
    reg, truth, fixed = problem
    start = perturb_pose(truth[None], reg.center, math.radians(4), 8.0, torch.Generator().manual_seed(3))[0]
    lm = Registrar(reg.volume, DET, RegistrationConfig(optimizer="lm", init_search=False, pyramid=(2, 1)), device="cpu")
    res = lm.register(fixed, start, truth=truth)
    assert res.accepted and res.mtre_mm < 0.1 and res.iterations <= 25
    with pytest.raises(ValueError, match="sum-of-squares"):
        RegistrationConfig(optimizer="lm", similarity="pncc")


def test_lm_at_the_minimum_stops_instead_of_spinning(problem):
    """No step can lower the loss at the truth: the damping must grow until LM gives up (it once stayed 0)."""
    reg, truth, fixed = problem
    lvl = reg.levels[-1]
    noisy = fixed + 0.02 * torch.randn(fixed.shape, generator=torch.Generator().manual_seed(0), dtype=D)
    pose, _, its, reason = lm_refine(lvl.volume, [ViewStack(noisy[None], None, None)], lvl.detector, truth,
                                     reg.center, reg.settings(1), "gncc", "intensity", max_iterations=15)
    assert reason in ("converged", "stalled") and its <= 15
    assert float(reg.mtre(pose, truth)) < 0.5


def test_lm_on_a_noisy_xray_frame_stops_at_the_minimum_not_at_the_first_step(problem):
    """Quantum noise keeps 1 - GNCC large: a stop on the loss's relative gain (once 0.1 %) ended
    2-3 mm off after one step; the Gauss-Newton decrement and the step tolerance stop where 30
    iterations without a stopping rule end, in a handful."""
    from diffdrr_ros.core.registration.fixed_image import prepare_fixed
    from diffdrr_ros.core.sim import XRayStyle
    from diffdrr_ros.core.sim.xray import simulate_xray

    reg, truth, fixed = problem
    style = XRayStyle(photons=500.0, blur_sigma_px=0.0, collimator_radius=0.0)  # noise only: the minimum is near truth
    frame = prepare_fixed(simulate_xray(fixed, style, torch.Generator().manual_seed(0)), log_transform=True,
                          i0=style.i0).to(D)
    lvl = reg.levels[-1]
    starts = perturb_pose(truth.expand(3, 4, 4), reg.center, math.radians(1.5), 3.0, torch.Generator().manual_seed(2))
    for start in starts:
        ends = [lm_refine(lvl.volume, [ViewStack(frame[None], None, None)], lvl.detector, start, reg.center,
                          reg.settings(1), "gncc", "intensity", max_iterations=30, **kw)
                for kw in ({}, {"decrement_tolerance": 0.0, "step_tolerance": (0.0, 0.0)})]
        (pose, _, its, reason), (pose_long, _, its_long, _) = ends
        assert reason == "converged" and 2 <= its <= 10 < its_long
        assert float(reg.mtre(pose, truth)) < 0.5 and float(reg.mtre(pose, pose_long)) < 0.2, its


def test_lm_polishes_the_finest_level_after_adam(problem):
    """``polish_optimizer="lm"``: Adam at the coarse level (its wide basin), LM's few steps at the finest."""
    reg, truth, fixed = problem
    start = perturb_pose(truth[None], reg.center, math.radians(4), 8.0, torch.Generator().manual_seed(3))[0]
    cfg = RegistrationConfig(init_search=False, pyramid=(2, 1), polish_optimizer="lm")
    res = Registrar(reg.volume, DET, cfg, device="cpu").register(fixed, start, truth=truth)
    coarse, fine = res.stages
    assert res.accepted and res.mtre_mm < 0.1
    # LM steps after Adam's: at most 10 a pass (the smoothed passes, then the unsmoothed one)
    assert fine["iterations"] <= 10 * (1 + len(cfg.polish_smoothing_px)) and fine["iterations"] < coarse["iterations"]
    with pytest.raises(ValueError, match="sum-of-squares"):
        RegistrationConfig(polish_optimizer="lm", similarity="pncc")
