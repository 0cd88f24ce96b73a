"""Constants every part of the benchmark shares, seeds, and small atomic writers."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvd.io import atomic_path
from pvd.sds.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]  # the repository: train.py and the pvd package
TRUTH_POINTS = 2048  # ground-truth points per shape (PointFlow's held-out slice)
MESH_SAMPLES = 2048  # surface samples per mesh for the mesh metrics
EMD_POINTS = 512  # exact EMD (per shape and the distribution metrics) on the first 512 of the K points: at 2048
                  # it costs ~1 s per pair on a core, 16x more
THRESHOLDS = {"1": 0.01, "2": 0.02}  # F-score distances, fractions of the truth's box diagonal
EXPLODED, COLLAPSED = 2.0, 0.25  # output / truth box-diagonal ratios flagged as failures
BOOTSTRAP = dict(resamples=10000, seed=0, confidence=0.95)
LIFTING = METHODS  # lifting methods, all run by python -m pvd.sds --method M
METHOD_ORDER = ("pvd", "ablation", "sds", "multiview", "magic3d", "regressor", "regressor-alone", "retrieval", "retrieval-alone", "oracle",
                "truth-resample")
METHOD_TITLES = {"pvd": "PVD", "ablation": "PVD ablation", "sds": "SDS lifting", "multiview": "multi-view reconstruction",
                 "magic3d": "Magic3D two-stage", "regressor": "regressor (no diffusion)",
                 "regressor-alone": "regressor (trained alone)", "retrieval": "retrieval (PVD's encoder)",
                 "retrieval-alone": "retrieval (encoder trained alone)", "oracle": "oracle retrieval",
                 "truth-resample": "truth resampled"}
# Per-shape quality numbers: key -> (title, better: "low" | "high", scale for the tables)
METRICS = {
    "cd": ("CD", "low", 1e3), "emd": ("EMD", "low", 1e2), "f1": ("F@1%", "high", 1.0), "f2": ("F@2%", "high", 1.0),
    "iou": ("IoU@32", "high", 1.0), "p1": ("precision@1%", "high", 1.0), "r1": ("recall@1%", "high", 1.0),
    "p2": ("precision@2%", "high", 1.0), "r2": ("recall@2%", "high", 1.0),
    "thin_r2": ("thin recall@2%", "high", 1.0), "mesh_f1": ("mesh F@1%", "high", 1.0),
    "mesh_nc": ("mesh normal consistency", "high", 1.0),
}
FLAGS = ("empty", "exploded", "collapsed", "no_mesh")
TABLE_METRICS = ("cd", "emd", "f1", "f2", "iou", "mesh_nc", "mesh_f1")
DIFF_METRICS = ("cd", "f1", "f2", "emd", "iou")


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, allow_nan=True) + "\n")


def save_npy(path: Path, array: np.ndarray) -> None:
    """Any array as float32 (the cached samples and clouds)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array, dtype=np.float32), allow_pickle=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def file_identity(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)} ({stat.st_size} bytes, modified {stat.st_mtime_ns})"


def finite_mean(values: list[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def subprocess_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, so that child commands
    (``python -m pvd.sds``, train.py) import this checkout's pvd."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def machine() -> str:
    """CPU model, cores, GPU and torch version: the machine the timings were taken on."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {cores} cores{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
