"""The RDT-style VLA head: its layout, RDT's token masks, exact caching under the engine,
few-step samplers, the VLA policy (backbone + head) with a compiled schedule, and the policy
node serving it."""

import numpy as np
import pytest
import torch

from bac_ros.cache.adapters import GenericAdapter, RDTAdapter, adapter_for
from bac_ros.cache.engine import DenoisingEngine
from bac_ros.cache.plans import uniform_plan
from bac_ros.cache.schedule import Schedule, ScheduleError
from bac_ros.cache.schedulers import build_scheduler
from bac_ros.models.backbone import TinyBackbone, build_backbone
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.models.rdt import RDT_1B, RDTHead
from bac_ros.policy.build import FLOW_SCHEDULER, RDT_SCHEDULER, new_rdt_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.observations import random_observations
from bac_ros.policy.policy import ObservationError, Policy
from bac_ros.policy.vla import VLAPolicy

K = 6
SHAPE = (2, 8, 4)
HEAD = dict(state_dim=4, horizon=8, hidden_size=32, depth=4, num_heads=4, lang_token_dim=16,
            img_token_dim=12, max_lang_cond_len=6, img_cond_len=10, action_dims=3)


def _head(seed=0):
    torch.manual_seed(seed)
    return RDTHead(**HEAD).eval()


# Sample 1 of the batch: 2 of the 5 language tokens and 7 of the 10 image tokens are real.
LANG_MASK = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
IMG_MASK = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])


def _cond(head, seed=1, masked=False):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lang, img = torch.randn(2, 5, 16, generator=g), torch.randn(2, 10, 12, generator=g)
        masks = (LANG_MASK, IMG_MASK) if masked else (None, None)
        return head.condition(lang, img, torch.randn(2, 4, generator=g),
                              torch.tensor([10.0, 25.0]), *masks)


def _engine(head, sched=RDT_SCHEDULER, fast=True, adapter=None):
    return DenoisingEngine(head, build_scheduler(sched), K, adapter=adapter, fast=fast)


def test_head_equals_the_original_rdt_forward():
    """The packed condition + per-step forward is RDT's forward on the same inputs."""
    head = _head()
    g = torch.Generator().manual_seed(3)
    lang, img = torch.randn(2, 5, 16, generator=g), torch.randn(2, 10, 12, generator=g)
    state, sample = torch.randn(2, 4, generator=g), torch.randn(*SHAPE, generator=g)
    freq, t = torch.tensor([10.0, 25.0]), torch.tensor(700)
    with torch.no_grad():
        mask = head.action_mask.expand(2, 1, 4)
        x = head.state_adaptor(torch.cat([torch.cat([state[:, None], sample], 1),
                                          torch.cat([mask, mask.expand(2, 8, 4)], 1)], -1))
        want = head.model(x, freq, t, head.lang_adaptor(lang), head.img_adaptor(img))
        got = head(sample, t, head.condition(lang, img, state, freq))
    assert got.shape == SHAPE
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert head.action_mask.tolist() == [1, 1, 1, 0]


def _rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def _public_attention(q, kv, q_norm, k_norm, proj, heads, mask):
    """Attention as RDT's modules compute it on their non-fused path from projected queries
    (B, N, C) and keys/values (B, L, 2C): per-head RMS-normalised q and k, scaled scores, keys
    whose mask entry is False filled with -inf, softmax."""
    B, N, C = q.shape
    d = C // heads
    q = q.reshape(B, N, heads, d).transpose(1, 2)
    k, v = kv.reshape(B, kv.shape[1], 2, heads, d).permute(2, 0, 3, 1, 4)
    scores = (_rms(q, q_norm.weight) * d ** -0.5) @ _rms(k, k_norm.weight).transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(B, 1, 1, -1).expand(-1, -1, N, -1),
                                    float("-inf"))
    return proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


