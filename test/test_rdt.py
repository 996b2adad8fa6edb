"""The RDT-style VLA head: its layout, exact caching under the engine, few-step samplers, the
VLA policy (backbone + head) with a compiled schedule, and the policy node serving it."""

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


def _cond(head, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lang, img = torch.randn(2, 5, 16, generator=g), torch.randn(2, 10, 12, generator=g)
        return head.condition(lang, img, torch.randn(2, 4, generator=g), torch.tensor([10.0, 25.0]))


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


@pytest.mark.parametrize("sched", [RDT_SCHEDULER, FLOW_SCHEDULER], ids=["dpm", "flow"])
@pytest.mark.parametrize("fast", [False, True])
def test_all_update_plan_equals_uncached_bit_for_bit(sched, fast):
    head = _head()
    eng = _engine(head, sched, fast)
    assert isinstance(eng.adapter, RDTAdapter) and len(eng.blocks) == 12
    cond = _cond(head)
    plain = eng.sample(cond, SHAPE, torch.Generator().manual_seed(4))
    cached = eng.sample(cond, SHAPE, torch.Generator().manual_seed(4),
                        plan=np.ones((K, 12), bool))
    assert torch.equal(plain, cached) and torch.isfinite(plain).all()
    again = eng.sample(cond, SHAPE, torch.Generator().manual_seed(4))
    assert torch.equal(plain, again)  # a multistep solver's state is reset per sample


def test_fast_path_matches_reference_and_generic_declaration():
    head = _head()
    cond = _cond(head)
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


def _naive_uniform(head, cond, every, seed):
    """Cached DPM-Solver sampling written out by hand from the head's public pieces."""
    s = build_scheduler(RDT_SCHEDULER)
    s.set_timesteps(K)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    front, lang, img = head.split_condition(cond)
    store = {}
    with torch.no_grad():
        for k, t in enumerate(s.timesteps):
            t_tok = head.model.t_embedder(t.reshape(1).expand(2))[:, None]
            h = torch.cat([t_tok, front, head.adapt_actions(x)], 1) + head.model.x_pos_embed
            for l, block in enumerate(head.model.blocks):
                c = lang if l % 2 == 0 else img
                for kind in ("sa", "ca", "ffn"):
                    if k % every == 0:
                        store[(l, kind)] = (block.sa_branch(h) if kind == "sa"
                                            else block.ca_branch(h, c) if kind == "ca"
                                            else block.ffn_branch(h))
                    h = h + store[(l, kind)]
            out = head.model.final_layer(h)[:, -8:]
            x = s.step(out, t, x).prev_sample
    return x


def test_uniform_plan_equals_naive_reimplementation():
    head = _head()
    cond = _cond(head)
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
    with pytest.raises(ValueError, match="action_dims is 6"):
        RDTHead(state_dim=5, depth=1, hidden_size=8, num_heads=2, action_dims=6)
    with pytest.raises(ValueError, match="unknown condition adapter 'mlpx'"):
        RDTHead(depth=1, hidden_size=8, num_heads=2, lang_adaptor="mlpx")
    with pytest.raises(ValueError, match="expected 'module:function'"):
        build_backbone({"type": "callable", "factory": "nope"})


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
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from test_nodes import _spin, _start, _stop

    from bac_ros.msg import ActionChunk

    rclpy.init()
    node, executor, thread = _start({"checkpoint": str(vla_ckpt), "device": "cpu",
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
        assert _spin(local, lambda: img_pub.get_subscription_count() > 0
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
            _spin(local, lambda: False, timeout=0.1)
        assert _spin(local, lambda: len(chunks) >= 2, 30)
        assert _spin(local, lambda: node.policy.instruction == "open the drawer", 5)
    finally:
        _stop(node, executor, thread)
        rclpy.try_shutdown()
    for c in chunks:
        assert (c.horizon, c.action_dim) == (4, 3) and len(c.actions) == 12
        assert np.isfinite(c.actions).all() and c.inference_time > 0
