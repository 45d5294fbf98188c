"""A second ROS process for test_ros_transport.py (run as a script, not collected by pytest).

    python test/ros_peer.py stream   # 8x6 mono16 Image + TFMessage on /tf, 20 Hz
    python test/ros_peer.py static   # one TFMessage on /tf_static (latched), /tf publisher too

It prints READY once its publishers exist (and STATIC_SENT after the static transform went
out), then a JSON line `QOS {...}` with the QoS of its publishers, and runs until SIGINT or
--deadline seconds. The content it sends is a fixed pattern that the test rebuilds on its own.

The TF QoS here is the node's own (diffdrr_ros.ros.qos), which is tf2_ros's
(TransformBroadcaster: /tf depth 100, reliable, volatile; StaticTransformBroadcaster:
/tf_static depth 1, reliable, transient local).
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import time

import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from diffdrr_ros.ros.qos import TF_QOS, TF_STATIC_QOS  # the node's own profiles

IMAGE_TOPIC = "/diffdrr_ros_test/image"
WIDTH, HEIGHT = 8, 6
STAMP = (1_700_000_000, 123_456_789)

IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


def make_image() -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = STAMP
    msg.header.frame_id = "detector_optical"
    msg.height, msg.width = HEIGHT, WIDTH
    msg.encoding = "mono16"
    msg.is_bigendian = 0
    msg.step = WIDTH * 2
    # row r, column c -> 257 * (8 r + c) + 3: both bytes of every pixel differ
    values = [257 * (WIDTH * r + c) + 3 for r in range(HEIGHT) for c in range(WIDTH)]
    msg.data = struct.pack(f"<{len(values)}H", *values)
    return msg


def make_transform(parent: str, child: str, xyz, xyzw) -> TransformStamped:
    t = TransformStamped()
    t.header.stamp.sec, t.header.stamp.nanosec = STAMP
    t.header.frame_id = parent
    t.child_frame_id = child
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = xyz
    r = t.transform.rotation
    r.x, r.y, r.z, r.w = xyzw
    return t


def make_tf() -> TFMessage:
    return TFMessage(
        transforms=[
            make_transform("world", "ct", (0.125, -0.25, 1.5), (0.0, 0.0, 0.6, 0.8)),
            make_transform("world", "detector_optical", (-0.1, 0.2, 0.3), (0.5, -0.5, 0.5, 0.5)),
        ]
    )


def make_static_tf() -> TFMessage:
    return TFMessage(transforms=[make_transform("world", "c_arm_base", (1.0, 2.0, 0.75), (0.0, 0.0, 0.0, 1.0))])


def qos_dict(pub) -> dict:
    q = pub.qos_profile
    return {
        "depth": q.depth,
        "history": q.history.name,
        "reliability": q.reliability.name,
        "durability": q.durability.name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["stream", "static"])
    parser.add_argument("--deadline", type=float, default=30.0, help="exit after this many seconds")
    args = parser.parse_args(argv)

    # Our own SIGINT/SIGTERM handling: a flag checked by the loop. (rclpy's handler would shut
    # the context down at once and leave a KeyboardInterrupt pending, which can then surface
    # in the cleanup below and make the exit code racy.)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"diffdrr_ros_test_peer_{args.mode}")
    end = time.monotonic() + args.deadline
    try:
        tf_pub = node.create_publisher(TFMessage, "/tf", TF_QOS)
        qos = {"/tf": qos_dict(tf_pub)}
        if args.mode == "stream":
            image_pub = node.create_publisher(Image, IMAGE_TOPIC, IMAGE_QOS)
            qos[IMAGE_TOPIC] = qos_dict(image_pub)
            image, tf = make_image(), make_tf()

            def publish() -> None:
                image_pub.publish(image)
                tf_pub.publish(tf)

            node.create_timer(0.05, publish)
            print("READY", flush=True)
        else:
            static_pub = node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
            qos["/tf_static"] = qos_dict(static_pub)
            print("READY", flush=True)
            static_pub.publish(make_static_tf())
            print("STATIC_SENT", flush=True)
        print("QOS " + json.dumps(qos), flush=True)
        while not stop and rclpy.ok() and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
