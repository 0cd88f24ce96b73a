"""Samplers against the exact denoiser of Gaussian data, whose samples follow a known recursion.

For data x0 ~ N(mu, s^2), independently per coordinate, the optimal predictions at noise level
(alpha, sigma) are affine in x_t: E[x0 | x_t] = mu + k (x_t - alpha mu), k = alpha s^2 / (alpha^2
s^2 + sigma^2). Every sampler step is then affine in x plus fresh Gaussian noise, so the output
is x = A x_T + B + (noise of variance W) with x_T ~ N(0, 1): mean B, deviation sqrt(A^2 + W).
The recursions below are written from the papers, independently of pvd.diffusion.samplers.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from pvd.diffusion import GaussianDiffusion, make_betas
from pvd.diffusion.samplers import SAMPLERS, ddim_sample, ddpm_sample, dpm_solver_pp_sample, heun_sample

from condition_stub import Cond  # tests/condition_stub.py: the condition contract, minimal

MU, S = 0.7, 0.3  # data mean and deviation (the issue's acceptance values)
T = 1000
BETAS = np.linspace(1e-4, 0.02, T)  # PVD's linear schedule, written out here


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def cond_for(batch):
    return Cond(drop=torch.zeros(batch, dtype=torch.bool))


class GaussianDataModel:
    """The exact eps / v / x0 predictor for x0 ~ N(mu, s^2) per coordinate (mu_null when dropped).

    Fractional t: log-SNR interpolated linearly between integer steps (the documented convention).
    """

    def __init__(self, betas, mean_type="eps", mu=MU, s=S, mu_null=MU):
        alpha_bar = np.cumprod(1 - np.asarray(betas, dtype=np.float64))
        self.log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)
        self.mean_type, self.mu, self.s, self.mu_null = mean_type, mu, s, mu_null
        self.calls = 0

    def __call__(self, x, t, cond):
        self.calls += 1
        assert x.dim() == 3 and t.shape == (x.shape[0],) and t.is_floating_point()
        lsnr = torch.from_numpy(np.interp(t.double().numpy(), np.arange(len(self.log_snr)), self.log_snr)).view(-1, 1, 1)
        ab = torch.sigmoid(lsnr)
        alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
        mu = torch.full_like(alpha, self.mu)
        if cond is not None and cond.drop is not None:
            mu = torch.where(cond.drop.view(-1, 1, 1), torch.full_like(mu, self.mu_null), mu)
        xd = x.double()
        denom = ab * self.s ** 2 + 1 - ab
        x0 = mu + alpha * self.s ** 2 * (xd - alpha * mu) / denom
        eps = sigma * (xd - alpha * mu) / denom
        out = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[self.mean_type]
        return out.to(x.dtype)


# ------------------------------------------------------------------------------------------
# Closed-form recursions: each returns (A, B, W) of the output x = A x_T + B + N(0, W)


def x0_affine(alpha_bar, mu=MU, s=S):
    """E[x0 | x] = k x + c at alpha_bar."""
    alpha = math.sqrt(alpha_bar)
    k = alpha * s * s / (alpha_bar * s * s + 1 - alpha_bar)
    return k, mu * (1 - k * alpha)


def ref_ddpm(betas, var_type, mu=MU):
    """Ho et al. 2020: x_{t-1} = c1 x0_hat + c2 x_t + sqrt(var) z."""
    ab = np.cumprod(1 - betas)
    A, B, W = 1.0, 0.0, 0.0
    for t in range(len(betas) - 1, -1, -1):
        ab_prev = ab[t - 1] if t > 0 else 1.0
        c1 = math.sqrt(ab_prev) * betas[t] / (1 - ab[t])
        c2 = math.sqrt(1 - betas[t]) * (1 - ab_prev) / (1 - ab[t])
        var = 0.0 if t == 0 else (betas[t] * (1 - ab_prev) / (1 - ab[t]) if var_type == "fixedsmall" else betas[t])
        k, c = x0_affine(ab[t], mu)
        slope = c1 * k + c2
        A, B, W = slope * A, slope * B + c1 * c, slope * slope * W + var
    return A, B, W


def ref_ddim(betas, steps, eta=0.0, mu=MU):
    """Song et al. 2021, Eq. 12, on the trailing timesteps T - 1 - round(j T / steps), j < steps."""
    ab = np.cumprod(1 - betas)
    n = len(betas)
    ts = [n - 1 - int(round(j * n / steps)) for j in range(steps)]
    A, B, W = 1.0, 0.0, 0.0
    for i, t in enumerate(ts):
        a, a_prev = ab[t], (ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        sig = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        k, c = x0_affine(a, mu)
        # eps_hat = (x - sqrt(a) x0_hat) / sqrt(1 - a); x' = sqrt(a_prev) x0_hat + d eps_hat + sig z
        d = math.sqrt(1 - a_prev - sig * sig)
        cx0 = math.sqrt(a_prev) - d * math.sqrt(a) / math.sqrt(1 - a)
        slope, const = cx0 * k + d / math.sqrt(1 - a), cx0 * c
        A, B, W = slope * A, slope * B + const, slope * slope * W + sig * sig
    return A, B, W


def ref_dpm_solver_2m(betas, steps, mu=MU):
    """Lu et al. 2022 (DPM-Solver++), Algorithm 2: calls at ``steps`` lambda-uniform points from
    t = T-1 to t = 0, first-order first and last updates, the result the last call's x0."""
    ab = np.cumprod(1 - betas)
    lam = np.linspace(0.5 * np.log(ab[-1] / (1 - ab[-1])), 0.5 * np.log(ab[0] / (1 - ab[0])), steps)
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-2 * lam))), np.sqrt(1 / (1 + np.exp(2 * lam)))
    x = np.array([1.0, 0.0])  # (A, B)
    prev = None
    for i in range(steps):
        k, c = x0_affine(alpha[i] ** 2, mu)
        x0 = np.array([k * x[0], k * x[1] + c])
        if i == steps - 1:
            return x0[0], x0[1], 0.0
        h = lam[i + 1] - lam[i]
        if prev is None or i == steps - 2:
            D = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (np.exp(-h) - 1) * D
        prev = x0


