"""Simulated C-arm + registration node on the built-in phantom (the demo on a real ROS 2 install).

    ros2 launch diffdrr_ros demo.launch.py
    ros2 launch diffdrr_ros demo.launch.py phantom:=head_large frame_rate_hz:=1.0 device:=cuda

Watch with rviz2 (fixed frame carm_isocenter: TF frames ct and ct_ground_truth) and
rqt_image_view on /diffdrr_registration/overlay.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    params = os.path.join(get_package_share_directory("diffdrr_ros"), "config", "registration.yaml")
    ct = PythonExpression(["'phantom:' + '", LaunchConfiguration("phantom"), "'"])
    return LaunchDescription(
        [
            DeclareLaunchArgument("phantom", default_value="head", description="built-in phantom name"),
            DeclareLaunchArgument("frame_rate_hz", default_value="2.0", description="simulated frame rate"),
            DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda"),
            Node(
                package="diffdrr_ros",
                executable="carm_simulator",
                name="carm_simulator",
                parameters=[{"ct_path": ct, "frame_rate_hz": LaunchConfiguration("frame_rate_hz")}],
                output="screen",
            ),
            Node(
                package="diffdrr_ros",
                executable="registration_node",
                name="diffdrr_registration",
                parameters=[params, {"ct_path": ct, "device": LaunchConfiguration("device"), "image.i0": 3000.0,
                             "image.detector_blur_px": 0.6}],
                output="screen",
            ),
        ]
    )
