"""Checkpoints: our native folder format, and import of Chi et al.'s ``diffusion_policy`` .ckpt.

Native format (a folder): ``config.yaml`` (policy, model, scheduler and encoder configs as data)
+ ``model.safetensors`` (``model.*``, ``obs_encoder.*`` and ``normalizer.*`` tensors). Network
weights may be stored as float16 (the rounded weights are then the model; compute stays float32);
normaliser statistics always stay float32.

Chi et al.'s workspace saves ``torch.save({'cfg', 'state_dicts', 'pickles'}, pickle_module=dill)``.
Loading such a file unpickles arbitrary objects: only import checkpoints you trust. The policy
classes imported and the chunk each executes are data (``CHI_POLICIES``); a folder converted from
a .ckpt records ``source: {imported_from, policy_class, weights, importer_version, action_slice}``
and one converted by an older importer is refused until re-converted (docs/IMPORT.md).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from contextlib import contextmanager
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
IMPORTER_VERSION = 2
"""The rules a folder converted from a .ckpt was made with, recorded as
``source.importer_version``. 1 (not recorded): executed the low-dim transformer's chunk one step
late (``action_pred[To : ...]``). 2: each policy class's own slice, from ``CHI_POLICIES``."""


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


def _check_import_rules(config: dict, cfg_file: Path) -> None:
    """A folder converted from a .ckpt must follow this importer's rules; folders trained here
    (no ``source.imported_from``) are not concerned. An older importer's folder is refused, not
    repaired: re-converting the .ckpt rebuilds every field from the source, while the folder
    cannot show whether its ``action_offset`` is the old importer's or a deliberate edit."""
    src = config.get("source")
    if not isinstance(src, dict) or "imported_from" not in src:
        return
    version = src.get("importer_version", 1)
    if version == IMPORTER_VERSION:
        return
    if isinstance(version, int) and version > IMPORTER_VERSION:
        raise CheckpointError(
            f"{cfg_file} was converted by a newer bac_ros (importer version {version}, this one "
            f"has {IMPORTER_VERSION}); update bac_ros or re-convert {src['imported_from']} with "
            "`bac convert`"
        )
    raise CheckpointError(
        f"{cfg_file} was converted from {src['imported_from']} by an older bac_ros importer "
        f"(version {version}) that executed low-dim transformer chunks one step late; re-convert "
        f"the .ckpt with `bac convert {src['imported_from']} {cfg_file.parent}`"
    )


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
    _check_import_rules(config, cfg_file)
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights} cannot be read as safetensors ({e})") from None
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return Checkpoint(config, tensors)


# -- Chi et al.'s diffusion_policy checkpoints -------------------------------------------------

_MODEL_KEYS = ("n_layer", "n_head", "n_emb", "p_drop_emb", "p_drop_attn", "causal_attn",
               "time_as_cond", "n_cond_layers")
CHI_DT = 0.1
"""Control period given to imported policies: diffusion_policy's workspace configs do not record
one; 0.1 s is PushT's 10 Hz. Edit ``policy.dt`` of the converted config.yaml for another rate."""


def _lowdim_parts(pol: dict) -> tuple[dict, int, dict, dict | None]:
    """DiffusionTransformerLowdimPolicy: one ``obs`` vector; the denoiser is ``policy.model``."""
    obs = {"obs": {"shape": [int(pol["obs_dim"])], "type": "low_dim"}}
    model_cfg = {k: v for k, v in pol["model"].items() if k != "_target_"}
    return obs, int(pol["action_dim"]), model_cfg, None


def _hybrid_parts(pol: dict) -> tuple[dict, int, dict, dict | None]:
    """DiffusionTransformerHybridImagePolicy: robomimic's encoder over ``shape_meta.obs``; the
    denoiser is built from the policy's own arguments."""
    from bac_ros.models.vision import build_obs_encoder

    shape_meta = pol["shape_meta"]
    obs = {k: {"shape": list(v["shape"]), "type": v.get("type", "low_dim")}
           for k, v in shape_meta["obs"].items()}
    action_dim = int(shape_meta["action"]["shape"][0])
    encoder = {"type": "robomimic_resnet18", "obs": obs, "crop_shape": pol.get("crop_shape"),
               "group_norm": bool(pol.get("obs_encoder_group_norm", False))}
    _, feat_dim = build_obs_encoder(encoder)
    obs_as_cond = bool(pol.get("obs_as_cond", True))
    model_cfg = {k: pol[k] for k in _MODEL_KEYS if k in pol}
    width = action_dim if obs_as_cond else action_dim + feat_dim
    model_cfg.update(input_dim=width, output_dim=width, horizon=int(pol["horizon"]),
                     n_obs_steps=int(pol["n_obs_steps"]), cond_dim=feat_dim if obs_as_cond else 0,
                     obs_as_cond=obs_as_cond)
    return obs, action_dim, model_cfg, encoder


