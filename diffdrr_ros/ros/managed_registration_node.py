"""Executable of the managed (lifecycle) registration node; see :class:`.registration_node.ManagedRegistrationNode`.

    ros2 run diffdrr_ros managed_registration_node --ros-args --params-file config/registration.yaml
    ros2 lifecycle set /diffdrr_registration configure
    ros2 lifecycle set /diffdrr_registration activate
"""

from __future__ import annotations

import sys

from .registration_node import ManagedRegistrationNode, StartupError
from .runtime import run_node


def main(args: list[str] | None = None) -> int:
    return run_node(ManagedRegistrationNode, "diffdrr_registration", (StartupError,), args)


if __name__ == "__main__":
    sys.exit(main())
