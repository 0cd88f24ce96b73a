"""The coarse-to-fine hierarchy: a regressed coarse cloud, refined by diffusion over the low-noise range.

Stage 0 is the image encoder's shape head: a deterministic regressor from the image's global
vector to a coarse cloud of M points (a few hundred), trained with a Chamfer loss
(``TrainConfig.shape_loss``), first alone (``encoder_pretrain``: its own steps, counted in the
model's training time) and then beside the denoiser. Stage 1 is the denoiser at the full N
points, and it covers only t <= t_max of the process:

- training draws t uniformly from 0..t_max (``GaussianDiffusion.sample_t(t_max=)``); the coarse
  cloud also enters the denoiser as extra input points (``TrainConfig.shape_input``), and it is
  the regressor's own output on the training image, so the refiner learns from the errors stage
  0 really makes (the live output of the jointly trained head: a cache that is never stale, at
  no extra cost, since the head runs for its loss anyway);
- sampling upsamples the coarse cloud to N points (each point repeated N/M times), noises it to
  t_start <= t_max with q(x_t | x_0), and runs the sampler from there to 0.

Why this split, not a cascade of two full diffusions (``pvd.diffusion.cascade``): the high-noise
part of the process decides the instance (which chair, where its legs go), and that is what the
image determines almost completely; a regressor carries it from the image in one forward pass
and its errors are smooth. The low-noise part decides the surface detail that a regressor
blurs; there the denoiser is good, and with every step inside 0..t_max it gets all its training
and all its sampling calls in the range it is used in. Noising the coarse cloud to t_start
makes its errors invisible below the noise level, which is what lets the refiner treat it as an
ordinary x_t (SDEdit, Meng et al. 2022); t_start trades how much of the regressor's layout is
kept against how much error the refiner can repair, and is chosen on the val split.
Point-E's upsampler (keep the coarse points, generate the rest) is the other known pattern;
here the coarse points move too, because the regressor's points are not on the surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pvd.diffusion.gaussian import GaussianDiffusion
from pvd.errors import UserError


@dataclass
class HierarchyConfig:
    """Where the refinement stage sits in the process, as fractions of T - 1."""

    t_max: float = 0.5  # training draws t from 0..t_max
    t_start: float | None = None  # sampling starts here (<= t_max; None: t_max), chosen on val

    def __post_init__(self):
        if not 0 < self.t_max <= 1:
            raise UserError(f"hierarchy.t_max must lie in (0, 1], got {self.t_max}")
        if self.t_start is not None and not 0 < self.t_start <= self.t_max:
            raise UserError(f"hierarchy.t_start must lie in (0, t_max={self.t_max}], got {self.t_start}")

    def steps(self, num_steps: int) -> tuple[int, int]:
        """(t_max, t_start) as timesteps of a T = num_steps process."""
        start = self.t_max if self.t_start is None else self.t_start
        return round(self.t_max * (num_steps - 1)), round(start * (num_steps - 1))


def with_t_start(hierarchy: HierarchyConfig | None, t_start: float | None) -> HierarchyConfig | None:
    """A run's hierarchy with its sampling start moved to ``t_start`` (None: unchanged)."""
    if t_start is None:
        return hierarchy
    if hierarchy is None:
        raise UserError("a refinement start (t_start) applies to hierarchy runs only (diffusion.hierarchy)")
    return HierarchyConfig(hierarchy.t_max, t_start)


def upsample(coarse: torch.Tensor, num_points: int) -> torch.Tensor:
    """Each of the M coarse points repeated N/M times (floor or ceil when M does not divide N):
    (B, M, 3) -> (B, num_points, 3)."""
    m = coarse.shape[1]
    index = torch.arange(num_points, device=coarse.device) * m // num_points
    return coarse[:, index]


def start_cloud(diffusion: GaussianDiffusion, coarse: torch.Tensor, num_points: int, t_start: int,
                generator: torch.Generator) -> torch.Tensor:
    """The refinement's x at t_start: the upsampled coarse cloud noised by q(x_t | x_0).
    coarse: (B, M, 3) -> (B, num_points, 3)."""
    x0 = upsample(coarse, num_points)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
    t = torch.full((len(x0),), t_start, dtype=torch.long, device=x0.device)
    return diffusion.q_sample(x0, t, noise)
