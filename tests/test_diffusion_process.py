"""Schedules and the Gaussian process: float64 closed forms, Monte Carlo moments, the loss."""

import math

import numpy as np
import pytest
import torch

from pvd.diffusion import GaussianDiffusion, make_betas, resolution_shift
from pvd.diffusion.schedules import SCHEDULES

T = 1000
NAMED = {  # every named schedule with the options it is tested at
    "linear": {},
    "warm0.1": {},
    "cosine": {},
    "shifted-linear": dict(base="linear", shift=math.log(4)),
    "shifted-cosine": dict(base="cosine", shift=-math.log(2)),
}


def betas_of(name):
    return make_betas(name.split("-")[0], T, **NAMED[name])


def logit(p):
    return np.log(p) - np.log1p(-p)


def test_every_schedule_is_covered():
    assert {name.split("-")[0] for name in NAMED} == set(SCHEDULES)


def test_linear_is_pvd():
    betas = make_betas("linear", T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    t = np.arange(T)
    np.testing.assert_allclose(betas, 1e-4 + t * (0.02 - 1e-4) / (T - 1), rtol=1e-13)


def test_warmup_is_pvd_airplane():
    betas = make_betas("warm0.1", T)
    t = np.arange(100)
    np.testing.assert_allclose(betas[:100], 1e-5 + t * (0.008 - 1e-5) / 99, rtol=1e-13)
    assert np.all(betas[100:] == 0.008)


def test_cosine_alpha_bar_is_nichol_dhariwal():
    betas = make_betas("cosine", T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = GaussianDiffusion(betas).alphas_cumprod.numpy()
    unclipped = betas < 0.999
    assert unclipped.sum() >= T - 2  # only the last step or so hits the cap
    want = np.array([f((t + 1) / T) / f(0) for t in range(T)])
    first_clip = np.argmin(unclipped) if not unclipped.all() else T
    np.testing.assert_allclose(ab[:first_clip], want[:first_clip], rtol=1e-10)
    assert betas.max() <= 0.999


@pytest.mark.parametrize("base", ["linear", "cosine", "warm0.1"])
@pytest.mark.parametrize("shift", [math.log(8), -math.log(4)])
def test_shift_moves_log_snr_by_a_constant(base, shift):
    base_betas, betas = make_betas(base, T), make_betas("shifted", T, base=base, shift=shift)
    base_ab = GaussianDiffusion(base_betas).alphas_cumprod.numpy()
    ab = GaussianDiffusion(betas).alphas_cumprod.numpy()
    ok = np.cumsum(np.maximum(base_betas, betas) >= 0.999) == 0  # before the cosine's capped last step
    assert ok.sum() >= T - 1
    np.testing.assert_allclose(logit(ab[ok]) - logit(base_ab[ok]), shift, atol=1e-8)
    assert (shift > 0) == (ab[T // 2] > base_ab[T // 2])  # positive shift: less noise


def test_resolution_shift_is_log_of_the_point_ratio():
    assert resolution_shift(512) == pytest.approx(math.log(4))  # 2048 / 512
    assert resolution_shift(2048) == 0
    assert resolution_shift(8192, ref_points=2048) == pytest.approx(-math.log(4))
    # Hoogeboom et al.'s 2 log(64 / d) for d x d images is the same law in element counts
    assert resolution_shift(128 * 128, ref_points=64 * 64) == pytest.approx(2 * math.log(64 / 128))


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("quadratic", T)
    with pytest.raises(ValueError):
        make_betas("linear", T, beta_end=1.5)
    with pytest.raises(ValueError):
        GaussianDiffusion(make_betas("linear", T), mean_type="score")
    with pytest.raises(ValueError):
        GaussianDiffusion(make_betas("linear", T), var_type="learned")


@pytest.mark.parametrize("name", list(NAMED))
def test_tables_match_closed_forms(name):
    betas = betas_of(name)
    d = GaussianDiffusion(betas, var_type="fixedlarge")
    for table in (d.alphas_cumprod, d.posterior_variance, d.posterior_mean_coef1, d.log_snr):
        assert table.dtype == torch.float64
    # alpha_bar by a plain running product
    ab, running = [], 1.0
    for b in betas:
        running *= 1 - b
        ab.append(running)
    ab = np.array(ab)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), ab, rtol=1e-12)
    np.testing.assert_allclose(d.alphas_cumprod_prev.numpy(), ab_prev, rtol=1e-12)
    np.testing.assert_allclose(d.log_snr.numpy(), logit(ab), rtol=1e-9, atol=1e-9)
    # Posterior by Bayes' rule in precisions: q(x_{t-1} | x0) = N(sqrt(ab_prev) x0, 1 - ab_prev),
    # q(x_t | x_{t-1}) = N(sqrt(1 - b) x_{t-1}, b)
    t = np.arange(1, T)
    precision = (1 - betas[t]) / betas[t] + 1 / (1 - ab_prev[t])
    np.testing.assert_allclose(d.posterior_variance.numpy()[t], 1 / precision, rtol=1e-10)
    np.testing.assert_allclose(d.posterior_mean_coef1.numpy()[t], np.sqrt(ab_prev[t]) / (1 - ab_prev[t]) / precision, rtol=1e-10)
    np.testing.assert_allclose(d.posterior_mean_coef2.numpy()[t], np.sqrt(1 - betas[t]) / betas[t] / precision, rtol=1e-10)
    np.testing.assert_allclose(d.posterior_log_variance.numpy()[t], np.log(1 / precision), rtol=1e-10)
    # t = 0: the posterior is the point x0
    assert d.posterior_variance[0] == 0 and d.posterior_mean_coef1[0] == pytest.approx(1) and d.posterior_mean_coef2[0] == 0
    assert d.posterior_log_variance[0] == pytest.approx(math.log(1e-20))
    # fixedlarge: beta_t (beta-tilde_1 at t = 0 keeps the log finite)
    np.testing.assert_allclose(d.reverse_variance.numpy()[1:], betas[1:], rtol=1e-14)
    assert d.reverse_variance[0] == d.posterior_variance[1]
    small = GaussianDiffusion(betas, var_type="fixedsmall")
    assert torch.equal(small.reverse_variance, small.posterior_variance)


@pytest.mark.parametrize("name", ["linear", "cosine", "shifted-linear"])
def test_q_sample_moments(name):
    d = GaussianDiffusion(betas_of(name))
    ab = d.alphas_cumprod.numpy()
    g = torch.Generator().manual_seed(0)
    ts = torch.tensor([0, 10, 250, 500, 999])
    x0 = torch.linspace(-1.0, 2.0, len(ts), dtype=torch.float64).view(-1, 1, 1).expand(-1, 20000, 3)
    x_t = d.q_sample(x0, ts, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    n = x0.shape[1] * 3
    for i, t in enumerate(ts.tolist()):
        mean, var = x_t[i].mean().item(), x_t[i].var().item()
        want_mean, want_var = math.sqrt(ab[t]) * x0[i, 0, 0].item(), 1 - ab[t]
        assert abs(mean - want_mean) < 5 * math.sqrt(want_var / n)
        assert abs(var / want_var - 1) < 5 * math.sqrt(2 / n)
    assert d.q_sample(x0.float(), ts, torch.zeros(x0.shape)).dtype == torch.float32


def test_q_posterior_is_the_conditional_of_two_forward_steps():
    """Monte Carlo: draw x_{t-1} ~ q(. | x0), x_t ~ q(. | x_{t-1}); the residual from the posterior
    mean has zero mean, the posterior variance, and no correlation with x_t."""
    d = GaussianDiffusion(make_betas("linear", T))
    g = torch.Generator().manual_seed(1)
    ab, betas = d.alphas_cumprod.numpy(), d.betas.numpy()
    for t in (1, 40, 700):
        x0 = torch.full((4, 10000, 3), 0.8, dtype=torch.float64)
        x_prev = math.sqrt(ab[t - 1]) * x0 + math.sqrt(1 - ab[t - 1]) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = math.sqrt(1 - betas[t]) * x_prev + math.sqrt(betas[t]) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        mean, var, log_var = d.q_posterior(x0, x_t, torch.full((4,), t))
        assert var.shape == (4, 1, 1) and torch.allclose(var.log(), log_var)
        r = (x_prev - mean).flatten()
        n = len(r)
        v = var[0].item()
        assert abs(r.mean().item()) < 5 * math.sqrt(v / n)
        assert abs(r.var().item() / v - 1) < 5 * math.sqrt(2 / n)
        assert abs(torch.corrcoef(torch.stack([r, x_t.flatten()]))[0, 1].item()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("mean_type", ["eps", "v", "x0"])
def test_targets_invert(mean_type):
    d = GaussianDiffusion(make_betas("cosine", T), mean_type)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 64, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 64, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 300, 998, 999])
    x_t = d.q_sample(x0, t, noise)
    target = d.target(x0, t, noise)
    torch.testing.assert_close(d.predict_x0(x_t, t, target), x0, rtol=0, atol=1e-9 * 1e3)  # t=999: 1/alpha ~ 1e3
    torch.testing.assert_close(d.predict_eps(x_t, t, target), noise, rtol=0, atol=1e-9)
    # fractional t between two integers interpolates the log-SNR linearly
    a, s = d.alpha_sigma(torch.tensor([300.25]))
    lsnr = d.log_snr.numpy()
    want = 0.75 * lsnr[300] + 0.25 * lsnr[301]
    assert math.log(a.item() ** 2 / s.item() ** 2) == pytest.approx(want, abs=1e-9)
    assert d.t_at_log_snr(np.array([want]))[0] == pytest.approx(300.25)


# ------------------------------------------------------------------------------------------
# Training loss


@pytest.mark.parametrize("mean_type", ["eps", "v", "x0"])
def test_loss_is_mse_on_the_target(mean_type):
    d = GaussianDiffusion(make_betas("linear", T), mean_type)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 32, 3, generator=g)
    noise = torch.randn(4, 32, 3, generator=g)
    t = d.sample_t(4, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and 0 <= t.min() and t.max() < T
    exact = lambda x, tt, c: d.target(x0, t, noise)  # noqa: E731
    assert d.loss(exact, x0, t, None, noise=noise).abs().max() < 1e-6
    zero = lambda x, tt, c: torch.zeros_like(x)  # noqa: E731
    torch.testing.assert_close(d.loss(zero, x0, t, None, noise=noise), d.target(x0, t, noise).square().mean(dim=(1, 2)))


@pytest.mark.parametrize("mean_type", ["eps", "v", "x0"])
def test_min_snr_weights_x0_error_by_clipped_snr(mean_type):
    """Hang et al. 2023: for every target, the weighted loss is min(SNR, gamma) * |x0 error|^2."""
    gamma = 5.0
    d = GaussianDiffusion(make_betas("linear", T), mean_type, min_snr_gamma=gamma)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(6, 16, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 16, 3, generator=g, dtype=torch.float64)
    delta = 0.1 * torch.randn(6, 16, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 20, 80, 200, 600, 999])  # SNR from ~1e4 to ~4e-5, across gamma
    ab = d.alphas_cumprod[t].view(-1, 1, 1)
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    x_t = alpha * x0 + sigma * noise

    def model(x, tt, cond):  # predicts x0 + delta, expressed as this mean type's output
        x0_hat = x0 + delta
        eps_hat = (x_t - alpha * x0_hat) / sigma
        return {"x0": x0_hat, "eps": eps_hat, "v": alpha * eps_hat - sigma * x0_hat}[mean_type]

    snr = (ab / (1 - ab)).flatten()
    want = snr.clamp(max=gamma) * delta.square().mean(dim=(1, 2))
    torch.testing.assert_close(d.loss(model, x0, t, None, noise=noise), want, rtol=1e-9, atol=0)


def test_completion_loss_keeps_fixed_points_clean_and_unscored():
    k = 5
    d = GaussianDiffusion(make_betas("linear", T))
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(3, 20, 3, generator=g)
    out = torch.randn(3, 20, 3, generator=g, requires_grad=True)
    seen = {}

    def model(x_t, t, cond):
        seen["x_t"], seen["t"] = x_t, t
        return out

    t = torch.tensor([0, 500, 999])
    loss = d.loss(model, x0, t, None, num_fixed=k, generator=g)
    loss.sum().backward()
    assert torch.equal(seen["x_t"][:, :k], x0[:, :k])  # fixed points reach the model clean
    assert not torch.allclose(seen["x_t"][:, k:], x0[:, k:])  # the others are noised
    assert seen["t"].dtype == torch.float32 and torch.equal(seen["t"], t.float())
    assert torch.equal(out.grad[:, :k], torch.zeros_like(out.grad[:, :k]))  # their predictions are unscored
    assert (out.grad[:, k:] != 0).all()
    # the loss averages over the free points only
    noise = torch.randn(3, 20 - k, 3, generator=g)
    zero = lambda x, tt, c: torch.zeros_like(x)  # noqa: E731
    torch.testing.assert_close(d.loss(zero, x0, t, None, noise=noise, num_fixed=k), noise.square().mean(dim=(1, 2)))
