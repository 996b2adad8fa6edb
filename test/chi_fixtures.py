"""Genuine ``diffusion_policy`` workspace checkpoints (Chi et al.), as the authors write them.

The cfg is what the authors' ``train.py`` hands a workspace: Hydra's composition of a workspace
config with its default task config (the ``defaults`` list is consumed by composition and the
``hydra`` node is deleted by Hydra's ``run_job``, so neither is saved), command-line overrides
applied, then ``OmegaConf.resolve(cfg)`` with train.py's ``eval`` resolver and Hydra's ``now``.
With ``resolve=False`` it is the cfg a workspace module's own ``main`` saves (no resolve call).

The payload is ``BaseWorkspace.save_checkpoint``'s (diffusion_policy/workspace/base_workspace.py):
``{'cfg': self.cfg, 'state_dicts': {...}, 'pickles': {...}}`` written with
``torch.save(payload, f, pickle_module=dill)``. ``state_dicts`` holds every workspace attribute
that has ``state_dict``/``load_state_dict`` (``model``, ``ema_model``, ``optimizer``);
``pickles`` holds ``dill.dumps(value)`` of the workspace's ``include_keys`` (``global_step``,
``epoch``) plus ``_output_dir`` (``None`` unless the workspace was given one), in the order they
appear in the workspace's ``__dict__``.

The policy tensors are those of the authors' policy classes: ``ModuleAttrMixin`` gives the policy
and its ``LowdimMaskGenerator`` an empty ``_dummy_variable`` parameter; then ``model.*``
(TransformerForDiffusion, here the reference implementation in helpers.py), ``obs_encoder.*`` for
the hybrid policy (robomimic's ObservationEncoder, here bac_ros's key-compatible one) and
``normalizer.params_dict.*``.
"""

# ruff: noqa: E501  (the authors' config files, reproduced as data, have longer lines)

from __future__ import annotations

import copy
from datetime import datetime

import dill
import torch
from helpers import ReferenceDPT
from omegaconf import OmegaConf
from torch import nn

from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.models.vision import build_obs_encoder
from bac_ros.policy.checkpoint import temporary_resolvers

