"""Adapters: which methods of a model are its cacheable blocks, and how a step is run.

An adapter is the only place that knows a model's layout. ``bind`` names the blocks (stable
names used in schedule files); ``runner`` returns the per-step function the sampler calls. The
default runner is the model's own ``forward`` (hooks make it cache); a model-specific runner may
hoist work that does not change across steps out of the loop, without changing the maths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from bac_ros.cache.blocks import Block, BlockBinding
from bac_ros.models.dpt import LayerStack, TransformerForDiffusion
from bac_ros.models.rdt import RDTHead

StepFn = Callable[[torch.Tensor, int], torch.Tensor]


class BlockAdapter:
    """Base adapter: subclasses implement :meth:`bind`; :meth:`runner` defaults to ``forward``."""

    def bind(self, model: nn.Module) -> list[BlockBinding]:
        raise NotImplementedError

    def runner(
        self,
        model: nn.Module,
        cond: torch.Tensor | None,
        timesteps: torch.Tensor,
        fast: bool = True,
    ) -> StepFn:
        """Per-observation setup; returns ``step(x, k) -> model output`` for step index k."""
        return lambda x, k: model(x, timesteps[k], cond)


class DPTAdapter(BlockAdapter):
    """DP-T: per decoder layer ``sa``/``ca``/``ffn`` (encoder layers ``sa``/``ffn`` when the model
    is encoder-only). Names: ``decoder.layers.<l>.{self_attn,cross_attn,ffn}``."""

    KIND_NAMES = {"sa": ("sa_branch", "self_attn"), "ca": ("ca_branch", "cross_attn"),
                  "ffn": ("ffn_branch", "ffn")}

    def bind(self, model: TransformerForDiffusion) -> list[BlockBinding]:
        stack, prefix, kinds = (
            (model.encoder, "encoder", ("sa", "ffn"))
            if model.encoder_only
            else (model.decoder, "decoder", ("sa", "ca", "ffn"))
        )
        bindings = []
        for l, layer in enumerate(stack.layers):
            for kind in kinds:
                method, label = self.KIND_NAMES[kind]
                block = Block(f"{prefix}.layers.{l}.{label}", l, kind)
                bindings.append(BlockBinding(block, layer, method))
        return bindings

    def runner(self, model, cond, timesteps, fast=True):
        if not fast or model.encoder_only or isinstance(model.encoder, LayerStack):
            return super().runner(model, cond, timesteps, fast)
        return _dpt_fast_runner(model, cond, timesteps)


def _dpt_fast_runner(
    model: TransformerForDiffusion, cond: torch.Tensor | None, timesteps: torch.Tensor
) -> StepFn:
    """With a per-token (MLP) condition encoder, memory = [time token(t_k), obs tokens]: the time
    part depends only on k and the obs part only on the observation. Both, and their
    cross-attention keys/values, are computed once here instead of at every step."""
    K = len(timesteps)
    time_tok = model.time_tokens(timesteps)  # (K, 1, E)
    mem_time = model.encoder(model.drop(time_tok + model.cond_pos_emb[:, :1]))
    mem_obs = None
    if model.cond_obs_emb is not None:
        obs = model.cond_obs_emb(cond)
        mem_obs = model.encoder(model.drop(obs + model.cond_pos_emb[:, 1 : 1 + obs.shape[1]]))
    B = cond.shape[0] if cond is not None else 1
    layers = list(model.decoder.layers)
    kv_per_layer = []
    for layer in layers:
        kt, vt = layer.memory_kv(mem_time)  # (K, H, 1, d)
        kt, vt = kt[:, None].expand(K, B, *kt.shape[1:]), vt[:, None].expand(K, B, *vt.shape[1:])
        if mem_obs is not None:
            ko, vo = layer.memory_kv(mem_obs)  # (B, H, To, d)
            kt = torch.cat([kt, ko[None].expand(K, *ko.shape)], dim=3)
            vt = torch.cat([vt, vo[None].expand(K, *vo.shape)], dim=3)
        kv_per_layer.append((kt.contiguous(), vt.contiguous()))
    mask, memory_mask = model.mask, model.memory_mask

    def step(x: torch.Tensor, k: int) -> torch.Tensor:
        h = model.embed_input(x)
        for layer, (kk, vv) in zip(layers, kv_per_layer):
            h = h + layer.sa_branch(h, mask)
            h = h + layer.ca_branch(h, None, memory_mask, kv=(kk[k], vv[k]))
            h = h + layer.ffn_branch(h)
        return model.output(h)

    return step


class GenericAdapter(BlockAdapter):
    """Blocks of any transformer, declared as data: ``(module_path, method, layer, kind)``.

    ``module_path`` is the dotted name from ``model.named_modules()``; ``method`` returns the
    residual branch (``x + method(...)`` in the model's forward) — ``"forward"`` when the branch
    is a submodule of its own. Each declared method must run exactly once per denoising step
    (one method per layer, not one shared by all layers). The block is named
    ``<module_path>.<method>`` unless a fifth element gives a name. The model's
    ``forward(sample, timestep, cond)`` is the step.
    """

    def __init__(self, declarations: Sequence[tuple]):
        self.declarations = [tuple(d) for d in declarations]

    def bind(self, model: nn.Module) -> list[BlockBinding]:
        modules = dict(model.named_modules())
        bindings = []
        for decl in self.declarations:
            path, method, layer, kind = decl[:4]
            if path not in modules:
                raise KeyError(f"block module {path!r} is not in the model")
            module = modules[path]
            if not callable(getattr(module, method, None)):
                raise AttributeError(f"module {path!r} has no method {method!r}")
            name = decl[4] if len(decl) > 4 else f"{path}.{method}"
            bindings.append(BlockBinding(Block(name, int(layer), kind), module, method))
        return bindings


class RDTAdapter(BlockAdapter):
    """RDT-style head: per block ``sa``/``ca``/``ffn``, named ``model.blocks.<l>.{attn,
    cross_attn,ffn}`` (the modules' own state-dict paths)."""

    KINDS = (("sa", "sa_branch", "attn"), ("ca", "ca_branch", "cross_attn"),
             ("ffn", "ffn_branch", "ffn"))

    def bind(self, model: RDTHead) -> list[BlockBinding]:
        return [BlockBinding(Block(f"model.blocks.{l}.{label}", l, kind), block, method)
                for l, block in enumerate(model.model.blocks) for kind, method, label in self.KINDS]

    def runner(self, model, cond, timesteps, fast=True):
        if not fast:
            return super().runner(model, cond, timesteps, fast)
        return _rdt_fast_runner(model, cond, timesteps)


def _rdt_fast_runner(model: RDTHead, cond: torch.Tensor, timesteps: torch.Tensor) -> StepFn:
    """The time tokens of all steps, and every block's cross-attention keys/values of its
    (language or image) condition, are computed once per observation instead of per step; each
    block keeps its condition's token mask."""
    dit = model.model
    head, lang, img, lang_mask, img_mask = model.split_condition(cond)
    B = cond.shape[0]
    time_tok = dit.t_embedder(timesteps)[:, None, None].expand(-1, B, 1, -1)  # (K, B, 1, E)
    pos = dit.x_pos_embed
    blocks = list(dit.blocks)
    kvs = [b.cross_attn.keys_values(lang if i % 2 == 0 else img) for i, b in enumerate(blocks)]
    masks = [lang_mask if i % 2 == 0 else img_mask for i in range(len(blocks))]

    def step(x: torch.Tensor, k: int) -> torch.Tensor:
        h = torch.cat([time_tok[k], head, model.adapt_actions(x)], dim=1) + pos
        for block, kv, mask in zip(blocks, kvs, masks):
            h = h + block.sa_branch(h)
            h = h + block.ca_branch(h, None, kv, mask)
            h = h + block.ffn_branch(h)
        return dit.final_layer(h)[:, -dit.horizon:]

    return step


ADAPTERS: dict[type, Callable[[], BlockAdapter]] = {TransformerForDiffusion: DPTAdapter,
                                                    RDTHead: RDTAdapter}


def adapter_for(model: nn.Module) -> BlockAdapter:
    for cls, factory in ADAPTERS.items():
        if isinstance(model, cls):
            return factory()
    raise TypeError(
        f"no block adapter is registered for {type(model).__name__}; pass a GenericAdapter "
        "declaring its blocks"
    )
