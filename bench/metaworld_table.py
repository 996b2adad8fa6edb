"""A Meta-World checkpoint against its scripted expert: success of each sampling method on the
same seeded episodes, and each method's speedup over full compute measured side by side.

    python bench/metaworld_table.py --checkpoint checkpoints/metaworld_drawer_open_lowdim \
        --episodes 200 --out docs/eval_metaworld_drawer_open.md

Rows: the scripted expert (the reference the floor is relative to); full compute (DDPM-100);
the checkpoint's shipped ``bac_s10_k5.yaml`` and ``tuned_x5.yaml``; DDIM-10, DDPM-10, and
uniform caching every 10 steps (the paper's baseline at BAC S=10's budget). Lockstep episodes
(seeds from 100000, disjoint from the demonstration seeds from 0), one batch per method with the
same initial noise. Latency: median batch-1 ``predict``, every method once per round in turn, so
a busy machine slows all alike and the ratios stay meaningful. Offline fidelity: energy distance
of each method's chunks to full compute's on observation windows of fresh expert episodes
(seeds from 0), as in `make bench`, so its cross-task summary can ask whether it ranks methods as
success does.

Each method's episodes are saved as they finish (``<out>.partial.json``, kept after the table is
written); a rerun with the same model (its fingerprint, not only its folder), seeds and episode
count starts from them, measuring only the methods not there yet (e.g. a ``tuned_x5.yaml``
written since) and those whose schedule file has changed (rows record its sha256).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bac_ros.cache.schedule import file_sha256
from bac_ros.policy.fidelity import CANDIDATE_SEED, REFERENCE_SEED, draw_chunks, fidelity
from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label
from bac_ros.sim.evaluate import apply_method, evaluate, expert_success, time_methods
from bac_ros.sim.tasks import task_demos, task_of
from bac_ros.train.dataset import observation_windows


def methods_of(checkpoint: Path) -> dict[str, str]:
    methods = {"full (DDPM-100)": "full"}
    for name, file in (("BAC S=10 k=5", "bac_s10_k5.yaml"),
                       ("bac tune (tuned_x5)", "tuned_x5.yaml")):
        if (checkpoint / file).is_file():
            methods[name] = f"bac:{checkpoint / file}"
    methods.update({"DDIM-10": "ddim:10", "DDPM-10": "ddpm:10", "uniform:10": "uniform:10"})
    return methods


def schedule_hash(method: str) -> str | None:
    """The sha256 of a ``bac:FILE`` method's schedule file (None for the other methods)."""
    if not method.startswith("bac:"):
        return None
    return file_sha256(Path(method.split(":", 1)[1]))


