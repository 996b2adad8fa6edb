"""Plain values and classes several test modules share; no ROS, so tests that do not use ROS
import it too. Fixtures (anything with set-up and tear-down) live in conftest.py, the ROS harness
in ros_helpers.py.
"""

import math
from pathlib import Path

import torch
from torch import nn

from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_rdt_checkpoint
from bac_ros.policy.checkpoint import save_native

# A two-block DP-T (paper architecture, no dropout): small enough to build and run in a test.
SMALL = dict(n_layer=2, n_head=2, n_emb=32, p_drop_emb=0.0, p_drop_attn=0.0, causal_attn=True,
             time_as_cond=True, n_cond_layers=0)
# One block: for tests that train.
TINY = dict(n_layer=1, n_head=2, n_emb=32, p_drop_emb=0.0, p_drop_attn=0.0,
            causal_attn=True, time_as_cond=True, n_cond_layers=0)


class ReferenceDPT(nn.Module):
    """The original architecture spec (DESIGN.md §3) on nn.TransformerEncoder/Decoder layers."""

    def __init__(self, input_dim, output_dim, horizon, n_obs_steps, cond_dim, n_layer, n_head,
                 n_emb, causal_attn, time_as_cond, n_cond_layers):
        super().__init__()
        obs_as_cond = cond_dim > 0
        T = horizon + (0 if time_as_cond else 1)
        T_cond = (1 if time_as_cond else 0) + (n_obs_steps if obs_as_cond else 0)
        self._dummy_variable = nn.Parameter()
        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, n_emb))
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if obs_as_cond else None
        self.n_emb = n_emb
        self.encoder_only = T_cond == 0

        def enc_layer():
            return nn.TransformerEncoderLayer(n_emb, n_head, 4 * n_emb, 0.0, "gelu",
                                              batch_first=True, norm_first=True)

        if not self.encoder_only:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, T_cond, n_emb))
            if n_cond_layers > 0:
                self.encoder = nn.TransformerEncoder(enc_layer(), n_cond_layers,
                                                     enable_nested_tensor=False)
            else:
                self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(),
                                             nn.Linear(4 * n_emb, n_emb))
            dec = nn.TransformerDecoderLayer(n_emb, n_head, 4 * n_emb, 0.0, "gelu",
                                             batch_first=True, norm_first=True)
            self.decoder = nn.TransformerDecoder(dec, n_layer)
        else:
            self.encoder = nn.TransformerEncoder(enc_layer(), n_layer, enable_nested_tensor=False)
        self.register_buffer("mask", None)
        self.register_buffer("memory_mask", None)
        if causal_attn:
            mask = (torch.triu(torch.ones(T, T)) == 1).transpose(0, 1)
            mask = mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0.0)
            self.register_buffer("mask", mask)
            if time_as_cond and obs_as_cond:
                t, s = torch.meshgrid(torch.arange(T), torch.arange(T_cond), indexing="ij")
                mm = t >= (s - 1)
                mm = mm.float().masked_fill(mm == 0, float("-inf")).masked_fill(mm == 1, 0.0)
                self.register_buffer("memory_mask", mm)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)

    def time_emb(self, t):
        half = self.n_emb // 2
        e = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        e = t[:, None] * e[None, :]
        return torch.cat((e.sin(), e.cos()), dim=-1)

    def forward(self, sample, timestep, cond=None):
        t = torch.full((sample.shape[0],), timestep, dtype=torch.long)
        time_emb = self.time_emb(t).unsqueeze(1)
        input_emb = self.input_emb(sample)
        if self.encoder_only:
            x = torch.cat([time_emb, input_emb], 1)
            x = x + self.pos_emb[:, : x.shape[1]]
            x = self.encoder(src=x, mask=self.mask)[:, 1:]
        else:
            c = time_emb
            if self.cond_obs_emb is not None:
                c = torch.cat([c, self.cond_obs_emb(cond)], 1)
            memory = self.encoder(c + self.cond_pos_emb[:, : c.shape[1]])
            x = input_emb + self.pos_emb[:, : input_emb.shape[1]]
            x = self.decoder(tgt=x, memory=memory, tgt_mask=self.mask,
                             memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))


def vla_with_backbone(factory: str, folder: Path, instruction: str = "") -> Path:
    """A tiny RDT VLA (camera 3x16x16 + 3 joints -> 3 actions, horizon 8, 4 actions per chunk)
    whose condition provider is ``factory`` ("module:Class", a TinyBackbone subclass), attached
    the way a robot attaches its VLM: the checkpoint names it (``backbone: {type: callable}``)."""
    norm = LinearNormalizer()
    norm.fit_image_range("image")
    norm.fit_limits("joints", torch.rand(64, 3) * 2 - 1)
    norm.fit_limits("action", torch.rand(64, 3) * 2 - 1)
    obs = {"image": {"shape": [3, 16, 16], "type": "rgb"},
           "joints": {"shape": [3], "type": "low_dim"}}
    vla = new_rdt_checkpoint(obs, 3, norm, dict(depth=2, hidden_size=32, num_heads=4),
                             horizon=8, n_action_steps=4, num_inference_steps=4,
                             instruction=instruction)
    kwargs = {k: v for k, v in vla.config["backbone"].items() if k != "type"}
    vla.config["backbone"] = {"type": "callable", "factory": factory, "kwargs": kwargs}
    vla.tensors = {k: v for k, v in vla.tensors.items() if not k.startswith("backbone.")}
    return save_native(vla, folder / "vla")
