"""The OpenIGTLink bridge: a separate process, real DDS on loopback, real pyigtl clients and raw sockets.

One bridge process serves the node tests (the first one sees it before any pose; the others
publish the pose they check); the watchdog test builds a bridge in this process to end its
server thread; the last tests drive the server class alone (no ROS) over real sockets.
"""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pyigtl
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from diffdrr_ros.core.geometry import rotations as rt
from diffdrr_ros.ros.conversions import array_to_image, seconds_to_stamp, stamp_to_seconds
from diffdrr_ros.ros.harness import GraphClient, NodeProcess
from diffdrr_ros.ros.qos import TF_QOS

pytestmark = pytest.mark.ros

PRIOR_DEVICE = "CTPrior"
PRIOR_TOPIC = "test_prior_pose"
F3 = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, step: float = 0.01):
    """``predicate()``'s first truthy value within ``timeout`` s, else None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


class Peer:
    """The ROS side of a test: publishes /tf and overlays, records priors and the bridge's diagnostics."""

    def __init__(self) -> None:
        self.graph = GraphClient(node_name="igtl_test_unused")
        node = self.graph.node
        self.tf_pub = node.create_publisher(TFMessage, "/tf", TF_QOS)
        self.image_pub = node.create_publisher(Image, "diffdrr_registration/overlay", 2)
        self.priors: list[PoseStamped] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(PoseStamped, PRIOR_TOPIC, self.priors.append, latched)

    def spin_until(self, predicate, timeout: float) -> bool:
        return self.graph.spin_until(predicate, timeout)

    def publish_pose(self, t_lps_m: np.ndarray, stamp_s: float, parent: str = "carm_isocenter",
                     child: str = "ct") -> TransformStamped:
        q = rt.matrix_to_quaternion(_tensor(t_lps_m[:3, :3])).tolist()  # w, x, y, z
        tr = TransformStamped()
        tr.header.stamp = seconds_to_stamp(stamp_s)
        tr.header.frame_id, tr.child_frame_id = parent, child
        tr.transform.translation.x, tr.transform.translation.y, tr.transform.translation.z = map(float, t_lps_m[:3, 3])
        r = tr.transform.rotation
        r.w, r.x, r.y, r.z = q
        self.tf_pub.publish(TFMessage(transforms=[tr]))
        return tr

    def bridge_diagnostics(self, after: int = 0) -> dict[str, str] | None:
        for arr in reversed(self.graph.diags[after:]):
            for s in arr.status:
                if s.name == "diffdrr_ros: igtl_bridge":
                    return {"message": s.message, "level": s.level, **{kv.key: kv.value for kv in s.values}}
        return None

    def close(self) -> None:
        self.graph.close()


def _tensor(a: np.ndarray):
    import torch

    return torch.as_tensor(a, dtype=torch.float64)


def pose_lps_m(seed: int) -> np.ndarray:
    """A rigid CT pose in the C-arm frame (LPS, m): a few degrees off and tens of mm away, as registered."""
    g = np.random.default_rng(seed)
    angles = g.uniform(-0.4, 0.4, 3)
    rot = (rt.rot_z(_tensor(angles[2])) @ rt.rot_y(_tensor(angles[1])) @ rt.rot_x(_tensor(angles[0]))).numpy()
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot, g.uniform(-0.15, 0.15, 3)
    return t


def expected_ras_mm(t_lps_m: np.ndarray) -> np.ndarray:
    """docs/geometry.md: R' = F3 R F3, t' = 1000 F3 t (written out here, not the module's code)."""
    out = np.eye(4)
    out[:3, :3] = F3 @ t_lps_m[:3, :3] @ F3
    out[:3, 3] = 1000.0 * F3 @ t_lps_m[:3, 3]
    return out


