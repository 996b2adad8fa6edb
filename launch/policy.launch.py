"""The policy node on a robot: camera + joint states in, action chunks (and trajectories) out.

    ros2 launch bac_ros policy.launch.py checkpoint:=/path/to/ckpt schedule:=/path/to/s.yaml \
        image_topic:=/camera/color/image_raw joint_states_topic:=/joint_states
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "bac_ros"
EXECUTABLE = "policy_node"
PARAMS_FILE = "config/policy.yaml"
DEFAULT_CHECKPOINT = "checkpoints/arm_lowdim"
# What `bac tune --speedup 5` chose for the bundled policy (DDPM-10: 9.4x faster, full compute's
# success; docs/FIDELITY.md). bac_s10_k5.yaml beside it is BAC as published.
DEFAULT_SCHEDULE = "checkpoints/arm_lowdim/tuned_x5.yaml"


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    arg = LaunchConfiguration
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", default_value=os.path.join(share, DEFAULT_CHECKPOINT),
                              description="policy checkpoint folder or Chi et al. .ckpt"),
        DeclareLaunchArgument("schedule", default_value=os.path.join(share, DEFAULT_SCHEDULE),
                              description="schedule YAML: BAC or `bac tune`'s, which brings its "
                                          "sampler ('' = full compute)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="the camera (with compressed_image: true in the "
                                          "params file, <image_topic>/compressed)"),
        DeclareLaunchArgument("joint_states_topic", default_value="joint_states"),
        DeclareLaunchArgument("state_topic", default_value="state",
                              description="low-dim policies: the state vector"),
        DeclareLaunchArgument("action_chunk_topic", default_value="action_chunk"),
        DeclareLaunchArgument("instruction", default_value="",
                              description="VLA heads only: the task instruction"),
        DeclareLaunchArgument("instruction_topic", default_value="instruction"),
        DeclareLaunchArgument("trajectory_topic", default_value="joint_trajectory",
                              description="e.g. /arm_controller/joint_trajectory"),
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name="bac_policy",
            output="screen",
            parameters=[os.path.join(share, PARAMS_FILE), {
                "checkpoint": arg("checkpoint"),
                "schedule": arg("schedule"),
                "device": arg("device"),
                "instruction": arg("instruction"),
                "use_sim_time": arg("use_sim_time"),
            }],
            remappings=[
                ("image", arg("image_topic")),
                # a rule for "image" leaves "image/compressed" as it is
                ("image/compressed", [arg("image_topic"), "/compressed"]),
                ("joint_states", arg("joint_states_topic")),
                ("state", arg("state_topic")),
                ("action_chunk", arg("action_chunk_topic")),
                ("joint_trajectory", arg("trajectory_topic")),
                ("instruction", arg("instruction_topic")),
            ],
        ),
    ])
