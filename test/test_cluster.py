"""Evaluation cells on Ray: sharded episodes give the single-process episodes and tables; dead
workers, other software, unreachable clusters and a missing Ray each give one sentence."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from helpers import SMALL

from bac_ros.cli import main
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.policy import Policy
from bac_ros.sim import cluster
from bac_ros.sim.arm import ArmEnv, ArmTaskConfig
from bac_ros.sim.evaluate import evaluate

TASK = ArmTaskConfig(max_steps=24)
TIMING = ("wall_s", "mean_latency_ms", "latency_ms")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As each worker runs here (two on two cores); two threads of a tiny model on a shared
    machine mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight DP-T on the arm task: actions spread over the joint range, so episodes
    differ (collisions at different steps, different final errors)."""
    g = torch.Generator().manual_seed(0)
    lo, hi = torch.tensor(TASK.joint_low), torch.tensor(TASK.joint_high)
    norm = LinearNormalizer()
    norm.fit_limits("action", lo + (hi - lo) * torch.rand(256, 3, generator=g))
    env = ArmEnv(TASK)
    states = []
    for seed in range(64):
        env.reset(seed)
        states.append(env.state())
    norm.fit_limits("state", torch.tensor(np.stack(states), dtype=torch.float32))
    ckpt = new_checkpoint({"state": {"shape": [7], "type": "low_dim"}}, 3, norm, horizon=8,
                          n_action_steps=4, model=SMALL, num_inference_steps=8)
    return save_native(ckpt, tmp_path_factory.mktemp("tiny") / "policy")


def _outcomes(report):
    return [(e["seed"], e["success"], e["collision"], e["steps"], e["chunks"])
            for e in report["per_episode"]]


def _same_episodes(a, b):
    """Same decisions, and final errors equal to float rounding (a batched matrix product may
    round differently for another batch size or thread count)."""
    assert _outcomes(a) == _outcomes(b)
    errors = [[e["final_error"] for e in r["per_episode"]] for r in (a, b)]
    np.testing.assert_allclose(errors[0], errors[1], rtol=0, atol=1e-6)
    return True


def _summary(report):
    return {k: v for k, v in report.items() if k not in (*TIMING, "per_episode", "fixed_latency")}


def test_a_rows_noise_is_its_own_generators_whatever_the_batch(tiny):
    policy = Policy.from_pretrained(tiny, device="cpu")
    engine = policy.engine
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    x5, steps5 = engine.draw_noise((5, 8, 3), gens(range(5)))
    x2, steps2 = engine.draw_noise((2, 8, 3), gens([3, 4]))
    x1, steps1 = engine.draw_noise((1, 8, 3), torch.Generator().manual_seed(4))
    assert torch.equal(x5[3:], x2) and torch.equal(x5[4:], x1)
    assert all(torch.equal(a[3:], b) for a, b in zip(steps5, steps2))
    assert all(torch.equal(a[4:], b) for a, b in zip(steps5, steps1))
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        engine.draw_noise((2, 8, 3), gens(range(3)))


def test_cells_in_process_merge_to_the_single_run(tiny):
    policy = Policy.from_pretrained(tiny, device="cpu")
    whole = evaluate(policy, "full", 5, 100_002, "lockstep", task=TASK, latency_ms=7.0)
    job = cluster.Cell(str(tiny), "full", "lockstep", 100_002, 5, 7.0, "cpu", TASK)
    cells = cluster.split(job, 2)
    assert [(c.seed, c.episodes) for c in cells] == [(100_002, 2), (100_004, 2), (100_006, 1)]
    parts = [cluster.run_cell(c) for c in reversed(cells)]
    merged = cluster.merge(parts, fixed_latency=True)
    assert _same_episodes(merged, whole)
    assert _summary(merged) == _summary(whole)
    assert len({e["steps"] for e in whole["per_episode"]}) > 1  # the episodes are not all alike
    with pytest.raises(ValueError, match="at least 1"):
        cluster.split(job, 0)


