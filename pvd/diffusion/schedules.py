"""Named noise schedules, in float64: ``make_betas(name, num_steps, **options)``.

Step ``t`` (0..T-1) of a schedule has ``alpha_bar[t] = prod_{s<=t} (1 - betas[s])``, so
``x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps``. The log signal-to-noise ratio
``log_snr[t] = log(alpha_bar[t] / (1 - alpha_bar[t]))`` is what the resolution shift moves.

Resolution shift (Hoogeboom, Heek, Salimans 2023, "simple diffusion", Sec. 3.1; Chen 2023,
"On the importance of noise scheduling"): a denoiser can average the noise of neighbouring
elements, so the same per-element noise destroys less of a signal sampled more densely. For a
d x d image they shift the schedule tuned at 64 x 64 by ``log_snr += 2 log(64 / d)``, which is
``log(n_ref / n)`` in element counts. A surface sampled with N points has ~N points per unit
area, so a local average over a fixed patch has noise variance ~1/N: we use the same law in
point counts,

    log_snr_N(t) = log_snr_base(t) + log(n_ref / N),

with n_ref = 2048, the point count PVD's linear schedule was tuned for. A 512-point stage
thus gets +log 4 = +1.39 (less noise at every step), an 8192-point one -1.39.
"""

from __future__ import annotations

import math

import numpy as np

MAX_BETA = 0.999  # Nichol & Dhariwal's cap: a beta of 1 would make the last step singular
REF_POINTS = 2048  # the point count PVD's schedules were tuned for


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """PVD / DDPM (Ho et al. 2020): betas evenly spaced from ``beta_start`` to ``beta_end``.

    Not rescaled by 1000 / T (improved-diffusion does; PVD does not).
    """
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def warmup_betas(num_steps: int, beta_start: float = 1e-5, beta_end: float = 0.008, warmup: float = 0.1) -> np.ndarray:
    """PVD's ``warm0.1`` (its airplane schedule): linear over the first 10% of steps, then constant."""
    betas = np.full(num_steps, beta_end, dtype=np.float64)
    n = int(num_steps * warmup)
    betas[:n] = np.linspace(beta_start, beta_end, n, dtype=np.float64)
    return betas


def cosine_betas(num_steps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal 2021, Eq. 17: alpha_bar(u) = f(u) / f(0), f(u) = cos((u + s) / (1 + s) * pi/2)^2.

    ``alpha_bar[t] = f((t + 1) / T) / f(0)``; betas are capped at ``MAX_BETA``.
    """
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1 - f[1:] / f[:-1], MAX_BETA)


def betas_from_alpha_bar(alpha_bar: np.ndarray) -> np.ndarray:
    """The betas of a decreasing ``alpha_bar`` (T,), capped at ``MAX_BETA``."""
    prev = np.concatenate([[1.0], alpha_bar[:-1]])
    return np.minimum(1 - alpha_bar / prev, MAX_BETA)


def log_snr(betas: np.ndarray) -> np.ndarray:
    """log(alpha_bar / (1 - alpha_bar)) per step, (T,) float64, computed without cancellation."""
    log_alpha_bar = np.cumsum(np.log1p(-np.asarray(betas, dtype=np.float64)))
    return log_alpha_bar - np.log(-np.expm1(log_alpha_bar))


def shifted_betas(num_steps: int, base: str = "linear", shift: float = 0.0, **base_options) -> np.ndarray:
    """The ``base`` schedule with its log-SNR moved by ``shift`` at every step (see the module doc)."""
    if base == "shifted":
        raise ValueError("the base of a shifted schedule cannot itself be 'shifted'")
    lsnr = log_snr(make_betas(base, num_steps, **base_options)) + shift
    alpha_bar = 1 / (1 + np.exp(-lsnr))  # sigmoid
    return betas_from_alpha_bar(alpha_bar)


def resolution_shift(num_points: int, ref_points: int = REF_POINTS) -> float:
    """The log-SNR shift for a cloud of ``num_points``: log(ref_points / num_points)."""
    return math.log(ref_points / num_points)


SCHEDULES = {
    "linear": linear_betas,
    "warm0.1": warmup_betas,
    "cosine": cosine_betas,
    "shifted": shifted_betas,
}


def make_betas(name: str, num_steps: int, **options) -> np.ndarray:
    """Betas (num_steps,) float64 of the schedule ``name`` (a key of ``SCHEDULES``).

    ``options`` go to the schedule's function, e.g. ``make_betas("linear", 1000,
    beta_end=0.01)`` or ``make_betas("shifted", 1000, base="cosine", shift=math.log(4))``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    betas = SCHEDULES[name](num_steps, **options)
    if not (np.all(betas > 0) and np.all(betas < 1)):
        raise ValueError(f"schedule {name!r} with {options} has betas outside (0, 1)")
    return betas
