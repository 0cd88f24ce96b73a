"""A minimal stand-in for ``pvd.nn.condition.Condition`` (the contract's fields and ``null()``),
so the diffusion tests exercise the samplers without any network code."""

import dataclasses

import torch


@dataclasses.dataclass
class Cond:
    image: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    category: torch.Tensor | None = None
    coarse: torch.Tensor | None = None
    coarse_level: torch.Tensor | None = None
    shape: torch.Tensor | None = None
    drop: torch.Tensor | None = None

    def null(self):
        return dataclasses.replace(self, drop=torch.ones_like(self.drop))
