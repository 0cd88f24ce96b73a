"""The coarse-to-fine hierarchy: a cascade of point-cloud diffusion stages.

Stage 0 generates a coarse cloud (e.g. 512 points) from the condition; every later stage
generates its own, denser cloud (the last one at full resolution) conditioned on the image and
on the previous stage's cloud (Ho et al. 2021, "Cascaded diffusion models"; Point-E's
upsampler). Each stage has its own schedule, the base schedule shifted in log-SNR by
log(ref_points / num_points) (see ``pvd.diffusion.schedules``), and its own model.

Conditioning augmentation (Ho et al. 2021, Sec. 4.1): the coarse cloud handed to a stage is
noised, in training at a level drawn per sample and at sampling at one fixed level, so that a
stage learns to tolerate the previous stage's errors instead of trusting a perfect input. The
level ``a`` in [0, 1] is the standard deviation of a variance-preserving mix,

    coarse_aug = sqrt(1 - a^2) coarse + a eps,

independent of any stage's schedule (a = 0: clean, a = 1: pure noise). The model receives it
as ``cond.coarse`` (B, M, 3) and ``cond.coarse_level`` (B,) on that 0..1 scale, set with
``dataclasses.replace``; ``cond`` is any dataclass with those two fields.

Training data for stage k: a random subset of ``num_points[k]`` of the data cloud, and as its
coarse input a random subset of ``num_points[k-1]`` of that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pvd.diffusion.gaussian import GaussianDiffusion, Model
from pvd.diffusion.hierarchy import start_cloud
from pvd.diffusion.schedules import REF_POINTS, resolution_shift
from pvd.errors import UserError


@dataclass
class StageConfig:
    """One stage of a cascade."""

    num_points: int  # points this stage generates
    logsnr_shift: float | None = None  # added to the base log-SNR; None: log(ref_points / num_points)
    aug_level_train: tuple[float, float] = (0.0, 0.5)  # coarse-input noise level, uniform in this range (stages > 0)
    aug_level_sample: float = 0.1  # the fixed coarse-input noise level when sampling (stages > 0)


def _default_stages() -> tuple[StageConfig, ...]:
    return (StageConfig(512), StageConfig(2048))  # 4x upsampling, as Point-E's 1024 -> 4096


@dataclass
class CascadeConfig:
    """A coarse-to-fine cascade; ``__post_init__`` writes each stage's resolved shift into it."""

    stages: tuple[StageConfig, ...] = field(default_factory=_default_stages)  # coarse to fine
    ref_points: int = REF_POINTS  # the point count the base schedule is tuned for (shift 0)

    def __post_init__(self):
        stages = tuple(StageConfig(**s) if isinstance(s, dict) else s for s in self.stages)  # dicts: from JSON
        stages = tuple(dataclasses.replace(s, aug_level_train=tuple(s.aug_level_train)) for s in stages)
        if len(stages) < 2:
            raise UserError("a cascade needs at least two stages")
        counts = [s.num_points for s in stages]
        if any(n < 1 for n in counts) or counts != sorted(set(counts)):
            raise UserError(f"stage point counts must increase strictly, got {counts}")
        for s in stages:
            lo, hi = s.aug_level_train
            if not (0 <= lo <= hi <= 1 and 0 <= s.aug_level_sample <= 1):
                raise UserError(f"augmentation levels must lie in [0, 1], got {s.aug_level_train} and {s.aug_level_sample}")
        # Resolve the default shift here so that the config written to a run holds the numbers.
        self.stages = tuple(
            s if s.logsnr_shift is not None else dataclasses.replace(s, logsnr_shift=resolution_shift(s.num_points, self.ref_points))
            for s in stages
        )


@dataclass(frozen=True)
class Stage:
    """A built stage: what training and sampling need. A single-stage process has one, with config None."""

    num_points: int
    diffusion: GaussianDiffusion
    sampler: Callable[..., torch.Tensor]  # sampler(model, shape, cond, *, generator, ...) with the config's options bound
    config: StageConfig | None = None
    # The hierarchy's refinement stage (pvd.diffusion.hierarchy): trained on t <= t_max, sampled from
    # the condition's coarse cloud (cond.shape) noised to t_start. None: the whole process.
    t_max: int | None = None
    t_start: int | None = None


