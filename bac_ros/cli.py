"""`bac`: the command line of the ROS-free core.

    bac convert SRC DST              Chi et al. .ckpt (or native folder) -> native folder
    bac profile --checkpoint DIR --observations OBS.npz|--bag BAG --out SCHEDULE.yaml
    bac record [--task metaworld:T] --out BAG
                                     the expert-driven task as a rosbag2 (sqlite3 or mcap)
    bac inspect SCHEDULE.yaml [--out DIR]
    bac demos --out DEMOS.npz        record expert demonstrations of the bundled task
    bac windows --checkpoint DIR --demos DEMOS.npz --out OBS.npz
                                     observation histories from demonstrations (to profile)
    bac train --variant lowdim --out DIR
    bac distill --lowdim DIR --out DIR
                                     image DP-T from the low-dim one (scene-finding encoder;
                                     the arm or Meta-World, as the checkpoint says)
    bac eval --checkpoint DIR --method bac:FILE --mode lockstep --episodes 200 --json OUT
                                     [--workers N | --ray ADDRESS]
    bac tune --checkpoint DIR --bag BAG --speedup 5 --out TUNED.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from bac_ros import __version__


def _output(path: Path) -> Path:
    """An output path whose folder exists, as schedule and checkpoint writes make theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _convert(args) -> int:
    import torch

    from bac_ros.policy.checkpoint import save_native
    from bac_ros.policy.loading import load_checkpoint

    ckpt = load_checkpoint(args.src)
    dtype = {"float16": torch.float16, "float32": torch.float32}[args.weights_dtype]
    out = save_native(ckpt, args.dst, weights_dtype=dtype)
    n = sum(v.numel() for k, v in ckpt.tensors.items() if k.startswith("model."))
    print(f"wrote {out} ({ckpt.config['policy']['kind']}, {n / 1e6:.2f}M model parameters, "
          f"{args.weights_dtype} weights)")
    return 0


def _check_observation_args(args) -> None:
    """``--joint-names`` and ``--max-observations`` of profile and tune: refused where they
    would be ignored; the arm's joints when a bag is read without them."""
    if args.joint_names is not None and not args.bag:
        raise ValueError("--joint-names picks joints from a bag's joint_states; give --bag")
    if args.max_observations < 0:
        raise ValueError(f"--max-observations is {args.max_observations}; expected 0 (all) or "
                         "a positive count")
    if args.joint_names is None:
        from bac_ros.sim.arm import JOINT_NAMES

        args.joint_names = list(JOINT_NAMES)


def _profile(args) -> int:
    from tqdm import tqdm

    from bac_ros.policy.observations import load_observations
    from bac_ros.policy.policy import Policy

    _check_observation_args(args)
    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    if args.bag:
        from bac_ros.io.bag import read_observation_windows

        observations = read_observation_windows(args.bag, policy, args.joint_names)
        print(f"read {len(observations)} observation histories from {args.bag}")
    else:
        observations = load_observations(args.observations)
    if args.max_observations:
        observations = observations[: args.max_observations]
    with tqdm(total=len(observations), desc="profiling", unit="obs", file=sys.stderr) as bar:
        result = policy.profile(observations, batch_size=args.batch_size, seed=args.seed,
                                progress=bar.update)
    sched = policy.compile_schedule(result, budget=args.budget, top_k=args.top_k,
                                    metric=args.metric, last_step=not args.no_last_step,
                                    source=args.bag or args.observations)
    out = sched.save(args.out)
    result.save(out.with_suffix(".profile.npz"))
    plan = sched.plan(policy.engine.blocks)
    print(f"wrote {out} (id {sched.id}): {plan.sum()} of {plan.size} block-steps update "
          f"({plan.mean():.1%}), FLOP ratio {policy.flop_ratio(plan):.2f}x")
    if args.plots:
        _write_plots(sched, result, Path(args.plots))
    return 0