# diffusion_policy/config/train_diffusion_transformer_lowdim_pusht_workspace.yaml
# (real-stanford/diffusion_policy), without ``defaults`` (task: pusht_lowdim) and ``hydra``.
LOWDIM_WORKSPACE = """
name: train_diffusion_transformer_lowdim
_target_: diffusion_policy.workspace.train_diffusion_transformer_lowdim_workspace.TrainDiffusionTransformerLowdimWorkspace
obs_dim: ${task.obs_dim}
action_dim: ${task.action_dim}
task_name: ${task.name}
exp_name: "default"
horizon: 16
n_obs_steps: 2
n_action_steps: 8
n_latency_steps: 0
past_action_visible: False
keypoint_visible_rate: 1.0
obs_as_cond: True
pred_action_steps_only: False
policy:
  _target_: diffusion_policy.policy.diffusion_transformer_lowdim_policy.DiffusionTransformerLowdimPolicy
  model:
    _target_: diffusion_policy.model.diffusion.transformer_for_diffusion.TransformerForDiffusion
    input_dim: ${eval:'${action_dim} if ${obs_as_cond} else ${obs_dim} + ${action_dim}'}
    output_dim: ${policy.model.input_dim}
    horizon: ${horizon}
    n_obs_steps: ${n_obs_steps}
    cond_dim: ${eval:'${obs_dim} if ${obs_as_cond} else 0'}
    n_layer: 8
    n_head: 4
    n_emb: 256
    p_drop_emb: 0.0
    p_drop_attn: 0.01
    causal_attn: True
    time_as_cond: True
    obs_as_cond: ${obs_as_cond}
    n_cond_layers: 0
  noise_scheduler:
    _target_: diffusers.schedulers.scheduling_ddpm.DDPMScheduler
    num_train_timesteps: 100
    beta_start: 0.0001
    beta_end: 0.02
    beta_schedule: squaredcos_cap_v2
    variance_type: fixed_small
    clip_sample: True
    prediction_type: epsilon
  horizon: ${horizon}
  obs_dim: ${obs_dim}
  action_dim: ${action_dim}
  n_action_steps: ${n_action_steps}
  n_obs_steps: ${n_obs_steps}
  num_inference_steps: 100
  obs_as_cond: ${obs_as_cond}
  pred_action_steps_only: ${pred_action_steps_only}
ema:
  _target_: diffusion_policy.model.diffusion.ema_model.EMAModel
  update_after_step: 0
  inv_gamma: 1.0
  power: 0.75
  min_value: 0.0
  max_value: 0.9999
dataloader:
  batch_size: 256
  num_workers: 1
  shuffle: True
  pin_memory: True
  persistent_workers: False
val_dataloader:
  batch_size: 256
  num_workers: 1
  shuffle: False
  pin_memory: True
  persistent_workers: False
optimizer:
  learning_rate: 1.0e-4
  weight_decay: 1.0e-1
  betas: [0.9, 0.95]
training:
  device: "cuda:0"
  seed: 42
  debug: False
  resume: True
  lr_scheduler: cosine
  lr_warmup_steps: 1000
  num_epochs: 8000
  gradient_accumulate_every: 1
  use_ema: True
  rollout_every: 50
  checkpoint_every: 50
  val_every: 1
  sample_every: 5
  max_train_steps: null
  max_val_steps: null
  tqdm_interval_sec: 1.0
logging:
  project: diffusion_policy_debug
  resume: True
  mode: online
  name: ${now:%Y.%m.%d-%H.%M.%S}_${name}_${task_name}
  tags: ["${name}", "${task_name}", "${exp_name}"]
  id: null
  group: null
checkpoint:
  topk:
    monitor_key: test_mean_score
    mode: max
    k: 5
    format_str: 'epoch={epoch:04d}-test_mean_score={test_mean_score:.3f}.ckpt'
  save_last_ckpt: True
  save_last_snapshot: False
multi_run:
  run_dir: data/outputs/${now:%Y.%m.%d}/${now:%H.%M.%S}_${name}_${task_name}
  wandb_name_base: ${now:%Y.%m.%d-%H.%M.%S}_${name}_${task_name}
"""

# diffusion_policy/config/task/pusht_lowdim.yaml (real-stanford/diffusion_policy).
PUSHT_LOWDIM_TASK = """
name: pusht_lowdim
obs_dim: 20
action_dim: 2
keypoint_dim: 2
env_runner:
  _target_: diffusion_policy.env_runner.pusht_keypoints_runner.PushTKeypointsRunner
  keypoint_visible_rate: ${keypoint_visible_rate}
  n_train: 6
  n_train_vis: 2
  train_start_seed: 0
  n_test: 50
  n_test_vis: 4
  legacy_test: True
  test_start_seed: 100000
  max_steps: 300
  n_obs_steps: ${n_obs_steps}
  n_action_steps: ${n_action_steps}
  n_latency_steps: ${n_latency_steps}
  fps: 10
  agent_keypoints: False
  past_action: ${past_action_visible}
  n_envs: null
dataset:
  _target_: diffusion_policy.dataset.pusht_dataset.PushTLowdimDataset
  zarr_path: data/pusht/pusht_cchi_v7_replay.zarr
  horizon: ${horizon}
  pad_before: ${eval:'${n_obs_steps}-1+${n_latency_steps}'}
  pad_after: ${eval:'${n_action_steps}-1'}
  seed: 42
  val_ratio: 0.02
  max_train_episodes: 90
"""

# diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml, without
# ``defaults`` and ``hydra``. The real-stanford copy is not in the index searched; the keys are
# those every fork read keeps (yukaryote/, Dominique-Yiu/, pranavnnt/diffusion_policy).
HYBRID_WORKSPACE = """
name: train_diffusion_transformer_hybrid
_target_: diffusion_policy.workspace.train_diffusion_transformer_hybrid_workspace.TrainDiffusionTransformerHybridWorkspace
task_name: ${task.name}
shape_meta: ${task.shape_meta}
exp_name: "default"
horizon: 10
n_obs_steps: 2
n_action_steps: 8
n_latency_steps: 0
dataset_obs_steps: ${n_obs_steps}
past_action_visible: False
keypoint_visible_rate: 1.0
obs_as_cond: True
policy:
  _target_: diffusion_policy.policy.diffusion_transformer_hybrid_image_policy.DiffusionTransformerHybridImagePolicy
  shape_meta: ${shape_meta}
  noise_scheduler:
    _target_: diffusers.schedulers.scheduling_ddpm.DDPMScheduler
    num_train_timesteps: 100
    beta_start: 0.0001
    beta_end: 0.02
    beta_schedule: squaredcos_cap_v2
    variance_type: fixed_small
    clip_sample: True
    prediction_type: epsilon
  horizon: ${horizon}
  n_action_steps: ${eval:'${n_action_steps}+${n_latency_steps}'}
  n_obs_steps: ${n_obs_steps}
  num_inference_steps: 100
  crop_shape: [76, 76]
  obs_encoder_group_norm: True
  eval_fixed_crop: True
  n_layer: 8
  n_cond_layers: 0
  n_head: 4
  n_emb: 256
  p_drop_emb: 0.0
  p_drop_attn: 0.3
  causal_attn: True
  time_as_cond: True
  obs_as_cond: ${obs_as_cond}
ema:
  _target_: diffusion_policy.model.diffusion.ema_model.EMAModel
  update_after_step: 0
  inv_gamma: 1.0
  power: 0.75
  min_value: 0.0
  max_value: 0.9999
dataloader:
  batch_size: 64
  num_workers: 8
  shuffle: True
  pin_memory: True
  persistent_workers: False
val_dataloader:
  batch_size: 64
  num_workers: 8
  shuffle: False
  pin_memory: True
  persistent_workers: False
optimizer:
  transformer_weight_decay: 1.0e-3
  obs_encoder_weight_decay: 1.0e-6
  learning_rate: 1.0e-4
  betas: [0.9, 0.95]
training:
  device: "cuda:0"
  seed: 42
  debug: False
  resume: True
  lr_scheduler: cosine
  lr_warmup_steps: 1000
  num_epochs: 3050
  gradient_accumulate_every: 1
  use_ema: True
  rollout_every: 50
  checkpoint_every: 50
  val_every: 1
  sample_every: 5
  max_train_steps: null
  max_val_steps: null
  tqdm_interval_sec: 1.0
logging:
  project: diffusion_policy_debug
  resume: True
  mode: online
  name: ${now:%Y.%m.%d-%H.%M.%S}_${name}_${task_name}
  tags: ["${name}", "${task_name}", "${exp_name}"]
  id: null
  group: null
checkpoint:
  topk:
    monitor_key: test_mean_score
    mode: max
    k: 5
    format_str: 'epoch={epoch:04d}-test_mean_score={test_mean_score:.3f}.ckpt'
  save_last_ckpt: True
  save_last_snapshot: False
multi_run:
  run_dir: data/outputs/${now:%Y.%m.%d}/${now:%H.%M.%S}_${name}_${task_name}
  wandb_name_base: ${now:%Y.%m.%d-%H.%M.%S}_${name}_${task_name}
"""

# diffusion_policy/config/task/pusht_image.yaml (as kept by duandaxia/consistency-policy and
# Huang-1-Yi/diffusion_policy); the YAML anchors are expanded by the YAML loader, as in Hydra.
PUSHT_IMAGE_TASK = """
name: pusht_image
image_shape: &image_shape [3, 96, 96]
shape_meta: &shape_meta
  obs:
    image:
      shape: *image_shape
      type: rgb
    agent_pos:
      shape: [2]
      type: low_dim
  action:
    shape: [2]
env_runner:
  _target_: diffusion_policy.env_runner.pusht_image_runner.PushTImageRunner
  n_train: 6
  n_train_vis: 2
  train_start_seed: 0
  n_test: 50
  n_test_vis: 4
  legacy_test: True
  test_start_seed: 100000
  max_steps: 300
  n_obs_steps: ${n_obs_steps}
  n_action_steps: ${n_action_steps}
  fps: 10
  past_action: ${past_action_visible}
  n_envs: null
dataset:
  _target_: diffusion_policy.dataset.pusht_image_dataset.PushTImageDataset
  zarr_path: data/pusht/pusht_cchi_v7_replay.zarr
  horizon: ${horizon}
  pad_before: ${eval:'${n_obs_steps}-1'}
  pad_after: ${eval:'${n_action_steps}-1'}
  seed: 42
  val_ratio: 0.02
  max_train_episodes: 90
"""

