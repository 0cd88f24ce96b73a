"""Typed run configs: the training config and its presets, JSON round trips and ``key=value`` overrides.

One dataclass per component (data, diffusion, optimiser, network) and :class:`TrainConfig`
holding them. ``train.py preset key=value ...`` starts from a preset, applies the overrides
(``optim.lr=1e-3``, ``data.categories=chair,car``, ``diffusion.cascade=default``), each
checked against the field's type, and writes the resolved config into the run directory.
``sample.py`` rebuilds everything from that JSON alone.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pvd.data.dataset import DatasetConfig
from pvd.diffusion import DiffusionConfig, HierarchyConfig, build
from pvd.errors import UserError
from pvd.nn.embeddings import ConditionConfig
from pvd.nn.unet import PRESETS as NETWORK_PRESETS
from pvd.nn.unet import UNetConfig, preset

CONDITIONS = ("none", "image", "category", "image+category")


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule, EMA and clipping. The defaults are PVD's."""

    name: str = "adam"  # adam | adamw
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    schedule: str = "exponential"  # exponential (x gamma per epoch, PVD) | cosine (warmup, then cosine per step) | constant
    gamma: float = 0.998  # exponential: factor per epoch
    warmup_steps: int = 0  # linear warmup (any schedule)
    min_lr_ratio: float = 0.0  # cosine: final lr / lr
    grad_clip: float | None = None  # max global gradient norm; None: no clipping (PVD)
    ema_decay: float | None = None  # None: no EMA (PVD); e.g. 0.999


@dataclass
class TrainConfig:
    """A training run. ``batch_size`` is global: each of W processes takes batch_size / W."""

    data: DatasetConfig = field(default_factory=DatasetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: str = "small"  # network preset (pvd.nn.unet.PRESETS)
    condition: str = "image"  # none | image | category | image+category
    dropout: float | None = None  # None: the preset's
    cond_drop: float = 0.1  # share of samples trained without their condition (classifier-free guidance)
    # Weight of the image encoder's auxiliary loss: Chamfer distance between a coarse cloud of
    # shape_points regressed from the image vector and the ground truth (0: no such head).
    shape_loss: float = 0.0
    shape_points: int = 64
    # Weight of an EMD term beside that Chamfer distance (pvd.training.shape_head_loss): it spreads
    # the head's points over the surface instead of piling them where Chamfer is cheapest. Off in
    # the presets: at the quickstart budget it cost 8 val CD x 1e-3 (the measurement log).
    shape_emd: float = 0.0
    # The shape head's cloud also enters the denoiser, as shape_points extra input points (dropped
    # with the image for guidance): what the encoder knows reaches the denoiser, not only the loss.
    shape_input: bool = False
    batch_size: int = 16
    epochs: int = 100
    max_steps: int | None = None  # stop at this step instead (None: epochs x steps per epoch)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # TF32 matmuls and convolutions on CUDA (Ampere and later): ~2-7x the fp32 rate with a 10-bit
    # mantissa. Off by default so that fp32 runs (the pvd-paper presets) stay fp32-exact.
    tf32: bool = False
    workers: int = 0  # DataLoader processes per training process
    run_dir: str = "runs/quickstart"
    resume: bool = False  # continue the run in run_dir from its last checkpoint
    init_from: str | None = None  # a run dir or checkpoint whose model weights start this run (fine-tuning)
    # A stand-alone regressor run (python -m pvd.regressor) whose encoder and shape head start this
    # run's image encoder: stage 0 pretrained; its training time is part of this model's cost.
    init_encoder: str | None = None
    # Train that stand-alone regressor first, for this many steps, into run_dir/encoder (skipped
    # when it is there already), then start from it as init_encoder does: stage 0 gets its own
    # training, the joint run refines it. 0: the encoder starts from scratch with the denoiser.
    encoder_pretrain: int = 0
    log_every: int = 50  # steps between status lines / stats.jsonl records
    ckpt_every: int = 500  # steps between checkpoints (and one at the end)
    keep: int = 3  # checkpoints kept
    val_every: int = 1000  # steps between validations (and one at the end); 0: none
    val_shapes: int = 8  # val shapes sampled by each validation
    val_sampler: str | None = None  # None: validate with the run's own sampler (diffusion.sampler)
    val_steps: int | None = None  # None: the sampler's steps (the run's diffusion.sampling_steps with its sampler)
    tensorboard: bool = False  # also log to run_dir/tb (needs the tensorboard package)


# ---- presets --------------------------------------------------------------------------------

def _image_2048(steps: int = 2400) -> TrainConfig:
    # The recommended image-to-shape model on a CPU: 2048 points from one view, trained on the
    # built-in data. The hierarchy (pvd.diffusion.hierarchy): stage 0 is the encoder's shape head,
    # a regressor of a 256-point cloud, trained alone first (encoder_pretrain: 2000 steps, ~7 min
    # here) and then with the denoiser; the denoiser sees its cloud as extra input points and
    # refines it over t <= 0.1 T, starting from it noised to t_start. v-prediction (an
    # undertrained eps model's samples blow up; v stays in place), a high cosine-decayed learning
    # rate, EMA. Chosen on the val split (tests/benchmarks/val_sweep.py, the measurement log): the
    # pretrained stage 0 (val CD 47 -> 24 x 1e-3, F@1% 0.23 -> 0.32 with the longer run), t_max
    # 0.1 rather than 0.5 (the same coarse clouds refined better), DDIM-10 from 0.02 T, no guidance.
    return TrainConfig(
        data=DatasetConfig(path="data/synth.h5", num_points=2048, normalization="pointflow"),
        diffusion=DiffusionConfig(mean_type="v", sampler="ddim", sampling_steps=10, guidance_scale=1.0,
                                  hierarchy=HierarchyConfig(t_max=0.1, t_start=0.02)),
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.999), schedule="cosine", warmup_steps=50, min_lr_ratio=0.05,
                          grad_clip=1.0, ema_decay=0.99 if steps < 2000 else 0.995),
        model="cpu-2048", condition="image", shape_loss=1.0, shape_points=256, shape_input=True, encoder_pretrain=2000,
        batch_size=32, epochs=1000, max_steps=steps, run_dir="runs/image-2048", log_every=50, ckpt_every=200,
        val_every=400, val_shapes=8,
    )