def _tune_observations(args, policy) -> tuple[list, Path | str]:
    """Observation histories for tuning and their source: a bag, an npz (paths, which the
    schedule records by name and hash), or expert demonstrations (a description)."""
    if args.bag:
        from bac_ros.io.bag import read_observation_windows

        return read_observation_windows(args.bag, policy, args.joint_names), args.bag
    if args.observations:
        from bac_ros.policy.observations import load_observations

        return load_observations(args.observations), args.observations
    from bac_ros.sim.tasks import task_demos, task_of
    from bac_ros.train.dataset import observation_windows

    task = task_of(policy)
    data = task_demos(task, args.demos, seed=0, images=policy.reads_images)
    return (observation_windows(data, list(policy.obs_spec), policy.n_obs_steps, 64, seed=0),
            f"{args.demos} expert demonstrations of {getattr(task, 'task', 'the bundled arm')}")


def _tune(args) -> int:
    import json

    from bac_ros.policy.policy import Policy
    from bac_ros.policy.tune import tune, tuned_schedule

    _check_observation_args(args)
    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    observations, source = _tune_observations(args, policy)
    if args.max_observations:
        observations = observations[: args.max_observations]
    print(f"tuning on {len(observations)} observation histories from {source}")
    best, cands, ref = tune(policy, observations, latency_ms=args.latency_ms,
                            speedup=args.speedup, fidelity_obs=args.fidelity_obs,
                            n_samples=args.samples, refinements=args.refine)
    sched = tuned_schedule(best, ref, source, len(observations))
    out = sched.save(args.out)
    print(f"wrote {out} (id {sched.id}): {best.name}, {best.latency_ms:.1f} ms "
          f"({best.speedup:.2f}x faster than full compute here), energy distance "
          f"{best.scores['energy']:.4f} (full vs full: {ref['noise_floor']['energy']:.4f})")
    if args.report:
        _output(args.report).write_text(json.dumps(
            {"winner": best.name, "reference": ref, "candidates": [c.row() for c in cands]},
            indent=1, default=float))
    if args.keep:
        for c in cands:
            if c.scores:
                name = c.name.lower().replace(" + ", "_").replace(" ", "").replace("=", "")
                c.schedule.save(Path(args.keep) / f"{name}.yaml")
    return 0


def _write_plots(sched, result, folder: Path) -> None:
    from bac_ros.cache import plots
    from bac_ros.cache.plans import plan_from_steps

    folder.mkdir(parents=True, exist_ok=True)
    names = list(sched.steps)
    plan = plan_from_steps([sched.steps[n] for n in names], sched.num_steps)
    written = [plots.update_raster(names, plan, folder / "updates.png", title=sched.id)]
    if result is not None:
        metric = sched.method.get("metric", "cosine")
        heatmap = folder / f"similarity_{metric}.png"
        written.append(plots.similarity_heatmaps(result, metric, heatmap))
        written.append(plots.block_errors(result, sched.method.get("bua_blocks", []),
                                          folder / "block_errors.png"))
    for p in written:
        print(f"wrote {p}")


def _inspect(args) -> int:
    from bac_ros.cache.profile import ProfileResult
    from bac_ros.cache.schedule import Schedule

    sched = Schedule.load(args.schedule)
    m, p = sched.method, sched.provenance
    print(f"schedule {sched.id}: model {sched.fingerprint}, {sched.sampler['type']} "
          f"K={sched.num_steps}")
    print(f"method: {m.get('name')} metric={m.get('metric')} S={m.get('budget')} "
          f"k={m.get('top_k')} last step forced={m.get('force_last_step')}")
    sha = p.get("sha256")
    digest = (f"sha256 of {len(sha)} files, " if isinstance(sha, dict) else
              f"sha256 {sha}, " if sha else "")
    print(f"provenance: {p.get('source')} ({digest}{p.get('observations')} observations, "
          f"{p.get('created')}, {p.get('tool')})")
    print(f"updates: {sched.update_ratio():.1%} of block-steps")
    bua = set(m.get("bua_blocks", []))
    for name, steps in sched.steps.items():
        mark = " [BUA]" if name in bua else ""
        print(f"  {name:<32} {len(steps):>3} updates{mark}: {steps}")
    if args.out:
        profile_file = Path(args.schedule).with_suffix(".profile.npz")
        result = ProfileResult.load(profile_file) if profile_file.is_file() else None
        if result is None:
            print(f"no {profile_file.name} beside the schedule: only the update raster is drawn")
        _write_plots(sched, result, Path(args.out))
    return 0


