"""A biplane whose plane B reports its own angles in the joint state (no static transform): over real DDS,
the pair registers jointly from the first frame; without plane B's joints the frame is registered alone."""

from __future__ import annotations

import math

import pytest
import torch
from sensor_msgs.msg import Image
from test_biplane_node import DET_B, biplane_system, register_pair
from test_biplane_node import PARAMS as BIPLANE_PARAMS
from test_registration_node import I0, Scene

from diffdrr_ros.core.drr import render, to_intensity
from diffdrr_ros.core.geometry import CArmJoints, initial_pose
from diffdrr_ros.ros.conversions import JointNames, array_to_image, joints_to_message, seconds_to_stamp
from diffdrr_ros.ros.harness import GraphClient

# The static transform is set to the identity: a pair can only register if plane B's joints are used.
PARAMS = {**BIPLANE_PARAMS, "biplane.cam_b_from_cam_a": [0.0] * 6, "biplane.joints.lao": "plane_b_lao",
          "biplane.joints.cranial": "plane_b_cranial"}
AP = CArmJoints(lao_rad=0.0, cranial_rad=math.radians(5))
LATERAL = CArmJoints(lao_rad=math.radians(90), cranial_rad=0.0)  # plane B


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from biplane_system(PARAMS, tmp_path_factory.mktemp("node"))


def _frame_b(scene: Scene, sec: int) -> Image:
    pose_b = initial_pose(LATERAL, scene.table_from_ct)  # plane B's own camera, same isocentre and table
    counts = torch.poisson(to_intensity(render(scene.mu, pose_b, DET_B)) * I0,
                           generator=torch.Generator().manual_seed(sec + 1000))
    msg = array_to_image(counts.clamp(0, 65535).numpy().astype("uint16"), "mono16")
    msg.header.stamp = seconds_to_stamp(sec + 0.01)
    return msg


def _both_planes(client: GraphClient, sec: int) -> None:
    msg = joints_to_message(AP, JointNames(), seconds_to_stamp(sec))
    msg.name = [*msg.name, "plane_b_lao", "plane_b_cranial"]
    msg.position = [*msg.position, LATERAL.lao_rad, LATERAL.cranial_rad]
    client.joint_pub.publish(msg)
    client.spin_for(0.2)


def test_plane_b_from_its_own_joints_resolves_the_depth_on_the_first_pair(system):
    client, _, scene, node = system
    _both_planes(client, 100)
    tf = register_pair(system, _frame_b(scene, 100), None, 100)  # the joints of both planes already sent
    assert tf is not None, node.log()
    assert scene.mtre(tf, AP) < 2.0


def test_without_plane_b_joints_the_frame_is_registered_alone(system):
    _, _, scene, node = system
    tf = register_pair(system, _frame_b(scene, 110), AP, 110)  # plane A's joints only
    assert "no plane B joint state near its frame" in node.log(tail=20_000)
    assert tf is None  # one angle: held back
