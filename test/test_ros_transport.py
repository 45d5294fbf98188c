"""Real DDS between two processes over loopback: an Image and TF round-trip exactly, and the
TF topics use tf2_ros's QoS (so tf2_ros listeners and broadcasters interoperate with ours).

The other process is test/ros_peer.py, started with this venv's Python. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run scripts/setup.sh")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not importable: run scripts/setup.sh")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

pytestmark = pytest.mark.ros

PEER = Path(__file__).with_name("ros_peer.py")
TIMEOUT_S = 20.0
IMAGE_TOPIC = "/diffdrr_ros_test/image"

# tf2_ros's listener QoS (tf2_ros/qos.hpp: DynamicListenerQoS, StaticListenerQoS).
TF2_ROS_DYNAMIC_LISTENER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
TF2_ROS_STATIC_LISTENER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
IMAGE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

# RIHS01 type hashes of upstream tf2_msgs on Jazzy: the vendored copy must hash the same, or
# rmw warns about (and some tools refuse) the type mismatch against a real ROS install.
UPSTREAM_TFMESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"

STAMP = (1_700_000_000, 123_456_789)


# --------------------------------------------------------------------------------------------
# expected content, built independently of ros_peer.py
def expected_pixels() -> list[int]:
    return [257 * (8 * r + c) + 3 for r in range(6) for c in range(8)]


EXPECTED_TF = [
    ("world", "ct", (0.125, -0.25, 1.5), (0.0, 0.0, 0.6, 0.8)),
    ("world", "detector_optical", (-0.1, 0.2, 0.3), (0.5, -0.5, 0.5, 0.5)),
]
EXPECTED_STATIC_TF = [("world", "c_arm_base", (1.0, 2.0, 0.75), (0.0, 0.0, 0.0, 1.0))]


def as_tuple(t: TransformStamped):
    tr, rot = t.transform.translation, t.transform.rotation
    return (t.header.frame_id, t.child_frame_id, (tr.x, tr.y, tr.z), (rot.x, rot.y, rot.z, rot.w))


# --------------------------------------------------------------------------------------------
# the peer process
class Peer:
    def __init__(self, mode: str, env: dict[str, str]):
        self.lines: list[str] = []  # stdout lines handed out by wait_for
        self._queue: queue.Queue[str | None] = queue.Queue()
        # a file, not a pipe: it never fills up and blocks the peer
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), mode, "--deadline", str(3 * TIMEOUT_S)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        # A reader thread, so that waiting for a line never blocks past its timeout.
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # EOF

    def wait_for(self, prefix: str, timeout: float = TIMEOUT_S) -> str:
        """The first stdout line starting with `prefix` (lines read so far included)."""
        for line in self.lines:
            if line.startswith(prefix):
                return line
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:  # EOF: the peer died
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"peer never printed {prefix!r}; {self.diagnostics()}")

    def qos(self) -> dict:
        return json.loads(self.wait_for("QOS ")[4:])

    def diagnostics(self) -> str:
        state = "still running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        err = ""
        if not self._stderr.closed:
            self._stderr.seek(0)
            err = self._stderr.read()[-3000:]
        return f"peer {state}; stdout read: {self.lines}; stderr: {err}"

    def stop(self) -> int | None:
        """SIGINT, then kill after 10 s; returns the exit code. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._stderr.close()


@pytest.fixture
def start_peer(ros_env) -> Iterator[Callable[[str], Peer]]:
    peers: list[Peer] = []

    def start(mode: str) -> Peer:
        peer = Peer(mode, ros_env)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.close()


@pytest.fixture
def ros_node() -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    """A node of this test process, in its own context (not rclpy's global one)."""
    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"diffdrr_ros_test_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def spin_until(executor: SingleThreadedExecutor, done: Callable[[], bool], timeout: float = TIMEOUT_S) -> bool:
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    return done()


# --------------------------------------------------------------------------------------------
def test_image_and_tf_round_trip_between_processes(start_peer, ros_node):
    node, executor = ros_node
    peer = start_peer("stream")
    peer.wait_for("READY")

    images: list[Image] = []
    tfs: list[TFMessage] = []
    node.create_subscription(Image, IMAGE_TOPIC, images.append, IMAGE_QOS)
    node.create_subscription(TFMessage, "/tf", tfs.append, TF2_ROS_DYNAMIC_LISTENER_QOS)

    got = spin_until(executor, lambda: bool(images) and bool(tfs))
    assert got, f"received {len(images)} images, {len(tfs)} TF messages; {peer.diagnostics()}"

    img = images[0]
    assert (img.header.stamp.sec, img.header.stamp.nanosec) == STAMP
    assert img.header.frame_id == "detector_optical"
    assert (img.height, img.width, img.encoding) == (6, 8, "mono16")
    assert img.is_bigendian == 0
    assert img.step == 16
    data = bytes(img.data)
    assert data == struct.pack("<48H", *expected_pixels())
    assert list(struct.unpack("<48H", data)) == expected_pixels()

    tf = tfs[0]
    assert [as_tuple(t) for t in tf.transforms] == EXPECTED_TF
    assert all((t.header.stamp.sec, t.header.stamp.nanosec) == STAMP for t in tf.transforms)

    code = peer.stop()
    assert code == 0, peer.diagnostics()


def test_tf_topics_use_tf2_ros_qos_and_static_reaches_late_joiner(start_peer, ros_env):
    peer = start_peer("static")
    # The static transform goes out before this process has any node: a late joiner.
    peer.wait_for("STATIC_SENT")

    qos = peer.qos()
    assert qos["/tf"] == {
        "depth": 100,
        "history": "KEEP_LAST",
        "reliability": "RELIABLE",
        "durability": "VOLATILE",
    }
    assert qos["/tf_static"] == {
        "depth": 1,
        "history": "KEEP_LAST",
        "reliability": "RELIABLE",
        "durability": "TRANSIENT_LOCAL",
    }

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("diffdrr_ros_test_late_joiner", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        statics: list[TFMessage] = []
        node.create_subscription(TFMessage, "/tf_static", statics.append, TF2_ROS_STATIC_LISTENER_QOS)
        assert spin_until(executor, lambda: bool(statics)), (
            f"late-joining /tf_static subscriber got nothing; {peer.diagnostics()}"
        )
        assert [as_tuple(t) for t in statics[0].transforms] == EXPECTED_STATIC_TF

        # What the other side offers, as seen through discovery.
        def infos(topic):
            return [
                i for i in node.get_publishers_info_by_topic(topic) if i.node_name.startswith("diffdrr_ros_test_peer")
            ]

        assert spin_until(executor, lambda: bool(infos("/tf")) and bool(infos("/tf_static")))
        tf_info, static_info = infos("/tf")[0], infos("/tf_static")[0]
        assert tf_info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        assert tf_info.qos_profile.durability == DurabilityPolicy.VOLATILE
        assert static_info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        assert static_info.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
        assert tf_info.topic_type == "tf2_msgs/msg/TFMessage"
        # Same type hash as upstream tf2_msgs: a real tf2_ros sees the same type.
        assert str(tf_info.topic_type_hash) == UPSTREAM_TFMESSAGE_HASH
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    code = peer.stop()
    assert code == 0, peer.diagnostics()
