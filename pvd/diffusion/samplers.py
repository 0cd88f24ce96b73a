"""Samplers: short free functions over a ``GaussianDiffusion`` and any model callable.

Every sampler has the signature

    sampler(diffusion, model, shape, cond, *, generator, guidance_scale=1.0, fixed=None,
            progress=None, x_T=None, dtype=torch.float32, device=None, **its_own_options)
        -> (B, N, 3)

- ``model(x_t (B, N, 3), t (B,) float, cond) -> (B, N, 3)`` predicts ``diffusion.mean_type``;
  t is on the training scale 0..T-1, integer-valued for DDPM and DDIM, fractional for the
  DPM-Solver++ and Heun solvers (see ``GaussianDiffusion.alpha_sigma``).
- ``cond`` goes to the model untouched; guidance asks it for ``cond.null()`` and nothing else.
- ``guidance_scale`` s: classifier-free guidance (Ho & Salimans 2022),
  out = out_null + s (out_cond - out_null): one model call on the doubled batch when the
  condition's type has ``cat([cond, cond.null()])`` (``pvd.nn.condition.Condition`` does),
  else two calls. Guiding the raw output equals guiding eps for every mean type: eps, v and x0
  are affine in one another at fixed (x_t, t). s = 1 makes one plain call and is exactly
  conditional sampling; s = 0 is unconditional.
- ``fixed``: (B, K, 3) clean points (shape completion, PVD): the model sees them as the first
  K points of every step's input, only the other N - K are sampled, and the result starts
  with ``fixed`` unchanged.
- ``generator`` draws x_T (unless ``x_T`` (B, N - K, 3) is given) and all later noise, so a
  seed fixes the samples. ``progress(i, n)`` is called after step i of n.
- ``t_start``: run only the part t <= t_start of the process, from ``x_T`` taken as x at
  t_start (the hierarchy's refinement stage, ``pvd.diffusion.hierarchy``); None: from T-1.
- Arithmetic on the schedule is float64; the points stay in ``dtype``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pvd.diffusion.gaussian import GaussianDiffusion, Model, _time_dtype

Progress = Callable[[int, int], None]


def _start(shape, fixed, generator, x_T, dtype, device) -> tuple[torch.Tensor, int]:
    """x_T for the free points (B, N - K, 3) and K. Shapes other than clouds (images (B, C, H, W))
    work without fixed points."""
    shape = tuple(shape)
    k = 0 if fixed is None else fixed.shape[1]
    if fixed is not None and (len(shape) != 3 or fixed.shape[0] != shape[0] or fixed.shape[2] != shape[2] or k > shape[1]):
        raise ValueError(f"fixed points {tuple(fixed.shape)} do not fit samples of shape {shape}")
    free = (shape[0], shape[1] - k, *shape[2:])
    if x_T is not None:
        if tuple(x_T.shape) != free:
            raise ValueError(f"x_T must have shape {free}, got {tuple(x_T.shape)}")
        return x_T.to(dtype), k
    if device is None:
        device = fixed.device if fixed is not None else generator.device
    return torch.randn(free, generator=generator, dtype=dtype, device=device), k


def _first_step(diffusion: GaussianDiffusion, t_start: int | None, x_T) -> int:
    """The timestep the sampler starts from: T-1, or t_start, which needs the x it starts from."""
    if t_start is None:
        return diffusion.num_steps - 1
    if not 0 <= t_start < diffusion.num_steps:
        raise ValueError(f"t_start must lie in 0..{diffusion.num_steps - 1}, got {t_start}")
    if x_T is None:
        raise ValueError("t_start needs x_T, the cloud at t_start (noise alone is x at T-1)")
    return int(t_start)


def _model_output(model: Model, x: torch.Tensor, t: float, cond: Any, guidance_scale: float, fixed) -> torch.Tensor:
    """The (guided) model output for the free points x (B, N - K, 3) at timestep t."""
    x_in = x if fixed is None else torch.cat([fixed.to(x.dtype), x], dim=1)
    tt = torch.full((x.shape[0],), t, dtype=_time_dtype(x), device=x.device)
    if guidance_scale == 1.0:
        out = model(x_in, tt, cond)
    else:
        if not hasattr(cond, "null"):
            raise ValueError("classifier-free guidance needs a condition with a null() method")
        cat = getattr(type(cond), "cat", None)
        if cat is not None:  # one call on the doubled batch
            both = model(torch.cat([x_in, x_in]), torch.cat([tt, tt]), cat([cond, cond.null()]))
            out, out_null = both.chunk(2)
        else:
            out, out_null = model(x_in, tt, cond), model(x_in, tt, cond.null())
        out = out_null + guidance_scale * (out - out_null)
    return out if fixed is None else out[:, fixed.shape[1]:]


def _finish(x: torch.Tensor, fixed) -> torch.Tensor:
    return x if fixed is None else torch.cat([fixed.to(x.dtype), x], dim=1)


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def ddpm_sample(diffusion: GaussianDiffusion, model: Model, shape: tuple[int, int, int], cond: Any = None, *,
                generator: torch.Generator, guidance_scale: float = 1.0, fixed: torch.Tensor | None = None,
                progress: Progress | None = None, x_T: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                device=None, t_start: int | None = None) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2; PVD's sampler).

    x_{t-1} = posterior mean at the predicted x0 + sqrt(var_t) z, no noise at t = 0; var_t is
    beta-tilde ('fixedsmall') or beta ('fixedlarge').
    """
    x, _ = _start(shape, fixed, generator, x_T, dtype, device)
    first = _first_step(diffusion, t_start, x_T)
    n = first + 1
    for i, t in enumerate(range(first, -1, -1)):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        out = _model_output(model, x, t, cond, guidance_scale, fixed)
        mean, _, log_var, _ = diffusion.p_mean_variance(x, tt, out)
        x = mean + (0.5 * log_var).exp() * _noise(x, generator) if t > 0 else mean
        if progress is not None:
            progress(i + 1, n)
    return _finish(x, fixed)


