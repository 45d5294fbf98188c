"""Pose covariance from the loss curvature: shape, scaling, frames, and calibration under noise."""

import math

import numpy as np
import pytest
import torch

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from diffdrr_ros.core.registration import Registrar, RegistrationConfig
from diffdrr_ros.core.registration.uncertainty import _perturbed, pose_covariance
from diffdrr_ros.core.volume.phantoms import make_phantom

D = torch.float64
DET = Detector(32, 32, spacing_mm=(12.0, 12.0), sdd_mm=1020.0, sid_mm=750.0)


@pytest.fixture(scope="module")
def setup():
    reg = Registrar(make_phantom("head_small"), DET, RegistrationConfig(pyramid=(1,), init_search=False,
                    max_iterations=300, patience=40, tolerance=1e-9), device="cpu")
    truth = reg.pose_from_carm([math.radians(5), math.radians(10), 0.0], [3.0, -2.0, 4.0])
    return reg, truth, reg.render(truth)


def _noisy(clean, rel, seed):
    g = torch.Generator().manual_seed(seed)
    return clean + rel * clean.std() * torch.randn(clean.shape, generator=g, dtype=clean.dtype)


def test_single_view_depth_is_the_least_certain_and_noise_scales_it(setup):
    reg, truth, clean = setup
    low = pose_covariance(reg, _noisy(clean, 0.1, 0), truth)
    high = pose_covariance(reg, _noisy(clean, 0.3, 0), truth)
    for c in (low, high):
        torch.testing.assert_close(c.cov, c.cov.T)
        assert torch.linalg.eigvalsh(c.cov).min() > 0
        assert c.sigma_mm[2] > 4 * c.sigma_mm[:2].max()  # depth along the beam vs in plane
    ratio = high.sigma_mm / low.sigma_mm
    assert torch.all((ratio > 2.0) & (ratio < 4.5)), ratio  # about 3x the noise, 3x the sigma
    assert 0.05 < low.residual_std < 0.2 and 0.2 < high.residual_std < 0.5


def test_a_clean_frame_gives_a_tiny_covariance_and_a_mask_is_honoured(setup):
    reg, truth, clean = setup
    c = pose_covariance(reg, clean, truth)
    assert c.sigma_mm.max() < 1e-3 and c.residual_std < 1e-4
    mask = np.zeros(DET.shape, dtype=bool)
    mask[8:24, 8:24] = True
    masked = pose_covariance(reg, _noisy(clean, 0.2, 1), truth, mask=mask)
    full = pose_covariance(reg, _noisy(clean, 0.2, 1), truth)
    assert masked.pixels == 256 and full.pixels == 32 * 32
    assert torch.all(masked.sigma_mm > full.sigma_mm)  # fewer pixels, less information
    with pytest.raises(ValueError):
        pose_covariance(reg, clean, truth, mask=np.zeros(DET.shape, dtype=bool))


def test_one_pass_with_the_previous_steps_agrees_with_two_passes(setup):
    reg, truth, clean = setup
    frame = _noisy(clean, 0.2, 3)
    two = pose_covariance(reg, frame, truth)
    one = pose_covariance(reg, frame, truth, steps=two.steps)
    torch.testing.assert_close(one.sigma_mm, two.sigma_mm, rtol=0.15, atol=0)
    torch.testing.assert_close(one.sigma_deg, two.sigma_deg, rtol=0.15, atol=0)


@pytest.mark.parametrize("compare", ["line_integral", "intensity"])
def test_the_kernels_jacobian_gives_the_finite_difference_covariance(setup, compare):
    """One pass of the analytic pose Jacobian instead of 2 x 13 DRRs: the same sigmas to within 30 %
    on the calibration case of ``bench/bench_covariance.py`` (48 px at 8 mm).

    (It is the slope at the pose; central differences at the sigmas' scale average the piecewise
    smooth DRR over that scale: 5-30 % apart at 48 and 128 px, up to 50 % at 32 px; measured.)"""
    reg0, _, _ = setup
    det = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)
    reg = Registrar(reg0.volume, det, RegistrationConfig(pyramid=(1,), init_search=False), device="cpu")
    truth = reg.pose_from_carm([math.radians(5), math.radians(10), 0.0], [3.0, -2.0, 4.0])
    frame = _noisy(reg.render(truth), 0.5, 5)
    fd = pose_covariance(reg, frame, truth, compare=compare)
    analytic = pose_covariance(reg, frame, truth, compare=compare, jacobian="analytic")
    ratio = analytic.target_sigma_mm(reg.targets) / fd.target_sigma_mm(reg.targets)
    assert bool(((ratio > 0.7) & (ratio < 1.3)).all()), ratio
    assert float(analytic.sigma_mm[2]) > 3 * float(analytic.sigma_mm[:2].max())  # depth: the least certain
    with pytest.raises(ValueError, match="jacobian"):
        pose_covariance(reg, frame, truth, jacobian="autograd")


