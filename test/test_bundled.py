"""The shipped checkpoints and schedules: they load, their schedules fit them, and they act."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bac_ros.cache.schedule import Schedule
from bac_ros.policy.policy import Policy
from bac_ros.sim.arm import ArmEnv, ArmTaskConfig

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted(p.parent for p in (ROOT / "checkpoints").glob("*/config.yaml"))
# The arm's checkpoints; the Meta-World one acts in end-effector deltas (test_metaworld.py).
ARM = [p for p in BUNDLED if p.name.startswith("arm_")]


def _observation(policy: Policy, seed: int) -> dict[str, np.ndarray]:
    """Two identical frames of the task's first observation, in the policy's keys."""
    env = ArmEnv()
    obs = env.reset(seed)
    frame = {"joints": obs["joints"], "image": obs["image"], "state": env.state()}
    return {k: np.stack([frame[k]] * policy.n_obs_steps) for k in policy.obs_spec}


def test_both_task_checkpoints_are_bundled():
    assert {p.name for p in BUNDLED} >= {"arm_lowdim", "arm_image"}


@pytest.mark.parametrize("folder", ARM, ids=lambda p: p.name)
def test_schedules_load_and_chunks_stay_in_joint_limits(folder):
    policy = Policy.from_pretrained(folder, device="cpu")
    schedules = sorted(folder.glob("*.yaml"))
    schedules = [s for s in schedules if s.name != "config.yaml"]
    assert any(s.name == "bac_s10_k5.yaml" for s in schedules)
    task = ArmTaskConfig()
    obs = _observation(policy, seed=123)
    for spec in schedules:
        policy.set_schedule(spec)
        chunk = policy.predict(obs, seed=0)
        assert chunk.shape == (policy.n_action_steps, 3) and np.isfinite(chunk).all()
        # Trained on expert actions inside the joint range; allow the normaliser's 1% headroom.
        margin = 0.01 * (np.asarray(task.joint_high) - np.asarray(task.joint_low))
        assert np.all(chunk >= np.asarray(task.joint_low) - margin), spec.name
        assert np.all(chunk <= np.asarray(task.joint_high) + margin), spec.name


def test_image_policy_acts_as_the_low_dim_policy_it_was_distilled_from():
    """Same scene, same noise: the camera policy's chunk is the low-dim policy's, up to the
    encoder's millimetre-level error in finding the scene."""
    low = Policy.from_pretrained(ROOT / "checkpoints" / "arm_lowdim", device="cpu")
    image = Policy.from_pretrained(ROOT / "checkpoints" / "arm_image", device="cpu")
    for policy in (low, image):
        policy.set_sampler("DDIMScheduler", 10)
    for seed in (100_000, 100_001):
        a = low.predict(_observation(low, seed), seed=seed)
        b = image.predict(_observation(image, seed), seed=seed)
        # Measured: at most 0.002 rad apart; another scene's chunk differs by 0.025-0.12 rad.
        assert np.abs(a - b).max() < 0.01


def test_shipped_schedules_name_their_data_without_a_machine_path():
    for spec in sorted((ROOT / "checkpoints").glob("*/*.yaml")):
        if spec.name == "config.yaml":
            continue
        source = str(Schedule.load(spec).provenance["source"])
        assert "/" not in source, f"{spec}: provenance names a path ({source})"
        if source.endswith(".npz"):  # a file: its hash, or why there is none
            assert Schedule.load(spec).provenance["sha256"], spec
