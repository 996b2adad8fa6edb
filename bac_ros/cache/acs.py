"""Adaptive Caching Scheduler: the optimal update steps of one block (DESIGN.md §4.3).

Steps are in execution order (0 = noisiest). Choosing updates ``0 = c_1 < ... < c_S`` splits
the K steps into S segments; the output computed at a segment's first step ``a`` stands in for
steps ``a..b``, which scores ``cost(a, b) = sum_{t=a..b} Sim[a, t]``. Dynamic programming over
(segments, last step) finds the split with the best total score in O(S K^2).
"""

from __future__ import annotations

import numpy as np


def segment_costs(similarity: np.ndarray) -> np.ndarray:
    """``C[a, b] = sum_{t=a..b} Sim[a, t]`` for ``a <= b`` (prefix sums along each row)."""
    sim = np.asarray(similarity, dtype=np.float64)
    prefix = np.cumsum(sim, axis=1)
    before = np.concatenate([np.zeros((sim.shape[0], 1)), prefix[:, :-1]], axis=1)
    return prefix - np.diag(before)[:, None]


def _solve(similarity: np.ndarray, budget: int, minimize: bool):
    """The DP: best score of each segment count 1..budget, and the back pointers."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"similarity must be a square K x K matrix; got shape {sim.shape}")
    K = sim.shape[0]
    if not 1 <= budget <= K:
        raise ValueError(f"budget must be between 1 and K={K} updates; got {budget}")
    sign = -1.0 if minimize else 1.0
    C = sign * segment_costs(sim)
    C[np.tril_indices(K, -1)] = -np.inf
    # dp[i]: best score of s segments covering steps 0..i; back[s][i]: previous segment end j.
    dp = C[0].copy()
    scores, back = [dp[K - 1]], []
    j_idx, i_idx = np.arange(K - 1)[:, None], np.arange(K)[None, :]
    for s in range(2, budget + 1):
        cand = dp[:-1, None] + C[1:, :]  # cand[j, i] = dp[j] + cost(j + 1, i)
        cand[(j_idx < s - 2) | (j_idx >= i_idx)] = -np.inf
        arg = np.argmax(cand, axis=0)  # first maximum = smallest j
        dp = cand[arg, np.arange(K)]
        back.append(arg)
        scores.append(dp[K - 1])
    return sign * np.asarray(scores), back


def optimal_update_steps(
    similarity: np.ndarray, budget: int, minimize: bool = False
) -> list[int]:
    """The ``budget`` sorted update steps (step 0 included) that maximise the summed similarity
    of the steps each update stands in for (``minimize=True`` for distances such as l1/mse).

    Ties prefer the earliest previous segment end, which makes the result deterministic.
    """
    _, back = _solve(similarity, budget, minimize)
    steps, i = [], len(similarity) - 1
    for arg in reversed(back):
        j = int(arg[i])
        steps.append(j + 1)
        i = j
    return [0] + sorted(steps)


def best_scores(similarity: np.ndarray, max_budget: int, minimize: bool = False) -> np.ndarray:
    """The optimal ACS objective for every budget 1..max_budget (index 0 = one update)."""
    return _solve(similarity, max_budget, minimize)[0]