def _metaworld_task(task: str, camera: str | None = None, images: bool = True):
    """The Meta-World task config ``--task`` names (seen through ``camera``, if given), or None
    for the bundled arm."""
    from bac_ros.sim.metaworld import MetaWorldTaskConfig
    from bac_ros.sim.tasks import parse_task

    try:
        parsed = parse_task(task)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    mw = parsed if isinstance(parsed, MetaWorldTaskConfig) else None
    if camera is None:
        return mw
    if mw is None or not images:
        raise ValueError("--camera picks the Meta-World camera of the recorded images; "
                         "expected a metaworld:TASK with images")
    return dataclasses.replace(mw, camera=camera)


def _demos(args) -> int:
    from bac_ros.sim.demos import generate_demos, save_npz

    mw = _metaworld_task(args.task, args.camera, not args.no_images)
    if mw is not None:
        from bac_ros.sim.metaworld import generate_demos as metaworld_demos

        data = metaworld_demos(mw, args.episodes, seed=args.seed,
                               noise=0.1 if args.noise is None else args.noise,
                               with_images=not args.no_images)
        save_npz(args.out, data)
        print(f"wrote {args.out}: {len(data['episode_ends'])} {mw.task} episodes, "
              f"{len(data['action'])} steps")
        return 0
    if args.noise is not None:
        raise ValueError("--noise perturbs a Meta-World expert's actions; the arm's expert "
                         "varies its demonstrations by their seeds")
    data = generate_demos(args.episodes, seed=args.seed, with_images=not args.no_images)
    save_npz(_output(args.out), data)
    sides = data["episode_sides"]
    print(f"wrote {args.out}: {len(sides)} episodes, {len(data['action'])} steps, "
          f"left {np.mean(sides > 0):.0%} / right {np.mean(sides < 0):.0%}")
    return 0


def _windows(args) -> int:
    from bac_ros.models.vision import image_keys
    from bac_ros.policy.loading import load_checkpoint
    from bac_ros.policy.observations import save_observations
    from bac_ros.sim.demos import load_npz
    from bac_ros.sim.metaworld import MetaWorldTaskConfig, demos_camera
    from bac_ros.sim.tasks import task_of
    from bac_ros.train.dataset import observation_windows

    ckpt = load_checkpoint(args.checkpoint)
    pol, task, data = ckpt.config["policy"], task_of(ckpt), load_npz(args.demos)
    images = bool(image_keys(pol["obs"]))
    if images and "image" not in data:
        raise ValueError(f"{args.demos} holds no camera frames; {args.checkpoint} reads images "
                         "(record them without --no-images)")
    if images and isinstance(task, MetaWorldTaskConfig) and demos_camera(data) != task.camera:
        raise ValueError(f"{args.demos} holds frames of the {demos_camera(data)!r} camera; "
                         f"{args.checkpoint} sees through {task.camera!r} (bac demos --camera "
                         f"{task.camera} records its view)")
    windows = observation_windows(data, list(pol["obs"]),
                                  int(pol["n_obs_steps"]), args.count, args.seed)
    save_observations(_output(args.out), windows)
    print(f"wrote {args.out}: {len(windows)} observation histories of {list(pol['obs'])}")
    return 0


def _record(args) -> int:
    from bac_ros.sim.record import record_expert_bag

    task = _metaworld_task(args.task, args.camera, not args.no_images)  # None: the arm
    out = record_expert_bag(_output(args.out), args.episodes, args.seed, args.storage,
                            images=not args.no_images, task=task)
    print(f"wrote {out} ({args.storage}, {args.episodes} expert episodes"
          f"{f' of {task.task}' if task else ''})")
    return 0


