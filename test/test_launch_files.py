"""Launch and config files name only executables, parameters and files that exist.

`launch`/`launch_ros` are not installable here (no PyPI wheels), so the launch files are
checked statically: every `Node(package=..., executable=...)` must be a console script of
this package, and every parameter they set must be declared by that executable.
"""

import ast
import re
from pathlib import Path

import pytest

from diffdrr_ros.ros.igtl_bridge import BRIDGE_PARAMS
from diffdrr_ros.ros.params import PARAMS, render_yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def _console_scripts() -> dict[str, str]:
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', (REPO / "setup.py").read_text()))


def _node_calls(path: Path) -> list[ast.Call]:
    """``Node(...)`` and ``LifecycleNode(...)`` calls, their ``**name`` keywords spliced in from
    ``name = dict(...)`` in the same file."""
    tree = ast.parse(path.read_text())
    dicts = {
        n.targets[0].id: n.value for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
        and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "dict"
    }
    calls = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") in ("Node", "LifecycleNode"):
            keywords = []
            for k in n.keywords:
                if k.arg is None and isinstance(k.value, ast.Name) and k.value.id in dicts:
                    keywords += dicts[k.value.id].keywords
                else:
                    keywords.append(k)
            calls.append(ast.Call(func=n.func, args=n.args, keywords=keywords))
    return calls


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_there_are_launch_files():
    names = {p.name for p in LAUNCH_FILES}
    assert {"registration.launch.py", "demo.launch.py"} <= names


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_executables_and_parameters_exist(path):
    scripts = _console_scripts()
    calls = _node_calls(path)
    assert calls, f"{path.name} starts no Node"
    declared = {p.name for p in PARAMS}
    bridge_params = {p.name for p in BRIDGE_PARAMS}
    sim_params = set(re.findall(r'"([\w.]+)": [^,]+,', (REPO / "diffdrr_ros/ros/carm_simulator.py").read_text()))
    for call in calls:
        assert ast.literal_eval(_kw(call, "package")) == "diffdrr_ros"
        exe = ast.literal_eval(_kw(call, "executable"))
        assert exe in scripts, f"{path.name}: executable {exe!r} is not a console script"
        params = _kw(call, "parameters")
        for d in [e for e in getattr(params, "elts", []) if isinstance(e, ast.Dict)]:
            for key in d.keys:
                name = ast.literal_eval(key)
                known = {"registration_node": declared, "managed_registration_node": declared,
                         "igtl_bridge": bridge_params}.get(exe, sim_params) | {"use_sim_time"}
                assert name in known, f"{path.name}: {exe} has no parameter {name!r}"
    for ref in re.findall(r'"(config)", "([\w.]+)"', path.read_text()):
        assert (REPO / ref[0] / ref[1]).is_file()


def _registration_calls(calls: list[ast.Call]) -> list[ast.Call]:
    return [c for c in calls if ast.literal_eval(_kw(c, "executable")) != "igtl_bridge"]


def test_registration_launch_offers_the_plain_and_the_managed_node_and_the_bridge():
    calls = _node_calls(REPO / "launch" / "registration.launch.py")
    assert {ast.literal_eval(_kw(c, "executable")) for c in calls} == {
        "registration_node", "managed_registration_node", "igtl_bridge"}
    assert all(ast.literal_eval(_kw(c, "name")) == "diffdrr_registration" for c in _registration_calls(calls))


def test_registration_yaml_is_the_generated_one():
    assert (REPO / "config" / "registration.yaml").read_text() == render_yaml(), \
        "regenerate: python -m diffdrr_ros.ros.params > config/registration.yaml"


def test_yaml_loads_as_ros_parameters():
    import yaml

    data = yaml.safe_load((REPO / "config" / "registration.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) == {p.name for p in PARAMS}
    for p in PARAMS:
        assert params[p.name] == p.default


REGISTRATION_LAUNCH_ARGS = {"params_file", "ct_path", "device", "namespace", "use_sim_time", "managed", "autostart",
                            "igtl"}


def _launch_configurations(tree: ast.AST) -> set[str]:
    return {
        ast.literal_eval(n.args[0]) for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "LaunchConfiguration"
    }


def _declared_arguments(tree: ast.AST) -> set[str]:
    return {
        ast.literal_eval(n.args[0]) for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    }


def test_registration_launch_arguments_map_to_what_the_node_has():
    """Each argument ends in a node parameter, the node's namespace, its parameter files or the
    choice of executable; none is declared and then ignored, none is read undeclared."""
    path = REPO / "launch" / "registration.launch.py"
    tree = ast.parse(path.read_text())
    assert _declared_arguments(tree) == REGISTRATION_LAUNCH_ARGS
    assert _launch_configurations(tree) == REGISTRATION_LAUNCH_ARGS

    # ct_path, device, use_sim_time: keys of the `overrides` dict, each a parameter the node declares
    # (use_sim_time is rclpy's own).
    override_keys = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Subscript) \
                and getattr(n.targets[0].value, "id", "") == "overrides":
            override_keys.add(ast.literal_eval(n.targets[0].slice))
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "overrides" \
                and isinstance(n.value, ast.Dict):
            override_keys |= {ast.literal_eval(k) for k in n.value.keys}
    assert override_keys == {"ct_path", "device", "use_sim_time"}
    declared = {p.name for p in PARAMS} | {"use_sim_time"}
    assert override_keys <= declared

    # params_file and the overrides are the node's parameters; namespace is its namespace.
    for call in _registration_calls(_node_calls(path)):
        params = _kw(call, "parameters")
        assert [ast.unparse(e) for e in params.elts] == ["LaunchConfiguration('params_file')", "overrides"]
        assert ast.unparse(_kw(call, "namespace")) == "LaunchConfiguration('namespace')"

    # managed picks the lifecycle executable; autostart drives its configure/activate transitions;
    # igtl adds the bridge, in the same namespace.
    text = path.read_text()
    bridge = next(c for c in _node_calls(path) if ast.literal_eval(_kw(c, "executable")) == "igtl_bridge")
    assert ast.unparse(_kw(bridge, "namespace")) == "LaunchConfiguration('namespace')"
    assert 'LaunchConfiguration("igtl")' in text
    assert 'LaunchConfiguration("managed")' in text and "managed_registration_node" in text
    assert 'LaunchConfiguration("autostart")' in text
    assert "TRANSITION_CONFIGURE" in text and "TRANSITION_ACTIVATE" in text


def test_demo_launch_arguments_are_all_used():
    tree = ast.parse((REPO / "launch" / "demo.launch.py").read_text())
    assert _declared_arguments(tree) == _launch_configurations(tree)
