"""The condition a denoiser is called with: ``model(x_t, t, cond)``.

A :class:`Condition` carries tensors only; what they mean is the model's business (its
:class:`~pvd.nn.embeddings.ConditionEmbedding` turns them into the vector that drives adaptive
GroupNorm and the tokens for cross-attention). ``drop`` marks samples whose image and category
are replaced by learned null embeddings: classifier-free guidance trains with a random drop
mask and samples with ``cond.null()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Condition:
    """Per-sample conditioning; every field is optional and batch-first.

    image: (B, D) global image vector (encoder output or a precomputed embedding).
    tokens: (B, T, D_tok) image tokens for cross-attention.
    category: (B,) int64 category label.
    coarse: (B, M, 3) the previous cascade stage's (augmented) cloud.
    coarse_level: (B,) float, its augmentation level (any float; embedded sinusoidally).
    shape: (B, S, 3) a coarse estimate of the shape derived from the image (the encoder's shape
        head); it comes from the image, so it is dropped with it.
    drop: (B,) bool, True where image, tokens, category and shape give way to the learned nulls.
    """

    image: Tensor | None = None
    tokens: Tensor | None = None
    category: Tensor | None = None
    coarse: Tensor | None = None
    coarse_level: Tensor | None = None
    shape: Tensor | None = None
    drop: Tensor | None = None

    def __post_init__(self) -> None:
        sizes = {f.name: getattr(self, f.name).shape[0] for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"condition fields disagree on the batch size: {sizes}")

    @property
    def batch_size(self) -> int:
        """B (0 for an empty condition)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return value.shape[0]
        return 0

    def null(self) -> Condition:
        """The guidance-null version: every sample dropped. Coarse cloud and level are kept
        (a cascade stage is always conditioned on its input)."""
        drop = torch.ones(self.batch_size, dtype=torch.bool, device=self._device())
        return dataclasses.replace(self, drop=drop)

    def dropped(self) -> Tensor:
        """The drop mask as a (B,) bool tensor (all False when ``drop`` is None)."""
        if self.drop is not None:
            return self.drop.bool()
        return torch.zeros(self.batch_size, dtype=torch.bool, device=self._device())

    def to(self, device: torch.device | str) -> Condition:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if getattr(self, f.name) is not None})

    def _device(self) -> torch.device:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return value.device
        return torch.device("cpu")

    @staticmethod
    def cat(conditions: list[Condition] | tuple[Condition, ...]) -> Condition:
        """Concatenate along the batch, e.g. ``Condition.cat([cond, cond.null()])`` for one
        batched guided call. A field must be set in all conditions or in none (``drop`` may
        be missing in some: it counts as all False)."""
        values = {}
        for f in dataclasses.fields(Condition):
            parts = [getattr(c, f.name) for c in conditions]
            if f.name == "drop" and any(p is not None for p in parts):
                parts = [c.dropped() for c in conditions]
            if all(p is None for p in parts):
                continue
            if any(p is None for p in parts):
                raise ValueError(f"cannot concatenate conditions where only some have {f.name!r}")
            values[f.name] = torch.cat(parts, dim=0)
        return Condition(**values)