def fidelity_of(policy: Policy, task, methods: dict[str, str], n_obs: int, n_samples: int
                ) -> dict[str, dict]:
    """Energy distance of every method's chunks to full compute's (bac_ros.policy.fidelity)."""
    data = task_demos(task, max(4, n_obs // 2), seed=0, images=policy.reads_images)
    obs = observation_windows(data, list(policy.obs_spec), policy.n_obs_steps, n_obs, seed=1)
    apply_method(policy, "full")
    reference = draw_chunks(policy, obs, n_samples, seed=REFERENCE_SEED)
    out = {}
    for name, method in methods.items():
        apply_method(policy, method)
        out[name] = fidelity(reference, draw_chunks(policy, obs, n_samples, seed=CANDIDATE_SEED))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=10, help="latency rounds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fidelity-obs", type=int, default=16,
                    help="observation windows the offline fidelity is measured on")
    ap.add_argument("--fidelity-samples", type=int, default=16, help="chunks per window")
    ap.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = ap.parse_args(argv)

    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    task = task_of(policy)
    partial = args.out.with_suffix(".partial.json")
    run = {"checkpoint": str(args.checkpoint), "model": policy.fingerprint,
           "episodes": args.episodes, "seed": args.seed,
           "device": str(policy.device)}  # rows hold its latencies: never mixed across devices
    done = json.loads(partial.read_text()) if partial.is_file() else {}
    done = done.get("rows", {}) if done.get("run") == run else {}
    methods = methods_of(args.checkpoint)
    done = {name: row for name, row in done.items()
            if name not in methods or row.get("schedule_sha256") == schedule_hash(methods[name])}
    if done:
        print(f"resuming from {partial}: {', '.join(done)}", flush=True)

    def keep(row: dict) -> dict:
        done[row["name"]] = row
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"run": run, "rows": done}, indent=1))
        return row

    if "scripted expert" not in done:
        keep({"name": "scripted expert", "speedup": None,
              **expert_success(task, args.seed, args.episodes)})
    rows = [done["scripted expert"]]
    print(f"expert: {rows[0]['success_rate']:.1%}", flush=True)
    for name, method in methods.items():
        if name not in done:
            r = evaluate(policy, method, args.episodes, args.seed, "lockstep")
            keep({k: v for k, v in r.items() if k != "per_episode"}
                 | {"name": name, "schedule_sha256": schedule_hash(method)})
        r = done[name]
        rows.append(r)
        lo, hi = r["ci95"]
        print(f"{name:<16} success {r['success_rate']:6.1%} [{lo:.1%}, {hi:.1%}] "
              f"({r['wall_s']:.0f} s)", flush=True)
    fid = fidelity_of(policy, task, methods, args.fidelity_obs, args.fidelity_samples)
    for r in rows[1:]:
        r["fidelity_energy"] = fid[r["name"]]["energy"]
        r["fidelity_energy_sem"] = fid[r["name"]]["energy_sem"]

    window = {k: np.stack([v] * policy.n_obs_steps)
              for k, v in _first_obs(task, policy.reads_images).items()
              if k in policy.obs_spec}
    times = time_methods(policy, methods, window, args.repeats)
    median = {name: float(np.median(t)) for name, t in times.items()}
    for r in rows[1:]:
        r["latency_ms"] = 1e3 * median[r["name"]]
        r["speedup"] = median["full (DDPM-100)"] / median[r["name"]]

    device = device_label(policy.device)
    full = rows[1]["success_rate"]
    lines = [
        f"# Meta-World `{task.task}`: `{args.checkpoint}`",
        "",
        f"Lockstep, {args.episodes} episodes (seeds {args.seed}..{args.seed + args.episodes - 1}, "
        "disjoint from the demonstration seeds), the same seeds for every row and the same "
        f"initial noise for every method. Latency: median batch-1 `predict` on {device}, "
        f"{args.repeats} interleaved rounds. Energy distance: {args.fidelity_obs} observation "
        f"windows of expert episodes x {args.fidelity_samples} chunks, against full compute's "
        "drawn with other noise (full against itself shows the noise floor).",
        "",
        f"Reproduce: `python bench/metaworld_table.py --checkpoint {args.checkpoint} "
        f"--episodes {args.episodes} --out {args.out}`",
        "",
        "| method | success | 95% CI | vs full (points) | latency (ms) | speedup | "
        "energy distance to full |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        vs = "" if r["name"] in ("scripted expert", "full (DDPM-100)") else \
            f"{100 * (r['success_rate'] - full):+.1f}"
        lat = f"{r['latency_ms']:.1f}" if "latency_ms" in r else ""
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        en = (f"{r['fidelity_energy']:.3f} ± {r['fidelity_energy_sem']:.3f}"
              if "fidelity_energy" in r else "")
        lines.append(f"| {r['name']} | {r['success_rate']:.1%} | {lo:.1%} – {hi:.1%} | {vs} | "
                     f"{lat} | {sp} | {en} |")
    floor = 0.8 * rows[0]["success_rate"]
    lines += ["", f"Floor (issue 17): full compute >= 80% of the expert's rate = {floor:.1%}: "
              f"{'met' if full >= floor else 'NOT met'} ({full:.1%})."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"checkpoint": str(args.checkpoint), "task": task.task,
         "camera": task.camera if policy.reads_images else None, "device": device,
         "fidelity": {"observations": args.fidelity_obs, "samples": args.fidelity_samples},
         "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


def _first_obs(task, images: bool) -> dict:
    from bac_ros.sim.tasks import make_env

    env = make_env(task, images)
    obs = env.reset(0)
    env.close()
    return obs


if __name__ == "__main__":
    raise SystemExit(main())
