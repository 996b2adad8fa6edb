"""`make demo`: the whole job on a bundled model, as separate ROS processes over DDS.

The task is the checkpoint's (its config's ``task`` section): the bundled arm by default,
Meta-World's drawer-open with ``--checkpoint checkpoints/metaworld_drawer_open_lowdim``.

1. record the task driven by its expert into a rosbag2 (``bac record``: the topics sim_node
   publishes for that task),
2. compile a BAC schedule from that bag (the profiler reads the policy node's observations),
3. run sim_node and policy_node as two processes, in real time at the task's control rate (arm
   10 Hz, Meta-World 80 Hz), once with full compute and once with the BAC schedule, on the same
   episode seeds, with the policy node's default real-time execution (config/policy.yaml, for
   Meta-World config/policy_metaworld.yaml: replan, seam, seam_weight, warm_start,
   chunk_actions); for Meta-World also with the checkpoint's tuned_x5.yaml: at 80 Hz the 15
   predicted actions of a chunk last 187 ms, which full compute on a CPU (0.5-1 s) never
   beats, BAC S=10 (0.1-0.25 s) only on a quiet machine, and the tuned DDIM-5 (~35 ms) does,
4. print one table: success, model latency, speedup, achieved chunk rate, the share of control
   ticks without a fresh action, and the median seam jump (sim_node's summaries, per episode
   too, in ``<out>/summary.json``; the policy nodes' logs in ``<out>/policy_<i>.log``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from ament_index_python.packages import get_package_prefix, get_package_share_directory

from bac_ros.cache.schedule import Schedule
from bac_ros.models.vision import image_keys
from bac_ros.policy.loading import load_checkpoint
from bac_ros.sim.tasks import task_name, task_of

ROOT = Path(__file__).resolve().parents[2]
SHARE = Path(get_package_share_directory("bac_ros"))
#: The policy node's parameter file per task family (its limits and joints are the robot's).
POLICY_CONFIG = {"arm": "config/policy.yaml", "metaworld": "config/policy_metaworld.yaml"}
TUNED = "tuned_x5.yaml"  # `bac tune --speedup 5`'s schedule, shipped beside a checkpoint
BAC = "BAC S=10 k=5"


def _exe(name: str) -> list[str]:
    return [sys.executable, str(Path(get_package_prefix("bac_ros")) / "lib" / "bac_ros" / name)]


def _wait_configured(policy: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    """Until the policy node logs that it is configured (model loaded): the world starts moving
    only once it can be answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "configure failed" in text or policy.poll() is not None:
            raise RuntimeError(f"policy_node did not start (see {log}): {text[-2000:]}")
        if "configured " in text:
            return
        time.sleep(0.2)
    raise RuntimeError(f"policy_node was not configured within {timeout:.0f} s (see {log})")