def _distill(args) -> int:
    from bac_ros.policy.checkpoint import load_native, save_native
    from bac_ros.sim.demos import generate_demos, load_npz
    from bac_ros.sim.metaworld import MetaWorldTaskConfig
    from bac_ros.sim.tasks import task_of
    from bac_ros.train.distill import distill_image_policy

    metaworld = isinstance(task_of(load_native(args.lowdim)), MetaWorldTaskConfig)
    if args.camera is not None and not metaworld:
        raise ValueError("--camera picks a Meta-World camera; the arm renders its one view")
    if metaworld and args.episodes is not None:
        raise ValueError("--episodes generates arm demonstrations; a Meta-World distillation "
                         "renders scenes of its own (--scene-episodes)")
    if args.demos and args.episodes is not None:
        raise ValueError("--episodes generates demonstrations; --demos gives them already")
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes is {args.episodes}; expected a positive count")
    if args.demos:
        data = load_npz(args.demos)
    else:
        data = None if metaworld else generate_demos(args.episodes or 200, seed=0)
    ckpt = distill_image_policy(args.lowdim, data, args.steps, args.batch_size, args.lr,
                                args.seed, scene_episodes=args.scene_episodes, init=args.init,
                                rollouts=args.rollouts, camera=args.camera)
    save_native(ckpt, args.out)
    print(f"wrote {args.out}")
    return 0


def _train(args) -> int:
    from bac_ros.policy.build import PAPER_MODEL
    from bac_ros.sim.demos import generate_demos, load_npz
    from bac_ros.train.train import TrainConfig, task_spec, train

    if not 0.0 <= args.attn_dropout < 1.0:
        raise ValueError(f"--attn-dropout must be in [0, 1), got {args.attn_dropout}")
    mw = _metaworld_task(args.task)
    if mw is not None and not args.demos:
        raise SystemExit("a Meta-World task trains on recorded demonstrations: pass --demos "
                         "(made by bac demos --task ...)")
    if args.demos and args.episodes is not None:
        raise ValueError("--episodes records demonstrations; --demos gives them already")
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes is {args.episodes}; expected a positive count")
    data = (load_npz(args.demos) if args.demos else
            generate_demos(args.episodes or 200, seed=0, with_images=args.variant == "image"))
    spec = None
    if mw is not None:
        from bac_ros.sim.metaworld import demos_camera

        if args.variant == "image":  # the checkpoint records the view its frames came from
            mw = dataclasses.replace(mw, camera=demos_camera(data))
        spec = task_spec(mw, args.variant)
    cfg = TrainConfig(variant=args.variant, steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, warmup_steps=args.warmup_steps,
                      model={**PAPER_MODEL, "p_drop_attn": args.attn_dropout})
    budget = args.max_minutes * 60 if args.max_minutes else None
    train(data, args.out, cfg, device=args.device, resume=not args.restart, time_budget_s=budget,
          init=args.init, task=spec)
    return 0


def _eval(args) -> int:
    from bac_ros.policy.realtime import execution_settings
    from bac_ros.sim import cluster
    from bac_ros.sim.evaluate import AT_END

    if args.latency_ms is not None and args.mode == "lockstep":
        raise ValueError("--latency-ms fixes the chunk latency of real time; lockstep waits for "
                         "every chunk, so it would change nothing; expected --mode realtime")
    execution = execution_settings({"replan": args.replan, "seam": args.seam,
                                    "seam_weight": args.seam_weight,
                                    "warm_start": args.warm_start,
                                    "chunk_actions": args.chunk_actions})
    if execution != AT_END:
        if args.workers is not None or args.ray is not None:
            raise ValueError("--replan/--seam/--warm-start/--chunk-actions run live real time, "
                             "which needs a quiet single machine; drop --workers/--ray for them")
        return _eval_execution(args, execution)
    job = cluster.Cell(str(args.checkpoint), args.method, args.mode, args.seed, args.episodes,
                       args.latency_ms, args.device)
    if args.workers is None and args.ray is None:
        if args.cell_episodes is not None:
            raise ValueError("--cell-episodes splits the episodes between Ray workers; give "
                             "--workers N or --ray ADDRESS too")
        from tqdm import tqdm

        with tqdm(total=args.episodes, desc=f"{args.method} {args.mode}", unit="ep",
                  file=sys.stderr) as bar:
            report = cluster.run_cell(job, progress=bar.update)
        report["success_source"] = "local, one process"
        return _eval_report(args, report)
    try:
        return _eval_cluster(args, job)
    except cluster.ClusterError as e:
        print(f"bac eval: error: {e}", file=sys.stderr)
        return 1


