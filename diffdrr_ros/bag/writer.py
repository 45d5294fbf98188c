"""Write rosbag2 bags (mcap or sqlite3) with ``rosbags``: live recording and offline writing share this.

Every connection carries the message type, its full ``.msg`` definition and RIHS01 hash from
rosbags' Jazzy typestore, and the publishers' offered QoS: what ``ros2 bag play`` needs to
replay it. The payload is the CDR bytes exactly as they came (or as rclpy serializes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from .common import (
    BAG_VERSION,
    DEFAULT_STORAGE,
    STORAGES,
    BagError,
    default_bag_qos,
    ensure_type,
    full_msgtype,
    msgtype_of,
    normalize_topic,
    qos_to_bag,
    typestore,
)


class BagWriter:
    """A rosbag2 bag open for writing; one connection per topic.

    Use as a context manager. It closes the bag (index, metadata.yaml) also when the block
    ends with an exception or Ctrl-C, so whatever was written stays readable.
    """

    def __init__(self, path: str | Path, storage: str = DEFAULT_STORAGE, *, version: int = BAG_VERSION) -> None:
        from rosbags.rosbag2 import StoragePlugin

        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; choose from {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; rosbag2 bags are directories and are not overwritten")
        self.storage = storage
        self.version = version
        self._plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer: Any = None
        self._connections: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> BagWriter:
        from rosbags.rosbag2 import Writer, WriterError

        try:
            self._writer = Writer(self.path, version=self.version, storage_plugin=self._plugin)
            self._writer.open()
        except WriterError as exc:
            raise BagError(str(exc)) from None
        return self

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ topics and messages

    def has_topic(self, topic: str) -> bool:
        return normalize_topic(topic) in self._connections

    def add_topic(self, topic: str, msgtype: str, offered_qos: Iterable[Any] | None = None) -> None:
        """Declare ``topic`` of ``pkg/msg/Type``; ``offered_qos`` are rclpy QoSProfiles or rosbags Qos.

        Without ``offered_qos`` the bag records what tf2_ros offers for /tf and /tf_static,
        reliable depth 10 otherwise.
        """
        from rosbags.interfaces import Qos

        if self._writer is None:
            raise BagError("bag is not open")
        topic, msgtype = normalize_topic(topic), full_msgtype(msgtype)
        if topic in self._connections:
            if self._types[topic] != msgtype:
                raise BagError(f"topic {topic} already in the bag as {self._types[topic]}, not {msgtype}")
            return
        store = typestore()
        ensure_type(msgtype, store)
        if offered_qos is None:
            profiles = [default_bag_qos(topic)]
        else:
            profiles = [q if isinstance(q, Qos) else qos_to_bag(q) for q in offered_qos]
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=store, serialization_format="cdr", offered_qos_profiles=profiles)
        self._types[topic] = msgtype
        self.counts[topic] = 0

    def write(self, topic: str, stamp_ns: int, data: bytes | bytearray | memoryview | Any,
              msgtype: str | None = None) -> None:
        """Write one message at log time ``stamp_ns``: CDR bytes, or an rclpy message (serialized here).

        The topic is added on first use when ``msgtype`` is given (or ``data`` is a message).
        """
        if self._writer is None:
            raise BagError("bag is not open")
        topic = normalize_topic(topic)
        if not isinstance(data, bytes | bytearray | memoryview):
            from rclpy.serialization import serialize_message

            actual = msgtype_of(data)
            if msgtype is not None and full_msgtype(msgtype) != actual:
                raise BagError(f"message for {topic} is a {actual}, not the declared {msgtype}")
            msgtype = actual
            data = serialize_message(data)
        if topic not in self._connections:
            if msgtype is None:
                raise BagError(f"topic {topic} has not been added; give its message type")
            self.add_topic(topic, msgtype)
        elif msgtype is not None and full_msgtype(msgtype) != self._types[topic]:
            raise BagError(f"topic {topic} is {self._types[topic]} in this bag, not {msgtype}")
        if int(stamp_ns) < 0:
            raise BagError(f"negative log time {stamp_ns} for {topic}")
        self._writer.write(self._connections[topic], int(stamp_ns), bytes(data))
        self.counts[topic] += 1


def record_messages(
    path: str | Path,
    messages: Iterable[tuple[str, str | None, int, Any]],
    storage: str = DEFAULT_STORAGE,
    *,
    qos: Mapping[str, Iterable[Any]] | None = None,
    version: int = BAG_VERSION,
) -> dict[str, int]:
    """Write a bag offline, without a ROS graph (the simulator's frames go this way).

    Args:
        path: the bag directory to create (must not exist).
        messages: ``(topic, msgtype, stamp_ns, message)`` with ``msgtype`` as ``pkg/msg/Type``
            (or None for an rclpy message, whose class names it), ``stamp_ns`` the log
            (receive) time in ns, and ``message`` an rclpy message or its CDR bytes. Log times
            need not be sorted.
        storage: ``mcap`` (default, as rosbag2 since Iron) or ``sqlite3``.
        qos: optional offered QoS per topic (rclpy QoSProfiles or rosbags Qos) for the metadata.
        version: rosbag2 metadata version (9 as Jazzy writes; 8 for Iron's readers).

    Returns:
        Message count per topic.
    """
    qos = {normalize_topic(k): v for k, v in (qos or {}).items()}
    with BagWriter(path, storage, version=version) as bag:
        for topic, msgtype, stamp_ns, msg in messages:
            name = normalize_topic(topic)
            if not bag.has_topic(name):
                if msgtype is None:
                    if isinstance(msg, bytes | bytearray | memoryview):
                        raise BagError(f"serialized message for {name} needs its msgtype")
                    msgtype = msgtype_of(msg)
                bag.add_topic(name, msgtype, qos.get(name))
            bag.write(name, stamp_ns, msg, msgtype)
        return dict(bag.counts)
