"""ACS against exhaustive search, BUA and plan construction."""

import itertools
import time

import numpy as np
import pytest

from bac_ros.cache.acs import best_scores, optimal_update_steps, segment_costs
from bac_ros.cache.blocks import Block
from bac_ros.cache.plans import (
    bac_steps,
    bubbling_union,
    plan_from_steps,
    shared_budget_steps,
    uniform_plan,
)


def _score(sim, steps):
    bounds = list(steps) + [sim.shape[0]]
    return sum(sim[a, a:b].sum() for a, b in zip(bounds[:-1], bounds[1:]))


def _brute_force(sim, budget, minimize):
    K = sim.shape[0]
    best, best_steps = None, None
    for rest in itertools.combinations(range(1, K), budget - 1):
        steps = (0, *rest)
        s = _score(sim, steps)
        if best is None or (s < best if minimize else s > best):
            best, best_steps = s, list(steps)
    return best, best_steps


@pytest.mark.parametrize("minimize", [False, True])
def test_acs_equals_exhaustive_search(minimize):
    rng = np.random.default_rng(0)
    for trial in range(60):
        K = int(rng.integers(2, 10))
        S = int(rng.integers(1, K + 1))
        sim = rng.normal(size=(K, K))
        steps = optimal_update_steps(sim, S, minimize=minimize)
        best, best_steps = _brute_force(sim, S, minimize)
        assert len(steps) == S and steps[0] == 0 and steps == sorted(set(steps))
        assert _score(sim, steps) == pytest.approx(best, abs=1e-9), (trial, steps, best_steps)
        assert steps == best_steps


def test_segment_costs_are_row_prefix_sums():
    sim = np.arange(16, dtype=float).reshape(4, 4)
    C = segment_costs(sim)
    assert C[1, 3] == sim[1, 1] + sim[1, 2] + sim[1, 3]
    assert C[2, 2] == sim[2, 2]


def test_acs_prefers_segments_of_similar_steps():
    # Two regimes: steps 0-5 alike, 6-9 alike. Two updates must split exactly at 6.
    regime = np.array([0] * 6 + [1] * 4)
    sim = np.where(regime[:, None] == regime[None, :], 1.0, 0.0)
    assert optimal_update_steps(sim, 2) == [0, 6]
    assert optimal_update_steps(1 - sim, 2, minimize=True) == [0, 6]


def test_acs_budget_errors():
    with pytest.raises(ValueError, match="budget"):
        optimal_update_steps(np.eye(4), 5)
    with pytest.raises(ValueError, match="square"):
        optimal_update_steps(np.ones((3, 4)), 2)


def test_acs_paper_size_is_fast():
    sims = np.random.default_rng(1).random((24, 100, 100))
    t0 = time.perf_counter()
    out = [optimal_update_steps(s, 10) for s in sims]
    elapsed = time.perf_counter() - t0
    assert all(len(s) == 10 for s in out)
    assert elapsed < 1.0, f"24 blocks, K=100, S=10 took {elapsed:.2f} s"


def _blocks(n_layers):
    return [Block(f"l{l}.{k}", l, k) for l in range(n_layers) for k in ("sa", "ca", "ffn")]


def test_bubbling_union_unions_downstream_ffn_steps_into_selected_blocks():
    blocks = _blocks(3)  # indices: l0: 0 sa, 1 ca, 2 ffn; l1: 3, 4, 5; l2: 6, 7, 8
    steps = [[0, 10 + i] for i in range(9)]
    errors = np.zeros(9)
    errors[[4, 0]] = [5.0, 4.0]  # select l1.ca (layer 1) and l0.sa (layer 0)
    out, selected = bubbling_union(steps, blocks, errors, top_k=2)
    assert selected == [4, 0]
    assert out[4] == [0, 14, 15, 18]  # own + ffn of layers 1, 2
    assert out[0] == [0, 10, 12, 15, 18]  # own + ffn of layers 0, 1, 2
    for i in set(range(9)) - {0, 4}:
        assert out[i] == steps[i]
    unchanged, none = bubbling_union(steps, blocks, errors, top_k=1)
    assert unchanged == steps and none == []


def test_bac_steps_forces_last_step_and_plan_shapes():
    blocks = _blocks(2)
    rng = np.random.default_rng(2)
    sim = rng.random((6, 20, 20))
    steps, selected = bac_steps(sim, rng.random(6), blocks, budget=4, top_k=2)
    assert all(s[0] == 0 and s[-1] == 19 for s in steps) and len(selected) == 2
    plan = plan_from_steps(steps, 20)
    assert plan.shape == (20, 6) and plan[0].all() and plan[-1].all()
    u = uniform_plan(20, 6, 5)
    assert u[:, 0].nonzero()[0].tolist() == [0, 5, 10, 15]
    with pytest.raises(ValueError, match="include 0"):
        plan_from_steps([[1, 2]], 20)


def test_similarity_metrics_match_their_definitions():
    import torch

    from bac_ros.cache.similarity import pairwise_l1_error, similarity_matrix

    f = torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(0))
    flat = f.reshape(6, -1)
    for i in range(6):
        for j in range(6):
            a, b = flat[i], flat[j]
            cos = torch.dot(a, b) / (a.norm() * b.norm())
            assert similarity_matrix(f, "cosine")[i, j] == pytest.approx(float(cos), abs=1e-6)
            assert similarity_matrix(f, "l1")[i, j] == pytest.approx(
                float((a - b).abs().mean()), abs=1e-6)
            assert similarity_matrix(f, "mse")[i, j] == pytest.approx(
                float((a - b).square().mean()), abs=1e-5)
    l1 = similarity_matrix(f, "l1")
    pairs = [float((flat[i] - flat[j]).abs().mean()) for i in range(6) for j in range(i + 1, 6)]
    assert pairwise_l1_error(l1) == pytest.approx(np.mean(pairs), rel=1e-6)
    with pytest.raises(ValueError, match="unknown similarity metric"):
        similarity_matrix(f, "wasserstein")


@pytest.mark.parametrize("minimize", [False, True])
def test_best_scores_are_the_exhaustive_optimum_for_every_budget(minimize):
    rng = np.random.default_rng(3)
    for _ in range(20):
        K = int(rng.integers(2, 9))
        sim = rng.normal(size=(K, K))
        scores = best_scores(sim, K, minimize)
        for S in range(1, K + 1):
            assert scores[S - 1] == pytest.approx(_brute_force(sim, S, minimize)[0], abs=1e-9)


def test_shared_budget_spends_updates_where_blocks_drift():
    K = 30
    t = np.arange(K)
    still = np.ones((K, K))  # output never changes: one update stands in for all steps
    drifting = np.exp(-np.abs(t[:, None] - t[None, :]) / 2.0)  # similarity decays fast
    sim = np.stack([still, drifting, still, drifting])
    flops = [1.0, 1.0, 3.0, 3.0]
    steps = shared_budget_steps(sim, flops, budget=5, metric="cosine")
    counts = [len(s) for s in steps]
    assert all(s[0] == 0 and s == sorted(set(s)) for s in steps)
    assert counts[0] == 1 and counts[2] == 1  # nothing to gain on the still blocks
    assert counts[1] > 5 and counts[3] > 5  # their share goes to the drifting ones
    assert np.dot(counts, flops) <= 5 * sum(flops)  # never over the shared FLOP budget
    # with equal drift everywhere the cheap block gets at least as many updates per FLOP
    even = shared_budget_steps(np.stack([drifting, drifting]), [1.0, 3.0], 5, "cosine")
    assert len(even[0]) >= len(even[1])
