"""Process entry for the package's nodes: start-up errors (one line, exit 1), the CT, clean Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from ..core.volume import Volume, VolumeLoadError, open_ct


class StartupError(RuntimeError):
    """A node cannot start (unreadable CT, bad geometry, unusable device)."""


def load_ct(path: str, spacing_mm: list[float] | None = None, downsample: int = 1, *, series_uid: str = "",
            allow_gantry_tilt: bool = False) -> Volume:
    """The node's ``ct_path`` (``phantom:<name>`` or a file/directory); errors become :class:`StartupError`.

    ``spacing_mm`` is the voxel size of a ``.npy`` file (other formats carry their own);
    ``series_uid`` and ``allow_gantry_tilt`` as in :func:`~diffdrr_ros.core.volume.open_ct`.
    """
    try:
        spacing = tuple(spacing_mm) if spacing_mm is not None and path.endswith(".npy") else None
        return open_ct(path, spacing_mm=spacing, downsample=downsample, series_uid=series_uid or None,
                       allow_gantry_tilt=allow_gantry_tilt)
    except (VolumeLoadError, ValueError, OSError) as exc:
        raise StartupError(f"cannot load CT {path!r}: {exc}") from exc


def run_node(make_node: Callable[[], Node], name: str, fatal: tuple[type[BaseException], ...],
             args: list[str] | None = None) -> int:
    """Init rclpy, build the node, spin until Ctrl-C / shutdown; exit code 0.

    An exception of a ``fatal`` type while building the node, or a parameter rclpy refuses (out
    of its range, wrong type), is a one-line ``[FATAL]`` on stderr and exit code 1 (no
    traceback). A node with a ``shutdown()`` method gets it called before it is destroyed (to
    stop worker threads).
    """
    from rclpy.exceptions import InvalidParameterValueException, ParameterException

    rclpy.init(args=args)
    try:
        node = make_node()
    except (*fatal, InvalidParameterValueException, ParameterException) as exc:  # e.g. detector.height:=-5
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