def _public_rdt(dit, x, freq, t, lang_c, img_c, lang_mask=None, img_mask=None):
    """An independent reading of the public RDT's ``RDT.forward``/``RDTBlock``: block i takes
    (lang_c, lang_mask) when i is even and (img_c, img_mask) when odd."""
    tok = torch.cat([dit.t_embedder(t).expand(x.shape[0], -1)[:, None],
                     dit.freq_embedder(freq)[:, None], x], 1) + dit.x_pos_embed
    conds = [(lang_c + dit.lang_cond_pos_embed[:, : lang_c.shape[1]], lang_mask),
             (img_c + dit.img_cond_pos_embed, img_mask)]
    E, H = HEAD["hidden_size"], HEAD["num_heads"]
    for i, b in enumerate(dit.blocks):
        c, mask = conds[i % 2]
        sa, ca = b.attn, b.cross_attn
        qkv = sa.qkv(_rms(tok, b.norm1.weight))
        tok = tok + _public_attention(qkv[..., :E], qkv[..., E:], sa.q_norm, sa.k_norm,
                                      sa.proj, H, None)
        tok = tok + _public_attention(ca.q(_rms(tok, b.norm2.weight)), ca.kv(c), ca.q_norm,
                                      ca.k_norm, ca.proj, H, mask)
        tok = tok + b.ffn(_rms(tok, b.norm3.weight))
    return dit.final_layer(tok)[:, -dit.horizon:]


def _dit_inputs(head, seed=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, 32, generator=g)
    lang_c, img_c = torch.randn(2, 5, 32, generator=g), torch.randn(2, 10, 32, generator=g)
    return x, torch.tensor([10.0, 25.0]), torch.tensor([700]), lang_c, img_c


def test_masks_match_an_independent_reading_of_the_public_module():
    head = _head()
    args = _dit_inputs(head)
    with torch.no_grad():
        for masks in ((None, None), (LANG_MASK, None), (LANG_MASK, IMG_MASK)):
            want = _public_rdt(head.model, *args, *masks)
            got = head.model(*args, *masks)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # The masks really change sample 1 only (its padded tokens are excluded).
        plain = head.model(*args)
    assert torch.equal(got[0], plain[0]) and (got[1] - plain[1]).abs().max() > 1e-3


def test_padded_batch_with_lang_mask_equals_each_sample_unpadded():
    head = _head()
    g = torch.Generator().manual_seed(9)
    lang, img = torch.randn(2, 5, 16, generator=g), torch.randn(2, 10, 12, generator=g)
    state, sample = torch.randn(2, 4, generator=g), torch.randn(*SHAPE, generator=g)
    freq, t, lengths = torch.tensor([10.0, 25.0]), torch.tensor(300), LANG_MASK.sum(1).tolist()
    with torch.no_grad():
        got = head(sample, t, head.condition(lang, img, state, freq, lang_mask=LANG_MASK))
        unmasked = head(sample, t, head.condition(lang, img, state, freq))
        for i, n in enumerate(lengths):
            alone = head(sample[i:i + 1], t, head.condition(lang[i:i + 1, :n], img[i:i + 1],
                                                            state[i:i + 1], freq[i:i + 1]))
            torch.testing.assert_close(got[i:i + 1], alone, rtol=0, atol=1e-5)
    assert (unmasked[1] - got[1]).abs().max() > 1e-3  # without the mask the padding leaks in


def test_padded_batch_with_img_mask_equals_each_sample_without_the_masked_tokens():
    head = _head()
    g = torch.Generator().manual_seed(10)
    lang, img = torch.randn(2, 5, 16, generator=g), torch.randn(2, 10, 12, generator=g)
    state, sample = torch.randn(2, 4, generator=g), torch.randn(*SHAPE, generator=g)
    freq, t = torch.tensor([10.0, 25.0]), torch.tensor(300)
    with torch.no_grad():
        cond = head.condition(lang, img, state, freq, img_mask=IMG_MASK)
        got = head(sample, t, cond)
        front, lang_t, img_t, lang_mask, img_mask = head.split_condition(cond)
        assert lang_mask.all() and torch.equal(img_mask, IMG_MASK)
        h = torch.cat([head.model.t_embedder(t.reshape(1).expand(2))[:, None], front,
                       head.adapt_actions(sample)], 1) + head.model.x_pos_embed
        for i in range(2):  # the image tokens (already position-embedded) minus the masked ones
            alone = head.model.trunk(h[i:i + 1], lang_t[i:i + 1], img_t[i:i + 1, IMG_MASK[i]])
            torch.testing.assert_close(got[i:i + 1], alone, rtol=0, atol=1e-5)
        img[1, 7:] = 1e3  # whatever the masked tokens hold, sample 1 does not see it
        torch.testing.assert_close(head(sample, t, head.condition(lang, img, state, freq,
                                                                  img_mask=IMG_MASK)), got)


