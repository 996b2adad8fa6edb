"""`make bench`: every sampling method side by side, in one run on this machine.

    python bench/run_bench.py [--quick] [--device auto] [--episodes 200]
                              [--workers N | --ray ADDRESS]

Writes docs/BENCHMARKS.md, docs/bench.json and docs/plots/bench/*.png from scratch (on CUDA:
docs/BENCHMARKS_<card>.md and docs/bench_<card>.json). For each bundled checkpoint:

* methods: full DDPM-100; DDIM-10/16/25; uniform caching at the update budgets of BAC; BAC at
  S = 5, 7, 10, 15 with k = 5 and k = 0 (no BUA); the unified schedule at S = 10 (one ACS
  solution for all blocks, the paper's ablation); BAC compiled on DDIM-25; beyond the paper:
  stochastic DDPM with 10/16/25 steps, a FLOP budget shared across blocks
  (``allocation="shared"``), and the schedules `bac tune` chose (``tuned_*.yaml`` beside the
  checkpoint);
* batch-1 ``predict`` latency (median, p95; methods interleaved round by round so machine noise
  hits all alike), speedup over full, FLOP ratio, achieved / theoretical;
* action error against full compute with the same noise (MSE, max abs) on recorded
  observations of expert demonstrations (never the evaluation seeds);
* closed-loop success on the same seeds for all methods, lockstep and real time (the world
  moves on at the task's control rate during the median latency measured here), and, on
  Meta-World, the scripted expert's on those seeds;
* profiling + schedule compilation time and peak memory; the policy node's overhead per chunk.

``--quick`` runs a subset of methods with few episodes (development; under 10 minutes) and
writes into out/ instead of docs/.

``--workers N`` / ``--ray ADDRESS`` run the closed-loop episodes (checkpoint x method x mode x
seed range, see bac_ros.sim.cluster) on Ray workers, after every latency column has been
measured here, in this one process, methods side by side; node overhead is measured after the
workers are done. The same seeds give the same episodes, hence the same tables (docs/CLUSTER.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from bac_ros.cli import CELL_EPISODES, cluster_arguments  # noqa: E402
from bac_ros.nodes.overhead import measure as node_overhead  # noqa: E402
from bac_ros.policy.fidelity import (  # noqa: E402
    CANDIDATE_SEED,
    REFERENCE_SEED,
    draw_chunks,
    fidelity,
    spearman,
    step_rmse,
)
from bac_ros.policy.policy import Policy, resolve_device  # noqa: E402
from bac_ros.policy.timing import device_label  # noqa: E402
from bac_ros.policy.tune import profile_and_compile  # noqa: E402
from bac_ros.sim import cluster, resume  # noqa: E402
from bac_ros.sim.evaluate import (  # noqa: E402
    apply_method,
    evaluate,
    expert_success,
    time_methods,
)
from bac_ros.sim.tasks import task_demos, task_of  # noqa: E402
from bac_ros.train.dataset import observation_windows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FAMILIES = ("full", "DDIM", "DDPM few-step", "uniform", "BAC k=5", "BAC k=0", "unified",
            "shared budget", "BAC on DDIM", "bac tune")
COLOURS = dict(zip(FAMILIES, ("black", "tab:blue", "tab:olive", "tab:gray", "tab:red",
                              "tab:orange", "tab:purple", "tab:brown", "tab:green", "tab:cyan")))


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def compile_methods(policy: Policy, obs: list[dict], folder: Path, quick: bool,
                    shipped: Path) -> tuple:
    """Profile, compile every schedule; return ({name: (family, method)}, cost report). Tuned
    schedules shipped with the checkpoint (``tuned_*.yaml``, from `bac tune`) join as rows."""
    budgets = (10,) if quick else (5, 7, 10, 15)
    K = policy.num_inference_steps
    methods = {"full (DDPM-100)": ("full", "full")}
    for n in ((10, 25) if quick else (10, 16, 25)):
        methods[f"DDIM-{n}"] = ("DDIM", f"ddim:{n}")
    for n in ((10,) if quick else (10, 16, 25)):  # beyond the paper: stochastic, fewer steps
        methods[f"DDPM-{n}"] = ("DDPM few-step", f"ddpm:{n}")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []  # (name, family, (S, k, allocation))
    for S in budgets:
        rows += [(f"BAC S={S} k={k}", f"BAC k={k}", (S, k, "per_block")) for k in (5, 0)]
        if S == 10:  # the paper's ablation: one schedule shared by every block
            rows.append((f"unified S={S}", "unified", (S, 5, "unified")))
        rows.append((f"shared S={S} k=5", "shared budget", (S, 5, "shared")))
    with PeakRSS() as mem:
        if policy.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(policy.device)
        made = profile_and_compile(policy, obs, [v for *_, v in rows], source="expert demos")
    cost = {"profile_s": made.profile_s, "compile_s_per_schedule": made.compile_s / len(rows),
            "observations": len(obs), "peak_rss_mb": mem.peak / 2**20,
            "rss_growth_mb": (mem.peak - mem.base) / 2**20}
    if policy.device.type == "cuda":
        cost["cuda_peak_mb"] = torch.cuda.max_memory_allocated(policy.device) / 2**20
    for S in budgets:
        every = max(1, round(K / S))
        methods[f"uniform:{every}"] = ("uniform", f"uniform:{every}")
    for (name, family, _), sched in zip(rows, made.schedules):
        methods[name] = (family, f"bac:{sched.save(folder / (sched.method['name'] + '.yaml'))}")
    policy.set_sampler("DDIMScheduler", 25)  # BAC on top of a deterministic few-step sampler
    on_ddim = (10,) if quick else (5, 10)
    ddim = profile_and_compile(policy, obs, [(S, 5, "per_block") for S in on_ddim],
                               source="expert demos")
    for S, sched in zip(on_ddim, ddim.schedules):
        path = sched.save(folder / f"ddim25_{sched.method['name']}.yaml")
        methods[f"DDIM-25 + BAC S={S}"] = ("BAC on DDIM", f"bac:{path}")
    policy.use_trained_sampler()
    for path in sorted(shipped.glob("tuned_*.yaml")):
        methods[f"bac tune ({path.stem})"] = ("bac tune", f"bac:{path}")
    return methods, cost


def action_errors(policy: Policy, methods: dict, obs: list[dict]) -> dict:
    """Executed chunks against full compute's with the same noise, per method."""
    batch = {k: np.stack([o[k] for o in obs]) for k in policy.obs_spec}
    out, ref = {}, None
    for name, (_, method) in methods.items():
        apply_method(policy, method)
        pred = policy.predict(batch, generator=torch.Generator().manual_seed(0), batched=True)
        ref = pred if ref is None else ref  # the first method is full compute
        err = pred - ref
        out[name] = {"mse": float(np.mean(err**2)), "max_abs": float(np.abs(err).max()),
                     "step_rmse": step_rmse(ref, pred).tolist()}
    return out


