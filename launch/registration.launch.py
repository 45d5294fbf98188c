"""Start the diffdrr_ros registration node.

    ros2 launch diffdrr_ros registration.launch.py
    ros2 launch diffdrr_ros registration.launch.py ct_path:=/data/ct_series device:=cuda namespace:=carm1

    ros2 launch diffdrr_ros registration.launch.py managed:=true                 # lifecycle node, unconfigured
    ros2 launch diffdrr_ros registration.launch.py managed:=true autostart:=true  # ... configured and activated
    ros2 launch diffdrr_ros registration.launch.py igtl:=true                     # + the 3D Slicer bridge

Launch arguments: params_file (default: the package's config/registration.yaml), ct_path
(overrides the file's; empty keeps it), device, namespace, use_sim_time (for bag replay),
managed (start the lifecycle variant, managed_registration_node, for a lifecycle manager),
autostart (with managed: configure it, then activate it once inactive) and igtl (also start
igtl_bridge, the OpenIGTLink server for 3D Slicer, in the same namespace; its own parameters
at their defaults: loopback, port 18944).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription


def _node(context, *args, **kwargs):
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    overrides = {"use_sim_time": use_sim_time}
    ct_path = LaunchConfiguration("ct_path").perform(context)
    if ct_path:
        overrides["ct_path"] = ct_path
    device = LaunchConfiguration("device").perform(context)
    if device:
        overrides["device"] = device
    common = dict(
        package="diffdrr_ros",
        name="diffdrr_registration",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        output="screen",
        emulate_tty=True,
    )
    bridge = []
    if LaunchConfiguration("igtl").perform(context).lower() == "true":
        bridge = [Node(package="diffdrr_ros", executable="igtl_bridge", name="igtl_bridge",
                       namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
                       parameters=[{"use_sim_time": use_sim_time}])]
    if LaunchConfiguration("managed").perform(context).lower() != "true":
        return [Node(executable="registration_node", **common), *bridge]
    node = LifecycleNode(executable="managed_registration_node", **common)
    if LaunchConfiguration("autostart").perform(context).lower() != "true":
        return [node, *bridge]

    def change(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    activate_when_inactive = RegisterEventHandler(
        OnStateTransition(target_lifecycle_node=node, goal_state="inactive",
                          entities=[change(Transition.TRANSITION_ACTIVATE)])
    )
    return [node, activate_when_inactive, change(Transition.TRANSITION_CONFIGURE), *bridge]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("diffdrr_ros"), "config", "registration.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
            DeclareLaunchArgument("ct_path", default_value="", description="CT path or phantom:<name>; empty: file's"),
            DeclareLaunchArgument("device", default_value="", description="auto, cpu, cuda; empty: file's"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace for the node's topics"),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
            DeclareLaunchArgument("managed", default_value="false", description="start the lifecycle (managed) node"),
            DeclareLaunchArgument("autostart", default_value="false",
                                  description="with managed: configure, then activate"),
            DeclareLaunchArgument("igtl", default_value="false",
                                  description="also start igtl_bridge (OpenIGTLink to 3D Slicer, 127.0.0.1:18944)"),
            OpaqueFunction(function=_node),
        ]
    )
