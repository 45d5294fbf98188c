"""config/sros2/policy.xml allows every topic and service the nodes really create.

SROS2 itself cannot run here (the PyPI Fast DDS has no security plugins), so the policy is
checked against the live graph instead: each node is started (with its optional inputs on),
and every endpoint that ``get_*_names_and_types_by_node`` reports must be allowed, in the
right direction, by that node's profile. Names resolve as sros2 resolves them: ``~/x`` is the
node's own, a relative name is under the profile's namespace.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from diffdrr_ros.ros.harness import ros_env

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "config" / "sros2" / "policy.xml"
ENCLAVES = {
    "diffdrr_registration": "/diffdrr_ros/registration",
    "carm_simulator": "/diffdrr_ros/carm_simulator",
    "igtl_bridge": "/diffdrr_ros/igtl_bridge",
}


def _resolve(expression: str, ns: str, node: str) -> str:
    ns = ns.rstrip("/")
    if expression.startswith("~"):
        return f"{ns}/{node}{expression[1:]}"
    if expression.startswith("/"):
        return expression
    return f"{ns}/{expression}"


def load_policy(path: Path = POLICY) -> dict[str, dict[str, set[str]]]:
    """node -> {"publish" | "subscribe" | "reply" | "request": fully qualified names}."""
    root = ET.parse(path).getroot()
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    out: dict[str, dict[str, set[str]]] = {}
    for enclave in root.iter("enclave"):
        for profile in enclave.iter("profile"):
            node, ns = profile.get("node"), profile.get("ns")
            assert ENCLAVES.get(node) == enclave.get("path"), (node, enclave.get("path"))
            rules = out.setdefault(node, {k: set() for k in ("publish", "subscribe", "reply", "request")})
            for group in profile:
                assert group.tag in ("topics", "services"), group.tag
                child = "topic" if group.tag == "topics" else "service"
                names = [_resolve(e.text.strip(), ns, node) for e in group.findall(child)]
                assert names and len(names) == len(group), f"{node}: empty or mixed {group.tag}"
                for access, value in group.attrib.items():
                    assert value == "ALLOW" and access in rules, (node, access, value)
                    rules[access] |= set(names)
    return out


def test_policy_names_one_enclave_per_node():
    policy = load_policy()
    assert set(policy) == set(ENCLAVES)
    for rules in policy.values():
        assert "/rosout" in rules["publish"] and "/parameter_events" in rules["subscribe"]


def _graph(names: list[str], ready: tuple[str, str], timeout: float = 90.0,
           settle: float = 3.0) -> dict[str, dict[str, set[str]]]:
    """Endpoints of the nodes ``names`` (absolute), once ``ready`` (access, name) is among the first
    node's endpoints (its set-up is done) and they have stopped changing for ``settle`` s."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("policy_probe", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(probe)
    try:
        def endpoints(fqn: str) -> dict[str, set[str]]:
            ns, name = fqn.rsplit("/", 1)
            ns = ns or "/"
            return {
                "publish": {t for t, _ in probe.get_publisher_names_and_types_by_node(name, ns)},
                "subscribe": {t for t, _ in probe.get_subscriber_names_and_types_by_node(name, ns)},
                "reply": {t for t, _ in probe.get_service_names_and_types_by_node(name, ns)},
                "request": {t for t, _ in probe.get_client_names_and_types_by_node(name, ns)},
            }

        end = time.monotonic() + timeout
        last: dict[str, dict[str, set[str]]] = {}
        stable_since = time.monotonic()
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.2)
            present = {f"{ns.rstrip('/')}/{n}" for n, ns in probe.get_node_names_and_namespaces()}
            if not set(names) <= present:
                stable_since = time.monotonic()
                continue
            now = {n: endpoints(n) for n in names}
            if ready[1] not in now[names[0]][ready[0]]:
                continue
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > settle:
                return now
        raise AssertionError(f"nodes {names} not all up with a stable graph in {timeout} s: {last}")
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.shutdown(context=ctx)


def _start(module: str, params: dict[str, str], log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", module, "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    with open(log, "w") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=ros_env(), cwd=REPO)


# Each node with every optional input switched on, so that every endpoint it can create exists.
# (module, node, parameters, an endpoint that exists once its set-up is done)
NODES = {
    "registration": ("diffdrr_ros.ros.registration_node", "/diffdrr_registration", {
        "ct_path": "phantom:head_tiny", "biplane.enabled": "true", "use_camera_info": "true",
        "use_sim_time": "true"}, ("subscribe", "/fluoro_b/image")),
    "managed_registration": ("diffdrr_ros.ros.managed_registration_node", "/diffdrr_registration", {
        "ct_path": "phantom:head_tiny"}, ("reply", "/diffdrr_registration/get_state")),
    "carm_simulator": ("diffdrr_ros.ros.carm_simulator", "/carm_simulator", {
        "ct_path": "phantom:head_tiny", "use_sim_time": "true"}, ("publish", "/fluoro/image")),
    "igtl_bridge": ("diffdrr_ros.ros.igtl_bridge", "/igtl_bridge", {
        "prior_device": "CTPrior", "port": "18997", "use_sim_time": "true"},
        ("publish", "/diffdrr_registration/prior_pose")),
}


@pytest.mark.parametrize("which", sorted(NODES))
def test_every_endpoint_of_the_node_is_allowed(which, tmp_path):
    module, fqn, params, ready = NODES[which]
    node_name = fqn.rsplit("/", 1)[1]
    rules = load_policy()[node_name]
    proc = _start(module, params, tmp_path / "node.log")
    try:
        graph = _graph([fqn], ready)[fqn]
        assert proc.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for access, names in graph.items():
        denied = names - rules[access]
        assert not denied, f"{node_name} {access}es {sorted(denied)}, which config/sros2/policy.xml does not allow"
