"""A publisher process for test_bags.py (run as a script, not collected by pytest).

    python test/bag/bag_peer.py --count N [--period S] [--deadline S]

Publishes one latched TFMessage on /tf_static at once (tf2_ros's static QoS), prints READY,
waits (bounded) for a subscriber on IMAGE_TOPIC, then publishes N Images stamped
(1000 + i, 0) whose pixels are ``pattern(i)``, prints DONE and exits. The test rebuilds the
content with the same functions (they are imported from here).
"""

from __future__ import annotations

import argparse
import sys
import time

IMAGE_TOPIC = "/bag_test/image"
WIDTH, HEIGHT = 5, 3


def pattern(i: int) -> bytes:
    return bytes((7 * i + 3 * k) % 256 for k in range(WIDTH * HEIGHT))


def make_image(i: int):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + i, 0
    msg.header.frame_id = "detector_optical"
    msg.height, msg.width, msg.encoding, msg.step = HEIGHT, WIDTH, "mono8", WIDTH
    msg.data = pattern(i)
    return msg


def make_static_tf():
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = TransformStamped()
    t.header.stamp.sec = 999
    t.header.frame_id, t.child_frame_id = "world", "carm_isocenter"
    t.transform.translation.x, t.transform.rotation.w = 1.25, 1.0
    return TFMessage(transforms=[t])


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--period", type=float, default=0.01)
    parser.add_argument("--deadline", type=float, default=20.0)
    args = parser.parse_args(argv)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("diffdrr_ros_bag_test_peer")
    try:
        static = node.create_publisher(TFMessage, "/tf_static", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        image = node.create_publisher(Image, IMAGE_TOPIC, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        static.publish(make_static_tf())
        print("READY", flush=True)
        end = time.monotonic() + args.deadline
        while image.get_subscription_count() == 0:
            if time.monotonic() > end:
                print("NO_SUBSCRIBER", flush=True)
                return 2
            time.sleep(0.02)
        time.sleep(0.3)  # let the subscriber's side of the match settle too
        for i in range(args.count):
            image.publish(make_image(i))
            time.sleep(args.period)
        image.wait_for_all_acked(Duration(seconds=5))
        print("DONE", flush=True)
        time.sleep(0.5)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
