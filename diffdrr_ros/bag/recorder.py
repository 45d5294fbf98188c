"""Record live topics into a rosbag2 bag: rclpy subscriptions taking raw CDR bytes.

Each topic's type comes from the ROS graph (``get_topic_names_and_types``); the message class
is imported by name only because rclpy needs the type support to subscribe, the bytes are
never deserialized. QoS is adapted to the publishers, as rosbag2 does: reliable only if every
publisher is reliable, transient local only if every publisher is (so latched /tf_static
messages arrive); otherwise best effort and volatile, which matches any publisher.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import BAG_VERSION, DEFAULT_STORAGE, TF_STATIC, BagError, message_class, normalize_topic
from .writer import BagWriter

SUBSCRIPTION_DEPTH = 100
# Topics a node creates for itself; `--all` leaves them out (rosbag2 records them, rarely useful here).
_SKIP_WITH_ALL = ("/parameter_events", "/rosout")


@contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM set ``stop`` (so the caller closes the bag) instead of raising mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def ros_context(node_name: str):
    """A private rclpy context + node + executor (does not touch a caller's default context)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    ctx = Context()
    rclpy.init(args=[], context=ctx, signal_handler_options=SignalHandlerOptions.NO)  # not sys.argv
    node = executor = None
    try:
        node = Node(node_name, context=ctx, start_parameter_services=False)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        yield node, executor
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        if ctx.ok():
            ctx.try_shutdown()


def subscription_qos(topic: str, publisher_qos: list[Any]) -> Any:
    """The QoS that receives from every publisher of ``topic`` (rosbag2's adaptive choice)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = bool(publisher_qos) and all(q.reliability == ReliabilityPolicy.RELIABLE for q in publisher_qos)
    latched = bool(publisher_qos) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in publisher_qos)
    if not publisher_qos and topic == TF_STATIC:
        reliable = latched = True
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=SUBSCRIPTION_DEPTH,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


class _Recorder:
    def __init__(self, node: Any, bag: BagWriter, topics: list[str] | None, log: Any) -> None:
        self.node, self.bag, self.log = node, bag, log
        self.wanted = topics  # None: every topic (--all)
        self.subscriptions: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.total = 0
        self.on_message: Any = None

    def missing(self) -> list[str]:
        if self.wanted is None:
            return []
        return [t for t in self.wanted if t not in self.subscriptions and t not in self.skipped]

    def discover(self) -> None:
        """Subscribe to every wanted topic that has a publisher now."""
        names = dict(self.node.get_topic_names_and_types())
        candidates = self.missing() if self.wanted is not None else [
            t for t in names if t not in self.subscriptions and t not in self.skipped and t not in _SKIP_WITH_ALL]
        for topic in candidates:
            if topic not in names:
                continue
            publishers = self.node.get_publishers_info_by_topic(topic)
            if not publishers:  # only subscribers so far: their QoS says nothing about the data
                continue
            types = sorted({p.topic_type for p in publishers} or set(names[topic]))
            if len(types) > 1:
                self.skipped[topic] = f"several types on the graph: {types}"
                self.log(f"skipping {topic}: {self.skipped[topic]}")
                continue
            try:
                cls = message_class(types[0])
                self.bag.add_topic(topic, types[0], [p.qos_profile for p in publishers])
            except BagError as exc:
                self.skipped[topic] = str(exc)
                self.log(f"skipping {topic}: {exc}")
                continue
            qos = subscription_qos(topic, [p.qos_profile for p in publishers])
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, self._callback(topic), qos, raw=True)
            self.log(f"recording {topic} [{types[0]}] ({qos.reliability.name.lower()}, "
                     f"{qos.durability.name.lower()})")

    def _callback(self, topic: str):
        def on_message(data: bytes, info: Any = None) -> None:
            now = time.time_ns()
            stamp = now
            received = info.get("received_timestamp", 0) if isinstance(info, dict) else 0
            if received and abs(received - now) < 60_000_000_000:  # DDS receive time, same clock
                stamp = received
            self.bag.write(topic, stamp, data)
            self.total += 1
            if self.on_message is not None:
                self.on_message(topic)

        return on_message


def record(
    path: str | Path,
    topics: Iterable[str] | None,
    storage: str = DEFAULT_STORAGE,
    *,
    duration: float | None = None,
    max_messages: int | None = None,
    discovery_timeout: float = 5.0,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    ready_event: threading.Event | None = None,
    version: int = BAG_VERSION,
    node_name: str | None = None,
) -> dict[str, Any]:
    """Record ``topics`` (None: every topic with a publisher) from the live graph into a new bag.

    Recording ends after ``duration`` seconds, after ``max_messages`` messages in all, when
    ``stop_event`` is set, or on SIGINT/SIGTERM (in the main thread); the bag is closed in
    every case. Topics that are not there yet are looked for again every 0.5 s; the ones still
    missing after ``discovery_timeout`` seconds are reported (recording goes on). ``ready_event``
    is set once every requested topic has a subscription (or the discovery timeout passed).

    Returns:
        ``{"path", "storage", "counts" (per topic), "messages", "duration_s", "missing", "skipped"}``.
    """
    from tqdm import tqdm

    wanted = None if topics is None else list(dict.fromkeys(normalize_topic(t) for t in topics))
    if wanted is not None and not wanted:
        raise BagError("no topics to record (give topics, or record all)")
    if max_messages is not None and max_messages <= 0:
        raise BagError("max_messages must be positive")
    stop = stop_event or threading.Event()
    bar = tqdm(total=max_messages, unit="msg", desc="recording", disable=not progress, dynamic_ncols=True)
    log = bar.write if progress else (lambda _msg: None)
    t_start = time.monotonic()
    warned_missing = False
    with BagWriter(path, storage, version=version) as bag, stop_on_signals(stop), \
            ros_context(node_name or f"diffdrr_bag_recorder_{os.getpid()}") as (node, executor):
        rec = _Recorder(node, bag, wanted, log)

        def on_message(topic: str) -> None:
            bar.update(1)
            if max_messages is not None and rec.total >= max_messages:
                stop.set()

        rec.on_message = on_message
        next_discovery = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if duration is not None and now - t_start >= duration:
                    break
                if now >= next_discovery and (wanted is None or rec.missing()):
                    rec.discover()
                    next_discovery = now + (0.1 if now - t_start < discovery_timeout else 0.5)
                    waited = now - t_start >= discovery_timeout
                    if ready_event is not None and (not rec.missing() or waited):
                        ready_event.set()
                    if waited and rec.missing() and not warned_missing:
                        warned_missing = True
                        log(f"not on the graph after {discovery_timeout:g} s (still looking): "
                            f"{', '.join(rec.missing())}")
                executor.spin_once(timeout_sec=0.05)
        finally:
            bar.close()
        counts = dict(bag.counts)
        missing = rec.missing()
        skipped = dict(rec.skipped)
    if ready_event is not None:
        ready_event.set()
    return {
        "path": str(path), "storage": storage, "counts": counts, "messages": sum(counts.values()),
        "duration_s": round(time.monotonic() - t_start, 3), "missing": missing, "skipped": skipped,
    }