@dataclass(frozen=True)
class ChiPolicyClass:
    """How one of Chi et al.'s policy classes becomes ours."""

    kind: str
    parts: Callable[[dict], tuple[dict, int, dict, dict | None]]
    """policy cfg -> (observation spec, action dim, denoiser config, encoder config or None)"""
    action_start: int
    """Its ``predict_action`` returns ``action_pred[To + action_start :][:n_action_steps]``."""


# The classes imported. Both transformer policies' predict_action take ``start = To - 1``
# (diffusion_policy/policy/diffusion_transformer_{lowdim,hybrid_image}_policy.py). The UNet
# policies (whose low-dim class starts at To unless ``oa_step_convention``) are not imported:
# BAC caches TransformerForDiffusion's blocks.
CHI_POLICIES = {
    "DiffusionTransformerLowdimPolicy": ChiPolicyClass("dpt_lowdim", _lowdim_parts, -1),
    "DiffusionTransformerHybridImagePolicy": ChiPolicyClass("dpt_image", _hybrid_parts, -1),
}


def action_slice(start: int) -> str:
    """The executed part of the prediction, as recorded in ``source.action_slice``."""
    s = f"n_obs_steps{start:+d}" if start else "n_obs_steps"
    return f"action_pred[{s} : {s}+n_action_steps]"


def _eval_resolver(expr: str):
    """Chi et al.'s configs compute sizes with an ``${eval:'...'}`` resolver (Python ``eval``).
    The expressions are arithmetic and conditionals over numbers; no builtins are offered."""
    return eval(expr, {"__builtins__": {}}, {"True": True, "False": False, "None": None})  # noqa: S307


@contextmanager
def temporary_resolvers(resolvers: dict[str, Callable]):
    """OmegaConf resolvers for the duration of a block; the global registry is left as it was (a
    name registered already, e.g. by diffusion_policy's train.py, keeps its own resolver)."""
    from omegaconf import OmegaConf

    # OmegaConf 2.4 renamed register_new_resolver (now deprecated, warning at every call) to
    # register_resolver; before 2.4 that name was the deprecated legacy API, without use_cache.
    new_api = "use_cache" in inspect.signature(OmegaConf.register_resolver).parameters
    register = OmegaConf.register_resolver if new_api else OmegaConf.register_new_resolver
    added = [name for name in resolvers if not OmegaConf.has_resolver(name)]
    for name in added:
        register(name, resolvers[name])
    try:
        yield
    finally:
        for name in added:
            OmegaConf.clear_resolver(name)


