"""DP-T against a reference on torch's own nn.Transformer* layers, built as Chi et al. do."""

import pytest
import torch
from helpers import ReferenceDPT

from bac_ros.models.dpt import TransformerForDiffusion

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
