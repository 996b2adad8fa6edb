"""Record the bundled task, driven by its scripted expert, into a rosbag2 (no DDS needed):
the observation topics the policy node subscribes to, at the task's control rate."""

from __future__ import annotations

from pathlib import Path

from bac_ros.io.bag import BagWriter
from bac_ros.sim.arm import ArmEnv
from bac_ros.sim.expert import Expert

JOINT_NAMES = ("joint1", "joint2", "joint3")


def record_expert_bag(path: str | Path, episodes: int = 20, seed: int = 0,
                      storage: str = "sqlite3", images: bool = True,
                      start_time: float = 1_000.0) -> Path:
    """Episodes back to back (1 s apart) on topics ``image``, ``joint_states`` and ``state``."""
    env = ArmEnv(render_images=images)
    expert = Expert(env)
    writer = BagWriter(path, storage)
    t = start_time
    try:
        for i in range(episodes):
            obs = env.reset(seed + i)
            expert.reset(seed + i)
            done = False
            while True:
                if images:
                    writer.image("image", obs["image"], t)
                writer.joint_state("joint_states", JOINT_NAMES, obs["joints"], t)
                writer.vector("state", env.state(), t)
                if done:
                    break
                obs, done, _ = env.step(expert.act(obs))
                t += env.config.dt
            t += 1.0
    finally:
        writer.close()
    return Path(path)
