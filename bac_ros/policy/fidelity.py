"""Offline fidelity: does an accelerated sampler draw the same action distribution as full
compute, judged on recorded observations before a robot moves?

A diffusion policy is multimodal (our arm goes left or right of the obstacle), so comparing one
chunk to one chunk punishes a sampler for picking the other, equally good mode, and averaging
chunks blurs the modes into a collision. Instead, for every observation we draw a set of chunks
from full compute and a set from the candidate, with independent noise, and compare the sets with
the energy distance (Székely & Rizzo): ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``, zero exactly when
the distributions agree, and sensitive to a missing or extra mode. Within-set terms are
U-statistics (no self-pairs), so two sets from the same distribution score about 0. Beside it,
the per-step error of the executed part under the same noise (:func:`step_rmse`) says how far
each action moves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

#: Seeds of the chunk sets compared (:func:`draw_chunks`): full compute's reference set, and a
#: candidate's, with independent noise. Schedule search scores on a third seed, so the final
#: candidate scores stay on noise the search never saw.
REFERENCE_SEED, CANDIDATE_SEED, SEARCH_SEED = 1000, 2000, 3000


def draw_chunks(policy, observations: Sequence[Mapping[str, np.ndarray]], n_samples: int,
                seed: int, batch_size: int = 512) -> np.ndarray:
    """(N_obs, n_samples, n_action_steps, Da) executed chunks, with the policy's current sampler
    and schedule. The same ``seed`` and ``batch_size`` give every configuration the same initial
    noise (each batch has its own generator, whatever a sampler draws per step)."""
    keys = list(policy.obs_spec)
    reps = [o for o in observations for _ in range(n_samples)]
    out = []
    for i in range(0, len(reps), batch_size):
        part = reps[i : i + batch_size]
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out.append(policy.predict({k: np.stack([o[k] for o in part]) for k in keys},
                                  generator=g, batched=True))
    chunks = np.concatenate(out)
    return chunks.reshape(len(observations), n_samples, *chunks.shape[1:])


def energy_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-observation energy distance between sample sets (N, n, ...) and (N, m, ...)."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten(2)
    y = torch.as_tensor(y, dtype=torch.float64).flatten(2)
    n, m = x.shape[1], y.shape[1]
    if n < 2 or m < 2:
        raise ValueError(f"energy distance needs at least 2 samples per set; got {n} and {m}")
    xy = torch.cdist(x, y).mean(dim=(1, 2))
    xx = torch.cdist(x, x).sum(dim=(1, 2)) / (n * (n - 1))
    yy = torch.cdist(y, y).sum(dim=(1, 2)) / (m * (m - 1))
    return (2 * xy - xx - yy).numpy()


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Energy distance of a candidate's chunks to full compute's (both (N, n, T, Da), drawn
    with independent noise): mean over observations, and its standard error."""
    energy = energy_distance(reference, candidate)
    sem = float(np.std(energy, ddof=1) / np.sqrt(len(energy))) if len(energy) > 1 else 0.0
    return {"energy": float(np.mean(energy)), "energy_sem": sem}


def step_rmse(reference: np.ndarray, same_noise: np.ndarray) -> np.ndarray:
    """Per-step RMSE of the executed actions (..., T, Da) drawn with the reference's noise."""
    err = (np.asarray(same_noise) - np.asarray(reference)) ** 2
    return np.sqrt(err.reshape(-1, *err.shape[-2:]).mean(axis=(0, 2)))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (average ranks for ties)."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks
