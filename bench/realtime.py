"""Real-time execution of a policy (default: the bundled arm's): replanning and seams, idle and
under CPU load.

    python bench/realtime.py --episodes 10 --load 2 --threads 1 --json docs/realtime.json

Every row is closed-loop and real time with live latency (bac_ros.sim.evaluate's realtime mode:
each chunk takes the time it takes on this machine while the world runs the chunk in force;
chunks are requested and joined by the policy node's own rule). Methods: full compute
(DDPM-100), BAC S=10 k=5 and `bac tune`'s schedule (DDPM-10). Rules (``--rules``, see
:func:`parse_rule`): ``at_end`` (the next chunk when the current one ends), ``latency_aware``,
``+inpaint[:W]``, ``+blend[:W]``, ``+warm:F``, ``+chunk:N`` (N actions per chunk, -1: every
predicted action, so that the robot runs the policy's own next actions while a late chunk is
computed); idle and with ``--load`` busy processes
(bac_ros.policy.timing.cpu_load: one pure-Python loop per process, each keeping a core busy).
Lockstep success (the world waits for every chunk) is the reference. Columns: success; mean
model latency; the share of control ticks without a fresh action (holds); the seam jump |first
new action - the action it replaces| (median/p95); the policy's own step-to-step change inside
its chunks (median/p95); the step-to-step change of the command as executed (p95/max): with
inpainting the first new action often equals the committed one by construction, and a jump
left over shows there. ``--lags`` sweeps extra delay (ticks on top of the live latency) with
one method (``--lag-method``, default tuned) under load: how much lag each of
``--lag-rules`` tolerates.

All rows use the same episode seeds (100000 on). The machine may be shared: each row records
the 1-minute load average, and latency figures hold for that machine at that time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bac_ros.policy.policy import Policy
from bac_ros.policy.realtime import Execution, execution_settings
from bac_ros.policy.timing import cpu_load
from bac_ros.sim.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "arm_lowdim"


def methods_of(checkpoint: Path) -> dict[str, str]:
    """Full compute and the checkpoint's shipped schedules (those it has)."""
    files = {"BAC S=10": "bac_s10_k5.yaml", "tuned": "tuned_x5.yaml"}
    return {"full": "full", **{name: f"bac:{checkpoint / f}" for name, f in files.items()
                               if (checkpoint / f).is_file()}}

RULES = ["at_end", "latency_aware", "latency_aware+inpaint", "at_end+chunk:-1",
         "latency_aware+chunk:-1", "latency_aware+inpaint+chunk:-1",
         "latency_aware+inpaint+warm:0.3+chunk:-1", "latency_aware+blend+chunk:-1"]


def parse_rule(text: str) -> Execution:
    """``REPLAN[+inpaint[:W]|+blend[:W]][+warm:F][+chunk:N]``, e.g.
    ``latency_aware+inpaint:0.8+warm:0.3+chunk:-1`` (W: seam_weight, default 0.5; F:
    warm_start fraction, default 0; N: chunk_actions, default 0 = n_action_steps, -1 = every
    predicted action)."""
    replan, *parts = text.split("+")
    values = {"replan": replan, "seam": "none", "seam_weight": 0.5, "warm_start": 0.0,
              "chunk_actions": 0}
    for part in parts:
        key, _, value = part.partition(":")
        if key in ("inpaint", "blend"):
            values.update(seam=key, seam_weight=float(value or 0.5))
        elif key == "warm" and value:
            values["warm_start"] = float(value)
        elif key == "chunk" and value:
            values["chunk_actions"] = int(value)
        else:
            raise ValueError(f"rule part {part!r} of {text!r}; expected inpaint[:W], "
                             "blend[:W], warm:F or chunk:N")
    return execution_settings(values)


def _row(report: dict) -> dict:
    rt = report.get("realtime") or {}
    keep = ("success_rate", "ci95", "mean_latency_ms", "wall_s")
    row = {**{k: report[k] for k in keep},
           **{k: v for k, v in rt.items() if k not in ("starts", "executed")}}
    return {k: None if isinstance(v, float) and math.isnan(v) else v  # JSON has no NaN
            for k, v in row.items()}


