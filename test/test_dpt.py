"""DP-T against a reference on torch's own nn.Transformer* layers, built as Chi et al. do."""

import math

import pytest
import torch
from torch import nn

from bac_ros.models.dpt import TransformerForDiffusion


class ReferenceDPT(nn.Module):
    """The original architecture spec (DESIGN.md §3) on nn.TransformerEncoder/Decoder layers."""

    def __init__(self, input_dim, output_dim, horizon, n_obs_steps, cond_dim, n_layer, n_head,
                 n_emb, causal_attn, time_as_cond, n_cond_layers):
        super().__init__()
        obs_as_cond = cond_dim > 0
        T = horizon + (0 if time_as_cond else 1)
        T_cond = (1 if time_as_cond else 0) + (n_obs_steps if obs_as_cond else 0)
        self._dummy_variable = nn.Parameter()
        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, n_emb))
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if obs_as_cond else None
        self.n_emb = n_emb
        self.encoder_only = T_cond == 0

        def enc_layer():
            return nn.TransformerEncoderLayer(n_emb, n_head, 4 * n_emb, 0.0, "gelu",
                                              batch_first=True, norm_first=True)

        if not self.encoder_only:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, T_cond, n_emb))
            if n_cond_layers > 0:
                self.encoder = nn.TransformerEncoder(enc_layer(), n_cond_layers,
                                                     enable_nested_tensor=False)
            else:
                self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(),
                                             nn.Linear(4 * n_emb, n_emb))
            dec = nn.TransformerDecoderLayer(n_emb, n_head, 4 * n_emb, 0.0, "gelu",
                                             batch_first=True, norm_first=True)
            self.decoder = nn.TransformerDecoder(dec, n_layer)
        else:
            self.encoder = nn.TransformerEncoder(enc_layer(), n_layer, enable_nested_tensor=False)
        self.register_buffer("mask", None)
        self.register_buffer("memory_mask", None)
        if causal_attn:
            mask = (torch.triu(torch.ones(T, T)) == 1).transpose(0, 1)
            mask = mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0.0)
            self.register_buffer("mask", mask)
            if time_as_cond and obs_as_cond:
                t, s = torch.meshgrid(torch.arange(T), torch.arange(T_cond), indexing="ij")
                mm = t >= (s - 1)
                mm = mm.float().masked_fill(mm == 0, float("-inf")).masked_fill(mm == 1, 0.0)
                self.register_buffer("memory_mask", mm)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)

    def time_emb(self, t):
        half = self.n_emb // 2
        e = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        e = t[:, None] * e[None, :]
        return torch.cat((e.sin(), e.cos()), dim=-1)

    def forward(self, sample, timestep, cond=None):
        t = torch.full((sample.shape[0],), timestep, dtype=torch.long)
        time_emb = self.time_emb(t).unsqueeze(1)
        input_emb = self.input_emb(sample)
        if self.encoder_only:
            x = torch.cat([time_emb, input_emb], 1)
            x = x + self.pos_emb[:, : x.shape[1]]
            x = self.encoder(src=x, mask=self.mask)[:, 1:]
        else:
            c = time_emb
            if self.cond_obs_emb is not None:
                c = torch.cat([c, self.cond_obs_emb(cond)], 1)
            memory = self.encoder(c + self.cond_pos_emb[:, : c.shape[1]])
            x = input_emb + self.pos_emb[:, : input_emb.shape[1]]
            x = self.decoder(tgt=x, memory=memory, tgt_mask=self.mask,
                             memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))


VARIANTS = {
    "paper": dict(cond_dim=10, causal_attn=True, time_as_cond=True, n_cond_layers=0),
    "noncausal": dict(cond_dim=10, causal_attn=False, time_as_cond=True, n_cond_layers=0),
    "cond_layers": dict(cond_dim=10, causal_attn=True, time_as_cond=True, n_cond_layers=2),
    "no_obs_cond": dict(cond_dim=0, causal_attn=True, time_as_cond=True, n_cond_layers=0),
    "encoder_only": dict(cond_dim=0, causal_attn=True, time_as_cond=False, n_cond_layers=0),
}


