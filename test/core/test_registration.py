"""Registration engine on the tiny built-in phantom (fast on 2 cores)."""

import json
import math

import numpy as np
import pytest
import torch

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.metrics import zncc
from diffdrr_ros.core.phantoms import make_phantom
from diffdrr_ros.core.registration import (
    FixedImageError,
    Registrar,
    RegistrationConfig,
    perturb_pose,
    prepare_fixed,
)

DET = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)


@pytest.fixture(scope="module")
def registrar():
    return Registrar(make_phantom("head_small"), DET, RegistrationConfig(pyramid=(2, 1)), device="cpu")


def test_recovers_a_known_pose_from_a_moderate_start(registrar):
    truth = registrar.pose_from_carm([0.1, 0.25, -0.05], [4.0, -6.0, 3.0])
    fixed = registrar.render(truth[None])[0]
    init = registrar.pose_from_carm([0.1 + 0.12, 0.25 - 0.1, -0.05 + 0.08], [4.0 + 10, -6.0 - 8, 3.0 + 6])
    assert float(registrar.mtre(init, truth)) > 10
    result = registrar.register(fixed, init, truth=truth)
    assert result.mtre_mm < 2.0 and result.success
    assert result.converged and result.accepted and result.zncc > 0.99
    assert result.iterations == len(result.history) > 0
    json.dumps(result.to_dict())  # machine-readable


def test_quality_gate_rejects_a_bad_match(registrar):
    truth = registrar.pose_from_carm([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    fixed = registrar.render(truth[None])[0]
    noise = torch.Generator().manual_seed(0)
    garbage = torch.rand(fixed.shape, generator=noise, dtype=torch.float64)  # nothing like the CT
    cfg = RegistrationConfig(pyramid=(1,), max_iterations=5)
    reg = Registrar(make_phantom("head_tiny"), DET, cfg, device="cpu")
    result = reg.register(garbage, truth)
    assert not result.accepted
    assert "converge" in result.verdict or "below gate" in result.verdict


def test_init_search_returns_better_scored_candidates():
    cfg = RegistrationConfig(pyramid=(2, 1), init_search=True, init_candidates=64, init_keep=4)
    reg = Registrar(make_phantom("head_small"), DET, cfg, device="cpu")
    truth = reg.pose_from_carm([0.0, 0.2, 0.0], [0.0, 0.0, 0.0])
    level = reg.levels[0]
    fixed = torch.nn.functional.interpolate(reg.render(truth[None])[0][None, None], size=level.detector.shape,
                                            mode="area")[0, 0]
    init = reg.pose_from_carm([0.5, -0.3, 0.4], [30.0, -30.0, 25.0])
    kept = reg._search(level, fixed, None, init)
    assert kept.shape == (4, 4, 4)
    sims = zncc(reg.render(kept, level=0), fixed)
    assert (sims[:-1] >= sims[1:] - 1e-12).all()  # best first
    assert float(sims[0]) >= float(zncc(reg.render(init[None], level=0), fixed)[0])


@pytest.mark.parametrize(
    "image,match",
    [
        (np.full((32, 32), np.nan), "NaN"),
        (np.full((32, 32), 7.0), "constant"),
        (np.zeros((0, 32)), "empty"),
        (np.zeros((32, 32, 3)), "2-D"),
    ],
)
def test_prepare_fixed_rejects_bad_frames(image, match):
    with pytest.raises(FixedImageError, match=match):
        prepare_fixed(image)


def test_prepare_fixed_log_transform_and_dtypes():
    raw = np.array([[1000, 500], [250, 1000]], dtype=np.uint16)
    out = prepare_fixed(raw, log_transform=True)
    np.testing.assert_allclose(out.numpy(), -np.log(raw / 1000.0), rtol=1e-6)
    assert prepare_fixed(np.array([[0, 255]], dtype=np.uint8)).dtype == torch.float32
    assert prepare_fixed(np.ones((4, 4, 1)) * np.arange(4)[:, None, None]).shape == (4, 4)


def test_wrong_image_size_is_rejected(registrar):
    with pytest.raises(FixedImageError, match="detector expects"):
        registrar.register(np.random.rand(16, 16), torch.eye(4, dtype=torch.float64))


def test_perturb_pose_stays_in_bounds(registrar):
    from diffdrr_ros.core.geometry import matrix_to_carm

    base = registrar.pose_from_carm([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    g = torch.Generator().manual_seed(0)
    out = perturb_pose(base.expand(200, 4, 4), registrar.center, math.radians(45), 60.0, g)
    a0, t0 = matrix_to_carm(base, registrar.center)
    a, t = matrix_to_carm(out, registrar.center)
    assert ((a - a0).abs().max() <= math.radians(45) + 1e-9) and ((t - t0).abs().max() <= 60.0 + 1e-9)
    assert (a - a0).abs().max() > math.radians(35)  # actually spreads
