"""Profiling a policy into a schedule file, loading it back, and every refusal."""

import hashlib
import os

import numpy as np
import pytest
import torch
import yaml
from helpers import SMALL

from bac_ros.cache.schedule import Schedule, ScheduleError, provenance
from bac_ros.cache.schedulers import DEFAULT_INFERENCE_STEPS
from bac_ros.cli import main
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.observations import load_observations, save_observations
from bac_ros.policy.policy import Policy
from bac_ros.sim.record import record_expert_bag


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


def test_a_config_without_a_step_count_samples_with_chi_et_al_default():
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.randn(64, 4))
    norm.fit_limits("action", torch.randn(64, 2))
    ckpt = new_checkpoint({"state": {"shape": [4], "type": "low_dim"}}, 2, norm, horizon=8,
                          n_action_steps=4, model=SMALL, num_inference_steps=7)
    del ckpt.config["policy"]["num_inference_steps"]
    policy = Policy(ckpt, device="cpu")
    assert policy.trained_steps == DEFAULT_INFERENCE_STEPS == 100
    assert policy.sampler == {"type": "DDPMScheduler", "num_inference_steps": 100}
    policy.set_sampler("DDIMScheduler", 10)
    assert policy.flop_ratio(None) == pytest.approx(10.0)  # against DDPM-100, all blocks
    policy.use_trained_sampler()
    assert policy.num_inference_steps == 100 and policy.flop_ratio(None) == 1.0


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


def test_profiled_schedule_records_file_name_and_hash_not_path(compiled):
    """The observations file by name and sha256 (what `sha256sum` prints): another machine's
    temporary path would identify nothing, the hash identifies the data wherever it is."""
    policy, _, tmp_path = compiled
    files = []
    for seed in (0, 1):
        (tmp_path / f"run{seed}").mkdir()
        path = save_observations(tmp_path / f"run{seed}" / "obs.npz", _observations(3, seed))
        result = policy.profile(load_observations(path), batch_size=3)
        saved = policy.compile_schedule(result, budget=4, top_k=2, source=path).save(
            tmp_path / f"run{seed}" / "s.yaml")
        files.append((path, saved))
    digests = set()
    for path, saved in files:
        prov = Schedule.load(saved).provenance
        assert prov["source"] == "obs.npz" and prov["observations"] == 3
        assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert str(tmp_path) not in saved.read_text()
        digests.add(prov["sha256"])
    assert len(digests) == 2  # same name, other content: told apart


def test_bag_profile_records_each_bag_file_by_hash(tmp_path):
    """`bac profile --bag`: the bag folder's name and the sha256 of each of its files."""
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.rand(64, 7) * 2 - 0.5)
    norm.fit_limits("action", torch.rand(64, 3))
    ckpt = save_native(new_checkpoint({"state": {"shape": [7], "type": "low_dim"}}, 3, norm,
                                      horizon=8, n_action_steps=4, model=SMALL,
                                      num_inference_steps=10), tmp_path / "lowdim")
    bag = record_expert_bag(tmp_path / "recorded" / "arm_bag", episodes=1, images=False)
    out = tmp_path / "s.yaml"
    assert main(["profile", "--checkpoint", str(ckpt), "--bag", str(bag), "--out", str(out),
                 "-S", "3", "-k", "2", "--device", "cpu"]) == 0
    prov = Schedule.load(out).provenance
    files = sorted(f for f in bag.rglob("*") if f.is_file())
    assert prov["source"] == "arm_bag" and "metadata.yaml" in prov["sha256"]
    assert prov["sha256"] == {f.relative_to(bag).as_posix():
                              hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert str(tmp_path) not in out.read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty folder"):
        provenance(tmp_path / "empty", 0)


def test_described_source_is_kept_as_given():
    prov = provenance("live topics via /bac_profiler", 4)
    assert prov["source"] == "live topics via /bac_profiler" and "sha256" not in prov
