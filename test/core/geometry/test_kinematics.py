"""C-arm kinematics: joints -> poses, and tracking through C-arm and table motion."""

import math

import torch

from diffdrr_ros.core.geometry import carm_to_matrix
from diffdrr_ros.core.geometry.kinematics import CArmJoints, default_prior, initial_pose, iso_from_ct, propagate_pose
from diffdrr_ros.core.geometry.rotations import make_transform, rot_z

D = torch.float64
CENTER = torch.tensor([10.0, -20.0, 30.0], dtype=D)


def test_initial_pose_equals_the_seed_pose_with_the_default_prior():
    j = CArmJoints(lao_rad=0.3, cranial_rad=-0.2, detector_rotation_rad=0.1, table_mm=(5.0, -4.0, 2.0))
    pose = initial_pose(j, default_prior(CENTER))
    expected = carm_to_matrix(torch.tensor([-0.2, 0.3, 0.1], dtype=D), torch.tensor([5.0, -4.0, 2.0], dtype=D), CENTER)
    torch.testing.assert_close(pose, expected)


def test_iso_from_ct_is_independent_of_the_c_arm_angles():
    table_from_ct = make_transform(rot_z(torch.tensor(0.05, dtype=D)), torch.tensor([1.0, 2.0, 3.0], dtype=D))
    a = CArmJoints(lao_rad=0.0, cranial_rad=0.0)
    b = CArmJoints(lao_rad=math.radians(40), cranial_rad=math.radians(-15), detector_rotation_rad=0.3)
    torch.testing.assert_close(iso_from_ct(initial_pose(a, table_from_ct), a),
                               iso_from_ct(initial_pose(b, table_from_ct), b))


def test_propagate_pose_follows_c_arm_and_table_motion():
    table_from_ct = make_transform(rot_z(torch.tensor(-0.1, dtype=D)), torch.tensor([4.0, 0.0, -2.0], dtype=D))
    then = CArmJoints(lao_rad=0.1, cranial_rad=0.05, table_mm=(0.0, 0.0, 0.0))
    now = CArmJoints(lao_rad=0.6, cranial_rad=-0.2, detector_rotation_rad=0.2, table_mm=(10.0, 0.0, 50.0))
    registered = initial_pose(then, table_from_ct)
    torch.testing.assert_close(propagate_pose(registered, then, now), initial_pose(now, table_from_ct))
    # The table moved the CT by (10, 0, 50) mm in the room.
    moved = iso_from_ct(propagate_pose(registered, then, now), now)
    torch.testing.assert_close(moved[:3, 3] - iso_from_ct(registered, then)[:3, 3],
                               torch.tensor([10.0, 0.0, 50.0], dtype=D))
