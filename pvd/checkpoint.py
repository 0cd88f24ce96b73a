"""Checkpoints that cannot be lost or abused.

A checkpoint is one file ``RUN/checkpoints/step-00001234.pt`` holding the model weights (one
state dict per cascade stage), their EMA, the optimiser state, the step and epoch, and the
run's resolved config as a JSON string, so the file alone rebuilds the model. It is written
to a temporary name and renamed (a crash leaves the previous checkpoints intact), the last
``keep`` are kept, and it is read with ``torch.load(weights_only=True)``: tensors, numbers,
strings and containers only, so a crafted file cannot run code on load. :func:`load_run`
rebuilds a run's networks from the file alone.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from pvd.config import TrainConfig, from_dict
from pvd.errors import UserError
from pvd.io import atomic_path
from pvd.nn import PVDUNet
from pvd.nn.unet import UNetConfig

FORMAT = "pvd-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"{path} holds no checkpoints (expected {checkpoint_dir(path)}/step-*.pt)")
        return found[-1]
    raise UserError(f"no checkpoint or run directory at {path}")


def save(run_dir: str | os.PathLike, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` as the checkpoint of ``step`` (atomically) and delete all but the last ``keep``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "step": step, **payload}, tmp)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (a file or a run directory's newest) without executing anything it holds."""
    path = resolve(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global it does not know (os.system, custom classes); a
        # file that is no pickle at all fails differently.
        refused = "unsupported global" in str(e).lower()
        if refused:
            raise UserError(f"{path}: refused to load: it holds objects other than tensors and plain data") from None
        raise UserError(f"{path}: not a readable checkpoint (unpickling failed)") from None
    except Exception as e:  # truncated, or not a torch file at all
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: not a pvd checkpoint")
    if data.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {data.get('version')} is not supported (this pvd reads {VERSION})")
    data["path"] = str(path)
    data["run"] = json.loads(data["run"])
    return data


def load_run(path: str | os.PathLike, device: torch.device, raw: bool = False) -> tuple[dict[str, Any], TrainConfig,
                                                                                        list[PVDUNet]]:
    """A trained run rebuilt from its checkpoint alone: (run record, resolved config, networks).

    path: a run folder (its newest checkpoint) or a checkpoint file. The networks, one per
    cascade stage, are in eval mode on ``device`` with the EMA weights, or the raw weights when
    ``raw`` or when the run kept no EMA. The run record gains "checkpoint" (the file read) and
    "step".
    """
    ckpt = load(path)
    run = ckpt["run"]
    cfg = from_dict(TrainConfig, run["train"])
    nets = []
    states = ckpt["models"] if raw or ckpt["ema"] is None else ckpt["ema"]
    for net_cfg, state in zip(run["networks"], states):
        net = PVDUNet(from_dict(UNetConfig, net_cfg))
        net.load_state_dict(state)
        nets.append(net.to(device).eval())
    run["checkpoint"] = ckpt["path"]
    run["step"] = ckpt["step"]
    return run, cfg, nets
