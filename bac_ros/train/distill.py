"""The camera policy, built from the low-dim one: an encoder that finds the scene, the low-dim
transformer that acts on it.

The low-dim DP-T reads the scene (the arm's target and obstacle, Meta-World's object poses) from
its state vector; the camera policy must find it in pixels, to within a few millimetres, from 200
demonstrations (200 scenes). Trained end to end on this 2-core CPU the arm's stalled near 66%
success. Distillation splits the two jobs:

1. the image encoder learns to output the scene columns of the state, normalised as the low-dim
   policy normalises them (shifted by +1 to be non-negative: the encoder ends in a ReLU; clipped
   to the range the low-dim policy was trained on), on
   scenes it never saw as demonstrations: the arm draws new layouts from the task's sampler for
   every batch (arm poses from the demonstrations); Meta-World renders, once, frames along noisy
   expert episodes from fresh reset seeds (10,000 on; demonstrations start at 0, evaluation at
   100,000) and draws batches from them, one episode in 16 held out;
2. the image DP-T is the low-dim transformer, with the condition embedding's state columns moved
   onto those feature columns and onto the policy's low-dim inputs (arm: joints; Meta-World:
   ``proprio`` and the ``goal`` command, which one camera cannot place in 3-D).

A :class:`StateLayout` per task family says which column goes where. Meta-World's state repeats
the hand and objects of the previous step (columns 18-35); the condition embedding sees one
frame per token, so those take the current frame's values (the previous frame is the other
observation token): measured on the pick-place demonstrations the hand moves 6.9 mm per step
(median, 13 mm p95), the object 0.1 mm (13 mm p95 while carried), and the low-dim policy's
actions move 0.011-0.024 on average, a fifth to a third of what another noise seed moves them.

The result is an ordinary image checkpoint (camera + low-dim inputs in, the policy normaliser
outside the network); ``bac train --variant image --init`` can fine-tune it end to end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bac_ros.models.normalizer import RANGE_EPS
from bac_ros.policy.checkpoint import Checkpoint, load_native
from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label
from bac_ros.sim import metaworld
from bac_ros.sim.arm import LOWDIM_KEYS, ArmTaskConfig, render, sample_episode
from bac_ros.sim.evaluate import evaluate
from bac_ros.sim.tasks import Task, task_of
from bac_ros.train.train import TrainConfig, build_initial, task_spec

N_JOINTS = 3  # arm state layout (LOWDIM_KEYS): joints, then the scene (target xy, obstacle xy)
assert LOWDIM_KEYS == ("joints", "target_xy", "obstacle_xy")
#: Meta-World training scenes: reset seeds from here up (held-out episodes first).
SCENE_SEED = 10_000
EVAL_SEED = 100_000  # evaluation episodes start here; scenes stay below
SCENE_EPISODES = 2000
SCENE_NOISE = 0.3  # the largest per-episode action noise std (demonstrations use 0.1)
FRAME_EVERY = 3
HELD_OUT_EVERY = 16  # one episode in 16 is held out
#: the camera policy's own episodes (``rollouts``) sample with this: a tenth of full compute's
#: cost, and on pick-place within noise of its success (79.0% against 74.5%, 200 seeds)
ROLLOUT_METHOD = "ddim:10"


@dataclass(frozen=True)
class StateLayout:
    """Where the camera policy finds each column of the low-dim state.

    ``inputs``: the camera policy's low-dim keys, each the state columns it carries exactly;
    ``scene``: the columns the image encoder outputs, in feature order;
    ``copies``: column -> the column whose current value stands in for it (a previous-step copy);
    ``constant``: columns with one value in every demonstration (padding), folded into the bias;
    ``groups``: scene quantities for the held-out report, name -> (columns, "mm" | "deg").
    """

    inputs: dict[str, tuple[int, ...]]
    scene: tuple[int, ...]
    copies: dict[int, int]
    constant: tuple[int, ...]
    groups: dict[str, tuple[tuple[int, ...], str]]


ARM_LAYOUT = StateLayout({"joints": (0, 1, 2)}, (3, 4, 5, 6), {}, (),
                         {"target": ((3, 4), "mm"), "obstacle": ((5, 6), "mm")})


def metaworld_layout(state_range: np.ndarray) -> StateLayout:
    """Meta-World's 39-d state: hand xyz + gripper (``proprio``), two objects' position and
    quaternion from the image, their previous-step copy, the goal (``goal``). An object column
    that never varied in the demonstrations (the second object of a one-object task) is a
    constant."""
    objects = range(metaworld.PROPRIO_DIM, 18)
    constant = tuple(c for c in objects if state_range[c] < RANGE_EPS)
    scene = tuple(c for c in objects if c not in constant)
    groups = {}
    for i, name in enumerate(("object", "object2")):
        pos, quat = tuple(range(4 + 7 * i, 7 + 7 * i)), tuple(range(7 + 7 * i, 11 + 7 * i))
        if set(pos + quat) <= set(scene):
            groups[name] = (pos, "mm")
            groups[f"{name}_orientation"] = (quat, "deg")
    goal = tuple(range(metaworld.STATE_DIM)[metaworld.GOAL])
    return StateLayout({"proprio": tuple(range(metaworld.PROPRIO_DIM)), "goal": goal}, scene,
                       {18 + c: c for c in range(18)}, constant, groups)


def state_layout(lowdim: Checkpoint | Policy) -> StateLayout:
    """The layout of the low-dim checkpoint's task (Meta-World's constants from its normaliser)."""
    if not isinstance(task_of(lowdim), metaworld.MetaWorldTaskConfig):
        return ARM_LAYOUT
    t = _state_normalizer(lowdim)
    return metaworld_layout((t["input_stats.max"] - t["input_stats.min"]).numpy())


def _state_normalizer(lowdim: Checkpoint | Policy) -> dict[str, torch.Tensor]:
    """The low-dim normaliser's ``state`` tensors (``scale``, ``offset``, ``input_stats.*``)."""
    tensors = (lowdim.tensors if isinstance(lowdim, Checkpoint) else
               {f"normalizer.{k}": v for k, v in lowdim.normalizer.state_dict().items()})
    prefix = "normalizer.params_dict.state."
    return {k[len(prefix):]: v.detach().float().cpu() for k, v in tensors.items()
            if k.startswith(prefix)}