def test_all_true_masks_equal_no_mask_exactly():
    head = _head()
    ones_l, ones_i = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 10, dtype=torch.bool)
    g = torch.Generator().manual_seed(11)
    lang, img = torch.randn(2, 5, 16, generator=g), torch.randn(2, 10, 12, generator=g)
    state, freq = torch.randn(2, 4, generator=g), torch.tensor([10.0, 25.0])
    with torch.no_grad():
        assert torch.equal(head.condition(lang, img, state, freq, ones_l, ones_i),
                           head.condition(lang, img, state, freq))
        # A padded language mask with an all-true image mask is the language mask alone.
        assert torch.equal(head.condition(lang, img, state, freq, LANG_MASK, ones_i),
                           head.condition(lang, img, state, freq, LANG_MASK))
        args = _dit_inputs(head)
        assert torch.equal(head.model(*args, ones_l, ones_i), head.model(*args))


def test_bad_masks_are_refused_with_one_sentence():
    head = _head()
    g = torch.Generator().manual_seed(12)
    lang, img = torch.randn(2, 5, 16, generator=g), torch.randn(2, 10, 12, generator=g)
    state, freq = torch.randn(2, 4, generator=g), torch.tensor([10.0, 25.0])
    bad = [(dict(lang_mask=LANG_MASK.float()),
            r"lang_mask must be a bool tensor of shape \(2, 5\) \(True = a real token\); "
            r"got torch.float32 \(2, 5\)"),
           (dict(lang_mask=LANG_MASK[:, :4]), r"got torch.bool \(2, 4\)"),
           (dict(lang_mask=[[True] * 5] * 2), "lang_mask must be a bool tensor.*; got list"),
           (dict(img_mask=IMG_MASK[:1]), r"img_mask must be a bool tensor of shape \(2, 10\)"),
           (dict(lang_mask=LANG_MASK & torch.tensor([[True], [False]])),
            "lang_mask marks no real token in sample 1; every sample needs at least one")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            head.condition(lang, img, state, freq, **kwargs)
    with pytest.raises(ValueError, match=r"img_mask must be a bool tensor of shape \(2, 10\)"):
        head.model(*_dit_inputs(head), img_mask=IMG_MASK.long())
    with pytest.raises(ValueError, match="packed condition has width 34; expected 32"):
        head(torch.zeros(SHAPE), 1, torch.zeros(2, 17, 34))


def test_1b_layout_builds_on_meta_with_rdt_key_names():
    with torch.device("meta"):
        head = RDTHead(**RDT_1B)
    sd = head.state_dict()
    assert len(sd) == 618 and all(v.is_meta for v in sd.values())
    dit = sum(v.numel() for k, v in sd.items() if k.startswith("model."))
    assert dit == 1_200_256_128 and sum(v.numel() for v in sd.values()) == 1_228_319_872
    shapes = {"model.blocks.27.attn.qkv.weight": (6144, 2048),
              "model.blocks.0.attn.q_norm.weight": (64,),
              "model.blocks.0.cross_attn.kv.weight": (4096, 2048),
              "model.blocks.0.ffn.fc1.weight": (2048, 2048),
              "model.x_pos_embed": (1, 67, 2048), "model.lang_cond_pos_embed": (1, 1024, 2048),
              "model.img_cond_pos_embed": (1, 4374, 2048),
              "model.t_embedder.mlp.0.weight": (2048, 256),
              "model.freq_embedder.mlp.2.weight": (2048, 2048),
              "model.final_layer.ffn_final.fc2.weight": (128, 2048),
              "lang_adaptor.0.weight": (2048, 4096), "img_adaptor.2.weight": (2048, 2048),
              "state_adaptor.0.weight": (2048, 256), "state_adaptor.4.weight": (2048, 2048)}
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(RDTAdapter().bind(head)) == 84


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("sched", [RDT_SCHEDULER, FLOW_SCHEDULER], ids=["dpm", "flow"])
@pytest.mark.parametrize("fast", [False, True])
def test_all_update_plan_equals_uncached_bit_for_bit(sched, fast, masked):
    head = _head()
    eng = _engine(head, sched, fast)
    assert isinstance(eng.adapter, RDTAdapter) and len(eng.blocks) == 12
    cond = _cond(head, masked=masked)
    assert cond.shape[-1] == 32 + masked  # the mask channel travels with the condition
    plain = eng.sample(cond, SHAPE, torch.Generator().manual_seed(4))
    cached = eng.sample(cond, SHAPE, torch.Generator().manual_seed(4),
                        plan=np.ones((K, 12), bool))
    assert torch.equal(plain, cached) and torch.isfinite(plain).all()
    again = eng.sample(cond, SHAPE, torch.Generator().manual_seed(4))
    assert torch.equal(plain, again)  # a multistep solver's state is reset per sample


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_masked_condition_through_captured_cuda_graphs():
    """The mask channel is data in the captured condition buffer: replays read new masks."""
    cond = _cond(_head(), masked=True)
    ref = _engine(_head()).sample(cond, SHAPE, torch.Generator().manual_seed(4))
    eager = DenoisingEngine(_head().cuda(), build_scheduler(RDT_SCHEDULER), K, cuda_graphs=False)
    graphed = _engine(_head().cuda())
    for plan in (None, np.ones((K, 12), bool)):
        a = eager.sample(cond, SHAPE, torch.Generator().manual_seed(4), plan=plan)
        for _ in range(2):  # capture, then a replay
            b = graphed.sample(cond, SHAPE, torch.Generator().manual_seed(4), plan=plan)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.cpu(), ref, rtol=1e-3, atol=1e-3)
    unmasked = _cond(_head())
    unmasked = torch.cat([unmasked, torch.ones_like(unmasked[..., :1])], -1)  # all-true channel
    other = graphed.sample(unmasked, SHAPE, torch.Generator().manual_seed(4))
    assert not torch.allclose(other[1], b[1])  # the replay read the new mask


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
def test_fast_path_matches_reference_and_generic_declaration(masked):
    head = _head()
    cond = _cond(head, masked=masked)
    ref = _engine(head, fast=False).sample(cond, SHAPE, torch.Generator().manual_seed(5))
    fast = _engine(head, fast=True).sample(cond, SHAPE, torch.Generator().manual_seed(5))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    # The same blocks declared as data through the generic adapter: the same numbers.
    declared = [(f"model.blocks.{l}", m, l, kind, f"model.blocks.{l}.{label}")
                for l in range(4) for kind, m, label in RDTAdapter.KINDS]
    generic = _engine(head, fast=False, adapter=GenericAdapter(declared))
    assert [b.name for b in generic.blocks] == [b.block.name for b in RDTAdapter().bind(head)]
    plan = uniform_plan(K, 12, 2)
    a = generic.sample(cond, SHAPE, torch.Generator().manual_seed(5), plan=plan)
    b = _engine(head, fast=False).sample(cond, SHAPE, torch.Generator().manual_seed(5), plan=plan)
    assert torch.equal(a, b)