def run_pair(checkpoint: Path, schedule: str, episodes: int, seed: int, env: dict,
             log: Path, policy_config: Path, sim_params: dict) -> dict:
    """sim_node (``sim_params`` over config/sim.yaml) + policy_node (``policy_config``) until
    the sim has run its episodes; the sim's summary."""
    policy = subprocess.Popen(
        _exe("policy_node") + ["--ros-args", "--params-file", str(policy_config),
                               "-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu"]
        + (["-p", f"schedule:={schedule}"] if schedule else []),
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_configured(policy, log)
        overrides = {"episodes": episodes, "seed": seed, **sim_params}
        sim = subprocess.run(
            _exe("sim_node") + ["--ros-args", "--params-file", str(SHARE / "config/sim.yaml")]
            + [a for k, v in overrides.items() for a in ("-p", f"{k}:={v}")],
            env=env, capture_output=True, text=True, timeout=60 * episodes + 60)
    finally:
        policy.terminate()
        policy.wait(timeout=20)
    lines = [ln for ln in sim.stdout.splitlines() if ln.startswith("{")]
    if sim.returncode != 0 or not lines:
        raise RuntimeError(f"sim_node failed (exit {sim.returncode}): {sim.stderr[-2000:]}")
    return json.loads(lines[-1])


def _ratio(full: dict, r: dict) -> float | None:
    """How many times faster than full compute; None when either got no chunk at all."""
    a, b = full["mean_inference_ms"], r["mean_inference_ms"]
    return a / b if a and b else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=SHARE / "checkpoints" / "arm_lowdim",
                    help="the task is this checkpoint's (its config's task section)")
    ap.add_argument("--episodes", type=int, default=10, help="per method (an arm episode "
                    "lasts at most 8 s in real time, a Meta-World one 6.25 s)")
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--max-steps", type=int, default=0,
                    help="episode step limit for sim_node; 0: the task's own")
    ap.add_argument("--max-observations", type=int, default=32,
                    help="observation histories from the bag that the schedule is profiled on")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    args = ap.parse_args(argv)
    if args.max_steps < 0 or args.max_observations < 1 or args.episodes < 1:
        raise SystemExit("--episodes and --max-observations must be at least 1 and --max-steps "
                         "0 (the task's own limit) or more")
    checkpoint = args.checkpoint.resolve()
    loaded = load_checkpoint(checkpoint)
    config, task = loaded.config, task_of(loaded)
    name = task_name(task)
    family = name.partition(":")[0]
    images = bool(image_keys(config["policy"]["obs"]))
    policy_config = SHARE / POLICY_CONFIG[family]
    params = yaml.safe_load(policy_config.read_text())["bac_policy"]["ros__parameters"]
    sim_params = {"task": name, "images": str(images).lower()}
    view = []  # a Meta-World camera policy sees through its checkpoint's camera
    if images and family == "metaworld":
        sim_params["camera"], view = task.camera, ["--camera", task.camera]
    if args.max_steps:
        sim_params["max_steps"] = args.max_steps
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", str(150 + os.getpid()
                                                                                % 50)),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1",
               PYTHONUNBUFFERED="1")
    bag = args.out / "expert_bag"
    schedule = args.out / "bac_s10_k5.yaml"
    methods = [("full", ""), (BAC, str(schedule))]
    tuned = checkpoint / TUNED
    if family == "metaworld":
        if tuned.is_file():
            methods.append((f"tuned {Schedule.load(tuned).method.get('candidate', 'x5')}",
                            str(tuned)))
        else:
            print(f"({checkpoint} has no {TUNED}: the tuned row is left out; `bac tune "
                  f"--checkpoint {checkpoint} --speedup 5 --out {tuned}` makes one)")
    steps = 2 + len(methods)
    t0 = time.perf_counter()
    print(f"[1/{steps}] recording the expert-driven task into a rosbag2 ...", flush=True)
    shutil.rmtree(bag, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "bac_ros.cli", "record", "--task", name, "--out",
                    str(bag), "--episodes", "10"] + view + ([] if images else ["--no-images"]),
                   check=True, env=env)
    print(f"[2/{steps}] compiling the BAC schedule from the bag ...", flush=True)
    subprocess.run([sys.executable, "-m", "bac_ros.cli", "profile", "--checkpoint",
                    str(checkpoint), "--bag", str(bag), "--joint-names", *params["joint_names"],
                    "--max-observations", str(args.max_observations), "-S", "10", "-k", "5",
                    "--device", "cpu", "--out", str(schedule)], check=True, env=env)
    rows = {}
    for i, (method, sched) in enumerate(methods):
        print(f"[{3 + i}/{steps}] sim_node + policy_node, {method}, {args.episodes} episodes in "
              "real time ...", flush=True)
        rows[method] = run_pair(checkpoint, sched, args.episodes, args.seed, env,
                                args.out / f"policy_{i}.log", policy_config, sim_params)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    full = rows["full"]
    print(f"\nreal-time execution ({POLICY_CONFIG[family]}): " + ", ".join(
        f"{k} {params[k]}"
        for k in ("replan", "seam", "seam_weight", "warm_start", "chunk_actions")))
    print(f"{'method':<14}{'success':>10}{'latency ms':>12}{'speedup':>9}{'chunks/s':>10}"
          f"{'holds':>8}{'seam jump':>11}")
    for method, r in rows.items():
        jump, ms, speed = r["seam_jump_median"], r["mean_inference_ms"], _ratio(full, r)
        print(f"{method:<14}{r['successes'] / r['episodes']:>10.0%}"
              + (f"{ms:>12.1f}" if ms else f"{'-':>12}")
              + (f"{speed:>8.1f}x" if speed else f"{'-':>9}")
              + f"{r['chunk_rate_hz']:>10.1f}{r['hold_share']:>8.0%}"
              f"{math.nan if jump is None else jump:>11.3f}")
    last = args.seed + args.episodes - 1
    capped = f", episodes capped at {args.max_steps} steps" if args.max_steps else ""
    print(f"(real time at {1 / task.dt:g} Hz on this machine, seeds {args.seed}..{last}"
          f"{capped}, {time.perf_counter() - t0:.0f} s in all)")
    rate = {k: r["successes"] / r["episodes"] for k, r in rows.items()}

    def faster(method: str) -> str:
        speed = _ratio(full, rows[method])
        return "?x" if speed is None else f"{speed:.1f}x"  # ?: no chunk arrived

    extra = "".join(f", {m} {rate[m]:.0%} ({faster(m)} faster)" for m in rows
                    if m not in ("full", BAC))
    print(f"demo: BAC {faster(BAC)} faster than full, success full {rate['full']:.0%} "
          f"BAC {rate[BAC]:.0%}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
