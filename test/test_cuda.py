"""The CUDA path: fast sampler, captured graphs and half precision (skipped without a GPU)."""

import numpy as np
import pytest
import torch

from bac_ros.cache.engine import DenoisingEngine
from bac_ros.cache.plans import uniform_plan
from bac_ros.cache.schedulers import DEFAULT_SCHEDULER, build_scheduler
from bac_ros.models.dpt import TransformerForDiffusion
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import PAPER_MODEL, new_checkpoint
from bac_ros.policy.policy import Policy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model():
    torch.manual_seed(0)
    return TransformerForDiffusion(input_dim=3, output_dim=3, horizon=16, n_obs_steps=2,
                                   cond_dim=7, **PAPER_MODEL)


def test_cuda_graph_matches_eager_and_cpu():
    cond = torch.randn(1, 2, 7, generator=torch.Generator().manual_seed(1))
    cpu = DenoisingEngine(_model(), build_scheduler(DEFAULT_SCHEDULER), 100)
    ref = cpu.sample(cond, (1, 16, 3), torch.Generator().manual_seed(2))
    eager = DenoisingEngine(_model().cuda(), build_scheduler(DEFAULT_SCHEDULER), 100,
                            cuda_graphs=False)
    graphed = DenoisingEngine(_model().cuda(), build_scheduler(DEFAULT_SCHEDULER), 100)
    plan = uniform_plan(100, 24, 5)
    for p in (None, plan):
        a = eager.sample(cond, (1, 16, 3), torch.Generator().manual_seed(2), plan=p)
        for _ in range(3):  # capture, then replays with fresh inputs copied in
            b = graphed.sample(cond, (1, 16, 3), torch.Generator().manual_seed(2), plan=p)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(eager.sample(cond, (1, 16, 3), torch.Generator().manual_seed(2)
                                            ).cpu(), ref, rtol=1e-3, atol=1e-3)
    # private: CudaGraphs has no public count of the graphs it has captured
    assert len(graphed.graphs._graphs) == 2  # one graph per plan
    other = graphed.sample(cond * 2, (1, 16, 3), torch.Generator().manual_seed(3), plan=plan)
    assert not torch.allclose(other, b)  # replay really reads the new inputs


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_policy_on_cuda(dtype):
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.randn(64, 7))
    norm.fit_limits("action", torch.randn(64, 3))
    ckpt = new_checkpoint({"state": {"shape": [7], "type": "low_dim"}}, 3, norm)
    obs = {"state": np.random.default_rng(0).normal(size=(2, 7)).astype(np.float32)}
    full = Policy(ckpt, device="cuda").predict(obs, seed=0)
    half = Policy(ckpt, device="cuda", dtype=dtype).predict(obs, seed=0)
    assert half.dtype == np.float32 and np.isfinite(half).all()
    assert np.abs(half - full).max() < 0.25
