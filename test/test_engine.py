"""The plan-driven sampler: exactness against plain sampling and a naive cached loop."""

import numpy as np
import pytest
import torch

from bac_ros.cache.engine import DenoisingEngine, plan_flops
from bac_ros.cache.plans import plan_from_steps, uniform_plan
from bac_ros.cache.profile import profile
from bac_ros.cache.schedulers import DEFAULT_SCHEDULER, StepTable, build_scheduler
from bac_ros.models.dpt import TransformerForDiffusion

SHAPE = (2, 8, 3)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(input_dim=3, output_dim=3, horizon=8, n_obs_steps=2, cond_dim=5, n_layer=3,
               n_head=2, n_emb=32, causal_attn=True, p_drop_emb=0.1, p_drop_attn=0.1)
    cfg.update(kw)
    m = TransformerForDiffusion(**cfg)
    with torch.no_grad():  # larger weights than the init, so steps differ visibly
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _engine(model, K=20, fast=True, sched=None):
    return DenoisingEngine(model, build_scheduler(sched or DEFAULT_SCHEDULER), K, fast=fast)


def _naive(model, cond, K, seed, sched=None):
    s = build_scheduler(sched or DEFAULT_SCHEDULER)
    s.set_timesteps(K)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    model.eval()
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(model(x, t, cond), t, x, generator=g).prev_sample
    return x


COND = torch.randn(2, 2, 5, generator=torch.Generator().manual_seed(9))


def test_reference_path_equals_plain_diffusers_loop_bit_for_bit():
    m = _model()
    out = _engine(m, fast=False).sample(COND, SHAPE, torch.Generator().manual_seed(4))
    assert torch.equal(out, _naive(m, COND, 20, 4))


@pytest.mark.parametrize("fast", [False, True])
def test_all_update_plan_equals_uncached_bit_for_bit(fast):
    m = _model()
    eng = _engine(m, fast=fast)
    plain = eng.sample(COND, SHAPE, torch.Generator().manual_seed(4))
    cached = eng.sample(COND, SHAPE, torch.Generator().manual_seed(4),
                        plan=np.ones((20, len(eng.blocks)), bool))
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("variant", [{}, {"causal_attn": False}, {"n_cond_layers": 1},
                                     {"cond_dim": 0}])
def test_fast_path_matches_reference_path(variant):
    m = _model(**variant)
    cond = COND if m.config["cond_dim"] else None
    a = _engine(m, fast=False).sample(cond, SHAPE, torch.Generator().manual_seed(5))
    b = _engine(m, fast=True).sample(cond, SHAPE, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


def _naive_uniform(model, cond, K, every, seed):
    """Cached sampling written out by hand: each branch recomputed at steps 0, N, 2N, ..."""
    model.eval()
    s = build_scheduler(DEFAULT_SCHEDULER)
    s.set_timesteps(K)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    store = {}
    with torch.no_grad():
        for k, t in enumerate(s.timesteps):
            update = k % every == 0
            time_tok = model.timestep_tokens(t, x.shape[0], x.device)
            memory = model.encode_condition(time_tok, cond)
            h = model.embed_input(x)
            for l, layer in enumerate(model.decoder.layers):
                for kind in ("sa", "ca", "ffn"):
                    if update:
                        store[(l, kind)] = (
                            layer.sa_branch(h, model.mask) if kind == "sa"
                            else layer.ca_branch(h, memory, model.memory_mask) if kind == "ca"
                            else layer.ffn_branch(h)
                        )
                    h = h + store[(l, kind)]
            x = s.step(model.output(h), t, x, generator=g).prev_sample
    return x


def test_uniform_plan_equals_naive_reimplementation():
    m = _model()
    eng = _engine(m, fast=False)
    plan = uniform_plan(20, len(eng.blocks), 4)
    out = eng.sample(COND, SHAPE, torch.Generator().manual_seed(6), plan=plan)
    ref = _naive_uniform(_model(), COND, 20, 4, 6)  # same weights, no hooks attached
    assert torch.equal(out, ref)
    fast = _engine(m, fast=True).sample(COND, SHAPE, torch.Generator().manual_seed(6), plan=plan)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=2e-5)
    full = eng.sample(COND, SHAPE, torch.Generator().manual_seed(6))
    assert not torch.allclose(out, full, atol=1e-4)  # caching really changed the computation


