"""The registration node in its own process, driven over real DDS (loopback) by this process.

One node process serves the whole module (start-up costs a few seconds); each test sends
its frames with increasing stamps. A frame rendered at a known pose plus joint states near
it must give a TF within 2 mm mTRE of the truth; every kind of bad input must leave the node
alive, publish no TF for that frame, say why in /diagnostics, and the next good frame must
still register.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

from diffdrr_ros.core.drr import render, to_intensity
from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.geometry.kinematics import CArmJoints, cam_from_iso, initial_pose
from diffdrr_ros.core.geometry.rotations import invert_transform, make_transform, rot_z
from diffdrr_ros.core.metrics import mean_target_registration_error, target_points
from diffdrr_ros.core.volume.phantoms import make_phantom
from diffdrr_ros.ros.conversions import (
    JointNames,
    array_to_image,
    joints_to_message,
    seconds_to_stamp,
    transform_to_matrix,
)
from diffdrr_ros.ros.harness import REPO, GraphClient, running_node

H = W = 48
DET = Detector(H, W, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)
I0 = 4000.0
NODE_PARAMS = {
    "ct_path": "phantom:head_small",
    "device": "cpu",
    "detector.height": H,
    "detector.width": W,
    "detector.pixel_spacing_mm": [8.0, 8.0],
    "detector.sdd_mm": 1020.0,
    "detector.sid_mm": 750.0,
    "image.i0": I0,
    "registration.pyramid": [4, 2, 1],
    "registration.init_search_first_frame": False,
    "registration.min_similarity": 0.95,
    # This module tests the pipeline and bad input on single frames; the known-pose gate (depth from
    # several views) has its own tests (test_multiview_node.py).
    "gate.allow_unresolved_depth": True,
    "joints.max_age_s": 0.2,
    "overlay.mode": "edges",
    "diagnostics_period_s": 0.5,
}


class Scene:
    """Ground truth: the phantom placed on the table, and X-ray frames of it."""

    def __init__(self) -> None:
        self.volume = make_phantom("head_small")
        self.mu = self.volume.to_attenuation()
        # The patient lies 5 mm / 3 degrees away from the node's prior (CT centre at the isocentre).
        prior = make_transform(torch.eye(3, dtype=torch.float64), -self.volume.center)
        offset = make_transform(rot_z(torch.tensor(math.radians(3.0), dtype=torch.float64)),
                                torch.tensor([4.0, -3.0, 2.0], dtype=torch.float64))
        self.table_from_ct = offset @ prior
        self.targets = target_points(self.volume.center, self.volume.extent_mm)

    def frame(self, joints: CArmJoints, seed: int = 0, det: Detector = DET) -> np.ndarray:
        pose = initial_pose(joints, self.table_from_ct)
        line = render(self.mu, pose, det)
        counts = torch.poisson(to_intensity(line) * I0, generator=torch.Generator().manual_seed(seed))
        return counts.clamp(0, 65535).numpy().astype(np.uint16)

    def mtre(self, tf_msg, joints: CArmJoints) -> float:
        est_iso_ct = transform_to_matrix(tf_msg.transform)
        truth_iso_ct = make_transform(torch.eye(3, dtype=torch.float64),
                                      torch.tensor(joints.table_mm, dtype=torch.float64)) @ self.table_from_ct
        return float(mean_target_registration_error(est_iso_ct, truth_iso_ct, self.targets))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with running_node(NODE_PARAMS, tmp_path_factory.mktemp("node") / "node.log") as (client, node):
        yield client, Scene(), node


JOINTS = CArmJoints(lao_rad=math.radians(20), cranial_rad=math.radians(5))


def send(client: GraphClient, frame_msg: Image | None, joints: CArmJoints | None, sec: int,
         joint_dt: float = 0.0) -> None:
    """Publish joints stamped ``sec + joint_dt`` (then let them arrive) and a frame stamped ``sec``."""
    if joints is not None:
        client.joint_pub.publish(joints_to_message(joints, JointNames(), seconds_to_stamp(sec + joint_dt)))
        client.spin_until(lambda: False, 0.2)
    if frame_msg is not None:
        frame_msg.header.stamp = seconds_to_stamp(sec)
        frame_msg.header.frame_id = "carm_detector_optical"
        client.image_pub.publish(frame_msg)


def _register_good(client: GraphClient, scene: Scene, sec: int, joints: CArmJoints = JOINTS, timeout: float = 60.0):
    send(client, array_to_image(scene.frame(joints, seed=sec), "mono16"), joints, sec)
    assert client.spin_until(lambda: client.tf_for(sec) is not None, timeout), "no TF for a good frame"
    return client.tf_for(sec)


def test_good_frame_registers_within_2mm(system):
    client, scene, node = system
    n_overlays = len(client.overlays)
    tf = _register_good(client, scene, sec=100)
    assert tf.header.frame_id == "carm_isocenter"
    assert scene.mtre(tf, JOINTS) < 2.0, node.log()
    assert client.tf_for(100, child="carm_source_optical") is not None
    assert client.spin_until(lambda: len(client.overlays) > n_overlays, 10.0)
    ov = client.overlays[-1]
    assert (ov.height, ov.width, ov.encoding) == (H, W, "rgb8")
    assert client.spin_until(lambda: client.diag_saying("registered", 0) is not None, 5.0)
    assert client.diag_saying("registered", 0).level == DiagnosticStatus.OK
    keys = {kv.key: kv.value for kv in client.diag_saying("registered", 0).values}
    parts = [float(keys[k]) for k in ("wait_ms", "decode_ms", "register_ms", "covariance_ms")]
    assert min(parts) >= 0 and sum(parts) <= float(keys["latency_ms"]) + 1.0  # the breakdown of frame-to-TF
    assert client.static and client.static[0].transforms[0].child_frame_id == "carm_isocenter"
    # ~/ct_pose: the same pose, with a covariance (m, rad; isocentre axes) whose largest
    # translation variance lies along the beam (single-view depth).
    assert client.spin_until(lambda: client.pose_for(100) is not None, 5.0)
    msg = client.pose_for(100)
    assert msg.header.frame_id == "carm_isocenter"
    assert abs(msg.pose.pose.position.x - tf.transform.translation.x) < 1e-9
    cov = np.array(msg.pose.covariance).reshape(6, 6)
    np.testing.assert_allclose(cov, cov.T, atol=1e-15)
    assert np.linalg.eigvalsh(cov).min() > 0
    beam = (invert_transform(cam_from_iso(JOINTS))[:3, :3] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).numpy()
    _, evecs = np.linalg.eigh(cov[:3, :3])
    assert abs(evecs[:, -1] @ beam) > 0.9  # the least certain direction is the beam's
    assert 0 < np.sqrt(beam @ cov[:3, :3] @ beam) < 0.01  # under 10 mm of depth uncertainty, in metres
    status = client.diag_saying("registered", 0)
    assert float({kv.key: kv.value for kv in status.values}["sigma_depth_mm"]) > 0


def test_tracking_frame_after_c_arm_motion(system):
    client, scene, _node = system
    moved = CArmJoints(lao_rad=math.radians(26), cranial_rad=math.radians(2), table_mm=(0.0, 0.0, 15.0))
    tf = _register_good(client, scene, sec=110, joints=moved)
    assert scene.mtre(tf, moved) < 2.0


def _bad_frames(scene: Scene):
    good = scene.frame(JOINTS)
    nan = good.astype(np.float32)
    nan[5:9, 5:9] = np.nan
    yield "wrong encoding", Image(height=H, width=W, encoding="yuv422", step=W * 2, data=bytes(H * W * 2)), JOINTS, \
        "unsupported encoding"
    yield "wrong size", array_to_image(good[:40, :40].copy(), "mono16"), JOINTS, "wrong image size"
    yield "NaN", array_to_image(nan, "32FC1"), JOINTS, "NaN"
    yield "constant", array_to_image(np.full((H, W), 1000, np.uint16), "mono16"), JOINTS, "constant"
    yield "empty", Image(height=0, width=0, encoding="mono16", step=0, data=b""), JOINTS, "empty"
    yield "truncated", Image(height=H, width=W, encoding="mono16", step=W * 2, data=bytes(100)), JOINTS, "buffer"


@pytest.mark.parametrize("case", ["wrong encoding", "wrong size", "NaN", "constant", "empty", "truncated"])
def test_bad_frame_is_rejected_and_node_recovers(system, case):
    client, scene, node = system
    _name, msg, joints, expect = next(c for c in _bad_frames(scene) if c[0] == case)
    sec = 200 + ["wrong encoding", "wrong size", "NaN", "constant", "empty", "truncated"].index(case) * 10
    before = len(client.diags)
    send(client, msg, joints, sec)
    assert client.spin_until(lambda: client.diag_saying(expect, before) is not None, 20.0), \
        f"no diagnostic naming {expect!r}:\n{node.log()}"
    assert client.diag_saying(expect, before).level in (DiagnosticStatus.WARN, DiagnosticStatus.ERROR)
    assert client.tf_for(sec) is None
    assert node.alive()
    tf = _register_good(client, scene, sec + 1)
    assert scene.mtre(tf, JOINTS) < 2.0


def test_stale_and_missing_joints_and_out_of_order(system):
    client, scene, node = system
    frame = array_to_image(scene.frame(JOINTS), "mono16")
    before = len(client.diags)
    send(client, frame, JOINTS, 300, joint_dt=-5.0)  # the nearest joint state is 5 s older than the frame
    assert client.spin_until(lambda: client.diag_saying("stale joint state", before) is not None, 20.0)
    assert client.tf_for(300) is None
    before = len(client.diags)
    send(client, array_to_image(scene.frame(JOINTS), "mono16"), None, 250)  # older than the last frame
    assert client.spin_until(lambda: client.diag_saying("out-of-order", before) is not None, 20.0)
    assert client.tf_for(250) is None
    bad_joints = JointState(name=["table_x"], position=[0.0])
    bad_joints.header.stamp = seconds_to_stamp(310)
    before = len(client.diags)
    client.joint_pub.publish(bad_joints)
    assert client.spin_until(lambda: client.diag_saying("bad joint state", before) is not None, 20.0)
    assert node.alive()
    tf = _register_good(client, scene, 320)
    assert scene.mtre(tf, JOINTS) < 2.0


def test_quality_gate_blocks_tf_for_a_frame_of_something_else(system):
    client, scene, _node = system
    rng = np.random.default_rng(0)
    noise = rng.integers(500, 4000, size=(H, W)).astype(np.uint16)  # structure, but not this CT
    before = len(client.diags)
    send(client, array_to_image(noise, "mono16"), JOINTS, 400)
    assert client.spin_until(lambda: client.diag_saying("quality gate", before) is not None, 60.0)
    assert client.tf_for(400) is None
    tf = _register_good(client, scene, 410)
    assert scene.mtre(tf, JOINTS) < 2.0


def test_services_and_runtime_parameters(system):
    client, scene, _node = system
    for cli in (client.reset, client.reregister):
        assert cli.wait_for_service(timeout_sec=10.0)
        fut = cli.call_async(Trigger.Request())
        assert client.spin_until(fut.done, 10.0) and fut.result().success
    set_param = client.set_parameter

    assert set_param("registration.optimizer", "sgd-magic").successful is False
    assert set_param("registration.covariance_jacobian", "autodiff").successful is False  # not in its choices
    assert set_param("overlay.mode", "sparkles").successful is False
    assert set_param("ct_path", "/elsewhere").successful is False  # read-only: needs a restart
    assert set_param("registration.min_similarity", 0.9).successful is True
    tf = _register_good(client, scene, 500)  # after reregister: full registration from the joints
    assert scene.mtre(tf, JOINTS) < 2.0


def test_detector_follows_the_sdd_in_the_joint_state(system):
    """The detector moved out to SDD 1100 mm (SID stays 750): with the SDD in the joint state
    the frame registers; an SDD inside the SID is refused; back at 1020 mm it registers again."""
    client, scene, node = system
    far = CArmJoints(lao_rad=JOINTS.lao_rad, cranial_rad=JOINTS.cranial_rad, sdd_mm=1100.0)
    det_far = Detector(H, W, spacing_mm=(8.0, 8.0), sdd_mm=1100.0, sid_mm=750.0)
    send(client, array_to_image(scene.frame(far, seed=600, det=det_far), "mono16"), far, 600)
    assert client.spin_until(lambda: client.tf_for(600) is not None, 60.0), node.log()
    assert scene.mtre(client.tf_for(600), far) < 2.0
    assert "detector follows the joint-state SDD: 1020.0 -> 1100.0 mm" in node.log()
    before = len(client.diags)
    inside = CArmJoints(lao_rad=JOINTS.lao_rad, cranial_rad=JOINTS.cranial_rad, sdd_mm=700.0)
    send(client, array_to_image(scene.frame(JOINTS, seed=610), "mono16"), inside, 610)
    assert client.spin_until(lambda: client.diag_saying("not beyond the source-isocentre", before) is not None, 20.0)
    assert client.tf_for(610) is None
    back = CArmJoints(lao_rad=JOINTS.lao_rad, cranial_rad=JOINTS.cranial_rad, sdd_mm=1020.0)
    send(client, array_to_image(scene.frame(back, seed=620), "mono16"), back, 620)
    assert client.spin_until(lambda: client.tf_for(620) is not None, 60.0), node.log()
    assert scene.mtre(client.tf_for(620), back) < 2.0


@pytest.mark.parametrize("param,says", [
    ("ct_path:={tmp}/nothing_here.nii.gz", "cannot load CT"),
    ("registration.covariance_jacobian:=autodiff", "registration.covariance_jacobian must be one of fd, analytic"),
    ("registration.tracking_optimizer:=sgd-magic", "sgd-magic"),
    ("detector.height:=-5", "detector.height out of range"),  # refused by rclpy itself (its range)
])
def test_unusable_settings_are_a_clear_fatal_error(tmp_path, param, says):
    """Settings that would fail every frame fail the start: one line, exit code 1, no traceback."""
    _, stderr = start_expecting_fatal(param.format(tmp=tmp_path))
    assert says in stderr


def start_expecting_fatal(*params: str) -> tuple[list[str], str]:
    """The node started with ``params`` (``name:=value``) must exit with code 1 and no traceback.

    Returns its ``[FATAL]`` lines and its stderr.
    """
    args = [a for p in params for a in ("-p", p)]
    out = subprocess.run([sys.executable, "-m", "diffdrr_ros.ros.registration_node", "--ros-args", *args],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    return [line for line in out.stderr.splitlines() if "[FATAL]" in line], out.stderr


def test_detector_from_camera_info_matches_the_intrinsic_matrix():
    """The node's CameraInfo reading inverts Detector.intrinsic_matrix (no process needed)."""
    from sensor_msgs.msg import CameraInfo

    from diffdrr_ros.ros.registration_node import RegistrationNode

    det = Detector(40, 30, spacing_mm=(2.0, 2.0), sdd_mm=1100.0, sid_mm=750.0, principal_point_mm=(3.0, -4.0))
    info = CameraInfo(height=40, width=30, k=det.intrinsic_matrix().flatten().tolist())

    class Params:  # the two parameters the conversion reads
        def _p(self, name):
            return {"detector.pixel_spacing_mm": [2.0, 2.0], "detector.sid_mm": 750.0}[name]

    back = RegistrationNode._detector_from_camera_info(Params(), info)
    assert back.shape == det.shape
    assert back.sdd_mm == pytest.approx(1100.0)
    assert back.principal_point_mm == pytest.approx((3.0, -4.0))
    with pytest.raises(ValueError, match="uncalibrated"):
        RegistrationNode._detector_from_camera_info(Params(), CameraInfo(height=40, width=30))
