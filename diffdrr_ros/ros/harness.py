"""Drive a registration node from outside: start it as a process, talk to it over DDS.

Shared by the node's tests, the latency benchmark and the demo, so that all three exercise
the node exactly as an integrator would: a separate process, real DDS on loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from .qos import TF_STATIC_QOS

REPO = Path(__file__).resolve().parents[2]


def ros_env(**extra: str) -> dict[str, str]:
    """This process's environment with DDS kept on loopback (never leaves the machine)."""
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.update(extra)
    return env


class NodeProcess:
    """The registration node (or another console module) in its own process, logging to a file."""

    def __init__(self, params: dict[str, object], log_path: Path, module: str = "diffdrr_ros.ros.registration_node",
                 params_file: Path | None = REPO / "config" / "registration.yaml") -> None:
        args = [sys.executable, "-m", module, "--ros-args"]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        for k, v in params.items():
            args += ["-p", f"{k}:={_param_text(v)}"]
        self.log_path = Path(log_path)
        with open(self.log_path, "w") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=ros_env(), cwd=REPO)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text()[-tail:]

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (a clean ROS shutdown), then kill after ``timeout``; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def _param_text(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_param_text(x) for x in v) + "]"
    return str(v)


class GraphClient:
    """Publishes frames and joints, records /tf, /tf_static, overlays (and their CameraInfo) and diagnostics.

    ``image_transport="compressed"``: ``image_pub`` publishes ``sensor_msgs/CompressedImage`` on
    ``<image_topic>/compressed`` (a node with ``image.transport: compressed``).
    """

    def __init__(self, node_name: str = "diffdrr_registration", image_topic: str = "fluoro/image",
                 joint_topic: str = "carm/joint_states", image_transport: str = "raw") -> None:
        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx)  # not sys.argv: a CLI "-p name:=value" is no ROS remap
        self.node = rclpy.create_node("diffdrr_client", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if image_transport == "compressed":
            self.image_pub = self.node.create_publisher(CompressedImage, f"{image_topic}/compressed", reliable)
        else:
            self.image_pub = self.node.create_publisher(Image, image_topic, reliable)
        self.joint_pub = self.node.create_publisher(JointState, joint_topic, 50)
        self.tf: list[tuple[float, TFMessage]] = []  # (receive time.monotonic(), message)
        self.static: list[TFMessage] = []
        self.overlays: list[Image] = []
        self.overlay_infos: list[CameraInfo] = []
        self.diags: list[DiagnosticArray] = []
        self.poses: list[PoseWithCovarianceStamped] = []
        self.node.create_subscription(TFMessage, "/tf", lambda m: self.tf.append((time.monotonic(), m)), 100)
        self.node.create_subscription(TFMessage, "/tf_static", self.static.append, TF_STATIC_QOS)
        self.node.create_subscription(Image, f"{node_name}/overlay", self.overlays.append, 5)
        self.node.create_subscription(CameraInfo, f"{node_name}/overlay/camera_info", self.overlay_infos.append, 5)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 50)
        self.node.create_subscription(PoseWithCovarianceStamped, f"{node_name}/ct_pose", self.poses.append, 10)
        self.reregister = self.node.create_client(Trigger, f"{node_name}/reregister")
        self.reset = self.node.create_client(Trigger, f"{node_name}/reset")
        self.node_name = node_name
        self._set_parameters = None  # made by set_parameter

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)
            if predicate():
                return True
        return False

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def tf_for(self, stamp_sec: float, child: str = "ct"):
        """The transform to ``child`` stamped ``stamp_sec`` (s), or None."""
        hit = self.tf_received(stamp_sec, child)
        return None if hit is None else hit[1]

    def tf_received(self, stamp_sec: float, child: str = "ct"):
        """``(receive time, transform)`` for ``child`` at ``stamp_sec``, or None."""
        for t_rx, msg in self.tf:
            for tr in msg.transforms:
                s = tr.header.stamp.sec + 1e-9 * tr.header.stamp.nanosec
                if abs(s - stamp_sec) < 1e-6 and tr.child_frame_id == child:
                    return t_rx, tr
        return None

    def pose_for(self, stamp_sec: float) -> PoseWithCovarianceStamped | None:
        """The ``~/ct_pose`` message stamped ``stamp_sec`` (s), or None."""
        for msg in self.poses:
            if abs(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec - stamp_sec) < 1e-6:
                return msg
        return None

    def diag_saying(self, text: str, after: int = 0):
        for d in self.diags[after:]:
            for s in d.status:
                if text in s.message:
                    return s
        return None

    def status_named(self, suffix: str, after: int = 0):
        """The latest DiagnosticStatus whose name ends with ``suffix`` (e.g. ``"topic status"``), or None."""
        for d in reversed(self.diags[after:]):
            for s in d.status:
                if s.name.endswith(suffix):
                    return s
        return None

    def set_parameter(self, name: str, value: str | float, timeout: float = 10.0):
        """Set one string or double parameter of the node over its ``set_parameters`` service; its result."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        if self._set_parameters is None:
            self._set_parameters = self.node.create_client(SetParameters, f"{self.node_name}/set_parameters")
        if not self._set_parameters.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"no {self.node_name}/set_parameters service")
        if isinstance(value, str):
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        fut = self._set_parameters.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=pv)]))
        if not self.spin_until(fut.done, timeout):
            raise RuntimeError(f"no answer from {self.node_name}/set_parameters")
        return fut.result().results[0]

    def wait_for_node(self, proc: NodeProcess, timeout: float = 90.0) -> bool:
        """The node is up once it latched its static transform and its subscriptions matched our publishers.

        Without the second condition a first frame published right away can be lost to discovery
        (before the match there is no reader to deliver it to, reliable or not).
        """
        up = self.spin_until(lambda: bool(self.static) or not proc.alive(), timeout) and proc.alive()
        return up and self.spin_until(lambda: (self.image_pub.get_subscription_count() > 0
                                               and self.joint_pub.get_subscription_count() > 0)
                                      or not proc.alive(), timeout) and proc.alive()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@contextlib.contextmanager
def running_node(params: dict[str, object], log_path: Path, client: GraphClient | None = None,
                 **node_kwargs) -> Iterator[tuple[GraphClient, NodeProcess]]:
    """The node (:class:`NodeProcess`) and a :class:`GraphClient` once the node is up; stopped on exit.

    ``client``: one made by the caller (e.g. with extra publishers created before the wait);
    default a plain :class:`GraphClient`. Raises ``RuntimeError`` with the node's log when it
    does not come up, and after the block when it did not exit with code 0 on SIGINT.
    """
    node = NodeProcess(params, log_path, **node_kwargs)
    client = client or GraphClient()
    try:
        if not client.wait_for_node(node):
            raise RuntimeError(f"node did not come up:\n{node.log()}")
        yield client, node
    finally:
        rc = node.stop()
        client.close()
    if rc != 0:
        raise RuntimeError(f"node exit code {rc}:\n{node.log()}")
