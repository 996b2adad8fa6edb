"""`make demo`: the whole job on the bundled model, as separate ROS processes over DDS.

1. record the task driven by its expert into a rosbag2 (rosbags writer),
2. compile a BAC schedule from that bag (the profiler reads the policy node's observations),
3. run sim_node and policy_node as two processes, in real time at 10 Hz, once with full
   compute and once with the BAC schedule, on the same episode seeds, with the policy node's
   default real-time execution (config/policy.yaml: replan, seam, seam_weight, warm_start,
   chunk_actions),
4. print one table: success, model latency, speedup, achieved chunk rate, the share of control
   ticks without a fresh action, and the median seam jump.
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

ROOT = Path(__file__).resolve().parents[2]
SHARE = Path(get_package_share_directory("bac_ros"))


def _exe(name: str) -> list[str]:
    return [sys.executable, str(Path(get_package_prefix("bac_ros")) / "lib" / "bac_ros" / name)]


def run_pair(checkpoint: Path, schedule: str, episodes: int, seed: int, env: dict,
             log: Path) -> dict:
    """sim_node + policy_node until the sim has run its episodes; the sim's summary."""
    policy = subprocess.Popen(
        _exe("policy_node") + ["--ros-args", "--params-file", str(SHARE / "config/policy.yaml"),
                               "-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu"]
        + (["-p", f"schedule:={schedule}"] if schedule else []),
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(8.0)  # model load before the world starts moving
        sim = subprocess.run(
            _exe("sim_node") + ["--ros-args", "--params-file", str(SHARE / "config/sim.yaml"),
                                "-p", f"episodes:={episodes}", "-p", f"seed:={seed}",
                                "-p", "images:=false"],
            env=env, capture_output=True, text=True, timeout=60 * episodes + 60)
    finally:
        policy.terminate()
        policy.wait(timeout=20)
    lines = [ln for ln in sim.stdout.splitlines() if ln.startswith("{")]
    if sim.returncode != 0 or not lines:
        raise RuntimeError(f"sim_node failed (exit {sim.returncode}): {sim.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=SHARE / "checkpoints" / "arm_lowdim")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", str(150 + os.getpid()
                                                                                % 50)),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1",
               PYTHONUNBUFFERED="1")
    bag = args.out / "expert_bag"
    schedule = args.out / "bac_s10_k5.yaml"
    t0 = time.perf_counter()
    print("[1/4] recording the expert-driven task into a rosbag2 ...", flush=True)
    shutil.rmtree(bag, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "bac_ros.cli", "record", "--out", str(bag),
                    "--episodes", "10", "--no-images"], check=True, env=env)
    print("[2/4] compiling the BAC schedule from the bag ...", flush=True)
    subprocess.run([sys.executable, "-m", "bac_ros.cli", "profile", "--checkpoint",
                    str(args.checkpoint), "--bag", str(bag), "--max-observations", "32",
                    "-S", "10", "-k", "5", "--device", "cpu", "--out", str(schedule)],
                   check=True, env=env)
    rows = {}
    for i, (name, sched) in enumerate((("full", ""), ("BAC S=10 k=5", str(schedule)))):
        print(f"[{3 + i}/4] sim_node + policy_node, {name}, {args.episodes} episodes in real "
              "time ...", flush=True)
        rows[name] = run_pair(args.checkpoint, sched, args.episodes, args.seed, env,
                              args.out / f"policy_{i}.log")
    full, bac = rows["full"], rows["BAC S=10 k=5"]
    speed = full["mean_inference_ms"] / bac["mean_inference_ms"]
    params = yaml.safe_load((SHARE / "config/policy.yaml").read_text())
    params = params["bac_policy"]["ros__parameters"]
    print("\nreal-time execution (config/policy.yaml): " + ", ".join(
        f"{k} {params[k]}"
        for k in ("replan", "seam", "seam_weight", "warm_start", "chunk_actions")))
    print(f"{'method':<14}{'success':>10}{'latency ms':>12}{'speedup':>9}{'chunks/s':>10}"
          f"{'holds':>8}{'seam jump':>11}")
    for name, r in rows.items():
        jump = r["seam_jump_median"]
        print(f"{name:<14}{r['successes'] / r['episodes']:>10.0%}"
              f"{r['mean_inference_ms']:>12.1f}"
              f"{full['mean_inference_ms'] / r['mean_inference_ms']:>8.1f}x"
              f"{r['chunk_rate_hz']:>10.1f}{r['hold_share']:>8.0%}"
              f"{math.nan if jump is None else jump:>11.3f}")
    last = args.seed + args.episodes - 1
    print(f"(real time at 10 Hz on this machine, seeds {args.seed}..{last}, "
          f"{time.perf_counter() - t0:.0f} s in all)")
    rate = {k: r["successes"] / r["episodes"] for k, r in rows.items()}
    print(f"demo: BAC {speed:.1f}x faster than full, success full {rate['full']:.0%} "
          f"BAC {rate['BAC S=10 k=5']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
