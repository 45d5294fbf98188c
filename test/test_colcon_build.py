"""`colcon build` of this package the way a ROS 2 workspace builds it.

colcon runs setup.py with its own interpreter (on Debian, /usr/bin/python3), not this venv's,
so this also checks that setup.py needs nothing beyond setuptools. In CI `make test` installs
colcon (scripts/setup.sh --with-colcon), and there a missing colcon fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import read_setup_kwargs

REPO = Path(__file__).resolve().parents[1]
PKG = "diffdrr_ros"
COPY = ["package.xml", "setup.py", "setup.cfg", "resource", PKG, "launch", "config"]
TIMEOUT_S = 300

COLCON = shutil.which("colcon")
if COLCON is None and os.environ.get("CI"):
    pytest.fail("colcon is not on PATH in CI: `make test` runs scripts/setup.sh --with-colcon", pytrace=False)
pytestmark = pytest.mark.skipif(
    COLCON is None,
    reason="colcon not on PATH (bash scripts/setup.sh --with-colcon installs it; make test does)",
)


def _source_files(subdir: str) -> list[Path]:
    """Files in launch/ or config/ that should be installed (caches, dotfiles, notes aside)."""
    d = REPO / subdir
    if not d.is_dir():
        return []
    return sorted(
        p.relative_to(d)
        for p in d.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not p.name.startswith(".")
        and p.suffix not in {".pyc", ".md"}
    )


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src" / PKG
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in COPY:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, src / name)

    env = dict(os.environ)  # conftest has set the ROS variables (colcon starts no ROS though)
    # Nothing of the venv may leak into colcon's own Python.
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    cmd = [
        COLCON,
        "--log-base",
        str(ws / "log"),
        "build",
        "--base-paths",
        str(ws / "src"),
        "--build-base",
        str(ws / "build"),
        "--install-base",
        str(ws / "install"),
        "--event-handlers",
        "console_cohesion+",
    ]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, (
        f"colcon build failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return ws / "install" / PKG


def test_colcon_installs_package_xml_and_ament_index_marker(colcon_install):
    assert (colcon_install / "share" / PKG / "package.xml").is_file()
    marker = colcon_install / "share" / "ament_index" / "resource_index" / "packages" / PKG
    assert marker.is_file()


def _console_script_names() -> list[str]:
    specs = read_setup_kwargs().get("entry_points", {}).get("console_scripts", [])
    return [spec.split("=", 1)[0].strip() for spec in specs]


def test_colcon_installs_console_scripts_where_ros2_run_looks(colcon_install):
    names = _console_script_names()
    assert "diffdrr-ros" in names
    for name in names:
        script = colcon_install / "lib" / PKG / name
        assert script.is_file(), f"missing {script}"
        assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("subdir", ["launch", "config"])
def test_colcon_installs_launch_and_config_files(colcon_install, subdir):
    for rel in _source_files(subdir):
        assert (colcon_install / "share" / PKG / subdir / rel).is_file(), f"{subdir}/{rel} not installed"