def fidelity_scores(policy: Policy, methods: dict, obs: list[dict], n_samples: int) -> dict:
    """Offline fidelity of every method against full compute (see bac_ros.policy.fidelity)."""
    apply_method(policy, "full")
    reference = draw_chunks(policy, obs, n_samples, seed=REFERENCE_SEED)
    out = {}
    for name, (_, method) in methods.items():
        apply_method(policy, method)
        out[name] = fidelity(reference, draw_chunks(policy, obs, n_samples, seed=CANDIDATE_SEED))
    return out


def validation(rows: list[dict]) -> dict:
    """Does the offline measure rank methods as closed-loop success does?"""
    succ = [r["success_lockstep"]["success_rate"] for r in rows]
    return {"spearman_energy": spearman([-r["fidelity_energy"] for r in rows], succ),
            "spearman_action_mse": spearman([-r["action_mse"] for r in rows], succ),
            "methods": len(rows)}


def diff_interval(a: dict, b: dict) -> tuple[float, float, float]:
    """Success difference a - b with Newcombe's 95% interval (from the Wilson intervals)."""
    pa, pb = a["success_rate"], b["success_rate"]
    (la, ua), (lb, ub) = a["ci95"], b["ci95"]
    d = pa - pb
    return d, d - math.hypot(pa - la, ub - pb), d + math.hypot(ua - pa, pb - lb)


def verdict(rows: list[dict], mode: str) -> list[str]:
    """At each latency budget: the method with the most success, and its lead over the best
    method of every other family inside the same budget."""
    full = next(r for r in rows if r["family"] == "full")
    key = f"success_{mode}"
    lines = []
    for speedup in (1.0, 2.0, 3.4, 5.0, 8.0):
        budget = full["median_ms"] / speedup * 1.0001
        inside = [r for r in rows if r["median_ms"] <= budget]
        if not inside:
            lines.append(f"- at ≥{speedup:g}× speedup (≤ {budget:.1f} ms): no method is that fast.")
            continue
        best = max(inside, key=lambda r: (r[key]["success_rate"], -r["median_ms"]))
        if best[key]["success_rate"] == 0:  # naming a "best" of all-zero rows would mislead
            lines.append(f"- at ≥{speedup:g}× speedup (≤ {budget:.1f} ms): none of the "
                         f"{len(inside)} methods this fast succeeds (each 0.0%, 95% interval "
                         f"up to {best[key]['ci95'][1]:.1%}).")
            continue
        rest = {}
        for r in inside:
            if r["family"] != best["family"]:
                cur = rest.get(r["family"])
                if cur is None or r[key]["success_rate"] > cur[key]["success_rate"]:
                    rest[r["family"]] = r
        lo, hi = best[key]["ci95"]
        text = (f"- at ≥{speedup:g}× speedup (≤ {budget:.1f} ms): **{best['name']}** keeps "
                f"{best[key]['success_rate']:.1%} [{lo:.1%}, {hi:.1%}]")
        leads = []
        for r in sorted(rest.values(), key=lambda r: -r[key]["success_rate"]):
            d, dlo, dhi = diff_interval(best[key], r[key])
            sure = "" if dlo > 0 else " (interval includes 0: not a clear lead)"
            leads.append(f"{d * 100:+.1f} points [{dlo * 100:+.1f}, {dhi * 100:+.1f}] over "
                         f"{r['name']}{sure}")
        lines.append(text + ("; " + "; ".join(leads) if leads else "") + ".")
    return lines


