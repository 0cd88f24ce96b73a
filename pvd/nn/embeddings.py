"""Timestep embeddings and the (time + condition) vector that drives adaptive GroupNorm."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvd.nn.condition import Condition


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in PVD / DDPM.

    t: (B,) float (float64 stays float64). Returns (B, dim): [sin(t f_i), cos(t f_i)] with f_i = 10000^(-i / (dim/2 - 1)),
    zero-padded when dim is odd.
    """
    half = dim // 2
    dtype = t.dtype if t.is_floating_point() else torch.float32
    # Frequencies in float64, then the working dtype, as the reference computes them.
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float64) * (-math.log(10000.0) / max(half - 1, 1)))
    args = t.to(dtype)[:, None] * freqs.to(dtype)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding -> Linear -> LeakyReLU(0.1) -> Linear (the reference's ``embedf``)."""

    def __init__(self, dim: int, out_dim: int | None = None):
        super().__init__()
        out_dim = out_dim or dim
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.LeakyReLU(0.1), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) -> (B, out_dim)."""
        return self.mlp(timestep_embedding(t, self.dim))


@dataclass
class ConditionConfig:
    """What a conditional denoiser accepts and how it injects it."""

    embed_dim: int = 256  # width E of the (time + condition) vector that drives adaptive GroupNorm
    image_dim: int = 0  # D of Condition.image (0: no image vector); the encoder's dim when it is set
    token_dim: int = 0  # D_tok of Condition.tokens (0: no tokens); needed by cross-attention
    num_categories: int = 0  # 0: no category label
    cascade: bool = False  # the model also sees Condition.coarse / coarse_level
    # Points S of Condition.shape, the image-derived shape estimate the model sees as extra input
    # points (0: none). Not with cascade: a stage sees one extra cloud.
    shape_points: int = 0
    cross_attention_levels: int = 0  # cross-attend to tokens at the bottleneck and this many - 1 up levels
    heads: int = 8  # cross-attention heads

    def __post_init__(self) -> None:
        if self.cross_attention_levels and not self.token_dim:
            raise ValueError("cross-attention needs image tokens: set token_dim (or an image encoder)")
        if min(self.embed_dim, self.image_dim, self.token_dim, self.num_categories, self.cross_attention_levels,
               self.shape_points) < 0:
            raise ValueError("condition sizes must be non-negative")
        if self.cascade and self.shape_points:
            raise ValueError("a cascade stage sees its coarse cloud; the shape estimate is for a single or first stage")


# Augmentation levels usually lie in [0, 1]; scaled like timesteps (0..T-1) they use the whole
# range of the sinusoidal frequencies.
LEVEL_SCALE = 1000.0


class ConditionEmbedding(nn.Module):
    """Turns (t, Condition) into the vector E for adaptive GroupNorm and the context tokens.

    emb = time(t) + image(image) + category(label) + level(coarse_level), where dropped samples
    (and a missing condition) use learned null embeddings for image, tokens and category.
    """

    def __init__(self, config: ConditionConfig, context_dim: int):
        super().__init__()
        self.config = config
        e = config.embed_dim
        self.time = TimeEmbedding(e)
        if config.image_dim:
            self.image = nn.Sequential(nn.Linear(config.image_dim, e), nn.SiLU(), nn.Linear(e, e))
            self.null_image = nn.Parameter(torch.zeros(e))
        if config.token_dim:
            self.tokens = nn.Sequential(nn.LayerNorm(config.token_dim), nn.Linear(config.token_dim, context_dim))
            self.null_token = nn.Parameter(torch.randn(1, context_dim) * 0.02)
        if config.num_categories:
            self.category = nn.Embedding(config.num_categories + 1, e)  # the last row is the null label
        if config.cascade:
            self.level = TimeEmbedding(e)

    def forward(self, t: Tensor, cond: Condition | None) -> tuple[Tensor, Tensor | None]:
        """t: (B,). Returns emb (B, E) and context tokens (B, T, context_dim) or None."""
        cfg = self.config
        b = t.shape[0]
        cond = cond if cond is not None else Condition(drop=torch.ones(b, dtype=torch.bool, device=t.device))
        drop = cond.dropped() if cond.batch_size else torch.ones(b, dtype=torch.bool, device=t.device)
        keep = ~drop
        # Every layer runs on every sample and the mask picks its output or the null: a layer that
        # a batch skips (all samples dropped) would leave DDP waiting for its gradients.
        emb = self.time(t)
        if cfg.image_dim:
            if cond.image is None:
                image = _all_dropped(self.null_image.expand(b, -1), "image", drop)
            else:
                image = torch.where(keep[:, None], self.image(cond.image), self.null_image)
            emb = emb + image
        if cfg.num_categories:
            null_label = torch.full((b,), cfg.num_categories, dtype=torch.long, device=t.device)
            if cond.category is None:
                label = _all_dropped(null_label, "category", drop)
            else:
                label = torch.where(keep, cond.category.long(), null_label)
            emb = emb + self.category(label)
        if cfg.cascade:
            level = _required(cond.coarse_level, "coarse_level")
            emb = emb + self.level(LEVEL_SCALE * level)
        context = None
        if cfg.token_dim:
            null = self.null_token.expand(b, 1, -1)
            if cond.tokens is None:
                context = _all_dropped(null, "tokens", drop)
            else:
                context = torch.where(keep[:, None, None], self.tokens(cond.tokens), null)
        return emb, context


def _all_dropped(null: Tensor, name: str, drop: Tensor) -> Tensor:
    """A missing field is allowed only when every sample is dropped (a host sync, but only on this
    path, which training never takes: it always passes the fields)."""
    if not bool(drop.all()):
        raise ValueError(f"this model needs Condition.{name} for the samples that are not dropped")
    return null


def _required(value: Tensor | None, name: str) -> Tensor:
    if value is None:
        raise ValueError(f"this model needs Condition.{name}")
    return value
