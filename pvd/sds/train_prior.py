"""Train the SDS baseline's view-conditioned 2D prior on a dataset's renderings.

    python -m pvd.sds.train_prior                                   # data/synth.h5 -> runs/sds-prior
    python -m pvd.sds.train_prior data=data/synth.h5 max_steps=3000 run_dir=runs/my-prior
    python -m pvd.sds.train_prior run_dir=runs/my-prior resume=true

Arguments are ``key=value`` on the fields of ``pvd.sds.prior.PriorTrainConfig`` (``model.channels=32,64,64``,
``diffusion.mean_type=eps``). A training pair is two distinct views of one train-split shape:
the input view conditions, the target view is diffused, and their relative camera comes from
the stored elevation, azimuth and distance (no flips: a mirrored image would contradict its
camera). Every draw of a sample (shape, views, timestep, noise, condition drop) is keyed to
(seed, step, sample index) and made on the host, and dropout to (seed, step), so a resumed run
ends bitwise equal (on CPU) to one that never stopped. ``device=`` picks where the model and its
batches live (auto: CUDA when available). Output: RUN/config.json, RUN/stats.jsonl, RUN/checkpoints/.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pvd import checkpoint
from pvd.config import apply_overrides, to_dict
from pvd.data.hdf5 import SPLITS, open_dataset_file
from pvd.diffusion import GaussianDiffusion, make_diffusion
from pvd.errors import UserError, run_command
from pvd.runtime import pick_device, reexec_with_malloc_settings
from pvd.sds.prior import (RUN_KEY, PriorTrainConfig, ViewCondition, ViewUNet, camera_pair, check_config, stored_config,
                           to_prior_image)
from pvd.training import LossWindow, cosine_factor, derive_seed, ema_update, warmup_factor

# Fields a resumed run may change: they do not alter the weights it computes up to a step (device:
# up to rounding, so that a run started on one machine can continue on another).
RESUMABLE = {"max_steps", "run_dir", "resume", "log_every", "ckpt_every", "keep", "threads", "device"}
_READ_SHAPES = 100  # shapes per HDF5 read while converting views (bounds the uint8 buffer)


@dataclass
class ViewSet:
    """One split's views as prior images, in memory.

    images: (S, V, 4, s, s) float32 in [-1, 1]; elevation, azimuth (degrees) and distance:
    (S, V) float64; rows: (S,) the shapes' rows in the file.
    """

    images: torch.Tensor
    elevation: np.ndarray
    azimuth: np.ndarray
    distance: np.ndarray
    rows: np.ndarray

    def camera(self, shape: np.ndarray, src: np.ndarray, dst: np.ndarray) -> torch.Tensor:
        """Camera pairs (B, 6) from view ``src`` to view ``dst`` of each ``shape`` (all (B,) indices)."""
        return camera_pair(self.elevation[shape, src], self.azimuth[shape, src], self.distance[shape, src],
                               self.elevation[shape, dst], self.azimuth[shape, dst], self.distance[shape, dst])


def read_views(path: str | os.PathLike, split: str, size: int) -> ViewSet:
    """The views and cameras of ``split`` (train | val | test) of a pvd HDF5 file, at size x size."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    with open_dataset_file(path) as f:
        if "images" not in f or "cameras" not in f:
            raise UserError(f"{path} has no images and cameras to train a view prior on")
        rows = np.flatnonzero(f["split"][:] == SPLITS.index(split))
        if len(rows) == 0:
            raise UserError(f"{path} has no {split} shapes")
        _, num_views, height, width, _ = f["images"].shape
        if num_views < 2:
            raise UserError(f"{path} has {num_views} view per shape; view pairs need at least 2")
        if height != width or height % size:
            raise UserError(f"{path} has {height}x{width} views, which do not area-downsample to model.image_size={size}")
        images = torch.empty(len(rows), num_views, 4, size, size)
        for start in range(0, len(rows), _READ_SHAPES):
            block = rows[start : start + _READ_SHAPES]
            views = f["images"][block[0] : block[-1] + 1][block - block[0]]  # one contiguous read per block
            images[start : start + len(block)] = to_prior_image(views.reshape(-1, height, width, 4), size).view(
                len(block), num_views, 4, size, size)
        cams = {k: f["cameras"][k][:][rows].astype(np.float64) for k in ("elevation", "azimuth", "distance")}
    return ViewSet(images, cams["elevation"], cams["azimuth"], cams["distance"], rows)