def _eval_execution(args, execution) -> int:
    """Live real time with the policy node's replanning, seam and warm-start rules."""
    from tqdm import tqdm

    from bac_ros.policy.policy import Policy
    from bac_ros.sim.evaluate import evaluate

    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    with tqdm(total=args.episodes, desc=f"{args.method} {args.mode}", unit="ep",
              file=sys.stderr) as bar:
        report = evaluate(policy, args.method, args.episodes, args.seed, args.mode,
                          progress=bar.update, latency_ms=args.latency_ms,
                          execution=execution)
    report["success_source"] = "local, one process"
    return _eval_report(args, report)


def _eval_cluster(args, job) -> int:
    """The episodes in cells on Ray workers; latency measured here first, in one process."""
    from dataclasses import replace

    from tqdm import tqdm

    from bac_ros.policy.policy import Policy
    from bac_ros.sim import cluster
    from bac_ros.sim.evaluate import apply_method, evaluate

    cluster.check_job(job)
    pool = cluster.Cluster(args.workers, args.ray, args.device)
    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    if args.mode == "lockstep":  # also checks the method here before any worker starts
        job = replace(job, latency_ms=evaluate(policy, args.method, 1, args.seed,
                                               "lockstep")["mean_latency_ms"])
    else:
        apply_method(policy, args.method)
    cells: list[dict] = []
    with pool, \
            tqdm(total=args.episodes, desc=f"{args.method} {args.mode}", unit="ep",
                 file=sys.stderr) as bar:
        def on_cell(_, report: dict) -> None:  # the measured episodes survive any later failure
            cells.append(report)
            bar.update(report["episodes"])
            _write_json(args, {**cluster.merge(cells, args.mode == "realtime"),
                               "success_source": pool.source, "complete": False})

        (report,), failures = cluster.run_jobs(pool, [job], args.cell_episodes or CELL_EPISODES,
                                               on_cell)
        source = pool.source
    if failures:
        if cells:
            _write_json(args, {**cluster.merge(cells, args.mode == "realtime"),
                               "success_source": source, "complete": False,
                               "failed": failures})
        for line in failures:
            print(f"bac eval: error: {line}", file=sys.stderr)
        kept = f"; the {sum(c['episodes'] for c in cells)} measured episodes are in {args.json}"
        print(f"bac eval: {len(failures)} of the cells failed" + (kept if args.json else ""),
              file=sys.stderr)
        return 1
    report["success_source"] = source
    return _eval_report(args, report)


def _write_json(args, report: dict) -> None:
    import json

    if args.json:
        report = {**report, "checkpoint": str(args.checkpoint),
                  "latency_source": ("given (--latency-ms)" if args.latency_ms is not None
                                     else "local, one process")}
        _output(Path(args.json)).write_text(json.dumps(report, indent=1))


def _eval_report(args, report: dict) -> int:
    lo, hi = report["ci95"]
    print(f"{args.method} ({args.mode}, {args.episodes} episodes from seed {args.seed}): "
          f"success {report['success_rate']:.1%} [95% CI {lo:.1%}-{hi:.1%}], "
          f"collisions {report['collision_rate']:.1%}, latency {report['mean_latency_ms']:.1f} ms,"
          f" FLOP ratio {report['flop_ratio']:.2f}x")
    _write_json(args, {**report, "complete": True})
    return 0


def _convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="import a checkpoint into the native format")
    p.add_argument("src", type=Path, help="Chi et al. .ckpt file or native checkpoint folder")
    p.add_argument("dst", type=Path, help="output folder (config.yaml + model.safetensors)")
    p.add_argument("--weights-dtype", choices=("float16", "float32"), default="float32")
    p.set_defaults(func=_convert)


