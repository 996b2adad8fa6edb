"""RDT-style DiT action head, state-dict compatible with the public RDT-1B code.

Key layout (as ``RDTRunner`` saves it): ``model.*`` is the DiT (``t_embedder``,
``freq_embedder``, ``x_pos_embed``, ``lang_cond_pos_embed``, ``img_cond_pos_embed``,
``blocks.N.{norm1, attn.{qkv, q_norm, k_norm, proj}, norm2, cross_attn.{q, kv, q_norm, k_norm,
proj}, norm3, ffn.{fc1, fc2}}``, ``final_layer.{norm_final, ffn_final}``) and
``{lang,img,state}_adaptor`` project the backbone's tokens, the robot state and the noisy
actions to the hidden size. Trunk tokens are ``[time, control frequency, state, actions...]``;
block ``i`` cross-attends to the language tokens when ``i`` is even and to the image tokens when
odd, under ``lang_mask`` / ``img_mask`` respectively: RDT's (B, L) bool masks, True for a real
token, so a padded batch of instructions gives each sample what it gives alone. Each block
exposes its three residual branches (``sa_branch``, ``ca_branch``, ``ffn_branch``) for a block
cache to drive; the model knows nothing about caching. A sampler runs the head through its
per-step interface, :meth:`RDTHead.prepare` once per observation and :meth:`RDTHead.step` per
denoising step; ``forward`` is the two for one timestep.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# The public RDT-1B configuration (configs/base.yaml of the RDT repository).
RDT_1B = dict(state_dim=128, horizon=64, hidden_size=2048, depth=28, num_heads=32,
              lang_token_dim=4096, img_token_dim=1152, max_lang_cond_len=1024,
              img_cond_len=4374, lang_adaptor="mlp2x_gelu", img_adaptor="mlp2x_gelu",
              state_adaptor="mlp3x_gelu")


class TimestepEmbedder(nn.Module):
    """DiT's scalar embedding: ``cat(cos(t f), sin(t f))`` (256 frequencies) then an MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) timesteps or frequencies (may be fractional) -> (N, hidden)."""
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    """timm's ``Mlp`` keys (``fc1``, ``fc2``) with tanh-approximated GELU, as RDT uses it."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def check_token_mask(mask: torch.Tensor | None, tokens: torch.Tensor, name: str):
    """RDT's condition mask: a (B, L) bool tensor matching ``tokens``, True for a real token
    (None: every token is real). Every sample needs one real token, or its attention is empty."""
    if mask is None:
        return None
    want = tuple(tokens.shape[:2])
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != want:
        got = (f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor)
               else type(mask).__name__)
        raise ValueError(f"{name} must be a bool tensor of shape {want} (True = a real token); "
                         f"got {got}")
    empty = (~mask.any(dim=1)).nonzero()
    if len(empty):
        raise ValueError(f"{name} marks no real token in sample {int(empty[0])}; every sample "
                         "needs at least one")
    return mask.to(tokens.device)


def _heads(x: torch.Tensor, n: int, heads: int) -> torch.Tensor:
    """(B, T, n*E) -> n tensors (B, heads, T, E/heads)."""
    B, T, _ = x.shape
    return x.view(B, T, n, heads, -1).permute(2, 0, 3, 1, 4)


class Attention(nn.Module):
    """Self-attention with per-head RMS-normalised queries and keys (timm ``qk_norm=True``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads(self.qkv(x), 3, self.num_heads)
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Queries from the trunk, keys/values from condition tokens (RDT's ``CrossAttention``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def keys_values(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values of ``c``: constant across denoising steps."""
        k, v = _heads(self.kv(c), 2, self.num_heads)
        return self.k_norm(k), v

    def forward(self, x: torch.Tensor, c: torch.Tensor | None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: (B, L) bool, True for the condition tokens every query may attend to."""
        k, v = kv if kv is not None else self.keys_values(c)
        q = self.q_norm(_heads(self.q(x), 1, self.num_heads)[0])
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class RDTBlock(nn.Module):
    """RMSNorm -> self-attention, RMSNorm -> cross-attention, RMSNorm -> MLP; each residual
    (wired by :meth:`RDT.run_blocks`, which hands cross-attention precomputed keys/values)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.RMSNorm(hidden_size, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm3 = nn.RMSNorm(hidden_size, eps=1e-6)
        self.ffn = Mlp(hidden_size, hidden_size)

    def sa_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm1(x))

    def ca_branch(self, x: torch.Tensor, c: torch.Tensor | None,
                  kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention branch; pass ``kv`` (from ``cross_attn.keys_values``) instead of c."""
        return self.cross_attn(self.norm2(x), c, kv, mask)

    def ffn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.norm3(x))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.RMSNorm(hidden_size, eps=1e-6)
        self.ffn_final = Mlp(hidden_size, hidden_size, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_final(self.norm_final(x))


class RDT(nn.Module):
    """The DiT of RDT: ``forward(x, freq, t, lang_c, img_c, lang_mask, img_mask)`` with ``x``
    the adapted ``[state, actions]`` tokens, ``lang_c``/``img_c`` the adapted condition tokens and
    their optional (B, L) bool masks (True = a real token)."""

    def __init__(self, output_dim: int, horizon: int, hidden_size: int, depth: int,
                 num_heads: int, max_lang_cond_len: int, img_cond_len: int):
        super().__init__()
        self.horizon = horizon
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.freq_embedder = TimestepEmbedder(hidden_size)
        self.x_pos_embed = nn.Parameter(torch.zeros(1, horizon + 3, hidden_size))
        self.lang_cond_pos_embed = nn.Parameter(torch.zeros(1, max_lang_cond_len, hidden_size))
        self.img_cond_pos_embed = nn.Parameter(torch.zeros(1, img_cond_len, hidden_size))
        self.blocks = nn.ModuleList(RDTBlock(hidden_size, num_heads) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, output_dim)

    def condition_tokens(self, lang_c: torch.Tensor, img_c: torch.Tensor):
        """Position-embedded language and image tokens (per observation, not per step)."""
        if lang_c.shape[1] > self.lang_cond_pos_embed.shape[1]:
            raise ValueError(f"{lang_c.shape[1]} language tokens exceed max_lang_cond_len "
                             f"{self.lang_cond_pos_embed.shape[1]}")
        if img_c.shape[1] != self.img_cond_pos_embed.shape[1]:
            raise ValueError(f"got {img_c.shape[1]} image tokens; the head expects img_cond_len "
                             f"{self.img_cond_pos_embed.shape[1]}")
        return lang_c + self.lang_cond_pos_embed[:, : lang_c.shape[1]], \
            img_c + self.img_cond_pos_embed

    def block_conditions(self, lang: torch.Tensor, img: torch.Tensor,
                         lang_mask: torch.Tensor | None = None,
                         img_mask: torch.Tensor | None = None) -> list:
        """Per block (the block, the cross-attention keys/values of its condition tokens —
        language for even blocks, image for odd — and their token mask): per observation, not
        per step."""
        conds = ((lang, lang_mask), (img, img_mask))
        return [(block, block.cross_attn.keys_values(conds[i % 2][0]), conds[i % 2][1])
                for i, block in enumerate(self.blocks)]

    def run_blocks(self, h: torch.Tensor, block_conditions: list) -> torch.Tensor:
        """Blocks (as :meth:`block_conditions` lists them) and final layer over position-embedded
        trunk tokens; the action outputs."""
        for block, kv, mask in block_conditions:
            h = h + block.sa_branch(h)
            h = h + block.ca_branch(h, None, kv, mask)
            h = h + block.ffn_branch(h)
        return self.final_layer(h)[:, -self.horizon:]

    def trunk(self, h: torch.Tensor, lang: torch.Tensor, img: torch.Tensor,
              lang_mask: torch.Tensor | None = None,
              img_mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`run_blocks` under position-embedded condition tokens and their masks."""
        return self.run_blocks(h, self.block_conditions(lang, img, lang_mask, img_mask))

    def forward(self, x: torch.Tensor, freq: torch.Tensor, t: torch.Tensor,
                lang_c: torch.Tensor, img_c: torch.Tensor, lang_mask: torch.Tensor | None = None,
                img_mask: torch.Tensor | None = None) -> torch.Tensor:
        lang_mask = check_token_mask(lang_mask, lang_c, "lang_mask")
        img_mask = check_token_mask(img_mask, img_c, "img_mask")
        B = x.shape[0]
        t_tok = self.t_embedder(t.reshape(-1).expand(B))[:, None]
        f_tok = self.freq_embedder(freq.reshape(-1).expand(B))[:, None]
        h = torch.cat([t_tok, f_tok, x], dim=1) + self.x_pos_embed
        return self.trunk(h, *self.condition_tokens(lang_c, img_c), lang_mask, img_mask)


def condition_adapter(kind: str, in_features: int, out_features: int) -> nn.Module:
    """RDT's ``build_condition_adapter``: ``linear`` or ``mlp<N>x_gelu``."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind.startswith("mlp") and kind.endswith("x_gelu") and kind[3:-6].isdigit():
        layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
        for _ in range(int(kind[3:-6]) - 1):
            layers += [nn.GELU(approximate="tanh"), nn.Linear(out_features, out_features)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown condition adapter {kind!r}; expected 'linear' or 'mlp<N>x_gelu'")


class RDTHead(nn.Module):
    """RDT action head for the denoising engine: ``forward(sample, timestep, cond)``.

    ``sample`` is the noisy action chunk (B, horizon, state_dim) in RDT's unified action space;
    the robot's actions occupy its first ``action_dims`` entries (RDT's action mask). ``cond``
    is what :meth:`condition` packs once per observation: ``[frequency token, state token,
    language tokens, image tokens]`` at the hidden size, so each step only embeds the time and
    the noisy actions. When a token mask pads something, one more channel holds it (1 = real
    token): the condition stays one tensor, so every path that carries it carries the masks.
    The output is whatever the head was trained to predict (RDT: the clean sample; a
    flow-matching head: the velocity).
    """

    def __init__(self, state_dim: int = 128, horizon: int = 64, hidden_size: int = 2048,
                 depth: int = 28, num_heads: int = 32, lang_token_dim: int = 4096,
                 img_token_dim: int = 1152, max_lang_cond_len: int = 1024,
                 img_cond_len: int = 4374, lang_adaptor: str = "mlp2x_gelu",
                 img_adaptor: str = "mlp2x_gelu", state_adaptor: str = "mlp3x_gelu",
                 action_dims: int | None = None):
        super().__init__()
        self.config = dict(
            state_dim=state_dim, horizon=horizon, hidden_size=hidden_size, depth=depth,
            num_heads=num_heads, lang_token_dim=lang_token_dim, img_token_dim=img_token_dim,
            max_lang_cond_len=max_lang_cond_len, img_cond_len=img_cond_len,
            lang_adaptor=lang_adaptor, img_adaptor=img_adaptor, state_adaptor=state_adaptor,
            action_dims=action_dims,
        )
        action_dims = state_dim if action_dims is None else action_dims
        if not 0 < action_dims <= state_dim:
            raise ValueError(f"action_dims is {action_dims}; expected 1..state_dim={state_dim}")
        self.model = RDT(state_dim, horizon, hidden_size, depth, num_heads, max_lang_cond_len,
                         img_cond_len)
        self.lang_adaptor = condition_adapter(lang_adaptor, lang_token_dim, hidden_size)
        self.img_adaptor = condition_adapter(img_adaptor, img_token_dim, hidden_size)
        # Inputs are values and their mask, concatenated (RDT's state_token_dim * 2).
        self.state_adaptor = condition_adapter(state_adaptor, 2 * state_dim, hidden_size)
        mask = torch.zeros(state_dim)
        mask[:action_dims] = 1
        self.register_buffer("action_mask", mask, persistent=False)
        self.apply(self._init_weights)
        for p in (self.model.x_pos_embed, self.model.lang_cond_pos_embed,
                  self.model.img_cond_pos_embed):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def adapt_actions(self, sample: torch.Tensor) -> torch.Tensor:
        """Noisy actions and the action mask -> action tokens."""
        mask = self.action_mask.to(sample.dtype).expand(*sample.shape)
        return self.state_adaptor(torch.cat([sample, mask], dim=-1))

    def condition(self, lang_tokens: torch.Tensor, img_tokens: torch.Tensor,
                  state: torch.Tensor, ctrl_freq: torch.Tensor,
                  lang_mask: torch.Tensor | None = None,
                  img_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone tokens (B, L, lang_token_dim), (B, img_cond_len, img_token_dim), the state
        (B, state_dim), control frequency (B,) and RDT's optional token masks ((B, L) and
        (B, img_cond_len) bool, True = a real token) -> the packed condition (B, 2+L+I, hidden),
        or (B, 2+L+I, hidden+1) with the mask channel when a mask pads something."""
        masks = [check_token_mask(m, tok, name) for m, tok, name in
                 ((lang_mask, lang_tokens, "lang_mask"), (img_mask, img_tokens, "img_mask"))]
        lang, img = self.model.condition_tokens(self.lang_adaptor(lang_tokens),
                                                self.img_adaptor(img_tokens))
        mask = self.action_mask.to(state.dtype).expand(*state.shape)
        state_tok = self.state_adaptor(torch.cat([state, mask], dim=-1))[:, None]
        freq_tok = self.model.freq_embedder(ctrl_freq)[:, None]
        cond = torch.cat([freq_tok, state_tok, lang, img], dim=1)
        if all(m is None or bool(m.all()) for m in masks):  # nothing padded: no mask at all
            return cond
        keep = [torch.ones(*t.shape[:2], dtype=torch.bool, device=cond.device) if m is None else m
                for m, t in zip(masks, (lang, img))]
        keep = torch.cat([keep[0].new_ones(cond.shape[0], 2), *keep], dim=1)
        return torch.cat([cond, keep.to(cond.dtype)[..., None]], dim=-1)

    def split_condition(self, cond: torch.Tensor):
        """Packed condition -> (frequency and state tokens, language tokens, image tokens,
        language mask, image mask); the masks are None when the condition has no mask channel."""
        E, n_img = self.model.x_pos_embed.shape[-1], self.model.img_cond_pos_embed.shape[1]
        if cond.shape[-1] not in (E, E + 1):
            raise ValueError(f"the packed condition has width {cond.shape[-1]}; expected {E} "
                             f"(the hidden size) or {E + 1} (with the token-mask channel)")
        lang_mask = img_mask = None
        if cond.shape[-1] == E + 1:
            keep = cond[..., E] != 0
            cond, lang_mask, img_mask = cond[..., :E], keep[:, 2:-n_img], keep[:, -n_img:]
        return cond[:, :2], cond[:, 2:-n_img], cond[:, -n_img:], lang_mask, img_mask

    # -- the per-step interface: forward = prepare (one timestep) + step ---------------------
    def prepare(self, cond: torch.Tensor, timesteps: torch.Tensor) -> RDTContext:
        """What the denoising steps need besides the sample, computed once for all of them: the
        time tokens of every step, the frequency and state tokens, and each block's
        cross-attention keys/values with the token mask of its condition (unpacked here from the
        packed condition). ``timesteps``: (K,), shared by the batch, or (K, B), one per sample."""
        head, lang, img, lang_mask, img_mask = self.split_condition(cond)
        K, B = timesteps.shape[0], cond.shape[0]
        time = self.model.t_embedder(timesteps.reshape(-1)).unflatten(0, (K, -1))[:, :, None]
        return RDTContext(time.expand(-1, B, -1, -1), head,
                          self.model.block_conditions(lang, img, lang_mask, img_mask))

    def step(self, sample: torch.Tensor, k: int, context: RDTContext) -> torch.Tensor:
        """One denoising step's network: the output for the k-th of the prepared timesteps."""
        h = torch.cat([context.time[k], context.head, self.adapt_actions(sample)], dim=1)
        return self.model.run_blocks(h + self.model.x_pos_embed, context.blocks)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        return self.step(sample, 0, self.prepare(cond, t[None]))


class RDTContext(NamedTuple):
    """:meth:`RDTHead.prepare`'s result: time tokens (K, B, 1, hidden), the frequency and state
    tokens (B, 2, hidden), and per block (the block, (keys, values), token mask or None)."""

    time: torch.Tensor
    head: torch.Tensor
    blocks: list