def test_prepare_carries_the_token_masks_and_step_equals_forward():
    """The masks travel packed in the condition; prepare unpacks them into the context, each
    block with its condition's mask, and step k under the K prepared timesteps is forward."""
    head = _head()
    cond = _cond(head, masked=True)
    timesteps = torch.tensor([900, 500, 20])
    sample = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        context = head.prepare(cond, timesteps)
        masks = [mask for _, _, mask in context.blocks]
        assert all(torch.equal(m, LANG_MASK if i % 2 == 0 else IMG_MASK)
                   for i, m in enumerate(masks))
        for k, t in enumerate(timesteps):
            torch.testing.assert_close(head.step(sample, k, context), head(sample, t, cond),
                                       rtol=1e-5, atol=1e-6)
        assert all(m is None for _, _, m in head.prepare(_cond(head), timesteps).blocks)


def _naive_uniform(head, cond, every, seed):
    """Cached DPM-Solver sampling written out by hand from the head's public pieces."""
    s = build_scheduler(RDT_SCHEDULER)
    s.set_timesteps(K)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    front, lang, img, lang_mask, img_mask = head.split_condition(cond)
    store = {}
    with torch.no_grad():
        for k, t in enumerate(s.timesteps):
            t_tok = head.model.t_embedder(t.reshape(1).expand(2))[:, None]
            h = torch.cat([t_tok, front, head.adapt_actions(x)], 1) + head.model.x_pos_embed
            for l, block in enumerate(head.model.blocks):
                c, m = (lang, lang_mask) if l % 2 == 0 else (img, img_mask)
                for kind in ("sa", "ca", "ffn"):
                    if k % every == 0:
                        store[(l, kind)] = (block.sa_branch(h) if kind == "sa"
                                            else block.ca_branch(h, c, mask=m) if kind == "ca"
                                            else block.ffn_branch(h))
                    h = h + store[(l, kind)]
            out = head.model.final_layer(h)[:, -8:]
            x = s.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
