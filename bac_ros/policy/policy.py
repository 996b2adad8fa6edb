"""The Policy runner: observation history in, action chunk out (numpy), no ROS.

``load_policy(path)`` (:mod:`bac_ros.policy.factory`, or ``Policy.from_pretrained(path)``)
loads a native checkpoint folder or a Chi et al. ``.ckpt``; ``predict(obs)`` normalises
observations, builds the model condition (low-dim vectors, or image features from the
observation encoder), samples with the plan-driven engine under the active :class:`Sampling`
(sampler + cache plan), unnormalises, and returns ``action_pred[offset : offset +
n_action_steps]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bac_ros.cache.blocks import checked_plan
from bac_ros.cache.compile import compile_schedule
from bac_ros.cache.engine import DenoisingEngine, Generators, plan_flops
from bac_ros.cache.plans import uniform_plan
from bac_ros.cache.profile import ProfileResult, profile
from bac_ros.cache.schedule import Schedule, ScheduleError, model_fingerprint
from bac_ros.cache.schedulers import DEFAULT_INFERENCE_STEPS, build_scheduler
from bac_ros.models.dpt import TransformerForDiffusion
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.models.vision import IMAGE_TYPES, build_obs_encoder, image_keys
from bac_ros.policy.checkpoint import Checkpoint, CheckpointError
from bac_ros.policy.factory import load_policy, register_policy
from bac_ros.policy.loading import load_weights

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ObservationError(ValueError):
    """An observation that does not match what the policy was trained on."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here")
    return torch.device(device)


@dataclass(frozen=True)
class Sampling:
    """What a policy samples with: the sampler (scheduler config, step count, its engine) and
    the block plan with the schedule it came from (``schedule_id`` stamps every chunk).

    Built and checked whole, then swapped in with one assignment, so a refused change leaves
    the previous configuration in place, untouched. The plan is read-only."""

    scheduler_config: dict
    num_inference_steps: int
    engine: DenoisingEngine
    plan: np.ndarray | None = None
    schedule: Schedule | None = None
    schedule_id: str = ""
    warm_start: int = 0  # denoising steps a warm start from the previous chunk skips (0: none)

    @property
    def sampler(self) -> dict:
        return {"type": self.scheduler_config["type"],
                "num_inference_steps": self.num_inference_steps}

    def with_plan(self, plan: np.ndarray | None, schedule_id: str = "",
                  schedule: Schedule | None = None, warm_start: int = 0) -> Sampling:
        """This sampler under ``plan`` (None: full compute), checked against its engine."""
        if plan is not None:
            plan = checked_plan(plan, len(self.engine.blocks), self.num_inference_steps).copy()
            plan.flags.writeable = False
        return replace(self, plan=plan, schedule=schedule, schedule_id=schedule_id,
                       warm_start=int(warm_start))


def camera_frame(config: dict) -> str | None:
    """The camera a checkpoint's images must come from, when it reads images and records one
    (Meta-World's ``task.camera``): image messages name it in ``header.frame_id``, so a view
    the policy was not trained on is refused rather than acted on. None: any."""
    camera = (config.get("task") or {}).get("camera")
    return str(camera) if camera and image_keys(config["policy"]["obs"]) else None


