"""The launch files run for real, and the node started the way launch_ros starts it.

* With ``launch`` and ``launch_ros`` importable (a sourced ROS 2 install; neither is on PyPI,
  so not in CI here) the launch files are executed by ``launch.LaunchService`` with their
  arguments, and the nodes are checked over DDS: name and namespace, the parameters the
  arguments set, the lifecycle state with ``managed``/``autostart``, a pose on /tf from the
  demo. The package is made findable as colcon installs it (an ament prefix with ``share/``
  and ``lib/diffdrr_ros/<executable>``), its scripts running this interpreter.
* Everywhere: the node started with the command line launch_ros builds for
  registration.launch.py (``-r __node:= -r __ns:= --params-file ... -p ...``) has the
  namespace, topics and parameter values those arguments promise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from tf2_msgs.msg import TFMessage

from diffdrr_ros.ros.harness import ros_env
from diffdrr_ros.ros.qos import TF_STATIC_QOS

REPO = Path(__file__).resolve().parents[1]
PKG = "diffdrr_ros"
HAVE_LAUNCH = all(importlib.util.find_spec(m) is not None for m in ("launch", "launch_ros"))
needs_launch = pytest.mark.skipif(
    not HAVE_LAUNCH,
    reason="launch / launch_ros not importable: these need a sourced ROS 2 install (not on PyPI)",
)
EXECUTABLES = {
    "registration_node": "diffdrr_ros.ros.registration_node",
    "managed_registration_node": "diffdrr_ros.ros.managed_registration_node",
    "carm_simulator": "diffdrr_ros.ros.carm_simulator",
    "igtl_bridge": "diffdrr_ros.ros.igtl_bridge",
}


class Probe:
    """A client node: the graph, parameters and lifecycle state of other nodes, /tf and /tf_static."""

    def __init__(self) -> None:
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("launch_probe", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.tf: list[TFMessage] = []
        self.static: list[TFMessage] = []
        self.node.create_subscription(TFMessage, "/tf", self.tf.append, 100)
        self.node.create_subscription(TFMessage, "/tf_static", self.static.append, TF_STATIC_QOS)

    def spin_until(self, predicate, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
            if predicate():
                return True
        return False

    def has_node(self, fqn: str) -> bool:
        return any(f"{ns.rstrip('/')}/{name}" == fqn for name, ns in self.node.get_node_names_and_namespaces())

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
            future = client.call_async(request)
            assert self.spin_until(future.done, timeout), f"no answer from {name}"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def parameters(self, fqn: str, names: list[str]) -> dict[str, object]:
        values = self.call(GetParameters, f"{fqn}/get_parameters", GetParameters.Request(names=names)).values
        out = {}
        for n, v in zip(names, values, strict=True):
            # ParameterType: 1 bool, 2 integer, 3 double, 4 string
            out[n] = {1: v.bool_value, 2: v.integer_value, 3: v.double_value, 4: v.string_value}.get(v.type)
        return out

    def lifecycle_state(self, fqn: str) -> int:
        return self.call(GetState, f"{fqn}/get_state", GetState.Request()).current_state.id

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture
def probe():
    p = Probe()
    yield p
    p.close()


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------
# Everywhere: the command line launch_ros makes of registration.launch.py's arguments


def test_node_started_as_launch_ros_starts_it(tmp_path, probe):
    """namespace:=lt ct_path:=phantom:head device:=cpu use_sim_time:=true, as launch_ros passes them."""
    cmd = [sys.executable, "-m", EXECUTABLES["registration_node"], "--ros-args",
           "-r", "__node:=diffdrr_registration", "-r", "__ns:=/lt",
           "--params-file", str(REPO / "config" / "registration.yaml"),
           "-p", "ct_path:=phantom:head", "-p", "device:=cpu", "-p", "use_sim_time:=true"]
    log = tmp_path / "node.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ros_env(), cwd=REPO)
    try:
        assert probe.spin_until(lambda: probe.has_node("/lt/diffdrr_registration") or proc.poll() is not None,
                                60.0) and proc.poll() is None, log.read_text()[-3000:]
        values = probe.parameters("/lt/diffdrr_registration", ["ct_path", "device", "use_sim_time", "topics.image"])
        assert values == {"ct_path": "phantom:head", "device": "cpu", "use_sim_time": True,
                          "topics.image": "fluoro/image"}
        # Relative topics land in the namespace; the node's own (~/) under its name; /tf stays global.
        assert probe.spin_until(lambda: bool(probe.static) or proc.poll() is not None, 90.0), log.read_text()[-3000:]
        topics = dict(probe.node.get_topic_names_and_types())
        assert probe.node.count_subscribers("/lt/fluoro/image") >= 1
        assert probe.node.count_subscribers("/lt/carm/joint_states") >= 1
        assert "/lt/diffdrr_registration/ct_pose" in topics
        assert probe.node.count_publishers("/tf") >= 1
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------------
# With a ROS 2 install: the launch files themselves, through LaunchService


@pytest.fixture
def ament_prefix(tmp_path) -> Path:
    """This package laid out as colcon installs it, with this interpreter in its scripts."""
    prefix = tmp_path / "install"
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PKG
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    share = prefix / "share" / PKG
    shutil.copytree(REPO / "launch", share / "launch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", share / "config")
    shutil.copy2(REPO / "package.xml", share / "package.xml")
    lib = prefix / "lib" / PKG
    lib.mkdir(parents=True)
    for exe, module in EXECUTABLES.items():
        script = lib / exe
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)
    return prefix


def _launch(prefix: Path, launch_file: str, args: list[str], log: Path) -> subprocess.Popen:
    env = ros_env(AMENT_PREFIX_PATH=os.pathsep.join(
        p for p in (str(prefix), os.environ.get("AMENT_PREFIX_PATH", "")) if p))
    launch_path = prefix / "share" / PKG / "launch" / launch_file
    cmd = [sys.executable, str(REPO / "test" / "launch_runner.py"), str(launch_path), *args]
    # Its own process group, so that _stop_launch can take down whatever the launch leaves behind.
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)


def _stop_launch(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGINT to the launch process alone (it passes it on); then kill its process group. Its exit code.

    Without the group kill, a launch killed on the timeout would leave its nodes running, on this
    domain, into the next test.
    """
    _stop(proc, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def _assert_clean_shutdown(rc: int, log: Path) -> None:
    """The launch's SIGINT reached the node, which stopped on it (no SIGTERM/SIGKILL), and launch exited 0."""
    text = log.read_text()
    assert rc == 0 and "escalating to" not in text and "process has finished cleanly" in text, text[-3000:]


@needs_launch
def test_registration_launch_applies_its_arguments(ament_prefix, tmp_path, probe):
    log = tmp_path / "launch.log"
    proc = _launch(ament_prefix, "registration.launch.py",
                   ["namespace:=lt", "ct_path:=phantom:head", "device:=cpu", "use_sim_time:=true"], log)
    try:
        fqn = "/lt/diffdrr_registration"
        assert probe.spin_until(lambda: probe.has_node(fqn) or proc.poll() is not None, 90.0) and proc.poll() is None, \
            log.read_text()[-3000:]
        assert probe.parameters(fqn, ["ct_path", "device", "use_sim_time"]) == {
            "ct_path": "phantom:head", "device": "cpu", "use_sim_time": True}
        assert probe.spin_until(lambda: bool(probe.static), 90.0), log.read_text()[-3000:]
        assert probe.node.count_subscribers("/lt/fluoro/image") >= 1
    finally:
        rc = _stop_launch(proc)
    _assert_clean_shutdown(rc, log)


@needs_launch
def test_registration_launch_with_the_igtl_bridge(ament_prefix, tmp_path, probe):
    """igtl:=true: the bridge in the node's namespace, serving OpenIGTLink on loopback (a real client)."""
    import pyigtl

    log = tmp_path / "launch.log"
    proc = _launch(ament_prefix, "registration.launch.py", ["namespace:=li", "igtl:=true", "device:=cpu"], log)
    client = None
    try:
        def up() -> bool:
            return (probe.has_node("/li/diffdrr_registration") and probe.has_node("/li/igtl_bridge")) \
                or proc.poll() is not None

        assert probe.spin_until(up, 90.0) and proc.poll() is None, log.read_text()[-3000:]
        client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=18944, start_now=True)
        status = client.wait_for_message("CTToCArmStatus", timeout=30)
        assert status is not None and status.string.startswith("no pose"), log.read_text()[-3000:]
    finally:
        if client is not None:
            client.stop()
        rc = _stop_launch(proc)
    _assert_clean_shutdown(rc, log)


