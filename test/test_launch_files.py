"""Launch and config files name only executables, parameters and files that exist.

`launch`/`launch_ros` are not installable here (no PyPI wheels), so the launch files are
checked statically: every `Node(package=..., executable=...)` must be a console script of
this package, and every parameter they set must be declared by that executable.
"""

import ast
import re
from pathlib import Path

import pytest

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
    sim_params = set(re.findall(r'"([\w.]+)": [^,]+,', (REPO / "diffdrr_ros/ros/carm_simulator.py").read_text()))
    for call in calls:
        assert ast.literal_eval(_kw(call, "package")) == "diffdrr_ros"
        exe = ast.literal_eval(_kw(call, "executable"))
        assert exe in scripts, f"{path.name}: executable {exe!r} is not a console script"
        params = _kw(call, "parameters")
        for d in [e for e in getattr(params, "elts", []) if isinstance(e, ast.Dict)]:
            for key in d.keys:
                name = ast.literal_eval(key)
                registration = exe in ("registration_node", "managed_registration_node")
                known = (declared if registration else sim_params) | {"use_sim_time"}
                assert name in known, f"{path.name}: {exe} has no parameter {name!r}"
    for ref in re.findall(r'"(config)", "([\w.]+)"', path.read_text()):
        assert (REPO / ref[0] / ref[1]).is_file()


def test_registration_launch_offers_the_plain_and_the_managed_node():
    calls = _node_calls(REPO / "launch" / "registration.launch.py")
    assert {ast.literal_eval(_kw(c, "executable")) for c in calls} == {"registration_node", "managed_registration_node"}
    assert all(ast.literal_eval(_kw(c, "name")) == "diffdrr_registration" for c in calls)


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