def _quickstart() -> TrainConfig:
    # README command 1: the recommended model (image-2048) with its stage 0 pretrained as there and
    # the joint run cut to 800 steps.
    return dataclasses.replace(_image_2048(steps=800), run_dir="runs/quickstart")


def _shapenet_image() -> TrainConfig:
    # The same design at GPU scale on ShapeNet: PC15k point clouds with the 3D-R2N2 views of the
    # 13 R2N2 categories (datasets/shapenet.py pc15k ... --r2n2 ...; README "ShapeNet"), PVD's
    # network with image conditioning, the hierarchy from a 512-point shape head, bf16 on CUDA.
    # The refiner's range and sampler are the built-in data's val choice, not tuned on ShapeNet:
    # choose t_start, steps and guidance on its val split (val_sweep.py) before scoring test.
    return TrainConfig(
        data=DatasetConfig(path="data/shapenet-r2n2.h5", num_points=2048, normalization="pointflow"),
        diffusion=DiffusionConfig(mean_type="v", sampler="ddim", sampling_steps=10, guidance_scale=1.0,
                                  hierarchy=HierarchyConfig(t_max=0.1, t_start=0.03)),
        optim=OptimConfig(lr=2e-4, betas=(0.9, 0.999), schedule="cosine", warmup_steps=1000, min_lr_ratio=0.05,
                          grad_clip=1.0, ema_decay=0.9999),
        model="pvd-paper-cond", condition="image", shape_loss=1.0, shape_points=512, shape_input=True,
        batch_size=64, epochs=400, workers=8, run_dir="runs/shapenet-image", log_every=100, ckpt_every=5000,
        val_every=10000, val_shapes=16,
    )


def _pvd_paper(category: str) -> TrainConfig:
    # Zhou et al. 2021 as their code trains: unconditional PVCNN2 on one PC15k category, 2048
    # points, global PointFlow normalisation, Adam 2e-4 (0.5, 0.999), lr x0.998 per epoch,
    # batch 16, no EMA, no clipping, seed 42, 10000 epochs; 'warm0.1' betas for airplanes.
    return TrainConfig(
        data=DatasetConfig(path="data/pc15k.h5", categories=[category], num_points=2048, normalization="pointflow",
                           images=False),
        diffusion=DiffusionConfig(schedule="warm0.1" if category == "airplane" else "linear"),
        optim=OptimConfig(),
        model="pvd-paper", condition="none", cond_drop=0.0, batch_size=16, epochs=10000, seed=42,
        run_dir=f"runs/pvd-paper-{category}", amp=False, log_every=100, ckpt_every=2000, val_every=10000,
        val_sampler="ddim", val_steps=50,
    )


