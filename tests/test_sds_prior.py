"""The SDS baseline's view prior: image conversion, relative cameras, the condition, the network,
guidance, and a tiny training run whose checkpoint ``load_prior`` reads back."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pvd import checkpoint
from pvd.diffusion import make_diffusion
from pvd.errors import UserError
from pvd.runtime import pick_device
from pvd.sds import train_prior
from pvd.sds.prior import (PriorConfig, PriorTrainConfig, ViewCondition, ViewUNet, absolute_cameras, camera_pair,
                           from_prior_image, load_prior, predict_eps, relative_camera, to_prior_image)
from pvd.sds.view_prior import TrainedViewPrior, ViewPrior, edit_views, noise_process, sample_views

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: a second thread on busy cores only waits
TINY = PriorConfig(image_size=8, channels=(8, 16), heads=2, embed_dim=16)


def tiny_args(data, run_dir, *extra):
    return [f"data={data}", f"run_dir={run_dir}", "model.image_size=8", "model.channels=8,16", "model.heads=2",
            "model.embed_dim=16", "batch_size=4", "max_steps=3", "ckpt_every=2", "keep=5", "log_every=1",
            "warmup_steps=1", *extra]


def randomized(config: PriorConfig, seed: int = 0) -> ViewUNet:
    """A network whose zero-initialised layers (output, residual branches, modulation) are not zero,
    so that every input reaches the output."""
    torch.manual_seed(seed)
    model = ViewUNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def views(b: int, s: int, seed: int) -> torch.Tensor:
    return torch.rand(b, 4, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- images and cameras ---------------------------------------------------------------------

def naive_prior_image(rgba: np.ndarray, size: int) -> np.ndarray:
    """Per output pixel: composite each input pixel on white, average the block; alpha likewise."""
    b, h, w, _ = rgba.shape
    k = h // size
    x = rgba.astype(np.float64) / 255
    out = np.zeros((b, 4, size, size))
    for n in range(b):
        for i in range(size):
            for j in range(size):
                acc = np.zeros(4)
                for u in range(i * k, (i + 1) * k):
                    for v in range(j * k, (j + 1) * k):
                        a = x[n, u, v, 3]
                        acc[:3] += x[n, u, v, :3] * a + (1 - a)
                        acc[3] += a
                out[n, :, i, j] = acc / (k * k)
    return out * 2 - 1


@pytest.mark.parametrize("h,size", [(8, 4), (12, 4), (8, 8), (6, 1)])
def test_to_prior_image_matches_naive_reference(h, size):
    rng = np.random.default_rng(h + size)
    rgba = rng.integers(0, 256, (2, h, h, 4), dtype=np.uint8)
    rgba[0, : h // 2, :, 3] = 0  # background: transparent, becomes white
    rgba[0, : h // 2, :, :3] = 0
    expected = naive_prior_image(rgba, size)
    got = to_prior_image(rgba, size)
    assert got.shape == (2, 4, size, size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # torch uint8 and float (B, 4, H, W) in [0, 1] inputs give the same images
    np.testing.assert_allclose(to_prior_image(torch.from_numpy(rgba), size).numpy(), expected, atol=1e-5)
    as_float = torch.from_numpy(rgba).permute(0, 3, 1, 2).double() / 255
    np.testing.assert_allclose(to_prior_image(as_float, size).numpy(), expected, atol=1e-5)
    if size == h:  # transparent pixels are white with alpha -1
        assert torch.all(got[0, :, : h // 2] == torch.tensor([1.0, 1, 1, -1])[:, None, None])


def test_to_prior_image_rejects_bad_shapes():
    with pytest.raises(ValueError):
        to_prior_image(np.zeros((1, 8, 8, 3), np.uint8), 4)
    with pytest.raises(ValueError):
        to_prior_image(np.zeros((1, 8, 8, 4), np.uint8), 3)


def test_from_prior_image_inverts_the_compositing():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (3, 4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((3, 4, 4)) < 0.3, 0, rgba[..., 3])
    rgba[rgba[..., 3] == 0, :3] = 0  # straight colour is 0 where nothing is seen
    back = from_prior_image(to_prior_image(rgba, 4))
    expected = torch.from_numpy(rgba).permute(0, 3, 1, 2).float() / 255
    seen = expected[:, 3:] > 0.05  # where colour is recoverable in float32
    torch.testing.assert_close(back[:, 3], expected[:, 3], atol=1e-6, rtol=0)
    torch.testing.assert_close(back[:, :3][seen.expand(-1, 3, -1, -1)], expected[:, :3][seen.expand(-1, 3, -1, -1)],
                               atol=1e-4, rtol=0)
    assert torch.all(back[:, :3][(expected[:, 3:] == 0).expand(-1, 3, -1, -1)] == 0)


def test_relative_camera_hand_computed():
    cam = relative_camera(camera_pair([30.0, 30.0, 25.0, 28.0], [350.0, 10.0, 0.0, 123.0], [1.5, 1.5, 1.2, 1.3],
                                      [25.0, 30.0, 25.0, 28.0], [10.0, 350.0, 90.0, 123.0], [1.2, 1.6, 1.2, 1.3]))
    expected = torch.tensor([
        [math.radians(-5), math.sin(math.radians(20)), math.cos(math.radians(20)), -0.3],  # 350 -> 10: +20, wraps
        [0.0, -math.sin(math.radians(20)), math.cos(math.radians(20)), 0.1],  # 10 -> 350: -20
        [0.0, 1.0, 0.0, 0.0],  # a quarter turn
        [0.0, 0.0, 1.0, 0.0],  # the same camera
    ])
    assert cam.shape == (4, 4) and cam.dtype == torch.float32
    torch.testing.assert_close(cam, expected, atol=1e-6, rtol=0)
    # 360 degrees apart is the same camera
    torch.testing.assert_close(relative_camera(camera_pair(0, 5, 1, 0, 365, 1)), relative_camera(camera_pair(0, 5, 1, 0, 5, 1)))


def test_absolute_cameras_hand_computed():
    pair = camera_pair([30.0, 0.0], [90.0, 360.0], [1.5, 1.2], [25.0, 10.0], [180.0, 45.0], [1.2, 1.3])
    assert pair.shape == (2, 6) and torch.equal(pair[0], torch.tensor([30.0, 90.0, 1.5, 25.0, 180.0, 1.2]))
    r = math.radians
    expected = torch.tensor([
        [r(30), 1.0, 0.0, 1.5, r(25), 0.0, -1.0, 1.2],
        [0.0, 0.0, 1.0, 1.2, r(10), math.sin(r(45)), math.cos(r(45)), 1.3],  # 360 degrees is 0
    ])
    torch.testing.assert_close(absolute_cameras(pair), expected, atol=1e-6, rtol=0)
    # both cameras turned a quarter further: the same relative code, another absolute one
    turned = camera_pair(30.0, 180.0, 1.5, 25.0, 270.0, 1.2)
    torch.testing.assert_close(relative_camera(turned), relative_camera(pair[:1]), atol=1e-6, rtol=0)
    assert (absolute_cameras(turned) - absolute_cameras(pair[:1])).abs().max() > 0.99


# ---- the condition and the network ----------------------------------------------------------

def test_view_condition_null_and_cat():
    a = ViewCondition(views(2, 8, 0), torch.randn(2, 6))
    b = ViewCondition(views(3, 8, 1), torch.randn(3, 6), torch.tensor([True, False, True]))
    assert a.batch_size == 2 and not a.dropped().any()
    null = a.null()
    assert null.drop.dtype == torch.bool and null.drop.all() and torch.equal(null.input_view, a.input_view)
    both = ViewCondition.cat([a, b])
    assert both.batch_size == 5
    assert both.drop.tolist() == [False, False, True, False, True]
    assert torch.equal(both.input_view[2:], b.input_view) and torch.equal(both.camera[:2], a.camera)
    assert ViewCondition.cat([a, a]).drop is None
    assert ViewCondition.cat([a, a.null()]).drop.tolist() == [False, False, True, True]
    with pytest.raises(ValueError):
        ViewCondition(views(2, 8, 0), torch.randn(3, 6))
    with pytest.raises(ValueError):
        ViewCondition(views(2, 8, 0), torch.randn(2, 4))  # a relative code is not a camera pair


@pytest.mark.parametrize("options", [{}, {"camera": "absolute"}, {"cross_attention": True},
                                     {"camera": "absolute", "cross_attention": True}])
def test_network_shape_and_condition_reach_the_output(options):
    model = randomized(dataclasses.replace(TINY, **options))
    x, t = views(2, 8, 0), torch.tensor([10.0, 500.0])
    cond = ViewCondition(views(2, 8, 1), camera_pair([30, 30], [0, 0], [1.5, 1.5], [25, 30], [90, 180], [1.2, 1.5]))
    with torch.no_grad():
        out = model(x, t, cond)
        assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
        other_view = model(x, t, ViewCondition(views(2, 8, 2), cond.camera))
        other_camera = model(x, t, ViewCondition(cond.input_view, cond.camera.flip(0)))
        other_time = model(x, t.flip(0), cond)
    for changed in (other_view, other_camera, other_time):
        assert (changed - out).abs().amax() > 1e-3


@pytest.mark.parametrize("options", [{}, {"camera": "absolute", "cross_attention": True}])
def test_dropped_condition_ignores_input_view_and_camera(options):
    model = randomized(dataclasses.replace(TINY, **options))
    x, t = views(2, 8, 0), torch.tensor([10.0, 500.0])
    drop = torch.tensor([True, False])
    first = ViewCondition(views(2, 8, 1), torch.randn(2, 6) * 30, drop)
    second = ViewCondition(views(2, 8, 2), torch.randn(2, 6) * 30, drop)
    with torch.no_grad():
        a, b = model(x, t, first), model(x, t, second)
    assert torch.equal(a[0], b[0])  # dropped: identical whatever the condition
    assert (a[1] - b[1]).abs().amax() > 1e-3  # kept: the condition matters


def test_the_default_network_is_small():
    params = sum(p.numel() for p in ViewUNet(PriorConfig()).parameters())
    assert 5e5 < params < 5e6


def test_prior_config_rejects_bad_sizes():
    with pytest.raises(ValueError):
        PriorConfig(image_size=30, channels=(8, 16, 32))  # 30 does not halve twice
    with pytest.raises(ValueError):
        PriorConfig(channels=(6, 16))
    with pytest.raises(ValueError, match="camera must be one of relative, absolute"):
        PriorConfig(camera="polar")
    with pytest.raises(ValueError, match="cross_attention needs attention"):
        PriorConfig(attention=False, cross_attention=True)


# ---- guidance and sampling ------------------------------------------------------------------

def test_predict_eps_applies_classifier_free_guidance():
    model = randomized(TINY)
    diffusion = make_diffusion(PriorTrainConfig().diffusion)
    x, t = views(3, 8, 0), torch.tensor([5, 400, 990])
    cond = ViewCondition(views(3, 8, 1), torch.randn(3, 6) * 30)
    with torch.no_grad():
        out_c, out_u = model(x, t.float(), cond), model(x, t.float(), cond.null())
        plain = predict_eps(model, diffusion, x, t, cond, guidance=1.0)
        guided = predict_eps(model, diffusion, x, t, cond, guidance=3.0)
    torch.testing.assert_close(plain, diffusion.predict_eps(x, t, out_c))
    torch.testing.assert_close(guided, diffusion.predict_eps(x, t, out_u + 3.0 * (out_c - out_u)), atol=1e-5, rtol=1e-5)
    # eps is affine in the output, so guiding eps is the same thing
    eps_c, eps_u = diffusion.predict_eps(x, t, out_c), diffusion.predict_eps(x, t, out_u)
    torch.testing.assert_close(guided, eps_u + 3.0 * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def tiny_prior(**options) -> TrainedViewPrior:
    config = dataclasses.replace(TINY, **options)
    return TrainedViewPrior(randomized(config), make_diffusion(PriorTrainConfig().diffusion), PriorTrainConfig(model=config))


def test_the_trained_prior_follows_the_protocol():
    prior = tiny_prior()
    assert isinstance(prior, ViewPrior) and prior.image_size == 8
    x, t = views(3, 8, 0), torch.tensor([5, 400, 990])
    cond = ViewCondition(views(3, 8, 1), torch.randn(3, 6) * 30)
    got = prior.predict_noise(x, t, cond.input_view, cond.camera, 2.0)
    torch.testing.assert_close(got, predict_eps(prior.model, prior.diffusion, x, t, cond, guidance=2.0))
    # its forward process is the prior's own: noising with it gives the same x_t
    process, noise = noise_process(prior), views(3, 8, 2)
    torch.testing.assert_close(process.q_sample(x, t, noise), prior.diffusion.q_sample(x, t, noise), atol=1e-6, rtol=1e-6)


def test_noise_process_rejects_a_bad_schedule():
    class Bad:
        image_size, alphas_cumprod = 8, torch.tensor([0.5, 0.9])  # increasing

    with pytest.raises(ValueError, match="decreasing"):
        noise_process(Bad())


def test_sample_views_is_seeded_and_in_range():
    prior = tiny_prior(camera="absolute", cross_attention=True)
    inputs, camera = views(2, 8, 0), torch.randn(2, 6) * 30
    a = sample_views(prior, inputs, camera, steps=4, generator=torch.Generator().manual_seed(1))
    b = sample_views(prior, inputs, camera, steps=4, generator=torch.Generator().manual_seed(1))
    c = sample_views(prior, inputs, camera, steps=4, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 4, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1
    with pytest.raises(ValueError, match="cameras"):
        sample_views(prior, inputs, torch.randn(2, 4), steps=4, generator=torch.Generator())


def test_sample_views_on_a_stub_prior_follows_the_analytic_model():
    # A stub prior whose data are one known image x*: its eps is exact, and DDIM then returns x*
    # from any noise (deterministic DDIM with an exact x0 prediction lands on it in one step).
    target = views(1, 8, 5).clamp(-0.9, 0.9)

    class PointMassPrior:
        image_size = 8
        alphas_cumprod = make_diffusion(PriorTrainConfig().diffusion).alphas_cumprod

        def predict_noise(self, x_t, t, input_view, cameras, guidance):
            ab = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
            return (x_t - ab.sqrt() * target) / (1 - ab).sqrt()

    out = sample_views(PointMassPrior(), views(3, 8, 0), torch.zeros(3, 6), steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target.expand(3, -1, -1, -1), atol=1e-4, rtol=0)



def test_edit_views_noises_to_the_strength_asked_and_denoises_with_the_prior():
    # A stub prior for data x0 ~ N(0, s^2) per pixel, with its exact eps: then every DDIM step is
    # linear in x and maps 0 to 0, so an edit returns c * x_u (some c > 0), x_u = sqrt(a) v +
    # sqrt(1 - a) e the view v noised to the strength's timestep u. Whatever c is, the edits'
    # mean over their spread is sqrt(a / (1 - a)) v: that pins the noise level (a at u), to the
    # standard error of a mean over N pixels, 1/sqrt(N) (4 of them allowed).
    process = make_diffusion(PriorTrainConfig().diffusion)
    spread = 0.1

    class GaussianPrior:
        image_size, alphas_cumprod, calls = 8, process.alphas_cumprod, 0

        def predict_noise(self, x_t, t, input_view, cameras, guidance):
            self.calls += 1
            ab = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
            return (1 - ab).sqrt() * x_t / (ab * spread**2 + 1 - ab)

    prior, v = GaussianPrior(), torch.full((256, 4, 8, 8), 0.3)
    for strength in (0.2, 0.5):
        prior.calls = 0
        out = edit_views(prior, v, v, torch.zeros(len(v), 6), strength=strength, steps=10, guidance=1.0,
                         generator=torch.Generator().manual_seed(0))
        a = float(process.alphas_cumprod[round(strength * (process.num_steps - 1))])
        assert prior.calls == 10 and out.abs().max() < 1  # nothing clamped
        ratio, expected = float(out.mean() / out.std()), (a / (1 - a)) ** 0.5 * 0.3
        assert abs(ratio - expected) < 4 * (1 + expected**2 / 2) ** 0.5 / out.numel() ** 0.5, (strength, ratio, expected)
    with pytest.raises(ValueError, match="strength"):
        edit_views(prior, v[:1], v[:1], torch.zeros(1, 6), strength=1.0, steps=2, generator=torch.Generator())
    with pytest.raises(ValueError, match="shaped"):
        edit_views(prior, v[:1, :, :4], v[:1], torch.zeros(1, 6), strength=0.5, steps=2, generator=torch.Generator())

# ---- training data and runs -----------------------------------------------------------------

def test_training_pairs_are_keyed_and_distinct(pipeline_data):
    views_ = train_prior.read_views(pipeline_data, "train", 8)
    assert views_.images.shape == (8, 2, 4, 8, 8)  # 4 train shapes per category, 2 views, 16 -> 8 pixels
    diffusion = make_diffusion(PriorTrainConfig().diffusion)
    keys = list(range(40))
    x0, t, noise, cond = train_prior.view_batch(views_, diffusion, keys, cond_drop=0.5)
    again = train_prior.view_batch(views_, diffusion, keys, cond_drop=0.5)
    for u, v in zip((x0, t, noise, cond.input_view, cond.camera, cond.drop), (*again[:3], *vars(again[3]).values())):
        assert torch.equal(u, v)
    shifted = train_prior.view_batch(views_, diffusion, keys[1:] + [99], cond_drop=0.5)
    assert torch.equal(shifted[2][:-1], noise[1:])  # a sample's draws depend on its key alone
    assert 5 < int(cond.drop.sum()) < 35
    # input and target are distinct views of one shape, and the camera relates them
    flat = views_.images.flatten(0, 1)
    for i in range(len(keys)):
        src = int(torch.nonzero((flat == cond.input_view[i]).flatten(1).all(1))[0])
        dst = int(torch.nonzero((flat == x0[i]).flatten(1).all(1))[0])
        assert src // 2 == dst // 2 and src != dst
        expected = views_.camera(np.array([src // 2]), np.array([src % 2]), np.array([dst % 2]))
        torch.testing.assert_close(cond.camera[i : i + 1], expected)


def test_tiny_run_checkpoint_round_trip_and_resume(pipeline_data, tmp_path):
    assert train_prior.main(tiny_args(pipeline_data, tmp_path / "a")) == 0
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path / "a")]
    assert names == ["step-00000002.pt", "step-00000003.pt"]
    stats = (tmp_path / "a" / "stats.jsonl").read_text().splitlines()
    assert len(stats) == 3 and '"loss_q0"' in stats[0]
    ckpt = checkpoint.load(tmp_path / "a")
    model, diffusion, cfg = load_prior(tmp_path / "a")
    assert cfg.model == PriorConfig(image_size=8, channels=(8, 16), heads=2, embed_dim=16) and cfg.batch_size == 4
    assert not model.training and diffusion.mean_type == "v" and diffusion.num_steps == 1000
    state = model.state_dict()
    assert state.keys() == ckpt["ema"].keys()
    for k in state:
        assert torch.equal(state[k], ckpt["ema"][k]), k
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in state)  # EMA is not the raw weights

    # stopped after step 2 and resumed: bitwise the uninterrupted run
    train_prior.main(tiny_args(pipeline_data, tmp_path / "b", "max_steps=2"))
    train_prior.main(tiny_args(pipeline_data, tmp_path / "b", "resume=true"))
    resumed = checkpoint.load(tmp_path / "b")
    assert resumed["step"] == 3
    for part in ("model", "ema"):
        for k in ckpt[part]:
            assert torch.equal(ckpt[part][k], resumed[part][k]), (part, k)
    with pytest.raises(UserError, match="cannot change lr"):
        train_prior.parse_config(tiny_args(pipeline_data, tmp_path / "b", "resume=true", "lr=0.1"))
    with pytest.raises(UserError, match="already holds a run"):
        train_prior.main(tiny_args(pipeline_data, tmp_path / "b"))


def test_training_runs_on_the_requested_device(pipeline_data, tmp_path, device, monkeypatch):
    # the model and every batch on device=, under that device's autocast; the run continues
    # on another device (device may change on resume) and its checkpoint reads back on the host
    seen = []
    forward = ViewUNet.forward

    def recording(self, x_t, t, cond):
        seen.append(({next(self.parameters()).device, x_t.device, t.device, cond.input_view.device, cond.camera.device,
                      cond.dropped().device}, torch.is_autocast_enabled(device.type)))
        return forward(self, x_t, t, cond)

    monkeypatch.setattr(ViewUNet, "forward", recording)
    run = tmp_path / "run"
    assert train_prior.main(tiny_args(pipeline_data, run, f"device={device}", "bf16=true", "max_steps=2")) == 0
    assert len(seen) == 2
    for devices, autocast in seen:
        assert {d.type for d in devices} == {device.type} and autocast, (devices, autocast)
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all(math.isfinite(e["loss"]) for e in stats)
    for e in stats:  # one step per line: its loss is a weighted mean of its quartiles' means
        means = [e[f"loss_q{q}"] for q in range(4) if e[f"loss_q{q}"] is not None]
        assert means and min(means) * (1 - 1e-6) <= e["loss"] <= max(means) * (1 + 1e-6), e
    assert train_prior.parse_config(tiny_args(pipeline_data, run, "resume=true", "device=auto")).device == "auto"
    model, _, cfg = load_prior(run)
    assert cfg.device == str(device) and next(model.parameters()).device.type == "cpu"


def test_device_errors_are_one_line(pipeline_data, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="device must be auto, cpu, cuda or cuda:N, got 'tpu'") as e:
        train_prior.main(tiny_args(pipeline_data, tmp_path / "a", "device=tpu"))
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="device=cuda but no CUDA device is available"):
        train_prior.main(tiny_args(pipeline_data, tmp_path / "b", "device=cuda"))
    assert pick_device("auto", "device") == torch.device("cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("gpu_bf16, amx", [(True, False), (False, True)])
def test_bf16_follows_the_device(monkeypatch, gpu_bf16, amx):
    # None: what the device computes fast (bf16 support on a GPU, AMX tiles on a CPU); else as set
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train_prior.use_bf16(PriorTrainConfig(), cuda) == gpu_bf16
    assert train_prior.use_bf16(PriorTrainConfig(), cpu) == amx
    for explicit in (True, False):
        assert train_prior.use_bf16(PriorTrainConfig(bf16=explicit), cuda) == explicit
        assert train_prior.use_bf16(PriorTrainConfig(bf16=explicit), cpu) == explicit


def test_load_prior_rejects_crafted_and_foreign_checkpoints(pipeline_data, tmp_path):
    state = ViewUNet(TINY).state_dict()
    run = {"sds_prior": {"model": {"image_size": 8, "channels": [8, 16], "heads": 2, "embed_dim": 16}}}
    checkpoint.save(tmp_path / "ok", 1, {"run": json.dumps(run), "ema": state}, keep=1)
    model, _, _ = load_prior(tmp_path / "ok")  # a minimal valid prior checkpoint loads
    assert model.config == TINY

    cases = {
        "foreign": {"run": json.dumps({"train": {}}), "ema": state},  # a train.py checkpoint, say
        "mismatch": {"run": json.dumps({"sds_prior": {"model": {"image_size": 8, "channels": [8, 32]}}}), "ema": state},
        "badconfig": {"run": json.dumps({"sds_prior": {"model": {"image_size": 8, "channels": [6]}}}), "ema": state},
        "badkey": {"run": json.dumps({"sds_prior": {"bogus": 1}}), "ema": state},
    }
    for name, payload in cases.items():
        checkpoint.save(tmp_path / name, 1, payload, keep=1)
        with pytest.raises(UserError) as e:
            load_prior(tmp_path / name)
        assert "\n" not in str(e.value), name

    class Exploit:  # unpickling it would run a command
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil" / "checkpoints").mkdir(parents=True)
    torch.save({"format": "pvd-checkpoint", "version": 1, "x": Exploit()}, tmp_path / "evil" / "checkpoints" / "step-00000001.pt")
    with pytest.raises(UserError, match="refused"):
        load_prior(tmp_path / "evil")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_prior(tmp_path / "junk.pt")


def test_cli_errors_are_one_line(pipeline_data, tmp_path):
    # a truncated checkpoint (a crash while copying it, say) in the run to resume
    path = checkpoint.save(tmp_path / "run", 1, {"run": json.dumps({"sds_prior": {}}), "ema": ViewUNet(TINY).state_dict()}, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    env = {**os.environ, "PVD_DEFAULT_MALLOC": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pvd.sds.train_prior", "bogus=1"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=60)  # the real command: one line, exit 2
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "unknown config key 'bogus'" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    with pytest.raises(UserError, match="not a readable checkpoint") as e:
        train_prior.main([f"run_dir={tmp_path / 'run'}", "resume=true"])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no dataset file"):
        train_prior.main([f"data={tmp_path / 'missing.h5'}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(UserError, match="channels must be multiples of 4"):  # overrides are checked too
        train_prior.parse_config(["model.channels=6,16"])
    with pytest.raises(UserError, match="model.image_size=12"):
        train_prior.main(tiny_args(pipeline_data, tmp_path / "r", "model.image_size=12", "model.channels=8"))
