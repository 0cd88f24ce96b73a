"""The hierarchy's refinement stage (pvd.diffusion.hierarchy) and the samplers' t_start.

A process run from t_start on is the process whose schedule stops at t_start: its betas are the
first t_start + 1, so the closed-form recursions of test_diffusion_samplers.py on BETAS[:t_start + 1]
are an independent reference for every sampler started there.
"""

import math

import pytest
import torch

from pvd.diffusion import DiffusionConfig, GaussianDiffusion, HierarchyConfig, build, sample_stages
from pvd.diffusion.hierarchy import start_cloud, upsample
from pvd.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample, dpm_solver_pp_sample, heun_sample
from pvd.errors import UserError

from condition_stub import Cond
from test_diffusion_samplers import BETAS, MU, S, GaussianDataModel, ref_ddim, ref_dpm_solver_2m, ref_heun

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

T_START = 399  # 400 steps: every step count below divides it, so both spacings round alike


@pytest.mark.parametrize("mean_type", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ddim-20", "dpm++2m-10", "heun-8"])
def test_samplers_started_at_t_start_are_the_truncated_process(sampler, mean_type):
    kind, steps = sampler.rsplit("-", 1)
    steps = int(steps)
    fn, ref = {"ddim": (ddim_sample, ref_ddim), "dpm++2m": (dpm_solver_pp_sample, ref_dpm_solver_2m),
               "heun": (heun_sample, ref_heun)}[kind]
    A, B, _ = ref(BETAS[: T_START + 1], steps)
    x_start = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = GaussianDataModel(BETAS, mean_type)
    out = fn(GaussianDiffusion(BETAS, mean_type), model, (2, 50, 3), Cond(drop=torch.zeros(2, dtype=torch.bool)),
             generator=torch.Generator().manual_seed(2), x_T=x_start, dtype=torch.float64, steps=steps,
             t_start=T_START)
    torch.testing.assert_close(out, A * x_start + B, rtol=1e-6, atol=1e-6)
    # ...and it is not the whole process fed x_start: that map differs by far more than the tolerance
    A_full, B_full, _ = ref(BETAS, steps)
    assert abs(A - A_full) > 0.05 or abs(B - B_full) > 0.05


@pytest.mark.parametrize("name", ["ddpm", "dpm++2m-10"])
def test_started_from_the_true_marginal_the_samples_follow_the_data(name):
    """x at t_start drawn from q(x_t) of N(MU, S^2) data: the partial process must return the data
    (deviation within 3%, mean within 0.02; 60,000 scalars, standard errors 0.3% and 0.0012)."""
    g = torch.Generator().manual_seed(0)
    ab = float(torch.tensor(BETAS[: T_START + 1]).neg().log1p().sum().exp())
    x0 = MU + S * torch.randn(20, 1000, 3, generator=g, dtype=torch.float64)
    x_start = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    fn, options = (ddpm_sample, {}) if name == "ddpm" else (dpm_solver_pp_sample, {"steps": 10})
    model = GaussianDataModel(BETAS)
    out = fn(GaussianDiffusion(BETAS), model, x0.shape, Cond(drop=torch.zeros(20, dtype=torch.bool)), generator=g,
             x_T=x_start, t_start=T_START, dtype=torch.float64, **options)
    assert abs(out.std().item() / S - 1) < 0.03
    assert abs(out.mean().item() - MU) < 0.02
    assert model.calls == (T_START + 1 if name == "ddpm" else 10)


def test_t_start_needs_the_cloud_it_starts_from_and_a_valid_step():
    d, model, cond = GaussianDiffusion(BETAS), GaussianDataModel(BETAS), Cond(drop=torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs x_T"):
        ddim_sample(d, model, (1, 4, 3), cond, generator=torch.Generator(), t_start=10)
    with pytest.raises(ValueError, match="t_start must lie"):
        ddim_sample(d, model, (1, 4, 3), cond, generator=torch.Generator(), x_T=torch.zeros(1, 4, 3), t_start=1000)
    assert ddim_timesteps(1000, 5, t_start=499) == [499, 399, 299, 199, 99]
    assert ddim_timesteps(1000, 10) == ddim_timesteps(1000, 10, t_start=999)


def test_sample_t_stays_below_t_max_and_covers_it():
    t = GaussianDiffusion(BETAS).sample_t(20000, torch.Generator().manual_seed(0), t_max=300)
    assert t.min() == 0 and t.max() == 300
    assert abs(t.double().mean().item() - 150) < 3  # uniform on 0..300: mean 150, s.e. 0.6


def test_upsample_repeats_every_coarse_point_evenly():
    coarse = torch.randn(2, 7, 3)
    up = upsample(coarse, 30)
    assert up.shape == (2, 30, 3)
    for b in range(2):
        counts = [(up[b] == p).all(dim=1).sum().item() for p in coarse[b]]
        assert sorted(counts) == [4] * 5 + [5] * 2  # 30 = 4 x 7 + 2


def test_start_cloud_is_the_upsampled_coarse_cloud_noised_to_t_start():
    d = GaussianDiffusion(BETAS)
    coarse = torch.randn(4, 64, 3, generator=torch.Generator().manual_seed(0))
    x = start_cloud(d, coarse, 2048, T_START, torch.Generator().manual_seed(1))
    ab = d.alphas_cumprod[T_START].item()
    residual = x - math.sqrt(ab) * upsample(coarse, 2048)
    assert abs(residual.std().item() / math.sqrt(1 - ab) - 1) < 0.02  # 24,576 scalars: s.e. 0.5%
    assert abs(residual.mean().item()) < 0.02


def test_build_and_sample_stages_refine_from_the_condition_shape():
    cfg = DiffusionConfig(sampler="ddim", sampling_steps=7, hierarchy=HierarchyConfig(t_max=0.5, t_start=0.3))
    (stage,) = build(cfg, num_points=96)
    assert (stage.t_max, stage.t_start) == (round(0.5 * 999), round(0.3 * 999))
    coarse = torch.randn(2, 24, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cond = Cond(drop=torch.zeros(2, dtype=torch.bool), shape=coarse)
    out = sample_stages([stage], [GaussianDataModel(BETAS)], cond, 2, generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)
    x_start = start_cloud(stage.diffusion, coarse, 96, stage.t_start, torch.Generator().manual_seed(4))
    A, B, _ = ref_ddim(BETAS[: stage.t_start + 1], 7)  # 301 = 7 x 43
    torch.testing.assert_close(out, A * x_start + B, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="cond.shape"):
        sample_stages([stage], [GaussianDataModel(BETAS)], Cond(drop=torch.zeros(2, dtype=torch.bool)), 2,
                      generator=torch.Generator())


@pytest.mark.parametrize("bad", [dict(t_max=0.0), dict(t_max=1.5), dict(t_max=0.4, t_start=0.5)])
def test_bad_hierarchy_configs_are_user_errors(bad):
    with pytest.raises(UserError):
        HierarchyConfig(**bad)


def test_fields_set_one_by_one_are_checked_when_built():
    cfg = DiffusionConfig(hierarchy=HierarchyConfig(t_max=0.4))
    cfg.hierarchy.t_start = 0.6  # as a key=value override sets it
    with pytest.raises(UserError, match="t_start"):
        build(cfg)
    with pytest.raises(UserError, match="choose one"):
        DiffusionConfig(cascade={}, hierarchy={})
