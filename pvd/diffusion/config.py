"""The diffusion process settings as one typed config, and ``build``: config -> stages.

``build`` is the one place that turns names into objects: the schedule name into betas, the
sampler name into a function with its options bound. Training and sampling scripts use the
returned stages without branching: a single-stage process is a list of one ``Stage``.

    stages = build(DiffusionConfig(), num_points=2048)
    diffusion, sample = stages[0].diffusion, stages[0].sampler
    loss = diffusion.loss(model, x0, diffusion.sample_t(len(x0)), cond).mean()
    points = sample(model, (4, 2048, 3), cond, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from pvd.diffusion.cascade import CascadeConfig, Stage
from pvd.diffusion.gaussian import MEAN_TYPES, VAR_TYPES, GaussianDiffusion
from pvd.diffusion.hierarchy import HierarchyConfig
from pvd.diffusion.samplers import SAMPLERS, ddim_sample, ddim_timesteps, dpm_solver_pp_sample, heun_sample
from pvd.diffusion.schedules import SCHEDULES, make_betas
from pvd.errors import UserError


@dataclass
class DiffusionConfig:
    """Process, loss and sampler settings. The defaults are PVD's (Zhou et al. 2021)."""

    schedule: str = "linear"  # linear | warm0.1 | cosine (a key of schedules.SCHEDULES other than 'shifted')
    num_steps: int = 1000  # T, training timesteps
    beta_start: float | None = None  # None: the schedule's default (linear 1e-4, warm0.1 1e-5)
    beta_end: float | None = None  # None: the schedule's default (linear 0.02, warm0.1 0.008)
    logsnr_shift: float = 0.0  # single stage: added to the schedule's log-SNR (cascade stages carry their own)
    mean_type: str = "eps"  # the model's target: eps | v | x0
    var_type: str = "fixedsmall"  # reverse-step variance: fixedsmall (beta-tilde) | fixedlarge (beta)
    min_snr_gamma: float | None = None  # None: plain MSE; 5.0: Min-SNR-5 loss weighting
    sampler: str = "ddpm"  # ddpm | ddim | dpm++2m | heun
    sampling_steps: int | None = None  # None: all T for ddpm (which allows only that), 50 ddim, 25 dpm++2m / heun
    eta: float = 0.0  # ddim: 0 deterministic, 1 ancestral
    guidance_scale: float = 1.0  # classifier-free guidance; 1: plain conditional sampling
    cascade: CascadeConfig | None = None  # None: one stage at the data's point count
    # The hierarchy (pvd.diffusion.hierarchy): the image regressor's coarse cloud, refined over t <= t_max.
    hierarchy: HierarchyConfig | None = None

    def __post_init__(self):
        if isinstance(self.cascade, dict):  # as read back from a run's JSON config
            self.cascade = CascadeConfig(**self.cascade)
        if isinstance(self.hierarchy, dict):
            self.hierarchy = HierarchyConfig(**self.hierarchy)
        if self.cascade is not None and self.hierarchy is not None:
            raise UserError("choose one of diffusion.cascade and diffusion.hierarchy")


_DEFAULT_STEPS = {ddim_sample: 50, dpm_solver_pp_sample: 25, heun_sample: 25}


