"""A patient who moved between the views of a joint registration: the new frame alone sees it."""

import math

import torch

from diffdrr_ros.core.geometry import CArmJoints, Detector, default_prior, initial_pose
from diffdrr_ros.core.geometry.rotations import axis_angle_to_matrix, make_transform
from diffdrr_ros.core.metrics import inplane_depth_error
from diffdrr_ros.core.registration import Registrar, RegistrationConfig, view_from_joints
from diffdrr_ros.core.registration.consistency import own_view_shift_mm
from diffdrr_ros.core.volume import make_phantom

D = torch.float64
DET = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)


def _scene(jump_mm: float):
    """Two older frames (0 and 25 deg LAO) of a still patient, and a new one at 50 deg after a jump."""
    reg = Registrar(make_phantom("head_small"), DET, RegistrationConfig(optimizer="lm", pyramid=(1,),
                                                                        init_search=False), device="cpu")
    table = default_prior(reg.volume.center)
    jump = make_transform(axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(jump_mm / 2)], dtype=D)),
                          torch.tensor([jump_mm / math.sqrt(2), -jump_mm / math.sqrt(2), 0.0], dtype=D))
    old = [CArmJoints(math.radians(a), 0.0) for a in (0.0, 25.0)]
    new = CArmJoints(math.radians(50.0), 0.0)
    fixed_new = reg.render(initial_pose(new, jump @ table)[None])[0]
    views = [view_from_joints(reg.render(initial_pose(j, table)[None])[0], j, new) for j in old]
    joint = reg.register(fixed_new, initial_pose(new, table), views=views)
    return reg, fixed_new, joint.pose, initial_pose(new, jump @ table)


def test_the_new_frame_alone_moves_away_from_a_joint_pose_after_a_jump():
    reg, fixed, joint, truth = _scene(3.0)
    # The joint pose is a compromise: several mm off along the new beam.
    assert float(inplane_depth_error(joint, truth, reg.targets).depth_mm) > 1.0
    shift, refined = own_view_shift_mm(reg, fixed, joint)
    assert shift > 0.5
    # ... towards where the new frame puts the CT (in its image plane).
    before = float(inplane_depth_error(joint, truth, reg.targets).inplane_mm)
    after = float(inplane_depth_error(refined, truth, reg.targets).inplane_mm)
    assert after < before


def test_a_still_patient_gives_no_shift():
    reg, fixed, joint, _ = _scene(0.0)
    shift, _ = own_view_shift_mm(reg, fixed, joint)
    assert shift < 0.1