def ref_heun(betas, steps, rho=7.0, mu=MU):
    """Karras et al. 2022, Algorithm 1 (no churn) on x / alpha, sigma_K = sqrt((1 - ab) / ab)."""
    ab = np.cumprod(1 - betas)
    smax, smin = math.sqrt((1 - ab[-1]) / ab[-1]), math.sqrt((1 - ab[0]) / ab[0])
    i = np.arange(steps) / (steps - 1)
    sig = np.append((smax ** (1 / rho) + i * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho, 0.0)

    def denoised(x, s):  # D(x_K, s) with x_VP = x_K / sqrt(1 + s^2)
        a_bar = 1 / (1 + s * s)
        k, c = x0_affine(a_bar, mu)
        return np.array([k * math.sqrt(a_bar) * x[0], k * math.sqrt(a_bar) * x[1] + c])

    x = np.array([math.sqrt(1 + smax * smax), 0.0])
    for j in range(steps):
        d = (x - denoised(x, sig[j])) / sig[j]
        y = x + (sig[j + 1] - sig[j]) * d
        if sig[j + 1] > 0:
            d2 = (y - denoised(y, sig[j + 1])) / sig[j + 1]
            y = x + (sig[j + 1] - sig[j]) * (d + d2) / 2
        x = y
    return x[0], x[1], 0.0


# ------------------------------------------------------------------------------------------
# Statistics of many samples against the closed form

SHAPE = (20, 1000, 3)  # 60,000 scalars: the std's standard error is 0.3%, the mean's 0.0012

CASES = {
    "ddpm-fixedsmall": (dict(fn=ddpm_sample, var_type="fixedsmall"), lambda: ref_ddpm(BETAS, "fixedsmall")),
    "ddpm-fixedlarge": (dict(fn=ddpm_sample, var_type="fixedlarge"), lambda: ref_ddpm(BETAS, "fixedlarge")),
    "ddim-10": (dict(fn=ddim_sample, steps=10), lambda: ref_ddim(BETAS, 10)),
    "ddim-50": (dict(fn=ddim_sample, steps=50), lambda: ref_ddim(BETAS, 50)),
    "ddim-250": (dict(fn=ddim_sample, steps=250), lambda: ref_ddim(BETAS, 250)),
    "ddim-50-eta1": (dict(fn=ddim_sample, steps=50, eta=1.0), lambda: ref_ddim(BETAS, 50, eta=1.0)),
    "dpm++2m-10": (dict(fn=dpm_solver_pp_sample, steps=10), lambda: ref_dpm_solver_2m(BETAS, 10)),
    "dpm++2m-25": (dict(fn=dpm_solver_pp_sample, steps=25), lambda: ref_dpm_solver_2m(BETAS, 25)),
    "heun-10": (dict(fn=heun_sample, steps=10), lambda: ref_heun(BETAS, 10)),
    "heun-25": (dict(fn=heun_sample, steps=25), lambda: ref_heun(BETAS, 25)),
}


def run_case(name, seed=0, shape=SHAPE):
    options, _ = CASES[name]
    options = dict(options)
    fn, var_type = options.pop("fn"), options.pop("var_type", "fixedsmall")
    diffusion = GaussianDiffusion(BETAS, "eps", var_type)
    model = GaussianDataModel(BETAS)
    g = torch.Generator().manual_seed(seed)
    return fn(diffusion, model, shape, cond_for(shape[0]), generator=g, **options)


@pytest.fixture(scope="module")
def measured():
    """(mean, std) of each case's samples and its closed form (mean, std)."""
    out = {}
    for name, (_, ref) in CASES.items():
        x = run_case(name).double()
        A, B, W = ref()
        out[name] = (x.mean().item(), x.std().item(), B, math.sqrt(A * A + W))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_sampler_matches_closed_form(measured, name):
    mean, std, ref_mean, ref_std = measured[name]
    print(f"{name}: mean {mean:.4f} (closed form {ref_mean:.4f}), std/s {std / S:.4f} (closed form {ref_std / S:.4f})")
    assert abs(mean - ref_mean) < 0.02
    assert abs(std / ref_std - 1) < 0.02


def test_closed_forms_are_what_the_issues_describe():
    """The recursions reproduce the issues' figures: fixedlarge lands on s; DDIM shrinks (0.615 s at
    10 trailing steps, ~0.91 s at 50) whatever its spacing; DPM-Solver++(2M) ending on x0 after a
    first-order last step is at s within 1% from 10 calls."""
    std = lambda abw: math.sqrt(abw[0] ** 2 + abw[2])  # noqa: E731
    assert abs(std(ref_ddpm(BETAS, "fixedlarge")) / S - 1) < 0.01
    assert 0.60 < std(ref_ddim(BETAS, 10)) / S < 0.63
    assert 0.9 < std(ref_ddim(BETAS, 50)) / S < 0.93
    assert std(ref_ddpm(BETAS, "fixedsmall")) / S < 0.99  # fixedsmall shrinks too
    assert abs(std(ref_dpm_solver_2m(BETAS, 10)) / S - 1) < 0.01
    assert 1.25 < std(ref_heun(BETAS, 10)) / S < 1.32  # 19 calls from sigma_max ~ 156: overshoots


@pytest.mark.parametrize("name", ["dpm++2m-10", "dpm++2m-25"])
def test_the_few_step_solver_keeps_the_data_spread(measured, name):
    """Against the data itself, not the recursion: if DPM-Solver++ shrank (or inflated) the samples
    by more than 3% at 10 or 25 calls it would fail here even with a closed form that agrees.
    DDIM shrinks at these counts and Heun on Karras sigmas overshoots at 10 steps (see
    test_closed_forms_are_what_the_issues_describe), so neither is the few-step recommendation."""
    mean, std, _, _ = measured[name]
    assert abs(std / S - 1) < 0.03, (name, std / S)
    assert abs(mean - MU) < 0.02, (name, mean)


def test_more_steps_and_higher_order_approach_the_data(measured):
    err = {name: abs(measured[name][1] / S - 1) for name in measured}
    assert err["ddim-250"] < err["ddim-50"]  # DDIM 50 -> 250 approaches s
    assert err["dpm++2m-25"] < err["ddim-50"]  # the 2nd-order solver at 25 steps beats DDIM at 50
    assert err["heun-25"] < err["ddim-50"]
    assert err["ddpm-fixedlarge"] < err["ddpm-fixedsmall"]


# ------------------------------------------------------------------------------------------
# Deterministic samplers are exactly affine in x_T: check every sample, for every target


@pytest.mark.parametrize("mean_type", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "warm0.1"])
@pytest.mark.parametrize("sampler", ["ddim-20", "dpm++2m-10", "heun-8"])
def test_deterministic_samplers_are_the_exact_affine_map(sampler, schedule, mean_type):
    betas = make_betas(schedule, T)
    kind, steps = sampler.rsplit("-", 1)
    steps = int(steps)
    fn, ref = {"ddim": (ddim_sample, ref_ddim), "dpm++2m": (dpm_solver_pp_sample, ref_dpm_solver_2m),
               "heun": (heun_sample, ref_heun)}[kind]
    A, B, _ = ref(betas, steps)
    x_T = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = fn(GaussianDiffusion(betas, mean_type), GaussianDataModel(betas, mean_type), (2, 50, 3), cond_for(2),
             generator=torch.Generator().manual_seed(2), x_T=x_T, dtype=torch.float64, steps=steps)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, A * x_T + B, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Guidance, fixed points, seeds, determinism