@pytest.mark.parametrize("autostart", [False, True])
@needs_launch
def test_registration_launch_managed(ament_prefix, tmp_path, probe, autostart):
    log = tmp_path / "launch.log"
    proc = _launch(ament_prefix, "registration.launch.py",
                   ["namespace:=lm", "managed:=true", f"autostart:={str(autostart).lower()}", "device:=cpu"], log)
    try:
        fqn = "/lm/diffdrr_registration"
        assert probe.spin_until(lambda: probe.has_node(fqn) or proc.poll() is not None, 90.0) and proc.poll() is None, \
            log.read_text()[-3000:]
        want = State.PRIMARY_STATE_ACTIVE if autostart else State.PRIMARY_STATE_UNCONFIGURED
        end = time.monotonic() + 90.0
        state = probe.lifecycle_state(fqn)
        while state != want and time.monotonic() < end:
            probe.spin_until(lambda: False, 0.5)
            state = probe.lifecycle_state(fqn)
        assert state == want, log.read_text()[-3000:]
    finally:
        rc = _stop_launch(proc)
    _assert_clean_shutdown(rc, log)


@needs_launch
def test_demo_launch_puts_a_registered_ct_on_tf(ament_prefix, tmp_path, probe):
    log = tmp_path / "launch.log"
    proc = _launch(ament_prefix, "demo.launch.py", ["device:=cpu", "frame_rate_hz:=1.0"], log)
    try:
        def registered() -> bool:
            return any(t.child_frame_id == "ct" for m in probe.tf for t in m.transforms) or proc.poll() is not None

        assert probe.spin_until(registered, 180.0) and proc.poll() is None, log.read_text()[-3000:]
    finally:
        _stop_launch(proc)
