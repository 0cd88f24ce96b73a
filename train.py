"""Train a point-voxel diffusion model.

    python train.py quickstart                              # the built-in data, CPU, minutes
    python train.py pvd-paper-chair data.path=data/pc15k.h5 # PVD's published setup
    python train.py quickstart optim.lr=5e-4 epochs=10 run_dir=runs/mine
    python train.py quickstart resume=true                  # continue runs/quickstart
    torchrun --nproc_per_node=2 train.py quickstart         # DistributedDataParallel
    python train.py pvd-paper-chair tf32=true               # TF32 matmuls on an Ampere+ GPU

The first argument names a preset (``python train.py --help`` lists them); every other one
is ``key=value`` on its fields. The resolved config goes to RUN/config.json, statistics to
RUN/stats.jsonl, checkpoints to RUN/checkpoints/, validation grids to RUN/val/.

Every random draw of a training sample (its points, view, timestep, noise and condition drop)
is keyed to (seed, epoch, sample index) and made on the device for the whole batch at once
(pvd.keyed_random), and the global generator (dropout) is re-seeded
from (seed, step, rank) every step, so a run stopped anywhere and resumed ends bitwise equal
(on CPU) to one that never stopped, and a run over W processes matches one process with the
same global batch. Under torchrun the model is wrapped in DDP even with one process, so a single
GPU exercises the multi-GPU code path.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import h5py
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import pvd
from pvd import checkpoint, regressor
from pvd.config import (PRESETS, TrainConfig, apply_overrides, check, from_dict, network_config, to_dict, train_preset,
                        validation_diffusion)
from pvd.data.dataset import ShapeDataset
from pvd.data.render import image_grid, render_points, save_png
from pvd.diffusion import build
from pvd.diffusion.cascade import sample_stages
from pvd.errors import UserError, run_command
from pvd.imageprep import view_fill
from pvd.keyed_random import training_draws
from pvd.metrics import chamfer_distance, f_score
from pvd.nn import Condition, PVDUNet
from pvd.nn.unet import UNetConfig
from pvd.regressor import RegressorConfig
from pvd.runtime import pick_device, reexec_with_malloc_settings
from pvd.training import LossWindow, cosine_factor, derive_seed, ema_update, shape_head_loss, warmup_factor

# Fields that may change when a run is resumed: they do not alter the weights it computes.
RESUMABLE = {"epochs", "max_steps", "device", "tf32", "workers", "log_every", "ckpt_every", "keep", "val_every",
             "val_shapes", "val_sampler", "val_steps", "tensorboard", "resume", "run_dir"}


# Steps between the processes' agreement on a stop request (SIGTERM on one of them): a collective
# on every step would cost a host sync per step; a stop waits at most this many steps.
STOP_CHECK_EVERY = 10

# ---- set-up ---------------------------------------------------------------------------------

def parse_config(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a point-voxel diffusion model.",
        epilog=f"presets: {', '.join(PRESETS)}. Keys: the fields of pvd.config.TrainConfig, e.g. optim.lr=1e-3 "
               "data.categories=chair,car diffusion.cascade=default resume=true init_from=runs/other.")
    parser.add_argument("preset", nargs="?", default="quickstart", help="a preset name (default quickstart)")
    parser.add_argument("overrides", nargs="*", help="key=value")
    args = parser.parse_args(argv)
    if "=" in args.preset:  # no preset given, only overrides
        args.overrides.insert(0, args.preset)
        args.preset = "quickstart"
    cfg = apply_overrides(train_preset(args.preset), args.overrides)
    if cfg.resume:
        stored = Path(cfg.run_dir) / "config.json"
        if not stored.is_file():
            raise UserError(f"resume=true but {stored} does not exist")
        saved = from_dict(TrainConfig, json.loads(stored.read_text())["train"])
        cfg = apply_overrides(copy.deepcopy(saved), args.overrides)
        before, after = to_dict(saved), to_dict(cfg)
        changed = [k for k in before if k not in RESUMABLE and before[k] != after[k]]
        if changed:
            raise UserError(f"a resumed run keeps its config; cannot change {changed[0]} (start a new run with init_from=)")
    check(cfg)
    return cfg


def setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, distributed). Under torchrun (even with one process): a process
    group, one process per device, gloo on CPU, nccl on CUDA."""
    launched = "LOCAL_RANK" in os.environ
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched else 1
    rank = int(os.environ.get("RANK", "0")) if launched else 0
    device = pick_device(cfg.device, "device")
    if device.type == "cuda" and launched:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if launched:
        if cfg.batch_size % world:
            raise UserError(f"batch_size {cfg.batch_size} does not split over {world} processes")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device, launched