def ddim_timesteps(num_steps: int, steps: int, t_start: int | None = None) -> list[int]:
    """``steps`` timesteps from t_start (default T-1) down, evenly spaced and "trailing" (Lin et al.
    2024, Table 2): (t_start + 1)/steps apart, the last at (t_start + 1)/steps - 1, so no call is spent
    at t = 0, where x_t is already x0 up to sqrt(1 - alpha_bar_0). Every step when steps = t_start + 1;
    e.g. T = 1000, steps 10: 999, 899, ..., 99."""
    span = num_steps if t_start is None else t_start + 1
    if not 1 <= span <= num_steps:
        raise ValueError(f"t_start must lie in 0..{num_steps - 1}, got {t_start}")
    if not 1 <= steps <= span:
        raise ValueError(f"steps must lie in 1..{span}, got {steps}")
    return [int(t) - 1 for t in np.round(np.linspace(span, 0, steps + 1))[:-1]]


def ddim_sample(diffusion: GaussianDiffusion, model: Model, shape: tuple[int, int, int], cond: Any = None, *,
                generator: torch.Generator, guidance_scale: float = 1.0, fixed: torch.Tensor | None = None,
                progress: Progress | None = None, x_T: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                device=None, steps: int = 50, eta: float = 0.0, t_start: int | None = None) -> torch.Tensor:
    """DDIM on a respaced subsequence of ``steps`` timesteps (Song et al. 2021, Eq. 12).

    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s z, with
    s = eta sqrt((1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)): eta = 0 is deterministic given
    x_T, eta = 1 is ancestral on the subsequence. The last step returns the predicted x0.
    """
    x, _ = _start(shape, fixed, generator, x_T, dtype, device)
    ts = ddim_timesteps(diffusion.num_steps, steps, _first_step(diffusion, t_start, x_T))
    ab = diffusion.alphas_cumprod
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        out = _model_output(model, x, t, cond, guidance_scale, fixed)
        x0, eps = diffusion.predict_x0(x, tt, out), diffusion.predict_eps(x, tt, out)
        a, a_prev = ab[t].item(), (ab[ts[i + 1]].item() if i + 1 < len(ts) else 1.0)
        s = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - s * s, 0.0)) * eps
        if s > 0:
            x = x + s * _noise(x, generator)
        if progress is not None:
            progress(i + 1, len(ts))
    return _finish(x, fixed)


