"""A view-conditioned 2D diffusion prior in the manner of Zero-1-to-3 (Liu et al. 2023), small
enough to train from scratch on the dataset's renderings on a CPU.

Given an input view of a shape and a camera pair (the input's and the wanted one), the prior
generates the wanted view. Images are ``(B, 4, S, S)`` in [-1, 1]: RGB composited on white,
then alpha (``to_prior_image``). The network sees the noisy target view channel-concatenated
with the input view, as Zero-1-to-3 concatenates the input latent; the input view again through
cross-attention from the lowest resolution to its own encoder's features (a novel view is not
pixel-aligned with the input); and the cameras through the embedding that also carries the
timestep and drives every residual block's scale and shift: both poses in the world frame
(``absolute``, the default: ShapeNet's categories are aligned, so the wanted pose says which
side is seen) or Zero-1-to-3's relative pose (``relative``, for data without a canonical
frame). Why (tests/benchmarks/README.md, "Lifting (2026-12-06)"): at equal steps the two
changes lowered the val loss at every noise level, and the prior trained with them passed
the novel-view bar that the relative, concatenation-only prior missed. A photo's camera is an
assumption (``python -m pvd.sds --azimuth``): with world-frame poses a wrong guess matters more.

Classifier-free guidance by condition dropout: a dropped sample (``ViewCondition.drop``) sees
a zero input view and a learned null camera embedding, so ``cond.null()`` is the
unconditional model. Lifting reaches it through :class:`pvd.sds.view_prior.TrainedViewPrior`
(the ``ViewPrior`` protocol); underneath:

    model, diffusion, cfg = load_prior("runs/sds-prior")
    cond = ViewCondition(input_view, camera_pair(e0, a0, d0, e1, a1, d1))
    eps_hat = predict_eps(model, diffusion, x_t, t, cond, guidance=cfg.diffusion.guidance_scale)
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvd import checkpoint
from pvd.config import from_dict
from pvd.diffusion import DiffusionConfig, GaussianDiffusion, make_diffusion
from pvd.errors import UserError
from pvd.nn.embeddings import timestep_embedding

RUN_KEY = "sds_prior"  # the key of a prior's config in its checkpoint's run record


# ---- images and cameras ---------------------------------------------------------------------

def to_prior_image(rgba: np.ndarray | Tensor, size: int) -> Tensor:
    """Views as the prior's images: (B, 4, size, size) float32 in [-1, 1], RGB on white + alpha.

    rgba: (B, H, W, 4) uint8 (numpy or torch) with straight (not premultiplied) colour, as
    the datasets store it, or (B, 4, H, W) float in [0, 1]. H = W must be a multiple of
    ``size``. Downsampling averages premultiplied colour and alpha over each block (the area
    filter, antialiased); compositing on white is linear, so it commutes with that average.
    """
    x = torch.as_tensor(rgba)
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 4:
            raise ValueError(f"uint8 views must be (B, H, W, 4), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255.0
    elif x.ndim != 4 or x.shape[1] != 4:
        raise ValueError(f"float views must be (B, 4, H, W), got {tuple(x.shape)}")
    x = x.float()
    h, w = x.shape[-2:]
    if h != w or h % size:
        raise ValueError(f"views of {h}x{w} cannot be area-downsampled to {size}x{size}")
    alpha = x[:, 3:]
    premultiplied = torch.cat([x[:, :3] * alpha, alpha], dim=1)
    if h != size:
        premultiplied = F.avg_pool2d(premultiplied, h // size)
    rgb, alpha = premultiplied[:, :3], premultiplied[:, 3:]
    return torch.cat([rgb + (1 - alpha), alpha], dim=1) * 2 - 1


def from_prior_image(x: Tensor) -> Tensor:
    """The prior's images (B, 4, S, S) in [-1, 1] as RGBA (B, 4, S, S) in [0, 1], straight colour.

    Inverts the white compositing where alpha > 0; colour is 0 where alpha is 0.
    """
    x = ((x.float() + 1) / 2).clamp(0, 1)
    alpha = x[:, 3:]
    rgb = (x[:, :3] - (1 - alpha)) / alpha.clamp(min=1e-6)
    return torch.cat([rgb.clamp(0, 1) * (alpha > 0), alpha], dim=1)


def camera_pair(src_elev_deg, src_az_deg, src_dist, dst_elev_deg, dst_az_deg, dst_dist) -> Tensor:
    """The source (input) and destination (target) orbit cameras of each sample, (B, 6) float32:
    (elevation, azimuth in degrees, distance) of the source, then of the destination.

    Each argument: (B,) array-like or a scalar. This is what a ``ViewCondition`` carries; a prior
    turns it into its own camera code (``relative_camera`` or ``absolute_cameras``).
    """
    def t(v) -> Tensor:
        return torch.as_tensor(v, dtype=torch.float64).reshape(-1)

    parts = torch.broadcast_tensors(*(t(v) for v in (src_elev_deg, src_az_deg, src_dist, dst_elev_deg, dst_az_deg, dst_dist)))
    return torch.stack(parts, dim=1).float()


def relative_camera(cameras: Tensor) -> Tensor:
    """Zero-1-to-3's relative pose from the source to the destination camera.

    cameras: (B, 6) from ``camera_pair``. Returns (B, 4) float32: (d_elevation in radians,
    sin d_azimuth, cos d_azimuth, d_distance), d = dst - src; the sine and cosine make azimuth
    wrap around (359 -> 1 degree is a 2 degree step).
    """
    c = cameras.double()
    d_elev = torch.deg2rad(c[:, 3] - c[:, 0])
    d_az = torch.deg2rad(c[:, 4] - c[:, 1])
    return torch.stack([d_elev, d_az.sin(), d_az.cos(), c[:, 5] - c[:, 2]], dim=1).float()


def absolute_cameras(cameras: Tensor) -> Tensor:
    """Both cameras in the world frame: (B, 8) float32, (elevation in radians, sin azimuth,
    cos azimuth, distance) of the source, then of the destination. For data in a canonical
    frame (ShapeNet's aligned categories) the destination's own pose says which side of the
    object it sees, which the relative pose alone cannot (cameras: (B, 6) from ``camera_pair``)."""
    c = cameras.double()

    def code(elev: Tensor, az: Tensor, dist: Tensor) -> list[Tensor]:
        az = torch.deg2rad(az)
        return [torch.deg2rad(elev), az.sin(), az.cos(), dist]

    return torch.stack(code(c[:, 0], c[:, 1], c[:, 2]) + code(c[:, 3], c[:, 4], c[:, 5]), dim=1).float()


CAMERA_CODES = {"relative": (relative_camera, 4), "absolute": (absolute_cameras, 8)}


@dataclass(frozen=True)
class ViewCondition:
    """What the prior is conditioned on, batch-first.

    input_view: (B, 4, S, S) in [-1, 1]; camera: (B, 6) source and destination cameras from
    ``camera_pair``; drop: (B,) bool, True where both give way to the unconditional model (None:
    none dropped).
    """

    input_view: Tensor
    camera: Tensor
    drop: Tensor | None = None

    def __post_init__(self) -> None:
        sizes = {self.input_view.shape[0], self.camera.shape[0]} | ({self.drop.shape[0]} if self.drop is not None else set())
        if len(sizes) > 1 or self.input_view.ndim != 4 or self.camera.ndim != 2 or self.camera.shape[1] != 6:
            raise ValueError(f"ViewCondition needs input_view (B, 4, S, S), camera (B, 6), drop (B,); got "
                             f"{tuple(self.input_view.shape)}, {tuple(self.camera.shape)}, "
                             f"{None if self.drop is None else tuple(self.drop.shape)}")

    @property
    def batch_size(self) -> int:
        return self.input_view.shape[0]

    def dropped(self) -> Tensor:
        """(B,) bool, all False when ``drop`` is None."""
        if self.drop is None:
            return torch.zeros(self.batch_size, dtype=torch.bool, device=self.input_view.device)
        return self.drop.bool()

    def null(self) -> ViewCondition:
        """Every sample dropped: the unconditional model for classifier-free guidance."""
        return dataclasses.replace(self, drop=torch.ones(self.batch_size, dtype=torch.bool, device=self.input_view.device))

    def to(self, device: torch.device | str) -> ViewCondition:
        return ViewCondition(self.input_view.to(device), self.camera.to(device),
                             None if self.drop is None else self.drop.to(device))

    @staticmethod
    def cat(conditions: list[ViewCondition] | tuple[ViewCondition, ...]) -> ViewCondition:
        """Concatenate along the batch (a missing ``drop`` counts as all False)."""
        drops = [c.drop for c in conditions]
        drop = None if all(d is None for d in drops) else torch.cat([c.dropped() for c in conditions])
        return ViewCondition(torch.cat([c.input_view for c in conditions]), torch.cat([c.camera for c in conditions]), drop)


# ---- the network ----------------------------------------------------------------------------

@dataclass
class PriorConfig:
    """The prior's 2D U-Net. One level per entry of ``channels``, each halving the resolution
    after the first; self-attention at the lowest resolution (8x8 for 32 x 32 images)."""

    image_size: int = 32  # S: the prior's images are S x S (32 or 64 for the 64 x 64 renderings)
    channels: tuple[int, ...] = (32, 64, 128)  # widths per level
    res_blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    attention: bool = True  # self-attention at the lowest resolution and in the middle
    heads: int = 4
    embed_dim: int = 128  # width of the time + camera embedding
    dropout: float = 0.0
    # camera code: "relative" (Zero-1-to-3's pose change, for data without a canonical frame) or
    # "absolute" (both poses in the world frame: for aligned categories it names the side seen)
    camera: str = "absolute"
    # the input view also enters through cross-attention: its own conv encoder down to the lowest
    # resolution, whose positions every low-resolution attention block attends to (a novel view is
    # not pixel-aligned with the input, so channel concatenation alone passes it on poorly)
    cross_attention: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if not self.channels or min(self.channels) < 4 or any(c % 4 for c in self.channels):
            raise ValueError(f"channels must be multiples of 4, got {self.channels}")
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"image_size {self.image_size} does not halve {len(self.channels) - 1} times")
        if self.res_blocks < 1 or self.embed_dim < 4 or not 0 <= self.dropout < 1:
            raise ValueError("res_blocks must be >= 1, embed_dim >= 4 and dropout in [0, 1)")
        if self.camera not in CAMERA_CODES:
            raise ValueError(f"camera must be one of {', '.join(CAMERA_CODES)}, got {self.camera!r}")
        if self.cross_attention and not self.attention:
            raise ValueError("cross_attention needs attention")
        if self.attention and self.channels[-1] % self.heads:
            raise ValueError(f"{self.heads} heads do not divide the lowest level's {self.channels[-1]} channels")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class _ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; GroupNorm scaled and shifted by the embedding, SiLU, dropout, conv; plus skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.modulation = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.dropout = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # a fresh block is the identity (improved-diffusion)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(self.dropout(F.silu(torch.addcmul(shift, self.norm2(h), 1 + scale))))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head attention with a residual: over all positions of x, or, given ``context``
    (B, C, h', w'), from x's positions to the context's (cross-attention)."""

    def __init__(self, channels: int, heads: int, cross: bool = False):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.context_norm = _norm(channels) if cross else None
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        x_n = self.norm(x)
        ctx = x_n if context is None else self.context_norm(context)
        q = self.q(x_n).view(b, self.heads, c // self.heads, h * w).transpose(-1, -2)
        k, v = self.kv(ctx).view(b, 2, self.heads, c // self.heads, -1).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class ViewUNet(nn.Module):
    """The denoiser ``model(x_t, t, cond)``: a 2D U-Net over the noisy target view and the input view.

    forward: x_t (B, 4, S, S) noisy target view, t (B,) float timesteps on the training scale,
    cond: ViewCondition -> (B, 4, S, S), the prediction of the diffusion's ``mean_type``.
    """

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config
        e = c.embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.camera_code, code_width = CAMERA_CODES[c.camera]
        self.camera_mlp = nn.Sequential(nn.Linear(code_width, e), nn.SiLU(), nn.Linear(e, e))
        self.null_camera = nn.Parameter(torch.zeros(e))
        self.input = nn.Conv2d(8, c.channels[0], 3, padding=1)

        self.down = nn.ModuleList()
        skips, width = [c.channels[0]], c.channels[0]
        for level, ch in enumerate(c.channels):
            for _ in range(c.res_blocks):
                self.down.append(_ResBlock(width, ch, e, c.dropout))
                width = ch
                skips.append(width)
            if level < len(c.channels) - 1:
                self.down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)
        self.mid = nn.ModuleList([_ResBlock(width, width, e, c.dropout), _ResBlock(width, width, e, c.dropout)])
        self.mid_attention = _Attention(width, c.heads) if c.attention else nn.Identity()
        self.low_attention = nn.ModuleList(_Attention(c.channels[-1], c.heads) if c.attention else nn.Identity()
                                           for _ in range(2 * c.res_blocks + 1))
        self.view_encoder = self.cross = None
        if c.cross_attention:  # the input view down to the lowest level: (B, channels[-1], h, w)
            layers: list[nn.Module] = [nn.Conv2d(4, c.channels[0], 3, padding=1)]
            for prev, ch in zip(c.channels, c.channels[1:]):
                layers += [_norm(prev), nn.SiLU(), nn.Conv2d(prev, ch, 3, stride=2, padding=1)]
            layers += [_norm(c.channels[-1]), nn.SiLU(), nn.Conv2d(c.channels[-1], c.channels[-1], 3, padding=1)]
            self.view_encoder = nn.Sequential(*layers)
            self.cross = nn.ModuleList(_Attention(c.channels[-1], c.heads, cross=True) for _ in range(2 * c.res_blocks + 1))
        self.up = nn.ModuleList()
        for level, ch in reversed(list(enumerate(c.channels))):
            for _ in range(c.res_blocks + 1):
                self.up.append(_ResBlock(width + skips.pop(), ch, e, c.dropout))
                width = ch
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)))
        self.output = nn.Sequential(_norm(width), nn.SiLU(), nn.Conv2d(width, 4, 3, padding=1))
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def embedding(self, t: Tensor, cond: ViewCondition) -> Tensor:
        """The time + camera vector (B, E); dropped samples get the learned null camera."""
        temb = self.time_mlp(timestep_embedding(t.float(), self.config.embed_dim))
        cemb = self.camera_mlp(self.camera_code(cond.camera).to(device=temb.device, dtype=temb.dtype))
        cemb = torch.where(cond.dropped()[:, None], self.null_camera.to(cemb.dtype), cemb)
        return temb + cemb

    def forward(self, x_t: Tensor, t: Tensor, cond: ViewCondition) -> Tensor:
        s = self.config.image_size
        if x_t.shape[1:] != (4, s, s) or cond.input_view.shape[1:] != (4, s, s) or cond.batch_size != x_t.shape[0]:
            raise ValueError(f"the prior takes x_t and input views of shape (B, 4, {s}, {s}); got "
                             f"{tuple(x_t.shape)} and {tuple(cond.input_view.shape)}")
        emb = self.embedding(t, cond)
        view = cond.input_view.to(x_t.dtype) * ~cond.dropped()[:, None, None, None]  # dropped: zeros
        h = self.input(torch.cat([x_t, view], dim=1))
        skips, low = [h], iter(self.low_attention)
        lowest = s // 2 ** (len(self.config.channels) - 1)
        if self.view_encoder is not None:
            context, cross = self.view_encoder(view), iter(self.cross)

            def attend(h: Tensor) -> Tensor:
                return next(cross)(next(low)(h), context)
        else:
            def attend(h: Tensor) -> Tensor:
                return next(low)(h)
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            if isinstance(layer, _ResBlock) and h.shape[-1] == lowest:
                h = attend(h)
            skips.append(h)
        h = self.mid[1](self.mid_attention(self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
                if h.shape[-1] == lowest:
                    h = attend(h)
            else:
                h = layer(h)
        return self.output(h)


# ---- training config, checkpoints, sampling ------------------------------------------------

def _prior_diffusion() -> DiffusionConfig:
    # v-prediction on a cosine schedule: an undertrained eps model's DDIM samples blow up,
    # v stays in range. Sampling: DDIM 50 with guidance 3 (Zero-1-to-3 samples with 3).
    return DiffusionConfig(schedule="cosine", num_steps=1000, mean_type="v", sampler="ddim", sampling_steps=50,
                           guidance_scale=3.0)


@dataclass
class PriorTrainConfig:
    """A prior training run (``python -m pvd.sds.train_prior key=value ...``). The defaults
    train the prior of the measurement log on the built-in data: 3700 steps, ~25 minutes on 2
    threads at 380 GFLOP/s fp32 matmul (51 minutes at the 186 measured on an AMD EPYC)."""

    data: str = "data/synth.h5"  # a pvd HDF5 file with images and cameras
    model: PriorConfig = field(default_factory=PriorConfig)
    diffusion: DiffusionConfig = field(default_factory=_prior_diffusion)  # sampler, sampling_steps, guidance_scale: defaults for users
    batch_size: int = 48
    lr: float = 2e-3
    warmup_steps: int = 100  # linear warmup, then cosine decay to lr * min_lr_ratio at max_steps
    min_lr_ratio: float = 0.05
    grad_clip: float | None = 1.0  # max global gradient norm
    ema_decay: float = 0.995
    cond_drop: float = 0.1  # share of samples trained unconditionally (classifier-free guidance)
    seed: int = 0
    max_steps: int = 3700
    run_dir: str = "runs/sds-prior"
    resume: bool = False  # continue run_dir from its last checkpoint
    log_every: int = 50
    ckpt_every: int = 500
    keep: int = 2
    # torch intra-op threads (0: torch's default). One: on 2 cores shared with other jobs a
    # second thread made steps 10x slower (5 s instead of 0.5 s at batch 48); set 2 on idle cores
    threads: int = 1
    # bf16 autocast for the training steps; None: on a GPU where it supports bf16, on a CPU where
    # it has AMX tiles, which makes the step 2x faster (0.56 vs 1.12 s at batch 48 on one Sapphire Rapids core)
    bf16: bool | None = None
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N


def check_config(cfg: PriorTrainConfig) -> None:
    """Reject inconsistent settings with one-line messages."""
    try:  # key=value overrides set fields without running PriorConfig's checks
        PriorConfig(**dataclasses.asdict(cfg.model))
    except ValueError as e:
        raise UserError(f"model: {e}") from None
    if cfg.diffusion.cascade is not None:
        raise UserError("the prior is a single-stage image diffusion: diffusion.cascade must be none")
    make_diffusion(cfg.diffusion)  # validates schedule, mean type, sampler settings
    for name in ("batch_size", "max_steps", "log_every", "ckpt_every", "keep"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.warmup_steps < 0 or not 0 <= cfg.min_lr_ratio <= 1:
        raise UserError("lr must be positive, warmup_steps >= 0 and min_lr_ratio in [0, 1]")
    if not 0 < cfg.ema_decay < 1 or not 0 <= cfg.cond_drop < 1:
        raise UserError("ema_decay must lie in (0, 1) and cond_drop in [0, 1)")
    if cfg.grad_clip is not None and cfg.grad_clip <= 0:
        raise UserError(f"grad_clip must be positive or none, got {cfg.grad_clip}")
    if cfg.threads < 0:
        raise UserError(f"threads must be >= 0, got {cfg.threads}")


def stored_config(ckpt: dict) -> PriorTrainConfig:
    """The training config of a prior checkpoint (as ``pvd.checkpoint.load`` returns it), checked."""
    run = ckpt["run"]
    if not isinstance(run, dict) or not isinstance(run.get(RUN_KEY), dict) or not isinstance(ckpt.get("ema"), dict):
        raise UserError(f"{ckpt['path']}: not an SDS prior checkpoint (train one with python -m pvd.sds.train_prior)")
    try:
        cfg = from_dict(PriorTrainConfig, run[RUN_KEY])
    except UserError as e:
        raise UserError(f"{ckpt['path']}: bad prior config: {e}") from None
    check_config(cfg)
    return cfg


def load_prior(path: str | os.PathLike, map_location: str | torch.device = "cpu"
               ) -> tuple[ViewUNet, GaussianDiffusion, PriorTrainConfig]:
    """(model with the EMA weights, in eval mode; its diffusion; its training config) from a
    checkpoint file or a run directory's newest checkpoint, read with weights_only."""
    ckpt = checkpoint.load(path, map_location=map_location)
    where, cfg = ckpt["path"], stored_config(ckpt)
    model = ViewUNet(cfg.model)
    try:
        model.load_state_dict(ckpt["ema"])
    except RuntimeError as e:
        raise UserError(f"{where}: its weights do not fit its config ({str(e).splitlines()[0]})") from None
    return model.to(map_location).eval().requires_grad_(False), make_diffusion(cfg.diffusion), cfg


def guided_output(model: nn.Module, x_t: Tensor, t: Tensor, cond: ViewCondition, guidance: float) -> Tensor:
    """The classifier-free-guided model output out_null + g (out_cond - out_null) (Ho & Salimans 2022),
    one call on the doubled batch; g = 1 is one plain conditional call. x_t: (B, 4, S, S); t: (B,)."""
    t = t.to(x_t.dtype)
    if guidance == 1.0:
        return model(x_t, t, cond)
    both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), ViewCondition.cat([cond, cond.null()]))
    out, out_null = both.chunk(2)
    return out_null + guidance * (out - out_null)


def predict_eps(model: nn.Module, diffusion: GaussianDiffusion, x_t: Tensor, t: Tensor, cond: ViewCondition,
                guidance: float = 3.0) -> Tensor:
    """The guided noise prediction eps_hat(x_t; cond, t) (B, 4, S, S) that SDS needs.

    x_t: (B, 4, S, S) noised images; t: (B,) timesteps 0..T-1. Gradients flow into x_t only
    if the caller enables them; SDS calls this under ``torch.no_grad()``. Guiding the raw
    output equals guiding eps: eps, v and x0 are affine in one another at fixed (x_t, t).
    """
    return diffusion.predict_eps(x_t, t, guided_output(model, x_t, t, cond, guidance))