class History(dict):
    """pyigtl's per-device slot of the newest message, which here also keeps every message in order."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[pyigtl.MessageBase] = []

    def __setitem__(self, key, value) -> None:
        self.messages.append(value)
        super().__setitem__(key, value)


def connect(port: int, timeout: float = 20.0) -> tuple[pyigtl.OpenIGTLinkClient, pyigtl.StringMessage]:
    """A pyigtl client, once the bridge served it: the status every new client gets first."""
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port, start_now=False)
    client.incoming_messages = History()
    client.start()
    status = client.wait_for_message("CTToCArmStatus", timeout=timeout)
    if status is None:
        client.stop()
        raise AssertionError(f"no status STRING from the bridge on port {port} within {timeout} s")
    return client, status


def received(client: pyigtl.OpenIGTLinkClient, kind: str) -> list[pyigtl.MessageBase]:
    """Every message of type ``kind`` the client got so far, in order."""
    return [m for m in list(client.incoming_messages.messages) if m.message_type == kind]


def wait_status(client: pyigtl.OpenIGTLinkClient, predicate, timeout: float) -> pyigtl.StringMessage | None:
    return wait(lambda: next((m for m in received(client, "STRING") if predicate(m.string)), None), timeout)


def same_pose(msg: pyigtl.MessageBase, t_lps: np.ndarray) -> bool:
    return bool(np.allclose(msg.matrix, expected_ras_mm(t_lps), atol=1e-4, rtol=0))


def wait_pose(client: pyigtl.OpenIGTLinkClient, t_lps: np.ndarray, timeout: float) -> pyigtl.MessageBase | None:
    return wait(lambda: next((m for m in received(client, "TRANSFORM") if same_pose(m, t_lps)), None), timeout)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("igtl") / "bridge.log"
    proc = NodeProcess({"port": port, "prior_device": PRIOR_DEVICE, "prior_topic": PRIOR_TOPIC,
                        "max_pose_age_s": 30.0, "status_period_s": 0.5, "diagnostics_period_s": 0.2},
                       log, module="diffdrr_ros.ros.igtl_bridge", params_file=None)
    peer = Peer()
    try:
        # /tf has two subscribers once the bridge's matched: the GraphClient's own and the bridge's
        up = peer.spin_until(lambda: peer.tf_pub.get_subscription_count() >= 2 or not proc.alive(), 60.0)
        assert up and proc.alive(), proc.log()
        assert peer.image_pub.get_subscription_count() == 0  # no client yet: the overlay is not followed
        yield proc, peer, port
    finally:
        rc = proc.stop()
        peer.close()
    assert rc == 0, proc.log()  # SIGINT: a clean exit
    log = proc.log(tail=100_000)
    assert "Traceback" not in log and "context is invalid" not in log, log


def test_status_then_the_pose_from_tf_in_ras_mm_stamped_with_the_tf_stamp(bridge):
    proc, peer, port = bridge
    client, status = connect(port)
    try:
        assert status.string.startswith("no pose: no transform carm_isocenter -> ct"), status.string
        # A pose older than max_pose_age_s (30 s) is not sent; the status says why.
        peer.publish_pose(pose_lps_m(0), time.time() - 60.0)
        stale = wait_status(client, lambda s: "old" in s, 10.0)
        assert stale is not None and stale.string.startswith("no pose: the last pose is 6"), stale
        assert received(client, "TRANSFORM") == []  # (it would have come before the status)
        # A fresh one is sent, in RAS mm, with the TF's stamp.
        t_lps = pose_lps_m(1)
        stamp = time.time()
        tr = peer.publish_pose(t_lps, stamp)
        msg = wait(lambda: next(iter(received(client, "TRANSFORM")), None), 10.0)
        assert msg is not None, proc.log()
        assert msg.device_name == "CTToCArm"
        np.testing.assert_allclose(msg.matrix[:3, 3], expected_ras_mm(t_lps)[:3, 3], atol=1e-4, rtol=0)
        np.testing.assert_allclose(msg.matrix[:3, :3], expected_ras_mm(t_lps)[:3, :3], atol=1e-6, rtol=0)
        np.testing.assert_allclose(msg.matrix[3], [0, 0, 0, 1])
        assert abs(msg.timestamp - stamp_to_seconds(tr.header.stamp)) < 1e-6
        tracking = wait_status(client, lambda s: s == "tracking", 5.0)
        assert tracking is not None and abs(tracking.timestamp - stamp_to_seconds(tr.header.stamp)) < 1e-6
        # Another child of the same parent (the simulator's ground truth) is not the CT's pose.
        peer.publish_pose(pose_lps_m(2), stamp + 0.1, child="ct_ground_truth")
        t_next = pose_lps_m(3)
        peer.publish_pose(t_next, stamp + 0.2)
        assert wait_pose(client, t_next, 10.0) is not None, proc.log()
        assert all(same_pose(m, t_lps) or same_pose(m, t_next) for m in received(client, "TRANSFORM"))
    finally:
        client.stop()


def test_an_overlay_arrives_as_an_image_of_its_size(bridge):
    proc, peer, port = bridge
    client, _ = connect(port)
    try:
        assert peer.spin_until(lambda: peer.image_pub.get_subscription_count() > 0, 10.0)  # with a client
        h, w = 24, 40
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
        rgb[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
        rgb[3, 5] = (255, 0, 128)
        stamp = seconds_to_stamp(time.time())
        peer.image_pub.publish(array_to_image(rgb, "rgb8", stamp, "carm_detector_optical"))
        msg = client.wait_for_message("CTOverlay", timeout=10.0)
        assert msg is not None, proc.log()
        assert msg.message_type == "IMAGE" and msg.image.shape == (1, h, w, 3)
        np.testing.assert_array_equal(msg.image[0], rgb)
        assert abs(msg.timestamp - stamp_to_seconds(stamp)) < 1e-6
    finally:
        client.stop()


def test_a_client_that_disconnects_and_reconnects_still_receives(bridge):
    proc, peer, port = bridge
    first, _ = connect(port)
    t_lps = pose_lps_m(9)
    peer.publish_pose(t_lps, time.time())
    assert wait_pose(first, t_lps, 10.0) is not None, proc.log()
    first.stop()
    for k in range(2):
        client, status = connect(port)
        try:
            assert status.string == "tracking"
            assert wait_pose(client, t_lps, 5.0) is not None  # a new client gets the current pose at once
            t_lps = pose_lps_m(10 + k)
            peer.publish_pose(t_lps, time.time())
            assert wait_pose(client, t_lps, 10.0) is not None, proc.log()
        finally:
            client.stop()
    assert proc.alive()


def _read_until_closed(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes the connection within ``timeout`` s."""
    sock.settimeout(0.1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def _header(kind: bytes, device: bytes, body: bytes, body_size: int | None = None, crc: int | None = None) -> bytes:
    from pyigtl.messages import CRC64

    size = len(body) if body_size is None else body_size
    return struct.pack("> H 12s 20s I I Q Q", 1, kind, device, 0, 0, size, CRC64(body) if crc is None else crc)


def test_garbage_from_clients_does_not_stop_the_bridge(bridge):
    proc, peer, port = bridge
    n_diags = len(peer.graph.diags)
    rng = np.random.default_rng(0)
    # 1. random bytes: the bridge hangs up (the stream cannot be read as OpenIGTLink)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        assert _read_until_closed(s, 10.0), proc.log()
    # 2. a header cut short, then the client leaves (pyigtl 0.3.4's own server spins on this forever)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x00\x01TRANSF")
    # 3. a header that announces a 1 TB body and then nothing, the connection left open (a stuck client)
    stuck = socket.create_connection(("127.0.0.1", port))
    stuck.sendall(_header(b"IMAGE", b"Huge", b"", body_size=1 << 40))
    # 4. a well-framed TRANSFORM named as the prior, with a wrong CRC
    body = struct.pack("> 12f", 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 5.0, 6.0, 7.0)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_header(b"TRANSFORM", PRIOR_DEVICE.encode(), body, crc=12345) + body)
        assert not _read_until_closed(s, 0.3)  # a bad CRC drops the message, not the connection
    try:
        client, _ = connect(port)  # served while the stuck client waits
        try:
            t_lps = pose_lps_m(20)
            peer.publish_pose(t_lps, time.time())
            assert wait_pose(client, t_lps, 10.0) is not None, proc.log()
        finally:
            client.stop()
    finally:
        stuck.close()
    assert proc.alive(), proc.log()

    def counted():
        d = peer.bridge_diagnostics(n_diags)
        return d if d and int(d["protocol_errors"]) >= 1 and int(d["messages_dropped"]) >= 1 else None

    assert peer.spin_until(counted, 15.0), (peer.bridge_diagnostics(), proc.log())
    log = proc.log(tail=100_000)
    assert log.count("not OpenIGTLink") == 1, log  # logged once, counted after


