"""VLA policies: a backbone turns camera images and an instruction into tokens, an RDT-style
DiT head denoises the action chunk under them (checkpoint ``policy.kind: rdt``).

Everything else is :class:`Policy`'s: normaliser, sampler (DPM-Solver few steps or flow-matching
Euler), cache schedules, profiling, ``predict``. The condition (backbone tokens, state and
control frequency packed by the head) is computed once per observation; only the head runs per
denoising step, under the block plan.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from bac_ros.models.backbone import Backbone, build_backbone
from bac_ros.models.rdt import RDTHead
from bac_ros.policy.checkpoint import Checkpoint, CheckpointError
from bac_ros.policy.factory import register_policy
from bac_ros.policy.loading import load_weights
from bac_ros.policy.policy import ObservationError, Policy


@register_policy("rdt")
class VLAPolicy(Policy):
    """Observations ``{camera keys: images, state_key: (To, Ds)}`` plus an instruction (the
    observation's ``"instruction"`` entry, else the one set with :meth:`set_instruction`)."""

    accepts_instruction = True

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", dtype: str = "float32"):
        super().__init__(checkpoint, device=device, dtype=dtype)
        pol = self.config["policy"]
        self.state_key = pol.get("state_key", "joints")
        if self.obs_spec.get(self.state_key, (None, "rgb"))[1] != "low_dim":
            raise CheckpointError(f"policy.state_key {self.state_key!r} is not a low-dim "
                                  f"observation; observations are {list(self.obs_spec)}")
        state_dim = self.model.config["state_dim"]
        for what, dim in (("action_dim", self.action_dim),
                          ("state", int(np.prod(self.obs_spec[self.state_key][0])))):
            if dim > state_dim:
                raise CheckpointError(f"{what} {dim} exceeds the head's state_dim {state_dim}")
        self.ctrl_freq = float(pol.get("ctrl_freq", 1.0 / self.dt))
        self.instruction = str(pol.get("instruction", ""))
        if "backbone" not in self.config:
            raise CheckpointError("rdt checkpoint config lacks 'backbone'")
        backbone = build_backbone(self.config["backbone"])
        if self.config["backbone"].get("type") == "tiny":
            load_weights(backbone, checkpoint.section("backbone"), "backbone")
        self.set_backbone(backbone)

    @staticmethod
    def build_model(config: dict) -> RDTHead:
        return RDTHead(**config)

    def set_backbone(self, backbone: Backbone) -> None:
        """Attach the condition provider (a real VLM on a robot); see ``models/backbone.py``."""
        if isinstance(backbone, torch.nn.Module):
            backbone = backbone.to(self.device, self.dtype).eval()
        self.backbone = backbone

    def set_instruction(self, text: str) -> None:
        self.instruction = str(text)

    def _instructions(self, given, batch: int, batched: bool) -> list[str]:
        if given is None:
            return [self.instruction] * batch
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, (list, tuple, np.ndarray)) or len(texts) != batch or \
                not all(isinstance(t, str) for t in texts):
            raise ObservationError(f"observation 'instruction' must be {batch} string(s)"
                                   f"{' (one per batch entry)' if batched else ''}")
        return [str(t) for t in texts]

    def conditions(self, obs: Mapping[str, np.ndarray], batched: bool = False) -> torch.Tensor:
        """Backbone tokens (and their masks) + newest state + control frequency -> the head's
        packed condition."""
        nobs = self.normalized(obs, batched)
        state = nobs[self.state_key][:, -1].flatten(1)
        B = state.shape[0]
        texts = self._instructions(obs.get("instruction"), B, batched)
        full = torch.zeros(B, self.model.config["state_dim"], device=self.device)
        full[:, : state.shape[1]] = state
        freq = torch.full((B,), self.ctrl_freq, device=self.device)
        with torch.inference_mode():
            out = self.backbone({k: nobs[k].to(self.dtype) for k in self.cameras}, texts)
            if not isinstance(out, (tuple, list)) or not 2 <= len(out) <= 4:
                got = (f"{len(out)} values" if isinstance(out, (tuple, list))
                       else type(out).__name__)
                raise ValueError(f"backbone returned {got}; expected (lang, img[, lang_mask"
                                 "[, img_mask]])")
            lang, img, lang_mask, img_mask = (*out, None, None)[:4]
            dims = (self.model.config["lang_token_dim"], self.model.config["img_token_dim"])
            if lang.ndim != 3 or img.ndim != 3 or (lang.shape[-1], img.shape[-1]) != dims:
                raise ValueError(f"backbone returned tokens {tuple(lang.shape)} and "
                                 f"{tuple(img.shape)}; the head expects (B, L, {dims[0]}) and "
                                 f"(B, {self.model.config['img_cond_len']}, {dims[1]})")
            return self.model.condition(lang.to(self.dtype), img.to(self.dtype),
                                        full.to(self.dtype), freq, lang_mask, img_mask)

    def _sample(self, cond: torch.Tensor, generator, plan, recorder=None,
                continuation=None) -> torch.Tensor:
        shape = (cond.shape[0], self.horizon, self.model.config["state_dim"])
        return self.engine.sample(cond, shape, generator, plan, recorder,
                                  **self._seam_inputs(shape, continuation))

    def flop_probe(self) -> tuple[torch.Tensor, tuple[int, ...]]:
        obs = {k: np.zeros((self.n_obs_steps, *shape), np.float32)
               for k, (shape, _) in self.obs_spec.items()}
        return self.conditions(obs), (1, self.horizon, self.model.config["state_dim"])