def _pair(variant):
    torch.manual_seed(0)
    kw = dict(input_dim=4, output_dim=4, horizon=8, n_obs_steps=2, n_layer=3, n_head=4,
              n_emb=32, **VARIANTS[variant])
    ours = TransformerForDiffusion(p_drop_emb=0.0, p_drop_attn=0.0, **kw).eval()
    ref = ReferenceDPT(**kw).eval()
    return ours, ref, kw


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_state_dict_matches_reference_and_outputs_agree(variant):
    ours, ref, kw = _pair(variant)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert sorted(ours_sd) == sorted(ref_sd)
    for k in ours_sd:
        assert ours_sd[k].shape == ref_sd[k].shape, k
    # Random non-trivial weights, loaded into both through the state dict (the round trip).
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(v.shape, generator=g) * 0.2 if k not in ("mask", "memory_mask") else v
          for k, v in ours_sd.items()}
    ref.load_state_dict(sd)
    ours.load_state_dict(ref.state_dict())
    sample = torch.randn(3, 8, 4, generator=g)
    cond = torch.randn(3, 2, 10, generator=g) if kw["cond_dim"] else None
    for t in (0, 17, 99):
        with torch.no_grad():
            torch.testing.assert_close(ours(sample, t, cond), ref(sample, t, cond),
                                       rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # tensor timesteps of every accepted form
        a = ours(sample, torch.tensor(5), cond)
        b = ours(sample, torch.tensor([5, 5, 5]), cond)
        c = ours(sample, 5, cond)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_causal_and_memory_mask_values():
    m = TransformerForDiffusion(input_dim=2, output_dim=2, horizon=4, n_obs_steps=2, cond_dim=3,
                                n_layer=1, n_head=1, n_emb=8, causal_attn=True)
    inf = float("-inf")
    expected_mask = torch.tensor([[0, inf, inf, inf], [0, 0, inf, inf], [0, 0, 0, inf],
                                  [0, 0, 0, 0]])
    assert torch.equal(m.mask, expected_mask)
    # memory tokens are [time, obs_1, obs_2]: action t sees memory s when t >= s - 1
    expected_memory = torch.tensor([[0, 0, inf], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert torch.equal(m.memory_mask, expected_memory)
    assert "mask" in m.state_dict() and "memory_mask" in m.state_dict()
    non_causal = TransformerForDiffusion(input_dim=2, output_dim=2, horizon=4, n_obs_steps=2,
                                         cond_dim=3, n_layer=1, n_head=1, n_emb=8)
    assert "mask" not in non_causal.state_dict()


def test_paper_configuration_has_24_blocks_and_expected_size():
    m = TransformerForDiffusion(input_dim=3, output_dim=3, horizon=16, n_obs_steps=2,
                                cond_dim=7, n_layer=8, n_head=4, n_emb=256, causal_attn=True)
    n = sum(p.numel() for p in m.parameters())
    assert 8.5e6 < n < 9.5e6  # "~9M parameters" for the paper configuration
    assert len(m.decoder.layers) == 8


def test_obs_as_cond_without_time_as_cond_is_refused():
    with pytest.raises(ValueError, match="time_as_cond"):
        TransformerForDiffusion(input_dim=2, output_dim=2, horizon=4, cond_dim=3,
                                time_as_cond=False)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prepare_for_all_steps_then_step_equals_forward_per_step(variant):
    """The sampler's interface: one prepare for K timesteps, then step k = forward at t_k."""
    ours, _, kw = _pair(variant)
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(3, 8, 4, generator=g)
    cond = torch.randn(3, 2, 10, generator=g) if kw["cond_dim"] else None
    timesteps = torch.tensor([90, 45, 3])
    with torch.no_grad():
        context = ours.prepare(cond, timesteps)
        for k, t in enumerate(timesteps):
            torch.testing.assert_close(ours.step(sample, k, context), ours(sample, t, cond),
                                       rtol=1e-5, atol=1e-6)


def test_a_transformer_condition_encoder_takes_one_time_token_at_a_time():
    ours, _, _ = _pair("cond_layers")
    with pytest.raises(ValueError, match="got 3 time tokens; a transformer condition encoder "
                                         "mixes its tokens"):
        ours.encode_condition(torch.zeros(2, 3, 32), torch.zeros(2, 2, 10))