SMALL = (3, 40, 3)
ALL = {
    "ddpm": dict(),
    "ddim": dict(steps=10),
    "ddim-eta1": dict(steps=10, eta=1.0),
    "dpm++2m": dict(steps=6),
    "heun": dict(steps=4),
}


def sampler_fn(name):
    return SAMPLERS[name.split("-")[0]]


@pytest.mark.parametrize("name", list(ALL))
def test_guidance_scale_one_is_conditional_sampling(name):
    """Scale 1 makes one call per step with cond and never builds the null condition."""

    class NoNull(Cond):
        def null(self):
            raise AssertionError("scale 1 must not ask for the null condition")

    diffusion = GaussianDiffusion(BETAS)
    model = GaussianDataModel(BETAS, mu_null=-1.0)
    out = {}
    for scale in (1.0, None):
        g = torch.Generator().manual_seed(5)
        kwargs = {} if scale is None else {"guidance_scale": scale}
        out[scale] = sampler_fn(name)(diffusion, model, SMALL, NoNull(drop=torch.zeros(3, dtype=torch.bool)),
                                      generator=g, **kwargs, **ALL[name])
    assert torch.equal(out[1.0], out[None])


@pytest.mark.parametrize("scale", [0.0, 2.0, 3.5])
@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_guidance_extrapolates_between_null_and_conditional(sampler, scale):
    """For Gaussian data eps is affine in the data mean, so guidance s samples mean m0 + s (m1 - m0) exactly."""
    mu_cond, mu_null = 0.7, 0.3
    fn, ref, steps = {"ddim": (ddim_sample, ref_ddim, 20), "dpm++2m": (dpm_solver_pp_sample, ref_dpm_solver_2m, 10)}[sampler]
    A, B, _ = ref(BETAS, steps, mu=mu_null + scale * (mu_cond - mu_null))
    x_T = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = GaussianDataModel(BETAS, mu=mu_cond, mu_null=mu_null)
    out = fn(GaussianDiffusion(BETAS), model, (2, 30, 3), cond_for(2), generator=torch.Generator(), x_T=x_T,
             dtype=torch.float64, steps=steps, guidance_scale=scale)
    torch.testing.assert_close(out, A * x_T + B, rtol=1e-6, atol=1e-6)
    assert model.calls == 2 * steps  # one cond and one null call per step

    @dataclasses.dataclass
    class Batchable(Cond):
        @staticmethod
        def cat(conds):
            return Batchable(drop=torch.cat([c.drop for c in conds]))

    model = GaussianDataModel(BETAS, mu=mu_cond, mu_null=mu_null)
    batched = fn(GaussianDiffusion(BETAS), model, (2, 30, 3), Batchable(drop=torch.zeros(2, dtype=torch.bool)),
                 generator=torch.Generator(), x_T=x_T, dtype=torch.float64, steps=steps, guidance_scale=scale)
    torch.testing.assert_close(batched, out, rtol=1e-12, atol=1e-12)
    assert model.calls == steps  # cond and null in one call on the doubled batch


