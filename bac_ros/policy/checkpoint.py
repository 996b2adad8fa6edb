"""Checkpoints: our native folder format, and import of Chi et al.'s ``diffusion_policy`` .ckpt.

Native format (a folder): ``config.yaml`` (policy, model, scheduler and encoder configs as data)
+ ``model.safetensors`` (``model.*``, ``obs_encoder.*`` and ``normalizer.*`` tensors). Network
weights may be stored as float16 (the rounded weights are then the model; compute stays float32);
normaliser statistics always stay float32.

Chi et al.'s workspace saves ``torch.save({'cfg', 'state_dicts', 'pickles'}, pickle_module=dill)``.
Loading such a file unpickles arbitrary objects: only import checkpoints you trust.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save

from bac_ros.cache.schedule import write_atomically, yaml_problem
from bac_ros.cache.schedulers import DEFAULT_SCHEDULER

FORMAT = "bac_ros/policy"
VERSION = 1
KINDS = ("dpt_lowdim", "dpt_image", "rdt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with what was wrong and what was expected."""


@dataclass
class Checkpoint:
    """A policy's full description: ``config`` (plain data) and its tensors by prefixed name."""

    config: dict
    tensors: dict[str, torch.Tensor]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def _policy_config(config: dict) -> dict:
    pol = config.get("policy")
    if not isinstance(pol, dict) or pol.get("kind") not in KINDS:
        raise CheckpointError(
            f"checkpoint config has policy kind "
            f"{pol.get('kind') if isinstance(pol, dict) else None!r}; expected one of {KINDS}"
        )
    for key in ("horizon", "n_obs_steps", "n_action_steps", "obs", "action_dim"):
        if key not in pol:
            raise CheckpointError(f"checkpoint config lacks policy.{key}")
    return pol


def save_native(ckpt: Checkpoint, path: str | Path, weights_dtype: torch.dtype = torch.float16):
    """Write ``config.yaml`` + ``model.safetensors`` into the folder ``path``."""
    _policy_config(ckpt.config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, {}
    for name, t in ckpt.tensors.items():
        t = t.detach().cpu()
        key = None
        if t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key is not None and key in seen:  # aliased (e.g. robomimic's nets.0 == backbone)
            continue
        seen[key] = name
        if t.is_floating_point() and not name.startswith("normalizer."):
            t = t.to(weights_dtype)
        tensors[name] = t.contiguous()
    config = dict(ckpt.config, format=FORMAT, version=VERSION)
    # Each file is replaced whole, weights first: a crash in between leaves new weights beside
    # the old config, which loading refuses whenever the architecture changed.
    write_atomically(path / "model.safetensors", save(tensors))
    write_atomically(path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    return path


def load_native(path: str | Path) -> Checkpoint:
    path = Path(path)
    cfg_file, weights = path / "config.yaml", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{path} is not a bac_ros checkpoint folder; expected config.yaml and model.safetensors"
        )
    try:
        config = yaml.safe_load(cfg_file.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} cannot be read as text ({e})") from None
    except yaml.YAMLError as e:
        raise CheckpointError(f"{cfg_file} is not valid YAML ({yaml_problem(e)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file} is not a bac_ros policy config (format: {FORMAT})")
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{cfg_file} has format version {config.get('version')}; expected {VERSION}"
        )
    _policy_config(config)
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights} cannot be read as safetensors ({e})") from None
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return Checkpoint(config, tensors)


# -- Chi et al.'s diffusion_policy checkpoints -------------------------------------------------

_LOWDIM = "DiffusionTransformerLowdimPolicy"
_HYBRID = "DiffusionTransformerHybridImagePolicy"
_MODEL_KEYS = ("n_layer", "n_head", "n_emb", "p_drop_emb", "p_drop_attn", "causal_attn",
               "time_as_cond", "n_cond_layers")


def _eval_resolver(expr: str):
    """Chi et al.'s configs compute sizes with an ``${eval:'...'}`` resolver (Python ``eval``).
    The expressions are arithmetic and conditionals over numbers; no builtins are offered."""
    return eval(expr, {"__builtins__": {}}, {"True": True, "False": False, "None": None})  # noqa: S307


def _plain(cfg) -> dict:
    """OmegaConf -> plain containers (interpolations resolved)."""
    from omegaconf import OmegaConf

    if isinstance(cfg, dict):
        return cfg
    if not OmegaConf.has_resolver("eval"):
        OmegaConf.register_new_resolver("eval", _eval_resolver)
    return OmegaConf.to_container(cfg, resolve=True)