def view_batch(views: ViewSet, diffusion: GaussianDiffusion, keys: list[int], cond_drop: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ViewCondition]:
    """(target views x0 (B, 4, s, s), timesteps t (B,), noise (B, 4, s, s), condition), one sample per key.

    A sample: a random shape, two distinct random views of it (input, target), t, noise and
    whether the condition is dropped, all drawn from a generator seeded by its key.
    """
    num_shapes, num_views = views.images.shape[:2]
    shape, src, dst, t, noise, drop = [], [], [], [], [], []
    for key in keys:
        g = torch.Generator().manual_seed(key)
        shape.append(int(torch.randint(num_shapes, (), generator=g)))
        src.append(int(torch.randint(num_views, (), generator=g)))
        dst.append((src[-1] + int(torch.randint(1, num_views, (), generator=g))) % num_views)  # never src
        t.append(diffusion.sample_t(1, generator=g))
        noise.append(torch.randn(views.images.shape[2:], generator=g))
        drop.append(bool(torch.rand((), generator=g) < cond_drop))
    shape, src, dst = np.array(shape), np.array(src), np.array(dst)
    cond = ViewCondition(views.images[shape, src], views.camera(shape, src, dst), torch.tensor(drop))
    return views.images[shape, dst], torch.cat(t), torch.stack(noise), cond


def use_bf16(cfg: PriorTrainConfig, device: torch.device) -> bool:
    """Whether the steps run under bf16 autocast: ``cfg.bf16``, or when None, whether the
    device computes it fast: a GPU that supports bf16, a CPU with AMX tiles."""
    if cfg.bf16 is not None:
        return cfg.bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def learning_rate(cfg: PriorTrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at max_steps (a pure function of the step)."""
    return cfg.lr * warmup_factor(step, cfg.warmup_steps) * cosine_factor(step, cfg.warmup_steps, cfg.max_steps,
                                                                          cfg.min_lr_ratio)


def parse_config(argv: list[str]) -> PriorTrainConfig:
    """``key=value`` overrides on the defaults; with resume=true, on the run's stored config."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        sys.exit(0)
    cfg = apply_overrides(PriorTrainConfig(), argv)
    if cfg.resume:
        saved = stored_config(checkpoint.load(cfg.run_dir))
        resumed = apply_overrides(copy.deepcopy(saved), argv)
        before, after = to_dict(saved), to_dict(resumed)
        changed = [k for k in before if k not in RESUMABLE and before[k] != after[k]]
        if changed:
            raise UserError(f"a resumed run keeps its config; cannot change {changed[0]}")
        cfg = resumed
    check_config(cfg)
    return cfg


def train(cfg: PriorTrainConfig) -> Path:
    """Run the training loop of ``cfg``; returns the last checkpoint's path."""
    run_dir = Path(cfg.run_dir)
    if not cfg.resume and checkpoint.list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a run: resume=true continues it, or choose another run_dir")
    device = pick_device(cfg.device, "device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = use_bf16(cfg, device)
    views = read_views(cfg.data, "train", cfg.model.image_size)  # on the host; each batch moves to the device
    diffusion = make_diffusion(cfg.diffusion)
    torch.manual_seed(cfg.seed)
    model = ViewUNet(cfg.model).to(device)  # initialised on the host: the same weights on every device
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    record = json.dumps({RUN_KEY: to_dict(cfg)})
    step = 0
    if cfg.resume:
        ckpt = checkpoint.load(run_dir, map_location=device)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        (run_dir / "stats.jsonl").unlink(missing_ok=True)
    (run_dir / "config.json").write_text(json.dumps(json.loads(record), indent=2) + "\n")
    params = sum(p.numel() for p in model.parameters())
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    tqdm.write(f"{'resuming' if cfg.resume else 'training'} the view prior, {params:,} parameters, {where}"
               f"{', bf16' if bf16 else ''}: {views.images.shape[0]} shapes x {views.images.shape[1]} views at {cfg.model.image_size}px, "
               f"steps {step}..{cfg.max_steps} -> {run_dir}")

    def save(at_step: int) -> Path:
        payload = {"run": record, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()}
        return checkpoint.save(run_dir, at_step, payload, cfg.keep)

    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True)
    window = LossWindow(1, diffusion.num_steps, device)
    path = None
    while step < cfg.max_steps:
        torch.manual_seed(derive_seed(cfg.seed, step))  # dropout
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        keys = [derive_seed(cfg.seed, step, i) for i in range(cfg.batch_size)]
        x0, t, noise, cond = view_batch(views, diffusion, keys, cfg.cond_drop)  # drawn on the host
        x0, t_dev, noise, cond = x0.to(device), t.to(device), noise.to(device), cond.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            per_sample = diffusion.loss(model, x0, t_dev, cond, noise=noise)
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        ema_update(ema, model, step, cfg.ema_decay)
        step += 1
        bar.update(1)

        window.add(loss, per_sample.detach()[None], t_dev[None])
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            entry = {"step": step, "lr": lr, **window.read(cfg.batch_size, per_stage=False)}
            with open(run_dir / "stats.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            tqdm.write(f"step {step}/{cfg.max_steps} loss {entry['loss']:.4f} lr {lr:.2e} {entry['samples_per_s']:.1f} samples/s")
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
            path = save(step)
    bar.close()
    path = path or checkpoint.list_checkpoints(run_dir)[-1]
    tqdm.write(f"done: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    train(parse_config(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    reexec_with_malloc_settings()  # CPU steps faster (pvd.runtime)
    run_command(main)
