"""Shared test setup: DDS traffic stays on this machine in a domain private to this run."""

import os

# Set before rclpy is imported anywhere: a private domain per test run, discovery on loopback.
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")  # Humble and older
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
