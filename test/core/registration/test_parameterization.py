"""The optimiser's view of the pose: each parameterisation starts at the given pose and moves it as designed."""

import pytest
import torch

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.registration import Registrar, RegistrationConfig, initial_params, params_to_pose
from diffdrr_ros.core.volume import make_phantom

DET32 = Detector(32, 32, spacing_mm=(12.0, 12.0), sdd_mm=1020.0, sid_mm=750.0)


def to_pose(reg, rot, trans, base):
    return params_to_pose(reg.config.parameterization, rot, trans, base, reg.center)


@pytest.mark.parametrize("kind", ["camera", "so3", "carm"])
def test_parameterisations_start_at_the_given_pose_and_move_it(kind):
    reg = Registrar(make_phantom("head_tiny"), DET32, RegistrationConfig(parameterization=kind), device="cpu")
    pose = reg.pose_from_carm([0.2, -0.4, 0.1], [10.0, -5.0, 20.0]).expand(3, 4, 4).clone()
    rot, trans, base = initial_params(reg.config.parameterization, pose, reg.center)
    torch.testing.assert_close(to_pose(reg, rot, trans, base), pose)
    moved = to_pose(reg, rot, trans + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), base)
    assert float(reg.mtre(moved[0], pose[0])) == pytest.approx(1.0, abs=1e-6)  # a pure 1 mm shift


def test_camera_parameterisation_rotates_about_the_ct_centre():
    reg = Registrar(make_phantom("head_tiny"), DET32, RegistrationConfig(parameterization="camera"), device="cpu")
    pose = reg.pose_from_carm([0.2, -0.4, 0.1], [30.0, -25.0, 20.0])[None]
    rot, trans, base = initial_params(reg.config.parameterization, pose, reg.center)
    turned = to_pose(reg, rot + torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64), trans, base)
    c = torch.cat([reg.center, torch.ones(1, dtype=torch.float64)])
    torch.testing.assert_close(turned[0] @ c, pose[0] @ c)  # the CT centre stays where it was
    assert not torch.allclose(turned, pose)
