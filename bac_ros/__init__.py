"""bac_ros: Block-wise Adaptive Caching for transformer diffusion policies, with ROS 2 nodes.

Layers, imported bottom to top only: ``models`` (networks) -> ``cache`` (BAC engine, profiling,
schedules) -> ``policy`` (checkpoints, Policy runner) -> ``sim`` (bundled task) -> ``nodes``
(rclpy) and ``cli``. Everything below ``nodes`` runs without ROS.
"""

import pkgutil

# rosidl generates ``bac_ros.msg`` into the install space, beside a copy of these sources. When
# the source tree is imported first (e.g. from the repository root), extending the package path
# over every ``bac_ros`` directory on sys.path keeps the generated messages importable.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