@pytest.mark.parametrize("name", list(ALL))
def test_fixed_points_come_back_unchanged_and_are_seen(name):
    k = 7
    fixed = torch.randn(SMALL[0], k, 3, generator=torch.Generator().manual_seed(9))
    seen = []

    def model(x, t, cond):
        seen.append(torch.equal(x[:, :k], fixed))
        return GaussianDataModel(BETAS)(x, t, cond)

    out = sampler_fn(name)(GaussianDiffusion(BETAS), model, SMALL, cond_for(3), generator=torch.Generator().manual_seed(0),
                           fixed=fixed, **ALL[name])
    assert out.shape == SMALL
    assert torch.equal(out[:, :k], fixed)
    assert seen and all(seen)
    # the exact model treats points independently, so the free points are what sampling them alone gives
    alone = sampler_fn(name)(GaussianDiffusion(BETAS), GaussianDataModel(BETAS), (SMALL[0], SMALL[1] - k, 3), cond_for(3),
                             generator=torch.Generator().manual_seed(0), **ALL[name])
    torch.testing.assert_close(out[:, k:], alone)


@pytest.mark.parametrize("name", list(ALL))
def test_same_seed_same_samples(name):
    diffusion, model = GaussianDiffusion(BETAS), GaussianDataModel(BETAS)
    run = lambda seed: sampler_fn(name)(diffusion, model, SMALL, cond_for(3),  # noqa: E731
                                        generator=torch.Generator().manual_seed(seed), **ALL[name])
    assert torch.equal(run(4), run(4))
    assert not torch.allclose(run(4), run(5))


