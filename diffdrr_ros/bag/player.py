"""Replay a rosbag2 bag into the ROS graph: the recorded CDR bytes go to rclpy publishers unchanged.

Reads mcap and sqlite3 bags (a bag directory, or a single ``.mcap``/``.db3`` file) with
``rosbags``, including bags written by ``ros2 bag record``. Messages go out in log-time order
at the recorded pace scaled by ``rate`` (or as fast as possible), optionally remapped, from a
start offset, looped, with /clock; or paced by a consumer (:class:`Pacer`, every frame in turn).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import BagError, message_class, normalize_topic, wants_transient_local
from .recorder import ros_context, stop_on_signals

CLOCK_TOPIC = "/clock"
DEFAULT_CLOCK_HZ = 40.0  # ros2 bag play --clock's default
SETTLE_S = 0.5


@dataclass(frozen=True)
class Pacer:
    """Every-frame playback: after a message on one of ``topics`` the player calls ``wait(topic, data)``,
    which returns once the consumer is done with it (e.g. the node's diagnostics report its stamp)."""

    topics: frozenset[str]
    wait: Callable[[str, bytes], None]


def open_reader(path: str | Path) -> Any:
    """An open ``rosbags.rosbag2.Reader`` (bag directory, or one .mcap/.db3 file), errors as BagError."""
    from rosbags.rosbag2 import Reader, ReaderError

    path = Path(path)
    if not path.exists():
        raise BagError(f"no bag at {path}")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, FileNotFoundError) as exc:
        raise BagError(f"cannot read bag {path}: {exc}") from None
    return reader