def stop_agreed(requested: bool, step: int, device: torch.device) -> bool:
    """Whether every process stops after ``step``: any process's request counts, checked every
    STOP_CHECK_EVERY steps (a flag on the device, so NCCL can reduce it). Without a process group
    a request stops at once."""
    if not dist.is_initialized():
        return requested
    if step % STOP_CHECK_EVERY:
        return False
    flag = torch.tensor([float(requested)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def learning_rate(cfg: TrainConfig, step: int, epoch: int, total_steps: int) -> float:
    """The learning rate of ``step`` (a pure function of the step, so resuming needs no scheduler state)."""
    o = cfg.optim
    factor = warmup_factor(step, o.warmup_steps)
    if o.schedule == "exponential":
        factor *= o.gamma ** epoch
    elif o.schedule == "cosine":
        factor *= cosine_factor(step, o.warmup_steps, total_steps, o.min_lr_ratio)
    return o.lr * factor


class Objective(nn.Module):
    """The training loss of every stage on one batch: the module DistributedDataParallel wraps."""

    def __init__(self, nets: list[PVDUNet], stages: list, cfg: TrainConfig):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.stages = stages
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor], keys: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (mean loss, per-sample loss (S, B) per stage, timesteps (S, B))."""
        device = next(self.parameters()).device
        x0 = batch["points"].to(device, non_blocking=True)
        # Every draw of a sample is keyed to it and made on the device, batched (pvd.keyed_random).
        draws = training_draws(self.stages, x0, torch.tensor(keys, dtype=torch.int64, device=device), self.cfg.cond_drop)
        losses, steps = [], []
        for k, (net, stage) in enumerate(zip(self.nets, self.stages)):
            t = draws["t"][k]
            fields = dict(drop=draws["drop"])
            if "category" in self.cfg.condition:
                fields["category"] = batch["category"].to(device)
            if k > 0:
                fields["coarse"] = draws["coarse"][k]
                fields["coarse_level"] = draws["level"][k].float()
            if net.config.condition is None:
                cond = None
            elif "image" in self.cfg.condition:
                cond = net.condition(images=batch["image"].to(device), **fields)
            else:
                cond = Condition(**fields)
            loss = stage.diffusion.loss(net, draws["points"][k], t, cond, noise=draws["noise"][k])
            if self.cfg.shape_loss:
                # The encoder sees every image, dropped conditions included.
                regressed = net.encoder.predict_shape(cond.image)
                loss = loss + self.cfg.shape_loss * shape_head_loss(regressed, x0, self.cfg.shape_emd)
            losses.append(loss)
            steps.append(t)
        per_sample = torch.stack(losses)
        return per_sample.sum(0).mean(), per_sample.detach(), torch.stack(steps)


class EpochBatches(torch.utils.data.Sampler):
    """This process's batches of one epoch: the DistributedSampler's shard, cut into whole
    batches (the same number on every process), from batch ``start`` on."""

    def __init__(self, sampler: torch.utils.data.DistributedSampler, batch_size: int, num_batches: int, start: int):
        self.indices = list(sampler)[: batch_size * num_batches]
        self.batch_size, self.num_batches, self.start = batch_size, num_batches, start

    def __iter__(self):
        for i in range(self.start, self.num_batches):
            yield self.indices[i * self.batch_size : (i + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.num_batches - self.start


# ---- logging, validation, checkpoints -------------------------------------------------------

class Log:
    """Status lines, the append-only stats.jsonl and optional TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / "stats.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                print("warning: tensorboard=true but the tensorboard package is not installed; logging to stats.jsonl only",
                      file=sys.stderr)

    def record(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.tb is not None:
            for k, v in entry.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, entry["step"])

    def say(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)