def test_uniform_plan_equals_naive_reimplementation(masked):
    head = _head()
    cond = _cond(head, masked=masked)
    plan = uniform_plan(K, 12, 3)
    eng = _engine(head, fast=False)
    eng.cache.calls[:] = 0
    out = eng.sample(cond, SHAPE, torch.Generator().manual_seed(6), plan=plan)
    assert eng.cache.calls.tolist() == [2] * 12  # steps 0 and 3 only
    ref = _naive_uniform(_head(), cond, 3, 6)  # same weights, no hooks attached
    assert torch.equal(out, ref)
    full = eng.sample(cond, SHAPE, torch.Generator().manual_seed(6))
    assert not torch.allclose(out, full, atol=1e-4)  # caching really changed the computation


def test_flow_matching_is_euler_integration_of_the_velocity():
    head = _head()
    cond = _cond(head)
    eng = _engine(head, FLOW_SCHEDULER, fast=False)
    out = eng.sample(cond, SHAPE, torch.Generator().manual_seed(7))
    sigmas = torch.linspace(1.0, 1e-3, K).tolist() + [0.0]  # diffusers' default schedule
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for k in range(K):
            v = head(x, torch.tensor(sigmas[k] * 1000), cond)
            x = x + (sigmas[k + 1] - sigmas[k]) * v
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_block_names_and_flops_follow_the_alternating_condition():
    head = _head()
    eng = _engine(head)
    assert [b.name for b in eng.blocks][:3] == ["model.blocks.0.attn", "model.blocks.0.cross_attn",
                                                "model.blocks.0.ffn"]
    assert adapter_for(head).__class__ is RDTAdapter
    flops, overhead = eng.measure_flops(_cond(head)[:1], (1, 8, 4))
    T, E = 8 + 3, 32
    assert flops[2] == 2 * (2 * T * E * E)  # fc1, fc2 (hidden = width in RDT)
    # Cross-attention queries the 5 language tokens in even blocks and 10 image tokens in odd
    # ones; keys/values are per observation (fast runner), so only the scores differ.
    assert flops[4] - flops[1] == 4 * T * (10 - 5) * E
    assert overhead > 0


def _normalizer():
    norm = LinearNormalizer()
    norm.fit_image_range("image")
    norm.fit_limits("joints", torch.rand(64, 3) * 2 - 1)
    norm.fit_limits("action", torch.rand(64, 3) * 2 - 1)
    return norm


OBS = {"image": {"shape": [3, 16, 16], "type": "rgb"}, "joints": {"shape": [3], "type": "low_dim"}}
SMALL_HEAD = dict(depth=4, hidden_size=32, num_heads=4, state_dim=5)


@pytest.fixture(scope="module")
def vla_ckpt(tmp_path_factory):
    ckpt = new_rdt_checkpoint(OBS, 3, _normalizer(), SMALL_HEAD, horizon=8, n_action_steps=4,
                              num_inference_steps=K, instruction="pick up the red block")
    return save_native(ckpt, tmp_path_factory.mktemp("vla") / "rdt")