def _check(cfg: DiffusionConfig) -> None:
    names = [n for n in SCHEDULES if n != "shifted"]
    if cfg.schedule not in names:
        raise UserError(f"schedule must be one of {names}, got {cfg.schedule!r}")
    if cfg.num_steps < 2:
        raise UserError(f"num_steps must be at least 2, got {cfg.num_steps}")
    if cfg.mean_type not in MEAN_TYPES:
        raise UserError(f"mean_type must be one of {MEAN_TYPES}, got {cfg.mean_type!r}")
    if cfg.var_type not in VAR_TYPES:
        raise UserError(f"var_type must be one of {VAR_TYPES}, got {cfg.var_type!r}")
    if cfg.sampler not in SAMPLERS:
        raise UserError(f"sampler must be one of {list(SAMPLERS)}, got {cfg.sampler!r}")
    if cfg.sampler == "ddpm" and cfg.sampling_steps not in (None, cfg.num_steps):
        raise UserError(f"the ddpm sampler runs all {cfg.num_steps} steps; use ddim for sampling_steps={cfg.sampling_steps}")
    if cfg.sampling_steps is not None and not 1 <= cfg.sampling_steps <= cfg.num_steps:
        raise UserError(f"sampling_steps must lie in 1..{cfg.num_steps}, got {cfg.sampling_steps}")
    if not 0 <= cfg.eta <= 1:
        raise UserError(f"eta must lie in [0, 1], got {cfg.eta}")
    if cfg.min_snr_gamma is not None and cfg.min_snr_gamma <= 0:
        raise UserError(f"min_snr_gamma must be positive, got {cfg.min_snr_gamma}")
    if cfg.hierarchy is not None:
        HierarchyConfig(**dataclasses.asdict(cfg.hierarchy))  # its own checks again: overrides set fields one by one
        if cfg.sampler == "ddim":  # DDIM steps on integer timesteps: from t_start only t_start + 1 of them
            _, t_start = cfg.hierarchy.steps(cfg.num_steps)
            steps = cfg.sampling_steps or _DEFAULT_STEPS[ddim_sample]
            try:
                ddim_timesteps(cfg.num_steps, steps, t_start)
            except ValueError:
                raise UserError(f"ddim from hierarchy.t_start={cfg.hierarchy.t_start or cfg.hierarchy.t_max} (timestep "
                                f"{t_start}) has {t_start + 1} timesteps to visit; {steps} sampling steps are more") from None


def make_diffusion(cfg: DiffusionConfig, logsnr_shift: float | None = None) -> GaussianDiffusion:
    """The process of ``cfg``, its schedule shifted by ``logsnr_shift`` (default ``cfg.logsnr_shift``)."""
    _check(cfg)
    shift = cfg.logsnr_shift if logsnr_shift is None else logsnr_shift
    options = {k: v for k, v in (("beta_start", cfg.beta_start), ("beta_end", cfg.beta_end)) if v is not None}
    try:
        if shift == 0:
            betas = make_betas(cfg.schedule, cfg.num_steps, **options)
        else:
            betas = make_betas("shifted", cfg.num_steps, base=cfg.schedule, shift=shift, **options)
    except (TypeError, ValueError) as e:  # e.g. beta_start given to the cosine schedule
        raise UserError(f"schedule {cfg.schedule!r}: {e}") from None
    return GaussianDiffusion(betas, cfg.mean_type, cfg.var_type, cfg.min_snr_gamma)


def make_sampler(cfg: DiffusionConfig, diffusion: GaussianDiffusion):
    """``sample(model, shape, cond, *, generator, ...) -> (B, N, 3)`` with the config's options bound (overridable)."""
    _check(cfg)
    fn = SAMPLERS[cfg.sampler]
    options = {"guidance_scale": cfg.guidance_scale}
    if fn in _DEFAULT_STEPS:
        options["steps"] = cfg.sampling_steps or _DEFAULT_STEPS[fn]
    if fn is ddim_sample:
        options["eta"] = cfg.eta
    return functools.partial(fn, diffusion, **options)


def build(cfg: DiffusionConfig, num_points: int = 2048) -> list[Stage]:
    """The stages of ``cfg``: one for a single-stage process, else one per cascade stage.

    num_points: the data's (and the generated clouds') point count; a cascade's last stage
    must generate exactly that many.
    """
    if cfg.cascade is None:
        diffusion = make_diffusion(cfg)
        t_max, t_start = cfg.hierarchy.steps(cfg.num_steps) if cfg.hierarchy is not None else (None, None)
        return [Stage(num_points, diffusion, make_sampler(cfg, diffusion), t_max=t_max, t_start=t_start)]
    if cfg.cascade.stages[-1].num_points != num_points:
        raise UserError(f"the cascade's last stage has {cfg.cascade.stages[-1].num_points} points, the data {num_points}")
    stages = []
    for stage_cfg in cfg.cascade.stages:
        diffusion = make_diffusion(cfg, stage_cfg.logsnr_shift)
        stages.append(Stage(stage_cfg.num_points, diffusion, make_sampler(cfg, diffusion), stage_cfg))
    return stages