# diffusion_policy/config/train_diffusion_unet_lowdim_workspace.yaml (real-stanford), without
# ``defaults`` (task: pusht_lowdim) and ``hydra``: a policy class bac_ros refuses.
UNET_LOWDIM_WORKSPACE = """
name: train_diffusion_unet_lowdim
_target_: diffusion_policy.workspace.train_diffusion_unet_lowdim_workspace.TrainDiffusionUnetLowdimWorkspace
obs_dim: ${task.obs_dim}
action_dim: ${task.action_dim}
keypoint_dim: ${task.keypoint_dim}
task_name: ${task.name}
exp_name: "default"
horizon: 16
n_obs_steps: 2
n_action_steps: 8
n_latency_steps: 0
past_action_visible: False
keypoint_visible_rate: 1.0
obs_as_local_cond: False
obs_as_global_cond: True
pred_action_steps_only: False
policy:
  _target_: diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy
  model:
    _target_: diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D
    input_dim: "${eval: ${task.action_dim} if ${obs_as_local_cond} or ${obs_as_global_cond} else ${task.obs_dim} + ${task.action_dim}}"
    local_cond_dim: "${eval: ${task.obs_dim} if ${obs_as_local_cond} else None}"
    global_cond_dim: "${eval: ${task.obs_dim}*${n_obs_steps} if ${obs_as_global_cond} else None}"
    diffusion_step_embed_dim: 256
    down_dims: [256, 512, 1024]
    kernel_size: 5
    n_groups: 8
    cond_predict_scale: True
  noise_scheduler:
    _target_: diffusers.schedulers.scheduling_ddpm.DDPMScheduler
    num_train_timesteps: 100
    beta_start: 0.0001
    beta_end: 0.02
    beta_schedule: squaredcos_cap_v2
    variance_type: fixed_small
    clip_sample: True
    prediction_type: epsilon
  horizon: ${horizon}
  obs_dim: ${obs_dim}
  action_dim: ${action_dim}
  n_action_steps: ${eval:'${n_action_steps}+${n_latency_steps}'}
  n_obs_steps: ${n_obs_steps}
  num_inference_steps: 100
  obs_as_local_cond: ${obs_as_local_cond}
  obs_as_global_cond: ${obs_as_global_cond}
  pred_action_steps_only: ${pred_action_steps_only}
  oa_step_convention: True
ema:
  _target_: diffusion_policy.model.diffusion.ema_model.EMAModel
  update_after_step: 0
  inv_gamma: 1.0
  power: 0.75
  min_value: 0.0
  max_value: 0.9999
dataloader:
  batch_size: 256
  num_workers: 1
  shuffle: True
  pin_memory: True
  persistent_workers: False
val_dataloader:
  batch_size: 256
  num_workers: 1
  shuffle: False
  pin_memory: True
  persistent_workers: False
optimizer:
  _target_: torch.optim.AdamW
  lr: 1.0e-4
  betas: [0.95, 0.999]
  eps: 1.0e-8
  weight_decay: 1.0e-6
training:
  device: "cuda:0"
  seed: 42
  debug: False
  resume: True
  lr_scheduler: cosine
  lr_warmup_steps: 500
  num_epochs: 5000
  gradient_accumulate_every: 1
  use_ema: True
  rollout_every: 50
  checkpoint_every: 50
  val_every: 100
  sample_every: 5
  max_train_steps: null
  max_val_steps: null
  tqdm_interval_sec: 1.0
logging:
  project: diffusion_policy_debug
  resume: True
  mode: online
  name: ${now:%Y.%m.%d-%H.%M.%S}_${name}_${task_name}
  tags: ["${name}", "${task_name}", "${exp_name}"]
  id: null
  group: null
checkpoint:
  topk:
    monitor_key: test_mean_score
    mode: max
    k: 5
    format_str: 'epoch={epoch:04d}-test_mean_score={test_mean_score:.3f}.ckpt'
  save_last_ckpt: True
  save_last_snapshot: False
multi_run:
  run_dir: data/outputs/${now:%Y.%m.%d}/${now:%H.%M.%S}_${name}_${task_name}
  wandb_name_base: ${now:%Y.%m.%d-%H.%M.%S}_${name}_${task_name}
"""