def test_finished_episodes_leave_the_cpu_batch(tiny, monkeypatch):
    """Each round computes exactly the episodes still running (the outcomes are the cells'
    and the single run's, whatever shares the batch: the test above)."""
    policy = Policy.from_pretrained(tiny, device="cpu")
    sizes, predict = [], policy.predict
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: sizes.append(
        len(next(iter(obs.values())))) or predict(obs, **kw))
    report = evaluate(policy, "full", 5, 100_002, "lockstep", task=TASK, latency_ms=7.0)
    chunks = [e["chunks"] for e in report["per_episode"]]
    assert sizes == [sum(c > r for c in chunks) for r in range(max(chunks))]
    assert sizes[0] == 5 and sizes[-1] < 5


@pytest.mark.parametrize("mode", ["lockstep", "realtime"])
def test_the_observer_sees_every_observation_with_its_true_state(tiny, mode):
    """What ``bac distill --rollouts`` learns from: each episode's observations, reset included,
    in order, each with the state the simulator was in."""
    policy = Policy.from_pretrained(tiny, device="cpu")
    seen = []
    report = evaluate(policy, "full", 3, 100_002, mode, task=TASK,
                      observer=lambda *a: seen.append(a))
    for episode in report["per_episode"]:
        mine = [(step, obs, state) for seed, step, obs, state in seen if seed == episode["seed"]]
        assert [step for step, *_ in mine] == list(range(episode["steps"] + 1))
        env = ArmEnv(TASK)
        first = env.reset(episode["seed"])
        np.testing.assert_array_equal(mine[0][2], env.state())
        np.testing.assert_array_equal(mine[0][1]["joints"], first["joints"])
    assert len({state.tobytes() for *_, state in seen}) > len(report["per_episode"])  # they move


def test_rendering_episodes_run_in_groups_with_the_same_outcomes(tmp_path, monkeypatch):
    """A camera policy's episodes each hold a rendering context, so they run RENDER_GROUP at a
    time; an episode's noise is its own, so its outcome is the one it has in a single batch."""
    from bac_ros.sim import evaluate as evaluation

    g = torch.Generator().manual_seed(0)
    lo, hi = torch.tensor(TASK.joint_low), torch.tensor(TASK.joint_high)
    norm = LinearNormalizer()
    norm.fit_limits("action", lo + (hi - lo) * torch.rand(256, 3, generator=g))
    norm.fit_limits("joints", lo + (hi - lo) * torch.rand(256, 3, generator=g))
    norm.fit_image_range("image")
    obs = {"image": {"shape": [3, 96, 96], "type": "rgb"},
           "joints": {"shape": [3], "type": "low_dim"}}
    ckpt = new_checkpoint(obs, 3, norm, horizon=8, n_action_steps=4, model=SMALL,
                          obs_encoder={"type": "small_cnn"}, num_inference_steps=4)
    policy = Policy.from_pretrained(save_native(ckpt, tmp_path / "camera"), device="cpu")
    whole = evaluate(policy, "full", 5, 100_002, "lockstep", task=TASK)
    sizes, predict = [], policy.predict
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: sizes.append(
        len(next(iter(obs.values())))) or predict(obs, **kw))
    monkeypatch.setattr(evaluation, "RENDER_GROUP", 2)
    grouped = evaluate(policy, "full", 5, 100_002, "lockstep", task=TASK)
    assert max(sizes) == 2 and sizes[0] == 2
    assert _same_episodes(grouped, whole)
    assert len({e["steps"] for e in whole["per_episode"]}) > 1


def test_version_mismatch_is_one_sentence():
    ours = cluster.environment()
    assert cluster.version_mismatch(dict(ours, node="other"), ours) is None
    text = cluster.version_mismatch(dict(ours, torch="2.4.0", node="gpu-7"), ours)
    assert text.startswith("worker on gpu-7 runs torch 2.4.0 but this driver runs torch "
                           f"{ours['torch']}") and "same versions on every node" in text
    assert "\n" not in text