def plot_frontier(model: str, rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, mode in zip(axes, ("lockstep", "realtime")):
        key = f"success_{mode}"
        for r in rows:
            s = r[key]["success_rate"]
            lo, hi = r[key]["ci95"]
            ax.errorbar(r["median_ms"], s * 100, yerr=[[100 * (s - lo)], [100 * (hi - s)]],
                        fmt="o", color=COLOURS[r["family"]], capsize=2, ms=4)
            ax.annotate(r["name"], (r["median_ms"], s * 100), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        pts = sorted(rows, key=lambda r: r["median_ms"])
        front, best = [], -1.0
        for r in pts:
            if r[key]["success_rate"] > best:
                best = r[key]["success_rate"]
                front.append(r)
        ax.step([r["median_ms"] for r in front], [r[key]["success_rate"] * 100 for r in front],
                where="post", color="k", lw=0.8, alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("median batch-1 latency (ms, log)")
        ax.set_title(f"{model}: {mode}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success (%), 95% CI")
    for fam in FAMILIES:
        axes[1].plot([], [], "o", color=COLOURS[fam], label=fam)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(model: str, rows: list[dict], path: Path) -> None:
    rows = [r for r in rows if r["family"] != "full"]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y, [r["action_mse"] for r in rows], color=[COLOURS[r["family"]] for r in rows])
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("action MSE vs full compute, same noise (rad², log)")
    ax.set_title(f"{model}: action error per method")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_plots(model: str, rows: list[dict], plots: Path) -> None:
    plot_frontier(model, rows, plots / f"{model}_frontier.png")
    plot_errors(model, rows, plots / f"{model}_action_error.png")


SUCCESS_KEYS = ("success_rate", "ci95", "collision_rate", "wall_s")
LATENCY_SOURCE = "local, one process, methods side by side"


def measure_model(ckpt: Path, args, log) -> tuple[dict, Policy, list]:
    """Everything but success, in this process: schedules, latency, action error, fidelity.
    Returns the section (rows without success), the policy and its success jobs."""
    policy = Policy.from_pretrained(ckpt, device=args.device)
    data = task_demos(task_of(policy), args.demos, seed=0, images=policy.reads_images)
    keys, To = list(policy.obs_spec), policy.n_obs_steps
    profile_obs = observation_windows(data, keys, To, args.profile_obs, seed=0)
    error_obs = observation_windows(data, keys, To, args.error_obs, seed=1)
    methods, cost = compile_methods(policy, profile_obs, ROOT / "out" / "bench" / ckpt.name,
                                    args.quick, ckpt)
    log(f"{ckpt.name}: {len(methods)} methods; profiling {cost['profile_s']:.1f} s")
    times = time_methods(policy, {name: m for name, (_, m) in methods.items()}, error_obs[0],
                         args.repeats)
    errors = action_errors(policy, methods, error_obs)
    fid = fidelity_scores(policy, methods, error_obs[: args.fidelity_obs], args.fidelity_samples)
    log(f"{ckpt.name}: latency, action error and fidelity measured")
    full_ms = float(np.median(times["full (DDPM-100)"])) * 1e3
    rows = []
    for name, (family, method) in methods.items():
        apply_method(policy, method)
        med = float(np.median(times[name])) * 1e3
        ratio = policy.flop_ratio(policy.plan)
        row = {"name": name, "family": family, "method": method, "median_ms": med,
               "p95_ms": float(np.percentile(times[name], 95)) * 1e3,
               "speedup": full_ms / med, "flop_ratio": ratio,
               "achieved_over_theoretical": full_ms / med / ratio,
               "action_mse": errors[name]["mse"], "action_max_abs": errors[name]["max_abs"],
               "fidelity_energy": fid[name]["energy"],
               "fidelity_energy_sem": fid[name]["energy_sem"],
               "step_rmse": errors[name]["step_rmse"]}
        rows.append(row)
    res = {"checkpoint": str(ckpt.relative_to(ROOT)), "device": device_label(policy.device),
           "model": policy.fingerprint, "cost": cost, "rows": rows}
    resume.keep_schedules(res)
    return res, policy, success_jobs(rows, policy, ckpt, args)


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def success_jobs(rows: list[dict], policy: Policy, ckpt: Path, args) -> list:
    """The closed-loop evaluations these rows still lack (all of them, unless resumed)."""
    return resume.success_jobs(rows, policy.dt, ckpt, args.seed, args.episodes, args.device)


def record_success(row: dict, on_time: bool, report: dict, log) -> None:
    entry = {k: report[k] for k in SUCCESS_KEYS}
    row[f"success_{report['mode']}"] = entry
    if on_time:
        row["success_realtime"] = dict(entry, same_as_lockstep=True)
    if "success_lockstep" in row and "success_realtime" in row:
        log(f"  {row['name']:<20} {row['median_ms']:7.1f} ms {row['speedup']:5.2f}x  lockstep "
            f"{row['success_lockstep']['success_rate']:.1%}  realtime "
            f"{row['success_realtime']['success_rate']:.1%}  mse {row['action_mse']:.2e}")


def success_here(policy: Policy, jobs: list, log, save) -> None:
    """Closed-loop success of every job in this process, one evaluate() call each; each is
    saved as soon as it is measured, so a stopped run loses at most the one in progress."""
    for row, on_time, job in jobs:
        latency = job.latency_ms if job.mode == "realtime" else None  # lockstep times batch 1
        record_success(row, on_time, evaluate(policy, job.method, job.episodes, job.seed,
                                              job.mode, latency_ms=latency), log)
        save()


def success_on(pool: cluster.Cluster, jobs: list, args, log, save) -> None:
    """Every job's cells on the Ray workers; each row is saved as soon as it is complete."""
    n_cells = sum(len(cluster.split(job, args.cell_episodes)) for *_, job in jobs)
    log(f"success: {len(jobs)} evaluations in {n_cells} cells on {pool.source}")
    counted = [0]

    def on_cell(j: int, report: dict) -> None:
        counted[0] += 1
        if counted[0] % max(1, n_cells // 20) == 0:
            log(f"  {counted[0]}/{n_cells} cells")

    def on_job(j: int, report: dict) -> None:
        row, on_time, _ = jobs[j]
        record_success(row, on_time, report, log)
        save()

    _, failures = cluster.run_jobs(pool, [job for *_, job in jobs], args.cell_episodes,
                                   on_cell, on_job)
    if failures:
        for line in failures:
            log(f"  {line}")
        raise SystemExit(f"run_bench: {len(failures)} of {n_cells} evaluation cells failed (first: "
                         f"{failures[0]}); the rows measured so far are in "
                         f"{_shown(args.partial)} (--resume goes on from there)")


def finish_model(res: dict, policy: Policy, ckpt: Path, args, plots: Path, log) -> None:
    """Node overhead (a latency: measured here, with no cell running), plots, validation."""
    rows = res["rows"]
    bac10 = next(r for r in rows if r["name"] == "BAC S=10 k=5")
    overhead = None
    if policy.device.type == "cpu" or args.node_on_cuda:
        try:
            overhead = node_overhead(ckpt, bac10["method"].split(":", 1)[1], args.node_chunks,
                                     device=str(policy.device))
        except RuntimeError as err:  # the report says so; the measured rows are kept
            log(f"  node overhead not measured: {err}")
            overhead = {"error": str(err)}
    draw_plots(ckpt.name, rows, plots)
    res["node_overhead"] = overhead
    add_expert(res, task_of(policy), args.seed, args.episodes, log)
    res["validation"] = validation(rows)
    res.pop("schedules", None)  # complete: a resumed run runs none of them again


def add_expert(res: dict, task, seed: int, episodes: int, log) -> None:
    """The scripted expert on the section's own seeds, where the task has one (Meta-World)."""
    expert = expert_success(task, seed, episodes)
    if expert is not None:
        res["expert"] = expert
        log(f"  scripted expert {_pct(expert)} ({expert['wall_s']:.0f} s)")


def _pct(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['success_rate']:.1%} [{lo:.1%}, {hi:.1%}]"


def _sources(run: dict) -> str:
    """Where the latency and the success columns came from (runs before Ray: one process)."""
    return (f"Latency columns: {run.get('latency_source', LATENCY_SOURCE)}; success columns: "
            f"{run.get('success_source', 'local, one process')}.")


def _header(args, meta: dict, several_runs: bool) -> list[str]:
    """Where the figures come from, and what each column means."""
    if not several_runs:
        origin = (f"Generated by `{meta['command']}` in {meta['wall_min']:.1f} min on "
                  f"{meta['device']} ({meta['date']}, commit `{meta['commit']}`). "
                  f"{_sources(meta)} Everything below comes from that one run"
                  + (" (stopped and continued with `--resume`; each section's latency "
                     "columns were measured side by side in one go)"
                     if "--resume" in meta["command"] else "") + "; ")
    else:
        origin = ("Each checkpoint's section was measured in one run of `make bench`, named at "
                  "the top of the section (`--keep` carried the others over; `--resume` there "
                  "means the run was stopped and continued, each section's latency columns "
                  "measured side by side in one go); ")
    return [
        "# Benchmarks",
        "",
        origin + "rerun the command to regenerate this file, `docs/bench.json` and the plots.",
        "",
        f"Latency: batch-1 `Policy.predict`, {args.repeats} rounds with all methods interleaved "
        "(median and p95). Speedup: full median over the method's median. FLOP ratio: "
        "theoretical speedup from counted FLOPs; achieved/theory = speedup / FLOP ratio. "
        f"Action error: MSE and max |Δ| (in action units: radians for the arm, 1 = 1 cm of "
        "hand motion per step for Meta-World) of the executed chunk against full compute "
        f"with the same noise, over {args.error_obs} recorded observations (expert "
        f"demonstrations, seed ≥ 0). Success: {args.episodes} episodes, seeds "
        f"{args.seed}..{args.seed + args.episodes - 1}, identical for every method, 95% Wilson "
        "interval. Lockstep: the world waits for each chunk. Real time: the world moves on at "
        "the task's control rate (the arm 10 Hz, Meta-World 80 Hz) while the model computes for "
        "its median latency measured here, the robot holding its last target, and the actions "
        "whose time has passed are skipped; a method faster than one control tick is on time, "
        "and its real-time run is its lockstep run.",
        "",
    ]


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| method | median ms | p95 ms | speedup | FLOP ratio | achieved/theory | "
        "action MSE | max abs | energy dist. | lockstep success | real-time success |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['speedup']:.2f}× | {r['flop_ratio']:.2f}× | "
            f"{r['achieved_over_theoretical']:.0%} | {r['action_mse']:.2e} | "
            f"{r['action_max_abs']:.3f} | {r['fidelity_energy']:.4f} | "
            f"{_pct(r['success_lockstep'])} | "
            f"{_pct(r['success_realtime'])} |")
    return lines


def _findings(res: dict, args) -> list[str]:
    """The plots, how well offline fidelity ranks the methods, and the verdicts."""
    name = Path(res["checkpoint"]).name
    return [
        "",
        f"![frontier](plots/bench/{name}_frontier.png)",
        f"![action error](plots/bench/{name}_action_error.png)",
        "",
        f"Offline fidelity (energy distance between {args.fidelity_samples} chunks from "
        f"full compute and {args.fidelity_samples} from the method, independent noise, on "
        f"{args.fidelity_obs} recorded observations; 0 = same distribution; the full row is "
        f"the noise floor) ranks the methods as lockstep success does with Spearman "
        f"{_rho(res['validation']['spearman_energy'])} over {len(res['rows'])} methods "
        f"(same-noise action MSE: {_rho(res['validation']['spearman_action_mse'])}).",
        "",
        "**Verdict, lockstep** (which method keeps the most success at each latency budget, "
        "and by how much, with 95% intervals for the difference):",
        "",
        *verdict(res["rows"], "lockstep"),
        "",
        "**Verdict, real time:**",
        "",
        *verdict(res["rows"], "realtime"),
        "",
    ]


def _costs(res: dict) -> list[str]:
    """What profiling and compiling cost, and the policy node's overhead per chunk."""
    c = res["cost"]
    lines = [
        f"Profiling {c['observations']} observations (full compute, every block recorded): "
        f"{c['profile_s']:.1f} s; compiling one schedule from the profile: "
        f"{c['compile_s_per_schedule'] * 1e3:.1f} ms; peak resident memory during "
        f"profiling and compilation {c['peak_rss_mb']:.0f} MB (+{c['rss_growth_mb']:.0f} MB)"
        + (f"; CUDA peak {c['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in c else "") + ".",
        "",
    ]
    o = res["node_overhead"]
    if o and "error" in o:
        lines += [f"Policy node overhead: not measured in this run ({o['error']}).", ""]
    elif o:
        lines += [
            f"Policy node overhead (`python bench/node_overhead.py --checkpoint "
            f"{res['checkpoint']} --schedule <BAC S=10 k=5>"
            f"{' --device ' + o['device'] if 'device' in o else ''}`; the node process as on a "
            f"robot): newest observation received → chunk published, minus model time, "
            f"median {o['node_overhead_ms_median']:.2f} ms per chunk as the node reports it "
            f"on /diagnostics; seen from a client in another process (observation published "
            f"→ chunk received, minus model time, two DDS hops included) median "
            f"{o['client_overhead_ms_median']:.2f} ms, p95 {o['client_overhead_ms_p95']:.2f}"
            f" ms over {o['chunks']} chunks (model {o['model_ms_median']:.1f} ms).",
            "",
        ]
    return lines


def _section(res: dict, args, meta: dict, several_runs: bool) -> list[str]:
    """One checkpoint: its table, plots, findings and costs."""
    lines = [f"## `{res['checkpoint']}`", ""]
    if several_runs:
        r = res.get("run", meta)
        lines += [f"Measured by `{r['command']}` in {r['wall_min']:.1f} min on {r['device']} "
                  f"({r['date']}, commit `{r['commit']}`). {_sources(r)}", ""]
    expert = res.get("expert")
    if expert:
        lines += [f"The task's scripted expert succeeds in {_pct(expert)} of the same "
                  f"{expert['episodes']} seeds.", ""]
    return lines + _table(res["rows"]) + _findings(res, args) + _costs(res)


BENCH_SOURCE = "`make bench`, this file"
#: The methods every task's table has: `make bench` sections and bench/metaworld_table.py alike.
CROSS_METHODS = ("BAC S=10 k=5", "bac tune (tuned_x5)", "DDIM-10", "DDPM-10", "uniform:10")


def task_tables(results: list[dict], docs: Path) -> list[dict]:
    """One entry per task: the `make bench` sections, then every Meta-World table beside the
    report (``eval_metaworld_*.json``) of a checkpoint this bench has no section for (a camera
    policy's labelled with its camera)."""
    tables, benched = [], {Path(res["checkpoint"]).name for res in results}
    for res in results:
        tables.append({"task": Path(res["checkpoint"]).name, "checkpoint": res["checkpoint"],
                       "source": BENCH_SOURCE, "expert": res.get("expert"),
                       "rows": {r["name"]: dict(r["success_lockstep"], speedup=r["speedup"],
                                                energy=r["fidelity_energy"])
                                for r in res["rows"]}})
    for path in sorted(docs.glob("eval_metaworld_*.json")):
        if path.name.endswith(".partial.json"):  # a table still being measured
            continue
        saved = json.loads(path.read_text())
        if Path(saved["checkpoint"]).name in benched:
            continue
        rows = {r["name"]: dict(r, energy=r.get("fidelity_energy")) for r in saved["rows"]}
        label = f"metaworld {saved['task']}" + (f" {saved['camera']} camera" if saved.get(
            "camera") else "")
        tables.append({"task": label, "checkpoint": saved["checkpoint"],
                       "source": f"[{path.stem}.md]({path.stem}.md)",
                       "expert": rows.pop("scripted expert"), "rows": rows})
    return tables


def _floor(full: dict, expert: dict | None) -> str:
    """Issue 17's floor: full compute keeps at least 80% of the expert's success."""
    if not expert:
        return ""
    floor = 0.8 * expert["success_rate"]
    return f"{'met' if full['success_rate'] >= floor else '**not met**'} (needs {floor:.1%})"


def _points(row: dict, full: dict) -> str:
    d, lo, hi = diff_interval(row, full)
    mark = "" if lo <= 0 <= hi else " *"
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark} · {row['speedup']:.1f}×"


def _rho(rho: float) -> str:
    return "undefined (every method has the same success)" if math.isnan(rho) else f"{rho:.2f}"


def _rank_agreement(tables: list[dict]) -> list[str]:
    """Spearman of offline fidelity (lower energy distance) against lockstep success, per task
    and pooled over every (task, method) pair as success minus that task's full compute."""
    lines = ["| task | methods | Spearman (energy vs success) |", "|---|---:|---:|"]
    pooled_e, pooled_s = [], []
    for t in tables:
        full = t["rows"]["full (DDPM-100)"]["success_rate"]
        scored = [r for r in t["rows"].values() if r.get("energy") is not None]
        rho = spearman([-r["energy"] for r in scored], [r["success_rate"] for r in scored])
        lines.append(f"| {t['task']} | {len(scored)} | {_rho(rho)} |")
        for r in scored:
            if r is not t["rows"]["full (DDPM-100)"]:
                pooled_e.append(-r["energy"])
                pooled_s.append(r["success_rate"] - full)
    lines.append(f"| pooled (success − full) | {len(pooled_e)} | "
                 f"{_rho(spearman(pooled_e, pooled_s))} |")
    return lines


def _tune_rows(tables: list[dict]) -> list[str]:
    lines = ["| task | `bac tune --speedup 5` chose | speedup | success | full |",
             "|---|---|---:|---:|---:|"]
    for t in tables:
        row = t["rows"].get("bac tune (tuned_x5)")
        file = ROOT / t["checkpoint"] / "tuned_x5.yaml"
        if row is None or not file.is_file():
            continue
        chose = yaml.safe_load(file.read_text())["method"]["candidate"]
        lines.append(f"| {t['task']} | {chose} | {row['speedup']:.1f}× | {_pct(row)} | "
                     f"{_pct(t['rows']['full (DDPM-100)'])} |")
    return lines


def _bac_claim(tables: list[dict]) -> list[str]:
    """The paper's claim, BAC S=10 k=5 within noise of full compute, task by task."""
    lines = []
    for t in tables:
        bac, full = t["rows"].get("BAC S=10 k=5"), t["rows"]["full (DDPM-100)"]
        if bac is None:
            continue
        d, lo, hi = diff_interval(bac, full)
        said = ("holds (within noise)." if lo <= 0 <= hi else
                "holds and more: above full beyond noise (at this many episodes)." if lo > 0
                else "**fails** (below full beyond noise).")
        lines.append(f"- {t['task']}: BAC S=10 k=5 {_pct(bac)} against full {_pct(full)}, "
                     f"{100 * d:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] at "
                     f"{bac['speedup']:.1f}×: the claim " + said)
    return lines


def cross_task(results: list[dict], docs: Path) -> list[str]:
    """Every task side by side: success minus full per method, how well offline fidelity ranks
    methods, what `bac tune` chose, and where the paper's claim holds."""
    tables = task_tables(results, docs)
    head = "| method | " + " | ".join(t["task"] for t in tables) + " |"
    lines = [
        "## Cross-task summary", "",
        "Success minus full compute in points, lockstep, with the 95% interval of the "
        "difference (Newcombe; * = it excludes 0), then the speedup over full measured in that "
        "table's run; the scripted expert on the same seeds (the arm has none: its "
        "demonstrations are planned paths, not a closed-loop expert). "
        + ("Tables beside this file come from `python bench/metaworld_table.py` (the methods "
           "of this summary only, not `make bench`'s 27). "
           if any(t["source"] != BENCH_SOURCE for t in tables) else "") + "Sources: "
        + "; ".join(f"{t['task']}: {t['source']}" for t in tables) + ".", "",
        head, "|---|" + "---:|" * len(tables),
        "| full compute (success) | " + " | ".join(
            _pct(t["rows"]["full (DDPM-100)"]) for t in tables) + " |",
        "| scripted expert (success) | " + " | ".join(
            _pct(t["expert"]) if t["expert"] else "none" if t["task"].startswith("arm")
            else "not measured" for t in tables) + " |",
        "| floor: full ≥ 80% of the expert | " + " | ".join(
            _floor(t["rows"]["full (DDPM-100)"], t["expert"]) for t in tables) + " |",
    ]
    for name in CROSS_METHODS:
        full = [t["rows"]["full (DDPM-100)"] for t in tables]
        lines.append(f"| {name} | " + " | ".join(
            _points(t["rows"][name], f) if name in t["rows"] else "not measured"
            for t, f in zip(tables, full)) + " |")
    lines += ["", "**The paper's claim** (BAC S=10 k=5 keeps full compute's behaviour):", "",
              *_bac_claim(tables), "",
              "**Offline fidelity against success** (does the energy distance rank methods as "
              "closed-loop success does?):", "", *_rank_agreement(tables), "",
              "**`bac tune --speedup 5`** per checkpoint, closed loop:", "", *_tune_rows(tables),
              ""]
    return lines


def report(results: list[dict], args, meta: dict, docs: Path) -> str:
    several_runs = len({json.dumps(res.get("run", meta), sort_keys=True)
                        for res in results}) > 1
    lines = _header(args, meta, several_runs)
    for res in results:
        lines += _section(res, args, meta, several_runs)
    return "\n".join(lines + cross_task(results, docs))


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with the sizes ``--quick`` and a full run imply."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="method subset, few episodes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--checkpoints", type=Path, nargs="*",
                    help="default: every folder under checkpoints/")
    ap.add_argument("--episodes", type=int)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--out", type=Path,
                    help="markdown report (default by device); plots go to plots/bench/ beside it")
    ap.add_argument("--node-on-cuda", action="store_true",
                    help="on a CUDA device: measure the policy node's overhead there too (by "
                         "default only a CPU run measures it)")
    ap.add_argument("--keep", type=Path,
                    help="bench json whose sections for checkpoints not measured in this run "
                         "are carried over (each keeps the run that measured it)")
    ap.add_argument("--resume", action="store_true",
                    help="go on with the run that stopped (same command): measure only what "
                         "its bench*.partial.json beside the report lacks")
    ap.add_argument("--from-json", type=Path,
                    help="re-render the report and plots from a bench json, measuring nothing")
    cluster_arguments(ap, "closed-loop success on N local Ray workers (latency stays here)",
                      "closed-loop success on the Ray cluster at ADDRESS (HOST:PORT)")
    args = ap.parse_args(argv)
    if args.from_json:
        measuring = [flag for flag, value in (
            ("--quick", args.quick), ("--device", args.device != "auto"),
            ("--checkpoints", args.checkpoints is not None), ("--episodes", args.episodes),
            ("--seed", args.seed != 100_000), ("--repeats", args.repeats),
            ("--node-on-cuda", args.node_on_cuda), ("--keep", args.keep),
            ("--resume", args.resume), ("--workers", args.workers), ("--ray", args.ray),
            ("--cell-episodes", args.cell_episodes)) if value]
        if measuring:
            ap.error(f"--from-json re-renders a saved run and measures nothing, so "
                     f"{', '.join(measuring)} would be ignored; give only --from-json and --out")
    args.episodes = args.episodes or (20 if args.quick else 200)
    args.repeats = args.repeats or (5 if args.quick else 20)
    args.demos, args.profile_obs, args.error_obs = (20, 16, 16) if args.quick else (60, 64, 64)
    args.node_chunks = 15 if args.quick else 60
    args.fidelity_obs, args.fidelity_samples = (8, 16) if args.quick else (16, 16)
    return args