def _workspace_entries(cfg, path: Path, keys: tuple[str, ...]) -> dict:
    """The entries of a workspace config the import reads, as plain data, interpolations resolved.

    diffusion_policy's train.py resolves the config before training, so a saved one normally holds
    no interpolation; one trained through a workspace module's own ``main`` still does, including
    Hydra's ``${now:...}`` in ``logging`` and ``multi_run``. Only the entries read are resolved,
    so those never run; train.py's ``${eval:...}`` is offered meanwhile."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException, UnsupportedInterpolationType

    if not isinstance(cfg, DictConfig):
        raise CheckpointError(f"{path} holds a cfg of type {type(cfg).__name__}; expected the "
                              "OmegaConf DictConfig a diffusion_policy workspace saves")
    out = {}
    with temporary_resolvers({"eval": _eval_resolver}):
        for key in keys:
            try:
                value = OmegaConf.select(cfg, key)
                out[key] = (OmegaConf.to_container(value, resolve=True)
                            if OmegaConf.is_config(value) else value)
            except UnsupportedInterpolationType as e:
                name = str(e).splitlines()[0].rsplit(" ", 1)[-1]
                raise CheckpointError(
                    f"{path}: config entry {e.full_key} uses the resolver {name!r}, which bac_ros "
                    "does not have (it offers only eval); resolve the cfg where that resolver "
                    "exists (OmegaConf.resolve) and save the checkpoint again"
                ) from None
            except OmegaConfBaseException as e:
                raise CheckpointError(f"{path}: config entry {e.full_key} cannot be resolved "
                                      f"({str(e).splitlines()[0]})") from None
    return out


def _scheduler_from_chi(sched: dict) -> dict:
    sched = dict(sched)
    target = sched.pop("_target_", "diffusers.DDPMScheduler")
    return {"type": target.rsplit(".", 1)[-1], **sched}


def _read_workspace(path: Path) -> dict:
    """The payload of a ``diffusion_policy`` workspace checkpoint (dill-pickled by torch.save)."""
    try:
        import dill
    except ImportError:
        raise CheckpointError(
            "importing .ckpt files needs the 'dill' and 'omegaconf' packages"
        ) from None
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
    return payload


def _policy_class(cfg, path: Path) -> tuple[str, ChiPolicyClass]:
    """The class name of the workspace's policy, and how it is imported; other classes are
    refused."""
    target = str(_workspace_entries(cfg, path, ("policy._target_",))["policy._target_"] or "")
    target = target.rsplit(".", 1)[-1]
    cls = CHI_POLICIES.get(target)
    if cls is None:
        raise CheckpointError(
            f"{path} holds a {target or 'cfg without policy._target_'}; bac_ros imports only the "
            f"transformer policies ({', '.join(CHI_POLICIES)}), whose TransformerForDiffusion "
            "blocks it caches"
        )
    return target, cls


def _policy_entries(cfg, path: Path) -> tuple[dict, bool]:
    """The policy config and ``training.use_ema``; training settings whose chunks the import
    cannot reproduce are refused."""
    entries = _workspace_entries(cfg, path, ("policy", "training.use_ema", "n_latency_steps"))
    pol = entries["policy"]
    if pol.get("pred_action_steps_only", False):
        raise CheckpointError(
            f"{path} was trained with pred_action_steps_only=True; bac_ros supports full-horizon "
            "prediction (the default)"
        )
    latency = entries["n_latency_steps"] or 0
    if latency:
        raise CheckpointError(
            f"{path} was trained with n_latency_steps={latency}, whose env runners drop the "
            f"first {latency} actions of each chunk; bac_ros imports n_latency_steps=0 (the "
            "authors' transformer configs)"
        )
    return pol, bool(entries["training.use_ema"])


def import_chi_ckpt(path: str | Path) -> Checkpoint:
    """Read a ``diffusion_policy`` workspace checkpoint of a transformer policy (low-dim or hybrid
    image) into our checkpoint description. Prefers EMA weights when training used EMA; the
    executed chunk is the one the policy class's own ``predict_action`` returns."""
    path = Path(path)
    payload = _read_workspace(path)
    target, cls = _policy_class(payload["cfg"], path)
    pol, use_ema = _policy_entries(payload["cfg"], path)
    sds = payload["state_dicts"]
    key = "ema_model" if use_ema and "ema_model" in sds else "model"
    if key not in sds:
        raise CheckpointError(f"{path} has no '{key}' state dict; it has {sorted(sds)}")
    sd = {k: v for k, v in sds[key].items()}
    horizon, To, Ta = int(pol["horizon"]), int(pol["n_obs_steps"]), int(pol["n_action_steps"])
    sched = _scheduler_from_chi(pol.get("noise_scheduler", DEFAULT_SCHEDULER))
    K = pol.get("num_inference_steps") or sched.get("num_train_timesteps", 100)
    obs, action_dim, model_cfg, encoder = cls.parts(pol)
    config = {
        "policy": {
            "kind": cls.kind, "horizon": horizon, "n_obs_steps": To, "n_action_steps": Ta,
            "action_offset": To + cls.action_start, "action_dim": action_dim, "obs": obs,
            "obs_as_cond": bool(pol.get("obs_as_cond", model_cfg.get("cond_dim", 0) > 0)),
            "num_inference_steps": int(K), "dt": CHI_DT,
            "action_names": [f"a{i}" for i in range(action_dim)],
        },
        "model": model_cfg,
        "noise_scheduler": sched,
        "obs_encoder": encoder,
        "source": {"imported_from": path.name, "policy_class": target, "weights": key,
                   "importer_version": IMPORTER_VERSION,
                   "action_slice": action_slice(cls.action_start)},
    }
    return Checkpoint(copy.deepcopy(config), sd)
