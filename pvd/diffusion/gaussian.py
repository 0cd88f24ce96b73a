"""The Gaussian diffusion process of a discrete schedule, independent of any network.

``GaussianDiffusion`` holds the schedule's float64 tables and answers what losses and
samplers need: the forward process ``q_sample``, the true posterior ``q_posterior``, the
model's reverse step ``p_mean_variance`` and conversions between the model's target (eps, v
or x0) and x0 / eps. The model is an argument, ``model(x_t, t, cond) -> (B, N, 3)``, never an
attribute. Point clouds (B, N, 3) are the main case; any batch-first tensor works (the SDS
baseline's 2D prior diffuses images (B, C, H, W)), except fixed points, which need clouds.

Timesteps ``t`` are on the training scale 0..T-1. Tables are indexed at integer ``t``; a
solver that steps between them asks for ``alpha_sigma`` at fractional ``t``, defined by linear
interpolation of the log-SNR between neighbouring steps (``t_at_log_snr`` inverts it).

Fixed points (PVD shape completion): the first K points of a cloud are clean data that are
never noised and never scored; only the other N - K are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pvd.diffusion.schedules import log_snr as schedule_log_snr

MEAN_TYPES = ("eps", "v", "x0")
VAR_TYPES = ("fixedsmall", "fixedlarge")

Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class GaussianDiffusion:
    """Forward process, posterior and training loss of one schedule.

    betas: (T,) any float array, kept as float64. mean_type: what the model predicts, 'eps'
    (PVD), 'v' (Salimans & Ho 2022) or 'x0'. var_type: the reverse-step variance, 'fixedsmall'
    (the posterior's beta-tilde, PVD) or 'fixedlarge' (beta). min_snr_gamma: None for the plain
    MSE (PVD), else Min-SNR-gamma loss weights (Hang et al. 2023; gamma = 5 in the paper).
    """

    def __init__(self, betas, mean_type: str = "eps", var_type: str = "fixedsmall", min_snr_gamma: float | None = None):
        if mean_type not in MEAN_TYPES:
            raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")
        if var_type not in VAR_TYPES:
            raise ValueError(f"var_type must be one of {VAR_TYPES}, got {var_type!r}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not (np.all(betas > 0) and np.all(betas < 1)):
            raise ValueError("betas must be a 1-D array in (0, 1)")
        self.mean_type, self.var_type, self.min_snr_gamma = mean_type, var_type, min_snr_gamma
        self.num_steps = len(betas)

        f64 = _float64_tensor
        alphas_cumprod = np.cumprod(1 - betas)
        prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
        self.betas = f64(betas)
        self.alphas_cumprod = f64(alphas_cumprod)
        self.alphas_cumprod_prev = f64(prev)
        self.sqrt_alphas_cumprod = f64(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = f64(np.sqrt(1 - alphas_cumprod))
        self.log_snr = f64(schedule_log_snr(betas))  # log(alpha_bar / (1 - alpha_bar)), decreasing
        # Ho et al. 2020, Eq. 7: q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta-tilde)
        posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
        self.posterior_variance = f64(posterior_variance)
        # beta-tilde_0 = 0; PVD clips its log at 1e-20 (the last step adds no noise anyway)
        self.posterior_log_variance = f64(np.log(np.maximum(posterior_variance, 1e-20)))
        self.posterior_mean_coef1 = f64(betas * np.sqrt(prev) / (1 - alphas_cumprod))
        self.posterior_mean_coef2 = f64((1 - prev) * np.sqrt(1 - betas) / (1 - alphas_cumprod))
        if var_type == "fixedsmall":
            self.reverse_variance, self.reverse_log_variance = self.posterior_variance, self.posterior_log_variance
        else:  # beta_t, with beta-tilde_1 at t = 0 so that the log stays finite (improved-diffusion)
            large = np.concatenate([[posterior_variance[1] if len(betas) > 1 else betas[0]], betas[1:]])
            self.reverse_variance, self.reverse_log_variance = f64(large), f64(np.log(large))

    # ---------------------------------------------------------------------------------------
    # Tables at timesteps

    def on_device(self, table: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """One of this process's (T,) float64 tables, copied to ``device`` once and cached."""
        device = torch.device(device)
        if device.type == "cpu":
            return table
        cache = self.__dict__.setdefault("_device_tables", {})
        key = (id(table), device)
        if key not in cache:
            cache[key] = table.to(device)
        return cache[key]

    def _at(self, table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``table[t]`` for integer t (B,), as (B, 1, ...) broadcastable to x, in x's dtype and device.

        The gather happens on t's device: no host round trip (and no sync) when t lives on a GPU.
        """
        index = t.detach().round().long() if t.is_floating_point() else t.detach().long()
        _check_range(index, self.num_steps)
        values = self.on_device(table, index.device)[index]
        return values.to(device=x.device, dtype=x.dtype).view(-1, *[1] * (x.ndim - 1))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha = sqrt(alpha_bar) and sigma = sqrt(1 - alpha_bar) at t (B,), possibly fractional:
        (B,) float64 on t's device (log-SNR interpolated linearly between integer steps)."""
        if t.device.type == "cpu":
            lsnr = torch.from_numpy(np.interp(t.detach().double().numpy(), np.arange(self.num_steps), self.log_snr.numpy()))
        else:  # the same interpolation with device ops
            x = t.detach().double().clamp(0, self.num_steps - 1)
            lo = x.floor().long().clamp(max=max(self.num_steps - 2, 0))
            hi = (lo + 1).clamp(max=self.num_steps - 1)
            table = self.on_device(self.log_snr, t.device)
            lsnr = table[lo] + (x - lo) * (table[hi] - table[lo])
        return torch.sigmoid(lsnr).sqrt(), torch.sigmoid(-lsnr).sqrt()

    def t_at_log_snr(self, lsnr: np.ndarray) -> np.ndarray:
        """The fractional timesteps (float64) where the interpolated log-SNR equals ``lsnr``."""
        return np.interp(-np.asarray(lsnr, dtype=np.float64), -self.log_snr.numpy(), np.arange(self.num_steps, dtype=np.float64))

    def _alpha_sigma_like(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = self.alpha_sigma(t)
        shape = (-1, *[1] * (x.ndim - 1))
        return a.to(x.dtype).to(x.device).view(shape), s.to(x.dtype).to(x.device).view(shape)

    # ---------------------------------------------------------------------------------------
    # Forward process and posterior

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (Ho et al. 2020, Eq. 4).

        x0, noise: (B, N, 3); t: (B,) integer timesteps. Returns (B, N, 3) in x0's dtype.
        """
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean (B, N, 3), variance and log-variance (B, 1, 1) of q(x_{t-1} | x_t, x0) (Ho et al. 2020, Eqs. 6-7)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance, t, x_t)

    def p_mean_variance(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor):
        """The model's reverse step p(x_{t-1} | x_t): (mean, variance, log_variance, x0_pred).

        x_t, model_output: (B, N, 3); t: (B,) integer. The mean is the posterior mean at the
        predicted x0 (not clipped, as in PVD); the variance follows ``var_type``.
        """
        x0 = self.predict_x0(x_t, t, model_output)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return mean, self._at(self.reverse_variance, t, x_t), self._at(self.reverse_log_variance, t, x_t), x0

    # ---------------------------------------------------------------------------------------
    # Model targets

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """x0 implied by the model output at (x_t, t); t (B,) may be fractional. Shapes (B, N, 3)."""
        if self.mean_type == "x0":
            return model_output
        alpha, sigma = self._alpha_sigma_like(t, x_t)
        if self.mean_type == "eps":
            return (x_t - sigma * model_output) / alpha
        return alpha * x_t - sigma * model_output  # v = alpha eps - sigma x0

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """eps implied by the model output at (x_t, t); t (B,) may be fractional. Shapes (B, N, 3)."""
        if self.mean_type == "eps":
            return model_output
        alpha, sigma = self._alpha_sigma_like(t, x_t)
        if self.mean_type == "x0":
            return (x_t - alpha * model_output) / sigma
        return sigma * x_t + alpha * model_output

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model should output for x_t = q_sample(x0, t, noise): (B, N, 3)."""
        if self.mean_type == "eps":
            return noise
        if self.mean_type == "x0":
            return x0
        return self._at(self.sqrt_alphas_cumprod, t, x0) * noise - self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    # ---------------------------------------------------------------------------------------
    # Training

    def sample_t(self, batch_size: int, generator: torch.Generator | None = None, device=None,
                 t_max: int | None = None) -> torch.Tensor:
        """Timesteps drawn uniformly from 0..T-1 (PVD), or from 0..t_max (a stage that covers only
        the low-noise part, ``pvd.diffusion.hierarchy``): (batch_size,) long."""
        return torch.randint(0, self.timestep_count(t_max), (batch_size,), generator=generator, device=device)

    def timestep_count(self, t_max: int | None = None) -> int:
        """How many timesteps training draws from: t_max + 1 (all T when None); checks t_max."""
        high = self.num_steps if t_max is None else t_max + 1
        if not 1 <= high <= self.num_steps:
            raise ValueError(f"t_max must lie in 0..{self.num_steps - 1}, got {t_max}")
        return high

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weight (B,) float64 on t's device: 1, or Min-SNR-gamma (Hang et al. 2023, Eq. 10).

        Min-SNR weights the x0 error by min(SNR, gamma); in terms of the model's own target that
        is min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v.
        """
        if self.min_snr_gamma is None:
            return torch.ones(len(t), dtype=torch.float64, device=t.device)
        snr = self.on_device(self.log_snr, t.device)[t.detach().long()].exp()
        clipped = snr.clamp(max=self.min_snr_gamma)
        return {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[self.mean_type]

    def loss(self, model: Model, x0: torch.Tensor, t: torch.Tensor, cond: Any = None, *, noise: torch.Tensor | None = None,
             num_fixed: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample training loss (B,): weighted MSE between the model output and its target.

        x0: (B, N, 3) clean clouds; t: (B,) integer timesteps (``sample_t``); cond: passed to
        the model as is. num_fixed: the first K points stay clean in the model's input and are
        left out of the loss (shape completion); only the other N - K are noised and scored.
        noise: (B, N - K, 3), drawn with ``generator`` when None. Average the result for a
        scalar loss; keep it per sample to log the loss per timestep.
        """
        free = x0[:, num_fixed:]
        if noise is None:
            noise = torch.randn(free.shape, generator=generator, dtype=free.dtype, device=free.device)
        x_t = torch.cat([x0[:, :num_fixed], self.q_sample(free, t, noise)], dim=1)
        out = model(x_t, t.to(_time_dtype(x0)), cond)[:, num_fixed:]
        mse = (out - self.target(free, t, noise)).square().flatten(1).mean(dim=1)
        return mse * self.loss_weight(t).to(mse.dtype).to(mse.device)


def _check_range(index: torch.Tensor, num_steps: int) -> None:
    """Timesteps outside 0..T-1 raise RuntimeError; asynchronously on an accelerator, since reading
    the values back would stall the stream on every call."""
    torch._assert_async(((index >= 0) & (index < num_steps)).all(), f"timesteps must lie in 0..{num_steps - 1}")


def _float64_tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _time_dtype(x: torch.Tensor) -> torch.dtype:
    """Timesteps go to the model as float32, or float64 when the points are float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
