"""A biplane over real DDS: pairs by stamp register jointly (depth known on the first frame); bad or
missing plane-B frames leave the node working single-plane, with a diagnostic."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from test_registration_node import I0, NODE_PARAMS, Scene, send

from diffdrr_ros.core.drr import render, to_intensity
from diffdrr_ros.core.geometry import CArmJoints, Detector, initial_pose
from diffdrr_ros.ros.conversions import (
    array_to_image,
    seconds_to_stamp,
    stamp_to_seconds,
    transform_to_matrix,
    xyz_rpy_to_matrix,
)
from diffdrr_ros.ros.harness import GraphClient, running_node

DET_B = Detector(40, 44, spacing_mm=(9.0, 9.0), sdd_mm=1100.0, sid_mm=800.0)
CAM_B_FROM_A = [0.0, 0.0, 0.0, 0.0, math.pi / 2, 0.0]
PARAMS = {**NODE_PARAMS, "gate.allow_unresolved_depth": False, "biplane.enabled": True,
          "biplane.cam_b_from_cam_a": CAM_B_FROM_A, "detector_b.height": DET_B.height, "detector_b.width": DET_B.width,
          "detector_b.pixel_spacing_mm": [9.0, 9.0], "detector_b.sdd_mm": 1100.0, "detector_b.sid_mm": 800.0}
AP = CArmJoints(lao_rad=0.0, cranial_rad=math.radians(5))


def biplane_system(params: dict, log_dir):
    """The node with ``params``, a client with a reliable plane-B image publisher: (client, pub_b, scene, node)."""
    client = GraphClient()
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub_b = client.node.create_publisher(Image, "fluoro_b/image", reliable)
    with running_node(params, log_dir / "node.log", client=client) as (client, node):
        yield client, pub_b, Scene(), node


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from biplane_system(PARAMS, tmp_path_factory.mktemp("node"))


def _frame_b(scene: Scene, joints: CArmJoints, sec: int, det: Detector = DET_B):
    pose_b = xyz_rpy_to_matrix(CAM_B_FROM_A[:3], CAM_B_FROM_A[3:]) @ initial_pose(joints, scene.table_from_ct)
    counts = torch.poisson(to_intensity(render(scene.mu, pose_b, det)) * I0,
                           generator=torch.Generator().manual_seed(sec + 1000))
    msg = array_to_image(counts.clamp(0, 65535).numpy().astype("uint16"), "mono16")
    msg.header.stamp = seconds_to_stamp(sec + 0.01)
    return msg


def _answered(client, sec, n_diag):
    return client.spin_until(lambda: client.pose_for(sec) is not None or client.tf_for(sec) is not None
                             or client.diag_saying("rejected", n_diag) is not None, 90.0)


def register_pair(system, frame_b: Image, joints: CArmJoints | None, sec: int):
    """Plane B's frame, then plane A's at ``AP`` (with ``joints`` unless None: already sent); the TF, once answered."""
    client, pub_b, scene, node = system
    pub_b.publish(frame_b)
    client.spin_for(0.3)
    n = len(client.diags)
    send(client, array_to_image(scene.frame(AP, seed=sec), "mono16"), joints, sec)
    assert _answered(client, sec, n), node.log()
    client.spin_for(0.5)
    return client.tf_for(sec)


def test_a_pair_is_known_on_the_first_frame(system):
    _, _, scene, node = system
    tf = register_pair(system, _frame_b(scene, AP, 100), AP, 100)
    assert tf is not None, node.log()
    assert scene.mtre(tf, AP) < 2.0


def test_unpaired_and_bad_plane_b_frames_fall_back_to_one_plane(system):
    client, pub_b, scene, node = system
    j = CArmJoints(lao_rad=math.radians(2), cranial_rad=math.radians(5))
    n = len(client.diags)
    send(client, array_to_image(scene.frame(j, seed=110), "mono16"), j, 110)  # no plane B frame at all
    assert _answered(client, 110, n), node.log()
    assert "no plane B frame" in node.log()
    bad = _frame_b(scene, j, 120, det=Detector(20, 20, spacing_mm=(18.0, 18.0), sdd_mm=1100.0, sid_mm=800.0))
    pub_b.publish(bad)  # the wrong size for plane B
    client.spin_for(0.3)
    n = len(client.diags)
    send(client, array_to_image(scene.frame(j, seed=120), "mono16"), j, 120)
    assert _answered(client, 120, n), node.log()
    assert "plane B frame ignored" in node.log() and node.alive()
    assert client.pose_for(120) is not None  # plane A still registered (single plane here: not on /tf)


def test_a_plane_b_frame_arriving_just_after_plane_a_still_pairs(system):
    """The planes' drivers publish independently: B 30 ms after A is within biplane.wait_s (0.1 s)."""
    client, pub_b, scene, node = system
    j = CArmJoints(lao_rad=math.radians(-3), cranial_rad=math.radians(5))
    n_log = len(node.log())
    n = len(client.diags)
    send(client, array_to_image(scene.frame(j, seed=130), "mono16"), j, 130)
    time.sleep(0.03)
    pub_b.publish(_frame_b(scene, j, 130))
    assert _answered(client, 130, n), node.log()
    client.spin_for(0.5)
    assert "no plane B frame" not in node.log()[n_log:], node.log()
    tf = client.tf_for(130)
    assert tf is not None, node.log()  # a pair: the depth is known
    assert scene.mtre(tf, j) < 2.0