def rerender(args, out: Path, plots: Path) -> None:
    """``--from-json``: the report and plots of a saved run, measuring nothing."""
    saved = json.loads(args.from_json.read_text())
    for res in saved["results"]:
        draw_plots(Path(res["checkpoint"]).name, res["rows"], plots)
    vars(args).update({k: v for k, v in saved["args"].items() if k not in ("out", "from_json")})
    out.write_text(report(saved["results"], args, saved["meta"], out.parent) + "\n")


def ray_pool(args) -> cluster.Cluster | None:
    """The Ray workers the closed-loop episodes run on (None: here, in this process)."""
    try:
        pool = (cluster.Cluster(args.workers, args.ray, args.device)
                if args.workers is not None or args.ray is not None else None)
    except (ValueError, cluster.ClusterError) as err:
        raise SystemExit(f"run_bench: {err}") from None
    if pool is None and args.cell_episodes is not None:
        raise SystemExit("run_bench: --cell-episodes splits the episodes between Ray workers; give "
                         "--workers N or --ray ADDRESS too")
    args.cell_episodes = args.cell_episodes or CELL_EPISODES
    return pool


def measure_all(ckpts: list[Path], args, pool: cluster.Cluster | None, plots: Path,
                log) -> list[dict]:
    """Every checkpoint's section. With a pool, success waits until every latency is measured;
    the rows so far are saved to ``args.partial`` after each step, and ``--resume`` measures
    only what they lack: a resumed section keeps the latencies its real-time runs used."""
    results, staged, t0 = [], [], time.perf_counter()
    settings = resume.run_settings(vars(args), ckpts)
    done = {}
    if args.resume:
        try:
            done, args.elapsed_before = resume.resumed_sections(args.partial, settings)
        except ValueError as err:
            raise SystemExit(f"run_bench: {err}") from None

    def save():  # survives a crash in the report, a failed cell, and a stopped session
        args.partial.parent.mkdir(parents=True, exist_ok=True)
        args.partial.write_text(json.dumps(
            {"results": results, "args": vars(args), "settings": settings,
             "elapsed_s": args.elapsed_before + time.perf_counter() - t0},
            indent=1, default=str))

    for c in ckpts:
        ckpt = Path(c).resolve()
        res = done.get(ckpt.name)
        if res is not None and "validation" in res:  # finished before the stop
            log(f"{ckpt.name}: resumed, complete")
            results.append(res)
            continue
        if res is None:
            res, policy, jobs = measure_model(ckpt, args, log)
        else:
            policy = Policy.from_pretrained(ckpt, device=args.device)
            try:
                resume.restore_section(res, policy.fingerprint, ROOT / "out" / "bench" / ckpt.name)
            except ValueError as err:
                raise SystemExit(f"run_bench: {err}") from None
            jobs = success_jobs(res["rows"], policy, ckpt, args)
            log(f"{ckpt.name}: resumed, {len(jobs)} closed-loop evaluations left")
        results.append(res)
        if pool is None:
            success_here(policy, jobs, log, save)
            finish_model(res, policy, ckpt, args, plots, log)
        else:
            staged.append((res, policy, ckpt, jobs))
        save()
    if pool is not None:  # latency is measured: now the workers may load the machine
        try:
            with pool:
                success_on(pool, [j for *_, jobs in staged for j in jobs], args, log, save)
        except cluster.ClusterError as err:
            raise SystemExit(f"run_bench: {err}; the rows measured so far are in "
                             f"{_shown(args.partial)} (--resume goes on from "
                             "there)") from None
        for res, policy, ckpt, _ in staged:
            finish_model(res, policy, ckpt, args, plots, log)
        save()
    return results