def test_origin_convention_is_the_linearised_change_of_parameters(setup):
    """about_origin() = A cov A^T where A maps (centre translation, rotation) to the ROS parameters."""
    reg, truth, clean = setup
    c = pose_covariance(reg, _noisy(clean, 0.2, 2), truth)
    center_cam = truth[:3, :3] @ reg.center + truth[:3, 3]
    eps = 1e-6
    a = torch.zeros(6, 6, dtype=D)
    for i in range(6):
        delta = torch.zeros(1, 6, dtype=D)
        delta[0, i] = eps
        moved = _perturbed(truth, center_cam, delta)[0]
        a[:3, i] = (moved[:3, 3] - truth[:3, 3]) / eps  # origin translation
        a[3:, i] = matrix_to_axis_angle(moved[:3, :3] @ truth[:3, :3].T) / eps  # fixed-axis rotation
    torch.testing.assert_close(c.about_origin(), a @ c.cov @ a.T, rtol=1e-4, atol=1e-10)
    r = axis_angle_to_matrix(torch.tensor([0.3, -0.2, 1.0], dtype=D))
    big = torch.zeros(6, 6, dtype=D)
    big[:3, :3] = r
    big[3:, 3:] = r
    torch.testing.assert_close(c.about_origin(r), big @ c.about_origin() @ big.T)


def test_predicted_sigma_matches_the_scatter_of_registrations_under_noise(setup):
    """16 noisy frames registered from the truth: the rms error of the results against the
    predicted sigma. The prediction is the core of the distribution; registrations that end in
    a neighbouring local minimum give heavier tails (measured 1.1-1.95x over 30 frames here,
    1.2-3.1x at 48 px; docs/results.md), so the bound is loose above and tight below."""
    reg, truth, clean = setup
    pred = pose_covariance(reg, _noisy(clean, 0.3, 100), truth).cov.diagonal().sqrt()
    c = reg.center
    pc0 = truth[:3, :3] @ c + truth[:3, 3]
    est = []
    for k in range(16):
        p = reg.register(_noisy(clean, 0.3, 200 + k).numpy(), truth).pose
        est.append(torch.cat([p[:3, :3] @ c + p[:3, 3] - pc0, matrix_to_axis_angle(p[:3, :3] @ truth[:3, :3].T)]))
    rms = torch.stack(est).pow(2).mean(0).sqrt()
    ratio = rms / pred
    assert torch.all((ratio > 0.6) & (ratio < 3.5)), ratio
    assert 0.6 < ratio[2] < 1.8, ratio  # the depth, what a robot most needs to know


def test_the_fast_correlated_gram_equals_its_definition():
    """``J^T R J`` by one correlation per Jacobian channel equals the 36 cross-correlations it replaces."""
    from diffdrr_ros.core.registration.uncertainty import (
        correlated_gram,
        correlated_gram_reference,
        residual_correlation,
    )

    g = torch.Generator().manual_seed(0)
    mask = torch.ones(40, 36, dtype=torch.bool)
    mask[:5] = False
    mask[:, -4:] = False  # lags reach across the masked border
    jac = torch.randn(int(mask.sum()), 6, generator=g, dtype=D)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 46, 42, generator=g, dtype=D), 7, 1)[0, 0]
    rho = residual_correlation(smooth[mask], mask)
    assert int((rho != 0).sum()) > 20  # a correlated residual: many lags count
    torch.testing.assert_close(correlated_gram(jac, mask, rho), correlated_gram_reference(jac, mask, rho),
                               rtol=1e-12, atol=1e-10)
    white = torch.zeros_like(rho)
    white[rho.shape[0] // 2, rho.shape[1] // 2] = 1.0
    torch.testing.assert_close(correlated_gram(jac, mask, white), jac.T @ jac, rtol=1e-12, atol=1e-9)
