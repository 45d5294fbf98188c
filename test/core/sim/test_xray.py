"""Simulated X-ray frames and trajectories."""

import math

import numpy as np
import pytest
import torch

from diffdrr_ros.core.sim import JointSensor, Trajectory, XRayStyle, collimator_mask, simulate_xray


def test_beer_lambert_noise_free():
    line = torch.tensor([[0.0, 1.0], [2.0, 0.5]], dtype=torch.float64)
    style = XRayStyle(i0=1000.0, gaussian_noise=0.0, poisson=False, blur_sigma_px=0.0, collimator_radius=0.0)
    np.testing.assert_array_equal(simulate_xray(line, style), np.round(1000 * np.exp(-line.numpy())).astype(np.uint16))


def test_noise_statistics_bits_collimator_and_inversion():
    line = torch.full((64, 64), 1.0, dtype=torch.float64)
    style = XRayStyle(i0=4000.0, photons=1000.0, gaussian_noise=0.0, blur_sigma_px=0.0, collimator_radius=0.4,
                      bits=12)
    img = simulate_xray(line, style, torch.Generator().manual_seed(0)).astype(np.float64)
    inside = collimator_mask(64, 64, 0.4)
    mean = 4000 * math.exp(-1)
    # Poisson in quanta (1000 * e^-1 per pixel), scaled by 4 counts per quantum: var = 4 * mean.
    assert abs(img[inside].mean() - mean) < 10 and abs(img[inside].var() / (4 * mean) - 1) < 0.15
    assert np.all(img[~inside] == 0) and img.max() <= 4095
    inv = simulate_xray(line, XRayStyle(i0=4000.0, poisson=False, gaussian_noise=0, blur_sigma_px=0,
                                         collimator_radius=0.4, invert=True))
    assert np.all(inv[inside] == 4095 - round(mean)) and np.all(inv[~inside] == 0)
    with pytest.raises(ValueError):
        XRayStyle(bits=10)


def test_trajectory_is_deterministic_and_bounded():
    traj = Trajectory(kind="random", seed=3)
    a, b = traj.joints(7.2), traj.joints(7.2)
    assert a == b
    for t in np.linspace(0, 100, 50):
        j = Trajectory().joints(t)
        assert abs(j.lao_rad) <= math.radians(25) + 1e-12 and abs(j.cranial_rad) <= math.radians(10) + 1e-12
    center = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    still = Trajectory(setup_offset_mm=(0.0, 0.0, 0.0), setup_offset_deg=(0.0, 0.0, 0.0))
    torch.testing.assert_close(still.table_from_ct(0.0, center)[:3, 3], -center)  # planned placement
    p0 = traj.table_from_ct(0.0, center)
    # The set-up error moves the CT centre by exactly the offset (rotation is about the centre).
    torch.testing.assert_close(p0[:3, :3] @ center + p0[:3, 3], torch.tensor(traj.setup_offset_mm, dtype=torch.float64))
    p1 = traj.table_from_ct(20.0, center)  # drift plus one jump
    moved = (p1[:3, 3] - p0[:3, 3]).norm()
    assert 2.0 < moved < 15.0


def test_joint_sensor_noise_and_latency():
    traj = Trajectory()
    exact = JointSensor(angle_noise_deg=0.0, table_noise_mm=0.0, latency_s=0.5)
    rng = np.random.default_rng(0)
    assert exact.read(traj, 10.0, rng) == traj.joints(9.5)
    noisy = JointSensor(angle_noise_deg=0.2, latency_s=0.0)
    errs = [noisy.read(traj, 5.0, rng).lao_rad - traj.joints(5.0).lao_rad for _ in range(400)]
    assert abs(np.std(errs) - math.radians(0.2)) < math.radians(0.03)


def test_physics_the_drr_leaves_out():
    """Beam hardening, scatter and the heel effect, each on its own, noise-free."""
    quiet = dict(i0=1000.0, gaussian_noise=0.0, poisson=False, blur_sigma_px=0.0, collimator_radius=0.0, bits=16)
    line = torch.zeros(40, 40, dtype=torch.float64)
    line[15:25, 15:25] = 4.0  # a dense block in air

    def log_image(**kw):
        img = simulate_xray(line, XRayStyle(**quiet, **kw)).astype(np.float64)
        return -np.log(np.maximum(img, 1) / 1000.0)

    plain = log_image()
    hard = log_image(beam_hardening=0.1)
    np.testing.assert_allclose(hard[20, 20], 4.0 / 1.4, atol=0.01)  # L / (1 + b L), up to whole counts
    np.testing.assert_allclose(hard[0, 0], 0.0, atol=1e-3)
    scat = log_image(scatter_to_primary=0.3)
    assert scat[20, 20] < plain[20, 20] - 1.0  # the dense block looks much thinner
    assert scat[0, 0] < -0.2  # air: more than I0 reaches the detector
    heel = simulate_xray(torch.zeros(40, 40, dtype=torch.float64), XRayStyle(**quiet, heel_gain=0.1)).astype(float)
    np.testing.assert_allclose([heel[0, 0], heel[-1, 0]], [950, 1050], atol=1)  # -5 % .. +5 % over the rows
    assert XRayStyle.mismatched().scatter_to_primary == 0.3
    with pytest.raises(ValueError):
        XRayStyle(scatter_to_primary=-0.1)