@torch.no_grad()
def validate(cfg: TrainConfig, nets: list[PVDUNet], val: ShapeDataset, step: int, run_dir: Path,
             device: torch.device) -> dict[str, float]:
    """Sample the first ``val_shapes`` val shapes with the run's sampler (or val_sampler); Chamfer
    distance and F-score to their ground truth (normalised frame) and a PNG grid: input view |
    ground truth | sample."""
    count = min(cfg.val_shapes, len(val))
    items = [val[i] for i in range(count)]
    batch = torch.utils.data.default_collate(items)
    stages = build(validation_diffusion(cfg), cfg.data.num_points)
    for net in nets:
        net.eval()
    conds = make_conditions(cfg, nets, batch, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    samples = sample_stages(stages, nets, conds, count, generator=gen, device=device).float().cpu()
    for net in nets:
        net.train()
    truth = batch["points"]
    diagonal = (truth.amax(1) - truth.amin(1)).norm(dim=-1)
    cd = chamfer_distance(samples, truth)
    f1 = torch.stack([f_score(s[None], g[None], 0.01 * float(d))[0] for s, g, d in zip(samples, truth, diagonal)])
    if "image" in batch:
        tiles = []
        for i in range(count):
            shift, scale = batch["shift"][i].numpy(), float(batch["scale"][i])
            k, e = batch["intrinsics"][i].numpy(), batch["extrinsics"][i].numpy()
            h, w = batch["image"].shape[-2:]
            tiles.append(batch["image"][i].permute(1, 2, 0).numpy())
            for cloud in (truth[i], samples[i]):
                tiles.append(render_points(cloud.numpy() * scale + shift, k, e, h, w))
        (run_dir / "val").mkdir(exist_ok=True)
        save_png(run_dir / "val" / f"step-{step:08d}.png", image_grid(tiles, columns=3))
    return {"val_cd": float(cd.mean()), "val_fscore_1pct": float(f1.mean())}


def make_conditions(cfg: TrainConfig, nets: list[PVDUNet], batch: dict[str, torch.Tensor],
                    device: torch.device) -> list[Condition | None]:
    """One sampling condition per stage (each stage's network encodes the images itself)."""
    fields = {"category": batch["category"].to(device)} if "category" in cfg.condition else {}
    conds = []
    for k, net in enumerate(nets):
        if net.config.condition is None:
            conds.append(None)
        elif "image" in cfg.condition:
            conds.append(net.condition(images=batch["image"].to(device), **fields))
        else:
            conds.append(Condition(**fields))
    return conds


def run_record(cfg: TrainConfig, networks: list[UNetConfig], train: ShapeDataset) -> dict[str, Any]:
    """What sample.py needs besides the weights: configs, data normalisation, view framing."""
    info: dict[str, Any] = {"normalization": train.normalization_info(), "categories": train.info.categories,
                            "num_points": cfg.data.num_points}
    if cfg.data.images:
        with h5py.File(cfg.data.path, "r") as f:
            images = torch.from_numpy(f["images"][: min(64, len(f["images"]))])  # (S, V, H, W, 4)
        views = images.flatten(0, 1).permute(0, 3, 1, 2)
        info.update(image_size=list(views.shape[-2:]), view_fill=view_fill(views))
    return {"train": to_dict(cfg), "networks": [to_dict(n) for n in networks], "dataset": info,
            "pvd_version": pvd.__version__}


def load_weights(source: str, nets: list[PVDUNet], networks: list[UNetConfig]) -> None:
    """init_from: copy another run's weights (its EMA when it has one) into ``nets``."""
    ckpt = checkpoint.load(source)
    theirs = ckpt["run"]["networks"]
    if theirs != [to_dict(n) for n in networks]:
        raise UserError(f"init_from={source}: its networks differ from this run's (model, condition, dropout, cascade)")
    states = ckpt["ema"] or ckpt["models"]
    for net, state in zip(nets, states):
        net.load_state_dict(state)


def stage0_config(cfg: TrainConfig, network: UNetConfig, run_dir: Path) -> RegressorConfig:
    """encoder_pretrain: the stand-alone regressor of this run's encoder, trained into run_dir/encoder."""
    enc = network.encoder
    return RegressorConfig(data=cfg.data, widths=enc.widths, dim=enc.dim, blocks=enc.blocks, pool_grid=enc.pool_grid,
                           shape_points=cfg.shape_points, emd=cfg.shape_emd, batch_size=cfg.batch_size,
                           max_steps=cfg.encoder_pretrain, seed=cfg.seed, run_dir=str(run_dir / "encoder"))


def checkpoint_payload(record: dict[str, Any], nets, ema, optimizer, epoch: int) -> dict[str, Any]:
    return {"run": json.dumps(record), "epoch": epoch, "models": [n.state_dict() for n in nets],
            "ema": [n.state_dict() for n in ema] if ema is not None else None, "optimizer": optimizer.state_dict()}


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig) -> int:
    rank, world, device, distributed = setup_distributed(cfg)
    main_process = rank == 0
    run_dir = Path(cfg.run_dir)
    if main_process and not cfg.resume and checkpoint.list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a run: resume=true continues it, or choose another run_dir")

    train_set = ShapeDataset(cfg.data, "train")
    val_set = ShapeDataset(cfg.data, "val") if cfg.val_every else None
    local_batch = cfg.batch_size // world
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"the training split has {len(train_set)} shapes, fewer than batch_size={cfg.batch_size}")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    stages = build(cfg.diffusion, cfg.data.num_points)
    networks = [network_config(cfg, len(train_set.info.categories), cascade_stage=k > 0) for k in range(len(stages))]
    nets = [PVDUNet(n).to(device) for n in networks]
    record = run_record(cfg, networks, train_set)
    if cfg.init_from:
        load_weights(cfg.init_from, nets, networks)
    source = (regressor.train_once(stage0_config(cfg, networks[0], run_dir), main_process) if cfg.encoder_pretrain
              else cfg.init_encoder)
    if source:  # on resume too, for the record; the checkpoint then replaces the weights
        record["init_encoder"] = regressor.start_encoders(source, [n.encoder for n in nets],
                                                          train_set.normalization_info())
    objective = Objective(nets, stages, cfg)
    optim_cls = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    optimizer = optim_cls(objective.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                          weight_decay=cfg.optim.weight_decay)
    ema = [copy.deepcopy(n).requires_grad_(False) for n in nets] if cfg.optim.ema_decay else None

    step = 0
    if cfg.resume:
        ckpt = checkpoint.load(run_dir, map_location=device)
        for net, state in zip(nets, ckpt["models"]):
            net.load_state_dict(state)
        if ema is not None:
            for net, state in zip(ema, ckpt["ema"]):
                net.load_state_dict(state)
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
    model = nn.parallel.DistributedDataParallel(objective) if distributed else objective

    log = Log(run_dir, main_process, cfg.tensorboard)
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            (run_dir / "stats.jsonl").unlink(missing_ok=True)
        (run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        params = sum(p.numel() for p in objective.parameters())
        log.say(f"{'resuming' if cfg.resume else 'training'} {cfg.model} x{len(nets)} stage(s), {params:,} parameters, "
                f"on {device}{f' x{world} processes' if world > 1 else ''}{' (DDP)' if distributed else ''}: {len(train_set)} shapes, "
                f"{steps_per_epoch} steps/epoch, steps {step}..{total_steps} -> {run_dir}")

    def save(at_step: int, epoch: int) -> None:
        if main_process:
            checkpoint.save(run_dir, at_step, checkpoint_payload(record, nets, ema, optimizer, epoch), cfg.keep)

    def run_validation(at_step: int) -> None:
        if main_process and val_set is not None:
            metrics = validate(cfg, ema or nets, val_set, at_step, run_dir, device)
            log.record({"step": at_step, **metrics})
            log.say(f"step {at_step}: val CD {metrics['val_cd']:.5f}, F@1% {metrics['val_fscore_1pct']:.3f}")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    bar = tqdm(total=total_steps, initial=step, disable=not main_process, unit="step", dynamic_ncols=True)
    window = LossWindow(len(stages), stages[0].diffusion.num_steps, device)
    stopped = False
    with StopRequest() as stop:
        while step < total_steps and not stopped:
            epoch, offset = divmod(step, steps_per_epoch)
            train_set.set_epoch(epoch)
            sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                                          seed=cfg.seed)
            sampler.set_epoch(epoch)
            batches = EpochBatches(sampler, local_batch, steps_per_epoch, offset)
            # Rebuilt each epoch: the epoch keys the draws of the dataset copies in the workers.
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, num_workers=cfg.workers,
                                                 generator=torch.Generator(), pin_memory=device.type == "cuda")
            for batch in loader:
                torch.manual_seed(derive_seed(cfg.seed, step, rank))  # dropout
                lr = learning_rate(cfg, step, epoch, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                keys = [derive_seed(cfg.seed, epoch, row, 1) for row in batch["index"].tolist()]
                with autocast:
                    loss, per_sample, t = model(batch, keys)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip is not None:  # per network: one stage's spike must not shrink another's step
                    for net in nets:
                        nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                if ema is not None:
                    for e_net, net in zip(ema, nets):
                        ema_update(e_net, net, step, cfg.optim.ema_decay)
                step += 1
                bar.update(1)

                window.add(loss, per_sample, t)  # local to each process: rank 0 logs its own
                if step % cfg.log_every == 0 or step == total_steps:
                    entry = {"step": step, "epoch": epoch, "lr": lr, **window.read(cfg.batch_size, len(stages) > 1)}
                    log.record(entry)
                    log.say(f"step {step}/{total_steps} epoch {epoch} loss {entry['loss']:.4f} lr {lr:.2e} "
                            f"{entry['samples_per_s']:.1f} samples/s")
                if stop_agreed(stop.requested, step, device):  # every process stops at the same step
                    stopped = True
                    break
                if step % cfg.ckpt_every == 0 or step == total_steps:
                    save(step, epoch)
                if cfg.val_every and (step % cfg.val_every == 0 or step == total_steps):
                    run_validation(step)
                if step >= total_steps:
                    break
        if stopped:
            save(step, step // steps_per_epoch)
    bar.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if stopped:
        log.say(f"stopped at step {step}; checkpoint saved. Continue with: python train.py resume=true run_dir={run_dir}")
        return 130
    log.say(f"done: {run_dir} (checkpoint {checkpoint.list_checkpoints(run_dir)[-1].name if main_process else ''})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return train(parse_config(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    reexec_with_malloc_settings()  # CPU steps ~2x faster (pvd.runtime)
    run_command(main)