def test_vla_policy_predicts_and_compiles_a_schedule(vla_ckpt, tmp_path):
    policy = Policy.from_pretrained(vla_ckpt, device="cpu")
    assert isinstance(policy, VLAPolicy) and policy.sampler == {
        "type": "DPMSolverMultistepScheduler", "num_inference_steps": K}
    obs = random_observations(policy, 5, seed=0)
    a = policy.predict(obs[0], seed=0)
    assert a.shape == (4, 3) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, policy.predict(obs[0], seed=0))
    b = policy.predict(dict(obs[0], instruction="push the blue cup"), seed=0)
    assert np.abs(a - b).max() > 1e-4  # the instruction reaches the head
    batched = policy.predict({k: np.stack([o[k] for o in obs[:2]]) for k in OBS}, seed=0,
                             batched=True)
    assert batched.shape == (2, 4, 3)

    result = policy.profile(obs, batch_size=2)
    assert result.num_steps == K and result.mean["cosine"].shape == (12, K, K)
    sched = policy.compile_schedule(result, budget=3, top_k=2, source="random observations")
    path = sched.save(tmp_path / "rdt.yaml")
    policy.set_schedule(path)
    assert policy.schedule_id == sched.id and policy.plan.sum() < policy.plan.size
    assert all(s[0] == 0 and s[-1] == K - 1 for s in sched.steps.values())
    cached = policy.predict(obs[0], seed=0)
    assert np.isfinite(cached).all() and np.abs(cached - a).max() > 0
    # Theoretical speedup: above 1, below the block-only ratio (the rest runs at every step).
    assert 1.1 < policy.flop_ratio(policy.plan) < policy.plan.size / policy.plan.sum()

    foreign = Schedule.load(path)
    foreign.fingerprint = "0" * 16
    with pytest.raises(ScheduleError, match="compiled for model 0000"):
        policy.set_schedule(foreign)
    assert policy.schedule_id == sched.id  # a refused schedule changes nothing


def test_vla_bad_inputs_are_refused_with_one_sentence(vla_ckpt):
    policy = Policy.from_pretrained(vla_ckpt, device="cpu")
    obs = random_observations(policy, 1)[0]
    with pytest.raises(ObservationError, match="'instruction' must be 1 string"):
        policy.predict(dict(obs, instruction=3))
    with pytest.raises(ObservationError, match="missing"):
        policy.predict({"image": obs["image"]})
    policy.set_backbone(lambda images, texts: (torch.zeros(1, 4, 7), torch.zeros(1, 8, 64)))
    with pytest.raises(ValueError, match=r"backbone returned tokens \(1, 4, 7\)"):
        policy.predict(obs)
    policy.set_backbone(lambda images, texts: (torch.zeros(1, 4, 64), torch.zeros(1, 9, 64)))
    with pytest.raises(ValueError, match="got 9 image tokens; the head expects img_cond_len 8"):
        policy.predict(obs)
    policy.set_backbone(lambda images, texts: (torch.zeros(1, 4, 64), torch.zeros(1, 8, 64),
                                               torch.ones(1, 4)))
    with pytest.raises(ValueError, match=r"lang_mask must be a bool tensor of shape \(1, 4\)"):
        policy.predict(obs)
    policy.set_backbone(lambda images, texts: (torch.zeros(1, 4, 64),) * 5)
    with pytest.raises(ValueError, match=r"backbone returned 5 values; expected \(lang, img"):
        policy.predict(obs)
    with pytest.raises(ValueError, match="action_dims is 6"):
        RDTHead(state_dim=5, depth=1, hidden_size=8, num_heads=2, action_dims=6)
    with pytest.raises(ValueError, match="unknown condition adapter 'mlpx'"):
        RDTHead(depth=1, hidden_size=8, num_heads=2, lang_adaptor="mlpx")
    with pytest.raises(ValueError, match="expected 'module:function'"):
        build_backbone({"type": "callable", "factory": "nope"})


def test_tiny_backbone_masks_its_padding_and_ends_every_instruction(vla_ckpt):
    policy = Policy.from_pretrained(vla_ckpt, device="cpu")
    bb = policy.backbone
    assert bb.token_ids("pick up")[2:] == [TinyBackbone.END] + [0] * 5
    lang, img, mask = bb({"image": torch.zeros(2, 2, 3, 16, 16)}, ["pick up", ""])
    assert lang.shape == (2, 8, 64) and img.shape == (2, 8, 64)
    assert mask.tolist() == [[True] * 3 + [False] * 5, [True] + [False] * 7]
    obs = random_observations(policy, 1)[0]
    assert np.isfinite(policy.predict(dict(obs, instruction=""), seed=0)).all()
    with pytest.raises(ValueError, match="lang_tokens is 1 and vocab_size 1024; expected"):
        TinyBackbone(["image"], (3, 16, 16), 3, lang_tokens=1)


