"""Soak: the real policy_node process under sensor traffic for minutes; memory and latency flat?

    python bench/soak.py --minutes 10 [--camera-hz 60] [--rate-hz 5] [--json out.json]

What runs and what is measured: bac_ros/nodes/soak.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from bac_ros.nodes.soak import soak  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--camera-hz", type=float, default=60.0)
    ap.add_argument("--rate-hz", type=float, default=5.0, help="the node's inference rate")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    result = soak(args.minutes * 60, args.camera_hz, args.rate_hz)
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["node_alive"] and not result["unsafe_actions_published"] and \
        result["chunks_after_warmup"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
