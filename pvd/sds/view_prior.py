"""What lifting asks of a 2D prior: the ``ViewPrior`` protocol, and pvd's trained prior behind it.

Every lifting method (score distillation, multi-view generation then reconstruction, the
two-stage refinement) talks to its prior through this protocol only, so a user can wrap a
prior of their own (a local Zero-1-to-3 or any view-conditioned image diffusion) in a small
class with two attributes and one method:

    class MyPrior:
        image_size = 256                              # it denoises (B, 4, 256, 256) views
        alphas_cumprod = my_schedule_alphas_cumprod   # (T,) float64, its noise schedule

        def predict_noise(self, x_t, t, input_view, cameras, guidance):
            rel = relative_camera(cameras)            # (B, 4) pose change, if it wants that
            return my_model_eps(x_t, t, input_view, rel, guidance)

Images are (B, 4, S, S) in [-1, 1]: RGB composited on white, then alpha (see
:func:`pvd.sds.prior.to_prior_image`); an RGB-only prior can return zeros' worth of noise for
alpha (the lifting code scores all four channels). ``cameras`` (B, 6) holds the input's and
the wanted view's orbit cameras (:func:`pvd.sds.prior.camera_pair`), so a prior conditioned on
the relative pose and one conditioned on world-frame poses fit the same call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from pvd.diffusion import GaussianDiffusion, ddim_sample
from pvd.sds.prior import PriorTrainConfig, ViewCondition, ViewUNet, load_prior, predict_eps


@runtime_checkable
class ViewPrior(Protocol):
    """A view-conditioned image diffusion model, as lifting sees it."""

    image_size: int  # S: the side of the square views it denoises
    alphas_cumprod: Tensor  # (T,) float64: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise at timestep t

    def predict_noise(self, x_t: Tensor, t: Tensor, input_view: Tensor, cameras: Tensor, guidance: float) -> Tensor:
        """The classifier-free-guided noise prediction (B, 4, S, S).

        x_t: (B, 4, S, S) noisy views of the wanted cameras; t: (B,) integer timesteps 0..T-1;
        input_view: (B, 4, S, S) the conditioning view; cameras: (B, 6) input and wanted camera;
        guidance: 1 is the plain conditional model. No gradient is taken through it.
        """
        ...


def noise_process(prior: ViewPrior) -> GaussianDiffusion:
    """The prior's forward process as a :class:`GaussianDiffusion` whose 'model' predicts eps:
    q_sample for noising renderings, the tables for SDS weights, DDIM for sampling views."""
    ac = torch.as_tensor(prior.alphas_cumprod, dtype=torch.float64).cpu()
    if ac.ndim != 1 or len(ac) < 2 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
        raise ValueError("a prior's alphas_cumprod must be a decreasing (T,) sequence in (0, 1)")
    betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    return GaussianDiffusion(betas.numpy(), mean_type="eps")


@dataclass
class TrainedViewPrior:
    """pvd's own prior (:class:`pvd.sds.prior.ViewUNet`, trained by ``python -m pvd.sds.train_prior``)
    as a :class:`ViewPrior`."""

    model: ViewUNet
    diffusion: GaussianDiffusion
    config: PriorTrainConfig

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedViewPrior:
        """From a checkpoint file or a run directory's newest checkpoint (EMA weights, eval mode)."""
        return cls(*load_prior(path, map_location=device))

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.diffusion.alphas_cumprod

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, input_view: Tensor, cameras: Tensor, guidance: float) -> Tensor:
        cond = ViewCondition(input_view.to(x_t.dtype), cameras.to(x_t.device))
        return predict_eps(self.model, self.diffusion, x_t, t.to(x_t.device), cond, guidance)


@torch.no_grad()
def sample_views(prior: ViewPrior, input_view: Tensor, cameras: Tensor, *, steps: int = 50, guidance: float = 3.0,
                 generator: torch.Generator, eta: float = 0.0, x_T: Tensor | None = None) -> Tensor:
    """Views (B, 4, S, S) in [-1, 1] of ``input_view`` (B, 4, S, S) seen from the wanted camera of
    ``cameras`` (B, 6), by guided DDIM on ``steps`` timesteps (Song et al. 2021); ``x_T``: the
    starting noise (B, 4, S, S), drawn from ``generator`` when None."""
    _check_views(prior, input_view, cameras)
    return _ddim(prior, noise_process(prior), input_view, cameras, steps, guidance, generator, eta, x_T, None)


@torch.no_grad()
def edit_views(prior: ViewPrior, views: Tensor, input_view: Tensor, cameras: Tensor, *, strength: float,
               steps: int, guidance: float = 3.0, generator: torch.Generator) -> Tensor:
    """SDEdit (Meng et al. 2022): ``views`` (B, 4, S, S) in [-1, 1], rendered from the wanted
    cameras of ``cameras`` (B, 6), noised to t = strength (T - 1) and denoised by guided DDIM in
    ``steps`` calls, conditioned on ``input_view`` (B, 4, S, S). Returns (B, 4, S, S) in [-1, 1]:
    the prior's nearest plausible view, which keeps the layout of ``views`` above the noise level
    and redraws the detail below it. The noise comes from ``generator`` on the views' device."""
    _check_views(prior, input_view, cameras)
    if views.shape != input_view.shape:
        raise ValueError(f"edit_views takes views shaped like the input views, got {tuple(views.shape)}")
    if not 0 < strength < 1:
        raise ValueError(f"edit_views needs a strength in (0, 1), got {strength}")
    process = noise_process(prior)
    t_start = round(strength * (process.num_steps - 1))
    noise = torch.randn(views.shape, generator=generator, dtype=views.dtype, device=views.device)
    x_t = process.q_sample(views, torch.full((len(views),), t_start, device=views.device), noise)
    return _ddim(prior, process, input_view, cameras, steps, guidance, generator, 0.0, x_t, t_start)


def _check_views(prior: ViewPrior, input_view: Tensor, cameras: Tensor) -> None:
    s = prior.image_size
    if input_view.ndim != 4 or input_view.shape[1:] != (4, s, s) or cameras.shape != (input_view.shape[0], 6):
        raise ValueError(f"the prior's views need input views (B, 4, {s}, {s}) and cameras (B, 6); got "
                         f"{tuple(input_view.shape)} and {tuple(cameras.shape)}")


def _ddim(prior: ViewPrior, process: GaussianDiffusion, input_view: Tensor, cameras: Tensor, steps: int, guidance: float,
          generator: torch.Generator, eta: float, x_T: Tensor | None, t_start: int | None) -> Tensor:
    """Guided DDIM of the prior (its noise ``process``) from x_T at t_start (None: from noise at
    T - 1), clamped to [-1, 1]."""

    def eps_model(x: Tensor, t: Tensor, cond: ViewCondition) -> Tensor:
        return prior.predict_noise(x, t.round().long(), cond.input_view, cond.camera, guidance)

    cond = ViewCondition(input_view, cameras.to(input_view.device))
    x = ddim_sample(process, eps_model, tuple(input_view.shape), cond, generator=generator, steps=steps, eta=eta,
                    x_T=x_T, t_start=t_start, dtype=input_view.dtype, device=input_view.device)
    return x.clamp(-1, 1)
