"""Bags: offline writing, the rosbag2 format on disk, play and record over real DDS (loopback,
separate processes), and scoring a synthetic run with known errors and latencies.

The second processes are ``python -m diffdrr_ros.bag play ...`` and test/bag/bag_peer.py, started
with this Python and the session's ROS domain (``ros_env``). Every wait is bounded.
"""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run scripts/setup.sh")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not importable: run scripts/setup.sh")
pytest.importorskip("rosbags", reason="rosbags not installed")

from geometry_msgs.msg import PoseStamped, TransformStamped  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from diffdrr_ros.bag import BagError, record_messages  # noqa: E402
from diffdrr_ros.bag.common import ensure_type, message_class, parse_remaps  # noqa: E402
from diffdrr_ros.bag.scoring import header_stamp_ns, score_bag  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import bag_peer  # noqa: E402

PEER = Path(__file__).with_name("bag_peer.py")
TIMEOUT_S = 20.0
S = 1_000_000_000


# --------------------------------------------------------------------------------------------
# helpers


def image(i: int, h: int = 4, w: int = 6) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + i, 250_000_000
    msg.header.frame_id = "detector_optical"
    msg.height, msg.width, msg.encoding, msg.step = h, w, "mono16", 2 * w
    msg.data = struct.pack(f"<{h * w}H", *[(977 * i + 31 * k) % 65536 for k in range(h * w)])
    return msg


def tf(i: int, x: float = 0.1) -> TFMessage:
    t = TransformStamped()
    t.header.stamp.sec, t.header.stamp.nanosec = 100 + i, 250_000_000
    t.header.frame_id, t.child_frame_id = "carm_isocenter", "ct"
    t.transform.translation.x, t.transform.translation.y = x + i * 1e-3, -0.02
    t.transform.rotation.z, t.transform.rotation.w = 0.6, 0.8
    return TFMessage(transforms=[t])


def joints(i: int) -> JointState:
    return JointState(name=["carm_lao_rao", "table_x"], position=[0.01 * i, -0.5])


def sample_messages(n: int = 6, dt_ns: int = 50_000_000):
    """Images, TFs, joint states and one /tf_static, with log times ``dt_ns`` apart."""
    t0 = 1_700_000_000 * S
    out = [("/tf_static", "tf2_msgs/msg/TFMessage", t0, tf(-1, 0.0))]
    for i in range(n):
        out.append(("fluoro/image", "sensor_msgs/msg/Image", t0 + i * dt_ns + 1, image(i)))
        out.append(("/carm/joint_states", None, t0 + i * dt_ns + 2, joints(i)))
        out.append(("/tf", "tf2_msgs/msg/TFMessage", t0 + i * dt_ns + 3, serialize_message(tf(i))))
    return out


def read_bag(path: Path):
    with Reader(path) as reader:
        return [(c.topic, c.msgtype, t, bytes(d)) for c, t, d in reader.messages()], list(reader.connections)


