"""Run one launch file with launch's own LaunchService, as ``ros2 launch FILE name:=value ...`` does.

    python test/launch_runner.py launch/registration.launch.py namespace:=lt device:=cpu

SIGINT to this process shuts the launched processes down: the service is non-interactive
(``ros2 launch --noninteractive``), so it passes the SIGINT on to them itself. An interactive
one assumes Ctrl-C in a terminal already reached the whole process group, sends nothing on
SIGINT and escalates to SIGTERM after 5 s. Needs ``launch`` and ``launch_ros`` (a sourced
ROS 2 install).
"""

from __future__ import annotations

import sys

from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

from launch import LaunchDescription, LaunchService


def main(argv: list[str]) -> int:
    path, *pairs = argv
    arguments = [tuple(p.split(":=", 1)) for p in pairs]
    service = LaunchService(argv=pairs, noninteractive=True)
    service.include_launch_description(LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=arguments),
    ]))
    return service.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
