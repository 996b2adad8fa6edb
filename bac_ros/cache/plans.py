"""Plans: which block updates at which step, as a (K, n_blocks) boolean array.

BAC's per-block update steps come from ACS, then the Bubbling Union (DESIGN.md §4.4) and the
forced final step (§4.5). Baselines use the same representation: ``none`` (full compute),
``uniform:N`` (every N-th step, all blocks) and hand-written per-block step lists.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from bac_ros.cache.acs import best_scores, optimal_update_steps
from bac_ros.cache.blocks import Block
from bac_ros.cache.similarity import DISTANCES


def acs_steps(similarity: np.ndarray, budget: int, metric: str) -> list[list[int]]:
    """ACS for every block of a (n_blocks, K, K) similarity stack."""
    return [
        optimal_update_steps(sim, budget, minimize=metric in DISTANCES) for sim in similarity
    ]


def bubbling_union(
    steps: Sequence[Sequence[int]], blocks: Sequence[Block], errors: np.ndarray, top_k: int = 5
) -> tuple[list[list[int]], list[int]]:
    """Give each of the ``top_k`` highest-error blocks the update steps of every FFN block at
    its layer or deeper, so an upstream block refreshes whenever a downstream FFN does.

    Unions read the ACS steps (not already-unioned ones), so the order of selection does not
    matter. Fewer than two selected blocks: BUA is skipped. Returns (steps, selected indices).
    """
    steps = [sorted(set(s)) for s in steps]
    if top_k < 2:
        return steps, []
    selected = [int(i) for i in np.argsort(-np.asarray(errors), kind="stable")[:top_k]]
    out = [list(s) for s in steps]
    for u in selected:
        union = set(steps[u])
        for f, block in enumerate(blocks):
            if block.kind == "ffn" and block.layer >= blocks[u].layer:
                union |= set(steps[f])
        out[u] = sorted(union)
    return out, selected


def force_last_step(steps: Sequence[Sequence[int]], num_steps: int) -> list[list[int]]:
    return [sorted(set(s) | {num_steps - 1}) for s in steps]


def plan_from_steps(steps: Sequence[Sequence[int]], num_steps: int) -> np.ndarray:
    plan = np.zeros((num_steps, len(steps)), dtype=bool)
    for b, s in enumerate(steps):
        s = list(s)
        if not s or min(s) < 0 or max(s) >= num_steps or 0 not in s:
            raise ValueError(
                f"update steps of block {b} must include 0 and lie in 0..{num_steps - 1}; got {s}"
            )
        plan[s, b] = True
    return plan


def uniform_plan(num_steps: int, n_blocks: int, every: int) -> np.ndarray:
    """Every block updates at steps 0, N, 2N, ... (no forced final step)."""
    if every < 1:
        raise ValueError(f"uniform caching interval must be >= 1; got {every}")
    plan = np.zeros((num_steps, n_blocks), dtype=bool)
    plan[::every] = True
    return plan


def unified_steps(similarity: np.ndarray, budget: int, metric: str,
                  last_step: bool = True) -> list[list[int]]:
    """The paper's ablation: one ACS solution on the block-averaged similarity, shared by every
    block (no per-block adaptivity, so no BUA)."""
    shared = optimal_update_steps(np.mean(similarity, axis=0), budget,
                                  minimize=metric in DISTANCES)
    steps = [list(shared) for _ in range(len(similarity))]
    return force_last_step(steps, similarity.shape[-1]) if last_step else steps


def shared_budget_steps(similarity: np.ndarray, block_flops: Sequence[float], budget: int,
                        metric: str) -> list[list[int]]:
    """One FLOP budget for all blocks (what ``budget`` updates of every block cost), spent where
    it buys the most: each further update goes to the block whose optimal ACS objective gains the
    most per FLOP. Blocks whose output barely changes keep few updates, drifting ones get more."""
    n, K = similarity.shape[0], similarity.shape[-1]
    minimize = metric in DISTANCES
    flops = np.asarray(block_flops, dtype=np.float64)
    cap = min(K, 4 * budget)
    sign = -1.0 if minimize else 1.0
    scores = [sign * best_scores(sim, cap, minimize) for sim in similarity]  # higher = better
    alloc, spent, total = [1] * n, flops.sum(), budget * flops.sum()
    heap = [(-(scores[b][1] - scores[b][0]) / flops[b], b) for b in range(n) if cap > 1]
    heapq.heapify(heap)
    while heap:
        _, b = heapq.heappop(heap)
        if spent + flops[b] > total:
            continue
        alloc[b] += 1
        spent += flops[b]
        if alloc[b] < cap:
            gain = scores[b][alloc[b]] - scores[b][alloc[b] - 1]
            heapq.heappush(heap, (-gain / flops[b], b))
    return [optimal_update_steps(sim, a, minimize) for sim, a in zip(similarity, alloc)]


def bac_steps(
    similarity: np.ndarray,
    errors: np.ndarray,
    blocks: Sequence[Block],
    budget: int,
    metric: str = "cosine",
    top_k: int = 5,
    last_step: bool = True,
    block_flops: Sequence[float] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """ACS -> BUA -> forced final step. Returns per-block steps and the BUA-selected blocks.
    With ``block_flops``, ACS budgets come from one shared FLOP budget (shared_budget_steps)."""
    steps = (acs_steps(similarity, budget, metric) if block_flops is None
             else shared_budget_steps(similarity, block_flops, budget, metric))
    steps, selected = bubbling_union(steps, blocks, errors, top_k)
    if last_step:
        steps = force_last_step(steps, similarity.shape[-1])
    return steps, selected
