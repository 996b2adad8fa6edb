"""Record a task (the bundled arm or a Meta-World task), driven by its scripted expert, into a
rosbag2 (no DDS needed): the topics sim_node publishes for it, at the task's control rate, so
the profiler reads the observations the policy node would have received."""

from __future__ import annotations

from pathlib import Path

from bac_ros.io.bag import BagWriter
from bac_ros.sim import metaworld
from bac_ros.sim.arm import JOINT_NAMES, ArmTaskConfig
from bac_ros.sim.expert import Expert
from bac_ros.sim.tasks import Task, image_frame_id, make_env


def _expert(env):
    """``(reset(seed), act(obs))`` of the task's scripted expert bound to ``env``."""
    if isinstance(env, metaworld.MetaWorldEnv):  # a function of the state alone
        expert = metaworld.expert_policy(env.config)
        return (lambda seed: None), (lambda obs: metaworld.expert_action(expert, env))
    expert = Expert(env)
    return expert.reset, expert.act


def _joints(env, obs) -> tuple:
    """What sim_node puts in joint_states: the Sawyer's own joints, or the arm's."""
    if isinstance(env, metaworld.MetaWorldEnv):
        return metaworld.JOINT_NAMES, env.joint_positions()
    return JOINT_NAMES, obs["joints"]


def record_expert_bag(path: str | Path, episodes: int = 20, seed: int = 0,
                      storage: str = "sqlite3", images: bool = True,
                      start_time: float = 1_000.0, task: Task | None = None) -> Path:
    """Episodes of ``task`` (default the arm) back to back (1 s apart) on topics ``image``,
    ``joint_states``, ``state`` and, for Meta-World, ``proprio`` and ``goal`` (the topics
    sim_node publishes)."""
    task = task or ArmTaskConfig()
    env = make_env(task, images)
    reset, act = _expert(env)
    writer = BagWriter(path, storage)
    t = start_time
    try:
        for i in range(episodes):
            obs = env.reset(seed + i)
            reset(seed + i)
            done = False
            while True:
                writer.joint_state("joint_states", *_joints(env, obs), t)
                writer.vector("state", env.state(), t)
                for key in ("proprio", "goal"):  # Meta-World's camera policy reads both
                    if key in obs:
                        writer.vector(key, obs[key], t)
                if images:  # last, as sim_node publishes: the frame joins the values above
                    writer.image("image", obs["image"], t, image_frame_id(task))
                if done:
                    break
                obs, done, _ = env.step(act(obs))
                t += env.config.dt
            t += 1.0
    finally:
        writer.close()
        if isinstance(env, metaworld.MetaWorldEnv):  # frees MuJoCo's renderer
            env.close()
    return Path(path)
