"""The policy node's own cost per chunk, and what a client in another process sees of it
(bac_ros/nodes/overhead.py says what is counted and how).

    python bench/node_overhead.py --checkpoint checkpoints/arm_lowdim \
        --schedule checkpoints/arm_lowdim/bac_s10_k5.yaml --chunks 40
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bac_ros.nodes.overhead import measure


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--schedule", default="")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--device", default="auto", help="the policy node's device")
    args = ap.parse_args(argv)
    r = measure(args.checkpoint, args.schedule, args.chunks, device=args.device)
    print(f"node overhead: median {r['node_overhead_ms_median']:.2f} ms per chunk (last 50); "
          f"client view (published -> received, minus model): median "
          f"{r['client_overhead_ms_median']:.2f} ms, p95 {r['client_overhead_ms_p95']:.2f} ms "
          f"(model {r['model_ms_median']:.1f} ms, {r['chunks']} chunks, node on {r['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
