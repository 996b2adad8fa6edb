"""docs/ADAPTERS.md's worked example, run as written: a head the package has never seen, with its
own per-step interface and block declarations, cached exactly with nothing in cache/ edited."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bac_ros.cache.adapters import ADAPTERS, adapter_for, register_adapter
from bac_ros.cache.engine import DenoisingEngine
from bac_ros.cache.plans import uniform_plan
from bac_ros.cache.schedulers import build_scheduler

DOC = Path(__file__).resolve().parents[1] / "docs" / "ADAPTERS.md"
SHAPE = (2, 8, 2)
DDIM = {"type": "DDIMScheduler"}


@pytest.fixture
def ex():
    """The names the doc's worked example defines, after running its one python block."""
    section = DOC.read_text().split("## 3. Worked example", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    namespace = {"__name__": "adapters_doc_example"}
    try:
        exec(compile(blocks[0], str(DOC), "exec"), namespace)
        yield namespace
    finally:
        ADAPTERS.pop("TinyHead", None)


def test_the_engine_finds_the_registered_declarations(ex):
    engine = ex["engine"]
    assert isinstance(engine.adapter, ex["TinyHeadAdapter"])
    assert ex["names"] == [f"layers.{l}.{label}" for l in range(3)
                           for label in ("self_attn", "cross_attn", "ffn")]
    assert [(b.layer, b.kind) for b in engine.blocks][:4] == [(0, "sa"), (0, "ca"), (0, "ffn"),
                                                              (1, "sa")]
    subclass = type("WiderHead", (ex["TinyHead"],), {})
    assert isinstance(adapter_for(subclass()), ex["TinyHeadAdapter"])


def _hand_written(head, cond, every):
    """DDIM sampling with every branch recomputed at steps 0, every, 2 every, ... only, written
    out from the head's pieces (no engine, no hooks)."""
    s = build_scheduler(DDIM)
    s.set_timesteps(10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    store = {}
    with torch.no_grad():
        for k, t in enumerate(s.timesteps):
            time, kvs = head.prepare(cond, t.reshape(1).expand(2)[None])
            h = head.inp(x) + time[0]
            for l, (layer, kv) in enumerate(zip(head.layers, kvs)):
                for kind in ("sa", "ca", "ffn"):
                    if k % every == 0:
                        store[l, kind] = (layer.sa_branch(h) if kind == "sa"
                                          else layer.ca_branch(h, kv) if kind == "ca"
                                          else layer.ffn_branch(h))
                    h = h + store[l, kind]
            x = s.step(head.out(h), t, x).prev_sample
    return x


def test_caching_the_new_head_is_exact_and_skips_work(ex):
    engine, head, cond, full, cached = (ex[k] for k in ("engine", "head", "cond", "full",
                                                         "cached"))
    every = engine.sample(cond, SHAPE, torch.Generator().manual_seed(0),
                          plan=np.ones((10, 9), bool))
    assert torch.equal(every, full) and torch.isfinite(full).all()
    engine.cache.calls[:] = 0
    again = engine.sample(cond, SHAPE, torch.Generator().manual_seed(0), plan=ex["plan"])
    assert torch.equal(again, cached) and engine.cache.calls.tolist() == [4] * 9
    assert not torch.allclose(cached, full, atol=1e-4)  # reuse really changed the computation

    reference = DenoisingEngine(head, build_scheduler(DDIM), 10, fast=False)
    ref_cached = reference.sample(cond, SHAPE, torch.Generator().manual_seed(0),
                                  plan=uniform_plan(10, 9, 3))
    reference.cache.detach()
    assert torch.equal(ref_cached, _hand_written(head, cond, 3))
    torch.testing.assert_close(cached, ref_cached, rtol=1e-5, atol=1e-6)


def test_prepare_runs_once_per_sample_and_forward_is_prepare_then_step(ex):
    head, cond = ex["head"], ex["cond"]
    seen = []
    prepare = head.prepare

    def counting(c, timesteps):
        seen.append(tuple(timesteps.shape))
        return prepare(c, timesteps)

    head.prepare = counting
    try:
        fast = ex["engine"].sample(cond, SHAPE, torch.Generator().manual_seed(1))
        assert seen == [(10,)]  # the engine: once, with the K timesteps of the schedule
        seen.clear()
        reference = DenoisingEngine(head, build_scheduler(DDIM), 10, fast=False)
        ref = reference.sample(cond, SHAPE, torch.Generator().manual_seed(1))
        assert seen == [(1, 2)] * 10  # forward: one timestep (per sample) at every step
    finally:
        del head.prepare
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_register_adapter_refuses_what_cannot_build_an_adapter():
    with pytest.raises(TypeError, match="factory must be callable and return a BlockAdapter; "
                                        "got str"):
        register_adapter("TinyHead", "TinyHeadAdapter")
    assert "TinyHead" not in ADAPTERS
