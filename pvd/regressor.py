"""An image encoder trained alone, for the baselines that must not depend on a PVD run.

The encoder of the PVD run's network (the same architecture) with its shape head, trained only
on the head's loss against the training shape (Chamfer; EMD too with ``emd``). Two baselines
come from it: retrieval in its embedding (an encoder trained for retrieval alone, so a weak PVD
encoder cannot lower the retrieval bar) and its cloud itself (the image-to-cloud regressor
without any diffusion). It is also the hierarchy's stage 0 trained alone: a PVD run starts its
encoder from one (``init_encoder``) or trains its own first (``encoder_pretrain``, into
RUN/encoder; ``bench.py train`` counts it in the PVD step).

    python -m pvd.regressor data.path=data/synth.h5 run_dir=runs/bench/regressor
    encoder, record = load_regressor("runs/bench/regressor", torch.device("cpu"))
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pvd import checkpoint
from pvd.config import apply_overrides, from_dict, to_dict
from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.errors import UserError, run_command
from pvd.nn.encoder import EncoderConfig, ImageEncoder
from pvd.training import cosine_factor, derive_seed, ema_update, shape_head_loss, warmup_factor

RECORD_KEY = "regressor"


@dataclass
class RegressorConfig:
    """Training of the stand-alone encoder; the defaults match the quickstart's encoder and data."""

    data: DatasetConfig = field(default_factory=lambda: DatasetConfig(path="data/synth.h5", num_points=2048))
    widths: tuple[int, ...] = (16, 32, 64, 128)  # the encoder: the quickstart's (network preset cpu-2048)
    dim: int = 128
    blocks: int = 1
    pool_grid: int = 4
    shape_points: int = 256
    # Weight of the EMD term beside Chamfer (pvd.training.shape_head_loss). Chosen on val for this
    # baseline alone: with grid pooling the term cost the regressor 8 CD x 1e-3 (the measurement log).
    emd: float = 0.0
    batch_size: int = 32
    max_steps: int = 2000
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    ema_decay: float = 0.99
    seed: int = 0
    run_dir: str = "runs/regressor"
    log_every: int = 100

    def encoder(self) -> EncoderConfig:
        return EncoderConfig(widths=tuple(self.widths), blocks=self.blocks, dim=self.dim, shape_points=self.shape_points,
                             pool_grid=self.pool_grid)


def check(cfg: RegressorConfig) -> None:
    if cfg.emd < 0:
        raise UserError("emd must be >= 0")
    if min(cfg.shape_points, cfg.dim, cfg.blocks, cfg.pool_grid, *cfg.widths) < 1:
        raise UserError("shape_points, dim, blocks, pool_grid and widths must be at least 1")
    if min(cfg.batch_size, cfg.max_steps, cfg.log_every) < 1 or cfg.lr <= 0:
        raise UserError("batch_size, max_steps and log_every must be at least 1 and lr positive")
    if not cfg.data.images:
        raise UserError("the regressor learns from images: data.images must be true")
    if not Path(cfg.data.path).is_file():
        raise UserError(f"data.path {cfg.data.path}: no such file")


def train(cfg: RegressorConfig) -> Path:
    """Train the encoder and its head on the shape head's loss; returns the checkpoint's path."""
    check(cfg)
    run_dir = Path(cfg.run_dir)
    if checkpoint.list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a regressor; choose another run_dir")
    data = ShapeDataset(cfg.data, "train")
    torch.manual_seed(cfg.seed)
    encoder = ImageEncoder(cfg.encoder())
    average = copy.deepcopy(encoder).requires_grad_(False)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=cfg.lr)
    steps_per_epoch = max(len(data) // cfg.batch_size, 1)
    record = {RECORD_KEY: to_dict(cfg), "normalization": data.normalization_info(), "categories": data.info.categories}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    tqdm.write(f"training the stand-alone regressor ({sum(p.numel() for p in encoder.parameters()):,} parameters): "
               f"{len(data)} shapes, {cfg.max_steps} steps -> {run_dir}")
    window, tic = [], time.perf_counter()
    for step in tqdm(range(cfg.max_steps), unit="step", dynamic_ncols=True):
        epoch, offset = divmod(step, steps_per_epoch)
        data.set_epoch(epoch)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(derive_seed(cfg.seed, epoch)))
        rows = order[offset * cfg.batch_size : (offset + 1) * cfg.batch_size].tolist()
        batch = torch.utils.data.default_collate([data[i] for i in rows])
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * warmup_factor(step, cfg.warmup_steps) * cosine_factor(
                step, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        loss = shape_head_loss(encoder.predict_shape(encoder(batch["image"])[0]), batch["points"], cfg.emd).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(average, encoder, step, cfg.ema_decay)
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            tqdm.write(f"step {step + 1}/{cfg.max_steps} loss {sum(window) / len(window):.4f} "
                       f"({time.perf_counter() - tic:.0f} s)")
            window = []
    record["train_seconds"] = time.perf_counter() - tic  # its cost, for comparisons at equal training time
    return checkpoint.save(run_dir, cfg.max_steps, {"run": json.dumps(record), "encoder": average.state_dict()}, keep=1)


def load_regressor(path: str | Path, device: torch.device) -> tuple[ImageEncoder, dict[str, Any]]:
    """The trained encoder (its weight average, eval mode) and its record (config, normalisation)."""
    ckpt = checkpoint.load(path)
    record = ckpt.get("run")
    if not isinstance(record, dict) or RECORD_KEY not in record or "encoder" not in ckpt:
        raise UserError(f"{path}: not a stand-alone regressor run (python -m pvd.regressor)")
    # Records from before these options trained a mean-pooled encoder on Chamfer alone.
    cfg = from_dict(RegressorConfig, {"pool_grid": 1, "emd": 0.0, **record[RECORD_KEY]})
    encoder = ImageEncoder(cfg.encoder())
    encoder.load_state_dict(ckpt["encoder"])
    return encoder.to(device).eval(), record


def train_once(cfg: RegressorConfig, main_process: bool) -> Path:
    """A run's stage 0 (``encoder_pretrain``): trained into cfg.run_dir by the main process unless
    a checkpoint is already there (kept across resumes); the global RNG is left as it was, so the
    run that follows is the same whether the regressor was trained now or found."""
    folder = Path(cfg.run_dir)
    if main_process and not checkpoint.list_checkpoints(folder):
        with torch.random.fork_rng(devices=[]):
            train(cfg)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return folder


def start_encoders(source: str | Path, encoders: list[ImageEncoder], frame: dict[str, Any]) -> dict[str, Any]:
    """``init_encoder``: load a regressor's encoder (its weight average) into each of ``encoders``;
    it must have the same architecture and have been trained in the same frame (``frame``: the
    run's normalisation info). Returns what a run record keeps of it: its path and training
    seconds, part of the run's cost."""
    encoder, record = load_regressor(source, torch.device("cpu"))
    if any(record["normalization"].get(k) != frame.get(k) for k in ("normalization", "mean", "std", "categories")):
        raise UserError(f"init_encoder={source}: the regressor was trained in another frame (data, categories or "
                        f"normalisation) than this run")
    for target in encoders:
        if target.config != encoder.config:
            raise UserError(f"init_encoder={source}: its encoder {encoder.config} differs from this run's "
                            f"{target.config} (model preset, shape_points, shape_loss)")
        target.load_state_dict(encoder.state_dict())
    return {"path": str(source), "train_seconds": record.get("train_seconds")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    path = train(apply_overrides(RegressorConfig(), argv))
    print(f"done: {path}")
    return 0


if __name__ == "__main__":
    run_command(main)