def run_record(args, results: list[dict], pool: cluster.Cluster | None, device: torch.device,
               t0: float) -> dict:
    """What the report says of this run: command, device, date, commit, time, sources."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           text=True, capture_output=True).stdout.strip()
    flags = (["--quick"] if args.quick else []) + (
        ["--episodes", str(args.episodes)] if args.episodes != (20 if args.quick else 200)
        else []) + (["--seed", str(args.seed)] if args.seed != 100_000 else []) + (
        ["--checkpoints", *map(str, args.checkpoints)] if args.checkpoints else []) + (
        ["--keep", str(args.keep)] if args.keep else []) + (
        ["--resume"] if args.resume else []) + (
        ["--workers", str(args.workers)] if args.workers else []) + (
        ["--ray", args.ray] if args.ray else [])
    return {"command": "make bench" + (f" BENCH_ARGS='{' '.join(flags)}'" if flags else ""),
            "device": results[0]["device"] if results else str(device),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit + ("+local changes" if dirty else ""),
            "wall_min": (args.elapsed_before + time.perf_counter() - t0) / 60,
            "latency_source": LATENCY_SOURCE,
            "success_source": pool.source if pool else "local, one process"}


def carry_over(keep: Path, args, results: list[dict]) -> None:
    """``--keep``: the saved sections of checkpoints this run did not measure join
    ``results`` (in checkpoint order), each with the run that measured it."""
    kept = json.loads(keep.read_text())
    differ = [k for k in resume.SAME_SETTINGS if kept["args"].get(k) != vars(args)[k]]
    if differ:
        raise SystemExit(f"--keep {keep} was measured with other settings ({differ}); "
                         "its sections would be described wrongly. Rerun all checkpoints.")
    measured = {Path(res["checkpoint"]).name for res in results}
    for res in kept["results"]:
        if Path(res["checkpoint"]).name not in measured:
            results.append({**res, "run": res.get("run", kept["meta"])})
    results.sort(key=lambda res: Path(res["checkpoint"]).name)


def main(argv=None) -> int:
    args = parse_args(argv)
    ckpts = args.checkpoints or sorted(p.parent for p in (ROOT / "checkpoints").glob(
        "*/config.yaml"))
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    if args.node_on_cuda and device.type != "cuda":
        raise SystemExit(f"--node-on-cuda measures the node on CUDA, but the device is "
                         f"{device}; expected a CUDA --device")
    slug = "" if device.type == "cpu" else "_" + device_label(device).replace(" ", "_")
    docs = ROOT / ("out" if args.quick else "docs")  # a quick run never replaces the docs
    out = args.out or docs / f"BENCHMARKS{slug}.md"
    plots = out.parent / "plots" / "bench"  # where the report's plots/bench/ links point
    plots.mkdir(parents=True, exist_ok=True)
    # beside the report, so a stopped run's rows can be committed and resumed elsewhere
    args.partial = out.with_name(out.stem.replace("BENCHMARKS", "bench") + ".partial.json")
    args.elapsed_before = 0.0  # --resume: the seconds the stopped run had measured for

    def log(text):
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {text}", flush=True)

    if args.from_json:
        rerender(args, out, plots)
        log(f"re-rendered {out} from {args.from_json}")
        return 0
    pool = ray_pool(args)
    results = measure_all(ckpts, args, pool, plots, log)
    meta = run_record(args, results, pool, device, t0)
    for res in results:
        res["run"] = meta
    if args.keep:
        carry_over(args.keep, args, results)
    out.write_text(report(results, args, meta, out.parent) + "\n")
    out.with_name(out.stem.replace("BENCHMARKS", "bench") + ".json").write_text(
        json.dumps({"meta": meta, "args": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(args).items()},
                    "results": results}, indent=1, default=str))
    args.partial.unlink(missing_ok=True)  # the report holds every row now
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
