"""pip install of the ROS-free core (models, cache, policy, sim, cli) and the `bac` command.

In a ROS 2 workspace the package is built by colcon from CMakeLists.txt instead, which also
generates ``bac_ros.msg``; do not install both into one environment.
"""

from setuptools import find_packages, setup

setup(
    name="bac_ros",
    version="0.1.0",
    description="Block-wise Adaptive Caching for transformer Diffusion Policy (ROS-free core)",
    # bac_ros.nodes is included: its bag reader, converters and recorder need no ROS (the
    # rclpy node modules import only where ROS 2 is installed).
    packages=find_packages(include=["bac_ros", "bac_ros.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "torch",
        "diffusers",
        "safetensors",
        "pyyaml",
        "opencv-python-headless",
        "matplotlib",
        "tqdm",
        "rosbags",
    ],
    # ray: `bac eval` and `make bench` cells on Ray workers (--workers N, --ray ADDRESS).
    extras_require={"import": ["dill", "omegaconf"], "ray": ["ray>=2.60"]},
    entry_points={"console_scripts": ["bac = bac_ros.cli:main"]},
)
