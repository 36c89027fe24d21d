"""Launch the rvg_ros reconstruct node (and optionally the simulated camera).

ros2 launch rvg_ros reconstruct.launch.py
ros2 launch rvg_ros reconstruct.launch.py sim:=true
ros2 launch rvg_ros reconstruct.launch.py params_file:=/path/to/my.yaml namespace:=arm
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "rvg_ros"


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration("params_file")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(share, "config", "reconstruct.yaml"),
                description="Parameters of the reconstruct node.",
            ),
            DeclareLaunchArgument(
                "sim", default_value="false", description="Also start the simulated camera."
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="Namespace of both nodes."
            ),
            Node(
                package=PACKAGE,
                executable="reconstruct_node",
                name="rvg_reconstruct",
                namespace=namespace,
                parameters=[params_file],
                output="screen",
            ),
            Node(
                package=PACKAGE,
                executable="sim_camera_node",
                name="rvg_sim_camera",
                namespace=namespace,
                output="screen",
                condition=IfCondition(LaunchConfiguration("sim")),
            ),
        ]
    )
