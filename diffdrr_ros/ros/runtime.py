"""Process entry for the package's nodes: clean start-up errors, clean Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def run_node(make_node: Callable[[], Node], name: str, fatal: tuple[type[BaseException], ...],
             args: list[str] | None = None) -> int:
    """Init rclpy, build the node, spin until Ctrl-C / shutdown; exit code 0.

    An exception of a ``fatal`` type while building the node is a one-line ``[FATAL]`` on
    stderr and exit code 1 (no traceback). A node with a ``shutdown()`` method gets it called
    before it is destroyed (to stop worker threads).
    """
    rclpy.init(args=args)
    try:
        node = make_node()
    except fatal as exc:
        print(f"[FATAL] [{name}]: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop = getattr(node, "shutdown", None)
        if callable(stop):
            stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