@pytest.mark.parametrize("name", ["ddim", "ddim-eta1", "ddpm"])
def test_ddim_eta0_is_deterministic_given_x_T(name):
    diffusion, model = GaussianDiffusion(BETAS), GaussianDataModel(BETAS)
    x_T = torch.randn(SMALL[0], SMALL[1], 3, generator=torch.Generator().manual_seed(1))
    a, b = (sampler_fn(name)(diffusion, model, SMALL, cond_for(3), generator=torch.Generator().manual_seed(seed),
                             x_T=x_T, **ALL[name]) for seed in (1, 2))
    assert torch.equal(a, b) == (name == "ddim")  # the stochastic samplers do use the generator


@pytest.mark.parametrize("var_type", ["fixedsmall", "fixedlarge"])
def test_ddpm_last_step_returns_the_predicted_x0(var_type):
    betas = make_betas("linear", 10, beta_end=0.5)
    x0_model = lambda x, t, cond: torch.full_like(x, 0.5)  # noqa: E731
    out = ddpm_sample(GaussianDiffusion(betas, "x0", var_type), x0_model, SMALL, None, generator=torch.Generator())
    assert torch.equal(out, torch.full(SMALL, 0.5))


def test_progress_and_timesteps():
    ts, reports = [], []

    def model(x, t, cond):
        ts.append(t[0].item())
        return torch.zeros_like(x)

    ddim_sample(GaussianDiffusion(BETAS), model, SMALL, None, generator=torch.Generator(), steps=5,
                progress=lambda i, n: reports.append((i, n)))
    assert ts == [999, 799, 599, 399, 199]  # trailing: T/5 apart, no call at t = 0 (training scale)
    assert reports == [(i, 5) for i in range(1, 6)]
    ts.clear()
    ddim_sample(GaussianDiffusion(BETAS), model, SMALL, None, generator=torch.Generator(), steps=T)
    assert ts == list(range(T - 1, -1, -1))  # all T steps: the full chain
    ts.clear()
    dpm_solver_pp_sample(GaussianDiffusion(BETAS), model, SMALL, None, generator=torch.Generator(), steps=4)
    assert len(ts) == 4 and ts[0] == pytest.approx(999) and ts[-1] == pytest.approx(0, abs=1e-9)
    assert ts == sorted(ts, reverse=True)
    ts.clear()
    dpm_solver_pp_sample(GaussianDiffusion(BETAS), model, SMALL, None, generator=torch.Generator(), steps=1)
    assert ts == [pytest.approx(999)]  # one call: the x0 prediction from pure noise


def test_samples_stay_in_the_points_dtype():
    model = GaussianDataModel(BETAS)
    for dtype in (torch.float32, torch.float64):
        out = heun_sample(GaussianDiffusion(BETAS), model, SMALL, None, generator=torch.Generator(), steps=3, dtype=dtype)
        assert out.dtype == dtype
