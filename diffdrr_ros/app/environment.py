"""What this process runs on: Python, torch and its device, ROS distro, rmw, DDS discovery range."""

from __future__ import annotations

import sys

import torch


def environment_report() -> dict[str, str]:
    """ROS distro, rmw, torch version and device, as this process sees them."""
    import importlib.metadata as md
    import os

    info = {"python": sys.version.split()[0], "torch": torch.__version__}
    info["device"] = "cuda (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "cpu"
    distro = os.environ.get("ROS_DISTRO")
    if not distro:
        for name in ("jazzy", "kilted", "humble"):
            try:
                md.version(f"ros-{name}-rclpy")
                distro = f"{name} (PyPI wheels)"
                break
            except md.PackageNotFoundError:
                continue
    info["ros_distro"] = distro or "none"
    try:
        from rclpy.utilities import get_rmw_implementation_identifier

        info["rmw"] = get_rmw_implementation_identifier()
    except Exception as exc:  # rclpy missing or no middleware: report, do not fail
        info["rmw"] = f"unavailable ({type(exc).__name__}: {exc})"
    info["discovery_range"] = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "unset")
    return info
