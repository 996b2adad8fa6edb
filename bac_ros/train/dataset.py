"""Training windows over demonstrations in a replay-buffer layout (any task).

See :mod:`bac_ros.sim.demos` for the layout: per-step fields concatenated over episodes, with
``episode_ends`` the exclusive end index of each episode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SequenceSampler:
    """Fixed-length training windows over a replay buffer, as Chi et al.'s ``SequenceSampler``.

    Window ``i`` covers ``horizon`` consecutive steps of one episode. Windows may start up to
    ``pad_before = n_obs_steps - 1`` steps before the episode and end up to
    ``pad_after = n_action_steps - 1`` steps after it; out-of-episode steps repeat the first or
    last frame. So the first action chunk has a full observation history (the start repeated),
    and the last chunks ask the policy to hold still. Each window returns the first
    ``n_obs_steps`` observations (what the policy conditions on) and all ``horizon`` actions.
    """

    def __init__(
        self,
        data: dict[str, np.ndarray],
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        obs_keys: Sequence[str] = ("state",),
        action_key: str = "action",
        episode_mask: np.ndarray | None = None,
    ):
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        missing = [k for k in (*obs_keys, action_key, "episode_ends") if k not in data]
        if missing:
            raise KeyError(f"demonstration data lacks fields {missing}; it has {sorted(data)}")
        self.data = data
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.obs_keys = tuple(obs_keys)
        self.action_key = action_key
        ends = np.asarray(data["episode_ends"], dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        if episode_mask is None:
            episode_mask = np.ones(len(ends), dtype=bool)
        pad_before = min(max(n_obs_steps - 1, 0), horizon - 1)
        pad_after = min(max(n_action_steps - 1, 0), horizon - 1)
        offsets = np.arange(horizon)
        tables = [np.zeros((0, horizon), dtype=np.int64)]
        for start, end in zip(starts[episode_mask], ends[episode_mask], strict=True):
            first = np.arange(-pad_before, end - start - horizon + pad_after + 1) + start
            tables.append(np.clip(first[:, None] + offsets, start, end - 1))
        #: Buffer index of every step of every window, ``(n_windows, horizon)``.
        self.indices = np.concatenate(tables)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        """``{"obs": {key: (n_obs_steps, ...)}, "action": (horizon, action_dim)}``."""
        rows = self.indices[i]
        return {
            "obs": {k: self.data[k][rows[: self.n_obs_steps]] for k in self.obs_keys},
            "action": self.data[self.action_key][rows],
        }

    def batch(self, windows: np.ndarray) -> dict:
        """Several windows at once, with a leading batch axis (one fancy index per field)."""
        rows = self.indices[np.asarray(windows)]
        return {
            "obs": {k: self.data[k][rows[:, : self.n_obs_steps]] for k in self.obs_keys},
            "action": self.data[self.action_key][rows],
        }


def observation_windows(
    data: dict[str, np.ndarray],
    obs_keys: Sequence[str],
    n_obs_steps: int,
    count: int,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """``count`` observation histories drawn from demonstrations (what profiling runs on:
    recorded observations of the task, never the evaluation episodes)."""
    sampler = SequenceSampler(data, n_obs_steps, n_obs_steps, 1, obs_keys=obs_keys)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(sampler), size=min(count, len(sampler)), replace=False)
    obs = sampler.batch(np.sort(picks))["obs"]
    return [{k: obs[k][i] for k in obs_keys} for i in range(len(picks))]