def test_bad_cluster_input_is_one_sentence(tiny, capsys, monkeypatch):
    base = ["eval", "--checkpoint", str(tiny), "--episodes", "2", "--device", "cpu"]
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cases = [
        (["--ray", f"127.0.0.1:{port}"], f"cannot reach a Ray cluster at 127.0.0.1:{port}"),
        (["--ray", "head-node"], "is not HOST:PORT"),
        (["--workers", "2", "--mode", "realtime"], "needs a fixed latency (--latency-ms)"),
        (["--workers", str(os.cpu_count() + 1)], "each worker needs at least one torch thread"),
        (["--cell-episodes", "2"], "give --workers N or --ray ADDRESS too"),
        (["--latency-ms", "50", "--mode", "lockstep"], "lockstep waits for every chunk"),
    ]
    for extra, expected in cases:
        assert main(base + extra) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("bac eval: error:") and expected in err, err
        assert len(err.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main(base + ["--workers", "1"]) == 1
    assert capsys.readouterr().err.strip() == f"bac eval: error: {cluster.INSTALL_HINT}"


@pytest.fixture(scope="module")
def ray_pool():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # DieOnce, on the workers
    with cluster.Cluster(workers=2, device="cpu", max_retries=1) as pool:
        yield pool


class DieOnce:
    """A progress callback that ends its worker process the first time it runs anywhere."""

    def __init__(self, marker, always=False):
        self.marker, self.always = marker, always

    def __call__(self, n):
        if self.always or not self.marker.exists():
            self.marker.touch()
            os._exit(1)


@pytest.mark.ray
def test_ray_workers_give_the_single_process_episodes_and_tables(tiny, ray_pool):
    import ray

    assert ray_pool.source == "ray: 2 local workers, 1 torch thread each"
    # at this process's priority, not Ray's default niceness 15 (a fraction of a busy core)
    assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == os.nice(0)
    policy = Policy.from_pretrained(tiny, device="cpu")
    jobs = [cluster.Cell(str(tiny), "full", "lockstep", 100_002, 5, 7.0, "cpu", TASK),
            cluster.Cell(str(tiny), "ddim:4", "realtime", 100_002, 5, 150.0, "cpu", TASK)]
    seen = []
    merged, failures = cluster.run_jobs(ray_pool, jobs, 2, lambda j, r: seen.append((j, r)))
    assert failures == [] and len(seen) == 6
    for job, report in zip(jobs, merged):
        alone = evaluate(policy, job.method, 5, job.seed, job.mode, task=TASK,
                         latency_ms=job.latency_ms)
        assert _same_episodes(report, alone)
        assert _summary(report) == _summary(alone)
    assert merged[1]["per_episode"] != merged[0]["per_episode"]


@pytest.mark.ray
def test_a_dead_worker_is_retried_then_reported_never_dropped(tiny, ray_pool, tmp_path):
    job = cluster.Cell(str(tiny), "ddim:4", "lockstep", 100_010, 2, 7.0, "cpu", TASK)
    files = ray_pool.put(cluster.bundle(tiny, ["ddim:4"]))
    got = {}
    calls = [(partial(cluster.run_cell, progress=DieOnce(tmp_path / "once")), job, files),
             (partial(cluster.run_cell, progress=DieOnce(tmp_path / "always", True)),
              replace(job, seed=100_020), files)]
    failures = ray_pool.map(lambda fn, cell, f: fn(cell, f), calls, got.__setitem__)
    assert (tmp_path / "once").exists()  # that worker did die, and the retry finished the cell
    alone = evaluate(Policy.from_pretrained(tiny, device="cpu"), "ddim:4", 2, 100_010,
                     task=TASK, latency_ms=7.0)
    assert list(got) == [0] and _same_episodes(got[0], alone)
    assert failures == [(1, "its worker died (WorkerCrashedError) in each of its 2 attempts")]


@pytest.mark.ray
def test_bac_eval_on_an_existing_cluster_matches_one_process(tiny, ray_pool, tmp_path):
    import ray

    address = ray.get_runtime_context().gcs_address
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    args = ["eval", "--checkpoint", str(tiny), "--method", "ddim:4", "--episodes", "3",
            "--device", "cpu"]
    assert main(args + ["--json", str(one)]) == 0
    out = subprocess.run([sys.executable, "-m", "bac_ros.cli", *args, "--json", str(many),
                          "--ray", address, "--cell-episodes", "2"],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    a, b = json.loads(one.read_text()), json.loads(many.read_text())
    assert _same_episodes(a, b) and _summary(a) == {
        **_summary(b), "success_source": "local, one process"}
    assert b["success_source"].startswith(f"ray: cluster at {address}, 1 node, 2 CPUs")
    assert a["latency_source"] == b["latency_source"] == "local, one process"
    assert b["complete"] is True and a["complete"] is True
