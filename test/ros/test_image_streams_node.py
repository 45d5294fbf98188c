"""The registration node on frames as a flat panel delivers them: 1024 x 1024 mono16, raw or as 16-bit PNG.

One node process per transport (``image.transport: raw`` / ``compressed``), with ``image.binning:
16``: the 1024 px frames are binned to 64 px as they arrive and registered there. Checks the pose,
the camera frames on /tf (the images' frame included), the overlay's CameraInfo, the input
topics' frequency / stamp status on /diagnostics, bad compressed bytes, and the image QoS
following a best-effort publisher.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from test_registration_node import Scene

from diffdrr_ros.core.drr import render, to_intensity
from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.geometry.kinematics import CArmJoints, initial_pose
from diffdrr_ros.ros.conversions import (
    JointNames,
    array_to_compressed,
    array_to_image,
    joints_to_message,
    seconds_to_stamp,
)
from diffdrr_ros.ros.harness import GraphClient, running_node

PANEL = 1024  # px a side, as delivered
PITCH = 0.375  # mm: a 384 mm panel
BINNING = 16  # -> 64 px of 6 mm
WORK = PANEL // BINNING
I0 = 4000.0
SDD, SID = 1020.0, 750.0
NODE_PARAMS = {
    "ct_path": "phantom:head_small", "device": "cpu",
    "detector.height": PANEL, "detector.width": PANEL, "detector.pixel_spacing_mm": [PITCH, PITCH],
    "detector.sdd_mm": SDD, "detector.sid_mm": SID, "image.binning": BINNING, "image.i0": I0,
    "registration.pyramid": [4, 2, 1], "registration.init_search_first_frame": False,
    "registration.min_similarity": 0.95, "gate.allow_unresolved_depth": True, "joints.max_age_s": 0.2,
    "diagnostics_period_s": 0.5,
}
JOINTS = CArmJoints(lao_rad=math.radians(20), cranial_rad=math.radians(5))


class Panel(Scene):
    """:class:`Scene`'s phantom (4 mm / 3 degrees off the prior) imaged by a 1024 px panel (Poisson noise per
    panel pixel)."""

    def frame(self, joints: CArmJoints, seed: int) -> np.ndarray:
        """(1024, 1024) uint16: the DRR at 128 px (cheap on 2 cores) spread over 8 x 8 panel pixels, then noise."""
        det = Detector(128, 128, spacing_mm=(PITCH * 8, PITCH * 8), sdd_mm=SDD, sid_mm=SID)
        line = render(self.mu, initial_pose(joints, self.table_from_ct), det)
        mean = np.kron(to_intensity(line).numpy() * I0, np.ones((8, 8)))
        counts = np.random.default_rng(seed).poisson(mean)
        return np.clip(counts, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module", params=["raw", "compressed"])
def system(request, tmp_path_factory):
    transport = request.param
    with running_node({**NODE_PARAMS, "image.transport": transport},
                      tmp_path_factory.mktemp(f"node_{transport}") / "node.log",
                      client=GraphClient(image_transport=transport)) as (client, node):
        yield client, Panel(), node, transport


def _message(pixels: np.ndarray, transport: str) -> Image | CompressedImage:
    return array_to_compressed(pixels, "mono16") if transport == "compressed" else array_to_image(pixels, "mono16")


def send(client: GraphClient, msg, joints: CArmJoints | None, sec: int) -> None:
    if joints is not None:
        client.joint_pub.publish(joints_to_message(joints, JointNames(), seconds_to_stamp(sec)))
        client.spin_until(lambda: False, 0.2)
    msg.header.stamp = seconds_to_stamp(sec)
    msg.header.frame_id = "carm_detector_optical"
    client.image_pub.publish(msg)


def _values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _translation(tf) -> np.ndarray:
    t = tf.transform.translation
    return np.array([t.x, t.y, t.z])


def test_a_1024_px_frame_registers_with_camera_frames_and_camera_info(system):
    client, panel, node, transport = system
    n_overlays, n_infos = len(client.overlays), len(client.overlay_infos)
    pixels = panel.frame(JOINTS, seed=1)
    msg = _message(pixels, transport)
    if transport == "compressed":
        assert msg.format == "mono16; png compressed" and len(msg.data) < pixels.nbytes
    send(client, msg, JOINTS, 100)
    assert client.spin_until(lambda: client.tf_for(100) is not None, 60.0), f"no TF:\n{node.log()}"
    assert panel.mtre(client.tf_for(100), JOINTS) < 2.0, node.log()
    # The images' frame and the source are on /tf at the frame's stamp: the detector SDD from the source.
    det_tf = client.tf_for(100, child="carm_detector_optical")
    src_tf = client.tf_for(100, child="carm_source_optical")
    assert det_tf is not None and src_tf is not None
    assert det_tf.header.frame_id == "carm_isocenter"
    assert np.linalg.norm(_translation(det_tf) - _translation(src_tf)) == pytest.approx(SDD / 1000, abs=1e-9)
    assert np.linalg.norm(_translation(src_tf)) == pytest.approx(SID / 1000, abs=1e-9)
    # The overlay at the working size, its CameraInfo beside it: same stamp and frame, K of the binned detector.
    assert client.spin_until(lambda: len(client.overlays) > n_overlays and len(client.overlay_infos) > n_infos,
                             10.0), f"{len(client.overlays)} {len(client.overlay_infos)}\n{node.log()}"
    ov = client.overlays[-1]
    info = next(i for i in reversed(client.overlay_infos) if i.header.stamp == ov.header.stamp)
    assert (ov.height, ov.width) == (WORK, WORK)
    assert info.header.frame_id == ov.header.frame_id == "carm_source_optical"
    assert (info.height, info.width) == (WORK, WORK)
    f_px = SDD / (PITCH * BINNING)
    np.testing.assert_allclose(info.k, [f_px, 0, (WORK - 1) / 2, 0, f_px, (WORK - 1) / 2, 0, 0, 1])
    np.testing.assert_allclose(np.array(info.p).reshape(3, 4)[:, :3], np.array(info.k).reshape(3, 3))
    assert client.spin_until(lambda: client.diag_saying("registered", 0) is not None, 10.0)
    status = client.diag_saying("registered", 0)
    assert float(_values(status)["decode_ms"]) < 5000  # binned before the heavy work


def test_input_topics_report_frequency_and_stamp_delay(system):
    client, panel, _node, transport = system
    image_topic = "/fluoro/image/compressed" if transport == "compressed" else "/fluoro/image"

    def joint_status_ok() -> bool:
        s = client.status_named("/carm/joint_states topic status")
        return s is not None and s.level == DiagnosticStatus.OK

    end_ok = False
    for _ in range(160):  # joints at ~20 Hz, stamped now, until the window is full of them (deadline ~8 s)
        now = client.node.get_clock().now().nanoseconds * 1e-9
        client.joint_pub.publish(joints_to_message(JOINTS, JointNames(), seconds_to_stamp(now)))
        client.spin_until(lambda: False, 0.05)
        if joint_status_ok():
            end_ok = True
            break
    assert end_ok, f"joint states never 'Desired frequency met':\n{client.status_named('joint_states topic status')}"
    s = client.status_named("/carm/joint_states topic status")
    assert s.name == "diffdrr_registration: /carm/joint_states topic status"
    assert s.message == "Desired frequency met; Timestamps are reasonable."
    values = _values(s)
    for key in ("Events in window", "Events since startup", "Duration of window (s)", "Actual frequency (Hz)",
                "Minimum acceptable frequency (Hz)", "Maximum acceptable frequency (Hz)", "Earliest timestamp delay:",
                "Latest timestamp delay:", "Earliest acceptable timestamp delay:",
                "Latest acceptable timestamp delay:", "Late diagnostic update count:"):
        assert key in values, key
    assert 5.0 * 0.9 <= float(values["Actual frequency (Hz)"]) <= 1000.0 * 1.1
    # The frames are stamped 100 s, ... (long ago on this clock): the image topic says so.
    n = len(client.diags)
    send(client, _message(panel.frame(JOINTS, seed=2), transport), None, 120)
    assert client.spin_until(lambda: (s := client.status_named(f"{image_topic} topic status", n)) is not None
                             and "Timestamps too far in past seen." in s.message, 10.0)
    s = client.status_named(f"{image_topic} topic status", n)
    assert s.level == DiagnosticStatus.ERROR
    assert "Frames missing (stamp gaps)" in _values(s)


def test_bad_compressed_bytes_are_rejected_and_counted(system):
    client, panel, node, transport = system
    if transport != "compressed":
        pytest.skip("CompressedImage only")
    bad = CompressedImage(format="mono16; png compressed")
    bad.data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    before = len(client.diags)
    send(client, bad, JOINTS, 200)
    assert client.spin_until(lambda: client.diag_saying("bad compressed image", before) is not None, 20.0), node.log()
    status = client.diag_saying("bad compressed image", before)
    assert status.level == DiagnosticStatus.WARN and "cannot decode" in status.message
    assert int(_values(status)["compressed_decode_errors"]) >= 1
    assert client.tf_for(200) is None and node.alive()
    send(client, _message(panel.frame(JOINTS, seed=3), transport), JOINTS, 201)
    assert client.spin_until(lambda: client.tf_for(201) is not None, 60.0), node.log()


def test_wrong_panel_size_is_rejected(system):
    client, panel, node, transport = system
    before = len(client.diags)
    send(client, _message(panel.frame(JOINTS, seed=4)[:1000, :1000].copy(), transport), JOINTS, 210)
    assert client.spin_until(lambda: client.diag_saying("wrong image size", before) is not None, 20.0), node.log()
    assert "expected 1024x1024 (binned by 16 to 64x64)" in client.diag_saying("wrong image size", before).message
    assert client.tf_for(210) is None and node.alive()


def _image_events(client: GraphClient) -> int:
    s = client.status_named("/fluoro/image topic status")
    return 0 if s is None else int(_values(s)["Events since startup"])


def test_image_qos_follows_a_best_effort_publisher(system):
    client, panel, node, transport = system
    if transport != "raw":
        pytest.skip("once is enough")
    # A reliable subscription never matches a best-effort publisher: the match shows the node re-subscribed.
    be_pub = client.node.create_publisher(Image, "fluoro/image", qos_profile_sensor_data)
    try:
        assert client.spin_until(lambda: be_pub.get_subscription_count() > 0, 20.0), node.log()
        assert "offers best effort only" in node.log(100000)
        # Best effort loses large frames on the way (docs/image-streams.md); those lost are counted, not silent:
        # every frame sent is received or reported lost by DDS (a last small frame makes the gaps known).
        received_before = _image_events(client)
        n = 6
        big = np.random.default_rng(0).integers(1000, 4000, (PANEL, PANEL), dtype=np.uint16)
        for k in range(n + 1):
            msg = array_to_image(big if k < n else big[:64, :64].copy(), "mono16")
            msg.header.stamp = seconds_to_stamp(250 + k)
            be_pub.publish(msg)
            client.spin_until(lambda: False, 0.2)

        def accounted() -> bool:
            s = client.status_named("/fluoro/image topic status")
            if s is None:
                return False
            lost = int(_values(s).get("Messages lost (DDS)", "0"))
            return _image_events(client) - received_before + lost >= n

        assert client.spin_until(accounted, 15.0), (client.status_named("/fluoro/image topic status"), node.log())
    finally:
        client.node.destroy_publisher(be_pub)
    # Gone again: back to reliable (frames of any size), and frames still register.
    assert client.spin_until(lambda: len(re.findall(r"frames from /fluoro/image \(Image, reliable",
                                                    node.log(100000))) >= 2, 20.0), node.log()
    assert client.spin_until(lambda: client.image_pub.get_subscription_count() > 0, 10.0)
    send(client, _message(panel.frame(JOINTS, seed=5), transport), JOINTS, 300)
    assert client.spin_until(lambda: client.tf_for(300) is not None, 60.0), node.log()