def test_a_prior_from_the_client_is_published_as_a_pose_in_the_carm_frame(bridge):
    proc, peer, port = bridge
    n_diags = len(peer.graph.diags)
    client, _ = connect(port)
    try:
        scaled = np.diag([2.0, 2.0, 2.0, 1.0])  # not rigid: ignored (counted, logged once)
        client.send_message(pyigtl.TransformMessage(scaled, device_name=PRIOR_DEVICE), wait=True)
        t_lps = pose_lps_m(30)
        client.send_message(pyigtl.TransformMessage(expected_ras_mm(t_lps), device_name=PRIOR_DEVICE), wait=True)
        assert peer.spin_until(lambda: bool(peer.priors), 10.0), proc.log()

        def counted():
            d = peer.bridge_diagnostics(n_diags)
            return d if d and int(d["priors_rejected"]) + int(d["priors_published"]) >= 2 else None

        assert peer.spin_until(counted, 10.0), peer.bridge_diagnostics()
        d = counted()
        assert (d["priors_rejected"], d["priors_published"]) == ("1", "1"), d
    finally:
        client.stop()
    msg = peer.priors[-1]
    assert msg.header.frame_id == "carm_isocenter"
    p, q = msg.pose.position, msg.pose.orientation
    np.testing.assert_allclose([p.x, p.y, p.z], t_lps[:3, 3], atol=1e-7, rtol=0)  # metres (float32 mm on the wire)
    rot = rt.quaternion_to_matrix(_tensor(np.array([q.w, q.x, q.y, q.z]))).numpy()
    np.testing.assert_allclose(rot, t_lps[:3, :3], atol=1e-6, rtol=0)