def test_plan_never_computes_a_block_on_a_reuse_step():
    m = _model()
    eng = _engine(m)
    rng = np.random.default_rng(0)
    steps = [[0, *sorted(rng.choice(np.arange(1, 20), size=int(rng.integers(0, 8)),
                                    replace=False).tolist())] for _ in eng.blocks]
    plan = plan_from_steps(steps, 20)
    calls_per_step = []
    eng.cache.calls[:] = 0

    def record(step, index, out):
        calls_per_step.append((step, index))

    eng.sample(COND, SHAPE, torch.Generator().manual_seed(1), plan=plan, recorder=record)
    np.testing.assert_array_equal(eng.cache.calls, plan.sum(axis=0))
    assert all(plan[k, b] for k, b in calls_per_step)
    assert len(calls_per_step) == plan.sum()


def test_plan_shape_is_checked():
    eng = _engine(_model())
    with pytest.raises(ValueError, match="plan has 5 steps"):
        eng.sample(COND, SHAPE, plan=np.ones((5, len(eng.blocks)), bool))
    bad = np.ones((20, len(eng.blocks)), bool)
    bad[0, 3] = False
    with pytest.raises(ValueError, match="first step"):
        eng.sample(COND, SHAPE, plan=bad)


def test_block_names_and_flops():
    eng = _engine(_model())
    names = [b.name for b in eng.blocks]
    assert names[:3] == ["decoder.layers.0.self_attn", "decoder.layers.0.cross_attn",
                         "decoder.layers.0.ffn"] and len(names) == 9
    block_flops, overhead = eng.measure_flops(COND[:1], (1, 8, 3))
    T, E = 8, 32
    ffn = 2 * (2 * T * E * 4 * E)
    assert block_flops[2] == ffn  # FFN: two linears, counted exactly
    assert block_flops[0] == 2 * T * E * 3 * E + 2 * T * E * E + 4 * T * T * E  # qkv, out, attn
    assert overhead > 0
    full = plan_flops(None, block_flops, overhead, 20)
    half = plan_flops(uniform_plan(20, 9, 2), block_flops, overhead, 20)
    assert full / half == pytest.approx((20 * overhead + 20 * block_flops.sum())
                                        / (20 * overhead + 10 * block_flops.sum()))


@pytest.mark.parametrize("kind,pred", [("DDPMScheduler", "epsilon"), ("DDPMScheduler", "sample"),
                                       ("DDIMScheduler", "epsilon"), ("DDIMScheduler", "sample")])
def test_tabulated_update_matches_diffusers_step(kind, pred):
    cfg = dict(DEFAULT_SCHEDULER, type=kind, prediction_type=pred)
    if kind == "DDIMScheduler":
        cfg.pop("variance_type")
    s = build_scheduler(cfg)
    s.set_timesteps(10)
    table = StepTable.from_scheduler(s)
    g = torch.Generator().manual_seed(0)
    for k, t in enumerate(s.timesteps):
        x, out, noise = (torch.randn(4, 3, generator=g) * 2 for _ in range(3))
        want = s.step(out, t, x, generator=torch.Generator().manual_seed(k)).prev_sample
        noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(k))
        got = table.step(k, out, x, noise)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dpm_solver_runs_through_its_own_step():
    cfg = dict(type="DPMSolverMultistepScheduler", num_train_timesteps=100,
               beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
    eng = _engine(_model(), K=8, sched=cfg)
    assert eng.table is None
    out = eng.sample(COND, SHAPE, torch.Generator().manual_seed(0))
    assert out.shape == SHAPE and torch.isfinite(out).all()


def test_profile_statistics():
    eng = _engine(_model(), K=10)
    conds = [COND[:1], COND[1:], COND]
    res = profile(eng, conds, lambda c, g, rec: eng.sample(c, (c.shape[0], 8, 3), g, recorder=rec))
    assert res.observations == 4 and res.num_steps == 10
    cos = res.mean["cosine"]
    assert cos.shape == (9, 10, 10)
    np.testing.assert_allclose(np.diagonal(cos, axis1=1, axis2=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(cos, np.transpose(cos, (0, 2, 1)), atol=1e-6)
    assert (res.std["cosine"] > 0).any()  # different observations, different matrices
    assert np.allclose(np.diagonal(res.mean["l1"], axis1=1, axis2=2), 0, atol=1e-6)
    assert (res.errors > 0).all()
    # BUA error is the mean of the l1 upper triangle (checked on the averaged matrix).
    iu = np.triu_indices(10, 1)
    np.testing.assert_allclose(res.errors, res.mean["l1"][:, iu[0], iu[1]].mean(axis=1),
                               rtol=1e-5)