class Listener:
    """Private-context subscriber spun in a thread; collects (topic, message, monotonic time)."""

    def __init__(self, topics: dict[str, tuple[type, QoSProfile]]) -> None:
        self.ctx = Context()
        rclpy.init(context=self.ctx, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node("diffdrr_ros_bag_test_listener", context=self.ctx)
        self.received: list[tuple[str, object, float]] = []
        self.lock = threading.Lock()
        for topic, (cls, qos) in topics.items():
            self.node.create_subscription(cls, topic, self._cb(topic), qos)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _cb(self, topic: str):
        def cb(msg) -> None:
            with self.lock:
                self.received.append((topic, msg, time.monotonic()))
        return cb

    def _spin(self) -> None:
        while not self.stop.is_set():
            self.executor.spin_once(timeout_sec=0.02)

    def on(self, topic: str) -> list:
        with self.lock:
            return [(m, t) for tp, m, t in self.received if tp == topic]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        self.ctx.try_shutdown()


RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def run_play(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffdrr_ros.bag", "play", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


# --------------------------------------------------------------------------------------------
# offline writing and the on-disk format


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_record_messages_round_trip(tmp_path: Path, storage: str) -> None:
    messages = sample_messages()
    counts = record_messages(tmp_path / "bag", messages, storage)
    assert counts == {"/tf_static": 1, "/fluoro/image": 6, "/carm/joint_states": 6, "/tf": 6}

    got, conns = read_bag(tmp_path / "bag")
    assert {c.topic: c.msgtype for c in conns} == {
        "/tf_static": "tf2_msgs/msg/TFMessage", "/fluoro/image": "sensor_msgs/msg/Image",
        "/carm/joint_states": "sensor_msgs/msg/JointState", "/tf": "tf2_msgs/msg/TFMessage"}
    assert len(got) == len(messages)
    assert [t for _, _, t, _ in got] == sorted(t for _, _, t, _ in messages)  # read back in log-time order
    for (topic, _, stamp, data), (_, msgtype, stamp_in, msg) in zip(got, messages, strict=True):
        assert stamp == stamp_in
        original = msg if not isinstance(msg, bytes) else deserialize_message(msg, message_class(msgtype))
        assert deserialize_message(data, type(original)) == original, topic


def test_record_messages_rejects_bad_input(tmp_path: Path) -> None:
    record_messages(tmp_path / "a", [("/x", None, 1, joints(0))])
    with pytest.raises(BagError, match="exists"):
        record_messages(tmp_path / "a", [])
    with pytest.raises(BagError, match="not the declared"):
        record_messages(tmp_path / "b", [("/x", "sensor_msgs/msg/Image", 1, joints(0))])
    with pytest.raises(BagError, match="needs its msgtype"):
        record_messages(tmp_path / "c", [("/x", None, 1, b"\x00\x01\x00\x00")])
    with pytest.raises(BagError, match="storage"):
        record_messages(tmp_path / "d", [], storage="rosbag1")
    with pytest.raises(BagError, match="in this bag"):
        record_messages(tmp_path / "e", [("/x", None, 1, joints(0)), ("/x", None, 2, image(0))])


def _mcap_records(path: Path):
    """Top-level MCAP records (opcode, body): header, chunks, then the summary section."""
    data = path.read_bytes()
    magic = b"\x89MCAP0\r\n"
    assert data[:8] == magic and data[-8:] == magic
    pos, out = 8, []
    while pos < len(data) - 8:
        op, length = struct.unpack_from("<BQ", data, pos)
        out.append((op, data[pos + 9: pos + 9 + length]))
        pos += 9 + length
    return out


def _mcap_str(body: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", body, pos)
    return body[pos + 4: pos + 4 + n].decode(), pos + 4 + n


def _share_json_hash(msgtype: str) -> str | None:
    """RIHS01 from the installed interface package's own type description (not from rosbags)."""
    pkg, kind, name = msgtype.split("/")
    for prefix in (sys.prefix, sys.base_prefix):
        p = Path(prefix) / "share" / pkg / kind / f"{name}.json"
        if p.is_file():
            hashes = json.loads(p.read_text())["type_hashes"]
            return next(h["hash_string"] for h in hashes if h["type_name"] == msgtype)
    return None


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_is_standard_rosbag2(tmp_path: Path, storage: str) -> None:
    """What ``ros2 bag play`` (Jazzy) reads: metadata.yaml v9, storage file, typed connections."""
    from ruamel.yaml import YAML

    record_messages(tmp_path / "bag", sample_messages(3), storage)
    meta = YAML(typ="safe").load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9
    assert meta["storage_identifier"] == storage
    files = meta["relative_file_paths"]
    assert len(files) == 1 and (tmp_path / "bag" / files[0]).is_file()
    assert files[0].endswith(".mcap" if storage == "mcap" else ".db3")
    assert meta["message_count"] == 10 and meta["files"][0]["message_count"] == 10
    assert meta["starting_time"]["nanoseconds_since_epoch"] == 1_700_000_000 * S
    assert meta["duration"]["nanoseconds"] == 2 * 50_000_000 + 3
    assert meta["compression_mode"] == "" and meta["compression_format"] == ""
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert set(topics) == {"/tf_static", "/fluoro/image", "/carm/joint_states", "/tf"}
    for name, t in topics.items():
        md = t["topic_metadata"]
        assert md["serialization_format"] == "cdr"
        expected_hash = _share_json_hash(md["type"])
        if expected_hash is not None:
            assert md["type_description_hash"] == expected_hash, name
        assert md["type_description_hash"].startswith("RIHS01_")
        (qos,) = md["offered_qos_profiles"]  # v9: a YAML list of profiles, enum names in lower case
        assert qos["reliability"] == "reliable" and qos["history"] == "keep_last"
        assert qos["durability"] == ("transient_local" if name == "/tf_static" else "volatile")
    assert topics["/tf"]["topic_metadata"]["offered_qos_profiles"][0]["depth"] == 100

    store = tmp_path / "bag" / files[0]
    if storage == "sqlite3":
        db = sqlite3.connect(store)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"topics", "messages", "metadata", "message_definitions"} <= tables
        rows = db.execute("SELECT name, type, serialization_format, type_description_hash FROM topics").fetchall()
        assert {r[0] for r in rows} == set(topics) and all(r[2] == "cdr" for r in rows)
        defs = dict(db.execute("SELECT topic_type, encoding FROM message_definitions").fetchall())
        assert defs["sensor_msgs/msg/Image"] == "ros2msg"
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 10
        db.close()
        return
    records = _mcap_records(store)
    header = next(body for op, body in records if op == 0x01)
    assert _mcap_str(header, 0)[0] == "ros2"  # profile
    schemas = {}
    for op, body in records:
        if op == 0x03:  # Schema: id u16, name, encoding, data
            name, pos = _mcap_str(body, 2)
            encoding, pos = _mcap_str(body, pos)
            schemas[name] = (encoding, _mcap_str(body, pos)[0])
    assert set(schemas) == {"tf2_msgs/msg/TFMessage", "sensor_msgs/msg/Image", "sensor_msgs/msg/JointState"}
    assert all(enc == "ros2msg" for enc, _ in schemas.values())
    # the definition carries the nested types, separated the way rosbag2 does it
    assert "MSG: geometry_msgs/TransformStamped" in schemas["tf2_msgs/msg/TFMessage"][1]
    assert "uint8[] data" in schemas["sensor_msgs/msg/Image"][1]
    channels = {}
    for op, body in records:
        if op == 0x04:  # Channel: id u16, schema id u16, topic, message encoding, metadata map
            topic, pos = _mcap_str(body, 4)
            encoding, pos = _mcap_str(body, pos)
            channels[topic] = (encoding, body[pos:])
    assert set(channels) == set(topics)
    assert all(enc == "cdr" and b"offered_qos_profiles" in meta_ for enc, meta_ in channels.values())
    assert any(op == 0x0C and b"rosbag2" in body for op, body in records)  # rosbag2 metadata record


def test_ensure_type_reads_installed_msg_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A type that rosbags does not ship is read from share/<pkg>/msg/*.msg (with its dependencies)."""
    from rosbags.typesys import Stores, get_typestore

    msg_dir = tmp_path / "share" / "carm_test_msgs" / "msg"
    msg_dir.mkdir(parents=True)
    (msg_dir / "Marker.msg").write_text("# a fiducial\nstring<=32 label\nfloat64[3] position_mm\n")
    (msg_dir / "Frame.msg").write_text(
        "std_msgs/Header header\nMarker[] markers\ngeometry_msgs/Pose pose\nuint8 KIND_A=1\nuint8 kind\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    store = get_typestore(Stores.ROS2_JAZZY)
    ensure_type("carm_test_msgs/msg/Frame", store)
    assert "carm_test_msgs/msg/Marker" in store.fielddefs
    msgdef, _ = store.generate_msgdef("carm_test_msgs/msg/Frame", ros_version=2)
    assert "MSG: carm_test_msgs/Marker" in msgdef
    assert store.hash_rihs01("carm_test_msgs/msg/Frame").startswith("RIHS01_")
    with pytest.raises(BagError, match="no message definition"):
        ensure_type("carm_test_msgs/msg/Missing", store)


def test_small_helpers() -> None:
    assert parse_remaps(["a:=/b", "/c/d:=e"]) == {"/a": "/b", "/c/d": "/e"}
    with pytest.raises(BagError):
        parse_remaps(["/a=/b"])
    for i in (0, 3):
        assert header_stamp_ns(serialize_message(image(i))) == (100 + i) * S + 250_000_000


def test_cli_has_bag_commands() -> None:
    from diffdrr_ros.app.cli import build_parser

    args = build_parser().parse_args(["bag", "play", "x", "--rate", "2", "--remap", "/a:=/b", "--clock"])
    assert (args.bag_command, args.rate, args.remap, args.clock) == ("play", 2.0, ["/a:=/b"], 40.0)
    args = build_parser().parse_args(["bag", "record", "out", "--topics", "/a", "b", "--storage", "sqlite3"])
    assert (args.topics, args.storage) == (["/a", "b"], "sqlite3")
    args = build_parser().parse_args(["bag", "score", "b1", "b2", "--phantom", "head_tiny"])
    assert args.bags == [Path("b1"), Path("b2")]


# --------------------------------------------------------------------------------------------
# play and record over DDS


@pytest.mark.ros
def test_play_delivers_every_message_in_order_with_remap_rate_and_clock(tmp_path: Path, ros_env) -> None:
    from rosgraph_msgs.msg import Clock

    n, dt = 12, 40_000_000  # 0.44 s of bag -> 0.22 s at rate 2
    record_messages(tmp_path / "bag", sample_messages(n, dt), "mcap")
    clock_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
    listener = Listener({"/bag_test/image": (Image, RELIABLE), "/tf": (TFMessage, RELIABLE),
                         "/tf_static": (TFMessage, LATCHED), "/clock": (Clock, clock_qos)})
    try:
        proc = run_play([str(tmp_path / "bag"), "--rate", "2", "--remap", "/fluoro/image:=/bag_test/image",
                         "--topics", "/fluoro/image", "/tf", "/tf_static", "--clock", "100",
                         "--wait-for-subscribers", "10"], ros_env)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 5
        while len(listener.on("/bag_test/image")) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        images, tfs = listener.on("/bag_test/image"), listener.on("/tf")
        assert [m for m, _ in images] == [image(i) for i in range(n)]  # intact, in order, none lost
        assert [m for m, _ in tfs] == [tf(i) for i in range(n)]
        assert [m for m, _ in listener.on("/tf_static")] == [tf(-1, 0.0)]
        span = images[-1][1] - images[0][1]
        assert 0.5 * (n - 1) * dt / 2 / S < span < 0.2 + 2 * (n - 1) * dt / 2 / S, span  # recorded pace / 2
        clocks = [m.clock.sec * S + m.clock.nanosec for m, _ in listener.on("/clock")]
        assert clocks and clocks == sorted(clocks)
        assert clocks[0] >= 1_700_000_000 * S and clocks[-1] <= 1_700_000_000 * S + n * dt + S
        assert "published 25 messages" in proc.stdout  # joint states filtered out by --topics
    finally:
        listener.close()


@pytest.mark.ros
def test_play_loop_start_offset_and_sqlite3(tmp_path: Path, ros_env) -> None:
    n, dt = 6, 50_000_000
    record_messages(tmp_path / "bag", sample_messages(n, dt), "sqlite3")
    listener = Listener({"/fluoro/image": (Image, RELIABLE)})
    try:
        # start 0.12 s in: images 3, 4, 5 (log times 0.15, 0.20, 0.25 s), twice
        proc = run_play([str(tmp_path / "bag"), "--as-fast-as-possible", "--loop-count", "2", "--start-offset",
                         "0.12", "--topics", "fluoro/image", "--wait-for-subscribers", "10"], ros_env)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 5
        while len(listener.on("/fluoro/image")) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [m for m, _ in listener.on("/fluoro/image")] == [image(i) for i in (3, 4, 5, 3, 4, 5)]
    finally:
        listener.close()
    bad = run_play([str(tmp_path / "bag"), "--topics", "/nope", "--wait-for-subscribers", "0"], ros_env)
    assert bad.returncode == 1 and "not in the bag" in bad.stderr


@pytest.mark.ros
def test_play_skips_types_this_python_cannot_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bag from another system may hold types we lack: those topics are reported, the rest plays."""
    from diffdrr_ros.bag import play

    msg_dir = tmp_path / "share" / "other_vendor_msgs" / "msg"
    msg_dir.mkdir(parents=True)
    (msg_dir / "Status.msg").write_text("uint8 level\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    record_messages(tmp_path / "bag", [("/status", "other_vendor_msgs/msg/Status", 5, b"\x00\x01\x00\x00\x02"),
                                       ("/joints", None, 6, joints(1)), ("/joints", None, 7, joints(2))])
    result = play(tmp_path / "bag", as_fast_as_possible=True, wait_for_subscribers=0, progress=False)
    assert result["published"] == {"/joints": 2}
    assert "other_vendor_msgs" in result["skipped"]["/status"]
    # a bare .mcap file (what ros2 bag record leaves, without the metadata.yaml) plays too
    single = play(tmp_path / "bag" / "bag.mcap", as_fast_as_possible=True, wait_for_subscribers=0, progress=False,
                  topics=["joints"], remap={"joints": "/j2"}, loop=2)
    assert single["published"] == {"/j2": 4} and single["loops"] == 2
    with pytest.raises(BagError, match="rate"):
        play(tmp_path / "bag", rate=0.0)


@pytest.mark.ros
def test_record_live_from_publisher_process(tmp_path: Path, ros_env) -> None:
    from diffdrr_ros.bag import record

    n = 15
    peer = subprocess.Popen([sys.executable, str(PEER), "--count", str(n)], env=ros_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "READY"
        result = record(tmp_path / "live", [bag_peer.IMAGE_TOPIC, "/tf_static"], "sqlite3",
                        max_messages=n + 1, duration=TIMEOUT_S, progress=False)
        assert peer.wait(TIMEOUT_S) == 0, peer.stderr.read()
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    assert result["counts"] == {bag_peer.IMAGE_TOPIC: n, "/tf_static": 1}, result
    got, conns = read_bag(tmp_path / "live")
    types = {c.topic: c.msgtype for c in conns}
    assert types == {bag_peer.IMAGE_TOPIC: "sensor_msgs/msg/Image", "/tf_static": "tf2_msgs/msg/TFMessage"}
    images = [deserialize_message(d, Image) for tp, _, _, d in got if tp == bag_peer.IMAGE_TOPIC]
    assert images == [bag_peer.make_image(i) for i in range(n)]
    statics = [deserialize_message(d, TFMessage) for tp, _, _, d in got if tp == "/tf_static"]
    assert statics == [bag_peer.make_static_tf()]  # latched: published before we subscribed
    stamps = [t for _, _, t, _ in got]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time_ns()) < 60 * S  # receive times, wall clock
    static_conn = next(c for c in conns if c.topic == "/tf_static")
    assert static_conn.ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"


@pytest.mark.ros
def test_record_cli_stops_cleanly_on_sigint(tmp_path: Path, ros_env) -> None:
    out = tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "diffdrr_ros.bag", "record", str(out), "--topics",
                             "/bag_test/joints", "--no-progress"], env=ros_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = Node("diffdrr_ros_bag_test_pub", context=ctx)
    try:
        pub = node.create_publisher(JointState, "/bag_test/joints", QoSProfile(depth=50))
        deadline = time.monotonic() + TIMEOUT_S
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.3)
        for i in range(5):
            pub.publish(joints(i))
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
        ctx.try_shutdown()
    assert proc.returncode == 0, stderr
    assert "5 messages" in stdout
    got, _ = read_bag(out)  # closed properly: metadata.yaml written, mcap summary readable
    assert [deserialize_message(d, JointState) for _, _, _, d in got] == [joints(i) for i in range(5)]


# --------------------------------------------------------------------------------------------
# scoring


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def _pose_msg(rot: np.ndarray, t_mm: np.ndarray, stamp_ns: int) -> PoseStamped:
    import torch

    from diffdrr_ros.core.geometry.rotations import matrix_to_quaternion

    msg = PoseStamped()
    msg.header.frame_id = "carm_isocenter"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, S)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (t_mm / 1000.0).tolist()
    w, x, y, z = matrix_to_quaternion(torch.as_tensor(rot)).tolist()
    msg.pose.orientation.w, msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z = w, x, y, z
    return msg


def _tf_msg(rot: np.ndarray, t_mm: np.ndarray, stamp_ns: int) -> TFMessage:
    p = _pose_msg(rot, t_mm, stamp_ns)
    t = TransformStamped()
    t.header = p.header
    t.child_frame_id = "ct"
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
        p.pose.position.x, p.pose.position.y, p.pose.position.z)
    t.transform.rotation = p.pose.orientation
    other = TransformStamped()  # the source frame the node also publishes: must be ignored
    other.header = p.header
    other.child_frame_id = "carm_source_optical"
    other.transform.translation.x = 5.0
    other.transform.rotation.w = 1.0
    return TFMessage(transforms=[other, t])


def synthetic_run(tmp_path: Path):
    """10 frames: known translation/rotation errors, frame 7 without TF, known latencies."""
    center, extent = np.array([10.0, -20.0, 5.0]), np.array([200.0, 160.0, 120.0])
    grid = np.array([[a, b, c] for a in (-0.25, 0, 0.25) for b in (-0.25, 0, 0.25) for c in (-0.25, 0, 0.25)])
    points = center + grid * extent  # the 27 targets, built here independently
    t0 = 1_750_000_000 * S
    messages, expected, latencies = [], [], []
    for i in range(10):
        stamp = t0 + i * 100_000_000
        rot_gt, t_gt = _rot_z(5.0 * i), np.array([1.0 * i, 2.0, 700.0])
        if i % 3 == 0:  # pure translation error of i / 2 mm -> mTRE = i / 2 exactly
            rot_est, t_est = rot_gt, t_gt + np.array([0.0, i / 2.0, 0.0])
        else:  # rotation error of i * 0.2 degrees about z, through the CT frame origin
            rot_est, t_est = rot_gt @ _rot_z(0.2 * i), t_gt
        gt_pts = points @ rot_gt.T + t_gt
        est_pts = points @ rot_est.T + t_est
        img = image(i)
        img.header.stamp.sec, img.header.stamp.nanosec = divmod(stamp, S)
        log_image = stamp + 5_000_000
        messages.append(("/fluoro/image", None, log_image, img))
        messages.append(("/carm_sim/ground_truth", None, stamp + 1_000_000, _pose_msg(rot_gt, t_gt, stamp)))
        if i == 7:
            expected.append(None)
            continue
        latency_ns = (30 + 7 * i) * 1_000_000
        latencies.append(latency_ns / 1e6)
        messages.append(("/tf", None, log_image + latency_ns, _tf_msg(rot_est, t_est, stamp)))
        expected.append(float(np.linalg.norm(est_pts - gt_pts, axis=1).mean()))
    # a TF for a stamp with no ground truth (counted, not scored)
    messages.append(("/tf", None, t0 + 50 * S, _tf_msg(np.eye(3), np.zeros(3), t0 + 49 * S)))
    return messages, expected, latencies, SimpleNamespace(center=center, extent=extent)


def test_score_synthetic_bag(tmp_path: Path) -> None:
    import torch

    messages, expected, latencies, ct = synthetic_run(tmp_path)
    record_messages(tmp_path / "run", messages)
    volume = SimpleNamespace(center=torch.tensor(ct.center), extent_mm=torch.tensor(ct.extent))
    result = score_bag(tmp_path / "run", volume, image_topic="fluoro/image", out_dir=tmp_path / "score")
    s, frames = result["summary"], result["frames"]
    assert s["frames"] == 10 and s["frames_with_tf"] == 9 and s["frames_without_tf"] == 1
    assert s["frames_without_tf_stamps_ns"] == [1_750_000_000 * S + 700_000_000]
    assert frames[7]["has_tf"] is False and frames[7]["success"] is False and frames[7]["mtre_mm"] is None
    for f, e in zip(frames, expected, strict=True):
        if e is not None:
            assert f["mtre_mm"] == pytest.approx(e, abs=1e-6), f
    assert frames[3]["mtre_mm"] == pytest.approx(1.5) and frames[6]["mtre_mm"] == pytest.approx(3.0)
    assert frames[6]["translation_error_mm"] == pytest.approx(3.0) and frames[6]["rotation_error_deg"] < 1e-5
    assert frames[5]["rotation_error_deg"] == pytest.approx(1.0, abs=1e-6)
    succ = sum(e is not None and e < 2.0 for e in expected)
    assert s["successes"] == succ and s["success_rate"] == pytest.approx(succ / 10)
    errs = [e for e in expected if e is not None]
    assert s["mtre_mean_mm"] == pytest.approx(np.mean(errs)) and s["mtre_max_mm"] == pytest.approx(max(errs))
    assert [f["latency_ms"] for f in frames if f["latency_ms"] is not None] == pytest.approx(latencies)
    assert s["latency_p50_ms"] == pytest.approx(np.percentile(latencies, 50))
    assert s["latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95))
    assert s["tf_without_ground_truth"] == 1
    files = result["files"]
    assert json.loads(Path(files["json"]).read_text())["summary"]["frames"] == 10
    rows = Path(files["csv"]).read_text().splitlines()
    assert len(rows) == 11 and rows[0].startswith("index,stamp_ns")
    assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a looser threshold and no image topic: everything with a TF succeeds, no latency
    loose = score_bag(tmp_path / "run", volume, image_topic=None, success_mm=100.0)["summary"]
    assert loose["successes"] == 9 and loose["latency_frames"] == 0 and loose["latency_p50_ms"] is None


def test_score_split_bags_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Scoring a simulator bag plus a bag of the node's output; the CLI prints and writes the report."""
    from diffdrr_ros.app.cli import main

    messages, _, _, _ = synthetic_run(tmp_path)
    record_messages(tmp_path / "sim", [m for m in messages if m[0] != "/tf"], "sqlite3")
    record_messages(tmp_path / "node", [m for m in messages if m[0] == "/tf"], "mcap")
    rc = main(["bag", "score", str(tmp_path / "sim"), str(tmp_path / "node"), "--phantom", "head_tiny",
               "--out", str(tmp_path / "out"), "--json", "--min-success-rate", "0.99"])
    out = capsys.readouterr().out
    assert rc == 3  # 10 frames, not all succeed
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames"] == 10 and summary["frames_with_tf"] == 9 and summary["latency_frames"] == 9
    assert "without TF: 1" in out and (tmp_path / "out" / "score.png").is_file()

    with pytest.raises(BagError, match="no ground truth"):
        score_bag(tmp_path / "node", points_ct=np.zeros((1, 3)))
    with pytest.raises(BagError, match="not 'world'"):
        score_bag(tmp_path / "sim", points_ct=np.zeros((1, 3)), tf_parent="world")
    assert main(["bag", "score", str(tmp_path / "missing"), "--phantom", "head_tiny"]) == 1