@register_policy("dpt_lowdim", "dpt_image")
class Policy:
    """A loaded DP-T policy with its normaliser, observation encoder, sampler and schedule."""

    #: Takes a language instruction (``set_instruction``): a VLA.
    accepts_instruction = False

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", dtype: str = "float32"):
        cfg = checkpoint.config
        pol = cfg["policy"]
        self.config = cfg
        self.device = resolve_device(device)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
        if dtype != "float32" and self.device.type != "cuda":
            raise ValueError(f"dtype {dtype} is supported on CUDA only; use float32 on the CPU")
        self.dtype = DTYPES[dtype]
        self.horizon, self.n_obs_steps = int(pol["horizon"]), int(pol["n_obs_steps"])
        self.n_action_steps, self.action_dim = int(pol["n_action_steps"]), int(pol["action_dim"])
        self.action_offset = int(pol.get("action_offset", self.n_obs_steps - 1))
        self.obs_as_cond = bool(pol.get("obs_as_cond", True))
        self.dt = float(pol.get("dt", 0.1))
        self.action_names = list(pol.get("action_names") or [])
        # joint_position: joint targets (a joint_trajectory_controller can run them);
        # ee_delta: end-effector position deltas + gripper, for a Cartesian controller
        self.action_type = str(pol.get("action_type", "joint_position"))
        self.obs_spec = {k: (tuple(v["shape"]), v.get("type", "low_dim"))
                         for k, v in pol["obs"].items()}
        #: The image observations (camera keys), in observation order.
        self.cameras = [k for k, (_, kind) in self.obs_spec.items() if kind in IMAGE_TYPES]

        self.model = self.build_model(cfg["model"])
        load_weights(self.model, checkpoint.section("model"), "model")
        self.normalizer = LinearNormalizer()
        try:
            self.normalizer.load_state_dict(checkpoint.section("normalizer"))
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"normalizer weights are malformed ({e})") from None
        for key in [*self.obs_spec, "action"]:
            if key not in self.normalizer.fields:
                raise CheckpointError(
                    f"normalizer has no field {key!r}; it has {self.normalizer.fields}"
                )
        self.obs_encoder = None
        if cfg.get("obs_encoder"):
            self.obs_encoder, _ = build_obs_encoder(cfg["obs_encoder"])
            load_weights(self.obs_encoder, checkpoint.section("obs_encoder"), "obs_encoder")
            self.obs_encoder.to(self.device, self.dtype).eval()
        self.model.to(self.device, self.dtype)
        self.normalizer.to(self.device)
        self._engines: dict[tuple[str, int], DenoisingEngine] = {}
        self.set_sampler(cfg["noise_scheduler"], self.trained_steps)
        self.fingerprint = model_fingerprint(
            {k: cfg[k] for k in ("policy", "model", "noise_scheduler", "obs_encoder", "backbone")
             if k in cfg},
            checkpoint.tensors,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "float32",
                        schedule: str | Path | Schedule | None = None) -> Policy:
        """:func:`~bac_ros.policy.factory.load_policy`, for callers of the class: on ``Policy``
        the checkpoint's ``policy.kind`` picks the class (``rdt``: a ``VLAPolicy``); on a
        subclass, that subclass is built."""
        return load_policy(path, device=device, dtype=dtype, schedule=schedule,
                           cls=None if cls is Policy else cls)

    @property
    def trained_steps(self) -> int:
        """The denoising steps of the checkpoint's own sampler (Chi et al.'s default when its
        config names none)."""
        return int(self.config["policy"].get("num_inference_steps", DEFAULT_INFERENCE_STEPS))

    @property
    def reads_images(self) -> bool:
        """Whether any observation is a camera image."""
        return bool(self.cameras)

    @property
    def camera_frame(self) -> str | None:
        """:func:`camera_frame` of this policy's checkpoint config."""
        return camera_frame(self.config)

    @staticmethod
    def build_model(config: dict) -> torch.nn.Module:
        """The denoising network from its config (subclasses for other action heads)."""
        return TransformerForDiffusion(**config)

    # -- sampler and schedules -------------------------------------------------------------
    @property
    def sampling(self) -> Sampling:
        """The active sampler and plan; replaced whole by the methods below, never edited."""
        return self._sampling

    @property
    def engine(self) -> DenoisingEngine:
        return self._sampling.engine

    @property
    def scheduler_config(self) -> dict:
        return self._sampling.scheduler_config

    @property
    def num_inference_steps(self) -> int:
        return self._sampling.num_inference_steps

    @property
    def sampler(self) -> dict:
        return self._sampling.sampler

    @property
    def plan(self) -> np.ndarray | None:
        return self._sampling.plan

    @property
    def schedule(self) -> Schedule | None:
        return self._sampling.schedule

    @property
    def schedule_id(self) -> str:
        return self._sampling.schedule_id

    @property
    def warm_start(self) -> int:
        """Denoising steps the active schedule's warm start skips (0: none)."""
        return self._sampling.warm_start

    def _sampler(self, scheduler: dict | str, num_inference_steps: int) -> Sampling:
        """Full compute with a scheduler (a config, or a type name that keeps the training noise
        schedule) and step count, as a :class:`Sampling`; engines are kept per sampler."""
        if isinstance(scheduler, str):
            trained = self.config["noise_scheduler"]
            scheduler = dict(trained) if scheduler == trained["type"] else {
                "type": scheduler,
                **{k: v for k, v in trained.items()
                   if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                            "clip_sample", "prediction_type")},
            }
        config, K = dict(scheduler), int(num_inference_steps)
        key = (json.dumps(config, sort_keys=True), K)
        if key not in self._engines:
            self._engines[key] = DenoisingEngine(self.model, build_scheduler(config), K)
        return Sampling(config, K, self._engines[key])

    def set_sampler(self, scheduler: dict | str, num_inference_steps: int) -> None:
        """Sample with another diffusers scheduler or step count (e.g. ``"DDIMScheduler"``,
        10): a type name keeps the training noise schedule. Drops the cache schedule.

        Engines are kept per sampler, so switching back and forth costs nothing (and keeps
        captured CUDA graphs)."""
        self._sampling = self._sampler(scheduler, num_inference_steps)

    def use_trained_sampler(self) -> None:
        """Back to the checkpoint's own sampler and step count, full compute."""
        self.set_sampler(self.config["noise_scheduler"], self.trained_steps)

    def use_plan(self, plan: np.ndarray | None, label: str = "") -> None:
        """Sample with the current sampler under ``plan``, a (K, blocks) boolean array (None:
        full compute), named ``label``: the ``schedule_id`` chunks are stamped with. A plan
        without a label, or one that does not fit the sampler, is refused (ValueError) and
        nothing changes."""
        if plan is not None and not label:
            raise ValueError("a plan needs a label (the schedule_id its chunks are stamped "
                             "with); got an empty one")
        self._sampling = self._sampling.with_plan(plan, label)

    def set_schedule(self, spec: str | Path | Schedule | None) -> None:
        """``None``/'none'/'' = full compute with the current sampler; 'uniform:N'; a schedule
        file or object: validated against this model (else :class:`ScheduleError` and nothing
        changes), and sampled with the sampler and step count it was compiled for."""
        if spec is None or str(spec) in ("", "none", "full"):
            self.use_plan(None)
            return
        if isinstance(spec, str) and spec.startswith("uniform:"):
            try:
                every = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(
                    f"uniform schedule must be 'uniform:N' with an integer N; got {spec!r}"
                ) from None
            self.use_plan(uniform_plan(self.num_inference_steps, len(self.engine.blocks), every),
                          spec)
            return
        sched = spec if isinstance(spec, Schedule) else Schedule.load(spec)
        try:
            current = self._sampling
            if sched.sampler != current.sampler:  # the schedule names the sampler it was made for
                current = self._sampler(str(sched.sampler.get("type")), sched.num_steps)
            plan = sched.validate_for(self.fingerprint, current.sampler["type"],
                                      current.num_inference_steps, current.engine.blocks)
        except (ValueError, KeyError, AttributeError) as e:  # nothing has changed yet
            if isinstance(e, ScheduleError):
                raise
            raise ScheduleError(
                f"schedule asks for sampler {sched.sampler}, which cannot be built here ({e})"
            ) from None
        self._sampling = current.with_plan(plan, sched.id, sched, sched.warm_start)

    # -- observations ----------------------------------------------------------------------
    def _obs_tensor(self, key: str, value, batched: bool) -> torch.Tensor:
        shape = self.obs_spec[key][0]
        arr = np.asarray(value)
        if not batched:
            arr = arr[None]
        camera_layout = arr.ndim == 5 and arr.shape[-1] == shape[0] != arr.shape[2]
        if key in self.cameras and camera_layout:
            arr = np.moveaxis(arr, -1, 2)  # (B, To, H, W, C) camera layout -> (B, To, C, H, W)
        if arr.ndim != 2 + len(shape) or tuple(arr.shape[2:]) != shape:
            raise ObservationError(
                f"observation {key!r} has shape {tuple(np.shape(value))}; expected "
                f"({'B, ' if batched else ''}{self.n_obs_steps}, {', '.join(map(str, shape))})"
            )
        if arr.shape[1] < self.n_obs_steps:
            raise ObservationError(
                f"observation {key!r} holds {arr.shape[1]} steps; the policy needs the last "
                f"{self.n_obs_steps}"
            )
        arr = arr[:, -self.n_obs_steps:]
        t = torch.as_tensor(arr)
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if not torch.isfinite(t).all():
            raise ObservationError(f"observation {key!r} contains NaN or inf")
        return t.to(self.device)

    def normalized(self, obs: Mapping[str, np.ndarray], batched: bool) -> dict[str, torch.Tensor]:
        """Each observation key checked and normalised: (B, To, ...) tensors."""
        missing = [k for k in self.obs_spec if k not in obs]
        if missing:
            raise ObservationError(
                f"observation is missing {missing}; the policy expects keys {list(self.obs_spec)}"
            )
        return {k: self.normalizer.normalize(k, self._obs_tensor(k, obs[k], batched))
                for k in self.obs_spec}

    def conditions(self, obs: Mapping[str, np.ndarray], batched: bool = False) -> torch.Tensor:
        """Normalised observation features (B, To, D): the model condition (or inpainted obs)."""
        nobs = self.normalized(obs, batched)
        with torch.inference_mode():
            return self.features(nobs)

    def features(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, To, D) features of normalised observations ((B, To, ...) per key, in observation
        order): the observation encoder's, or the low-dim vectors side by side. Training calls
        it with gradients on."""
        B = next(iter(nobs.values())).shape[0]
        if self.obs_encoder is not None:
            flat = {k: v.reshape(-1, *v.shape[2:]).to(self.dtype) for k, v in nobs.items()}
            return self.obs_encoder(flat).reshape(B, self.n_obs_steps, -1)
        return torch.cat([v.reshape(B, self.n_obs_steps, -1) for v in nobs.values()], -1)

    def _sample(self, feats: torch.Tensor, generator, plan, recorder=None,
                continuation=None) -> torch.Tensor:
        B, Da = feats.shape[0], self.action_dim
        if self.obs_as_cond:
            shape = (B, self.horizon, Da)
            return self.engine.sample(feats, shape, generator, plan, recorder,
                                      **self._seam_inputs(shape, continuation))
        Do = feats.shape[-1]
        shape = (B, self.horizon, Da + Do)
        seam = self._seam_inputs(shape, continuation)
        data = seam.pop("condition_data", None)
        if data is None:
            data = torch.zeros(shape, device=self.device, dtype=self.dtype)
        mask = seam.pop("condition_mask", torch.zeros(shape, device=self.device, dtype=torch.bool))
        data[:, : self.n_obs_steps, Da:] = feats.to(self.dtype)
        mask[:, : self.n_obs_steps, Da:] = True  # weight 1 where the mask is a float one
        return self.engine.sample(None, data.shape, generator, plan, recorder, data, mask, **seam)

    def _continuation(self, committed, offset: int, weights, warm_start: int | None,
                      batch: int) -> tuple | None:
        """The chunk being executed as sampler inputs: trajectory position p of the new sample
        is the action for committed index ``p - action_offset + offset``. Returns the
        normalised committed actions at every position (edge-padded: a warm start's clean
        estimate; past the chunk's end the robot keeps its last command, so a chunk that came
        too late still warm-starts the next one), their inpainting weight per position (0 off
        the overlap), and the steps a warm start skips; None when there is nothing to join."""
        skip = self.warm_start if warm_start is None else int(warm_start)
        if not 0 <= skip < self.num_inference_steps:
            raise ValueError(f"warm_start is {skip} steps; expected 0 .. "
                             f"{self.num_inference_steps - 1} (the sampler runs "
                             f"{self.num_inference_steps})")
        a = np.asarray(committed, dtype=np.float32)
        a = a if a.ndim == 3 else a[None]
        if a.ndim != 3 or a.shape[0] not in (1, batch) or a.shape[2] != self.action_dim or \
                a.shape[1] == 0 or not np.isfinite(a).all():
            raise ValueError(f"committed actions have shape {np.shape(committed)}; expected "
                             f"finite (n, {self.action_dim}) actions, or (B, n, "
                             f"{self.action_dim}) for a batch")
        n = a.shape[1]
        w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
        if w.shape[-1] != n or w.ndim > 2 or not ((w >= 0) & (w <= 1)).all():
            raise ValueError(f"committed weights have shape {w.shape}; expected {n} weights in "
                             "[0, 1] (one per committed action)")
        if int(offset) != offset or offset < 0:
            raise ValueError(f"committed offset is {offset}; expected the non-negative number "
                             "of control steps from the committed chunk's stamp to this one")
        index = np.arange(self.horizon) - self.action_offset + int(offset)
        inside = (index >= 0) & (index < n)
        index = np.clip(index, 0, n - 1)
        w = np.broadcast_to(w if w.ndim == 2 else w[None], (batch, n))[:, index] * inside
        if skip == 0 and not w.any():
            return None
        with torch.inference_mode():
            prior = self.normalizer.normalize("action", torch.as_tensor(a[:, index]).to(
                self.device)).expand(batch, -1, -1)
        return prior, torch.as_tensor(w, device=self.device), skip

    def _seam_inputs(self, shape: tuple[int, ...], continuation) -> dict:
        """Engine arguments for a continuation over the action channels of a sample of
        ``shape``: the committed actions inpainted (noised to each step's level, soft weights)
        and, with a warm start, the initial estimate and the step to start from."""
        if continuation is None:
            return {}
        prior, w, skip = continuation
        Da, out = self.action_dim, {}
        full = torch.zeros(shape, device=self.device, dtype=self.dtype)
        full[..., :Da] = prior.to(self.dtype)
        if w.any():
            mask = torch.zeros(shape, device=self.device, dtype=self.dtype)
            mask[..., :Da] = w[..., None].to(self.dtype)
            noised = torch.zeros(shape, device=self.device, dtype=torch.bool)
            noised[..., :Da] = True
            out.update(condition_data=full.clone(), condition_mask=mask, noised_condition=noised)
        if skip:
            out.update(init=full, start_step=skip)
        return out

    def predict_horizon(self, obs: Mapping[str, np.ndarray], seed: int | None = None,
                        generator: Generators = None, batched: bool = False,
                        committed: np.ndarray | None = None, committed_offset: int = 0,
                        committed_weights: np.ndarray | None = None,
                        warm_start: int | None = None) -> np.ndarray:
        """All ``horizon`` predicted actions, unnormalised: (horizon, Da) or (B, horizon, Da).
        The continuation arguments are :meth:`predict`'s."""
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        feats = self.conditions(obs, batched)
        cont = None if committed is None else self._continuation(
            committed, committed_offset, committed_weights, warm_start, feats.shape[0])
        nsample = self._sample(feats, generator, self.plan, continuation=cont)
        with torch.inference_mode():
            actions = self.normalizer.unnormalize("action", nsample[..., : self.action_dim].float())
        out = actions.cpu().numpy().astype(np.float32)
        return out if batched else out[0]

    def predict(self, obs: Mapping[str, np.ndarray], seed: int | None = None,
                generator: Generators = None, batched: bool = False,
                committed: np.ndarray | None = None, committed_offset: int = 0,
                committed_weights: np.ndarray | None = None,
                warm_start: int | None = None, n_actions: int | None = None) -> np.ndarray:
        """The executable chunk: (n_action_steps, action_dim), or with a leading batch axis;
        ``n_actions`` (1 .. :attr:`max_chunk_actions`) takes more or fewer of the predicted
        actions from the same sample (its first n_action_steps are the default chunk).

        Real-time chunking: ``committed`` is the chunk the robot is executing ((n, Da), or
        (B, n, Da)), stamped ``committed_offset`` control steps before this observation, so
        its action ``committed_offset + j`` is meant for the time of this chunk's action j.
        Where they overlap, the new sample is inpainted toward it during denoising with
        ``committed_weights`` (one per committed action in [0, 1]; default 1: follow it
        exactly), so the seam does not jump. ``warm_start`` (steps skipped; None: the
        schedule's own) starts sampling from the committed actions shifted and re-noised
        instead of pure noise (0: plain sampling)."""
        n = self.n_action_steps if n_actions is None else int(n_actions)
        if not 1 <= n <= self.max_chunk_actions:
            raise ValueError(f"a chunk of {n_actions} actions; expected 1 .. "
                             f"{self.max_chunk_actions} (the predicted actions from this "
                             "observation's step on)")
        pred = self.predict_horizon(obs, seed, generator, batched, committed, committed_offset,
                                    committed_weights, warm_start)
        s = self.action_offset
        return pred[..., s : s + n, :]

    @property
    def max_chunk_actions(self) -> int:
        """Predicted actions from the current step on: the longest chunk :meth:`predict` gives."""
        return self.horizon - self.action_offset

    # -- profiling and schedules -----------------------------------------------------------
    def profile(self, observations: Sequence[Mapping[str, np.ndarray]], batch_size: int = 8,
                seed: int = 0, progress: Callable[[int], None] | None = None) -> ProfileResult:
        """Full-compute block statistics over recorded observations (unbatched obs dicts)."""
        if not observations:
            raise ValueError("no observations to profile; expected at least one")

        def batches():
            for i in range(0, len(observations), batch_size):
                chunk = observations[i : i + batch_size]
                yield self.conditions({k: np.stack([o[k] for o in chunk]) for k in self.obs_spec},
                                      batched=True)

        return profile(self.engine, batches(),
                       lambda feats, g, rec: self._sample(feats, g, None, rec), seed,
                       progress=progress)

    def compile_schedule(self, result: ProfileResult, budget: int = 10, top_k: int = 5,
                         metric: str = "cosine", last_step: bool = True,
                         source: str | Path = "", allocation: str = "per_block") -> Schedule:
        """A schedule from a profile of this policy's current sampler; ``source``: the
        observations' file or bag (recorded by name and hash) or a description
        (:func:`bac_ros.cache.compile.compile_schedule`: ``per_block`` BAC, ``shared`` FLOP
        budget, or the ``unified`` ablation)."""
        return compile_schedule(result, self.fingerprint, self.sampler, budget, top_k, metric,
                                last_step, source, allocation,
                                self.flops()[0] if allocation == "shared" else None)

    def flop_probe(self) -> tuple[torch.Tensor | None, tuple[int, ...]]:
        """A one-observation model condition and sample shape to count FLOPs with."""
        cond = torch.zeros(1, self.n_obs_steps, self.model.config["cond_dim"] or 1,
                           device=self.device, dtype=self.dtype)
        return (cond if self.obs_as_cond else None,
                (1, self.horizon, self.model.config["input_dim"]))

    def flop_ratio(self, plan: np.ndarray | None) -> float:
        """FLOPs of full compute with the checkpoint's own sampler (e.g. DDPM-100) over the
        FLOPs of the current sampler under ``plan``: the theoretical speedup."""
        full = plan_flops(None, *self.flops(), self.trained_steps)
        return full / plan_flops(plan, *self.flops(), self.num_inference_steps)

    def flops(self) -> tuple:
        """(per-block FLOPs of one step, the always-run rest), counted once per model."""
        if "_flops" not in self.__dict__:
            self._flops = self.engine.measure_flops(*self.flop_probe())
        return self._flops
