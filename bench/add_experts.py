"""Adds the scripted expert's success on the section's own evaluation seeds to each Meta-World
section of a saved `make bench` JSON that lacks it: sections measured before the bench measured
the expert as a section finishes. `python bench/run_bench.py --from-json FILE` then shows it.

    python bench/add_experts.py docs/bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bac_ros.policy.policy import Policy
from bac_ros.sim.evaluate import expert_success
from bac_ros.sim.tasks import task_of

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("bench_json", type=Path, help="a saved make bench JSON (docs/bench.json)")
    path = ap.parse_args(argv).bench_json
    saved = json.loads(path.read_text())
    seed, episodes = saved["args"]["seed"], saved["args"]["episodes"]  # one for all sections
    t0 = time.perf_counter()
    for res in saved["results"]:
        if "expert" in res:
            continue
        policy = Policy.from_pretrained(ROOT / res["checkpoint"], device="cpu")
        expert = expert_success(task_of(policy), seed, episodes)
        if expert is None:  # the arm: no closed-loop expert
            continue
        res["expert"] = expert
        path.write_text(json.dumps(saved, indent=1))  # each section saved as it is measured
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {res['checkpoint']}: scripted "
              f"expert {expert['success_rate']:.1%} ({expert['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