def test_the_bridge_reports_on_diagnostics(bridge):
    _, peer, port = bridge
    n = len(peer.graph.diags)
    client, _ = connect(port)
    try:
        t_lps = pose_lps_m(40)
        peer.publish_pose(t_lps, time.time())
        assert peer.spin_until(lambda: peer.image_pub.get_subscription_count() > 0, 10.0)
        peer.image_pub.publish(array_to_image(np.zeros((4, 6, 3), np.uint8), "rgb8", seconds_to_stamp(time.time())))
        assert wait_pose(client, t_lps, 10.0) is not None
        assert wait(lambda: received(client, "IMAGE"), 10.0)

        def connected():
            d = peer.bridge_diagnostics(n)
            return d if d and d["client_connected"] == "True" and int(d.get("sent_image", 0)) >= 1 else None

        d = peer.spin_until(connected, 10.0) and connected()
        assert d, peer.bridge_diagnostics()
        assert int(d["messages_sent"]) > 0 and int(d["sent_transform"]) > 0 and int(d["clients"]) == 1
        assert 0.0 <= float(d["last_pose_age_s"]) < 30.0 and d["listen"] == f"127.0.0.1:{port}"
        assert d["message"] == "tracking; 1 client(s) connected" and d["status"] == "tracking"
    finally:
        client.stop()


def test_a_busy_port_is_a_one_line_startup_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = NodeProcess({"port": port}, tmp_path / "busy.log", module="diffdrr_ros.ros.igtl_bridge",
                           params_file=None)
        rc = proc.proc.wait(timeout=60)
    assert rc == 1, proc.log()
    assert f"[FATAL] [igtl_bridge]: cannot listen on 127.0.0.1:{port}" in proc.log(), proc.log()
    assert "Traceback" not in proc.log()


