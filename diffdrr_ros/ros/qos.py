"""QoS profiles used across the package, matching what tf2_ros and ROS users expect.

* ``/tf``: tf2_ros TransformBroadcaster's profile (reliable, volatile, depth 100).
* ``/tf_static``: StaticTransformBroadcaster's (reliable, transient local, depth 1), so late
  joiners still get the static transforms.
* Images: :func:`image_qos` (reliable by default, adapted to best-effort publishers; see below).
"""

from __future__ import annotations

from collections.abc import Iterable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


# --------------------------------------------------------------------------- image streams
#
# Measured on loopback (rmw_fastrtps_cpp from the PyPI wheels, default transports; 10 mono16 frames
# of each size at 5 Hz from another process, published as `diffdrr-ros bag play` does: reliable,
# keep last 100; docs/image-streams.md, bench/bench_image_qos.py): a best-effort subscription received 10/2/3/3/1 of the
# 256/512/1024/1536/2048 px frames (fragments lost, the sample dropped; DDS's message-lost event says so); a reliable
# keep-last-1 or -2 subscription received 10 of every size (and of 3000 px, 18 MB). A best-effort
# publisher (sensor-data drivers) got 10/1/4/2/1 with a best-effort subscription; the shipped
# config/fastdds_large_frames.xml (large shared-memory segments) makes that 10 of each, but only
# when both processes load it.

IMAGE_RELIABILITY = ("auto", "reliable", "best_effort")


def image_qos(reliability: str, depth: int, offered: Iterable[QoSProfile] = ()) -> QoSProfile:
    """The image subscription's QoS: keep last ``depth``, volatile, reliable or best effort.

    ``auto``: reliable (frames of any size arrive, retransmitted) unless a publisher in
    ``offered`` (``get_publishers_info_by_topic``) is best effort, which a reliable subscription
    would not match: then best effort, as rosbag2 adapts its subscriptions. Keep-last with a
    small depth: a node that is busy registering never builds a backlog (latest wins).
    """
    if reliability not in IMAGE_RELIABILITY:
        raise ValueError(f"image reliability must be one of {', '.join(IMAGE_RELIABILITY)}, got {reliability!r}")
    if reliability == "auto":
        best_effort = any(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in offered)
        reliability = "best_effort" if best_effort else "reliable"
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, int(depth)), reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)