def playback_qos(topic: str, offered: Iterable[Any], depth: int) -> Any:
    """Reliable, ``depth`` deep (so a slow subscriber loses nothing); latched for /tf_static and
    topics whose recorded publishers were all transient local."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    latched = wants_transient_local(topic, offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def play(
    path: str | Path,
    *,
    rate: float = 1.0,
    as_fast_as_possible: bool = False,
    remap: Mapping[str, str] | None = None,
    loop: bool | int = False,
    start_offset: float = 0.0,
    topics: Iterable[str] | None = None,
    clock: float | None = None,
    wait_for_subscribers: float = 2.0,
    qos_depth: int = 100,
    duration: float | None = None,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    node_name: str | None = None,
    pacer: Pacer | None = None,
) -> dict[str, Any]:
    """Publish the bag's messages into the graph.

    Args:
        path: bag directory, or a single .mcap / .db3 file.
        rate: playback speed factor (2.0: twice as fast as recorded).
        as_fast_as_possible: ignore the recorded timing.
        remap: ``{recorded topic: published topic}``.
        loop: True to repeat until stopped, or the number of passes (int >= 1).
        start_offset: seconds into the bag to start from.
        topics: only these recorded topics (default: all).
        clock: publish rosgraph_msgs/Clock on /clock at this rate (Hz), with the bag's time.
        wait_for_subscribers: seconds to wait, at most, until every publisher has a subscriber.
        qos_depth: publisher history depth (reliable, keep last).
        duration: stop after this many wall-clock seconds.
        stop_event: set it to stop early (SIGINT/SIGTERM also stop, in the main thread).
        pacer: every-frame playback (:class:`Pacer`): the recorded timing is ignored, and each
            message on one of its topics waits for everything before it to be delivered, is
            published, and then waits for its consumer (``pacer.wait``).

    Returns:
        ``{"published" (per output topic), "messages", "skipped" (topic: why), "loops",
        "waited_s", "unmatched" (topics without subscriber at the start), "duration_s"}``.
    """
    from tqdm import tqdm

    if not as_fast_as_possible and not rate > 0:
        raise BagError(f"rate must be > 0 (got {rate})")
    if start_offset < 0:
        raise BagError("start offset must be >= 0")
    if clock is not None and not clock > 0:
        raise BagError("clock rate must be > 0 Hz")
    passes = None if loop is True else (int(loop) if loop else 1)
    if pacer is not None:
        as_fast_as_possible = True
    remap = {normalize_topic(k): normalize_topic(v) for k, v in (remap or {}).items()}
    only = None if topics is None else {normalize_topic(t) for t in topics}
    stop = stop_event or threading.Event()

    reader = open_reader(path)
    try:
        connections = [c for c in reader.connections if only is None or c.topic in only]
        if only is not None and (absent := only - {c.topic for c in reader.connections}):
            raise BagError(f"not in the bag: {sorted(absent)}; it has {sorted({c.topic for c in reader.connections})}")
        if not connections:
            raise BagError(f"nothing to play in {path}")
        start_ns = reader.start_time + round(start_offset * 1e9)
        if start_offset and start_ns >= reader.end_time:
            raise BagError(f"start offset {start_offset:g} s is past the end of the bag "
                           f"({reader.duration / 1e9:.3f} s long)")
        with stop_on_signals(stop), ros_context(node_name or f"diffdrr_bag_player_{os.getpid()}") as (node, _):
            publishers, conn_to_pub, skipped = _make_publishers(node, connections, remap, qos_depth)
            if not conn_to_pub:
                raise BagError(f"no playable topics: {skipped}")
            clock_pub = _clock_publisher(node) if clock is not None else None
            total = None if start_offset else sum(c.msgcount for c in connections if c.id in conn_to_pub)
            waited, unmatched = _wait_for_subscribers(publishers, wait_for_subscribers, stop)
            bar = tqdm(total=total * passes if total is not None and passes else None, unit="msg",
                       desc="playing", disable=not progress, dynamic_ncols=True)
            counts = dict.fromkeys(publishers, 0)
            t_begin = time.monotonic()
            done_passes = 0
            try:
                deadline = None if duration is None else t_begin + duration
                while not stop.is_set() and (passes is None or done_passes < passes):
                    _one_pass(reader, conn_to_pub, start_ns, rate, as_fast_as_possible, clock_pub, clock, stop,
                              counts, bar, deadline, pacer)
                    if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                        break
                    done_passes += 1
            finally:
                bar.close()
                for pub in publishers.values():  # reliable delivery of the tail before we leave
                    _wait_acked(pub, 2.0)
        return {
            "published": counts, "messages": sum(counts.values()), "skipped": skipped, "loops": done_passes,
            "waited_s": round(waited, 3), "unmatched": unmatched,
            "duration_s": round(time.monotonic() - t_begin, 3),
        }
    finally:
        reader.close()


def _make_publishers(node: Any, connections: list[Any], remap: Mapping[str, str], depth: int):
    publishers: dict[str, Any] = {}
    types: dict[str, str] = {}
    conn_to_pub: dict[int, tuple[str, Any]] = {}  # connection id -> (output topic, publisher)
    skipped: dict[str, str] = {}
    by_topic: dict[str, list[Any]] = {}
    for c in connections:
        by_topic.setdefault(c.topic, []).append(c)
    for topic, conns in by_topic.items():
        out = remap.get(topic, topic)
        for c in conns:
            if out in types and types[out] != c.msgtype:
                skipped[topic] = f"{c.msgtype} would be published on {out}, which already carries {types[out]}"
                continue
            if out not in publishers:
                try:
                    cls = message_class(c.msgtype)
                except BagError as exc:
                    skipped[topic] = str(exc)
                    continue
                offered = [q for x in conns for q in getattr(x.ext, "offered_qos_profiles", [])]
                publishers[out] = node.create_publisher(cls, out, playback_qos(topic, offered, depth))
                types[out] = c.msgtype
            conn_to_pub[c.id] = (out, publishers[out])
    return publishers, conn_to_pub, skipped


def _clock_publisher(node: Any) -> Any:
    try:
        from rosgraph_msgs.msg import Clock
    except ImportError as exc:
        raise BagError("--clock needs rosgraph_msgs (pip install ros-jazzy-rosgraph-msgs, or source ROS 2)") \
            from exc
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    # rclcpp's ClockQoS and rclpy's TimeSource: best effort, depth 1
    return node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))


def _publish_clock(pub: Any, bag_ns: int) -> None:
    from rosgraph_msgs.msg import Clock

    msg = Clock()
    msg.clock.sec, msg.clock.nanosec = divmod(int(bag_ns), 1_000_000_000)
    pub.publish(msg)


def _wait_for_subscribers(publishers: Mapping[str, Any], timeout: float, stop: threading.Event):
    t0 = time.monotonic()
    while timeout > 0 and not stop.is_set():
        if all(p.get_subscription_count() > 0 for p in publishers.values()):
            # the publisher has matched the reader; give the reader's side of the match a moment
            # too, or the very first message can still be dropped by it
            time.sleep(SETTLE_S)
            break
        if time.monotonic() - t0 >= timeout:
            break
        time.sleep(0.02)
    unmatched = sorted(t for t, p in publishers.items() if p.get_subscription_count() == 0)
    return time.monotonic() - t0, unmatched


def _wait_acked(pub: Any, timeout_s: float) -> None:
    from rclpy.duration import Duration

    with contextlib.suppress(Exception):  # best effort: not every rmw implements it
        pub.wait_for_all_acked(Duration(seconds=timeout_s))


def _one_pass(reader: Any, conn_to_pub: Mapping[int, tuple[str, Any]], start_ns: int, rate: float, afap: bool,
              clock_pub: Any, clock_hz: float | None, stop: threading.Event, counts: dict[str, int], bar: Any,
              deadline: float | None, pacer: Pacer | None = None) -> None:
    """One pass through the bag from ``start_ns``; returns early on ``stop`` or at the wall ``deadline``."""
    wall0 = time.monotonic()
    clock_period = 1.0 / clock_hz if clock_hz else 0.0
    next_clock = wall0
    connections = [c for c in reader.connections if c.id in conn_to_pub]
    for conn, stamp, data in reader.messages(connections=connections, start=start_ns):
        if stop.is_set():
            return
        target = wall0 if afap else wall0 + (stamp - start_ns) / 1e9 / rate
        while True:  # sleep in short slices: stays responsive to stop and keeps /clock going
            now = time.monotonic()
            if stop.is_set() or (deadline is not None and now >= deadline):
                return
            if clock_pub is not None and now >= next_clock and not afap:
                _publish_clock(clock_pub, start_ns + int((now - wall0) * rate * 1e9))
                next_clock = now + clock_period
            if now >= target:
                break
            wake = target if clock_pub is None else min(target, next_clock)
            time.sleep(min(max(wake - now, 0.0), 0.05))
        if clock_pub is not None and afap:
            _publish_clock(clock_pub, stamp)
        out, pub = conn_to_pub[conn.id]
        paced = pacer is not None and out in pacer.topics
        if paced:  # what came before it (e.g. the joints of this frame) is delivered first
            for other in {id(p): p for _, p in conn_to_pub.values()}.values():
                _wait_acked(other, 2.0)
        pub.publish(data)
        counts[out] += 1
        bar.update(1)
        if paced:
            pacer.wait(out, bytes(data))
