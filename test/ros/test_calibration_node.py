"""Calibration of the poly DRR's physics from the frames (``calibration.*``, issue 15), over real DDS (loopback).

The node's poly DRR starts at a wrong kVp (80) while the frames come from the project's polychromatic
simulator at 95 kVp. Biplane pairs make every pose known on its first frame (depth from two views), so they
go on /tf; after ``calibration.frames`` of them the node fits the physics once at those poses, reports it on
/diagnostics and sets ``registration.kvp`` to the fitted value. Only known poses are used: from one view a
wrong kVp trades off against the depth. Disabled (the default), nothing of it happens.
"""

from __future__ import annotations

import math

import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from test_poly_node import SPR, STYLE, PolyScene
from test_registration_node import DET, NODE_PARAMS, send, start_expecting_fatal

from diffdrr_ros.core.geometry import CArmJoints, initial_pose
from diffdrr_ros.core.sim import Spectrum, simulate_polychromatic_xray
from diffdrr_ros.ros.conversions import array_to_image, seconds_to_stamp, xyz_rpy_to_matrix
from diffdrr_ros.ros.harness import GraphClient, running_node

TRUE_KVP, START_KVP = 95.0, 80.0
CAM_B_FROM_A = [0.0, 0.0, 0.0, 0.0, math.pi / 2, 0.0]
PARAMS = {**NODE_PARAMS, "gate.allow_unresolved_depth": False, "registration.drr_model": "poly",
          "registration.kvp": START_KVP, "registration.scatter_to_primary": SPR,
          "registration.heel_gain": STYLE.heel_gain, "biplane.enabled": True, "biplane.cam_b_from_cam_a": CAM_B_FROM_A,
          "calibration.enabled": True, "calibration.frames": 2}
JOINTS = [CArmJoints(lao_rad=math.radians(a), cranial_rad=math.radians(5)) for a in (0.0, 3.0)]


class Scene95(PolyScene):
    """:class:`PolyScene` at 95 kVp, both planes."""

    def frame(self, joints, seed: int = 0, det=DET, cam_from_a=None):
        pose = initial_pose(joints, self.table_from_ct)
        if cam_from_a is not None:
            pose = cam_from_a @ pose
        return simulate_polychromatic_xray(self.materials, pose, det, STYLE, Spectrum(kvp=TRUE_KVP),
                                           torch.Generator().manual_seed(seed))


def _system(params, log_dir):
    client = GraphClient()
    pub_b = client.node.create_publisher(Image, "fluoro_b/image", QoSProfile(depth=5,
                                                                             reliability=ReliabilityPolicy.RELIABLE))
    with running_node(params, log_dir / "node.log", client=client) as (client, node):
        yield client, pub_b, Scene95(), node


def _pair(system, joints, sec):
    """A biplane pair stamped ``sec``; True once its pose is on /tf."""
    client, pub_b, scene, _ = system
    b = array_to_image(scene.frame(joints, seed=sec + 1000,
                                   cam_from_a=xyz_rpy_to_matrix(CAM_B_FROM_A[:3], CAM_B_FROM_A[3:])), "mono16")
    b.header.stamp = seconds_to_stamp(sec + 0.01)
    pub_b.publish(b)
    client.spin_for(0.3)
    send(client, array_to_image(scene.frame(joints, seed=sec), "mono16"), joints, sec)
    return client.spin_until(lambda: client.tf_for(sec) is not None, 90.0)


def _param(client, name):
    cli = client.node.create_client(GetParameters, "diffdrr_registration/get_parameters")
    assert cli.wait_for_service(timeout_sec=10.0)
    fut = cli.call_async(GetParameters.Request(names=[name]))
    assert client.spin_until(fut.done, 10.0)
    return fut.result().values[0].double_value


def status_values(client, after: int = 0) -> list[dict[str, str]]:
    return [{kv.key: kv.value for kv in s.values} for d in client.diags[after:] for s in d.status]


