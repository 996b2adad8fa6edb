"""Compile a BAC schedule while a recorded bag plays back.

    ros2 launch bac_ros profile_bag.launch.py bag:=/path/to/bag checkpoint:=/path/to/ckpt \
        output:=/path/to/schedule.yaml
(Offline, without DDS: `bac profile --bag BAG --checkpoint CKPT --out SCHEDULE`.)
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "bac_ros"
EXECUTABLE = "profiler_node"
PARAMS_FILE = "config/profiler.yaml"
DEFAULT_CHECKPOINT = "checkpoints/arm_lowdim"


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    arg = LaunchConfiguration
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 folder to play"),
        DeclareLaunchArgument("checkpoint", default_value=os.path.join(share, DEFAULT_CHECKPOINT)),
        DeclareLaunchArgument("output", default_value="schedule.yaml"),
        DeclareLaunchArgument("observations", default_value="64"),
        ExecuteProcess(cmd=["ros2", "bag", "play", arg("bag"), "--clock"], output="screen"),
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name="bac_profiler",
            output="screen",
            parameters=[os.path.join(share, PARAMS_FILE), {
                "checkpoint": arg("checkpoint"),
                "output": arg("output"),
                "observations": arg("observations"),
                "use_sim_time": True,
            }],
        ),
    ])
