"""Shared test setup: DDS traffic stays on this machine in a domain private to this run, and the
fixtures several test modules use. Shared plain values and helpers are in helpers.py (no ROS) and
ros_helpers.py (the ROS harness); rclpy is imported inside the ROS fixtures only, so tests that do
not use ROS run without it.
"""

import os

import pytest
import torch
from helpers import SMALL

from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native

# Set before rclpy is imported anywhere (nothing above imports it: test_layout keeps ROS inside
# bac_ros.nodes): a private domain per test run, discovery on loopback.
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")  # Humble and older
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


@pytest.fixture
def ros():
    """rclpy initialised for one test, shut down after it."""
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def running(ros):
    """``running(params, namespace=..., configure=...)`` starts a :class:`ros_helpers.Running`
    policy node with its checking client; every one started is closed after the test."""
    from ros_helpers import Running

    started = []

    def start(params, **kw):
        started.append(Running(params, **kw))
        return started[-1]

    yield start
    for r in started:
        r.close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small image policy (camera 3x32x32 + 3 joints -> 3 actions), random weights."""
    torch.manual_seed(0)
    norm = LinearNormalizer()
    norm.fit_image_range("image")
    norm.fit_limits("joints", torch.rand(64, 3) * 3 - 1)
    norm.fit_limits("action", torch.rand(64, 3) * 3 - 1)
    obs = {"image": {"shape": [3, 32, 32], "type": "rgb"},
           "joints": {"shape": [3], "type": "low_dim"}}
    c = new_checkpoint(obs, 3, norm, horizon=8, n_action_steps=4, model=SMALL,
                       obs_encoder={"type": "small_cnn"}, num_inference_steps=10)
    return save_native(c, tmp_path_factory.mktemp("ckpt") / "image")
