"""Profiling a policy into a schedule file, loading it back, and every refusal."""

import os

import numpy as np
import pytest
import torch
import yaml
from helpers import SMALL

from bac_ros.cache.schedule import Schedule, ScheduleError
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.policy import Policy


def _policy_dir(tmp_path, seed=0, K=20, name="p"):
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.randn(64, 4))
    norm.fit_limits("action", torch.randn(64, 2))
    ckpt = new_checkpoint({"state": {"shape": [4], "type": "low_dim"}}, 2, norm, horizon=8,
                          n_action_steps=4, model=SMALL, num_inference_steps=K, seed=seed)
    return save_native(ckpt, tmp_path / name)


def _observations(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"state": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(n)]


@pytest.fixture
def compiled(tmp_path):
    policy = Policy.from_pretrained(_policy_dir(tmp_path), device="cpu")
    result = policy.profile(_observations(5), batch_size=2)
    sched = policy.compile_schedule(result, budget=4, top_k=2, source="unit-test")
    return policy, sched, tmp_path


def test_schedule_round_trip_and_use(compiled):
    policy, sched, tmp_path = compiled
    path = sched.save(tmp_path / "s.yaml")
    loaded = Schedule.load(path)
    assert loaded.steps == sched.steps and loaded.id == sched.id
    assert loaded.fingerprint == policy.fingerprint
    data = yaml.safe_load(path.read_text())
    assert data["method"]["budget"] == 4 and len(data["method"]["bua_blocks"]) == 2
    assert data["provenance"]["observations"] == 5 and data["provenance"]["source"] == "unit-test"
    assert list(data["blocks"])[0] == "decoder.layers.0.self_attn"
    for steps in loaded.steps.values():
        assert steps[0] == 0 and steps[-1] == 19 and 5 <= len(steps) <= 20
    obs = _observations(1, seed=9)[0]
    full = policy.predict(obs, seed=1)
    policy.set_schedule(path)
    assert policy.schedule_id == sched.id
    cached = policy.predict(obs, seed=1)
    assert cached.shape == full.shape and not np.array_equal(cached, full)
    assert policy.flop_ratio(policy.plan) > 1.2
    policy.set_schedule(None)
    np.testing.assert_array_equal(policy.predict(obs, seed=1), full)


def test_schedule_for_another_model_is_refused(compiled):
    _, sched, tmp_path = compiled
    other = Policy.from_pretrained(_policy_dir(tmp_path, seed=1, name="other"), device="cpu")
    with pytest.raises(ScheduleError, match="compiled for model"):
        other.set_schedule(sched)
    assert other.plan is None  # nothing changed


def test_schedule_brings_its_sampler(compiled):
    policy, _, _ = compiled
    obs = _observations(3, seed=4)
    policy.set_sampler("DDIMScheduler", 10)
    result = policy.profile(obs, batch_size=3)
    ddim = policy.compile_schedule(result, budget=3, top_k=0)
    assert ddim.sampler == {"type": "DDIMScheduler", "num_inference_steps": 10}
    policy.use_trained_sampler()
    assert policy.sampler == {"type": "DDPMScheduler", "num_inference_steps": 20}
    policy.set_schedule(ddim)  # switches the policy to DDIM-10 under the schedule's plan
    assert policy.sampler == ddim.sampler and policy.plan.shape == (10, 6)
    cached = policy.predict(obs[0], seed=2)
    policy.set_schedule(None)
    assert policy.sampler == ddim.sampler and policy.plan is None
    assert not np.array_equal(policy.predict(obs[0], seed=2), cached)


def test_schedule_with_unknown_sampler_is_refused_and_changes_nothing(compiled):
    policy, sched, _ = compiled
    policy.set_schedule(sched)
    before = (policy.sampler, policy.schedule_id, policy.plan.copy())
    bad = Schedule(sched.fingerprint, {"type": "NoSuchScheduler", "num_inference_steps": 7},
                   sched.steps)
    with pytest.raises(ScheduleError, match="asks for sampler .*NoSuchScheduler"):
        policy.set_schedule(bad)
    assert (policy.sampler, policy.schedule_id) == before[:2]
    np.testing.assert_array_equal(policy.plan, before[2])


def test_unknown_block_names_are_refused(compiled):
    policy, sched, tmp_path = compiled
    sched.steps["decoder.layers.9.ffn"] = sched.steps.pop("decoder.layers.1.ffn")
    with pytest.raises(ScheduleError, match="unknown \\['decoder.layers.9.ffn'\\]"):
        policy.set_schedule(sched)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(format="something/else"), "not a bac_ros schedule"),
    (lambda d: d.update(version=99), "format version 99"),
    (lambda d: d.pop("sampler"), "lacks a required field"),
    (lambda d: d["blocks"].update({"decoder.layers.0.ffn": [3, 5]}), "starting at 0"),
    (lambda d: d["blocks"].update({"decoder.layers.0.ffn": [0, 25]}), "below 20"),
])
def test_malformed_files_are_refused(compiled, edit, message):
    _, sched, tmp_path = compiled
    data = sched.to_dict()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ScheduleError, match=message):
        Schedule.load(path)


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ScheduleError, match="does not exist"):
        Schedule.load(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("blocks: [unclosed")
    with pytest.raises(ScheduleError, match="not valid YAML"):
        Schedule.load(tmp_path / "broken.yaml")


def test_save_is_atomic(compiled, monkeypatch):
    _, sched, tmp_path = compiled
    path = sched.save(tmp_path / "atomic.yaml")
    before = path.read_text()

    def crash(fd):
        raise OSError("disk unplugged")

    monkeypatch.setattr(os, "fsync", crash)
    sched.steps["decoder.layers.0.ffn"] = [0, 1]
    with pytest.raises(OSError, match="unplugged"):
        sched.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".atomic")] == []
