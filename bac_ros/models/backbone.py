"""Condition providers for VLA action heads: camera images + an instruction -> tokens.

An RDT-style head consumes precomputed language and image tokens; whatever produces them is a
*backbone*: any callable ``backbone(images, instructions) -> (lang, img[, lang_mask[, img_mask]])``
with

* ``images``: ``{camera key: (B, To, C, H, W) float tensor}``, normalised as the policy's
  normaliser maps them (the image range normaliser: [-1, 1]);
* ``instructions``: B strings;
* ``lang``: (B, L, lang_token_dim), padded to one L for the batch, ``img``: (B, img_cond_len,
  img_token_dim);
* ``lang_mask`` / ``img_mask``: optional (B, L) / (B, img_cond_len) bool tensors, True for a real
  token (RDT's ``lang_attn_mask``, e.g. a tokenizer's attention mask); the head attends to real
  tokens only. Omitted or None: every token is real.

On a robot that is a real VLM (e.g. T5 + SigLIP for RDT-1B), attached with
``Policy.set_backbone(fn)`` or named in the checkpoint config as
``backbone: {type: callable, factory: "my_pkg.vlm:make", kwargs: {...}}`` (the factory is
imported and called with ``kwargs``; it loads its own weights). :class:`TinyBackbone` is the
small built-in one for tests and the demo, its weights stored in the checkpoint.
"""

from __future__ import annotations

import importlib
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from torch import nn


class Backbone(Protocol):
    def __call__(self, images: Mapping[str, torch.Tensor],
                 instructions: Sequence[str]) -> tuple[torch.Tensor | None, ...]: ...


class TinyBackbone(nn.Module):
    """Hashed word embeddings (fixed token count, id 0 pads) and a strided-conv patch
    embedding of every camera frame: deterministic tokens with the shapes a VLM would give, and
    the mask of real language tokens."""

    END = 1  # ends every instruction, as T5's ``</s>`` does: an empty one still has a real token

    def __init__(self, cameras: Sequence[str], image_shape: Sequence[int], n_obs_steps: int,
                 lang_token_dim: int = 64, img_token_dim: int = 64, lang_tokens: int = 8,
                 vocab_size: int = 1024, patch: int = 8):
        super().__init__()
        C, H, W = (int(v) for v in image_shape)
        if lang_tokens < 2 or vocab_size < 3:
            raise ValueError(f"lang_tokens is {lang_tokens} and vocab_size {vocab_size}; expected "
                             "at least 2 and 3 (words, the end token and padding)")
        if H % patch or W % patch:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {patch}")
        self.cameras, self.lang_tokens, self.vocab_size = list(cameras), lang_tokens, vocab_size
        self.num_img_tokens = len(self.cameras) * n_obs_steps * (H // patch) * (W // patch)
        self.words = nn.Embedding(vocab_size, lang_token_dim)
        self.lang_pos = nn.Parameter(torch.randn(1, lang_tokens, lang_token_dim) * 0.02)
        self.patches = nn.Conv2d(C, img_token_dim, patch, stride=patch)

    def token_ids(self, text: str) -> list[int]:
        """Lower-case words hashed into the vocabulary (stable across runs), the end token, then
        0 to pad."""
        words = re.findall(r"[a-z0-9]+", text.lower())[: self.lang_tokens - 1]
        ids = [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words] + [self.END]
        return ids + [0] * (self.lang_tokens - len(ids))

    def forward(self, images: Mapping[str, torch.Tensor], instructions: Sequence[str]):
        device = self.patches.weight.device
        ids = torch.tensor([self.token_ids(t) for t in instructions], device=device)
        lang = self.words(ids) + self.lang_pos
        tokens = []
        for key in self.cameras:
            x = images[key]
            B, To = x.shape[:2]
            p = self.patches(x.flatten(0, 1).to(self.patches.weight.dtype))  # (B*To, D, h, w)
            tokens.append(p.flatten(2).transpose(1, 2).reshape(B, -1, p.shape[1]))
        return lang, torch.cat(tokens, dim=1), ids != 0


def build_backbone(config: dict) -> Callable:
    """``{type: tiny, ...}`` (untrained: its weights come with the checkpoint) or
    ``{type: callable, factory: "module:function", kwargs}``."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind == "tiny":
        return TinyBackbone(**config)
    if kind == "callable":
        target = str(config.get("factory", ""))
        module, _, name = target.partition(":")
        if not module or not name:
            raise ValueError(f"backbone factory is {target!r}; expected 'module:function'")
        factory = getattr(importlib.import_module(module), name)
        return factory(**config.get("kwargs", {}))
    raise ValueError(f"backbone type is {kind!r}; expected 'tiny' or 'callable'")
