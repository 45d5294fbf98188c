"""Shared pieces: topic names, message types, the rosbags typestore, QoS in both directions.

Nothing here imports rclpy at module level; rosbags is imported by the functions that use it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

STORAGES = ("mcap", "sqlite3")
DEFAULT_STORAGE = "mcap"  # rosbag2's default since Iron
# rosbag2 metadata version written by Jazzy (QoS profiles as a YAML list); Humble reads <= 5.
BAG_VERSION = 9
TF_STATIC = "/tf_static"
TF = "/tf"
# ROS 2 .msg primitive types (anything else in a field is a nested message)
_PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring",
}


class BagError(RuntimeError):
    """A bag cannot be written, read, played or scored (the message says why)."""


def normalize_topic(name: str) -> str:
    """Fully qualified topic name: ``fluoro/image`` -> ``/fluoro/image`` (what bags store)."""
    name = name.strip()
    if not name:
        raise BagError("empty topic name")
    return name if name.startswith("/") else "/" + name


def parse_remaps(items: Iterable[str]) -> dict[str, str]:
    """``["/a:=/b", "c:=d"]`` -> ``{"/a": "/b", "/c": "/d"}`` (``ros2 bag play --remap`` syntax)."""
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition(":=")
        if not sep or not old.strip() or not new.strip():
            raise BagError(f"bad remap {item!r}; expected OLD:=NEW")
        out[normalize_topic(old)] = normalize_topic(new)
    return out


def split_msgtype(msgtype: str) -> tuple[str, str, str]:
    """``pkg/msg/Type`` (or ``pkg/Type``) -> ``(pkg, "msg", Type)``."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise BagError(f"bad message type {msgtype!r}; expected pkg/msg/Type")
    return parts[0], parts[1], parts[2]


def full_msgtype(msgtype: str) -> str:
    return "/".join(split_msgtype(msgtype))


def message_class(msgtype: str) -> type:
    """Import the rclpy message class for ``pkg/msg/Type`` (``importlib`` of ``pkg.msg.Type``)."""
    pkg, kind, name = split_msgtype(msgtype)
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype!r} is not importable in this Python ({exc}); "
                       f"install the interface package that provides {pkg}") from None


def msgtype_of(msg: Any) -> str:
    """``pkg/msg/Type`` of an rclpy message instance or class (``sensor_msgs.msg._image`` -> ...)."""
    cls = msg if isinstance(msg, type) else type(msg)
    parts = cls.__module__.split(".")
    if len(parts) < 2 or parts[1] not in ("msg", "srv", "action"):
        raise BagError(f"{cls.__module__}.{cls.__name__} is not a ROS message class")
    return f"{parts[0]}/{parts[1]}/{cls.__name__}"


# --------------------------------------------------------------------------- typestore


@lru_cache(maxsize=1)
def typestore() -> Any:
    """rosbags' Jazzy typestore (message definitions and RIHS01 hashes for the bag metadata)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def _interface_dirs() -> list[Path]:
    """Where installed interface packages keep ``share/<pkg>/msg/*.msg``: ament prefixes, the venv."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [sys.prefix, sys.base_prefix]
    seen: list[Path] = []
    for p in prefixes:
        d = Path(p) / "share"
        if d not in seen and d.is_dir():
            seen.append(d)
    return seen


def _msg_dependencies(text: str, pkg: str) -> list[str]:
    deps = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 2:  # constants ("int32 X=1") have primitive types and fall out below
            continue
        ftype = re.sub(r"\[.*?\]$", "", tokens[0])
        ftype = re.sub(r"<=\d+$", "", ftype)
        if ftype in _PRIMITIVES:
            continue
        if ftype == "Header":
            deps.append("std_msgs/msg/Header")
        elif "/" in ftype:
            deps.append(full_msgtype(ftype))
        else:
            deps.append(f"{pkg}/msg/{ftype}")
    return deps


def ensure_type(msgtype: str, store: Any | None = None, _stack: tuple[str, ...] = ()) -> None:
    """Make ``msgtype`` known to the typestore, from the installed ``.msg`` file if needed.

    Types in rosbags' Jazzy store (std, geometry, sensor, tf2, rosgraph, diagnostic ...) are
    there already; others are read from ``share/<pkg>/msg/<Type>.msg`` under the ament
    prefixes or this Python's prefix (where the PyPI wheels and a colcon build install them).
    """
    from rosbags.typesys import get_types_from_msg

    store = typestore() if store is None else store
    msgtype = full_msgtype(msgtype)
    if msgtype in store.fielddefs or msgtype in _stack:
        return
    pkg, kind, name = split_msgtype(msgtype)
    for share in _interface_dirs():
        path = share / pkg / kind / f"{name}.msg"
        if path.is_file():
            text = path.read_text()
            for dep in _msg_dependencies(text, pkg):
                ensure_type(dep, store, (*_stack, msgtype))
            store.register(get_types_from_msg(text, msgtype))
            return
    raise BagError(f"no message definition for {msgtype!r}: not in rosbags' Jazzy typestore and no "
                   f"{pkg}/{kind}/{name}.msg under {[str(d) for d in _interface_dirs()]}")


# --------------------------------------------------------------------------- QoS


def _duration_ns(d: Any) -> int:
    ns = getattr(d, "nanoseconds", None)
    return int(ns) if ns is not None else int(d)


def qos_to_bag(profile: Any) -> Any:
    """rclpy ``QoSProfile`` -> rosbags ``Qos`` (the enum values are the rmw ones on both sides)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def enum(cls: Any, value: Any, unknown: Any) -> Any:
        try:
            return cls(int(value))
        except ValueError:
            return unknown

    def time(d: Any) -> Any:
        ns = max(0, _duration_ns(d))
        return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)

    return Qos(
        history=enum(QosHistory, profile.history, QosHistory.UNKNOWN),
        depth=int(profile.depth),
        reliability=enum(QosReliability, profile.reliability, QosReliability.UNKNOWN),
        durability=enum(QosDurability, profile.durability, QosDurability.UNKNOWN),
        deadline=time(profile.deadline),
        lifespan=time(profile.lifespan),
        liveliness=enum(QosLiveliness, profile.liveliness, QosLiveliness.UNKNOWN),
        liveliness_lease_duration=time(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def default_bag_qos(topic: str) -> Any:
    """Offered QoS written for offline topics: tf2_ros's for /tf and /tf_static, else reliable depth 10."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    static = topic == TF_STATIC
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1 if static else (100 if topic == TF else 10),
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if static else QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


def wants_transient_local(topic: str, offered: Iterable[Any] = ()) -> bool:
    """Latched topic: /tf_static, or every recorded publisher offered TRANSIENT_LOCAL."""
    from rosbags.interfaces import QosDurability

    offered = list(offered)
    if topic == TF_STATIC:
        return True
    return bool(offered) and all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