def test_plane_b_source_and_detector_are_on_tf_at_plane_b_stamps(system):
    """Plane B's images (frame_id carm_detector_b_optical) can be placed: its source and detector go on /tf at
    the paired plane B frame's stamp, 90 deg about the isocentre from plane A's, at plane B's own SID / SDD."""
    client, _, scene, node = system
    j = CArmJoints(lao_rad=math.radians(4), cranial_rad=math.radians(5))
    register_pair(system, _frame_b(scene, j, 140), j, 140)
    det_b = client.tf_for(140.01, child="carm_detector_b_optical")
    src_b = client.tf_for(140.01, child="carm_source_b_optical")
    det_a = client.tf_for(140, child="carm_detector_optical")
    assert det_b is not None and src_b is not None and det_a is not None, node.log()
    t_det_b, t_src_b, t_det_a = (transform_to_matrix(x.transform) for x in (det_b, src_b, det_a))  # mm
    assert det_b.header.frame_id == "carm_isocenter"
    assert float(t_det_b[:3, 3].norm()) == pytest.approx(DET_B.sdd_mm - DET_B.sid_mm, abs=1e-6)
    assert float(t_src_b[:3, 3].norm()) == pytest.approx(DET_B.sid_mm, abs=1e-6)
    beam_a, beam_b = t_det_a[:3, 2], t_det_b[:3, 2]
    assert float(beam_a @ beam_b) == pytest.approx(0.0, abs=1e-9)  # biplane.cam_b_from_cam_a: 90 deg apart
    # T_camB_camA = rot_y(90 deg): plane B's beam is plane A's -x axis (seen from the isocentre)
    torch.testing.assert_close(beam_b, -t_det_a[:3, 0])
    torch.testing.assert_close(t_det_b[:3, 2], t_src_b[:3, 2])  # one beam axis, source to detector


def test_plane_b_overlay_while_someone_subscribes(system):
    """~/overlay_b: plane B's frame with the DRR's edges at the pair's pose, in frames.source_b at plane B's
    stamp and size, its CameraInfo with plane B's intrinsics."""
    from sensor_msgs.msg import CameraInfo

    client, _, scene, node = system
    images, infos = [], []
    client.node.create_subscription(Image, "/diffdrr_registration/overlay_b", images.append, 2)
    client.node.create_subscription(CameraInfo, "/diffdrr_registration/overlay_b/camera_info", infos.append, 2)
    client.spin_for(1.0)  # discovery: the node renders an overlay only for a subscriber
    j = CArmJoints(lao_rad=math.radians(-2), cranial_rad=math.radians(5))
    register_pair(system, _frame_b(scene, j, 150), j, 150)
    assert client.spin_until(lambda: images and infos, 10.0), node.log()
    img, info = images[-1], infos[-1]
    assert (img.height, img.width, img.encoding) == (DET_B.height, DET_B.width, "rgb8")
    assert img.header.frame_id == info.header.frame_id == "carm_source_b_optical"
    assert stamp_to_seconds(img.header.stamp) == pytest.approx(150.01, abs=1e-6)
    assert info.k[0] == pytest.approx(DET_B.sdd_mm / 9.0) and (info.height, info.width) == (40, 44)
    rgb = np.frombuffer(bytes(img.data), np.uint8).reshape(DET_B.height, DET_B.width, 3)
    coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    assert coloured.mean() > 0.01  # the DRR's edges drawn in colour over the grey frame