# Command-line overrides (as `python train.py policy.model.n_layer=2 ...`): a small, fast network.
LOWDIM_OVERRIDES = ["policy.model.n_layer=2", "policy.model.n_head=2", "policy.model.n_emb=32",
                    "policy.num_inference_steps=10"]
HYBRID_OVERRIDES = ["policy.n_layer=2", "policy.n_head=2", "policy.n_emb=32",
                    "policy.num_inference_steps=6"]

# Sizes of the composed configs above.
OBS_DIM, ACT_DIM, H, TO, TA = 20, 2, 16, 2, 8
IMG, AGENT_POS, H_IMG = (3, 96, 96), 2, 10


def compose(workspace: str, task: str, overrides=(), resolve: bool = True):
    """Hydra's composition (``defaults: [_self_, task: ...]``: the task merged under ``task``
    after the workspace's own keys), overrides applied, struct mode set as Hydra sets it, then
    train.py's ``OmegaConf.resolve(cfg)`` unless ``resolve`` is false."""
    cfg = OmegaConf.create(workspace)
    cfg.task = OmegaConf.create(task)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    OmegaConf.set_struct(cfg, True)
    if resolve:
        hydra_now = lambda pattern: datetime.now().strftime(pattern)  # noqa: E731
        with temporary_resolvers({"eval": eval, "now": hydra_now}):
            OmegaConf.resolve(cfg)
    return cfg


def lowdim_cfg(resolve: bool = True, overrides=()):
    return compose(LOWDIM_WORKSPACE, PUSHT_LOWDIM_TASK, [*LOWDIM_OVERRIDES, *overrides], resolve)


def hybrid_cfg(resolve: bool = True, overrides=()):
    return compose(HYBRID_WORKSPACE, PUSHT_IMAGE_TASK, [*HYBRID_OVERRIDES, *overrides], resolve)


def unet_lowdim_cfg(resolve: bool = True):
    return compose(UNET_LOWDIM_WORKSPACE, PUSHT_LOWDIM_TASK, resolve=resolve)


class _ModuleAttrMixin(nn.Module):
    """diffusion_policy's ModuleAttrMixin: an empty ``_dummy_variable`` parameter."""

    def __init__(self):
        super().__init__()
        self._dummy_variable = nn.Parameter(requires_grad=False)


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


class LowdimPolicy(_ModuleAttrMixin):
    """The modules of DiffusionTransformerLowdimPolicy (for pusht_lowdim), in its order."""

    def __init__(self, seed: int = 3):
        super().__init__()
        self.model = _randomised(ReferenceDPT(ACT_DIM, ACT_DIM, H, TO, OBS_DIM, 2, 2, 32,
                                              True, True, 0), seed)
        self.mask_generator = _ModuleAttrMixin()
        self.normalizer = LinearNormalizer()
        g = torch.Generator().manual_seed(seed + 1)
        self.normalizer.fit_limits("obs", torch.randn(100, OBS_DIM, generator=g) * 3)
        self.normalizer.fit_limits("action", torch.rand(100, ACT_DIM, generator=g) * 2 - 0.5)


