"""Configs, build(), and the coarse-to-fine cascade: unit checks and a toy end-to-end run."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pvd.diffusion import (
    CascadeConfig,
    DiffusionConfig,
    StageConfig,
    augment,
    build,
    make_betas,
    sample_stages,
    stage_batch,
    subsample,
)
from pvd.diffusion.samplers import ddim_sample, ddpm_sample
from pvd.errors import UserError

from condition_stub import Cond  # tests/condition_stub.py: the condition contract, minimal


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ------------------------------------------------------------------------------------------
# Configs and build


def test_default_config_is_pvd():
    (stage,) = build(DiffusionConfig(), num_points=2048)
    d = stage.diffusion
    np.testing.assert_array_equal(d.betas.numpy(), np.linspace(1e-4, 0.02, 1000))
    assert (d.mean_type, d.var_type, d.min_snr_gamma) == ("eps", "fixedsmall", None)
    assert stage.sampler.func is ddpm_sample and stage.sampler.keywords == {"guidance_scale": 1.0}
    assert stage.num_points == 2048 and stage.config is None


def test_config_selects_sampler_and_options():
    cfg = DiffusionConfig(schedule="cosine", num_steps=500, mean_type="v", var_type="fixedlarge", min_snr_gamma=5.0,
                          sampler="ddim", sampling_steps=40, eta=0.5, guidance_scale=3.0)
    (stage,) = build(cfg, num_points=1024)
    np.testing.assert_array_equal(stage.diffusion.betas.numpy(), make_betas("cosine", 500))
    assert stage.sampler.func is ddim_sample
    assert stage.sampler.keywords == {"guidance_scale": 3.0, "steps": 40, "eta": 0.5}
    assert build(DiffusionConfig(sampler="dpm++2m"))[0].sampler.keywords["steps"] == 25  # the default
    shifted = build(DiffusionConfig(logsnr_shift=1.0))[0].diffusion
    np.testing.assert_allclose(shifted.betas.numpy(), make_betas("shifted", 1000, base="linear", shift=1.0))


@pytest.mark.parametrize("bad", [dict(schedule="quadratic"), dict(sampler="euler"), dict(mean_type="score"),
                                 dict(sampler="ddpm", sampling_steps=50), dict(eta=2.0), dict(schedule="cosine", beta_end=0.1),
                                 dict(sampling_steps=5000, sampler="ddim")])
def test_bad_configs_are_user_errors(bad):
    with pytest.raises(UserError):
        build(DiffusionConfig(**bad))


def test_cascade_config_stores_resolved_shifts():
    cfg = CascadeConfig()
    assert [s.num_points for s in cfg.stages] == [512, 2048]
    assert cfg.stages[0].logsnr_shift == pytest.approx(math.log(4)) and cfg.stages[1].logsnr_shift == 0
    assert CascadeConfig().stages[0] is not cfg.stages[0]  # defaults are not shared between configs
    explicit = CascadeConfig(stages=(StageConfig(256, logsnr_shift=0.5), {"num_points": 2048}))  # dicts as from a file
    assert explicit.stages[0].logsnr_shift == 0.5 and isinstance(explicit.stages[1], StageConfig)
    for stages in [(StageConfig(2048),), (StageConfig(2048), StageConfig(512)),
                   (StageConfig(512, aug_level_train=(0.0, 1.5)), StageConfig(2048))]:
        with pytest.raises(UserError):
            CascadeConfig(stages=stages)


def test_config_round_trips_through_json():
    cfg = DiffusionConfig(sampler="heun", cascade=CascadeConfig(stages=(StageConfig(256, aug_level_train=(0.1, 0.2)), StageConfig(2048))))
    again = DiffusionConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg


def test_build_cascade_gives_each_stage_its_shifted_schedule():
    cfg = DiffusionConfig(cascade=CascadeConfig(stages=(StageConfig(256), StageConfig(1024), StageConfig(2048))))
    stages = build(cfg, num_points=2048)
    assert [s.num_points for s in stages] == [256, 1024, 2048]
    base = make_betas("linear", 1000)
    for stage, shift in zip(stages, [math.log(8), math.log(2), 0.0]):
        assert stage.config.logsnr_shift == pytest.approx(shift)
        want = base if shift == 0 else make_betas("shifted", 1000, base="linear", shift=shift)
        np.testing.assert_array_equal(stage.diffusion.betas.numpy(), want)
    with pytest.raises(UserError, match="last stage"):
        build(cfg, num_points=4096)


# ------------------------------------------------------------------------------------------
# Cascade pieces


def test_subsample_and_augment():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 3, generator=g)
    sub = subsample(x, 20, g)
    assert sub.shape == (4, 20, 3)
    for b in range(4):  # a subset without repeats
        rows = {tuple(p.tolist()) for p in x[b]}
        assert len({tuple(p.tolist()) for p in sub[b]}) == 20 and all(tuple(p.tolist()) in rows for p in sub[b])
    assert subsample(x, 50, g) is x
    level = torch.tensor([0.0, 1.0, 0.6, 0.6])
    big = torch.full((4, 20000, 3), 2.0)
    aug = augment(big, level, g)
    assert torch.equal(aug[0], big[0])  # level 0: clean
    assert abs(aug[1].mean().item()) < 0.03 and abs(aug[1].std().item() - 1) < 0.01  # level 1: pure noise
    assert abs(aug[2].mean().item() - 0.8 * 2) < 0.03 and abs(aug[2].std().item() - 0.6) < 0.01  # sqrt(1 - a^2) x + a eps


def test_stage_batch_attaches_the_augmented_coarse_cloud():
    cfg = DiffusionConfig(cascade=CascadeConfig(stages=(StageConfig(16, aug_level_train=(0.0, 0.0)),
                                                        StageConfig(64, aug_level_train=(0.2, 0.4)))))
    stages = build(cfg, num_points=64)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 64, 3, generator=g)
    image = torch.randn(8, 5)
    cond = Cond(image=image, drop=torch.zeros(8, dtype=torch.bool))
    p0, c0 = stage_batch(stages, 0, x0, cond, g)
    assert p0.shape == (8, 16, 3) and c0 is cond
    p1, c1 = stage_batch(stages, 1, x0, cond, g)
    assert p1.shape == (8, 64, 3) and c1.coarse.shape == (8, 16, 3) and c1.image is image
    assert c1.coarse_level.shape == (8,) and ((c1.coarse_level >= 0.2) & (c1.coarse_level <= 0.4)).all()
    assert c1.coarse_level.std() > 0  # drawn per sample
    with pytest.raises(ValueError, match="dataclass condition"):
        stage_batch(stages, 1, x0, None, g)
    # at level 0 the coarse cloud is a subset of the stage's own points (a middle stage: not of all the data)
    zero = (0.0, 0.0)
    clean = build(dataclasses.replace(cfg, cascade=CascadeConfig(stages=(StageConfig(8), StageConfig(16, aug_level_train=zero),
                                                                         StageConfig(64, aug_level_train=zero)))), 64)
    p, c = stage_batch(clean, 1, x0, cond, g)
    assert p.shape == (8, 16, 3) and c.coarse.shape == (8, 8, 3)
    assert (c.coarse[:, :, None] == p[:, None]).all(dim=3).any(dim=2).all()


def test_sample_stages_chains_coarse_to_fine():
    cfg = DiffusionConfig(num_steps=50, schedule="cosine", sampler="ddim", sampling_steps=5,
                          cascade=CascadeConfig(stages=(StageConfig(8, aug_level_sample=0.0), StageConfig(32, aug_level_sample=0.3)),
                                                ref_points=32))
    stages = build(cfg, num_points=32)
    seen = []

    def coarse_model(x, t, cond):
        assert cond.coarse is None and x.shape == (2, 8, 3)
        return torch.zeros_like(x)

    def fine_model(x, t, cond):
        assert x.shape == (2, 32, 3) and cond.coarse.shape == (2, 8, 3)
        seen.append(cond)
        return torch.zeros_like(x)

    reports = []
    clouds = sample_stages(stages, [coarse_model, fine_model], Cond(drop=torch.zeros(2, dtype=torch.bool)), 2,
                           generator=torch.Generator().manual_seed(0), return_all=True,
                           progress=lambda k, i, n: reports.append((k, i, n)))
    assert [c.shape for c in clouds] == [(2, 8, 3), (2, 32, 3)]
    assert torch.equal(seen[0].coarse_level, torch.full((2,), 0.3))
    assert reports[-1] == (1, 5, 5) and reports[4] == (0, 5, 5)
    # the fine stage saw the coarse result, noised at the sampling level: sqrt(1 - 0.09) coarse + 0.3 eps
    residual = (seen[0].coarse - math.sqrt(1 - 0.09) * clouds[0]) / 0.3
    assert residual.abs().max() < 5 and residual.std() > 0.5


# ------------------------------------------------------------------------------------------
# Toy end to end: two stages trained for a few hundred steps, then sampled

CENTRE_STD, BLOB_STD = 1.0, 0.15  # each shape: a blob of points around a random centre


def toy_clouds(batch, n, g):
    centre = CENTRE_STD * torch.randn(batch, 1, 3, generator=g)
    return centre + BLOB_STD * torch.randn(batch, n, 3, generator=g)


class ToyDenoiser(nn.Module):
    """DeepSets: each point sees itself, the cloud's mean, the timestep and the coarse cloud's mean."""

    def __init__(self, num_steps, hidden=96):
        super().__init__()
        self.num_steps = num_steps
        self.net = nn.Sequential(nn.Linear(13, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3))

    def forward(self, x, t, cond):
        b, n, _ = x.shape
        if cond is not None and cond.coarse is not None:
            coarse, level = cond.coarse.mean(1), cond.coarse_level
        else:
            coarse, level = x.new_zeros(b, 3), x.new_zeros(b)
        u = t / self.num_steps
        glob = torch.cat([x.mean(1), coarse, level[:, None], u[:, None], torch.sin(math.pi * u)[:, None],
                          torch.cos(math.pi * u)[:, None]], dim=1)
        return self.net(torch.cat([x, glob[:, None].expand(-1, n, -1)], dim=2))


@pytest.mark.slow
def test_toy_cascade_trains_and_samples_end_to_end():
    torch.manual_seed(0)  # the networks' initialisation
    cfg = DiffusionConfig(schedule="cosine", num_steps=100, mean_type="v", sampler="dpm++2m", sampling_steps=15,
                          cascade=CascadeConfig(stages=(StageConfig(8), StageConfig(32, aug_level_train=(0.0, 0.3),
                                                                                    aug_level_sample=0.1)),
                                                ref_points=32))
    stages = build(cfg, num_points=32)
    assert cfg.cascade.stages[0].logsnr_shift == pytest.approx(math.log(4)) and cfg.cascade.stages[1].logsnr_shift == 0
    np.testing.assert_allclose(stages[0].diffusion.betas.numpy(), make_betas("shifted", 100, base="cosine", shift=math.log(4)))

    g = torch.Generator().manual_seed(0)
    models = [ToyDenoiser(cfg.num_steps) for _ in stages]
    opts = [torch.optim.Adam(m.parameters(), lr=3e-3) for m in models]
    for step in range(400):
        x0 = toy_clouds(128, 32, g)
        cond = Cond(drop=torch.zeros(128, dtype=torch.bool))
        for k, (stage, model, opt) in enumerate(zip(stages, models, opts)):
            points, stage_cond = stage_batch(stages, k, x0, cond, g)
            loss = stage.diffusion.loss(model, points, stage.diffusion.sample_t(128, g), stage_cond, generator=g).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    with torch.no_grad():
        coarse, fine = sample_stages(stages, models, Cond(drop=torch.zeros(256, dtype=torch.bool)), 256,
                                     generator=torch.Generator().manual_seed(1), return_all=True)
    assert coarse.shape == (256, 8, 3) and fine.shape == (256, 32, 3)
    assert torch.isfinite(fine).all()
    # stage 1 learnt the distribution: centres spread like the data, tight blobs
    centres = coarse.mean(1)
    spread = (coarse - centres[:, None]).std().item()
    print(f"coarse: centre std {centres.std().item():.3f}, blob std {spread:.3f}")
    assert 0.7 < centres.std().item() < 1.3 and spread < 2 * BLOB_STD
    # stage 2 follows its coarse cloud: the fine blob sits on it, not anywhere in the data's range
    gap = (fine.mean(1) - centres).norm(dim=1)
    unrelated = (fine.mean(1) - centres.roll(1, 0)).norm(dim=1)
    fine_spread = (fine - fine.mean(1, keepdim=True)).std().item()
    print(f"fine: centre gap {gap.mean().item():.3f} (unrelated {unrelated.mean().item():.3f}), blob std {fine_spread:.3f}")
    # (the best possible gap is ~0.11: 8 coarse points fix their centre to 0.15 / sqrt(8) per axis)
    assert gap.mean() < 0.25 and unrelated.mean() > 1.0
    assert 0.5 * BLOB_STD < fine_spread < 2 * BLOB_STD