def subsample(points: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random subset of ``num`` of each cloud's points, without replacement: (B, N, 3) -> (B, num, 3)."""
    b, n, _ = points.shape
    if num > n:
        raise ValueError(f"cannot take {num} of {n} points")
    if num == n:
        return points
    keys = torch.rand((b, n), generator=generator, device=generator.device if generator is not None else points.device)
    return take(points, keys.argsort(dim=1)[:, :num].to(points.device))


def take(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Each cloud's points at its indices: (B, N, 3), (B, M) int64 -> (B, M, 3)."""
    return points.gather(1, index.unsqueeze(-1).expand(-1, -1, points.shape[2]))


def augment(coarse: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None,
            noise: torch.Tensor | None = None) -> torch.Tensor:
    """Conditioning augmentation: sqrt(1 - a^2) coarse + a eps, with a = level (B,) in [0, 1]. coarse: (B, M, 3);
    eps is ``noise`` (B, M, 3) when given, else drawn with ``generator``."""
    a = level.to(coarse.dtype).view(-1, 1, 1)
    if noise is None:
        noise = torch.randn(coarse.shape, generator=generator, dtype=coarse.dtype,
                            device=generator.device if generator is not None else coarse.device).to(coarse.device)
    return (1 - a.square()).sqrt() * coarse + a * noise


def with_coarse(cond: Any, coarse: torch.Tensor, level: torch.Tensor) -> Any:
    """``cond`` with the (augmented) coarse cloud (B, M, 3) and its level (B,) attached."""
    if cond is None:
        raise ValueError("a cascade stage after the first needs a dataclass condition with coarse and coarse_level fields")
    return dataclasses.replace(cond, coarse=coarse, coarse_level=level)


def stage_batch(stages: Sequence[Stage], k: int, x0: torch.Tensor, cond: Any = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, Any]:
    """Stage k's training input from a batch of data clouds x0 (B, N, 3): (points (B, N_k, 3), cond).

    For k > 0, cond gains the coarse cloud (a subset of the stage's points, noised at a level
    drawn uniformly from the stage's ``aug_level_train``) and that level (B,).
    """
    points = subsample(x0, stages[k].num_points, generator)
    if k == 0:
        return points, cond
    lo, hi = stages[k].config.aug_level_train
    gen_device = generator.device if generator is not None else x0.device
    level = (lo + (hi - lo) * torch.rand(len(x0), generator=generator, dtype=torch.float64, device=gen_device)).to(x0.device)
    coarse = augment(subsample(points, stages[k - 1].num_points, generator), level, generator)
    return points, with_coarse(cond, coarse, level.to(x0.dtype))


def sample_stages(stages: Sequence[Stage], models: Sequence[Model], cond: Any | Sequence[Any], batch_size: int, *,
                  generator: torch.Generator, progress: Callable[[int, int, int], None] | None = None,
                  dtype: torch.dtype = torch.float32, device=None, return_all: bool = False,
                  **sampler_options) -> torch.Tensor | list[torch.Tensor]:
    """Samples (batch_size, N_last, 3), stage by stage; one stage is plain single-stage sampling.

    models: one per stage. cond: one condition for every stage, or a list with one per stage
    (e.g. each stage's own image encoding). Stage k > 0 sees the previous stage's cloud augmented at its
    ``aug_level_sample``. progress(stage, i, n) after step i of n of each stage. return_all:
    return every stage's cloud, coarse to fine. Other options (guidance_scale, fixed, ...) go
    to every stage's sampler; ``fixed`` (completion) is only allowed for a single stage. A stage
    with ``t_start`` (the hierarchy's refiner) starts from ``cond.shape``, the regressed coarse
    cloud, upsampled and noised to t_start.
    """
    if len(models) != len(stages):
        raise ValueError(f"{len(stages)} stages need {len(stages)} models, got {len(models)}")
    if len(stages) > 1 and sampler_options.get("fixed") is not None:
        raise ValueError("shape completion (fixed points) is supported by single-stage sampling only")
    conds = list(cond) if isinstance(cond, (list, tuple)) else [cond] * len(stages)
    if len(conds) != len(stages):
        raise ValueError(f"{len(stages)} stages need one condition or {len(stages)}, got {len(conds)}")
    x, clouds = None, []
    for k, (stage, model, stage_cond) in enumerate(zip(stages, models, conds)):
        if k > 0:
            level = torch.full((batch_size,), stage.config.aug_level_sample, dtype=dtype, device=x.device)
            stage_cond = with_coarse(stage_cond, augment(x, level, generator), level)
        report = None if progress is None else (lambda i, n, k=k: progress(k, i, n))
        if stage.t_start is not None:
            if sampler_options.get("fixed") is not None:
                raise ValueError("shape completion (fixed points) is not supported by the hierarchy's refinement stage")
            if getattr(stage_cond, "shape", None) is None:
                raise ValueError("the hierarchy's refinement stage needs cond.shape, the regressed coarse cloud")
            sampler_options = dict(sampler_options, t_start=stage.t_start,
                                   x_T=start_cloud(stage.diffusion, stage_cond.shape.to(dtype), stage.num_points,
                                                   stage.t_start, generator))
        x = stage.sampler(model, (batch_size, stage.num_points, 3), stage_cond, generator=generator, progress=report,
                          dtype=dtype, device=device, **sampler_options)
        clouds.append(x)
    return clouds if return_all else x
