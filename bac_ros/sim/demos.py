"""Expert demonstrations of the bundled arm task, in a replay-buffer layout.

The layout follows Chi et al.'s ``ReplayBuffer``: every per-step field is concatenated over
episodes along axis 0 and ``episode_ends[i]`` is the exclusive end index of episode ``i``.
Fields: ``joints (N, 3) float32``, ``state (N, 7) float32`` (:data:`~bac_ros.sim.arm.LOWDIM_KEYS`),
``action (N, 3) float32`` (the joint targets sent after observing that step), optionally
``image (N, 96, 96, 3) uint8``; per episode: ``episode_ends``, ``episode_seeds`` (the
``reset`` seed) and ``episode_sides`` (+1 left, -1 right). Numpy only, so data can be made and
inspected without torch. :func:`save_npz`/:func:`load_npz` store any task's demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bac_ros.sim.arm import ArmEnv, ArmTaskConfig
from bac_ros.sim.expert import Expert, ExpertConfig

#: Per-step fields, in recording order (``image`` only with rendering on).
STEP_KEYS = ("joints", "state", "action", "image")


@dataclass
class ExpertEpisode:
    """One recorded expert rollout: per-step arrays plus its outcome."""

    seed: int
    side: int
    success: bool
    steps: dict[str, np.ndarray]
    min_clearance: float  # closest any link came to the obstacle (m)


def rollout_expert(env: ArmEnv, expert: Expert, seed: int) -> ExpertEpisode:
    """Run one seeded episode with the expert, recording each observation and action."""
    obs = env.reset(seed)
    expert.reset(seed)
    keys = STEP_KEYS if env.render_images else STEP_KEYS[:-1]
    records: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    done, info = False, {}
    min_clearance = np.inf
    while not done:
        action = expert.act(obs)
        step = {"joints": obs["joints"], "state": env.state(), "action": action.astype(np.float32)}
        step["image"] = obs.get("image")
        for k in keys:
            records[k].append(step[k])
        obs, done, info = env.step(action)
        min_clearance = min(min_clearance, info["clearance"])
    return ExpertEpisode(
        seed=seed,
        side=expert.side,
        success=bool(info["success"]),
        steps={k: np.stack(v) for k, v in records.items()},
        min_clearance=float(min_clearance),
    )


def generate_demos(
    n_episodes: int,
    seed: int = 0,
    with_images: bool = True,
    task: ArmTaskConfig | None = None,
    expert_config: ExpertConfig | None = None,
) -> dict[str, np.ndarray]:
    """``n_episodes`` successful expert episodes from reset seeds ``seed, seed + 1, ...``.

    Failed episodes are skipped (the expert succeeds on well over 99% of seeds), so the seeds
    used are listed in ``episode_seeds``; evaluate policies on seeds outside that range.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}")
    env = ArmEnv(task, render_images=with_images)
    expert = Expert(env, expert_config)
    episodes: list[ExpertEpisode] = []
    max_attempts = 2 * n_episodes + 10
    for attempt in range(max_attempts):
        episode = rollout_expert(env, expert, seed + attempt)
        if episode.success:
            episodes.append(episode)
            if len(episodes) == n_episodes:
                break
    else:
        raise RuntimeError(
            f"the expert succeeded on only {len(episodes)} of {max_attempts} seeds from {seed}"
        )
    data = {k: np.concatenate([e.steps[k] for e in episodes]) for k in episodes[0].steps}
    data["episode_ends"] = np.cumsum([len(e.steps["action"]) for e in episodes]).astype(np.int64)
    data["episode_seeds"] = np.array([e.seed for e in episodes], dtype=np.int64)
    data["episode_sides"] = np.array([e.side for e in episodes], dtype=np.int8)
    return data


def save_npz(path: str | Path, data: dict[str, np.ndarray]) -> None:
    """Write a demo dict compressed (the renders are flat colour and compress well)."""
    np.savez_compressed(path, **data)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read a demo dict written by :func:`save_npz` fully into memory."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    if "episode_ends" not in data:
        raise ValueError(f"{path} has no 'episode_ends': not a demonstration file")
    return data
