"""Recorded observations on disk: one npz, one array per observation key of shape (N, To, ...).

This is what `bac profile --observations` reads and what the recorders (sim, bag reader) write:
the same history windows the policy node hands to ``Policy.predict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def save_observations(path: str | Path, observations: Sequence[Mapping[str, np.ndarray]]) -> Path:
    if not observations:
        raise ValueError("no observations to save; expected at least one")
    keys = list(observations[0])
    np.savez_compressed(path, **{k: np.stack([o[k] for o in observations]) for k in keys})
    return Path(path)


def load_observations(path: str | Path) -> list[dict[str, np.ndarray]]:
    path = Path(path)
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as an observations npz ({e})") from None
    if not data.files:
        raise ValueError(f"{path} holds no observation arrays; expected one per observation key")
    n = {len(data[k]) for k in data.files}
    if len(n) != 1:
        raise ValueError(f"{path}: observation arrays have different lengths {sorted(n)}")
    return [{k: data[k][i] for k in data.files} for i in range(n.pop())]


def random_observations(policy, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Observations drawn uniformly inside the normaliser's recorded [min, max] per key (uint8
    noise for cameras): inputs for benchmarks and tests of random-weight policies."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = {}
        for key, (shape, _) in policy.obs_spec.items():
            size = (policy.n_obs_steps, *shape)
            if key in policy.cameras:
                obs[key] = rng.integers(0, 256, size=size, dtype=np.uint8)
            else:
                stats = policy.normalizer.params_dict[key]["input_stats"]
                lo, hi = stats["min"].cpu().numpy(), stats["max"].cpu().numpy()
                obs[key] = rng.uniform(lo, hi, size=size).astype(np.float32)
        out.append(obs)
    return out
