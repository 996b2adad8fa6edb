"""Observation encoders for image policies: images (+ low-dim state) -> one flat feature vector.

Two image cores share one multi-key encoder:

* ``robomimic_resnet18``: the encoder of Chi et al.'s hybrid image policies
  (``diffusion_transformer_hybrid_image_policy.py``), i.e. robomimic 0.2's ``ObservationEncoder``
  built from ``get_robomimic_config('bc_rnn', 'image', 'square', 'ph')`` with BatchNorm replaced by
  GroupNorm (``obs_encoder_group_norm=True``) and a centre crop at eval (``eval_fixed_crop=True``).
  Module names mirror the original so that the checkpoint's ``obs_encoder.*`` tensors load with
  ``load_state_dict(strict=True)`` after stripping the ``obs_encoder.`` prefix.
* ``small_cnn``: a few strided conv layers for the project's own fast image model.

Layout of the original, per RGB key ``k`` (robomimic ``VisualCore``)::

    obs_nets.k.backbone            ResNet18Conv: ``nets`` = resnet18 children minus avgpool/fc
    obs_nets.k.pool                SpatialSoftmax: ``nets`` 1x1 conv to 32 keypoints, buffers
                                   ``temperature`` (1,), ``pos_x``/``pos_y`` (1, H*W)
    obs_nets.k.nets                Sequential(backbone, pool, Flatten, Linear(64, 64)); so the
                                   state dict also holds ``nets.0.*`` and ``nets.1.*`` (the
                                   same tensors as ``backbone.*``/``pool.*``) and the Linear
                                   as ``nets.3``

``obs_randomizers.k`` (the crop) and the ReLU applied after each image core hold no tensors;
low-dim keys have no net and are flattened and concatenated unchanged. Features are concatenated
in the order of the observation config (Chi et al.: the order of ``shape_meta.obs``); nothing is
sorted. Images arrive as float (B, C, H, W) after the policy's normaliser (Chi et al.'s image
range normaliser maps [0, 1] to [-1, 1]); no ImageNet normalisation is applied, as in the
original.

Deviations from the original (documented, deliberate):

* eval-mode crop is always the centre crop; Chi et al. checkpoints trained with
  ``eval_fixed_crop=False`` crop randomly even at eval (robomimic 0.2's ``CropRandomizer``).
* only ``num_crops=1`` and ``pos_enc=False`` (the values every Chi et al. config uses).
* a crop equal to the image size is allowed (robomimic asserts crop < image).

The aliased ``nets.0``/``nets.1`` entries share storage with ``backbone``/``pool``; writers of
formats that refuse shared tensors (safetensors ``save_file``) must drop or de-duplicate them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_TYPES = ("rgb",)
OBS_TYPES = ("rgb", "low_dim")


def image_keys(obs: Mapping[str, Mapping]) -> list[str]:
    """The camera keys of an observation config (Chi et al.'s ``shape_meta['obs']`` form)."""
    return [k for k, v in obs.items() if v.get("type", "low_dim") in IMAGE_TYPES]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _norm(channels: int, group_norm: bool) -> nn.Module:
    """GroupNorm of 16 channels a group (Chi et al.'s ``replace_bn_with_gn``), else BatchNorm."""
    if group_norm:
        return nn.GroupNorm(num_groups=channels // 16, num_channels=channels)
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock`` (same attribute names, so the same state-dict keys)."""

    def __init__(self, inplanes: int, planes: int, stride: int, group_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(planes, group_norm)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(planes, group_norm)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), _norm(planes, group_norm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Conv(nn.Module):
    """robomimic ``ResNet18Conv``: resnet18 without avgpool/fc, output (B, 512, H/32, W/32)."""

    def __init__(self, in_channels: int = 3, group_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            _norm(64, group_norm),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        inplanes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(
                    BasicBlock(inplanes, planes, stride, group_norm),
                    BasicBlock(planes, planes, 1, group_norm),
                )
            )
            inplanes = planes
        self.nets = nn.Sequential(*layers)
        # torchvision's initialisation, for training from scratch (checkpoints overwrite it).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def output_hw(height: int, width: int) -> tuple[int, int]:
        """Feature-map size: conv1 and maxpool halve, then layers 2-4 halve (rounding up)."""

        def trunk(n: int) -> int:
            n = _conv_out(_conv_out(n, 7, 2, 3), 3, 2, 1)
            for _ in range(3):
                n = _conv_out(n, 3, 2, 1)
            return n

        return trunk(height), trunk(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets(x)


class SpatialSoftmax(nn.Module):
    """robomimic ``SpatialSoftmax``: per keypoint channel, the softmax-weighted mean pixel position.

    Positions run over [-1, 1] left->right (x) and top->bottom (y). Output (B, num_kp, 2) as (x, y).
    ``temperature`` is a buffer unless learnable (robomimic's defaults in Chi et al.: 32 keypoints,
    temperature 1, not learnable, no noise).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_kp: int = 32,
        temperature: float = 1.0,
        learnable_temperature: bool = False,
        noise_std: float = 0.0,
    ):
        super().__init__()
        self._in_c, self._in_h, self._in_w = (int(s) for s in input_shape)
        self.num_kp = num_kp
        self.noise_std = noise_std
        self.nets = nn.Conv2d(self._in_c, num_kp, kernel_size=1)
        temp = torch.ones(1) * temperature
        if learnable_temperature:
            self.temperature = nn.Parameter(temp)
        else:
            self.register_buffer("temperature", temp)
        # robomimic builds these with np.meshgrid(np.linspace(...)) in float64, then casts.
        lin_x = torch.linspace(-1.0, 1.0, self._in_w, dtype=torch.float64)
        lin_y = torch.linspace(-1.0, 1.0, self._in_h, dtype=torch.float64)
        grid_y, grid_x = torch.meshgrid(lin_y, lin_x, indexing="ij")
        self.register_buffer("pos_x", grid_x.reshape(1, -1).float())
        self.register_buffer("pos_y", grid_y.reshape(1, -1).float())

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        # Same reshapes and reductions as robomimic, so results match to the bit.
        feature = self.nets(feature).reshape(-1, self._in_h * self._in_w)
        attention = F.softmax(feature / self.temperature, dim=-1)
        expected_x = torch.sum(self.pos_x * attention, dim=1, keepdim=True)
        expected_y = torch.sum(self.pos_y * attention, dim=1, keepdim=True)
        keypoints = torch.cat([expected_x, expected_y], 1).view(-1, self.num_kp, 2)
        if self.training and self.noise_std > 0:
            keypoints = keypoints + torch.randn_like(keypoints) * self.noise_std
        return keypoints


class VisualCore(nn.Module):
    """robomimic ``VisualCore``: ResNet18Conv -> SpatialSoftmax -> Flatten -> Linear.

    ``backbone`` and ``pool`` are also the first two entries of ``nets``, exactly as in robomimic,
    which is why the original state dict lists their tensors twice.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        feature_dim: int = 64,
        num_kp: int = 32,
        group_norm: bool = True,
    ):
        super().__init__()
        channels, height, width = (int(s) for s in input_shape)
        self.feature_dim = feature_dim
        self.backbone = ResNet18Conv(channels, group_norm)
        self.pool = SpatialSoftmax((512, *ResNet18Conv.output_hw(height, width)), num_kp=num_kp)
        self.nets = nn.Sequential(
            self.backbone, self.pool, nn.Flatten(1), nn.Linear(num_kp * 2, feature_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets(x)


@dataclass(frozen=True)
class SmallCNNConfig:
    """Small image core for fast models on 64-96 px renders (the bundled task).

    One 3x3 conv + GroupNorm + ReLU per entry of ``channels``/``strides``; then spatial softmax
    keypoints (``pool='spatial_softmax'``) or a global average (``pool='avg'``), then a Linear to
    ``feature_dim``. The default turns a 96 px image into a 12x12 map with 0.14 M parameters.
    """

    channels: tuple[int, ...] = (32, 64, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2, 1)
    channels_per_group: int = 16
    pool: str = "spatial_softmax"
    num_kp: int = 32
    feature_dim: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if not self.channels or len(self.channels) != len(self.strides):
            raise ValueError(
                f"SmallCNNConfig needs one stride per conv layer and at least one layer, "
                f"got channels={self.channels} and strides={self.strides}."
            )
        for c in self.channels:
            if c % max(1, c // self.channels_per_group):
                raise ValueError(
                    f"SmallCNNConfig channel count {c} is not divisible into GroupNorm groups of "
                    f"{self.channels_per_group}; choose a multiple of {self.channels_per_group}."
                )
        if self.pool not in ("spatial_softmax", "avg"):
            raise ValueError(
                f"SmallCNNConfig.pool is {self.pool!r}; expected 'spatial_softmax' or 'avg'."
            )


class SmallCNN(nn.Module):
    """Strided conv stack -> pool -> Linear; (B, C, H, W) in [0, 1] -> (B, feature_dim)."""

    def __init__(self, input_shape: Sequence[int], config: SmallCNNConfig | None = None):
        super().__init__()
        cfg = config or SmallCNNConfig()
        in_c, height, width = (int(s) for s in input_shape)
        layers: list[nn.Module] = []
        for c, s in zip(cfg.channels, cfg.strides, strict=True):
            layers += [
                nn.Conv2d(in_c, c, 3, stride=s, padding=1),
                nn.GroupNorm(max(1, c // cfg.channels_per_group), c),
                nn.ReLU(inplace=True),
            ]
            in_c, height, width = c, _conv_out(height, 3, s, 1), _conv_out(width, 3, s, 1)
        self.convs = nn.Sequential(*layers)
        self.feature_dim = cfg.feature_dim
        self.pool: nn.Module
        if cfg.pool == "spatial_softmax":
            self.pool = SpatialSoftmax((in_c, height, width), num_kp=cfg.num_kp)
            pooled = 2 * cfg.num_kp
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            pooled = in_c
        self.linear = nn.Linear(pooled, cfg.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.convs(x)).flatten(1))


class CropRandomizer(nn.Module):
    """Crop images to (crop_height, crop_width): random window in training, centre at eval.

    Training offsets are drawn per image in [0, H - crop_height) like robomimic's sampler; the
    centre crop rounds like torchvision's ``center_crop`` (``round((H - h) / 2)``, half to even),
    which is what Chi et al.'s eval crop calls.
    """

    def __init__(self, crop_height: int, crop_width: int):
        super().__init__()
        self.crop_height = crop_height
        self.crop_width = crop_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        ch, cw = self.crop_height, self.crop_width
        if not self.training:
            top = int(round((height - ch) / 2.0))
            left = int(round((width - cw) / 2.0))
            return x[..., top : top + ch, left : left + cw]
        batch = x.shape[0]
        top = (torch.rand(batch, device=x.device) * (height - ch)).long()
        left = (torch.rand(batch, device=x.device) * (width - cw)).long()
        rows = top[:, None] + torch.arange(ch, device=x.device)
        cols = left[:, None] + torch.arange(cw, device=x.device)
        idx = torch.arange(batch, device=x.device)[:, None, None]
        # Advanced indices around a slice put their dims first: (B, ch, cw, C) -> (B, C, ch, cw).
        return x[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@dataclass(frozen=True)
class ObsSpec:
    """One observation key: its per-sample shape and type ('rgb' image or 'low_dim' vector)."""

    name: str
    shape: tuple[int, ...]
    type: str = "low_dim"


class ObservationEncoder(nn.Module):
    """robomimic ``ObservationEncoder``: encode each key, flatten, concatenate in config order.

    RGB keys: crop (``obs_randomizers``) -> image core (``obs_nets``) -> ReLU. Low-dim keys: as
    given. ``forward`` takes a dict of (B, *shape) tensors (extra keys are ignored) and returns
    (B, output_dim). Policies with an observation history fold time into the batch first.

    ``condition_on`` (not in robomimic): low-dim keys each image core's features are joined with,
    through a two-layer MLP (``obs_fusers``, ``condition_hidden`` wide) before the ReLU. One
    camera cannot place a lifted object in depth; beside the hand's own position it can (the
    grasped object sits at the hand).
    """

    def __init__(
        self,
        obs: Sequence[ObsSpec],
        make_core: Callable[[tuple[int, int, int]], nn.Module],
        crop_shape: tuple[int, int] | None = None,
        condition_on: Sequence[str] = (),
        condition_hidden: int = 256,
    ):
        super().__init__()
        self.obs_specs = tuple(obs)
        self.obs_nets = nn.ModuleDict()
        self.obs_randomizers = nn.ModuleDict()
        self.activation = nn.ReLU()
        low_dim = {s.name: math.prod(s.shape) for s in self.obs_specs if s.type not in IMAGE_TYPES}
        bad = [k for k in condition_on if k not in low_dim]
        if bad:
            raise ValueError(f"condition_on names {bad}, which are not low-dim observations; "
                             f"expected some of {sorted(low_dim)}.")
        self.condition_on = tuple(condition_on)
        cond_dim = sum(low_dim[k] for k in self.condition_on)
        if self.condition_on:
            self.obs_fusers = nn.ModuleDict()
        output_dim = 0
        for spec in self.obs_specs:
            if spec.type not in IMAGE_TYPES:
                output_dim += math.prod(spec.shape)
                continue
            channels, height, width = spec.shape
            if crop_shape is not None:
                ch, cw = crop_shape
                if not (0 < ch <= height and 0 < cw <= width):
                    raise ValueError(
                        f"crop_shape {tuple(crop_shape)} does not fit inside image "
                        f"{spec.name!r} of size {height}x{width}."
                    )
                self.obs_randomizers[spec.name] = CropRandomizer(ch, cw)
                height, width = ch, cw
            core = make_core((channels, height, width))
            self.obs_nets[spec.name] = core
            if self.condition_on:
                self.obs_fusers[spec.name] = nn.Sequential(
                    nn.Linear(core.feature_dim + cond_dim, condition_hidden), nn.ReLU(),
                    nn.Linear(condition_hidden, core.feature_dim))
            output_dim += core.feature_dim
        self.output_dim = output_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        for spec in self.obs_specs:
            if spec.name not in obs:
                raise KeyError(
                    f"observation {spec.name!r} is missing; the encoder needs "
                    f"{[s.name for s in self.obs_specs]}."
                )
            if tuple(obs[spec.name].shape[1:]) != spec.shape:
                raise ValueError(
                    f"observation {spec.name!r} has shape {tuple(obs[spec.name].shape)}; "
                    f"expected (batch, {', '.join(str(s) for s in spec.shape)})."
                )
        feats = []
        for spec in self.obs_specs:
            x = obs[spec.name]
            if spec.type in IMAGE_TYPES:
                if spec.name in self.obs_randomizers:
                    x = self.obs_randomizers[spec.name](x)
                x = self.obs_nets[spec.name](x)
                if self.condition_on:
                    cond = [obs[k].reshape(x.shape[0], -1) for k in self.condition_on]
                    x = self.obs_fusers[spec.name](torch.cat([x, *cond], dim=-1))
                x = self.activation(x)
            feats.append(x.reshape(x.shape[0], -1))
        return torch.cat(feats, dim=-1)


def parse_obs_specs(obs: Mapping[str, Mapping]) -> list[ObsSpec]:
    """Read Chi et al.'s ``shape_meta['obs']`` form: ``{key: {shape: [...], type: rgb|low_dim}}``.

    ``type`` defaults to 'low_dim' as in Chi et al.; other fields of an entry are ignored.
    """
    if not obs:
        raise ValueError("the observation config 'obs' is empty; list at least one key.")
    specs = []
    for name, attr in obs.items():
        if "." in name or not name:
            raise ValueError(f"observation key {name!r} must be non-empty and contain no '.'.")
        if "shape" not in attr:
            raise ValueError(f"observation {name!r} has no 'shape'.")
        shape = tuple(int(s) for s in attr["shape"])
        obs_type = attr.get("type", "low_dim")
        if obs_type not in OBS_TYPES:
            raise ValueError(
                f"observation {name!r} has type {obs_type!r}; expected one of {OBS_TYPES}."
            )
        if obs_type in IMAGE_TYPES and len(shape) != 3:
            raise ValueError(f"image observation {name!r} has shape {shape}; expected (C, H, W).")
        specs.append(ObsSpec(name, shape, obs_type))
    return specs


_COMMON_KEYS = {"type", "obs", "crop_shape", "condition_on", "condition_hidden"}
_TYPE_KEYS = {
    "robomimic_resnet18": {"group_norm", "feature_dim", "num_kp"},
    "small_cnn": {"cnn"},
}


def build_obs_encoder(config: Mapping) -> tuple[ObservationEncoder, int]:
    """Build an observation encoder from a plain dict; returns it and its output width.

    Keys: ``type`` ('robomimic_resnet18' | 'small_cnn'), ``obs`` (ordered
    ``{key: {shape, type}}``, Chi et al.'s ``shape_meta['obs']``), ``crop_shape`` ([h, w] or
    null), ``condition_on`` (low-dim keys the image features are fused with; default none, as in
    Chi et al.) and ``condition_hidden`` (that MLP's width, 256). robomimic_resnet18 also takes
    ``group_norm`` (default true; false keeps BatchNorm), ``feature_dim`` (64) and ``num_kp``
    (32); small_cnn takes ``cnn`` (``SmallCNNConfig`` fields).
    A Chi et al. hybrid policy maps to ``{type: robomimic_resnet18, obs: shape_meta.obs,
    crop_shape: policy.crop_shape, group_norm: policy.obs_encoder_group_norm}``.
    """
    kind = config.get("type")
    if kind not in _TYPE_KEYS:
        raise ValueError(
            f"encoder config 'type' is {kind!r}; expected one of {sorted(_TYPE_KEYS)}."
        )
    unknown = set(config) - _COMMON_KEYS - _TYPE_KEYS[kind]
    if unknown:
        raise ValueError(f"encoder config has unknown keys {sorted(unknown)} for type {kind!r}.")
    specs = parse_obs_specs(config.get("obs") or {})
    crop = config.get("crop_shape")
    crop_shape = None if crop is None else (int(crop[0]), int(crop[1]))

    make_core: Callable[[tuple[int, int, int]], nn.Module]
    if kind == "robomimic_resnet18":
        group_norm = bool(config.get("group_norm", True))
        feature_dim = int(config.get("feature_dim", 64))
        num_kp = int(config.get("num_kp", 32))

        def make_core(shape: tuple[int, int, int]) -> nn.Module:
            return VisualCore(shape, feature_dim=feature_dim, num_kp=num_kp, group_norm=group_norm)

    else:
        cnn = dict(config.get("cnn") or {})
        allowed = {f.name for f in fields(SmallCNNConfig)}
        if set(cnn) - allowed:
            raise ValueError(
                f"encoder config 'cnn' has unknown keys {sorted(set(cnn) - allowed)}; "
                f"expected some of {sorted(allowed)}."
            )
        cnn_config = SmallCNNConfig(**cnn)

        def make_core(shape: tuple[int, int, int]) -> nn.Module:
            return SmallCNN(shape, cnn_config)

    if "condition_hidden" in config and not config.get("condition_on"):
        raise ValueError("encoder config sets condition_hidden but no condition_on keys; the "
                         "fusion MLP it sizes exists only with condition_on.")
    encoder = ObservationEncoder(specs, make_core, crop_shape,
                                 tuple(config.get("condition_on") or ()),
                                 int(config.get("condition_hidden", 256)))
    return encoder, encoder.output_dim