class HybridPolicy(_ModuleAttrMixin):
    """The modules of DiffusionTransformerHybridImagePolicy (for pusht_image), in its order."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.obs_encoder, feat = build_obs_encoder({
            "type": "robomimic_resnet18", "crop_shape": [76, 76], "group_norm": True,
            "obs": {"image": {"shape": list(IMG), "type": "rgb"},
                    "agent_pos": {"shape": [AGENT_POS], "type": "low_dim"}}})
        self.model = _randomised(ReferenceDPT(ACT_DIM, ACT_DIM, H_IMG, TO, feat, 2, 2, 32,
                                              True, True, 0), seed)
        self.mask_generator = _ModuleAttrMixin()
        self.normalizer = LinearNormalizer()
        g = torch.Generator().manual_seed(seed + 1)
        self.normalizer.fit_limits("action", torch.rand(50, ACT_DIM, generator=g) * 500)
        self.normalizer.fit_limits("agent_pos", torch.rand(50, AGENT_POS, generator=g) * 500)
        self.normalizer.fit_image_range("image")


def _transformer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """TransformerForDiffusion.get_optim_groups' split: weights of Linear and MultiheadAttention
    decay; biases, LayerNorm weights, the positional embeddings and _dummy_variable do not."""
    decay, no_decay = set(), set()
    for mn, m in model.named_modules():
        for pn, _ in m.named_parameters(recurse=False):
            full = f"{mn}.{pn}" if mn else pn
            if pn.endswith("weight") and isinstance(m, (nn.Linear, nn.MultiheadAttention)):
                decay.add(full)
            else:
                no_decay.add(full)
    params = dict(model.named_parameters())
    return [{"params": [params[n] for n in sorted(decay)], "weight_decay": weight_decay},
            {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0}]


def _optimizer(policy: nn.Module, cfg) -> torch.optim.Optimizer:
    """The workspace's optimizer: the low-dim policy's get_optimizer (the model's
    configure_optimizers) or the hybrid's (plus the encoder's parameters as a third group)."""
    opt = cfg.optimizer
    if "transformer_weight_decay" in opt:
        groups = _transformer_groups(policy.model, opt.transformer_weight_decay)
        groups.append({"params": list(policy.obs_encoder.parameters()),
                       "weight_decay": opt.obs_encoder_weight_decay})
    else:
        groups = _transformer_groups(policy.model, opt.weight_decay)
    return torch.optim.AdamW(groups, lr=opt.learning_rate, betas=tuple(opt.betas))


def write_workspace_ckpt(path, cfg, ema_policy: nn.Module, global_step: int = 1234,
                         epoch: int = 100) -> None:
    """Save as BaseWorkspace.save_checkpoint does after some training: ``ema_model`` holds
    ``ema_policy``; ``model`` the trained policy (its networks differ from the EMA ones; the
    normaliser, a non-trainable parameter the EMA copies, is the same); ``optimizer`` its AdamW
    with a step taken."""
    model = copy.deepcopy(ema_policy)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not name.startswith("normalizer."):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    optimizer = _optimizer(model, cfg)
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
    optimizer.step()
    payload = {
        "cfg": cfg,
        "state_dicts": {"model": model.state_dict(), "ema_model": ema_policy.state_dict(),
                        "optimizer": optimizer.state_dict()},
        "pickles": {"_output_dir": dill.dumps(None), "global_step": dill.dumps(global_step),
                    "epoch": dill.dumps(epoch)},
    }
    with open(path, "wb") as f:
        torch.save(payload, f, pickle_module=dill)


def write_cfg_only_ckpt(path, cfg) -> None:
    """A workspace checkpoint whose state dicts are left empty, for refusals decided by the cfg
    alone (the networks of the classes bac_ros refuses, e.g. ConditionalUnet1D, are not built
    here; no tensor is invented in their place)."""
    payload = {"cfg": cfg, "state_dicts": {"model": {}, "ema_model": {}, "optimizer": {}},
               "pickles": {"_output_dir": dill.dumps(None), "global_step": dill.dumps(0),
                           "epoch": dill.dumps(0)}}
    with open(path, "wb") as f:
        torch.save(payload, f, pickle_module=dill)
