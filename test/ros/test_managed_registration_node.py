"""The managed (lifecycle) registration node, driven through its lifecycle services over DDS.

Unconfigured: no static TF, no registration. configure -> inactive (CT loaded, still no
inputs); activate -> registers frames within 2 mm; deactivate -> frames are ignored;
cleanup -> unconfigured; an unreadable CT fails configure and leaves the node unconfigured
and alive.
"""

from __future__ import annotations

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from sensor_msgs.msg import Image
from test_registration_node import JOINTS, NODE_PARAMS, Scene, send  # same scene and node set-up

from diffdrr_ros.ros.conversions import array_to_image
from diffdrr_ros.ros.harness import GraphClient, NodeProcess

NAME = "diffdrr_registration"


class LifecycleClient:
    def __init__(self, client: GraphClient) -> None:
        self.client = client
        self.change = client.node.create_client(ChangeState, f"{NAME}/change_state")
        self.get = client.node.create_client(GetState, f"{NAME}/get_state")

    def _call(self, cli, request, timeout: float = 60.0):
        assert cli.wait_for_service(timeout_sec=30.0), "lifecycle service not available"
        future = cli.call_async(request)
        assert self.client.spin_until(future.done, timeout), "no answer from the lifecycle service"
        return future.result()

    def state(self) -> int:
        return self._call(self.get, GetState.Request()).current_state.id

    def transition(self, transition_id: int) -> bool:
        req = ChangeState.Request()
        req.transition = Transition(id=transition_id)
        return self._call(self.change, req).success


def _frame(scene: Scene, sec: int) -> Image:
    return array_to_image(scene.frame(JOINTS, seed=sec), "mono16")


def test_lifecycle_transitions_gate_registration(tmp_path):
    node = NodeProcess(NODE_PARAMS, tmp_path / "node.log", module="diffdrr_ros.ros.managed_registration_node")
    client = GraphClient()
    life = LifecycleClient(client)
    scene = Scene()
    try:
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED, node.log()
        client.spin_for(0.5)
        assert not client.static, "an unconfigured node published its static TF"

        assert life.transition(Transition.TRANSITION_CONFIGURE), node.log()
        assert life.state() == State.PRIMARY_STATE_INACTIVE
        send(client, _frame(scene, 10), JOINTS, 10)
        client.spin_for(2.0)
        assert client.tf_for(10) is None, "an inactive node registered a frame"

        assert life.transition(Transition.TRANSITION_ACTIVATE), node.log()
        assert life.state() == State.PRIMARY_STATE_ACTIVE
        assert client.spin_until(lambda: bool(client.static), 10.0)
        send(client, _frame(scene, 20), JOINTS, 20)
        assert client.spin_until(lambda: client.tf_for(20) is not None, 60.0), node.log()
        assert scene.mtre(client.tf_for(20), JOINTS) < 2.0

        assert life.transition(Transition.TRANSITION_DEACTIVATE), node.log()
        assert life.state() == State.PRIMARY_STATE_INACTIVE
        send(client, _frame(scene, 30), JOINTS, 30)
        client.spin_for(2.0)
        assert client.tf_for(30) is None, "a deactivated node registered a frame"

        assert life.transition(Transition.TRANSITION_CLEANUP), node.log()
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED
        # Configure and activate again: it registers again.
        assert life.transition(Transition.TRANSITION_CONFIGURE) and life.transition(Transition.TRANSITION_ACTIVATE)
        send(client, _frame(scene, 40), JOINTS, 40)
        assert client.spin_until(lambda: client.tf_for(40) is not None, 60.0), node.log()
        assert node.alive()
    finally:
        rc = node.stop()
        client.close()
    assert rc == 0, node.log()


def test_unreadable_ct_fails_configure_and_the_node_stays_up(tmp_path):
    params = {**NODE_PARAMS, "ct_path": str(tmp_path / "missing.nii.gz")}
    node = NodeProcess(params, tmp_path / "node.log", module="diffdrr_ros.ros.managed_registration_node")
    client = GraphClient()
    life = LifecycleClient(client)
    try:
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED, node.log()
        assert not life.transition(Transition.TRANSITION_CONFIGURE)
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.alive()
        assert "configure failed: cannot load CT" in node.log()
    finally:
        rc = node.stop()
        client.close()
    assert rc == 0, node.log()
