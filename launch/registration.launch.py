"""Start the diffdrr_ros registration node.

    ros2 launch diffdrr_ros registration.launch.py
    ros2 launch diffdrr_ros registration.launch.py ct_path:=/data/ct_series device:=cuda namespace:=carm1

Launch arguments: params_file (default: the package's config/registration.yaml), ct_path
(overrides the file's; empty keeps it), device, namespace, use_sim_time (for bag replay).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def _node(context, *args, **kwargs):
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() == "true"}
    ct_path = LaunchConfiguration("ct_path").perform(context)
    if ct_path:
        overrides["ct_path"] = ct_path
    device = LaunchConfiguration("device").perform(context)
    if device:
        overrides["device"] = device
    return [
        Node(
            package="diffdrr_ros",
            executable="registration_node",
            name="diffdrr_registration",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("diffdrr_ros"), "config", "registration.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
            DeclareLaunchArgument("ct_path", default_value="", description="CT path or phantom:<name>; empty: file's"),
            DeclareLaunchArgument("device", default_value="", description="auto, cpu, cuda; empty: file's"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace for the node's topics"),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
            OpaqueFunction(function=_node),
        ]
    )
