"""The bundled task as a ROS robot, driven by the policy node (full compute or BAC).

    ros2 launch bac_ros sim_demo.launch.py schedule:='' mode:=realtime episodes:=10
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

PACKAGE = "bac_ros"
POLICY_EXECUTABLE = "policy_node"
SIM_EXECUTABLE = "sim_node"
POLICY_PARAMS_FILE = "config/policy.yaml"
SIM_PARAMS_FILE = "config/sim.yaml"
DEFAULT_CHECKPOINT = "checkpoints/arm_lowdim"
DEFAULT_SCHEDULE = "checkpoints/arm_lowdim/bac_s10_k5.yaml"


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    arg = LaunchConfiguration
    lockstep = PythonExpression(["'", arg("mode"), "' == 'lockstep'"])
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", default_value=os.path.join(share, DEFAULT_CHECKPOINT)),
        DeclareLaunchArgument("schedule", default_value=os.path.join(share, DEFAULT_SCHEDULE)),
        DeclareLaunchArgument("mode", default_value="realtime", description="realtime | lockstep"),
        DeclareLaunchArgument("episodes", default_value="10"),
        DeclareLaunchArgument("device", default_value="auto"),
        DeclareLaunchArgument("seam", default_value="inpaint",
                              description="realtime: none | inpaint | blend (lockstep: none, "
                                          "since the sim, not time, picks the chunks it runs)"),
        DeclareLaunchArgument("warm_start", default_value="-1.0",
                              description="realtime: the policy node's warm_start (lockstep: "
                                          "0, for the same reason)"),
        Node(package=PACKAGE, executable=SIM_EXECUTABLE, name="bac_sim", output="screen",
             parameters=[os.path.join(share, SIM_PARAMS_FILE),
                         {"mode": arg("mode"), "episodes": arg("episodes")}]),
        Node(package=PACKAGE, executable=POLICY_EXECUTABLE, name="bac_policy", output="screen",
             parameters=[os.path.join(share, POLICY_PARAMS_FILE), {
                 "checkpoint": arg("checkpoint"),
                 "schedule": arg("schedule"),
                 "device": arg("device"),
                 "use_sim_time": lockstep,
                 "replan_steps": PythonExpression(["1 if '", arg("mode"),
                                                   "' == 'lockstep' else 0"]),
                 "seam": PythonExpression(["'none' if '", arg("mode"), "' == 'lockstep' else '",
                                           arg("seam"), "'"]),
                 "warm_start": PythonExpression(["0.0 if '", arg("mode"), "' == 'lockstep' else ",
                                                 arg("warm_start")]),
             }]),
    ])
