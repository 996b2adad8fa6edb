"""Transformer for Diffusion Policy (DP-T), state-dict compatible with Chi et al.'s
``TransformerForDiffusion`` so that checkpoints trained with ``diffusion_policy`` load unchanged.

The decoder (and encoder) layers are written here rather than taken from ``nn.Transformer*``:
they keep the same parameter names but expose each residual branch as a public method
(``sa_branch``, ``ca_branch``, ``ffn_branch``), which is what a block cache drives. The model
itself knows nothing about caching. Its one forward pass is split in two for a sampler:
:meth:`~TransformerForDiffusion.prepare` (what depends only on the condition and the timesteps,
for all steps at once) and :meth:`~TransformerForDiffusion.step` (one step's network);
``forward`` is ``prepare`` for one timestep followed by ``step``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Diffusion-step embedding: ``cat(sin(t f), cos(t f))`` with ``f = exp(-log(1e4)/(h-1) i)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
        arg = t[:, None] * freq[None, :]
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer, ``nn.TransformerDecoderLayer``'s parameter names (gelu, 4x FFN).

    Its three branches are wired (``x = x + branch(x)``) by :meth:`TransformerForDiffusion.step`,
    which hands cross-attention the memory's keys/values computed once per observation."""

    def __init__(self, n_emb: int, n_head: int, p_drop: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(n_emb, n_head, dropout=p_drop, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(n_emb, n_head, dropout=p_drop, batch_first=True)
        self.linear1 = nn.Linear(n_emb, 4 * n_emb)
        self.dropout = nn.Dropout(p_drop)
        self.linear2 = nn.Linear(4 * n_emb, n_emb)
        self.norm1 = nn.LayerNorm(n_emb)
        self.norm2 = nn.LayerNorm(n_emb)
        self.norm3 = nn.LayerNorm(n_emb)
        self.dropout1 = nn.Dropout(p_drop)
        self.dropout2 = nn.Dropout(p_drop)
        self.dropout3 = nn.Dropout(p_drop)

    def sa_branch(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.dropout1(attention(self.self_attn, self.norm1(x), mask=mask))

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of ``memory`` (constant tokens need them only once)."""
        return attention_kv(self.multihead_attn, memory)

    def ca_branch(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Cross-attention branch; pass ``kv`` (from :meth:`memory_kv`) instead of ``memory``."""
        if kv is None:
            kv = self.memory_kv(memory)
        return self.dropout2(attention(self.multihead_attn, self.norm2(x), kv, memory_mask))

    def ffn_branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(self.norm3(x))
        return self.dropout3(self.linear2(self.dropout(F.gelu(h))))


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer, ``nn.TransformerEncoderLayer``'s parameter names (gelu, 4x FFN)."""

    def __init__(self, n_emb: int, n_head: int, p_drop: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(n_emb, n_head, dropout=p_drop, batch_first=True)
        self.linear1 = nn.Linear(n_emb, 4 * n_emb)
        self.dropout = nn.Dropout(p_drop)
        self.linear2 = nn.Linear(4 * n_emb, n_emb)
        self.norm1 = nn.LayerNorm(n_emb)
        self.norm2 = nn.LayerNorm(n_emb)
        self.dropout1 = nn.Dropout(p_drop)
        self.dropout2 = nn.Dropout(p_drop)

    def sa_branch(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.dropout1(attention(self.self_attn, self.norm1(x), mask=mask))

    def ffn_branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(self.norm2(x))
        return self.dropout2(self.linear2(self.dropout(F.gelu(h))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.sa_branch(x, mask)
        return x + self.ffn_branch(x)


class LayerStack(nn.Module):
    """A plain list of layers under ``layers.i`` (the key layout of ``nn.TransformerEncoder``)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


def attention(
    mha: nn.MultiheadAttention,
    x: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention over ``mha``'s parameters, without its per-call Python overhead.

    ``kv`` (heads-split keys and values, from :func:`attention_kv`) defaults to self-attention.
    Matches ``nn.MultiheadAttention(batch_first=True)`` to float rounding.
    """
    B, T, E = x.shape
    H = mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    if kv is None:
        q, k, v = F.linear(x, w, b).view(B, T, 3, H, E // H).permute(2, 0, 3, 1, 4)
    else:
        q = F.linear(x, w[:E], b[:E]).view(B, T, H, E // H).transpose(1, 2)
        k, v = kv
    p = mha.dropout if mha.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return F.linear(out.transpose(1, 2).reshape(B, T, E), mha.out_proj.weight, mha.out_proj.bias)


def attention_kv(mha: nn.MultiheadAttention, memory: torch.Tensor):
    """Heads-split keys and values of ``memory``: computed once, reused by every query."""
    B, S, E = memory.shape
    H = mha.num_heads
    kv = F.linear(memory, mha.in_proj_weight[E:], mha.in_proj_bias[E:])
    k, v = kv.view(B, S, 2, H, E // H).permute(2, 0, 3, 1, 4)
    return k, v


def _additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


class TransformerForDiffusion(nn.Module):
    """DP-T noise predictor: ``forward(sample (B,T,in), timestep, cond (B,To,cond_dim))``.

    Condition tokens ``[time, obs_1..obs_To]`` go through ``encoder`` into ``memory``; action
    tokens go through the decoder layers (self-attention, cross-attention to memory, FFN). With
    ``time_as_cond=False`` the model is encoder-only: the time token is prepended to the action
    tokens and dropped at the output.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        horizon: int,
        n_obs_steps: int | None = None,
        cond_dim: int = 0,
        n_layer: int = 12,
        n_head: int = 12,
        n_emb: int = 768,
        p_drop_emb: float = 0.1,
        p_drop_attn: float = 0.1,
        causal_attn: bool = False,
        time_as_cond: bool = True,
        obs_as_cond: bool = False,
        n_cond_layers: int = 0,
    ):
        super().__init__()
        if n_obs_steps is None:
            n_obs_steps = horizon
        obs_as_cond = cond_dim > 0
        if obs_as_cond and not time_as_cond:
            raise ValueError("obs_as_cond (cond_dim > 0) requires time_as_cond=True")
        T = horizon + (0 if time_as_cond else 1)
        T_cond = (1 if time_as_cond else 0) + (n_obs_steps if obs_as_cond else 0)

        self.config = dict(
            input_dim=input_dim, output_dim=output_dim, horizon=horizon, n_obs_steps=n_obs_steps,
            cond_dim=cond_dim, n_layer=n_layer, n_head=n_head, n_emb=n_emb,
            p_drop_emb=p_drop_emb, p_drop_attn=p_drop_attn, causal_attn=causal_attn,
            time_as_cond=time_as_cond, obs_as_cond=obs_as_cond, n_cond_layers=n_cond_layers,
        )
        # Chi et al.'s ModuleAttrMixin keeps an empty parameter (to find the device): keep the key.
        self._dummy_variable = nn.Parameter()
        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if obs_as_cond else None
        self.cond_pos_emb = None
        self.decoder = None
        self.encoder_only = T_cond == 0
        if not self.encoder_only:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, T_cond, n_emb))
            if n_cond_layers > 0:
                self.encoder = LayerStack(
                    [EncoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_cond_layers)]
                )
            else:
                self.encoder = nn.Sequential(
                    nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb)
                )
            self.decoder = LayerStack(
                [DecoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_layer)]
            )
        else:
            self.encoder = LayerStack(
                [EncoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_layer)]
            )

        # None buffers stay out of the state dict, as in the original for non-causal models.
        self.register_buffer("mask", None)
        self.register_buffer("memory_mask", None)
        if causal_attn:
            i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
            self.register_buffer("mask", _additive_mask(j <= i))
            if time_as_cond and obs_as_cond:
                t, s = torch.meshgrid(torch.arange(T), torch.arange(T_cond), indexing="ij")
                self.register_buffer("memory_mask", _additive_mask(t >= s - 1))

        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, mean=0.0, std=0.02)
        if self.cond_pos_emb is not None:
            nn.init.normal_(self.cond_pos_emb, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-style init, as the original (it matters only for training from scratch)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(module, name, None) is not None:
                    nn.init.normal_(getattr(module, name), mean=0.0, std=0.02)
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                if getattr(module, name, None) is not None:
                    nn.init.zeros_(getattr(module, name))
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- the pieces of forward, public so that a sampler can run the always-computed parts ----
    def timestep_tokens(
        self, timestep: torch.Tensor | int | float, batch: int, device
    ) -> torch.Tensor:
        """Time embedding as a (B, 1, n_emb) token, in the model's dtype."""
        return self.time_tokens(_batch_timesteps(timestep, batch, device))

    def time_tokens(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(N,) timesteps -> (N, 1, n_emb) tokens in the model's dtype."""
        return self.time_emb(timesteps).to(self.pos_emb.dtype).unsqueeze(1)

    def encode_condition(self, time_tok: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Condition tokens [time, obs_1..obs_To] -> memory (B, T_cond, n_emb) for the decoder.

        With the per-token (MLP) encoder ``time_tok`` may hold the time tokens of K steps
        (B, K, n_emb), each at the time position; the memory is then the K encoded time tokens
        followed by the encoded observation tokens (B, K + To, n_emb).
        """
        K = time_tok.shape[1]
        if K > 1 and isinstance(self.encoder, LayerStack):
            raise ValueError(f"got {K} time tokens; a transformer condition encoder mixes its "
                             "tokens, so it encodes one step's time token (B, 1, n_emb) at a time")
        tokens, pos = time_tok, self.cond_pos_emb[:, :1].expand(-1, K, -1)
        if self.cond_obs_emb is not None:
            obs = self.cond_obs_emb(cond)
            tokens = torch.cat([tokens.expand(obs.shape[0], -1, -1), obs], dim=1)
            pos = torch.cat([pos, self.cond_pos_emb[:, 1 : 1 + obs.shape[1]]], dim=1)
        x = self.drop(tokens + pos)
        if isinstance(self.encoder, LayerStack):
            for layer in self.encoder.layers:
                x = layer(x)
            return x
        return self.encoder(x)

    def embed_input(self, sample: torch.Tensor) -> torch.Tensor:
        x = self.input_emb(sample)
        return self.drop(x + self.pos_emb[:, : x.shape[1], :])

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x))

    # -- the per-step interface: forward = prepare (one timestep) + step ---------------------
    def prepare(self, cond: torch.Tensor | None, timesteps: torch.Tensor) -> DPTContext:
        """What the denoising steps need besides the sample, computed once for all of them.

        ``timesteps`` is (K,), shared by the batch, or (K, B), one per sample. Step k's memory
        is :meth:`encode_condition` of [time_k, obs]: a per-token (MLP) encoder encodes each
        distinct token once (the K time tokens beside the observation tokens), a transformer
        encoder (which mixes them) the K memories as one batch; each decoder layer's
        cross-attention keys/values of them are computed here, not at every step.
        """
        K = timesteps.shape[0]
        time = self.time_tokens(timesteps.reshape(-1)).unflatten(0, (K, -1))  # (K, n, 1, E)
        if self.encoder_only:
            return DPTContext(time, [], self.mask, None)
        if isinstance(self.encoder, LayerStack):
            B = time.shape[1] if cond is None else cond.shape[0]
            obs = None if cond is None else cond.expand(K, *cond.shape).flatten(0, 1)
            memory = self.encode_condition(time.expand(K, B, -1, -1).flatten(0, 1), obs)
            decoder = [(layer, *(t.unflatten(0, (K, B)) for t in layer.memory_kv(memory)))
                       for layer in self.decoder.layers]
        else:
            memory = self.encode_condition(time.squeeze(2).transpose(0, 1), cond)
            decoder = [(layer, *(_per_step(t, K) for t in layer.memory_kv(memory)))
                       for layer in self.decoder.layers]
        return DPTContext(time, decoder, self.mask, self.memory_mask)

    def step(self, sample: torch.Tensor, k: int, context: DPTContext) -> torch.Tensor:
        """One denoising step's network: the output for the k-th of the prepared timesteps."""
        if self.encoder_only:
            time_tok = context.time[k].expand(sample.shape[0], -1, -1)
            tokens = torch.cat([time_tok, self.input_emb(sample)], dim=1)
            x = self.drop(tokens + self.pos_emb[:, : tokens.shape[1], :])
            for layer in self.encoder.layers:
                x = layer(x, context.mask)
            return self.output(x[:, 1:, :])
        mask, memory_mask = context.mask, context.memory_mask
        x = self.embed_input(sample)
        for layer, keys, values in context.decoder:
            x = x + layer.sa_branch(x, mask)
            x = x + layer.ca_branch(x, None, memory_mask, (keys[k], values[k]))
            x = x + layer.ffn_branch(x)
        return self.output(x)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        cond: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        t = _batch_timesteps(timestep, sample.shape[0], sample.device)
        return self.step(sample, 0, self.prepare(cond, t[None]))


class DPTContext(NamedTuple):
    """:meth:`TransformerForDiffusion.prepare`'s result: time tokens (K, n, 1, n_emb) with n the
    batch or 1; per decoder layer (the layer, the keys and the values of every step's memory,
    each (K, B, heads, T_cond, head dim)), listed so that a step does no module lookups; the
    self-attention and memory masks."""

    time: torch.Tensor
    decoder: list[tuple[DecoderLayer, torch.Tensor, torch.Tensor]]
    mask: torch.Tensor | None
    memory_mask: torch.Tensor | None


def _batch_timesteps(timestep: torch.Tensor | int | float, batch: int, device) -> torch.Tensor:
    """A scalar, 0-d or (B,) timestep -> (B,) timesteps."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], dtype=torch.long, device=device)
    elif timestep.dim() == 0:
        timestep = timestep[None].to(device)
    return timestep.expand(batch)


def _per_step(x: torch.Tensor, K: int) -> torch.Tensor:
    """Keys or values (B, H, K + S, d) of [time_1..time_K, shared tokens] -> (K, B, H, 1 + S, d):
    step k's time token then the shared ones, contiguous, so that a step reads one tensor."""
    shared = x[:, :, K:]
    time = x[:, :, :K].permute(2, 0, 1, 3).unsqueeze(3)
    return torch.cat([time, shared.expand(K, *shared.shape)], dim=3)