def dpm_solver_pp_sample(diffusion: GaussianDiffusion, model: Model, shape: tuple[int, int, int], cond: Any = None, *,
                         generator: torch.Generator, guidance_scale: float = 1.0, fixed: torch.Tensor | None = None,
                         progress: Progress | None = None, x_T: torch.Tensor | None = None,
                         dtype: torch.dtype = torch.float32, device=None, steps: int = 25,
                         t_start: int | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): ``steps`` model calls.

    The calls sit at ``steps`` points uniform in lambda = log(alpha / sigma) from t = T-1 (or
    t_start) to t = 0 (fractional timesteps). Between them, with h_i = lambda_i - lambda_{i-1} and
    r = h_{i-1} / h_i: D = (1 + 1/(2r)) x0_{i-1} - 1/(2r) x0_{i-2},
    x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D. The first and the last
    update are first order (D = x0_{i-1}; the paper's lower-order final step, which keeps few-step
    runs stable), and the result is the x0 prediction of the last call, at t = 0 (one call: x0 from
    t = T-1). On Gaussian data (tests/test_diffusion_samplers.py) 10 calls give 0.999 of the true
    deviation; ending on x_0 after a second-order last step gave 1.03.
    """
    x, _ = _start(shape, fixed, generator, x_T, dtype, device)
    lsnr = diffusion.log_snr.numpy()
    lam = np.linspace(lsnr[_first_step(diffusion, t_start, x_T)], lsnr[0], steps) / 2  # lambda is half the log-SNR
    ts = diffusion.t_at_log_snr(2 * lam)
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-2 * lam))), np.sqrt(1 / (1 + np.exp(2 * lam)))
    x0_prev = None
    for i in range(steps):
        out = _model_output(model, x, ts[i], cond, guidance_scale, fixed)
        x0 = diffusion.predict_x0(x, torch.full((x.shape[0],), ts[i], dtype=torch.float64), out)
        if i == steps - 1:
            x = x0
        else:
            h = lam[i + 1] - lam[i]
            if x0_prev is None or i == steps - 2:
                d = x0
            else:
                r = (lam[i] - lam[i - 1]) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * d
            x0_prev = x0
        if progress is not None:
            progress(i + 1, steps)
    return _finish(x, fixed)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, Eq. 5: ``steps`` sigmas from sigma_max to sigma_min, then 0: (steps + 1,)."""
    i = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(sigmas, 0.0)


def heun_sample(diffusion: GaussianDiffusion, model: Model, shape: tuple[int, int, int], cond: Any = None, *,
                generator: torch.Generator, guidance_scale: float = 1.0, fixed: torch.Tensor | None = None,
                progress: Progress | None = None, x_T: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                device=None, steps: int = 25, rho: float = 7.0, t_start: int | None = None) -> torch.Tensor:
    """Heun's 2nd-order ODE solver on Karras sigmas (Karras et al. 2022, Algorithm 1, no churn).

    Works on x / alpha, whose noise level is sigma_K = sigma / alpha = exp(-lambda), between the
    schedule's own values at t = T-1 (or t_start) and t = 0; 2 * steps - 1 model calls. D(x, sigma_K) is
    the predicted x0; dx/dsigma_K = (x - D) / sigma_K; the last step (to 0) is Euler.
    """
    x, _ = _start(shape, fixed, generator, x_T, dtype, device)
    lsnr = diffusion.log_snr.numpy()
    sigmas = karras_sigmas(math.exp(-lsnr[0] / 2), math.exp(-lsnr[_first_step(diffusion, t_start, x_T)] / 2), steps, rho)
    ts = diffusion.t_at_log_snr(-2 * np.log(sigmas[:-1]))

    def denoise(x_k: torch.Tensor, i: int) -> torch.Tensor:  # D(x_k, sigmas[i])
        alpha = 1 / math.sqrt(1 + sigmas[i] ** 2)
        x_vp = alpha * x_k
        out = _model_output(model, x_vp, ts[i], cond, guidance_scale, fixed)
        return diffusion.predict_x0(x_vp, torch.full((x.shape[0],), ts[i], dtype=torch.float64), out)

    x = x * math.sqrt(1 + sigmas[0] ** 2)  # x_T ~ N(0, 1) in VP form is x_T / alpha here
    for i in range(steps):
        dt = sigmas[i + 1] - sigmas[i]
        d = (x - denoise(x, i)) / sigmas[i]
        x_next = x + dt * d
        if sigmas[i + 1] > 0:
            d_next = (x_next - denoise(x_next, i + 1)) / sigmas[i + 1]
            x_next = x + dt * (d + d_next) / 2
        x = x_next
        if progress is not None:
            progress(i + 1, steps)
    return _finish(x, fixed)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm++2m": dpm_solver_pp_sample,
    "heun": heun_sample,
}