def scene_batch(task: ArmTaskConfig, rng: np.random.Generator, poses: np.ndarray, n: int,
                pose_noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered arm scenes: new target/obstacle layouts, arm poses from ``poses`` (+ noise).

    Returns uint8 images (n, S, S, 3) and float32 low-dim states (n, 7).
    """
    layouts = [sample_episode(task, rng) for _ in range(n)]
    joints = poses[rng.integers(len(poses), size=n)] + rng.normal(0, pose_noise, (n, N_JOINTS))
    joints = np.clip(joints, task.joint_low, task.joint_high)
    images = np.stack([render(task, j, t, o) for j, (t, o) in zip(joints, layouts, strict=True)])
    states = np.concatenate([joints, np.array([np.concatenate(lo) for lo in layouts])], axis=1)
    return images, states.astype(np.float32)


class ArmScenes:
    """New arm scenes for every batch; 512 others, from their own generator, held out."""

    record = None  # nothing is stored: each scene is drawn when needed

    def __init__(self, task: ArmTaskConfig, poses: np.ndarray, seed: int):
        self.task, self.poses = task, poses
        self.held_out = {"scenes": scene_batch(task, np.random.default_rng([seed, 1]), poses, 512)}

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return scene_batch(self.task, rng, self.poses, n)


class MetaWorldScenes:
    """Frames of ``episodes`` fresh noisy expert episodes, rendered once (a frame costs 4-12 ms
    on this CPU, 10-100x an encoder step's share), from reset seeds ``SCENE_SEED`` on; batches
    draw from them at random. The first episode in 16 is held out."""

    def __init__(self, task: metaworld.MetaWorldTaskConfig, episodes: int, demo_seeds, log):
        self.task, self.log = task, log
        if episodes < 2:
            raise ValueError(f"scene_episodes must be at least 2 (one is held out), got {episodes}")
        seeds = SCENE_SEED + np.arange(episodes)
        _fresh(seeds, demo_seeds, f"the encoder's {episodes} scene episodes")
        n_held = max(1, episodes // HELD_OUT_EVERY)
        t0 = time.perf_counter()
        with tqdm(total=episodes, desc="render scenes", unit="ep") as bar:
            self.held_out = {"expert": metaworld.scene_frames(task, seeds[:n_held], SCENE_NOISE,
                                                              FRAME_EVERY, bar.update)}
            self.images, self.states = metaworld.scene_frames(
                task, seeds[n_held:], SCENE_NOISE, FRAME_EVERY, bar.update)
        self.record = {"episodes": episodes - n_held, "frames": len(self.images),
                       "held_out_episodes": n_held,
                       "held_out_frames": len(self.held_out["expert"][0]),
                       "reset_seeds": [int(seeds[0]), int(seeds[-1])], "noise_max": SCENE_NOISE,
                       "frame_every": FRAME_EVERY,
                       "render_seconds": round(time.perf_counter() - t0, 1)}
        log(f"rendered {len(self.images)} training and {self.record['held_out_frames']} "
            f"held-out frames from {episodes} episodes in {self.record['render_seconds']:.0f} s")

    def add_rollouts(self, policy: Policy, seeds: np.ndarray) -> None:
        """Frames along the camera ``policy``'s own episodes (``ROLLOUT_METHOD``) from reset
        ``seeds`` (consecutive, from :func:`rollout_seeds`), labelled with the simulator's
        state: its misses, slips and objects left behind, which expert episodes rarely show
        (DAgger, for the encoder alone). One episode in 16 is held out."""
        episodes = len(seeds)
        n_held = max(1, episodes // HELD_OUT_EVERY)
        frames = {True: ([], []), False: ([], [])}  # held out?

        def observe(seed: int, step: int, obs: dict, state: np.ndarray) -> None:
            if step % FRAME_EVERY == seed % FRAME_EVERY:  # a phase per episode
                images, states = frames[seed < seeds[n_held]]
                images.append(obs["image"])
                states.append(state)

        t0 = time.perf_counter()
        with tqdm(total=episodes, desc="rollouts", unit="ep") as bar:
            report = evaluate(policy, ROLLOUT_METHOD, episodes, int(seeds[0]), task=self.task,
                              progress=bar.update, observer=observe)
        self.held_out["rollouts"] = tuple(np.stack(x) for x in frames[True])
        self.images = np.concatenate([self.images, np.stack(frames[False][0])])
        self.states = np.concatenate([self.states, np.stack(frames[False][1])])
        self.record["rollouts"] = {
            "episodes": episodes - n_held, "frames": len(frames[False][0]),
            "held_out_episodes": n_held, "held_out_frames": len(frames[True][0]),
            "reset_seeds": [int(seeds[0]), int(seeds[-1])], "method": ROLLOUT_METHOD,
            "success_rate": report["success_rate"],
            "seconds": round(time.perf_counter() - t0, 1)}
        self.log(f"rollouts: {ROLLOUT_METHOD} succeeded in {report['success_rate']:.1%} of "
                 f"{episodes}; {len(frames[False][0])} training frames added")

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        rows = rng.integers(len(self.images), size=n)
        return self.images[rows], self.states[rows]


def _fresh(seeds: np.ndarray, demo_seeds, what: str) -> None:
    """Refuse reset ``seeds`` that reach the evaluation seeds or re-use a demonstration's."""
    if seeds[-1] >= EVAL_SEED:
        raise ValueError(f"{what} would reach the evaluation seeds ({EVAL_SEED} on); use at "
                         f"most {EVAL_SEED - seeds[0]}")
    shared = sorted(set(seeds.tolist()) & {int(s) for s in demo_seeds})
    if shared:
        raise ValueError(f"the demonstrations use reset seeds {shared[:5]} that {what} would "
                         f"re-use ({seeds[0]} on); record them from seeds below {SCENE_SEED}")


def rollout_seeds(episodes: int, scene_episodes: int, prior: dict | None,
                  demo_seeds) -> np.ndarray:
    """Reset seeds for ``episodes`` rollouts: after this run's scenes and after every seed the
    ``prior`` encoder's record (``init``) says it trained on, off the demonstrations."""
    if episodes < 2:
        raise ValueError(f"rollouts must be at least 2 (one is held out), got {episodes}")
    record = (prior or {}).get("scenes", {})
    used = [SCENE_SEED + scene_episodes - 1]
    used += [r["reset_seeds"][1] for r in (record, record.get("rollouts", {})) if r]
    seeds = max(used) + 1 + np.arange(episodes)
    _fresh(seeds, demo_seeds, f"{episodes} rollouts")
    return seeds


class SceneTargets:
    """Low-dim state -> the encoder's supervised feature values, and its errors back in the
    state's own units."""

    def __init__(self, lowdim_policy: Policy, layout: StateLayout | None = None):
        self.layout = layout or state_layout(lowdim_policy)
        self.cols = list(self.layout.scene)
        params = lowdim_policy.normalizer.params_dict["state"]
        self.scale = params["scale"].detach()[self.cols].cpu()
        self.offset = params["offset"].detach()[self.cols].cpu()

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        return states[:, self.cols] * self.scale + self.offset + 1.0

    def errors(self, features: torch.Tensor, states: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-scene error of each group: position (mm), orientation (degrees)."""
        delta = (features - self(states)) / self.scale
        out = {}
        for name, (cols, unit) in self.layout.groups.items():
            idx = [self.cols.index(c) for c in cols]
            if unit == "mm":
                out[name] = delta[:, idx].norm(dim=-1).numpy() * 1e3
            else:  # the rotation between the true quaternion and the one the features say
                true = states[:, cols]
                found = nn.functional.normalize(true + delta[:, idx], dim=-1)
                dot = (nn.functional.normalize(true, dim=-1) * found).sum(-1).abs().clamp(max=1)
                out[name] = np.degrees(2 * torch.arccos(dot).numpy())
        return out


def _encode(policy: Policy, layout: StateLayout, images: np.ndarray,
            states: np.ndarray) -> torch.Tensor:
    (camera,) = policy.cameras
    x = torch.as_tensor(images).movedim(-1, -3).float() / 255.0
    obs = {camera: policy.normalizer.normalize(camera, x)}
    for key, cols in layout.inputs.items():
        obs[key] = policy.normalizer.normalize(key, torch.as_tensor(states[:, list(cols)]))
    return policy.obs_encoder(obs)


def encoder_features(policy: Policy, layout: StateLayout, images: np.ndarray,
                     states: np.ndarray, chunk: int = 512) -> torch.Tensor:
    """The camera policy's encoder output on rendered scenes, in chunks (no gradients)."""
    with torch.no_grad():
        return torch.cat([_encode(policy, layout, images[i : i + chunk], states[i : i + chunk])
                          for i in range(0, len(images), chunk)])


def train_scene_encoder(policy: Policy, targets: SceneTargets, scenes, steps: int,
                        batch_size: int = 64, lr: float = 1e-3, seed: int = 0, log=print) -> dict:
    """Fit ``policy.obs_encoder`` so its first features are the scene targets on ``scenes``
    (:class:`ArmScenes` or :class:`MetaWorldScenes`); returns the errors on their held-out
    scenes, never trained on."""
    layout, n = targets.layout, len(targets.cols)
    encoder = policy.obs_encoder.train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="scene encoder", unit="step")
    for step in bar:
        images, states = scenes.batch(rng, batch_size)
        feats = _encode(policy, layout, images, states)[:, :n]
        # inside the range the low-dim policy was trained on: a scene beyond it (a dropped,
        # tipped object: Meta-World's quaternion columns span 0.01-0.2) would otherwise be a
        # target the ReLU cannot reach or tens of times the range, and dominate the loss
        loss = nn.functional.mse_loss(feats, targets(torch.as_tensor(states)).clamp(0.0, 2.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.2e}")
    bar.close()
    encoder.eval()
    stats = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
             "seconds": round(time.perf_counter() - t0, 1)}
    for i, (source, (images, states)) in enumerate(scenes.held_out.items()):
        errors = targets.errors(encoder_features(policy, layout, images, states)[:, :n],
                                torch.as_tensor(states))
        prefix = "" if i == 0 else f"{source}_"  # the first set keeps the established key
        for unit in ("mm", "deg"):
            group = {name: {"median": float(np.median(e)), "p95": float(np.percentile(e, 95))}
                     for name, e in errors.items() if layout.groups[name][1] == unit}
            if group:
                stats[f"{prefix}held_out_error_{unit}"] = group
        medians = ", ".join(f"{name} {np.median(e):.1f} {layout.groups[name][1]}"
                            for name, e in errors.items())
        log(f"scene encoder: held-out error ({source}) median {medians}")
    if scenes.record is not None:
        stats["scenes"] = dict(scenes.record)
    return stats


def _feature_columns(policy: Policy) -> dict[str, int]:
    """Where each observation key starts in the encoder's output (the condition vector)."""
    cols, start = {}, 0
    for spec in policy.obs_encoder.obs_specs:
        width = (policy.obs_encoder.obs_nets[spec.name].feature_dim if spec.name in
                 policy.obs_encoder.obs_nets else math.prod(spec.shape))
        cols[spec.name] = start
        start += width
    return cols


def condition_map(layout: StateLayout, low: Checkpoint, policy: Policy
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The low-dim policy's normalised state as the camera policy's features say it:
    ``state = A @ features + b`` (A: state columns x features)."""
    norm = _state_normalizer(low)
    scale, offset = norm["scale"], norm["offset"]
    cols = _feature_columns(policy)
    A = torch.zeros(len(scale), policy.obs_encoder.output_dim)
    b = torch.zeros(len(scale))
    (camera,) = policy.cameras
    for i, c in enumerate(layout.scene):  # features are normalised + 1
        A[c, cols[camera] + i], b[c] = 1.0, -1.0
    for key, key_cols in layout.inputs.items():
        for i, c in enumerate(key_cols):
            A[c, cols[key] + i] = 1.0
    for c in layout.constant:
        b[c] = norm["input_stats.mean"][c] * scale[c] + offset[c]
    for c, j in layout.copies.items():  # x_c = x_j, each normalised by its own column
        ratio = scale[c] / scale[j]
        A[c], b[c] = ratio * A[j], ratio * (b[j] - offset[j]) + offset[c]
    covered = sorted([*layout.scene, *layout.constant, *layout.copies,
                      *(c for k in layout.inputs.values() for c in k)])
    assert covered == list(range(len(scale))), "a state layout must place every column once"
    return A, b


def _transfer_transformer(low: Checkpoint, image: Checkpoint, policy: Policy,
                          layout: StateLayout) -> None:
    """Copy the low-dim transformer; route its state columns onto feature and input columns."""
    A, b = condition_map(layout, low, policy)
    for key, value in low.tensors.items():
        if not key.startswith("model."):
            continue
        if key == "model.cond_obs_emb.weight":
            value = value.float() @ A
        elif key == "model.cond_obs_emb.bias":
            value = value.float() + low.tensors["model.cond_obs_emb.weight"].float() @ b
        elif image.tensors[key].shape != value.shape:
            raise ValueError(f"{key}: the low-dim model has shape {tuple(value.shape)}, the image "
                             f"model {tuple(image.tensors[key].shape)}; their configs differ")
        image.tensors[key] = value


def _transfer_normalizer(low: Checkpoint, image: Checkpoint, layout: StateLayout) -> None:
    """Actions and the low-dim inputs normalised exactly as the low-dim policy normalises them."""
    for key, value in low.tensors.items():
        if key.startswith("normalizer.params_dict.action."):
            image.tensors[key] = value
        elif key.startswith("normalizer.params_dict.state."):
            for name, cols in layout.inputs.items():
                image.tensors[key.replace(".state.", f".{name}.")] = value[..., list(cols)]


def _limits(low: Checkpoint, layout: StateLayout) -> dict[str, np.ndarray]:
    """Two rows per field at the low-dim limits: enough to build the image checkpoint, whose
    normaliser fields :func:`_transfer_normalizer` then replaces with the low-dim policy's."""
    def rows(field: str, cols=slice(None)) -> np.ndarray:
        t = {k: v.float() for k, v in low.tensors.items()}
        pre = f"normalizer.params_dict.{field}.input_stats."
        return torch.stack([t[pre + "min"][cols], t[pre + "max"][cols]]).numpy()

    return {"action": rows("action"),
            **{k: rows("state", list(cols)) for k, cols in layout.inputs.items()}}


def distill_image_policy(lowdim: str | Path, data: dict | None, steps: int, batch_size: int = 64,
                         lr: float = 1e-3, seed: int = 0, task: Task | None = None,
                         scene_episodes: int | None = None, init: str | Path | None = None,
                         rollouts: int = 0, camera: str | None = None, log=print) -> Checkpoint:
    """Build the image checkpoint from the low-dim checkpoint ``lowdim``.

    Its task comes from the checkpoint (``task`` may restate it; another is refused). Arm:
    ``data`` are demonstrations (their arm poses pose the rendered scenes). Meta-World: the
    encoder's scenes are ``scene_episodes`` (default 2000) fresh episodes; ``data``, if given,
    are the demonstrations, whose reset seeds the scenes must not re-use. ``init``: an image
    checkpoint distilled from ``lowdim`` whose encoder training goes on (instead of starting
    from scratch). ``rollouts`` (Meta-World): after that first encoder, that many of the
    camera policy's own episodes join the scenes and the encoder trains ``steps`` more.
    ``camera`` (Meta-World): the MuJoCo camera the policy sees through (default: the task's,
    ``corner``); its checkpoint records it, so evaluation and sim_node render the same view.
    """
    low = load_native(lowdim)
    task = _task(low, lowdim, task)
    mw = isinstance(task, metaworld.MetaWorldTaskConfig)
    if rollouts and not mw:
        raise ValueError("rollouts are for Meta-World tasks; the arm draws new scenes for "
                         "every batch")
    if camera is not None:
        if not mw:
            raise ValueError("camera picks a Meta-World camera; the arm renders its one view")
        task = replace(task, camera=camera)
        metaworld.make_env(task).close()  # an unknown camera fails here, before any work
    want = metaworld.OBS_VARIANTS["lowdim"] if mw else {"state": {"shape": [7],
                                                                   "type": "low_dim"}}
    if low.config["policy"]["obs"] != want:
        raise ValueError(f"{lowdim} is not a low-dim policy of its task (obs {want}); got obs "
                         f"{low.config['policy']['obs']}")
    layout = state_layout(low)
    model = {k: low.config["model"][k] for k in TrainConfig().model}
    image = build_initial(TrainConfig(variant="image", model=model, seed=seed),
                          _limits(low, layout), task_spec(task, "image"))
    _transfer_normalizer(low, image, layout)
    prior = None if init is None else _initial_encoder(init, low, image)
    policy = Policy(image, device="cpu")
    if mw:
        if data is not None and "episode_seeds" not in data:
            raise ValueError("the demonstrations list no episode_seeds, so the encoder's scenes "
                             "cannot be kept off them; record them with bac demos --task ...")
        n_scenes = SCENE_EPISODES if scene_episodes is None else scene_episodes
        demo_seeds = [] if data is None else data["episode_seeds"]
        if prior is not None:
            _same_held_out(prior, n_scenes, init)
        seeds = rollout_seeds(rollouts, n_scenes, prior, demo_seeds) if rollouts else None
        scenes = MetaWorldScenes(task, n_scenes, demo_seeds, log)
    else:
        if scene_episodes is not None:
            raise ValueError("scene_episodes is for Meta-World tasks; the arm draws new scenes "
                             "for every batch")
        if data is None:
            raise ValueError("the arm's distillation needs its demonstrations (their arm poses)")
        scenes = ArmScenes(task, np.asarray(data["joints"]), seed)
    targets = SceneTargets(Policy(low, device="cpu"), layout)
    training = {"variant": "image", "method": "distilled (bac distill)", "seed": seed,
                "device": device_label(policy.device)}
    if prior is not None:  # the encoder (in ``policy``, built from ``image``) is init's
        training["continued_from"] = {"checkpoint": str(init), "scene_encoder": prior}
    else:
        stats = train_scene_encoder(policy, targets, scenes, steps, batch_size, lr, seed, log)
    if rollouts:
        if prior is None:
            training["first_encoder"] = stats
        _store_encoder(low, image, policy, layout)  # the camera policy that rolls out
        scenes.add_rollouts(Policy(image, device="cpu"), seeds)
    if rollouts or prior is not None:
        stats = train_scene_encoder(policy, targets, scenes, steps, batch_size, lr, seed + 1,
                                    log)
    _store_encoder(low, image, policy, layout)
    training["scene_encoder"] = stats
    image.config["source"] = {"distilled_from": str(lowdim),
                              "lowdim_training": low.config.get("training")}
    image.config["training"] = training
    return image


def _store_encoder(low: Checkpoint, image: Checkpoint, policy: Policy,
                   layout: StateLayout) -> None:
    """The image checkpoint with ``policy``'s encoder and the low-dim transformer routed onto
    it."""
    image.tensors.update({f"obs_encoder.{k}": v.detach().clone()
                          for k, v in policy.obs_encoder.state_dict().items()})
    _transfer_transformer(low, image, policy, layout)


def _initial_encoder(init: str | Path, low: Checkpoint, image: Checkpoint) -> dict:
    """Copy the encoder of ``init``, an image checkpoint distilled from ``low`` with the same
    encoder, into ``image``; returns the record of its training."""
    prior = load_native(init)
    source = prior.config.get("source", {})
    if "lowdim_training" not in source or source["lowdim_training"] != low.config.get("training"):
        raise ValueError(f"{init} was not distilled from this low-dim checkpoint (its source: "
                         f"{source.get('distilled_from')}); expected an image checkpoint that "
                         "bac distill made from it")
    seen, wanted = prior.config.get("task", {}), image.config.get("task", {})
    if seen != wanted:
        raise ValueError(f"{init} sees {seen.get('task')} through camera {seen.get('camera')!r}; "
                         f"this distillation builds {wanted.get('task')} through "
                         f"{wanted.get('camera')!r} (continuing an encoder needs the same camera: "
                         f"pass camera {seen.get('camera')!r})")
    if prior.config.get("obs_encoder") != image.config.get("obs_encoder"):
        raise ValueError(f"{init}'s observation encoder is configured otherwise than the one "
                         "this distillation builds; expected the same obs_encoder config")
    for key, value in prior.tensors.items():
        if key.startswith("obs_encoder."):
            image.tensors[key] = value.float()
    return prior.config.get("training", {}).get("scene_encoder", {})


def _same_held_out(prior: dict, episodes: int, init) -> None:
    """Refuse scenes whose held-out episodes (the first scene seeds) would include ones
    ``init``'s encoder trained on."""
    held = prior.get("scenes", {}).get("held_out_episodes")
    if held is not None and max(1, episodes // HELD_OUT_EVERY) > held:
        raise ValueError(f"with init {init}, scene_episodes must be below "
                         f"{(held + 1) * HELD_OUT_EVERY}: more would hold out scenes its "
                         f"encoder trained on (it held out the first {held})")


def _task(low: Checkpoint, lowdim, task: Task | None) -> Task:
    """The checkpoint's task; a ``task`` given beside it must be that task."""
    recorded = task_of(low)
    if task is None:
        return recorded
    if type(task) is not type(recorded) or (
            isinstance(task, metaworld.MetaWorldTaskConfig)
            and metaworld.task_record(task) != metaworld.task_record(recorded)):
        raise ValueError(f"{lowdim} was trained on {recorded}, not on the task given ({task})")
    return task