def _profile_parser(sub) -> None:
    p = sub.add_parser("profile", help="profile recorded observations, compile a BAC schedule")
    p.add_argument("--checkpoint", type=Path, required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--observations", type=Path,
                     help="npz with one (N, To, ...) array per observation key")
    src.add_argument("--bag", type=Path, help="rosbag2 folder (sqlite3 or mcap)")
    p.add_argument("--joint-names", nargs="+",
                   help="with --bag: joints read from joint_states (default: the arm's)")
    p.add_argument("--out", type=Path, required=True, help="schedule YAML to write")
    p.add_argument("--budget", "-S", type=int, default=10, help="ACS updates per block")
    p.add_argument("--top-k", "-k", type=int, default=5, help="BUA blocks (<2 disables BUA)")
    p.add_argument("--metric", choices=("cosine", "l1", "mse"), default="cosine")
    p.add_argument("--no-last-step", action="store_true", help="do not force the final step")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-observations", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--plots", type=Path, help="also write PNG plots into this folder")
    p.set_defaults(func=_profile)


def _demos_parser(sub) -> None:
    p = sub.add_parser("demos", help="record expert demonstrations of a task")
    p.add_argument("--task", default="arm", help="arm (the bundled task) or metaworld:TASK")
    p.add_argument("--noise", type=float,
                   help="Meta-World: std of the noise added to executed expert actions (labels "
                        "stay clean; default 0.1)")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-images", action="store_true", help="skip camera frames (low-dim only)")
    p.add_argument("--camera", help="Meta-World: the MuJoCo camera of the frames (default "
                   "corner; a camera policy's windows need its own camera's frames)")
    p.add_argument("--out", type=Path, required=True, help="npz file to write")
    p.set_defaults(func=_demos)


def _windows_parser(sub) -> None:
    p = sub.add_parser("windows", help="observation histories from demonstrations (to profile)")
    p.add_argument("--checkpoint", type=Path, required=True, help="whose observation keys")
    p.add_argument("--demos", type=Path, required=True)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="observations npz to write")
    p.set_defaults(func=_windows)


def _record_parser(sub) -> None:
    p = sub.add_parser("record", help="record the expert-driven task into a rosbag2")
    p.add_argument("--task", default="arm", help="arm (the bundled task) or metaworld:TASK")
    p.add_argument("--out", type=Path, required=True, help="bag folder to create")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--no-images", action="store_true")
    p.add_argument("--camera", help="Meta-World: the MuJoCo camera recorded on image "
                   "(default corner; a camera policy's schedule needs its own camera's frames)")
    p.set_defaults(func=_record)


def _distill_parser(sub) -> None:
    p = sub.add_parser("distill", help="image DP-T from the low-dim one: a scene-finding "
                       "encoder trained on rendered scenes + the low-dim transformer")
    p.add_argument("--lowdim", type=Path, required=True, help="trained low-dim checkpoint")
    p.add_argument("--demos", type=Path, help="demonstrations npz (arm: its arm poses; "
                   "Meta-World: its reset seeds are kept out of the scenes)")
    p.add_argument("--episodes", type=int, help="arm without --demos: demonstrations to "
                   "generate (default 200)")
    p.add_argument("--scene-episodes", type=int, help="Meta-World: fresh expert episodes "
                   "rendered as the encoder's scenes (default 2000, one in 16 held out)")
    p.add_argument("--init", type=Path, help="image checkpoint distilled from --lowdim: its "
                   "encoder goes on training instead of starting from scratch")
    p.add_argument("--rollouts", type=int, default=0, help="Meta-World: episodes of the camera "
                   "policy itself (after the first --steps, or from --init) added to the scenes, "
                   "labelled with the true state; the encoder then trains --steps more")
    p.add_argument("--camera", help="Meta-World: the MuJoCo camera the policy sees through "
                   "(default corner; gripperPOV is the wrist camera)")
    p.add_argument("--steps", type=int, default=10000, help="encoder training steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="image checkpoint folder to write")
    p.set_defaults(func=_distill)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train DP-T on a task's demonstrations (resumable)")
    p.add_argument("--task", default="arm", help="arm (the bundled task) or metaworld:TASK")
    p.add_argument("--variant", choices=("lowdim", "image"), default="lowdim")
    p.add_argument("--demos", type=Path, help="demonstrations npz (default: record --episodes)")
    p.add_argument("--episodes", type=int,
                   help="arm without --demos: demonstrations to record (default 200)")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--restart", action="store_true", help="ignore a saved training state")
    p.add_argument("--max-minutes", type=float, help="stop early after this long")
    p.add_argument("--init", type=Path, help="start from this checkpoint's weights (fine-tune)")
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--attn-dropout", type=float, default=0.3,
                   help="the transformer's dropout (Chi et al.'s p_drop_attn; 0.3 as in their "
                        "configs); a regulariser only, so --init may change it")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.set_defaults(func=_train)


