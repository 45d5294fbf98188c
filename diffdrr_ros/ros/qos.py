"""QoS profiles used across the package, matching what tf2_ros and ROS users expect.

* ``/tf``: tf2_ros TransformBroadcaster's profile (reliable, volatile, depth 100).
* ``/tf_static``: StaticTransformBroadcaster's (reliable, transient local, depth 1), so late
  joiners still get the static transforms.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
