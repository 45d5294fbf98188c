"""Session-wide test setup: DDS stays on loopback, and each pytest run gets its own ROS domain.

The environment is set here at import time, before any test module imports rclpy: rclpy and
the DDS middleware read it when a context starts, and subprocesses started by the tests
inherit it (use the ``ros_env`` fixture for their ``env``).
"""

from __future__ import annotations

import os
import sys

import pytest

# Fast DDS ports limit domain IDs to 0..232; 1..100 leaves room and avoids the default 0.
_MAX_DOMAIN_ID = 232


def _session_domain_id() -> int:
    """`make test` passes its per-run domain; a bare `pytest` derives one from its PID.

    A ROS_DOMAIN_ID already in the shell is deliberately not reused: it is usually the domain
    of a live system, and these tests publish on /tf.
    """
    explicit = os.environ.get("DIFFDRR_ROS_TEST_DOMAIN_ID", "").strip()
    if explicit:
        domain = int(explicit)
        if not 0 <= domain <= _MAX_DOMAIN_ID:
            raise ValueError(f"DIFFDRR_ROS_TEST_DOMAIN_ID={explicit} is outside 0..{_MAX_DOMAIN_ID}")
        return domain
    return os.getpid() % 100 + 1


os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Deprecated on Jazzy (it warns beside ROS_AUTOMATIC_DISCOVERY_RANGE), and static peers may
# name other hosts: neither belongs in a test run.
os.environ.pop("ROS_LOCALHOST_ONLY", None)
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ["ROS_DOMAIN_ID"] = str(_session_domain_id())
os.environ["DIFFDRR_ROS_TEST_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]


def ros_subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess that starts ROS: this session's domain, loopback only."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def ros_env() -> dict[str, str]:
    """``env=`` for subprocesses that start ROS (a fresh copy per test)."""
    return ros_subprocess_env()


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
        f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
        f"python={sys.executable}"
    )


def read_setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setuptools.setup(), globs evaluated in the repo."""
    import runpy
    from pathlib import Path
    from unittest import mock

    import setuptools

    repo = Path(__file__).resolve().parents[1]
    captured: dict = {}
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        with mock.patch.object(setuptools, "setup", lambda **kw: captured.update(kw)):
            runpy.run_path(str(repo / "setup.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
    assert captured, "setup.py did not call setuptools.setup()"
    return captured


@pytest.fixture(scope="session")
def setup_kwargs() -> dict:
    """:func:`read_setup_kwargs`, once per session."""
    return read_setup_kwargs()