def test_vla_passes_the_backbone_masks_so_padding_changes_nothing(vla_ckpt):
    """A backbone that pads a batch of instructions to its longest (as a tokenizer does): with
    its mask, a padded sample acts as it does unpadded (same batch shape, so the same noise)."""
    policy = Policy.from_pretrained(vla_ckpt, device="cpu")
    tiny = policy.backbone

    def padded_to_longest(images, texts, with_mask=True):
        lang, img, mask = tiny(images, texts)
        n = int(mask.sum(1).max())
        return (lang[:, :n], img, mask[:, :n]) if with_mask else (lang[:, :n], img)

    obs = random_observations(policy, 2, seed=3)
    batch = {k: np.stack([o[k] for o in obs]) for k in OBS}
    texts = ["push", "pick up the red block"]
    policy.set_backbone(padded_to_longest)
    unpadded = policy.predict(dict(batch, instruction=texts[:1] * 2), seed=0, batched=True)
    padded = policy.predict(dict(batch, instruction=texts), seed=0, batched=True)  # 2 -> 6 tokens
    np.testing.assert_allclose(padded[0], unpadded[0], rtol=0, atol=1e-5)
    policy.set_backbone(lambda images, texts: padded_to_longest(images, texts, False))
    leaky = policy.predict(dict(batch, instruction=texts), seed=0, batched=True)
    assert np.abs(leaky[0] - unpadded[0]).max() > 1e-4


def test_a_backbone_attaches_by_factory_name(vla_ckpt):
    """What a robot does with a real VLM: name its factory in the config (here the tiny one)."""
    policy = Policy.from_pretrained(vla_ckpt, device="cpu")
    cfg = policy.config["backbone"]
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    bb = build_backbone({"type": "callable", "factory": "bac_ros.models.backbone:TinyBackbone",
                         "kwargs": kwargs})
    assert isinstance(bb, TinyBackbone)
    bb.load_state_dict(policy.backbone.state_dict())
    obs = random_observations(policy, 1)[0]
    a = policy.predict(obs, seed=1)
    policy.set_backbone(bb)
    np.testing.assert_array_equal(policy.predict(obs, seed=1), a)
    assert bb.token_ids("Pick UP, pick!")[:3] == bb.token_ids("pick up pick")[:3]


@pytest.mark.ros
def test_policy_node_serves_the_vla_and_follows_the_instruction_topic(vla_ckpt):
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from ros_helpers import spin_until, start_policy_node, stop_policy_node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from bac_ros.msg import ActionChunk

    rclpy.init()
    node, executor, thread = start_policy_node({"checkpoint": str(vla_ckpt), "device": "cpu",
                                                "instruction": "stack the cups", "replan_steps": 1})
    client = rclpy.create_node("vla_client")
    chunks = []
    client.create_subscription(ActionChunk, "action_chunk", chunks.append, 10)
    img_pub = client.create_publisher(Image, "image", qos_profile_sensor_data)
    js_pub = client.create_publisher(JointState, "joint_states", 10)
    text_pub = client.create_publisher(String, "instruction", 10)
    local = rclpy.executors.SingleThreadedExecutor()
    local.add_node(client)
    rng = np.random.default_rng(0)
    try:
        assert node.policy.instruction == "stack the cups"  # the parameter beats the default
        assert spin_until(local, lambda: img_pub.get_subscription_count() > 0
                          and text_pub.get_subscription_count() > 0, 10)
        text_pub.publish(String(data="open the drawer"))
        t0 = client.get_clock().now()
        for i in range(6):
            stamp = (t0 + rclpy.duration.Duration(seconds=0.1 * i)).to_msg()
            js = JointState(name=["joint1", "joint2", "joint3"], position=[0.1, -0.2, 0.3])
            js.header.stamp = stamp
            js_pub.publish(js)
            data = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            img = Image(height=16, width=16, encoding="rgb8", step=48, data=data.tobytes())
            img.header.stamp = stamp
            img_pub.publish(img)
            spin_until(local, lambda: False, timeout=0.1)
        assert spin_until(local, lambda: len(chunks) >= 2, 30)
        assert spin_until(local, lambda: node.policy.instruction == "open the drawer", 5)
    finally:
        stop_policy_node(node, executor, thread)
        rclpy.try_shutdown()
    for c in chunks:  # chunk_actions -1 (default): the head's whole 8-action horizon
        assert (c.horizon, c.action_dim) == (8, 3) and len(c.actions) == 24
        assert np.isfinite(c.actions).all() and c.inference_time > 0