def _scheduler_from_chi(sched: dict) -> dict:
    sched = dict(sched)
    target = sched.pop("_target_", "diffusers.DDPMScheduler")
    return {"type": target.rsplit(".", 1)[-1], **sched}


def import_chi_ckpt(path: str | Path) -> Checkpoint:
    """Read a ``diffusion_policy`` workspace checkpoint of a transformer policy (low-dim or hybrid
    image) into our checkpoint description. Prefers EMA weights when training used EMA."""
    try:
        import dill
    except ImportError:
        raise CheckpointError(
            "importing .ckpt files needs the 'dill' and 'omegaconf' packages"
        ) from None
    path = Path(path)
    try:
        with path.open("rb") as f:
            payload = torch.load(f, pickle_module=dill, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as a diffusion_policy .ckpt ({e})") from None
    if not isinstance(payload, dict) or "cfg" not in payload or "state_dicts" not in payload:
        raise CheckpointError(
            f"{path} is not a diffusion_policy workspace checkpoint; expected a dict with 'cfg' "
            "and 'state_dicts'"
        )
    cfg = _plain(payload["cfg"])
    pol = cfg.get("policy", {})
    target = str(pol.get("_target_", "")).rsplit(".", 1)[-1]
    use_ema = bool(cfg.get("training", {}).get("use_ema", False))
    sds = payload["state_dicts"]
    key = "ema_model" if use_ema and "ema_model" in sds else "model"
    if key not in sds:
        raise CheckpointError(f"{path} has no '{key}' state dict; it has {sorted(sds)}")
    sd = {k: v for k, v in sds[key].items()}
    horizon, To, Ta = int(pol["horizon"]), int(pol["n_obs_steps"]), int(pol["n_action_steps"])
    sched = _scheduler_from_chi(pol.get("noise_scheduler", DEFAULT_SCHEDULER))
    K = pol.get("num_inference_steps") or sched.get("num_train_timesteps", 100)
    if target == _LOWDIM:
        model_cfg = {k: v for k, v in pol["model"].items() if k != "_target_"}
        obs_dim, action_dim = int(pol["obs_dim"]), int(pol["action_dim"])
        obs = {"obs": {"shape": [obs_dim], "type": "low_dim"}}
        kind, encoder = "dpt_lowdim", None
        offset = To - 1 if pol.get("oa_step_convention", False) else To
    elif target == _HYBRID:
        shape_meta = pol["shape_meta"]
        obs = {k: {"shape": list(v["shape"]), "type": v.get("type", "low_dim")}
               for k, v in shape_meta["obs"].items()}
        action_dim = int(shape_meta["action"]["shape"][0])
        encoder = {"type": "robomimic_resnet18", "obs": obs,
                   "crop_shape": pol.get("crop_shape"),
                   "group_norm": bool(pol.get("obs_encoder_group_norm", False))}
        from bac_ros.models.vision import build_obs_encoder

        _, feat_dim = build_obs_encoder(encoder)
        obs_as_cond = bool(pol.get("obs_as_cond", True))
        model_cfg = {k: pol[k] for k in _MODEL_KEYS if k in pol}
        model_cfg.update(
            input_dim=action_dim if obs_as_cond else action_dim + feat_dim,
            output_dim=action_dim if obs_as_cond else action_dim + feat_dim,
            horizon=horizon, n_obs_steps=To, cond_dim=feat_dim if obs_as_cond else 0,
            obs_as_cond=obs_as_cond,
        )
        kind, offset = "dpt_image", To - 1
    else:
        raise CheckpointError(
            f"{path} holds a {target or 'unknown'} policy; bac_ros imports {_LOWDIM} and {_HYBRID}"
        )
    if pol.get("pred_action_steps_only", False):
        raise CheckpointError(
            f"{path} was trained with pred_action_steps_only=True; bac_ros supports full-horizon "
            "prediction (the default)"
        )
    config = {
        "policy": {
            "kind": kind, "horizon": horizon, "n_obs_steps": To, "n_action_steps": Ta,
            "action_offset": offset, "action_dim": action_dim, "obs": obs,
            "obs_as_cond": bool(pol.get("obs_as_cond", model_cfg.get("cond_dim", 0) > 0)),
            "num_inference_steps": int(K), "dt": float(cfg.get("task", {}).get("dt", 0.1)),
            "action_names": [f"a{i}" for i in range(action_dim)],
        },
        "model": model_cfg,
        "noise_scheduler": sched,
        "obs_encoder": encoder,
        "source": {"imported_from": path.name, "weights": key},
    }
    return Checkpoint(copy.deepcopy(config), sd)
