"""The CT placement prior over a topic (``topics.prior``, e.g. from 3D Slicer through igtl_bridge).

The node starts with a prior 150 mm off (the CT outside the beam): a frame cannot register. A
PoseStamped of the CT in the C-arm frame, sent with the table moved, becomes the prior
(``T_table_ct``); the next frame registers within 2 mm. A prior in another frame or with a
non-unit quaternion is refused and counted; the node goes on.
"""

from __future__ import annotations

import math

import pytest
import torch
from geometry_msgs.msg import PoseStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from test_registration_node import NODE_PARAMS, Scene, send

from diffdrr_ros.core.geometry.kinematics import CArmJoints, table_transform
from diffdrr_ros.ros.conversions import array_to_image, matrix_to_pose
from diffdrr_ros.ros.harness import GraphClient, running_node

JOINTS = CArmJoints(lao_rad=math.radians(20), cranial_rad=math.radians(5), table_mm=(12.0, -4.0, 20.0))
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _counter(client: GraphClient, key: str) -> int:
    for d in reversed(client.diags):
        for s in d.status:
            for kv in s.values:
                if kv.key == key and kv.value:
                    return int(float(kv.value))
    return 0


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    params = dict(NODE_PARAMS, **{"prior.translation_mm": [150.0, 0.0, 0.0]})
    with running_node(params, tmp_path_factory.mktemp("node") / "node.log") as (client, node):
        yield client, Scene(), node


def _prior(iso_ct: torch.Tensor, frame_id: str = "carm_isocenter") -> PoseStamped:
    msg = PoseStamped()
    msg.header.frame_id = frame_id
    msg.pose = matrix_to_pose(iso_ct)
    return msg


def test_prior_from_the_topic_is_used(system):
    client, scene, node = system
    pub = client.node.create_publisher(PoseStamped, "diffdrr_registration/prior_pose", LATCHED)
    assert client.spin_until(lambda: pub.get_subscription_count() > 0, 20.0), node.log()

    # With the 150 mm prior the frame does not register (the CT is outside the beam).
    send(client, array_to_image(scene.frame(JOINTS, seed=1), "mono16"), JOINTS, 10)
    assert client.spin_until(lambda: _counter(client, "last_frame_stamp") >= 10, 90.0), node.log()
    assert client.tf_for(10) is None

    # Refused priors: another frame, a quaternion that is not a rotation.
    pub.publish(_prior(torch.eye(4, dtype=torch.float64), frame_id="world"))
    bad = _prior(torch.eye(4, dtype=torch.float64))
    bad.pose.orientation.w = 2.0
    assert client.spin_until(lambda: _counter(client, "priors_rejected") >= 1, 10.0), node.log()
    pub.publish(bad)
    assert client.spin_until(lambda: _counter(client, "priors_rejected") >= 2, 10.0), node.log()

    # The truth as T_iso_ct with the table where it is now: the node keeps T_table_ct.
    pub.publish(_prior(table_transform(JOINTS) @ scene.table_from_ct))
    assert client.spin_until(lambda: _counter(client, "priors_received") >= 1, 10.0), node.log()
    send(client, array_to_image(scene.frame(JOINTS, seed=2), "mono16"), JOINTS, 20)
    assert client.spin_until(lambda: client.tf_for(20) is not None, 90.0), node.log()
    assert scene.mtre(client.tf_for(20), JOINTS) < 2.0
    assert node.alive()