CELL_EPISODES = 25  # episodes per Ray task unless --cell-episodes says


def cluster_arguments(parser, workers_help: str, ray_help: str) -> None:
    """``--workers N`` | ``--ray ADDRESS`` and ``--cell-episodes``: where episodes run (``bac
    eval``, ``bench/run_bench.py``)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help=workers_help)
    where.add_argument("--ray", metavar="ADDRESS", help=ray_help)
    parser.add_argument("--cell-episodes", type=int, metavar="N",
                        help=f"episodes per Ray task (default {CELL_EPISODES})")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="closed-loop success of a sampling method on the task")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--method", default="full", help="full | bac:FILE | uniform:N | ddim:N | ddpm:N")
    p.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=100_000, help="first episode seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--latency-ms", type=float,
                   help="realtime mode: assume this fixed latency instead of timing each chunk")
    p.add_argument("--json", type=Path, help="write the full report here (with --workers or "
                   "--ray: rewritten as each cell of episodes finishes)")
    cluster_arguments(p, "split the episodes between N local Ray workers (needs bac_ros[ray])",
                      "split the episodes over the Ray cluster at ADDRESS (HOST:PORT)")
    p.add_argument("--replan", default="at_end", help="realtime: at_end | latency_aware, the "
                   "policy node's rule for when the next chunk starts")
    p.add_argument("--seam", default="none", help="realtime: none | inpaint | blend")
    p.add_argument("--seam-weight", type=float, default=0.5,
                   help="realtime: the policy node's seam_weight")
    p.add_argument("--warm-start", type=float, default=0.0,
                   help="realtime: fraction of denoising steps a warm start skips (-1: as the "
                        "schedule says)")
    p.add_argument("--chunk-actions", type=int, default=0,
                   help="realtime: predicted actions per chunk the robot may run (0: the "
                        "policy's n_action_steps)")
    p.set_defaults(func=_eval)


def _tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="best-fidelity sampler + schedule inside a latency budget")
    p.add_argument("--checkpoint", type=Path, required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bag", type=Path, help="rosbag2 folder (sqlite3 or mcap)")
    src.add_argument("--observations", type=Path, help="observations npz")
    src.add_argument("--demos", type=int, default=30,
                     help="else: this many expert demonstrations of the checkpoint's task")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-ms", type=float, help="median batch-1 latency budget here")
    budget.add_argument("--speedup", type=float, help="at least this much faster than full")
    p.add_argument("--joint-names", nargs="+",
                   help="with --bag: joints read from joint_states (default: the arm's)")
    p.add_argument("--max-observations", type=int, default=0)
    p.add_argument("--fidelity-obs", type=int, default=16)
    p.add_argument("--samples", type=int, default=16, help="chunks per observation and side")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="also refine the best cached schedule with N output-aware proposals")
    p.add_argument("--device", default="auto")
    p.add_argument("--report", type=Path, help="JSON with every candidate's figures")
    p.add_argument("--keep", type=Path, help="also save every scored candidate's schedule here")
    p.add_argument("--out", type=Path, required=True, help="schedule YAML to write")
    p.set_defaults(func=_tune)


def _inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="summarise a schedule and draw its plots")
    p.add_argument("schedule", type=Path)
    p.add_argument("--out", type=Path, help="folder for PNG plots")
    p.set_defaults(func=_inspect)


# The subcommands, in the order `bac --help` lists them.
SUBCOMMANDS = (_convert_parser, _profile_parser, _demos_parser, _windows_parser, _record_parser,
               _distill_parser, _train_parser, _eval_parser, _tune_parser, _inspect_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bac", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bac_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear sentence, no trace
        print(f"bac {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
