"""BAC on a transformer the package has never seen: blocks declared as data, nothing edited."""

import numpy as np
import torch
from torch import nn

from bac_ros.cache.adapters import GenericAdapter
from bac_ros.cache.engine import DenoisingEngine
from bac_ros.cache.plans import uniform_plan
from bac_ros.cache.schedulers import DEFAULT_SCHEDULER, build_scheduler


class Mixer(nn.Module):
    """A residual branch that is a submodule of its own (block method: forward)."""

    def __init__(self, d):
        super().__init__()
        self.norm, self.lin = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        return self.lin(torch.tanh(self.norm(x)))


class TinyLayer(nn.Module):
    """Attention as a method of the layer, the MLP as a submodule."""

    def __init__(self, d):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = Mixer(d)

    def attend(self, x, c):
        kv = torch.cat([x, c], 1)
        return self.attn(x, kv, kv, need_weights=False)[0]

    def forward(self, x, c):
        x = x + self.attend(x, c)
        return x + self.mlp(x)


class TinyDiT(nn.Module):
    """A toy noise predictor the package knows nothing about."""

    def __init__(self, d=16, layers=3, cond_dim=4):
        super().__init__()
        self.inp, self.out = nn.Linear(2, d), nn.Linear(d, 2)
        self.cond = nn.Linear(cond_dim + 1, d)
        self.layers = nn.ModuleList(TinyLayer(d) for _ in range(layers))

    def forward(self, sample, t, cond):
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1).expand(len(sample), 1, 1)
        c = self.cond(torch.cat([cond, t.expand(-1, cond.shape[1], 1) / 100], -1))
        x = self.inp(sample)
        for layer in self.layers:
            x = layer(x, c)
        return self.out(x)


DECLARED = [d for i in range(3) for d in ((f"layers.{i}", "attend", i, "sa"),
                                           (f"layers.{i}.mlp", "forward", i, "ffn"))]


def _engine():
    torch.manual_seed(0)
    model = TinyDiT()
    eng = DenoisingEngine(model, build_scheduler(DEFAULT_SCHEDULER), 12,
                          adapter=GenericAdapter(DECLARED))
    return model, eng


def test_generic_blocks_cache_exactly_and_skip_work():
    model, eng = _engine()
    assert [b.name for b in eng.blocks][:2] == ["layers.0.attend", "layers.0.mlp.forward"]
    assert [b.kind for b in eng.blocks] == ["sa", "ffn"] * 3
    cond = torch.randn(2, 3, 4)
    plain = eng.sample(cond, (2, 5, 2), torch.Generator().manual_seed(0))
    every = eng.sample(cond, (2, 5, 2), torch.Generator().manual_seed(0),
                       plan=np.ones((12, 6), bool))
    assert torch.equal(plain, every)
    eng.cache.calls[:] = 0
    plan = uniform_plan(12, 6, 3)
    cached = eng.sample(cond, (2, 5, 2), torch.Generator().manual_seed(0), plan=plan)
    assert eng.cache.calls.tolist() == [4] * 6  # steps 0, 3, 6, 9 only
    assert not torch.allclose(cached, plain)
    eng.cache.detach()
    assert "forward" not in vars(model.layers[0].mlp)  # the model is restored
    assert "attend" not in vars(model.layers[0])


def test_generic_adapter_names_missing_modules():
    import pytest

    with pytest.raises(KeyError, match="'mlp.9' is not in the model"):
        GenericAdapter([("mlp.9", "forward", 9, "ffn")]).bind(TinyDiT())
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        GenericAdapter([("layers.0", "nope", 0, "ffn")]).bind(TinyDiT())


def test_a_model_with_half_the_step_interface_is_refused():
    import pytest

    class HalfDiT(TinyDiT):
        def prepare(self, cond, timesteps):
            return cond

    with pytest.raises(TypeError, match="HalfDiT defines prepare but not the other; a model's "
                                        "per-step interface is both or neither"):
        DenoisingEngine(HalfDiT(), build_scheduler(DEFAULT_SCHEDULER), 4,
                        adapter=GenericAdapter(DECLARED))