def test_the_server_is_restarted_when_its_thread_ends():
    from diffdrr_ros.ros.igtl_bridge import IgtlBridgeNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    port = free_port()
    node = IgtlBridgeNode(context=ctx, parameter_overrides=[Parameter("port", value=port)])
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    try:
        first = node.server
        first.shutdown()  # the accept loop ends, as if its thread had died
        end = time.monotonic() + 10.0
        while time.monotonic() < end and (node.server is first or not node.server.serving()):
            executor.spin_once(timeout_sec=0.05)
        assert node.server is not first and node.server.serving()
        client, status = connect(port)
        client.stop()
        assert status.string.startswith("no pose")
        assert node._stats["server_restarts"] == 1
    finally:
        node.shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


# ------------------------------------------------------------------ the server alone (no ROS), real sockets


@pytest.fixture
def server():
    from diffdrr_ros.ros.igtl_bridge import IgtlServer

    got: list[pyigtl.MessageBase] = []
    logs: list[str] = []
    srv = IgtlServer("127.0.0.1", 0, on_message=got.append, log=lambda key, text: logs.append(text),
                     on_connect=lambda: [pyigtl.StringMessage("hello", device_name="CTToCArmStatus")],
                     receive_timeout_s=0.3, max_clients=2)
    srv.start()
    try:
        yield srv, got, logs
    finally:
        srv.stop()


def test_a_stalled_message_ends_its_connection_while_others_are_served(server):
    srv, _, logs = server
    with socket.create_connection(("127.0.0.1", srv.port)) as stuck:
        stuck.sendall(_header(b"TRANSFORM", b"X", b"\0" * 48))  # a header, its body never comes
        client, _ = connect(srv.port)
        try:
            srv.send_message(pyigtl.StringMessage("still here", device_name="Other"))
            assert wait(lambda: [m for m in received(client, "STRING") if m.string == "still here"], 5.0)
        finally:
            client.stop()
        assert _read_until_closed(stuck, 5.0)
    assert wait(lambda: srv.counters.protocol_errors == 1, 5.0), logs
    assert any("cut short" in t for t in logs), logs


def test_an_oversized_body_is_skipped_and_the_next_message_read(server):
    from diffdrr_ros.ros.igtl_bridge import MAX_BODY_BYTES

    srv, got, _ = server
    big = MAX_BODY_BYTES + 1
    transform = pyigtl.TransformMessage(np.diag([1.0, 1.0, 1.0, 1.0]), device_name="After").pack()
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(_header(b"IMAGE", b"Huge", b"", body_size=big, crc=0))
        s.sendall(b"\0" * big)
        s.sendall(transform)
        assert wait(lambda: [m for m in got if m.device_name == "After"], 10.0)
    assert srv.counters.skipped_large == 1 and srv.counters.protocol_errors == 0


def test_clients_beyond_the_limit_are_refused_and_the_others_kept(server):
    srv, _, logs = server
    a, _ = connect(srv.port)
    b, _ = connect(srv.port)
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as third:
            assert _read_until_closed(third, 5.0)  # closed at once
        assert srv.counters.refused == 1 and any("refused" in t for t in logs)
        srv.send_message(pyigtl.StringMessage("both", device_name="Other"))
        for c in (a, b):
            assert wait(lambda c=c: [m for m in received(c, "STRING") if m.string == "both"], 5.0)
    finally:
        a.stop()
        b.stop()


def test_header_version_2_messages_with_metadata_are_read(server):
    srv, got, _ = server
    msg = pyigtl.TransformMessage(np.array([[0, -1, 0, 1.5], [1, 0, 0, -2.5], [0, 0, 1, 3.5], [0, 0, 0, 1]]),
                                  device_name="V2")
    msg.header_version = 2
    msg.metadata = {"Status": "OK"}
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(msg.pack())
        m = wait(lambda: next((m for m in got if m.device_name == "V2"), None), 5.0)
    assert m is not None and m.metadata == {"Status": "OK"}
    np.testing.assert_allclose(m.matrix, msg.matrix)
