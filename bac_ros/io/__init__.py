"""ROS-free I/O of ROS data: messages <-> numpy, observation histories, rosbag2 files (rosbags).

Nothing here imports rclpy: the command line and offline profiling read bags and build the same
observations the policy node builds, without a ROS installation.
"""
