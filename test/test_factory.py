"""The policy factory (class by checkpoint kind) and the policy's one active configuration
(``Policy.sampling``), swapped whole or not at all."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from helpers import SMALL

from bac_ros.cache.plans import uniform_plan
from bac_ros.cache.schedule import Schedule, ScheduleError
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint, new_rdt_checkpoint
from bac_ros.policy.checkpoint import KINDS, CheckpointError, save_native
from bac_ros.policy.factory import load_policy, policy_class, register_policy
from bac_ros.policy.policy import Policy
from bac_ros.policy.vla import VLAPolicy

IMAGE = {"image": {"shape": [3, 16, 16], "type": "rgb"},
         "joints": {"shape": [3], "type": "low_dim"}}
K = 6


def _normalizer(image: bool) -> LinearNormalizer:
    norm = LinearNormalizer()
    g = torch.Generator().manual_seed(0)
    if image:
        norm.fit_image_range("image")
        norm.fit_limits("joints", torch.randn(64, 3, generator=g))
    else:
        norm.fit_limits("state", torch.randn(64, 4, generator=g))
    norm.fit_limits("action", torch.randn(64, 3, generator=g))
    return norm


def _lowdim():
    return new_checkpoint({"state": {"shape": [4], "type": "low_dim"}}, 3, _normalizer(False),
                          horizon=8, n_action_steps=4, model=SMALL, num_inference_steps=K)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    image = new_checkpoint(IMAGE, 3, _normalizer(True), horizon=8, n_action_steps=4, model=SMALL,
                           obs_encoder={"type": "small_cnn"}, num_inference_steps=K)
    rdt = new_rdt_checkpoint(IMAGE, 3, _normalizer(True),
                             dict(depth=2, hidden_size=32, num_heads=4, state_dim=4), horizon=8,
                             n_action_steps=4, num_inference_steps=K)
    return {ckpt.config["policy"]["kind"]: save_native(ckpt, root / name)
            for name, ckpt in (("lowdim", _lowdim()), ("image", image), ("rdt", rdt))}


def _obs(policy: Policy, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (rng.integers(0, 256, (policy.n_obs_steps, *shape), dtype=np.uint8)
                if k in policy.cameras else
                rng.uniform(-1, 1, (policy.n_obs_steps, *shape)).astype(np.float32))
            for k, (shape, _) in policy.obs_spec.items()}


@pytest.mark.parametrize("kind,cls,images,instruction", [
    ("dpt_lowdim", Policy, False, False),
    ("dpt_image", Policy, True, False),
    ("rdt", VLAPolicy, True, True),
])
def test_factory_builds_the_class_of_the_checkpoint_kind(folders, kind, cls, images, instruction):
    policy = load_policy(folders[kind], device="cpu")
    assert type(policy) is cls and policy.config["policy"]["kind"] == kind
    assert policy.reads_images is images and policy.accepts_instruction is instruction
    assert policy.cameras == (["image"] if images else [])
    obs = _obs(policy)
    same = Policy.from_pretrained(folders[kind], device="cpu")  # the class's own entry point
    assert type(same) is cls
    np.testing.assert_array_equal(same.predict(obs, seed=3), policy.predict(obs, seed=3))


def test_factory_takes_a_loaded_checkpoint_and_its_schedule(folders):
    policy = load_policy(_lowdim(), device="cpu", schedule="uniform:2")
    assert type(policy) is Policy and policy.schedule_id == "uniform:2"
    np.testing.assert_array_equal(policy.plan, uniform_plan(K, 6, 2))


def test_every_checkpoint_kind_has_a_policy_class():
    assert {kind: policy_class(kind) for kind in KINDS} == {
        "dpt_lowdim": Policy, "dpt_image": Policy, "rdt": VLAPolicy}


def test_factory_refuses_an_unknown_kind_in_one_sentence():
    ckpt = _lowdim()
    ckpt.config["policy"]["kind"] = "act"
    with pytest.raises(CheckpointError) as err:
        load_policy(ckpt, device="cpu")
    assert str(err.value) == ("checkpoint policy kind 'act' has no policy class; expected one "
                              "of ['dpt_image', 'dpt_lowdim', 'rdt']")


def test_a_kind_is_registered_once():
    with pytest.raises(ValueError, match="policy kind 'rdt' is already built by VLAPolicy"):
        register_policy("rdt")(type("Other", (Policy,), {}))
    assert policy_class("rdt") is VLAPolicy


@pytest.fixture
def policy(folders):
    return load_policy(folders["dpt_lowdim"], device="cpu")


def _schedule(policy: Policy) -> Schedule:
    obs = [_obs(policy, seed) for seed in range(3)]
    return policy.compile_schedule(policy.profile(obs, batch_size=3), budget=3, top_k=2)


def test_a_refused_change_leaves_the_active_configuration_object_in_place(policy):
    sched = _schedule(policy)
    policy.set_schedule(sched)
    active = policy.sampling
    foreign = copy.deepcopy(sched)
    foreign.fingerprint = "0" * 16
    ddim = Schedule(sched.fingerprint, {"type": "DDIMScheduler", "num_inference_steps": 4},
                    {f"{n}_x": [0, 1] for n in sched.steps})  # builds DDIM-4, then refused
    refusals = [
        (ScheduleError, lambda: policy.set_schedule(foreign)),
        (ScheduleError, lambda: policy.set_schedule(ddim)),
        (ScheduleError, lambda: policy.set_schedule(Schedule(
            sched.fingerprint, {"type": "NoSuchScheduler", "num_inference_steps": 7},
            sched.steps))),
        (ValueError, lambda: policy.set_schedule("uniform:two")),
        (ValueError, lambda: policy.set_schedule("uniform:0")),
        (ValueError, lambda: policy.use_plan(np.ones((K + 1, 6), bool), "wrong K")),
        (ValueError, lambda: policy.use_plan(np.ones((K, 5), bool), "wrong blocks")),
        (ValueError, lambda: policy.use_plan(np.zeros((K, 6), bool), "no first step")),
        (ValueError, lambda: policy.use_plan(np.ones((K, 6), bool))),  # no label
    ]
    for error, change in refusals:
        with pytest.raises(error):
            change()
        assert policy.sampling is active
    assert policy.schedule is sched and policy.schedule_id == sched.id
    with pytest.raises(AttributeError):
        policy.plan = None  # read access only: changes go through the methods
    with pytest.raises(dataclasses.FrozenInstanceError):
        active.plan = None


def test_a_plan_in_use_is_stamped_with_its_label(policy):
    obs = _obs(policy, seed=5)
    policy.set_schedule("uniform:3")
    by_spec = policy.predict(obs, seed=1)
    policy.set_schedule(None)
    full = policy.predict(obs, seed=1)

    plan = uniform_plan(K, 6, 3)
    policy.use_plan(plan, "bench uniform")  # what the bench scripts do
    assert policy.schedule_id == "bench uniform" and policy.schedule is None
    np.testing.assert_array_equal(policy.plan, plan)
    np.testing.assert_array_equal(policy.predict(obs, seed=1), by_spec)
    plan[1:] = True  # the caller's array is not the policy's, which is read-only
    assert not policy.plan[1:].all() and not policy.plan.flags.writeable
    policy.use_plan(None)
    assert policy.schedule_id == "" and policy.plan is None
    np.testing.assert_array_equal(policy.predict(obs, seed=1), full)
