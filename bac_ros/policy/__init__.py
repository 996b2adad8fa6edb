"""policy: checkpoint I/O, the ``load_policy`` factory, the Policy runners (DP-T, VLA), offline
fidelity and ``bac tune``.

Importing the built-in policy classes here registers their checkpoint kinds with the factory
before any module of the package is used (they import the factory, never the other way).
"""

import bac_ros.policy.vla  # noqa: F401  (registers Policy: dpt_lowdim/dpt_image, VLAPolicy: rdt)