def _calibration(client):
    for d in reversed(client.diags):
        for s in d.status:
            if s.name == "diffdrr_ros: physics calibration":
                return s
    return None


def test_known_poses_calibrate_the_kvp_once(tmp_path):
    system = _system(PARAMS, tmp_path)
    sys_ = next(system)
    client, _, _, node = sys_
    try:
        assert _pair(sys_, JOINTS[0], 100), node.log()
        assert client.spin_until(lambda: _calibration(client) is not None
                                 and "pending (1 of 2 poses)" in _calibration(client).message, 10.0), node.log()
        assert _pair(sys_, JOINTS[1], 110), node.log()
        assert client.spin_until(lambda: _calibration(client) is not None
                                 and "pending" not in _calibration(client).message, 60.0), node.log()
        status = _calibration(client)
        msg = status.message
        assert "failed" not in msg and status.level == DiagnosticStatus.OK, msg  # improved, not at a bound
        kvp = _param(client, "registration.kvp")
        assert abs(kvp - TRUE_KVP) < 4.0, (kvp, msg)  # measured: 93.8 from 80
        assert f"kvp={kvp:.4g}" in msg and "similarity" in msg, msg
        registration = [s for s in status_values(client) if "physics_calibration" in s]
        assert registration and registration[-1]["physics_calibration"] == msg
        # The next frame registers with the fitted physics; the fit is not redone.
        n = len(client.diags)
        assert _pair(sys_, JOINTS[0], 120), node.log()
        assert client.spin_until(lambda: any(v.get("stamp") == f"{120:.6f}" for v in status_values(client, n)), 10.0)
        physics = next(v for v in status_values(client, n) if v.get("stamp") == f"{120:.6f}")["drr_physics"]
        assert f"kvp={kvp}" in physics, physics
        assert node.log().count("physics calibration from 2 known pose(s)") == 1, node.log()
    finally:
        system.close()


def test_disabled_changes_nothing(tmp_path):
    params = {**PARAMS, "calibration.enabled": False}
    system = _system(params, tmp_path)
    client, pub_b, scene, node = next(system)
    try:
        assert _pair((client, pub_b, scene, node), JOINTS[0], 100), node.log()
        client.spin_for(1.2)  # two diagnostics periods
        assert _calibration(client) is None
        assert not any(kv.key == "physics_calibration" for d in client.diags for s in d.status for kv in s.values)
        assert _param(client, "registration.kvp") == START_KVP
    finally:
        system.close()


def test_enabled_with_the_mono_drr_is_a_one_line_fatal():
    fatal, stderr = start_expecting_fatal("calibration.enabled:=true")
    assert len(fatal) == 1 and "calibration.enabled needs registration.drr_model: poly" in fatal[0], stderr


def test_the_report_warns_at_a_bound_without_improvement_and_on_failure():
    from diffdrr_ros.core.registration import PhysicsCalibration, RegistrationConfig
    from diffdrr_ros.ros.registration_node import PhysicsCalibrationState

    def state(before, after, at_bound=()):
        fit = PhysicsCalibration({"kvp": 140.0}, {"kvp": 80.0}, before, after, 3, 20, True, "", at_bound,
                                 RegistrationConfig(drr_model="poly"))
        return PhysicsCalibrationState(needed=2, done=True, result=fit).report()

    assert PhysicsCalibrationState(needed=3).report() == (DiagnosticStatus.OK, "pending (0 of 3 poses)")
    level, text = state(0.9, 0.95)
    assert level == DiagnosticStatus.OK and text.startswith("kvp=140 (from kvp=80); similarity 0.90000 -> 0.95000")
    level, text = state(0.9, 0.95, ("kvp",))
    assert level == DiagnosticStatus.WARN and "at its bound: kvp" in text
    level, text = state(0.9, 0.9)
    assert level == DiagnosticStatus.WARN and "did not improve" in text
    level, text = PhysicsCalibrationState(needed=2, done=True, error="RuntimeError: boom").report()
    assert level == DiagnosticStatus.WARN and text == "failed: RuntimeError: boom; physics unchanged"
