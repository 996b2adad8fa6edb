"""The offline fidelity measure: energy distance on chunk sets, and how it is drawn."""

import numpy as np
import pytest
import torch
from helpers import SMALL

from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.fidelity import (
    draw_chunks,
    energy_distance,
    fidelity,
    spearman,
    step_rmse,
)
from bac_ros.policy.policy import Policy


def test_energy_distance_is_near_zero_for_one_distribution_and_sees_a_lost_mode():
    rng = np.random.default_rng(0)
    side = rng.choice([-1.0, 1.0], size=(20, 64, 1, 1))
    bimodal = side + 0.05 * rng.normal(size=(20, 64, 4, 2))
    again = rng.choice([-1.0, 1.0], size=(20, 64, 1, 1)) + 0.05 * rng.normal(size=(20, 64, 4, 2))
    one_mode = 1.0 + 0.05 * rng.normal(size=(20, 64, 4, 2))  # always the right-hand side
    averaged = 0.05 * rng.normal(size=(20, 64, 4, 2))  # the blur between the modes
    same = energy_distance(bimodal, again)
    assert abs(same.mean()) < 0.05
    assert energy_distance(bimodal, one_mode).mean() > 1.0
    assert energy_distance(bimodal, averaged).mean() > 0.5
    # one sample against one sample (what a same-noise error measures) cannot tell these apart
    with pytest.raises(ValueError, match="at least 2 samples"):
        energy_distance(bimodal[:, :1], again[:, :1])


def test_fidelity_report_and_spearman():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(6, 8, 3, 2))
    rep = fidelity(ref, rng.normal(size=(6, 8, 3, 2)))
    assert rep["energy_sem"] > 0 and abs(rep["energy"]) < 4 * rep["energy_sem"] + 0.1
    drift = ref.copy()
    drift[..., 2, :] += 0.3  # only the last executed step moves
    np.testing.assert_allclose(step_rmse(ref, drift), [0.0, 0.0, 0.3], atol=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties share a rank


def test_draw_chunks_is_seeded_and_shaped():
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.randn(64, 4))
    norm.fit_limits("action", torch.randn(64, 2))
    ckpt = new_checkpoint({"state": {"shape": [4], "type": "low_dim"}}, 2, norm, horizon=8,
                          n_action_steps=4, model=SMALL, num_inference_steps=5)
    policy = Policy(ckpt, device="cpu")
    rng = np.random.default_rng(0)
    obs = [{"state": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(3)]
    a = draw_chunks(policy, obs, 5, seed=7, batch_size=4)  # batches split inside one obs
    assert a.shape == (3, 5, 4, 2)
    np.testing.assert_array_equal(a, draw_chunks(policy, obs, 5, seed=7, batch_size=4))
    b = draw_chunks(policy, obs, 5, seed=8, batch_size=4)
    assert not np.allclose(a, b)
    # per observation, the samples differ (independent noise), and observations differ too
    assert np.abs(a[:, 0] - a[:, 1]).max() > 1e-4
    # another sampler starts from the same initial noise: DDIM-5 and DDPM-5 differ, yet each
    # is reproducible, so same-noise errors compare methods on equal terms
    policy.set_sampler("DDIMScheduler", 5)
    d1, d2 = (draw_chunks(policy, obs, 5, seed=7, batch_size=4) for _ in range(2))
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, a)
