"""`bac tune`: search samplers and schedules, write the winner as a schedule the policy loads."""

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import SMALL

from bac_ros.cache.schedule import Schedule
from bac_ros.cli import main
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.fidelity import REFERENCE_SEED, SEARCH_SEED, draw_chunks, fidelity
from bac_ros.policy.observations import save_observations
from bac_ros.policy.policy import Policy
from bac_ros.policy.tune import every_step_schedule, profile_and_compile, refine, tune

SPACE = (("DDPMScheduler", (12,), (3, 6), ("per_block", "shared")),
         ("DDIMScheduler", (4,), (), ()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.randn(64, 4))
    norm.fit_limits("action", torch.randn(64, 2))
    ckpt = new_checkpoint({"state": {"shape": [4], "type": "low_dim"}}, 2, norm, horizon=8,
                          n_action_steps=4, model=SMALL, num_inference_steps=12)
    path = save_native(ckpt, tmp / "p")
    rng = np.random.default_rng(0)
    obs = [{"state": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(6)]
    return path, obs, tmp


def test_tune_scores_every_candidate_and_picks_the_lowest_energy(setup):
    path, obs, _ = setup
    policy = Policy.from_pretrained(path, device="cpu")
    best, cands, ref = tune(policy, obs, latency_ms=1e9, space=SPACE, fidelity_obs=3,
                            n_samples=4, repeats=1, log=lambda s: None)
    names = [c.name for c in cands]
    assert names == ["DDPM-12 + BAC S=3", "DDPM-12 + shared S=3", "DDPM-12 + BAC S=6",
                     "DDPM-12 + shared S=6", "DDIM-4"]
    assert all(c.scores for c in cands)  # an unlimited budget admits everyone
    lowest = min(cands, key=lambda c: c.scores["energy"])
    tied = [c for c in cands if c.scores["energy"] - lowest.scores["energy"]
            <= 2 * np.hypot(c.scores["energy_sem"], lowest.scores["energy_sem"])]
    assert best in tied and best.latency_ms == min(c.latency_ms for c in tied)
    # each candidate is scored under its own sampler and plan, not the reference's
    floor = ref["noise_floor"]["energy"]
    assert all(c.scores["energy"] != floor for c in cands if c.schedule.update_ratio() < 1)
    assert ref["noise_floor"]["energy"] <= max(c.scores["energy"] for c in cands)
    # the policy is back on its own sampler, and the winner loads with its sampler
    assert policy.sampler == {"type": "DDPMScheduler", "num_inference_steps": 12}
    policy.set_schedule(best.schedule)
    assert policy.sampler == best.schedule.sampler


def test_an_impossible_budget_is_one_clear_error(setup):
    path, obs, _ = setup
    policy = Policy.from_pretrained(path, device="cpu")
    with pytest.raises(ValueError, match="no candidate meets .* ms here .*loosen the budget"):
        tune(policy, obs, latency_ms=1e-6, space=SPACE, fidelity_obs=2, n_samples=2,
             repeats=1, log=lambda s: None)
    with pytest.raises(ValueError, match="exactly one budget"):
        tune(policy, obs, space=SPACE)


def test_profile_and_compile_makes_every_variant_from_one_profile(setup):
    """The one profile-and-compile step `bac tune` and the bench scripts share."""
    path, obs, _ = setup
    policy = Policy.from_pretrained(path, device="cpu")
    variants = [(3, 5, "per_block"), (3, 0, "per_block"), (6, 5, "shared"), (6, 5, "unified")]
    made = profile_and_compile(policy, obs, variants, source="unit test")
    assert made.profile.num_steps == 12 and made.profile_s > 0 and made.compile_s > 0
    assert [(s.method["budget"], s.method["allocation"]) for s in made.schedules] == \
        [(S, a) for S, _, a in variants]
    again = [policy.compile_schedule(made.profile, S, k, source="unit test", allocation=a)
             for S, k, a in variants]
    assert [s.steps for s in made.schedules] == [s.steps for s in again]
    assert all(s.provenance["source"] == "unit test" for s in made.schedules)


def test_every_step_schedule_is_full_compute_of_its_sampler(setup):
    path, obs, _ = setup
    policy = Policy.from_pretrained(path, device="cpu")
    policy.set_sampler("DDIMScheduler", 4)
    ref = policy.predict(obs[0], seed=3)
    sched = every_step_schedule(policy)
    policy.use_trained_sampler()
    policy.set_schedule(sched)
    assert policy.sampler["type"] == "DDIMScheduler" and policy.plan.all()
    np.testing.assert_array_equal(policy.predict(obs[0], seed=3), ref)


def test_bac_tune_cli_writes_a_loadable_schedule(setup, capsys):
    path, obs, tmp = setup
    save_observations(tmp / "obs.npz", obs)
    out, report = tmp / "tuned.yaml", tmp / "tune.json"
    rc = main(["tune", "--checkpoint", str(path), "--observations", str(tmp / "obs.npz"),
               "--latency-ms", "1e9", "--fidelity-obs", "2", "--samples", "3", "--device", "cpu",
               "--out", str(out), "--report", str(report), "--keep", str(tmp / "all")])
    assert rc == 0
    data = yaml.safe_load(out.read_text())
    assert data["method"]["name"] == "tuned" and data["method"]["candidate"]
    rows = json.loads(report.read_text())["candidates"]
    assert data["method"]["candidate"] == json.loads(report.read_text())["winner"]
    assert len(rows) > 10 and all("latency_ms" in r for r in rows)
    kept = sorted(p.name for p in (tmp / "all").glob("*.yaml"))
    assert len(kept) == sum(1 for r in rows if "energy" in r) and "ddim-5.yaml" in kept
    policy = Policy.from_pretrained(path, device="cpu", schedule=out)
    assert policy.sampler == data["sampler"]
    assert "wrote" in capsys.readouterr().out


def test_refine_never_spends_more_flops_and_only_keeps_improvements(setup):
    path, obs, _ = setup
    policy = Policy.from_pretrained(path, device="cpu")
    reference = draw_chunks(policy, obs[:3], 4, seed=REFERENCE_SEED)
    result = policy.profile(obs, batch_size=6)
    start = policy.compile_schedule(result, 3, 0)
    found = refine(policy, start, obs[:3], reference, 4, evaluations=12, seed=1,
                   log=lambda s: None)
    policy.set_schedule(start)
    flops_start = policy.flop_ratio(policy.plan)
    policy.set_schedule(found)
    assert policy.flop_ratio(policy.plan) >= flops_start - 1e-9  # never more FLOPs
    assert all(v[0] == 0 for v in found.steps.values())
    info = found.method["refined"]
    assert info["search_energy"] <= info["start_energy"]
    # the recorded search energy is what the kept plan scores on the search noise
    again = fidelity(reference, draw_chunks(policy, obs[:3], 4, seed=SEARCH_SEED))["energy"]
    assert again == pytest.approx(info["search_energy"])
    assert isinstance(Schedule.load(found.save(path.parent / "refined.yaml")), Schedule)


def test_tune_with_refinement_adds_a_searched_candidate(setup):
    path, obs, _ = setup
    policy = Policy.from_pretrained(path, device="cpu")
    _, cands, _ = tune(policy, obs, latency_ms=1e9, space=SPACE, fidelity_obs=3, n_samples=4,
                       repeats=1, refinements=5, log=lambda s: None)
    assert cands[-1].name.endswith(" + search") and cands[-1].scores
