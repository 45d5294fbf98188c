"""The ament_python packaging is consistent: package.xml, setup.py, setup.cfg, the installed
console scripts and data files, and the ROS packages our code imports."""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "diffdrr_ros"

# ROS packages this project's setup provides in a venv (requirements/ros-jazzy.txt and the
# vendored third_party/tf2_msgs) or takes from a sourced ROS install.
PROVIDED_ROS_PACKAGES = {
    "rclpy",
    "sensor_msgs",
    "geometry_msgs",
    "std_msgs",
    "tf2_msgs",
    "std_srvs",
    "diagnostic_msgs",
    "builtin_interfaces",
    "rcl_interfaces",
    "lifecycle_msgs",
    "rosgraph_msgs",
}
# Python modules -> the rosdep key that package.xml should carry for them.
ROSDEP_KEYS = {
    "torch": "python3-torch",
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "pydicom": "python3-pydicom",
    "nibabel": "python3-nibabel",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "scipy": "python3-scipy",
    "yaml": "python3-yaml",
}




@pytest.fixture(scope="module")
def package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _texts(root: ET.Element, tag: str) -> list[str]:
    return [(e.text or "").strip() for e in root.findall(tag)]


def test_package_xml_is_format_3_and_matches_setup_py(package_xml, setup_kwargs):
    assert package_xml.tag == "package"
    assert package_xml.get("format") == "3"
    assert _texts(package_xml, "name") == [setup_kwargs["name"]]
    assert _texts(package_xml, "version") == [setup_kwargs["version"]]
    assert package_xml.findtext("export/build_type") == "ament_python"
    assert _texts(package_xml, "description")[0]
    assert _texts(package_xml, "license") == [setup_kwargs["license"]]


def test_package_xml_maintainer_has_a_valid_email(package_xml):
    # catkin_pkg (colcon, bloom, rosdep) rejects an invalid maintainer e-mail.
    maintainers = package_xml.findall("maintainer")
    assert maintainers
    for m in maintainers:
        assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", m.get("email", "")), m.get("email")
        assert (m.text or "").strip()


def _exec_depends(root: ET.Element) -> set[str]:
    return set(_texts(root, "exec_depend")) | set(_texts(root, "depend"))


def _imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError:  # a file mid-edit; the import test below reports real breakage
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _is_ros_package(name: str) -> bool:
    """Registered in an ament index we can see (the venv prefix or AMENT_PREFIX_PATH)."""
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    marker = Path("share", "ament_index", "resource_index", "packages", name)
    return name in PROVIDED_ROS_PACKAGES or any((Path(p) / marker).exists() for p in prefixes)


def test_provided_ros_exec_depends_are_importable(package_xml):
    """Every exec_depend that this project's setup is meant to provide really imports."""
    wanted = sorted(_exec_depends(package_xml) & PROVIDED_ROS_PACKAGES)
    assert "rclpy" in wanted
    missing = [name for name in wanted if importlib.util.find_spec(name) is None]
    assert not missing, f"exec_depend(s) not importable with this setup: {missing}"


def test_every_imported_ros_package_is_an_exec_depend(package_xml):
    imported = _imported_top_level_modules()
    ros_imports = {name for name in imported if _is_ros_package(name)}
    missing = sorted(ros_imports - _exec_depends(package_xml))
    assert not missing, f"diffdrr_ros imports ROS packages missing from package.xml: {missing}"


def test_every_imported_third_party_module_has_its_rosdep_key(package_xml):
    imported = _imported_top_level_modules()
    deps = _exec_depends(package_xml)
    missing = sorted(f"{mod} -> {key}" for mod, key in ROSDEP_KEYS.items() if mod in imported and key not in deps)
    assert not missing, f"package.xml lacks rosdep keys for imported modules: {missing}"


def _console_scripts(setup_kwargs) -> list[tuple[str, str, str]]:
    scripts = []
    for spec in setup_kwargs.get("entry_points", {}).get("console_scripts", []):
        name, target = (s.strip() for s in spec.split("=", 1))
        module, _, func = target.partition(":")
        scripts.append((name, module.strip(), func.strip()))
    return scripts


def test_console_scripts_resolve(setup_kwargs):
    scripts = _console_scripts(setup_kwargs)
    assert scripts, "setup.py declares no console_scripts"
    for name, module, func in scripts:
        mod = importlib.import_module(module)
        obj = mod
        for part in func.split("."):
            obj = getattr(obj, part)
        assert callable(obj), f"{name} -> {module}:{func} is not callable"


def test_installed_distribution_matches_setup_py(setup_kwargs):
    # Only what is installed in this interpreter's site-packages: a setuptools-written
    # diffdrr_ros.egg-info in the repo root (on sys.path when run from there) may be stale.
    site_dirs = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    dists = [
        d
        for d in importlib.metadata.distributions(path=site_dirs)
        if (d.metadata["Name"] or "").replace("-", "_") == setup_kwargs["name"]
    ]
    if not dists:
        pytest.skip("diffdrr_ros is not installed in this interpreter (scripts/setup.sh does it)")
    dist = dists[0]
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    declared = {name: f"{module}:{func}" for name, module, func in _console_scripts(setup_kwargs)}
    assert installed == declared, "re-run scripts/setup.sh after changing entry_points"
    scripts_dir = Path(sysconfig.get_path("scripts"))
    for name in declared:
        assert (scripts_dir / name).exists(), f"{name} not in {scripts_dir}"


def test_data_files_exist(setup_kwargs):
    data_files = dict(setup_kwargs["data_files"])
    pkg = setup_kwargs["name"]
    marker_dir = "share/ament_index/resource_index/packages"
    assert f"resource/{pkg}" in data_files.get(marker_dir, []), "ament index marker not installed"
    assert (REPO / "resource" / pkg).is_file()
    assert "package.xml" in data_files.get(f"share/{pkg}", [])
    for dest, files in data_files.items():
        for f in files:
            assert (REPO / f).is_file(), f"data_files entry {f} (-> {dest}) does not exist"


@pytest.mark.parametrize("subdir", ["launch", "config"])
def test_launch_and_config_files_are_all_installed(setup_kwargs, subdir):
    installed = {f for files in dict(setup_kwargs["data_files"]).values() for f in files}
    present = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / subdir).glob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix not in {".pyc", ".md"}
    )
    not_installed = [f for f in present if f not in installed]
    assert not not_installed, f"files in {subdir}/ that setup.py's data_files globs miss: {not_installed}"


def test_setup_cfg_puts_scripts_where_ros2_run_looks(setup_kwargs):
    cfg = configparser.ConfigParser()
    assert cfg.read(REPO / "setup.cfg")
    pkg = setup_kwargs["name"]
    assert cfg.get("develop", "script_dir") == f"$base/lib/{pkg}"
    assert cfg.get("install", "install_scripts") == f"$base/lib/{pkg}"
