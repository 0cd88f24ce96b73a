"""A small residual CNN image encoder, trained from scratch with the denoiser."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EncoderConfig:
    """Stages of residual blocks; each stage after the first halves the resolution."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: int = 2  # residual blocks per stage
    dim: int = 256  # width of the global vector and of each token
    # Points of an auxiliary head that regresses a coarse cloud of the shape from the global
    # vector (0: none). Trained with a Chamfer loss (TrainConfig.shape_loss), it hands the
    # encoder a direct 3D signal instead of only the denoiser's gradient through the condition.
    shape_points: int = 0
    # The global vector reads the feature grid average-pooled to pool_grid x pool_grid cells,
    # flattened (1: global mean pooling). Mean pooling keeps what is in the image but not where:
    # a regressor from it returns about the category's mean shape (the measurement log).
    pool_grid: int = 1


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class ImageEncoder(nn.Module):
    """RGBA image -> (global vector, grid of tokens).

    64x64 inputs with the default four stages give 8x8 = 64 tokens.
    """

    def __init__(self, config: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Conv2d(4, w[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, width in enumerate(w):
            if i > 0:
                layers.append(nn.Conv2d(w[i - 1], width, 3, stride=2, padding=1))
            layers.extend(_ResBlock(width) for _ in range(config.blocks))
        self.stages = nn.Sequential(*layers)
        self.norm = nn.GroupNorm(min(8, w[-1]), w[-1])
        self.tokens = nn.Linear(w[-1], config.dim)
        if config.pool_grid < 1:
            raise ValueError(f"pool_grid must be at least 1, got {config.pool_grid}")
        self.vector = nn.Sequential(nn.Linear(w[-1] * config.pool_grid ** 2, config.dim), nn.SiLU(),
                                    nn.Linear(config.dim, config.dim))
        self.shape_head = None
        if config.shape_points:
            self.shape_head = nn.Sequential(nn.Linear(config.dim, config.dim), nn.SiLU(),
                                            nn.Linear(config.dim, 3 * config.shape_points))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images: (B, 4, H, W) uint8 RGBA (or float in [0, 1]). Returns the vector (B, dim) and
        tokens (B, H' * W', dim)."""
        dtype = self.stem.weight.dtype
        x = images.to(dtype) / 255.0 if not images.is_floating_point() else images.to(dtype)
        h = F.silu(self.norm(self.stages(self.stem(x * 2 - 1))))
        grid = h.flatten(2).transpose(1, 2)  # (B, T, C)
        pooled = F.adaptive_avg_pool2d(h, self.config.pool_grid).flatten(1)  # (B, C g^2); g = 1: the mean
        return self.vector(pooled), self.tokens(grid)

    def predict_shape(self, vector: Tensor) -> Tensor:
        """The auxiliary head: global vector (B, dim) -> coarse cloud (B, shape_points, 3)."""
        if self.shape_head is None:
            raise ValueError("this encoder has no shape head (EncoderConfig.shape_points is 0)")
        return self.shape_head(vector).unflatten(-1, (self.config.shape_points, 3))
