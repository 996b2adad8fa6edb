"""Per-field affine normaliser with the key layout of Chi et al.'s ``LinearNormalizer``.

Normalisation lives outside the networks (as in LeRobot): the policy normalises observations
before the model and unnormalises actions after it. State-dict keys:
``params_dict.<field>.{scale,offset}`` and ``params_dict.<field>.input_stats.{min,max,mean,std}``.
"""

from __future__ import annotations

import torch
from torch import nn

RANGE_EPS = 1e-4  # a dimension whose data vary less is a constant: centred, not scaled


def _field_params(scale: torch.Tensor, offset: torch.Tensor, stats: dict[str, torch.Tensor]):
    return nn.ParameterDict(
        {
            "scale": nn.Parameter(scale.float(), requires_grad=False),
            "offset": nn.Parameter(offset.float(), requires_grad=False),
            "input_stats": nn.ParameterDict(
                {k: nn.Parameter(v.float(), requires_grad=False) for k, v in stats.items()}
            ),
        }
    )


def _stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.reshape(-1, x.shape[-1]).float()
    return {"min": x.min(0).values, "max": x.max(0).values, "mean": x.mean(0), "std": x.std(0)}


class LinearNormalizer(nn.Module):
    """``normalize(x) = x * scale + offset`` per named field; ``unnormalize`` inverts it."""

    def __init__(self):
        super().__init__()
        self.params_dict = nn.ParameterDict()

    def fit_limits(
        self,
        field: str,
        data: torch.Tensor,
        output_min: float = -1.0,
        output_max: float = 1.0,
        range_eps: float = RANGE_EPS,
    ) -> None:
        """Map the data's per-dimension [min, max] to [output_min, output_max] ("limits" mode).

        Dimensions whose range is below ``range_eps`` are centred, not scaled (as the original).
        """
        stats = _stats(data)
        input_range = stats["max"] - stats["min"]
        ignore = input_range < range_eps
        input_range[ignore] = output_max - output_min
        scale = (output_max - output_min) / input_range
        offset = output_min - scale * stats["min"]
        offset[ignore] = (output_max + output_min) / 2 - stats["min"][ignore]
        self.params_dict[field] = _field_params(scale, offset, stats)

    def fit_image_range(self, field: str) -> None:
        """Images in [0, 1] -> [-1, 1] (Chi et al.'s ``get_image_range_normalizer``: one scalar)."""
        ones = torch.ones(1)
        stats = {"min": 0 * ones, "max": ones, "mean": 0.5 * ones, "std": ones / 12**0.5}
        self.params_dict[field] = _field_params(2 * ones, -ones, stats)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Create the fields named in the state dict, then load them (the module starts empty)."""
        fields: dict[str, dict] = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            if len(parts) < 3 or parts[0] != "params_dict":
                raise KeyError(
                    f"unexpected normalizer key {key!r}; expected params_dict.<field>..."
                )
            node = fields.setdefault(parts[1], {})
            for p in parts[2:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        for field, tree in fields.items():
            if "scale" not in tree or "offset" not in tree:
                raise KeyError(f"normalizer field {field!r} lacks scale/offset")
            self.params_dict[field] = _field_params(
                tree["scale"], tree["offset"], tree.get("input_stats", {})
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def fields(self) -> list[str]:
        return list(self.params_dict.keys())

    def _params(self, field: str) -> tuple[torch.Tensor, torch.Tensor]:
        if field not in self.params_dict:
            raise KeyError(f"normalizer has no field {field!r}; it has {self.fields}")
        p = self.params_dict[field]
        return p["scale"], p["offset"]

    def normalize(self, field: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(field)
        return (x.reshape(-1, scale.shape[0]) * scale + offset).reshape(x.shape)

    def unnormalize(self, field: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(field)
        return ((x.reshape(-1, scale.shape[0]) - offset) / scale).reshape(x.shape)
