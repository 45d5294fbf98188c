"""Depth from several views in the node, over real DDS: the known-pose gate and the angle history.

A single view sees the depth only through magnification: its pose goes to ``~/ct_pose`` with
its covariance, not to /tf. A frame from the same angle adds no depth; one from another angle
is registered jointly with the kept view and goes on /tf. A patient who moved makes the old
views disagree: the window is reset and the frame, alone again, is held back.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_registration_node import NODE_PARAMS, Scene, send

from diffdrr_ros.core.geometry import CArmJoints
from diffdrr_ros.core.geometry.rotations import axis_angle_to_matrix, make_transform
from diffdrr_ros.ros.conversions import array_to_image, image_to_pixels
from diffdrr_ros.ros.harness import running_node
from diffdrr_ros.ros.registration_node import HELD_BACK, PUBLISHED

PARAMS = {**NODE_PARAMS, "gate.allow_unresolved_depth": False, "multiview.max_views": 3,
          "multiview.min_separation_deg": 15.0, "gate.max_target_sigma_mm": 1.0}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with running_node(PARAMS, tmp_path_factory.mktemp("node") / "node.log") as (client, node):
        yield client, Scene(), node


def _at(lao_deg: float) -> CArmJoints:
    return CArmJoints(lao_rad=math.radians(lao_deg), cranial_rad=math.radians(5))


def _send_and_wait(client, scene, node, joints, sec):
    """A frame at ``joints`` stamped ``sec``; wait until the node has answered it (pose or TF or rejection)."""
    n_diag = len(client.diags)
    send(client, array_to_image(scene.frame(joints, seed=sec), "mono16"), joints, sec)
    answered = client.spin_until(lambda: client.pose_for(sec) is not None or client.tf_for(sec) is not None
                                 or client.diag_saying("rejected", n_diag) is not None, 90.0)
    assert answered, node.log()
    client.spin_for(0.5)  # the TF, if any, is published just before the pose
    return n_diag


def test_one_angle_is_held_back_until_a_second_angle_arrives(system):
    client, scene, node = system
    n = _send_and_wait(client, scene, node, _at(0.0), 100)
    assert client.tf_for(100) is None and client.pose_for(100) is not None, node.log()
    held = client.diag_saying("depth unresolved", n)
    assert held is not None and "along the beam" in held.message and "add a view" in held.message
    cov = list(client.pose_for(100).pose.covariance)
    assert max(cov[0], cov[7], cov[14]) > (1e-3) ** 2  # metres^2: the unresolved depth shows (> 1 mm)
    assert client.spin_until(lambda: bool(client.overlays), 5.0)
    rgb = image_to_pixels(client.overlays[-1]).reshape(-1, 3)
    assert ((rgb == HELD_BACK).all(-1)).any() and not ((rgb == PUBLISHED).all(-1)).any()  # amber edges, not green
    # The same angle again (2 degrees off) adds no depth: still held back.
    n = _send_and_wait(client, scene, node, _at(2.0), 101)
    assert client.tf_for(101) is None and client.diag_saying("depth unresolved", n) is not None, node.log()
    # 30 degrees away: registered jointly with the kept view, known, on /tf.
    _send_and_wait(client, scene, node, _at(30.0), 102)
    tf = client.tf_for(102)
    assert tf is not None, node.log()
    assert scene.mtre(tf, _at(30.0)) < 2.0

    def views_reported() -> list[str]:
        return [kv.value for d in client.diags for s in d.status for kv in s.values if kv.key == "views"]

    assert client.spin_until(lambda: "2" in views_reported(), 10.0), views_reported()  # the next diagnostics


def test_a_patient_who_moved_resets_the_angle_history(system):
    client, scene, node = system
    scene.table_from_ct = make_transform(torch.eye(3, dtype=torch.float64),
                                         torch.tensor([9.0, -6.0, 5.0], dtype=torch.float64)) @ scene.table_from_ct
    n = _send_and_wait(client, scene, node, _at(60.0), 110)
    assert client.diag_saying("angle history reset", n) is not None or "angle history reset" in node.log(), node.log()
    assert client.tf_for(110) is None  # alone again: its depth is not resolved
    _send_and_wait(client, scene, node, _at(35.0), 111)  # a second angle of the moved patient
    tf = client.tf_for(111)
    assert tf is not None, node.log()
    assert scene.mtre(tf, _at(35.0)) < 2.0


def test_a_small_jump_that_the_earlier_views_absorb_still_resets_the_window(system):
    """A 3 mm / 1.5 deg jump: the joint pose with two earlier views is a compromise that each earlier view
    tolerates (< multiview.max_view_shift_mm) but that the new frame alone does not: the window is reset and
    no wrong pose goes on /tf."""
    client, scene, node = system
    _send_and_wait(client, scene, node, _at(-20.0), 120)  # two views of a still patient (after the last test's)
    _send_and_wait(client, scene, node, _at(5.0), 121)
    assert client.tf_for(121) is not None, node.log()
    jump = make_transform(axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(1.5)], dtype=torch.float64)),
                          torch.tensor([2.1, -2.1, 0.0], dtype=torch.float64))
    scene.table_from_ct = jump @ scene.table_from_ct
    n = _send_and_wait(client, scene, node, _at(30.0), 122)
    reset = client.diag_saying("alone moves the targets", n)
    tf = client.tf_for(122)
    assert tf is None or scene.mtre(tf, _at(30.0)) < 2.0, (scene.mtre(tf, _at(30.0)), node.log())
    assert reset is not None or "this frame alone moves the targets" in node.log(), node.log()