def _fmt(row: dict) -> str:
    if "hold_share" not in row:  # lockstep
        return (f"{row['success_rate']:>8.0%} {row['mean_latency_ms']:>9.0f}"
                f" {'-':>7} {'-':>15} {'-':>13} {'-':>13}")
    return (f"{row['success_rate']:>8.0%} {row['mean_latency_ms']:>9.0f}"
            f" {row['hold_share']:>7.0%} {_num(row['seam_jump_median']):>7}/"
            f"{_num(row['seam_jump_p95']):<7} {_num(row['step_change_median']):>6}/"
            f"{_num(row['step_change_p95']):<6} {_num(row['executed_step_p95']):>6}/"
            f"{_num(row['executed_step_max']):<6}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


HEADER = (f"{'method':<10} {'rule':<36} {'load':<6} {'success':>8} {'lat ms':>9} "
          f"{'holds':>7} {'seam jump':>15} {'own step':>13} {'run step':>13}")


def markdown(out: dict, command: str) -> str:
    """The rows of a run (``--json``) as a markdown table, with how to reproduce them."""
    def num(v):
        return "–" if v is None else f"{v:.3f}"

    ckpt = Path(out["checkpoint"])
    ckpt = ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt
    lines = [f"`{ckpt}`, {out['episodes']} episodes per row (seeds from 100000), "
             f"{out['machine']['cpus']} CPUs, {out['machine']['torch_threads']} torch thread(s); "
             f"loaded = {out['load_processes']} busy processes beside it. Reproduce: "
             f"`{command}`", "",
             "| method | rule | load | success | 95% CI | latency ms | holds | seam jump "
             "median / p95 | own step median / p95 | executed step p95 / max |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        lo, hi = r["ci95"]
        rt = "hold_share" in r
        lines.append(
            f"| {r['method']} | {r['rule']} | {r['load']} | {r['success_rate']:.0%} | "
            f"{lo:.0%} – {hi:.0%} | {r['mean_latency_ms']:.0f} | "
            + (f"{r['hold_share']:.0%} | {num(r['seam_jump_median'])} / "
               f"{num(r['seam_jump_p95'])} | {num(r['step_change_median'])} / "
               f"{num(r['step_change_p95'])} | {num(r['executed_step_p95'])} / "
               f"{num(r['executed_step_max'])} |" if rt else "– | – | – | – |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=CKPT)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--load", type=int, default=2, help="busy processes for the loaded rows")
    ap.add_argument("--methods", nargs="*", help="default: full and the shipped schedules")
    ap.add_argument("--rules", nargs="*", default=RULES, help=parse_rule.__doc__)
    ap.add_argument("--loads", nargs="*", default=["idle", "loaded"])
    ap.add_argument("--lags", type=int, nargs="*", default=[],
                    help="extra ticks of delay for the lag sweep (--lag-method, loaded)")
    ap.add_argument("--lag-method", default="tuned")
    ap.add_argument("--lag-rules", nargs="*",
                    default=["at_end", "latency_aware+inpaint", "latency_aware+inpaint+chunk:-1"])
    ap.add_argument("--skip-lockstep", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path, help="also write the rows as a markdown table")
    ap.add_argument("--from-json", type=Path, help="only render --markdown from a saved --json")
    args = ap.parse_args(argv)
    command = "python bench/realtime.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.from_json:
        if not args.markdown:
            raise SystemExit("--from-json renders a saved run: give --markdown FILE too")
        saved = json.loads(args.from_json.read_text())
        args.markdown.write_text(markdown(saved, saved.get("command", command)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = Policy.from_pretrained(args.checkpoint, device="cpu")
    methods = methods_of(args.checkpoint)
    args.methods = args.methods or list(methods)
    if set(args.methods) - set(methods):
        raise SystemExit(f"methods {sorted(set(args.methods) - set(methods))} are not available "
                         f"for {args.checkpoint}; expected some of {list(methods)}")
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "checkpoint": str(args.checkpoint), "episodes": args.episodes,
           "load_processes": args.load, "command": command, "rows": []}
    print(f"{args.episodes} episodes per row, seeds {args.seed}.., torch threads "
          f"{torch.get_num_threads()}, load = {args.load} busy processes\n", flush=True)
    print(HEADER, flush=True)

    def record(method, rule, load, report):
        row = {"method": method, "rule": rule, "load": load,
               "loadavg_1min": os.getloadavg()[0], **_row(report)}
        out["rows"].append(row)
        print(f"{method:<10} {rule:<36} {load:<6} {_fmt(row)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")

    t0 = time.perf_counter()
    for name in [] if args.skip_lockstep else args.methods:
        record(name, "lockstep", "-", evaluate(policy, methods[name], args.episodes, args.seed,
                                               mode="lockstep"))
    for load in args.loads:
        with cpu_load(args.load if load == "loaded" else 0):
            for name in args.methods:
                for rule in args.rules:
                    record(name, rule, load, evaluate(
                        policy, methods[name], args.episodes, args.seed, mode="realtime",
                        execution=parse_rule(rule)))
    if args.lags:
        print(f"\nlag sweep ({args.lag_method}, loaded): success by extra ticks of delay",
              flush=True)
        with cpu_load(args.load):
            for rule in args.lag_rules:
                for lag in args.lags:
                    r = evaluate(policy, methods[args.lag_method], args.episodes, args.seed,
                                 mode="realtime", execution=parse_rule(rule), lag_ticks=lag)
                    record(args.lag_method, f"{rule} lag +{lag}", "loaded", r)
    print(f"\n{time.perf_counter() - t0:.0f} s in all", flush=True)
    if args.markdown:
        args.markdown.write_text(markdown(out, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
