"""Diffusion, independent of the network: schedules, the Gaussian process, samplers, cascades.

schedules.py  named float64 schedules and the resolution (log-SNR) shift
gaussian.py   GaussianDiffusion: q_sample, posterior, targets, training loss
samplers.py   ddpm, ddim, dpm++2m, heun: free functions over any model(x_t, t, cond)
cascade.py    stages of full diffusions (Ho et al. cascades): configs, conditioning augmentation, sampling
hierarchy.py  the hierarchy: a regressed coarse cloud refined by diffusion over t <= t_max
config.py     DiffusionConfig and build(config) -> stages
"""

from pvd.diffusion.cascade import CascadeConfig, Stage, StageConfig, augment, sample_stages, stage_batch, subsample
from pvd.diffusion.config import DiffusionConfig, build, make_diffusion, make_sampler
from pvd.diffusion.gaussian import GaussianDiffusion
from pvd.diffusion.hierarchy import HierarchyConfig
from pvd.diffusion.samplers import SAMPLERS, ddim_sample, ddpm_sample, dpm_solver_pp_sample, heun_sample
from pvd.diffusion.schedules import SCHEDULES, make_betas, resolution_shift

__all__ = [
    "CascadeConfig", "DiffusionConfig", "GaussianDiffusion", "HierarchyConfig", "SAMPLERS", "SCHEDULES", "Stage", "StageConfig",
    "augment", "build", "ddim_sample", "ddpm_sample", "dpm_solver_pp_sample", "heun_sample", "make_betas",
    "make_diffusion", "make_sampler", "resolution_shift", "sample_stages", "stage_batch", "subsample",
]
