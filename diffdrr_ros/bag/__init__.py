"""rosbag2 bags without rosbag2: record, play and score with rclpy and the ``rosbags`` library.

ROS 2's own bag tools (``rosbag2_py``, ``ros2 bag``) are not installable from PyPI, so this
package writes and reads the standard rosbag2 format (mcap by default, sqlite3 on request)
with `rosbags <https://gitlab.com/ternaris/rosbags>`_ and moves the serialized CDR bytes
through rclpy untouched. Bags written here play with ``ros2 bag play`` on a full install, and
bags from ``ros2 bag record`` play here.

* :func:`record_messages` - write a bag offline from ``(topic, msgtype, stamp_ns, message)``.
* :func:`record` - record live topics from the ROS graph (``diffdrr-ros bag record``).
* :func:`play` - replay a bag into the ROS graph (``diffdrr-ros bag play``).
* :func:`score_bag` - registration accuracy and latency from recorded TF and ground truth
  (``diffdrr-ros bag score``).
* :func:`frames_to_bag` - X-ray frame files (DICOM, cine, frames with sidecars) -> a bag the
  node replays (``diffdrr-ros bag from-frames``).

Importing this package is cheap: rclpy, rosbags and torch are imported by the functions
that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .common import BAG_VERSION, DEFAULT_STORAGE, STORAGES, BagError

if TYPE_CHECKING:
    from .from_frames import frames_to_bag
    from .player import play
    from .recorder import record
    from .scoring import score_bag, score_records
    from .writer import BagWriter, record_messages

__all__ = [
    "BAG_VERSION",
    "DEFAULT_STORAGE",
    "STORAGES",
    "BagError",
    "BagWriter",
    "add_bag_parser",
    "frames_to_bag",
    "play",
    "record",
    "record_messages",
    "score_bag",
    "score_records",
]

_LAZY = {
    "BagWriter": "writer",
    "record_messages": "writer",
    "record": "recorder",
    "play": "player",
    "score_bag": "scoring",
    "score_records": "scoring",
    "add_bag_parser": "cli",
    "frames_to_bag": "from_frames",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