def _tiny() -> TrainConfig:
    # For tests: seconds on a CPU.
    return TrainConfig(
        data=DatasetConfig(path="data/synth.h5", num_points=128),
        optim=OptimConfig(lr=1e-3, betas=(0.9, 0.999), schedule="constant", ema_decay=0.9),
        model="tiny", condition="image+category", batch_size=4, epochs=1, max_steps=8, run_dir="runs/tiny",
        log_every=2, ckpt_every=4, val_every=0, val_shapes=2, val_sampler="ddim", val_steps=5,
    )


PAPER_CATEGORIES = ("airplane", "chair", "car")
PRESETS: dict[str, typing.Callable[[], TrainConfig]] = {
    "quickstart": _quickstart,
    "image-2048": _image_2048,
    "shapenet-image": _shapenet_image,
    "tiny": _tiny,
    **{f"pvd-paper-{c}": (lambda c=c: _pvd_paper(c)) for c in PAPER_CATEGORIES},
}


def train_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


def check(cfg: TrainConfig) -> None:
    """Reject inconsistent settings with one-line messages."""
    o = cfg.optim
    if o.name not in ("adam", "adamw"):
        raise UserError(f"optim.name must be adam or adamw, got {o.name!r}")
    if o.schedule not in ("exponential", "cosine", "constant"):
        raise UserError(f"optim.schedule must be exponential, cosine or constant, got {o.schedule!r}")
    if o.lr <= 0 or o.warmup_steps < 0 or not 0 <= o.min_lr_ratio <= 1:
        raise UserError("optim.lr must be positive, optim.warmup_steps >= 0 and optim.min_lr_ratio in [0, 1]")
    if o.ema_decay is not None and not 0 < o.ema_decay < 1:
        raise UserError(f"optim.ema_decay must lie in (0, 1), got {o.ema_decay}")
    if cfg.model not in NETWORK_PRESETS:
        raise UserError(f"model must be one of {', '.join(NETWORK_PRESETS)}, got {cfg.model!r}")
    if cfg.condition not in CONDITIONS:
        raise UserError(f"condition must be one of {', '.join(CONDITIONS)}, got {cfg.condition!r}")
    if "image" in cfg.condition and NETWORK_PRESETS[cfg.model]().encoder is None:
        raise UserError(f"network preset {cfg.model!r} has no image encoder; use condition=none or category, "
                        "or a model with one (pvd-paper-cond, small, tiny)")
    if "image" in cfg.condition and not cfg.data.images and cfg.data.embedding is None:
        raise UserError("image conditioning needs data.images=true or a data.embedding")
    if cfg.shape_loss < 0 or cfg.shape_emd < 0 or cfg.shape_points < 1:
        raise UserError("shape_loss and shape_emd must be >= 0 and shape_points >= 1")
    if cfg.shape_points > cfg.data.num_points:
        raise UserError(f"shape_points ({cfg.shape_points}) cannot exceed data.num_points ({cfg.data.num_points})")
    if cfg.shape_loss and not ("image" in cfg.condition and cfg.data.images):
        raise UserError("shape_loss trains the image encoder: it needs condition=image and data.images=true")
    if cfg.shape_input and not cfg.shape_loss:
        raise UserError("shape_input feeds the shape head's cloud to the denoiser: it needs shape_loss > 0 to train the head")
    if cfg.diffusion.hierarchy is not None and not cfg.shape_input:
        raise UserError("diffusion.hierarchy refines the shape head's cloud: it needs shape_loss > 0 and shape_input=true")
    if not 0 <= cfg.cond_drop < 1:
        raise UserError(f"cond_drop must lie in [0, 1), got {cfg.cond_drop}")
    for name in ("batch_size", "epochs", "log_every", "ckpt_every", "keep"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UserError(f"max_steps must be at least 1, got {cfg.max_steps}")
    if cfg.val_every < 0 or cfg.val_shapes < 1:
        raise UserError("val_every must be >= 0 and val_shapes >= 1")
    if cfg.val_every:  # the validation sampler must fit the run's process now, not at the first validation
        build(validation_diffusion(cfg), cfg.data.num_points)
    if cfg.resume and cfg.init_from:
        raise UserError("resume continues this run; init_from starts a new one from another run's weights: choose one")
    if (cfg.init_encoder or cfg.encoder_pretrain) and (cfg.init_from or "image" not in cfg.condition or not cfg.shape_loss):
        raise UserError("init_encoder / encoder_pretrain start the image encoder and its shape head: they need image "
                        "conditioning, shape_loss > 0 and no init_from")
    if cfg.encoder_pretrain < 0 or (cfg.encoder_pretrain and cfg.init_encoder):
        raise UserError("encoder_pretrain must be >= 0, and not beside init_encoder (one source for the encoder)")


def validation_diffusion(cfg: TrainConfig) -> DiffusionConfig:
    """The run's diffusion with validation's sampler: its own unless val_sampler / val_steps say otherwise."""
    if cfg.val_sampler is None and cfg.val_steps is None:
        return cfg.diffusion
    return dataclasses.replace(cfg.diffusion, sampler=cfg.val_sampler or cfg.diffusion.sampler, sampling_steps=cfg.val_steps)


def network_config(cfg: TrainConfig, num_categories: int, cascade_stage: bool = False) -> UNetConfig:
    """The network of ``cfg.model`` adapted to the run's conditioning.

    num_categories: the dataset's category count (for category labels). cascade_stage: a
    cascade stage after the first, which also sees the coarse cloud.
    """
    net = preset(cfg.model)
    base = net.condition or ConditionConfig()
    use_image = "image" in cfg.condition
    use_category = "category" in cfg.condition
    if use_image and net.encoder is None:
        raise UserError(f"network preset {cfg.model!r} has no image encoder; use condition=none or category")
    if not (use_image or use_category or cascade_stage):
        condition = None
    else:
        condition = dataclasses.replace(
            base,
            image_dim=base.image_dim if use_image else 0,
            token_dim=base.token_dim if use_image else 0,
            cross_attention_levels=base.cross_attention_levels if use_image else 0,
            num_categories=num_categories if use_category else 0,
            cascade=cascade_stage,
            shape_points=cfg.shape_points if cfg.shape_input and not cascade_stage else 0,
        )
    encoder = None
    if use_image:
        encoder = dataclasses.replace(net.encoder, shape_points=cfg.shape_points if cfg.shape_loss else 0)
    net = dataclasses.replace(net, condition=condition, encoder=encoder)
    if cfg.dropout is not None:
        net = dataclasses.replace(net, dropout=cfg.dropout)
    return net


# ---- dataclasses <-> JSON -------------------------------------------------------------------

def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` (from JSON) as type ``tp``."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"{where} may not be null")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where} needs {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, where) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_convert(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Rebuild dataclass ``cls`` from :func:`to_dict` output; unknown keys are rejected."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config key {where + '.' if where else ''}{unknown[0]}")
    values = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where or cls.__name__}: {e}") from None


# ---- key=value overrides --------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _parse(text: str, tp: Any, key: str) -> Any:
    """The override text for a field of type ``tp``."""
    tp, optional = _strip_optional(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    if dataclasses.is_dataclass(tp):
        if text.lower() != "default":
            raise UserError(f"{key} takes 'default'{' or none' if optional else ''} (then set its fields), got {text!r}")
        return tp()
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        text = text.strip()
        if text.startswith("["):
            try:
                return _convert(json.loads(text), tp, key)
            except json.JSONDecodeError:
                raise UserError(f"{key}: cannot parse {text!r} as a JSON list") from None
        items = [s.strip() for s in text.split(",") if s.strip()]
        args = typing.get_args(tp)
        item_types = list(args) if origin is tuple and args and args[-1] is not Ellipsis else [args[0] if args else str] * len(items)
        if len(item_types) != len(items):
            raise UserError(f"{key} needs {len(item_types)} comma-separated values, got {text!r}")
        parsed = [_parse(v, t, key) for v, t in zip(items, item_types)]
        return tuple(parsed) if origin is tuple else parsed
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise UserError(f"{key} must be true or false, got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{key} must be an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{key} must be a number, got {text!r}") from None
    return text


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``key=value`` strings (dotted keys into nested dataclasses) in order; returns ``cfg``.

    Unknown keys and values of the wrong type raise UserError. A nested config that is None
    (``diffusion.cascade``) is created with its defaults when one of its fields is set.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"overrides look like key=value, got {item!r}")
        *path, name = key.split(".")
        target = cfg
        for i, part in enumerate(path):
            where = ".".join(path[: i + 1])
            if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
                raise UserError(f"unknown config key {where!r}")
            child = getattr(target, part)
            if child is None:
                child_type, _ = _strip_optional(typing.get_type_hints(type(target))[part])
                if not dataclasses.is_dataclass(child_type):
                    raise UserError(f"{where} has no fields")
                child = child_type()
                setattr(target, part, child)
            target = child
        if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
            raise UserError(f"unknown config key {key!r}")
        value = _parse(text, typing.get_type_hints(type(target))[name], key)
        setattr(target, name, value)
    return cfg
