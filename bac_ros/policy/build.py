"""Fresh (untrained) policies from configs: the starting point of training, and the random-weight
models that tests and benchmarks use where no trained checkpoint is needed."""

from __future__ import annotations

import torch

from bac_ros.cache.schedulers import DEFAULT_INFERENCE_STEPS, DEFAULT_SCHEDULER
from bac_ros.models.backbone import TinyBackbone
from bac_ros.models.dpt import TransformerForDiffusion
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.models.rdt import RDTHead
from bac_ros.models.vision import build_obs_encoder, image_keys
from bac_ros.policy.checkpoint import Checkpoint

# The paper's DP-T: 8 layers, 4 heads, n_emb 256, horizon 16, 2 observation steps.
PAPER_MODEL = dict(n_layer=8, n_head=4, n_emb=256, p_drop_emb=0.0, p_drop_attn=0.3,
                   causal_attn=True, time_as_cond=True, n_cond_layers=0)


def new_checkpoint(
    obs: dict,
    action_dim: int,
    normalizer: LinearNormalizer,
    horizon: int = 16,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    model: dict | None = None,
    obs_encoder: dict | None = None,
    scheduler: dict | None = None,
    num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
    dt: float = 0.1,
    action_names: list[str] | None = None,
    seed: int = 0,
) -> Checkpoint:
    """A DP-T policy (observations as condition) with freshly initialised weights.

    ``obs`` is ``{key: {shape, type}}``; ``obs_encoder`` (e.g. ``{"type": "small_cnn"}``) is
    required when any key is an image, and then encodes every key.
    """
    torch.manual_seed(seed)
    encoder = None
    if obs_encoder is not None:
        encoder_cfg = dict(obs_encoder, obs=obs)
        encoder, cond_dim = build_obs_encoder(encoder_cfg)
    else:
        cond_dim = sum(int(torch.tensor(v["shape"]).prod()) for v in obs.values())
        encoder_cfg = None
    model_cfg = dict(PAPER_MODEL if model is None else model)
    model_cfg.update(input_dim=action_dim, output_dim=action_dim, horizon=horizon,
                     n_obs_steps=n_obs_steps, cond_dim=cond_dim, obs_as_cond=True)
    net = TransformerForDiffusion(**model_cfg)
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"normalizer.{k}": v for k, v in normalizer.state_dict().items()})
    if encoder is not None:
        tensors.update({f"obs_encoder.{k}": v for k, v in encoder.state_dict().items()})
    kind = "dpt_image" if encoder is not None else "dpt_lowdim"
    config = {
        "policy": {
            "kind": kind, "horizon": horizon, "n_obs_steps": n_obs_steps,
            "n_action_steps": n_action_steps, "action_offset": n_obs_steps - 1,
            "action_dim": action_dim, "obs": obs, "obs_as_cond": True,
            "num_inference_steps": num_inference_steps, "dt": dt,
            "action_names": list(action_names or [f"a{i}" for i in range(action_dim)]),
        },
        "model": model_cfg,
        "noise_scheduler": dict(scheduler or DEFAULT_SCHEDULER),
        "obs_encoder": encoder_cfg,
    }
    return Checkpoint(config, tensors)


# RDT's sampler: DPM-Solver++ on its DDPM training schedule (1000 steps, clean-sample target).
RDT_SCHEDULER = dict(type="DPMSolverMultistepScheduler", num_train_timesteps=1000,
                     beta_schedule="squaredcos_cap_v2", prediction_type="sample")
# A velocity head integrated by flow-matching Euler (pi0 / GR00T style).
FLOW_SCHEDULER = dict(type="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000)


def new_rdt_checkpoint(
    obs: dict,
    action_dim: int,
    normalizer: LinearNormalizer,
    head: dict,
    backbone: dict | None = None,
    horizon: int = 16,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    scheduler: dict | None = None,
    num_inference_steps: int = 10,
    dt: float = 0.1,
    instruction: str = "",
    state_key: str = "joints",
    seed: int = 0,
) -> Checkpoint:
    """A VLA policy (``kind: rdt``): the built-in tiny backbone (``backbone`` overrides its
    arguments) and an RDT-style head (``head``: depth, hidden_size, num_heads, ...; the token
    sizes follow the backbone) with fresh weights."""
    torch.manual_seed(seed)
    cameras = image_keys(obs)
    if not cameras or state_key not in obs:
        raise ValueError(f"a VLA policy needs a camera and the state {state_key!r}; got {obs}")
    bb_cfg = dict(cameras=cameras, image_shape=list(obs[cameras[0]]["shape"]),
                  n_obs_steps=n_obs_steps, **(backbone or {}))
    bb = TinyBackbone(**bb_cfg)
    head_cfg = {"state_dim": action_dim, "max_lang_cond_len": bb.lang_tokens, **head}
    head_cfg.update(horizon=horizon, lang_token_dim=bb.words.embedding_dim,
                    img_token_dim=bb.patches.out_channels, img_cond_len=bb.num_img_tokens,
                    action_dims=action_dim)
    net = RDTHead(**head_cfg)
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"backbone.{k}": v for k, v in bb.state_dict().items()})
    tensors.update({f"normalizer.{k}": v for k, v in normalizer.state_dict().items()})
    config = {
        "policy": {
            "kind": "rdt", "horizon": horizon, "n_obs_steps": n_obs_steps,
            "n_action_steps": n_action_steps, "action_offset": 0, "action_dim": action_dim,
            "obs": obs, "state_key": state_key, "instruction": instruction,
            "ctrl_freq": 1.0 / dt, "num_inference_steps": num_inference_steps, "dt": dt,
            "action_names": [f"a{i}" for i in range(action_dim)],
        },
        "model": head_cfg,
        "noise_scheduler": dict(scheduler or RDT_SCHEDULER),
        "backbone": dict(bb_cfg, type="tiny"),
    }
    return Checkpoint(config, tensors)

