"""Benchmark: native 3D diffusion (PVD) vs SDS lifting vs retrieval on the same test shapes.

Train everything the benchmark needs (sequentially; each step's time is printed and kept in
DIR/train-log.json; a step whose marker DIR/.done-STEP exists is skipped on a rerun):

    python bench.py train --data data/synth.h5 --out runs/bench

    1. single : python train.py quickstart data.path=DATA run_dir=DIR/single
    2. cascade: the same with diffusion.cascade=default and stages 128 -> 512 points
    3. sds    : python -m pvd.sds.train_prior data=DATA run_dir=DIR/sds-prior
    4. pfid   : python -m pvd.pfid train --data DATA --out DIR/pfid

On GPUs, larger runs go through the same command with overrides (untested here: no GPU), e.g.
``--pvd-set epochs=400 batch_size=64 --cascade-set epochs=400 batch_size=64 --prior-set
max_steps=20000``, or a 2048-point cascade with ``--cascade-set data.num_points=2048
'diffusion.cascade.stages=[{"num_points":512},{"num_points":2048}]'``.

Then the benchmark (per test shape, one fixed input view):

    python bench.py --data data/synth.h5 --pvd runs/bench/single --pvd-cascade runs/bench/cascade \\
        --sds runs/bench/sds-prior --pfid runs/bench/pfid --num 50 --sds-num 20 --out outputs/bench

Methods: ``pvd`` (the single-stage run with its recommended sampler: the run's own
``diffusion.sampler`` / ``sampling_steps`` / ``guidance_scale``, or --sampler/--steps/--guidance),
``cascade`` (the coarse-to-fine run), ``sds`` (``python -m pvd.sds`` on the first --sds-num
shapes, same view), ``retrieval`` (the training shape whose view embedding, from the PVD
run's own image encoder, is nearest to the input's), ``oracle`` (the training shape nearest
to the ground truth in Chamfer distance: the bound for any retrieval) and ``truth-resample``
(another sample of the ground-truth surface itself: the ceiling at this point count).

Every number is computed in the dataset's world frame (PVD samples are mapped back with the
run's normalisation). Conventions (also written into every output):

- each output is reduced to K points (--points; default the PVD run's point count) by a
  seeded random subset (fewer points: drawn with replacement);
- the ground truth is the held-out slice ``points[num_train_points:][:2048]`` (PointFlow's);
  CD (squared, PointFlow's), F-score and precision/recall at 1% and 2% of the ground truth's
  bounding-box diagonal (full stored cloud) and the thin-structure recall (ground-truth points
  of parts flagged ``part_thin`` closer than 2% of the diagonal to the output) use all of it;
  EMD (exact) and IoU (32^3 occupancy, the joint bounding cube) use its first K points;
- meshes: PVD outputs are meshed by ``pvd.meshing.mesh_from_points``, SDS keeps its own
  marching-cubes mesh, retrieval / oracle / truth-resample answer with the stored outer
  surface of their shape; 2048 samples of each surface are scored against the ground truth's
  surface points and normals (normal consistency, F-score at 1%);
- an empty output (an SDS grid with no surface) counts as one point at the ground truth's
  box centre (F-score, IoU and recall 0, mesh scores 0); an output whose box diagonal is over
  2x the truth's (or non-finite) is "exploded", under 0.25x "collapsed";
- differences between methods: paired percentile-bootstrap 95% intervals over shapes;
- MMD / COV / 1-NNA (CD, EMD) and P-FID of each method's outputs against the same test shapes
  (K points, world frame);
- latency: seconds per shape at batch 1 with the recommended sampler, meshing excluded
  (median of --latency-shapes shapes after one warm-up); throughput: shapes/s at the best of
  --throughput-batches; network evaluations: denoiser calls per shape (a guided call on the
  doubled batch counts once, as SDS's prior evaluations do); peak memory: the process's
  resident set (CPU) or the CUDA allocator's peak.

Measured on the reference 2-vCPU machine, idle (2026-11-25, see the README's Benchmark
section): training 40.6 min (single stage 8.3, cascade 14.5, SDS prior 16.7, P-FID 1.2); the
benchmark at --num 50 --sds-num 20 41.4 min, 27 of them the SDS lifts (800 iterations, 81 s
per shape), then the curves (DDPM-1000 about 3 min) and the distribution metrics. On cores
that other jobs keep busy, pass --threads 1: two torch threads measured 35x slower there.
The cascade is sampled with the same sampler, steps and guidance as the single stage (the
ablation changes one thing).

Outputs in --out (each written atomically): results.md, results.json, results.csv (one row
per method and shape), grid.png (input | truth | methods for a dozen shapes), worst.png (the
five worst shapes of each method by CD, with their numbers), steps.png and guidance.png (the
quality curves); samples/ and metrics/ cache every shape, so a rerun skips finished shapes;
sds/ holds the SDS command's own outputs. Two runs into fresh folders give the same quality
numbers (results.csv and results.json's "quality"); timings differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pvd.data.hdf5 import SPLITS, FileInfo, open_dataset_file
from pvd.diffusion import build
from pvd.diffusion.cascade import sample_stages
from pvd.diffusion.samplers import SAMPLERS
from pvd.errors import UserError, raise_if_interrupted, run_command
from pvd.io import atomic_path
from pvd.metrics import (CHAMFER_CONVENTIONS, EMD_CONVENTION, F_SCORE_CONVENTION, IOU_CONVENTION,
                         NORMAL_CONSISTENCY_CONVENTION, chamfer_distance, distribution_metrics, emd,
                         normal_consistency, pairwise_chamfer, pairwise_emd, precision_recall, voxel_iou)
from pvd.metrics.bootstrap import bootstrap_mean_ci, convention as bootstrap_convention, paired_bootstrap_ci
from pvd.metrics.volume import sample_mesh_surface
from pvd.runtime import PeakMemory, pick_device

ROOT = Path(__file__).resolve().parent
REF_POINTS = 2048  # ground-truth points per shape (PointFlow's held-out slice)
MESH_SAMPLES = 2048  # surface samples per mesh for the mesh metrics
THRESHOLDS = {"1": 0.01, "2": 0.02}  # F-score distances, fractions of the truth's box diagonal
EXPLODED, COLLAPSED = 2.0, 0.25  # output / truth box-diagonal ratios flagged as failures
BOOTSTRAP = dict(resamples=10000, seed=0, confidence=0.95)
METHOD_ORDER = ("pvd", "cascade", "sds", "retrieval", "oracle", "truth-resample")
METHOD_TITLES = {"pvd": "PVD", "cascade": "PVD cascade", "sds": "SDS lifting", "retrieval": "retrieval",
                 "oracle": "oracle retrieval", "truth-resample": "truth resampled"}
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
DEFAULT_STEPS_CURVE = "ddim:10,25,50,100;dpm++2m:10,25;heun:10,25;ddpm:1000"
DEFAULT_GUIDANCE_CURVE = "1,2,3,5"


# ---- small helpers --------------------------------------------------------------------------

def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, allow_nan=True) + "\n")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array, dtype=np.float32), allow_pickle=False)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def file_identity(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)} ({stat.st_size} bytes, modified {stat.st_mtime_ns})"


def finite_mean(values: list[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


# ---- the test shapes ------------------------------------------------------------------------

@dataclass
class Shape:
    """One test shape: its input view and everything it is scored against (world frame)."""

    name: str
    row: int
    category: str
    category_index: int
    image: np.ndarray  # (H, W, 4) uint8, the input view
    intrinsics: np.ndarray  # (3, 3) of the input view
    extrinsics: np.ndarray  # (4, 4)
    ref: np.ndarray | None = None  # (R, 3) ground truth, the held-out slice
    ref_normals: np.ndarray | None = None  # (R, 3) or None when the file stores no normals
    ref_thin: np.ndarray | None = None  # (R,) bool: in a thin part; None without part labels
    resample: np.ndarray | None = None  # (K, 3) another sample of the truth (points [0:K])
    diag: float = 1.0  # bounding-box diagonal of the stored cloud
    centre: np.ndarray | None = None  # (3,) its box centre


@dataclass
class Data:
    path: str
    split: str
    view: int
    info: FileInfo
    shapes: list[Shape]  # every split shape of the chosen categories, in file order (inputs only)
    num: int  # the first ``num`` are evaluated (and carry ground truth)
    ref_points: int
    has_normals: bool
    has_thin: bool


def load_data(path: str, split: str, view: int, categories: list[str], num: int | None, points: int) -> Data:
    with open_dataset_file(path) as f:
        info = FileInfo.read(f)
        if split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not info.has_images or "cameras" not in f:
            raise UserError(f"{path} has no rendered views (images and cameras): the methods start from an image")
        if not 0 <= view < info.num_views:
            raise UserError(f"--view {view} is out of range (the file has {info.num_views} views)")
        ids = info.category_ids(categories)
        rows = np.flatnonzero((info.split == SPLITS.index(split)) & np.isin(info.category, ids))
        if len(rows) == 0:
            raise UserError(f"{path} has no {split} shapes of the run's categories ({', '.join(categories)})")
        held_out = info.num_points - info.num_train_points
        ref_points = min(REF_POINTS, held_out)
        if points > ref_points:
            raise UserError(f"--points {points}: the ground truth has only {ref_points} held-out points per shape")
        if points > info.num_train_points:
            raise UserError(f"--points {points} is more than the {info.num_train_points} training points per shape")
        count = len(rows) if num is None else min(num, len(rows))
        cams = f["cameras"]
        has_normals = "normals" in f
        has_thin = "part_labels" in f and "part_thin" in f.attrs
        thin_flags = np.asarray(f.attrs["part_thin"], bool) if has_thin else None
        lo_all, hi_all = f["shape_stats/bbox_min"][:], f["shape_stats/bbox_max"][:]
        shapes = []
        start = info.num_train_points
        for k, row in enumerate(rows):
            row = int(row)
            shape = Shape(name=f"{split}-{row:05d}", row=row, category=info.categories[int(info.category[row])],
                          category_index=int(info.category[row]), image=f["images"][row, view],
                          intrinsics=cams["intrinsics"][row, view].astype(np.float64),
                          extrinsics=cams["extrinsics"][row, view].astype(np.float64))
            if k < count:
                shape.ref = f["points"][row, start : start + ref_points].astype(np.float64)
                shape.resample = f["points"][row, :points].astype(np.float64)
                if has_normals:
                    shape.ref_normals = f["normals"][row, start : start + ref_points].astype(np.float64)
                if has_thin:
                    labels = f["part_labels"][row, start : start + ref_points]
                    shape.ref_thin = thin_flags[labels]
                lo, hi = lo_all[row].astype(np.float64), hi_all[row].astype(np.float64)
                shape.diag = float(np.linalg.norm(hi - lo))
                shape.centre = (lo + hi) / 2
            shapes.append(shape)
    return Data(path, split, view, info, shapes, count, ref_points, has_normals, has_thin)


# ---- PVD runs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """A sampler setting: name, steps (None: the sampler's default / all T for ddpm), guidance."""

    sampler: str
    steps: int | None
    guidance: float

    @property
    def label(self) -> str:
        return f"{self.sampler}-{self.steps if self.steps is not None else 'all'}-g{self.guidance:g}"


class Counter:
    """Wraps a denoiser and counts its calls (one per sampler step, per stage)."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


class PVDModel:
    """A trained run (EMA weights), sampled in fixed chunks of shapes with per-chunk seeds."""

    def __init__(self, path: str, device: torch.device, label: str):
        from pvd.checkpoint import load_run

        self.path, self.device, self.label = path, device, label
        self.run, self.cfg, self.nets = load_run(path, device, raw=False)
        if "image" not in self.cfg.condition:
            raise UserError(f"{path}: the benchmark starts from images; this run is conditioned on {self.cfg.condition!r}")
        norm = self.run["dataset"]["normalization"]
        self.normalization = norm
        self.categories = list(self.run["dataset"]["categories"])
        self.trained_categories = list(norm.get("categories") or self.categories)
        self.num_points = int(self.cfg.data.num_points)
        self.is_cascade = self.cfg.diffusion.cascade is not None
        d = self.cfg.diffusion
        self.recommended = Spec(d.sampler, d.sampling_steps, float(d.guidance_scale))

    def describe(self) -> dict[str, Any]:
        return {"run": self.path, "checkpoint": self.run["checkpoint"], "step": self.run["step"],
                "stages": [s.num_points for s in self.stages(self.recommended)], "model": self.cfg.model,
                "condition": self.cfg.condition, "recommended_sampler": dataclasses.asdict(self.recommended)}

    def stages(self, spec: Spec):
        diffusion = dataclasses.replace(self.cfg.diffusion, sampler=spec.sampler, sampling_steps=spec.steps,
                                        guidance_scale=spec.guidance)
        return build(diffusion, self.num_points)

    def check_spec(self, spec: Spec) -> None:
        if spec.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {spec.sampler!r}; choose from {', '.join(SAMPLERS)}")
        self.stages(spec)  # UserError on steps that do not fit

    def to_world(self, points: np.ndarray, shift_scale) -> np.ndarray:
        """(B, N, 3) normalised samples -> world frame; shift_scale: per sample (shift (3,), scale)."""
        out = np.empty_like(points, dtype=np.float64)
        for i, (shift, scale) in enumerate(shift_scale):
            out[i] = points[i].astype(np.float64) * scale + shift
        return out

    @torch.no_grad()
    def sample(self, spec: Spec, images: np.ndarray, categories: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        """(B, N, 3) normalised samples for images (B, H, W, 4) uint8 and (B,) category indices;
        and the denoiser calls made."""
        b = len(images)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)
        fields = {"category": torch.as_tensor(categories, dtype=torch.long, device=self.device)} \
            if "category" in self.cfg.condition else {}
        conds = [net.condition(images=x, **fields) if net.config.condition is not None else None for net in self.nets]
        counted = [Counter(net) for net in self.nets]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = sample_stages(self.stages(spec), counted, conds, b, generator=generator, device=self.device)
        sync(self.device)
        return out.float().cpu().numpy(), sum(c.calls for c in counted)


def shift_scales(model: PVDModel, data: Data, shapes: list[Shape]) -> list[tuple[np.ndarray, float]]:
    """The run's normalisation for each shape: its global PointFlow statistics, or the shape's own."""
    norm = model.normalization
    if norm["normalization"] == "pointflow":
        return [(np.asarray(norm["mean"], np.float64), float(norm["std"]))] * len(shapes)
    if norm["normalization"] == "none":
        return [(np.zeros(3), 1.0)] * len(shapes)
    from pvd.data.hdf5 import DatasetConfig, ShapeDataset

    ds = ShapeDataset(DatasetConfig(path=data.path, normalization=norm["normalization"], images=False,
                                    num_points=1), data.split, train=False)
    out = []
    for s in shapes:
        shift, scale = ds.shift_scale(s.row)
        out.append((np.asarray(shift, np.float64), float(scale)))
    return out


def sample_method(model: PVDModel, spec: Spec, data: Data, count: int, batch: int, seed: int, folder: Path,
                  desc: str) -> dict[str, np.ndarray]:
    """World-frame samples of the first ``count`` shapes, cached per shape in ``folder``.

    Shapes are sampled in fixed chunks of ``batch`` consecutive split shapes, chunk k with the
    generator seeded by (seed, k), so a shape's sample depends neither on --num nor on which
    shapes an earlier, interrupted run had finished. A chunk's time and calls go to chunk-k.json.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chunks = range(0, -(-count // batch))
    todo = [k for k in chunks if not all((folder / f"{s.name}.npy").is_file()
                                         for s in data.shapes[k * batch : (k + 1) * batch])]
    if todo:
        bar = tqdm(total=sum(len(data.shapes[k * batch : (k + 1) * batch]) for k in todo), desc=desc, unit="shape",
                   dynamic_ncols=True, disable=None)
        for k in todo:
            raise_if_interrupted()
            part = data.shapes[k * batch : (k + 1) * batch]
            tic = time.perf_counter()
            x, calls = model.sample(spec, np.stack([s.image for s in part]), np.array([s.category_index for s in part]),
                                    stable_seed(seed, k))
            seconds = time.perf_counter() - tic
            world = model.to_world(x, shift_scales(model, data, part))
            for s, cloud in zip(part, world):
                save_npy(folder / f"{s.name}.npy", cloud)
            write_json(folder / f"chunk-{k:04d}.json", {"shapes": len(part), "seconds": seconds, "calls": calls,
                                                        "device": str(model.device)})
            bar.update(len(part))
        bar.close()
    return {s.name: np.load(folder / f"{s.name}.npy").astype(np.float64) for s in data.shapes[:count]}


def chunk_timing(folder: Path) -> dict[str, float]:
    """Seconds per shape and calls per shape over a folder's recorded chunks (at the benchmark's batch)."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("chunk-*.json"))]
    if not records:
        return {}
    shapes = sum(r["shapes"] for r in records)
    return {"seconds_per_shape": sum(r["seconds"] for r in records) / shapes,
            "calls_per_shape": float(np.mean([r["calls"] for r in records]))}


def measure_cost(model: PVDModel, spec: Spec, data: Data, latency_shapes: int, batches: list[int]) -> dict[str, Any]:
    """Latency at batch 1 (median over shapes after a warm-up), throughput per batch size, calls, peak memory."""
    shapes = data.shapes[: max(1, latency_shapes)]

    def run(part: list[Shape]) -> tuple[float, int]:
        tic = time.perf_counter()
        _, calls = model.sample(spec, np.stack([s.image for s in part]), np.array([s.category_index for s in part]), 0)
        return time.perf_counter() - tic, calls

    run(shapes[:1])  # warm-up: first-call allocations and lazy initialisation
    with PeakMemory(model.device) as memory:
        before = memory.peak  # CPU: the resident set at entry; CUDA: 0 (the peak was reset)
        timed = [run([s]) for s in tqdm(shapes, desc=f"{model.label} latency", unit="shape", disable=None)]
    seconds = [t for t, _ in timed]
    result: dict[str, Any] = {
        "sampler": dataclasses.asdict(spec), "device": str(model.device), "latency_shapes": len(shapes),
        "seconds_per_shape_batch1": float(np.median(seconds)), "seconds_batch1_all": seconds,
        "network_evaluations_per_shape": timed[0][1],
        "peak_memory_mb_batch1": memory.peak / 2**20,
        "memory_increase_mb_batch1": (memory.peak - before) / 2**20,
        "throughput": [],
    }
    for b in tqdm(batches, desc=f"{model.label} throughput", unit="batch", disable=None):
        part = [data.shapes[i % len(data.shapes)] for i in range(b)]
        with PeakMemory(model.device) as memory:
            t, _ = run(part)
        result["throughput"].append({"batch": b, "seconds": t, "shapes_per_s": b / t, "peak_memory_mb": memory.peak / 2**20})
    if result["throughput"]:
        best = max(result["throughput"], key=lambda r: r["shapes_per_s"])
        result["best_batch"], result["best_shapes_per_s"] = best["batch"], best["shapes_per_s"]
    return result


# ---- the SDS baseline -----------------------------------------------------------------------

def run_sds(args, data: Data, device: torch.device, folder: Path) -> dict[str, dict[str, Any]]:
    """``python -m pvd.sds`` over the first --sds-num split shapes (its own per-shape caching);
    returns name -> {"points": (N, 3) world | None, "mesh": path | None, "record": dict}."""
    count = min(args.sds_num, data.num)
    cmd = [sys.executable, "-m", "pvd.sds", "--prior", args.sds, "--data", data.path, "--split", data.split,
           "--num", str(count), "--view", str(data.view), "--seed", str(args.seed), "--out", str(folder),
           "--device", str(device)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.sds_set:
        cmd += ["--set", *args.sds_set]
    print(f"sds: {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(cmd, env=env)
    if done.returncode == 130:
        raise KeyboardInterrupt
    if done.returncode != 0:
        raise UserError(f"the SDS baseline failed (exit {done.returncode}; its message is above)")
    out = {}
    for shape in data.shapes[:count]:
        record_path = folder / "records" / f"{shape.name}.json"
        if not record_path.is_file():
            continue  # the SDS command's split order differs when the run covers only some categories
        record = json.loads(record_path.read_text())
        pts = folder / f"{shape.name}.npy"
        mesh = folder / f"{shape.name}.obj"
        out[shape.name] = {"points": np.load(pts).astype(np.float64) if pts.is_file() and not record.get("empty") else None,
                           "mesh": mesh if mesh.is_file() else None, "record": record}
    return out


# ---- per-shape metrics ----------------------------------------------------------------------

def reduce_points(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A seeded random subset of k points (with replacement when there are fewer)."""
    rng = np.random.default_rng(seed)
    n = len(points)
    index = np.sort(rng.choice(n, k, replace=False)) if n >= k else rng.choice(n, k, replace=True)
    return points[index]


def _batch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None]


def shape_metrics(pred: np.ndarray | None, shape: Shape, k: int, seed: int, method: str,
                  surface: tuple[np.ndarray, np.ndarray | None] | None) -> tuple[dict[str, Any], np.ndarray]:
    """Every per-shape number of one output (see the module docstring), and the K-point cloud scored.

    pred: (N, 3) world frame, or None for an empty output. surface: (points, normals) sampled on
    the output's mesh or stored surface, None when there is none.
    """
    record: dict[str, Any] = {"points": 0 if pred is None else int(len(pred))}
    finite = None if pred is None else pred[np.isfinite(pred).all(axis=1)]
    record["empty"] = finite is None or len(finite) == 0
    if record["empty"]:
        cloud = np.repeat(shape.centre[None], k, axis=0)
        record["extent_ratio"] = 0.0
    else:
        cloud = reduce_points(finite, k, stable_seed(seed, method, shape.row, "reduce"))
        record["extent_ratio"] = float(np.linalg.norm(finite.max(0) - finite.min(0)) / shape.diag)
    record["exploded"] = bool(pred is not None and (len(finite) < len(pred) or record["extent_ratio"] > EXPLODED))
    record["collapsed"] = bool(not record["empty"] and record["extent_ratio"] < COLLAPSED)
    a, ref, ref_k = _batch(cloud), _batch(shape.ref), _batch(shape.ref[:k])
    record["cd"] = float(chamfer_distance(a, ref)[0])
    record["emd"] = float(emd(a, ref_k, exact=True, workers=1)[0])
    record["iou"] = float(voxel_iou(a, ref_k, resolution=32)[0])
    empty = record["empty"]
    for tag, frac in THRESHOLDS.items():
        p, r = precision_recall(a, ref, frac * shape.diag)
        p, r = (0.0, 0.0) if empty else (float(p[0]), float(r[0]))
        record[f"p{tag}"], record[f"r{tag}"] = p, r
        record[f"f{tag}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    record["thin_r2"] = float("nan")
    if shape.ref_thin is not None and shape.ref_thin.any():
        if empty:
            record["thin_r2"] = 0.0
        else:
            from pvd.metrics import nearest_neighbors

            d2, _ = nearest_neighbors(_batch(shape.ref[shape.ref_thin]), a)
            record["thin_r2"] = float((d2[0].sqrt() < THRESHOLDS["2"] * shape.diag).double().mean())
    record["no_mesh"] = surface is None
    if surface is None:
        record["mesh_f1"] = 0.0
        record["mesh_nc"] = 0.0 if shape.ref_normals is not None else float("nan")
    else:
        pts, normals = surface
        p, r = precision_recall(_batch(pts), ref, THRESHOLDS["1"] * shape.diag)
        p, r = float(p[0]), float(r[0])
        record["mesh_f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        record["mesh_nc"] = float("nan")
        if normals is not None and shape.ref_normals is not None:
            record["mesh_nc"] = float(normal_consistency(_batch(pts), _batch(normals), ref, _batch(shape.ref_normals))[0])
    return record, cloud


def mesh_surface(points: np.ndarray | None, mesh_path: Path | None, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """MESH_SAMPLES points and face normals on a mesh: the given file's, else one made from the points."""
    import trimesh

    from pvd.meshing import mesh_from_points

    try:
        if mesh_path is not None:
            mesh = trimesh.load(mesh_path, process=False, force="mesh")
        elif points is not None and len(points) >= 10 and np.isfinite(points).all():
            mesh = mesh_from_points(points)
        else:
            return None
        if len(mesh.faces) == 0:
            return None
        return sample_mesh_surface(mesh.vertices, mesh.faces, MESH_SAMPLES, seed)
    except (UserError, ValueError):
        return None


def stored_surface(path: str, row: int, start: int, has_normals: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A stored shape's surface: MESH_SAMPLES of its points (and normals) from ``start``."""
    with open_dataset_file(path) as f:
        pts = f["points"][row, start : start + MESH_SAMPLES].astype(np.float64)
        normals = f["normals"][row, start : start + MESH_SAMPLES].astype(np.float64) if has_normals else None
    return pts, normals


def score_method(method: str, outputs: dict[str, Any], data: Data, k: int, seed: int, folder: Path,
                 surfaces: Any) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Per-shape records (cached in folder/NAME.json) and K-point clouds (folder/NAME.npy) of one method.

    outputs: name -> (N, 3) world cloud or None (empty). surfaces(name, pred) -> (points, normals) | None.
    """
    folder.mkdir(parents=True, exist_ok=True)
    records, clouds = {}, {}
    names = [s for s in data.shapes[: data.num] if s.name in outputs]
    todo = {s.name for s in names if not ((folder / f"{s.name}.json").is_file() and (folder / f"{s.name}.npy").is_file())}
    bar = tqdm(total=len(todo), desc=f"metrics {method}", unit="shape", dynamic_ncols=True, disable=None if todo else True)
    for shape in names:
        rec_path, cloud_path = folder / f"{shape.name}.json", folder / f"{shape.name}.npy"
        if shape.name in todo:
            raise_if_interrupted()
            pred = outputs[shape.name]
            record, cloud = shape_metrics(pred, shape, k, seed, method, surfaces(shape, pred))
            record.update(name=shape.name, row=shape.row, category=shape.category, method=method)
            save_npy(cloud_path, cloud)
            write_json(rec_path, record)
            bar.update(1)
        records[shape.name] = json.loads(rec_path.read_text())
        clouds[shape.name] = np.load(cloud_path).astype(np.float64)
    bar.close()
    return records, clouds


# ---- aggregates -----------------------------------------------------------------------------

def summarize(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means with bootstrap intervals per metric (shapes where it is defined), and failure counts."""
    out: dict[str, Any] = {"shapes": len(records), "mean": {}, "failures": {}}
    for key in METRICS:
        values = [r[key] for r in records.values() if r.get(key) is not None and math.isfinite(r[key])]
        out["mean"][key] = bootstrap_mean_ci(values, **BOOTSTRAP).as_dict() if values else None
    for flag in FLAGS:
        out["failures"][flag] = int(sum(bool(r.get(flag)) for r in records.values()))
    return out


def per_category(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    cats: dict[str, dict[str, Any]] = {}
    for r in records.values():
        cats.setdefault(r["category"], []).append(r)
    keys = ("cd", "emd", "f1", "f2", "iou", "thin_r2", "mesh_f1")
    return {c: {"shapes": len(rs), **{k: finite_mean([r[k] for r in rs]) for k in keys}}
            for c, rs in sorted(cats.items())}


def differences(all_records: dict[str, dict[str, dict[str, Any]]], base: str) -> list[dict[str, Any]]:
    """Paired bootstrap intervals of base - other on the shapes both have, for every other method."""
    rows = []
    if base not in all_records:
        return rows
    for other in all_records:
        if other == base or other == "truth-resample":  # the ceiling: its gap is in the quality table
            continue
        shared = [n for n in all_records[base] if n in all_records[other]]
        if not shared:
            continue
        for key in DIFF_METRICS:
            a = [all_records[base][n][key] for n in shared]
            b = [all_records[other][n][key] for n in shared]
            ci = paired_bootstrap_ci(a, b, **BOOTSTRAP)
            lower_better = METRICS[key][1] == "low"
            if not ci.excludes(0.0):
                verdict = "no significant difference"
            else:
                better = (ci.mean < 0) == lower_better
                verdict = f"{METHOD_TITLES.get(base, base)} {'better' if better else 'worse'}"
            rows.append({"a": base, "b": other, "metric": key, **ci.as_dict(), "verdict": verdict})
    return rows


def matrix_cache(folder: Path, name: str, arrays: list[np.ndarray], compute) -> np.ndarray:
    """A pairwise matrix cached under a hash of its inputs."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    path = folder / f"{name}-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    folder.mkdir(parents=True, exist_ok=True)
    m = np.asarray(compute(), dtype=np.float64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, m)
    return m


def distribution(clouds: dict[str, dict[str, np.ndarray]], data: Data, k: int, which: list[str], workers: int | None,
                 classifier, cache: Path) -> dict[str, Any]:
    """MMD/COV/1-NNA (CD and/or EMD) and P-FID of each method's outputs against the same test shapes."""
    results: dict[str, Any] = {}
    refs_all = {s.name: s.ref[:k] for s in data.shapes[: data.num]}
    methods = [m for m in clouds if m != "oracle"]
    total = 0
    for m in methods:
        n = len(clouds[m])
        total += sum(n * (n - 1) // 2 * 2 + n * n for _ in which)
    bar = tqdm(total=total, desc="distribution metrics", unit="pair", dynamic_ncols=True, disable=None)
    for m in methods:
        names = list(clouds[m])
        if len(names) < 2:
            continue
        samples = np.stack([clouds[m][n] for n in names])
        refs = np.stack([refs_all[n] for n in names])
        matrices = {}
        for metric in which:
            fn = (lambda x, y=None: pairwise_chamfer(x, y, workers=workers)) if metric == "CD" else \
                 (lambda x, y=None: pairwise_emd(x, y, exact=True, workers=workers))
            mats = {}
            for key, (x, y) in {"rr": (refs, None), "rs": (refs, samples), "ss": (samples, None)}.items():
                n = len(x)
                mats[key] = matrix_cache(cache, f"{metric}-{key}", [x] + ([] if y is None else [y]),
                                         lambda x=x, y=y: fn(torch.from_numpy(x), None if y is None else torch.from_numpy(y)))
                bar.update(n * (n - 1) // 2 if y is None else n * len(y))
            matrices[metric] = mats
        result = distribution_metrics(samples, refs, metrics=which, normalization="none", matrices=matrices)
        result.pop("convention")
        if classifier is not None:
            from pvd.pfid import pfid_metrics

            scores = pfid_metrics(classifier, samples, refs)
            scores.pop("convention")
            result.update(scores)
        results[m] = result
    bar.close()
    return results


# ---- figures --------------------------------------------------------------------------------

TILE = 96


def render(points: np.ndarray | None, shape: Shape, colors=None, overlay: np.ndarray | None = None) -> np.ndarray:
    """(TILE, TILE, 4) uint8: the cloud seen from the input view's camera (optionally over the truth in grey)."""
    from pvd.data.render import render_points

    k = shape.intrinsics.copy()
    k[:2] *= TILE / shape.image.shape[1]
    if points is None and overlay is None:
        return np.zeros((TILE, TILE, 4), np.uint8)
    pts = np.zeros((0, 3)) if points is None else points
    if overlay is not None:
        colors = np.concatenate([np.tile([[0.9, 0.3, 0.2]], (len(pts), 1)), np.tile([[0.75, 0.75, 0.75]], (len(overlay), 1))])
        pts = np.concatenate([pts, overlay])
    return render_points(pts, k, shape.extrinsics, TILE, TILE, colors=colors, radius_px=1.0)


def input_tile(shape: Shape) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(shape.image, "RGBA").resize((TILE, TILE), Image.NEAREST))


def figure_grid(data: Data, outputs: dict[str, dict[str, Any]], path: Path, count: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("pvd", "cascade", "sds", "retrieval", "oracle") if m in outputs]
    with_sds = [s for s in data.shapes[: data.num] if "sds" not in outputs or s.name in outputs["sds"]]
    shapes = (with_sds if len(with_sds) >= min(count, data.num) else data.shapes[: data.num])[:count]
    columns = ["input", "truth"] + [METHOD_TITLES[m] for m in methods]
    fig, axes = plt.subplots(len(shapes), len(columns), figsize=(1.3 * len(columns), 1.3 * len(shapes) + 0.3), squeeze=False)
    for i, s in enumerate(shapes):
        tiles = [input_tile(s), render(s.ref, s)] + [render(outputs[m].get(s.name), s) if s.name in outputs[m]
                                                     else np.zeros((TILE, TILE, 4), np.uint8) for m in methods]
        for j, tile in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(tile)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{s.category}\n{s.name}", fontsize=6)
    fig.tight_layout(pad=0.2)
    save_figure(fig, path)


def figure_worst(data: Data, records: dict[str, dict[str, dict[str, Any]]], clouds: dict[str, dict[str, np.ndarray]],
                 path: Path, worst: dict[str, list[str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHOD_ORDER if m in worst and worst[m]]
    by_name = {s.name: s for s in data.shapes[: data.num]}
    cols = 5
    fig, axes = plt.subplots(max(len(methods), 1), cols, figsize=(1.8 * cols, 2.0 * max(len(methods), 1) + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for i, m in enumerate(methods):
        for j, name in enumerate(worst[m]):
            s, r = by_name[name], records[m][name]
            ax = axes[i, j]
            ax.axis("on")
            ax.imshow(render(None if r["empty"] else clouds[m][name], s, overlay=s.ref))
            flags = ", ".join(f for f in FLAGS if r.get(f) and f != "no_mesh")
            ax.set_title(f"{name} ({s.category})\nCD {r['cd']:.3g}, F@1% {r['f1']:.2f}" + (f"\n{flags}" if flags else ""),
                         fontsize=6)
            if j == 0:
                ax.set_ylabel(METHOD_TITLES[m], fontsize=8)
    fig.suptitle("worst five shapes per method by CD (output red, truth grey, input camera)", fontsize=8)
    fig.tight_layout(pad=0.3)
    save_figure(fig, path)


def figure_curve(points: list[dict[str, Any]], x_key: str, group_key: str | None, path: Path, xlabel: str, log: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(p[group_key] if group_key else "", []).append(p)
    for label, items in groups.items():
        items = sorted(items, key=lambda p: p[x_key])
        for ax, key in zip(axes, ("cd", "f1")):
            xs = [p[x_key] for p in items]
            mean = [p[key]["mean"] * METRICS[key][2] for p in items]
            lo = [p[key]["low"] * METRICS[key][2] for p in items]
            hi = [p[key]["high"] * METRICS[key][2] for p in items]
            ax.errorbar(xs, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], marker="o", capsize=3,
                        label=label or None)
    axes[0].set(xlabel=xlabel, ylabel="CD (x1e-3, squared, world frame)")
    axes[1].set(xlabel=xlabel, ylabel="F-score @ 1% of the box diagonal")
    for ax in axes:
        if log:
            ax.set_xscale("log")
        if group_key:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


# ---- tables ---------------------------------------------------------------------------------

def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def num(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def fmt(value: Any, key: str, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * METRICS[key][2]:.{digits}f}"


def fmt_ci(ci: dict[str, Any] | None, key: str) -> str:
    if not ci:
        return "-"
    return f"{fmt(ci['mean'], key)} [{fmt(ci['low'], key)}, {fmt(ci['high'], key)}]"


def metric_header(key: str) -> str:
    title, better, scale = METRICS[key]
    unit = f" (x10^{-round(math.log10(scale))})" if scale != 1 else ""
    return f"{title}{unit} {'↓' if better == 'low' else '↑'}"


def markdown(result: dict[str, Any]) -> str:
    q, cost, s = result["quality"], result["cost"], result["settings"]
    L: list[str] = []
    add = L.append
    add("# Benchmark: native 3D diffusion vs SDS lifting vs retrieval")
    add("")
    add(f"{s['shapes']} {s['split']} shapes of `{s['data']}` ({', '.join(s['categories'])}), input view {s['view']}, "
        f"outputs reduced to K = {s['points']} points, world frame; SDS on the first {s['sds_shapes']}. "
        f"Machine: {result['machine']}. Command: `{result['command']}`")
    add("")
    add("Conventions: " + "; ".join(f"**{k}**: {v}" for k, v in result["conventions"].items()))
    add("")
    add("## Quality (mean over shapes [95% bootstrap interval])")
    add("")
    add("| method | shapes | " + " | ".join(metric_header(k) for k in TABLE_METRICS) + " | empty / exploded / collapsed |")
    add("|---|---:|" + "---:|" * len(TABLE_METRICS) + "---|")
    for m, summary in q["methods"].items():
        f = summary["failures"]
        add(f"| {METHOD_TITLES.get(m, m)} | {summary['shapes']} | " +
            " | ".join(fmt_ci(summary["mean"].get(k), k) for k in TABLE_METRICS) +
            f" | {f['empty']} / {f['exploded']} / {f['collapsed']} |")
    add("")
    if q["differences"]:
        add("## Differences (paired bootstrap, 95%): first method minus second, on the shapes both have")
        add("")
        add("| comparison | metric | shapes | difference [95% CI] | verdict |")
        add("|---|---|---:|---|---|")
        for d in q["differences"]:
            key = d["metric"]
            pair = f"{METHOD_TITLES.get(d['a'], d['a'])} - {METHOD_TITLES.get(d['b'], d['b'])}"
            add(f"| {pair} | {metric_header(key)} | {d['n']} | "
                f"{fmt(d['mean'], key, 4)} [{fmt(d['low'], key, 4)}, {fmt(d['high'], key, 4)}] | {d['verdict']} |")
        add("")
    if q.get("ablation"):
        a = q["ablation"]
        add("## Cascade vs single stage (ablation)")
        add("")
        add("| | " + " | ".join(metric_header(k) for k in ("cd", "emd", "f1", "f2", "iou", "thin_r2")) +
            " | s/shape (batch 1) | network evaluations | training |")
        add("|---|" + "---:|" * 9)
        for m in ("pvd", "cascade"):
            c = cost.get("methods", {}).get(m, {})
            add(f"| {METHOD_TITLES[m]} ({a['stages'][m]}) | " +
                " | ".join(fmt_ci(q["methods"][m]["mean"].get(k), k) for k in ("cd", "emd", "f1", "f2", "iou", "thin_r2")) +
                f" | {num(c.get('seconds_per_shape_batch1'))} | {num(c.get('network_evaluations_per_shape'), 'g')} | "
                f"{minutes(cost.get('training', {}).get(a['train_step'][m], {}).get('seconds'))} |")
        add("")
    if q.get("distribution"):
        add("## Distribution metrics against the same test shapes (K points, world frame)")
        add("")
        keys = [k for k in ("MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD", "COV-EMD", "1-NNA-EMD", "P-FID", "P-KID")
                if any(k in v for v in q["distribution"].values())]
        units = {"MMD-CD": " (x10^-3)", "MMD-EMD": " (x10^-2)", "COV-CD": " (%)", "COV-EMD": " (%)", "1-NNA-CD": " (%)",
                 "1-NNA-EMD": " (%)"}
        add("| method | shapes | " + " | ".join(k + units.get(k, "") for k in keys) + " |")
        add("|---|---:|" + "---:|" * len(keys))
        for m, d in q["distribution"].items():
            cells = []
            for k in keys:
                v = d.get(k)
                if v is None:
                    cells.append("-")
                elif k == "MMD-CD":
                    cells.append(f"{v * 1e3:.3f}")
                elif k == "MMD-EMD":
                    cells.append(f"{v * 1e2:.3f}")
                elif k[:3] in ("COV", "1-N"):
                    cells.append(f"{100 * v:.1f}")
                else:
                    cells.append(f"{v:.4g}")
            add(f"| {METHOD_TITLES.get(m, m)} | {d['num_samples']} | " + " | ".join(cells) + " |")
        add("")
    add("## Per category (means)")
    add("")
    cats = sorted({c for v in q["per_category"].values() for c in v})
    for key in ("cd", "f1", "thin_r2"):
        add(f"{metric_header(key)}:")
        add("")
        add("| method | " + " | ".join(cats) + " |")
        add("|---|" + "---:|" * len(cats))
        for m, v in q["per_category"].items():
            add(f"| {METHOD_TITLES.get(m, m)} | " + " | ".join(fmt(v.get(c, {}).get(key), key) for c in cats) + " |")
        add("")
    add("## Failure analysis")
    add("")
    add("| method | shapes | empty | exploded | collapsed | no mesh | recall@2% (all) | thin recall@2% |" +
        (" SDS Janus | SDS floaters |" if "sds_flags" in q else ""))
    add("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if "sds_flags" in q else ""))
    for m, summary in q["methods"].items():
        f = summary["failures"]
        extra = ""
        if "sds_flags" in q:
            extra = f" {q['sds_flags']['janus']} |  {q['sds_flags']['floaters']} |" if m == "sds" else " - | - |"
        add(f"| {METHOD_TITLES.get(m, m)} | {summary['shapes']} | {f['empty']} | {f['exploded']} | {f['collapsed']} | "
            f"{f['no_mesh']} | {fmt_ci(summary['mean'].get('r2'), 'r2')} | "
            f"{fmt_ci(summary['mean'].get('thin_r2'), 'thin_r2')} |" + extra)
    add("")
    add("Worst five shapes by CD (worst.png):")
    add("")
    for m, names in q["worst"].items():
        add(f"- {METHOD_TITLES.get(m, m)}: " + ", ".join(names))
    add("")
    add("## Cost (same run, same machine)")
    add("")
    add("| method | s/shape at batch 1 | best throughput (shapes/s @ batch) | network evaluations / shape | peak memory (MB) |")
    add("|---|---:|---:|---:|---:|")
    for m, c in cost.get("methods", {}).items():
        thr = f"{c['best_shapes_per_s']:.2f} @ {c['best_batch']}" if c.get("best_shapes_per_s") else "-"
        add(f"| {METHOD_TITLES.get(m, m)} | {num(c.get('seconds_per_shape_batch1'))} | {thr} | "
            f"{num(c.get('network_evaluations_per_shape'), 'g')} | {num(c.get('peak_memory_mb_batch1'), '.0f')} |")
    if cost.get("latency_ratio_sds_over_pvd"):
        add("")
        add(f"SDS / PVD latency ratio (batch 1): **{cost['latency_ratio_sds_over_pvd']:.1f}x** (target: at least 100x).")
    add("")
    add(f"Peak memory: {cost.get('memory_note', '')}")
    add("")
    for title, key, xname in (("Quality vs sampler steps", "steps", "steps"), ("Quality vs guidance", "guidance", "guidance")):
        curve = q["curves"].get(key)
        if not curve:
            continue
        add(f"## {title} ({curve[0]['shapes']} shapes; {key}.png)")
        add("")
        add("| sampler | steps | guidance | " + metric_header("cd") + " | " + metric_header("f1") + " | " + metric_header("f2") +
            " | s/shape (batch " + str(s["batch"]) + ") | network evaluations |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        timing = cost.get("curves", {}).get(key, {})
        for p in curve:
            t = timing.get(p["label"], {})
            add(f"| {p['sampler']} | {p['steps']} | {p['guidance']:g} | {fmt_ci(p['cd'], 'cd')} | {fmt_ci(p['f1'], 'f1')} | "
                f"{fmt_ci(p['f2'], 'f2')} | {num(t.get('seconds_per_shape'))} | {num(t.get('calls_per_shape'), '.0f')} |")
        add("")
    if cost.get("training"):
        add("## Training (bench.py train)")
        add("")
        add("| step | minutes | command |")
        add("|---|---:|---|")
        for name, t in cost["training"].items():
            add(f"| {name} | {t['seconds'] / 60:.1f} | `{t['command']}` |")
        add("")
    add(f"Wall time of this benchmark run: {cost['wall_seconds'] / 60:.1f} min (cached shapes are not recomputed).")
    return "\n".join(L) + "\n"


CSV_COLUMNS = ["method", "name", "row", "category", *METRICS, *FLAGS, "points", "extent_ratio"]


def csv_text(records: dict[str, dict[str, dict[str, Any]]]) -> str:
    out = io.StringIO()
    out.write(",".join(CSV_COLUMNS) + "\n")
    for m, recs in records.items():
        for r in recs.values():
            cells = []
            for c in CSV_COLUMNS:
                v = r.get(c)
                if v is None:
                    cells.append("")
                elif isinstance(v, bool):
                    cells.append(str(v).lower())
                else:
                    cells.append(f"{v:.9g}" if isinstance(v, float) else str(v))
            out.write(",".join(cells) + "\n")
    return out.getvalue()


# ---- the command ----------------------------------------------------------------------------

def parse_steps_curve(text: str) -> list[tuple[str, int | None]]:
    """'ddim:10,25;ddpm:1000' -> [('ddim', 10), ('ddim', 25), ('ddpm', None)] (ddpm runs all T)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, steps = part.partition(":")
        if name not in SAMPLERS:
            raise UserError(f"--steps-curve: unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
        try:
            counts = [int(x) for x in steps.split(",") if x.strip()] if sep else [0]
        except ValueError:
            raise UserError(f"--steps-curve: {part!r} is not SAMPLER:N,N,...") from None
        for n in counts:
            out.append((name, None if name == "ddpm" or n == 0 else n))
    return out


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0],
                                epilog="python bench.py train --help: train every model the benchmark needs")
    p.add_argument("--data", required=True, help="pvd HDF5 dataset with views (data/synth.h5)")
    p.add_argument("--pvd", required=True, help="the single-stage PVD run (image-conditioned)")
    p.add_argument("--pvd-cascade", help="a cascade run: the coarse-to-fine ablation")
    p.add_argument("--sds", help="the SDS baseline's prior run (python -m pvd.sds.train_prior)")
    p.add_argument("--pfid", help="P-FID classifier folder (python -m pvd.pfid train); default DATA.pfid when it exists")
    p.add_argument("--split", default="test")
    p.add_argument("--num", type=int, default=50, help="shapes of the split (first in file order)")
    p.add_argument("--sds-num", type=int, default=20, help="of those, how many SDS lifts (minutes each on a CPU)")
    p.add_argument("--out", default="outputs/bench")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--view", type=int, default=None, help="the input view of every shape (default: the run's eval_view)")
    p.add_argument("--points", type=int, default=None, help="K: points per output scored (default: the PVD run's count)")
    p.add_argument("--batch", type=int, default=8, help="shapes per PVD sampler call (the samples depend on it)")
    p.add_argument("--sampler", choices=list(SAMPLERS), help="override the run's recommended sampler")
    p.add_argument("--steps", type=int, help="... its steps")
    p.add_argument("--guidance", type=float, help="... its guidance scale")
    p.add_argument("--steps-curve", default=DEFAULT_STEPS_CURVE, help="'SAMPLER:N,N;...' ('' for none)")
    p.add_argument("--guidance-curve", default=DEFAULT_GUIDANCE_CURVE, help="guidance scales ('' for none)")
    p.add_argument("--curve-num", type=int, default=20, help="shapes behind the curves")
    p.add_argument("--latency-shapes", type=int, default=3)
    p.add_argument("--throughput-batches", default="1,4,8,16,32")
    p.add_argument("--retrieval-metric", choices=("cosine", "l2"), default="cosine")
    p.add_argument("--distribution", default="cd,emd", help="distribution metrics over: cd, emd, both or '' for none")
    p.add_argument("--sds-set", nargs="*", default=[], metavar="KEY=VALUE", help="DistillConfig overrides for the SDS command")
    p.add_argument("--workers", type=int, default=None, help="processes for pairwise distances (default: all cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads here and in the SDS command (default: torch's); 1 is much faster on cores "
                        "that other jobs keep busy")
    return p


def check_args(args) -> None:
    for name in ("num", "batch", "curve_num", "latency_shapes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.sds_num < 0:
        raise UserError("--sds-num must be >= 0")
    if args.points is not None and args.points < 1:
        raise UserError("--points must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    for name in ("pvd", "pvd_cascade", "sds", "pfid"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            raise UserError(f"--{name.replace('_', '-')} {value}: no such run or folder")
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data}: no such file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")
    which = [w.strip().upper() for w in args.distribution.split(",") if w.strip()]
    if any(w not in ("CD", "EMD") for w in which):
        raise UserError(f"--distribution takes cd, emd or both, got {args.distribution!r}")
    args.distribution_metrics = which
    args.batches = [int(b) for b in parse_floats(args.throughput_batches, "--throughput-batches")]
    if any(b < 1 for b in args.batches):
        raise UserError("--throughput-batches must be positive")
    for item in args.sds_set:
        if "=" not in item:
            raise UserError(f"--sds-set takes KEY=VALUE, got {item!r}")


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A folder holds the results of one setting: refuse to mix (the caches would be wrong)."""
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise UserError(f"{out} holds results of other settings (they differ in: {', '.join(changed)}); "
                            f"use a fresh --out or delete {out}")
    else:
        write_json(path, settings)


def training_log(paths: list[str]) -> dict[str, Any]:
    """Step times written by ``bench.py train`` beside the runs (DIR/train-log.json), if any."""
    out: dict[str, Any] = {}
    for p in paths:
        if p is None:
            continue
        log = Path(p).resolve().parent / "train-log.json"
        if log.is_file():
            out.update(json.loads(log.read_text()))
    return out


def machine() -> str:
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


def retrieval_baselines(single: PVDModel, data: Data, args, k: int, cache: Path, device: torch.device) -> dict[str, Any]:
    """Retrieval (nearest training view embedding from the PVD run's own encoder) and the Chamfer
    oracle: their world-frame answers, chosen training rows and the retrieval's cost."""
    from pvd.retrieval import embedding_bank, encode_images, oracle, read_clouds, retrieve

    encoder = single.nets[0].encoder
    tic = time.perf_counter()
    bank = embedding_bank(encoder, args.data, "train", cache=cache / "embeddings-train.npz", device=device)
    bank_seconds = time.perf_counter() - tic
    keep = np.isin(data.info.category[bank.rows], data.info.category_ids(single.trained_categories))
    bank = dataclasses.replace(bank, rows=bank.rows[keep], embeddings=bank.embeddings[keep])
    evaluated = data.shapes[: data.num]
    names = [s.name for s in evaluated]
    tic = time.perf_counter()
    query = encode_images(encoder, np.stack([s.image for s in evaluated]).transpose(0, 3, 1, 2), device=device)
    answer = retrieve(query, bank, args.data, start=data.info.num_train_points, count=k, metric=args.retrieval_metric)
    seconds = (time.perf_counter() - tic) / len(evaluated)
    candidates = read_clouds(args.data, bank.rows, data.info.num_train_points, k)
    found = oracle(np.stack([s.ref for s in evaluated]), bank.rows, candidates, workers=args.workers)
    return {
        "outputs": {"retrieval": dict(zip(names, answer.clouds.astype(np.float64))),
                    "oracle": dict(zip(names, found.clouds.astype(np.float64)))},
        "chosen": {"retrieval": dict(zip(names, answer.rows.tolist())), "oracle": dict(zip(names, found.rows.tolist()))},
        "cost": {"seconds_per_shape_batch1": seconds, "network_evaluations_per_shape": 1, "bank_seconds": bank_seconds,
                 "bank_cached": bank.cached, "bank_shapes": int(len(bank.rows)),
                 "note": "one encoder call and a nearest-neighbour search over the cached training view embeddings "
                         "(the bank's one-off cost: bank_seconds)"},
    }


def run_curves(single: PVDModel, curve_specs: dict[str, list[Spec]], data: Data, curve_num: int, k: int, args,
               out: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Quality (CD, F@1%, F@2% with intervals) and timing per sampler setting on the first curve_num shapes."""
    curve_data = dataclasses.replace(data, num=curve_num)
    curves: dict[str, list[dict[str, Any]]] = {}
    timing: dict[str, dict[str, Any]] = {}
    for key, specs in curve_specs.items():
        points = []
        for sp in specs:
            folder = out / "samples" / f"pvd@{sp.label}"
            samples = sample_method(single, sp, data, curve_num, args.batch, args.seed, folder, f"curve {sp.label}")
            recs, _ = score_method(f"pvd@{sp.label}", samples, curve_data, k, args.seed,
                                   out / "metrics" / f"pvd@{sp.label}", lambda shape, pred: None)
            entry = {"label": sp.label, "sampler": sp.sampler, "steps": _steps(single, sp), "guidance": sp.guidance,
                     "shapes": len(recs)}
            for m in ("cd", "f1", "f2"):
                entry[m] = bootstrap_mean_ci([r[m] for r in recs.values()], **BOOTSTRAP).as_dict()
            points.append(entry)
            timing.setdefault(key, {})[sp.label] = chunk_timing(folder)
        curves[key] = points
    return curves, timing


def _steps(model: PVDModel, spec: Spec) -> int:
    """The step count a setting runs (ddpm: all T; others: given or the sampler's default)."""
    stage = model.stages(spec)[0]
    return int(stage.sample.keywords.get("steps", model.cfg.diffusion.num_steps))


def sds_cost(sds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The SDS command's per-shape records summarised: latency, prior evaluations, peak memory."""
    recs = [v["record"] for v in sds.values()]
    return {
        "seconds_per_shape_batch1": float(np.median([r["seconds"] for r in recs])),
        "seconds_mean": float(np.mean([r["seconds"] for r in recs])),
        "network_evaluations_per_shape": float(np.mean([r["prior_evaluations"] for r in recs])),
        "iterations": recs[0].get("iterations"),
        "peak_memory_mb_batch1": float(np.max([r["peak_memory_mb"] for r in recs])),
        "note": "median over the lifted shapes of the optimisation's wall time (mesh extraction and scoring "
                "excluded), one shape at a time; from the SDS command's records",
    }


def conventions_record(data: Data, k: int) -> dict[str, str]:
    """Every definition the numbers depend on (written into results.json and results.md)."""
    return {
        "frame": "the dataset's world frame (PVD samples de-normalised with the run's statistics)",
        "points": f"each output reduced to K = {k} points by a seeded random subset; ground truth: the held-out "
                  f"slice points[{data.info.num_train_points}:][:{data.ref_points}]",
        "CD": f"squared: {CHAMFER_CONVENTIONS['squared']}; against all {data.ref_points} truth points",
        "EMD": f"{EMD_CONVENTION}, exact; against the truth's first K points",
        "F-score": f"{F_SCORE_CONVENTION}; thresholds 1% and 2% of the truth's bounding-box diagonal (full cloud)",
        "IoU": f"{IOU_CONVENTION}; 32^3, K points each",
        "thin recall": "fraction of truth points in parts flagged part_thin within 2% of the diagonal of the output",
        "mesh": f"{MESH_SAMPLES} samples of the output's surface (PVD: pvd.meshing.mesh_from_points of the K points; "
                "SDS: its marching-cubes mesh; retrieval, oracle, truth-resample: the stored surface of their shape) "
                f"vs the truth's points and normals; normal consistency: {NORMAL_CONSISTENCY_CONVENTION}",
        "failures": f"empty: no output (scored as one point at the truth's box centre, F/IoU/recall 0); exploded: "
                    f"box diagonal > {EXPLODED}x the truth's or non-finite points; collapsed: < {COLLAPSED}x",
        "intervals": bootstrap_convention(**BOOTSTRAP),
        "distribution": "MMD/COV/1-NNA (pvd.metrics.distribution_metrics, PointFlow's definitions) and P-FID of each "
                        "method's K-point outputs against the same shapes' first K truth points, world frame",
        "latency": "batch 1, the recommended sampler, meshing excluded, median after a warm-up",
    }


def bench(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    device = pick_device(args.device)
    out = Path(args.out)

    single = PVDModel(args.pvd, device, "pvd")
    if single.is_cascade:
        raise UserError(f"--pvd {args.pvd} is a cascade run; give it as --pvd-cascade and a single-stage run as --pvd")
    cascade = PVDModel(args.pvd_cascade, device, "cascade") if args.pvd_cascade else None
    if cascade is not None and not cascade.is_cascade:
        raise UserError(f"--pvd-cascade {args.pvd_cascade} is a single-stage run")
    k = args.points or single.num_points
    view = args.view if args.view is not None else single.cfg.data.eval_view
    data = load_data(args.data, args.split, view, single.trained_categories, args.num, k)
    if cascade is not None and sorted(cascade.trained_categories) != sorted(single.trained_categories):
        raise UserError("--pvd and --pvd-cascade were trained on different categories")
    if args.sampler is None or args.sampler == single.recommended.sampler:
        steps = single.recommended.steps if args.sampler is None or args.sampler != "ddpm" else None
    else:
        steps = None  # another sampler: its own default step count
    if args.steps is not None:
        steps = args.steps
    spec = Spec(args.sampler or single.recommended.sampler, steps,
                float(args.guidance if args.guidance is not None else single.recommended.guidance))
    single.check_spec(spec)
    steps_curve = parse_steps_curve(args.steps_curve)
    guidance_curve = parse_floats(args.guidance_curve, "--guidance-curve")
    curve_specs = {"steps": [Spec(n, s, spec.guidance) for n, s in steps_curve],
                   "guidance": [dataclasses.replace(spec, guidance=g) for g in guidance_curve]}
    for specs in curve_specs.values():
        for sp in specs:
            single.check_spec(sp)
    classifier = None
    default_pfid = Path(args.data).with_suffix(".pfid")  # python -m pvd.pfid train's default output
    pfid_path = args.pfid or (str(default_pfid) if default_pfid.is_dir() else None)
    if pfid_path:
        from pvd.pfid import load_classifier

        classifier = load_classifier(pfid_path)
    if args.sds:
        from pvd.sds.prior import load_prior

        load_prior(args.sds)  # one-line error now rather than after the PVD sampling

    settings = {"data": file_identity(args.data), "pvd": single.describe(), "cascade": cascade.describe() if cascade else None,
                "sds": str(Path(args.sds).resolve()) if args.sds else None, "sds_set": args.sds_set, "split": args.split,
                "view": view, "points": k, "seed": args.seed, "batch": args.batch, "sampler": dataclasses.asdict(spec),
                "retrieval_metric": args.retrieval_metric, "pfid": str(Path(pfid_path).resolve()) if pfid_path else None}
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    torch.manual_seed(args.seed)

    # --- outputs of every method (world frame), cached per shape ---
    outputs: dict[str, dict[str, Any]] = {}
    outputs["pvd"] = sample_method(single, spec, data, data.num, args.batch, args.seed,
                                   out / "samples" / f"pvd@{spec.label}", "pvd")
    if cascade is not None:
        outputs["cascade"] = sample_method(cascade, spec, data, data.num, args.batch, args.seed,
                                           out / "samples" / f"cascade@{spec.label}", "cascade")
    sds = {}
    if args.sds and args.sds_num > 0:
        sds = run_sds(args, data, device, out / "sds")
        outputs["sds"] = {name: v["points"] for name, v in sds.items()}

    baselines = retrieval_baselines(single, data, args, k, out / "cache", device)
    outputs.update(baselines["outputs"])
    chosen = baselines["chosen"]
    outputs["truth-resample"] = {s.name: s.resample for s in data.shapes[: data.num]}

    # --- per-shape metrics ---
    def surfaces_for(method: str):
        def surfaces(shape: Shape, pred):
            seed = stable_seed(args.seed, method, shape.row, "mesh")
            if method in ("retrieval", "oracle"):
                return stored_surface(args.data, chosen[method][shape.name], data.info.num_train_points, data.has_normals)
            if method == "truth-resample":
                return stored_surface(args.data, shape.row, 0, data.has_normals)
            if method == "sds":
                return mesh_surface(None, sds[shape.name]["mesh"], seed) if sds[shape.name]["mesh"] else None
            if pred is None:
                return None
            return mesh_surface(reduce_points(pred, k, stable_seed(args.seed, method, shape.row, "reduce")), None, seed)
        return surfaces

    records, clouds = {}, {}
    for method in METHOD_ORDER:
        if method in outputs:
            records[method], clouds[method] = score_method(method, outputs[method], data, k, args.seed,
                                                           out / "metrics" / method, surfaces_for(method))

    # --- curves (the first --curve-num shapes) ---
    curve_num = min(args.curve_num, data.num)
    curves, curve_cost = run_curves(single, curve_specs, data, curve_num, k, args, out)

    # --- aggregates ---
    quality: dict[str, Any] = {"methods": {m: summarize(r) for m, r in records.items()},
                               "per_category": {m: per_category(r) for m, r in records.items()},
                               "differences": differences(records, "pvd")}
    if "cascade" in records:
        quality["differences"] += [d for d in differences(records, "cascade") if d["b"] in ("retrieval", "sds")]
        quality["ablation"] = {"stages": {"pvd": " -> ".join(map(str, single.describe()["stages"])),
                                          "cascade": " -> ".join(map(str, cascade.describe()["stages"]))},
                               "train_step": {"pvd": "single", "cascade": "cascade"}}
    quality["worst"] = {m: [n for n, _ in sorted(r.items(), key=lambda item: -item[1]["cd"])[:5]] for m, r in records.items()}
    if sds:
        quality["sds_flags"] = {f: int(sum(bool(v["record"].get(f)) for v in sds.values()))
                                for f in ("janus", "floaters", "empty")}
        quality["sds_flags"]["janus_score_mean"] = finite_mean([v["record"].get("janus_score") for v in sds.values()])
    quality["chosen"] = chosen
    quality["curves"] = curves
    if args.distribution_metrics or classifier is not None:
        quality["distribution"] = distribution(clouds, data, k, args.distribution_metrics, args.workers, classifier,
                                               out / "cache" / "matrices")

    # --- cost ---
    cost: dict[str, Any] = {"methods": {}, "curves": curve_cost}
    cost["methods"]["pvd"] = measure_cost(single, spec, data, args.latency_shapes, args.batches)
    if cascade is not None:
        cost["methods"]["cascade"] = measure_cost(cascade, spec, data, args.latency_shapes, args.batches)
    if sds:
        cost["methods"]["sds"] = sds_cost(sds)
        cost["latency_ratio_sds_over_pvd"] = (cost["methods"]["sds"]["seconds_per_shape_batch1"] /
                                              cost["methods"]["pvd"]["seconds_per_shape_batch1"])
    cost["methods"]["retrieval"] = baselines["cost"]
    cost["memory_note"] = ("CPU: the resident set of the process at its peak (it includes the loaded models and "
                           "data, an upper bound on what the method needs); CUDA: the allocator's peak. SDS runs in "
                           "its own process.")
    cost["training"] = training_log([args.pvd, args.pvd_cascade, args.sds])
    cost["wall_seconds"] = time.perf_counter() - wall

    result = {
        "pvd_version": __import__("pvd").__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench.py " + " ".join(shlex.quote(a) for a in argv),
        "machine": machine(),
        "settings": {**settings, "data": args.data, "data_file": settings["data"], "shapes": data.num,
                     "sds_shapes": len(sds), "categories": single.trained_categories, "curve_shapes": curve_num},
        "conventions": conventions_record(data, k),
        "quality": quality,
        "cost": cost,
    }
    write_json(out / "results.json", result)
    write_text(out / "results.csv", csv_text(records))
    write_text(out / "results.md", markdown(result))
    figure_grid(data, outputs, out / "grid.png")
    figure_worst(data, records, clouds, out / "worst.png", quality["worst"])
    if curves.get("steps"):
        figure_curve(curves["steps"], "steps", "sampler", out / "steps.png", "sampler steps", log=True)
    if curves.get("guidance"):
        figure_curve(curves["guidance"], "guidance", None, out / "guidance.png", "guidance scale", log=False)
    print(f"wrote {out}/results.md, results.json, results.csv and figures "
          f"({data.num} shapes, {len(sds)} with SDS; {(time.perf_counter() - wall) / 60:.1f} min)")
    return 0


# ---- train mode -----------------------------------------------------------------------------

CASCADE_CPU = ['diffusion.cascade=default', 'diffusion.cascade.stages=[{"num_points":128},{"num_points":512}]']


def pfid_options(items: list[str]) -> list[str]:
    """['epochs=1', 'widths=8,16'] -> ['--epochs', '1', '--widths', '8', '16'] for ``python -m pvd.pfid train``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--pfid-set takes KEY=VALUE, got {item!r}")
        out += ["--" + key.replace("_", "-"), *value.split(",")]
    return out


def train_steps(args) -> list[tuple[str, list[str], Path]]:
    """(name, command, the folder it makes) for every model the benchmark needs."""
    out = Path(args.out)
    py = sys.executable
    dev = [f"device={args.device}"]
    return [
        ("single", [py, str(ROOT / "train.py"), "quickstart", f"data.path={args.data}", f"run_dir={out / 'single'}",
                    *dev, *args.pvd_set], out / "single"),
        ("cascade", [py, str(ROOT / "train.py"), "quickstart", f"data.path={args.data}", f"run_dir={out / 'cascade'}",
                     *CASCADE_CPU, *dev, *args.cascade_set], out / "cascade"),
        ("sds", [py, "-m", "pvd.sds.train_prior", f"data={args.data}", f"run_dir={out / 'sds-prior'}", *args.prior_set],
         out / "sds-prior"),
        ("pfid", [py, "-m", "pvd.pfid", "train", "--data", args.data, "--out", str(out / "pfid"), *pfid_options(args.pfid_set)],
         out / "pfid"),
    ]


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py train", description="Train every model the benchmark needs, in turn.")
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--device", default="auto")
    p.add_argument("--only", nargs="*", choices=("single", "cascade", "sds", "pfid"), help="train only these")
    p.add_argument("--pvd-set", nargs="*", default=[], metavar="KEY=VALUE", help="train.py overrides for the single stage")
    p.add_argument("--cascade-set", nargs="*", default=[], metavar="KEY=VALUE", help="train.py overrides for the cascade")
    p.add_argument("--prior-set", nargs="*", default=[], metavar="KEY=VALUE", help="pvd.sds.train_prior overrides")
    p.add_argument("--pfid-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="options of python -m pvd.pfid train (epochs=4 widths=64,128)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def train(argv: list[str]) -> int:
    args = build_train_parser().parse_args(argv)
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data}: no such file (build it: python datasets/synthetic.py --out {args.data})")
    out = Path(args.out)
    steps = [s for s in train_steps(args) if not args.only or s[0] in args.only]
    if args.dry_run:
        for name, cmd, _ in steps:
            print(f"{name}: {' '.join(shlex.quote(c) for c in cmd)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train-log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    total = time.perf_counter()
    for name, cmd, folder in steps:
        marker = out / f".done-{name}"
        if marker.is_file():
            print(f"== {name}: done earlier ({minutes(log.get(name, {}).get('seconds'))}), skipped")
            continue
        if folder.exists() and name != "pfid":
            raise UserError(f"{folder} exists but did not finish; delete it (or resume it by hand) and run again")
        print(f"== {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        tic = time.perf_counter()
        done = subprocess.run(cmd, env=env)
        seconds = time.perf_counter() - tic
        if done.returncode == 130:
            raise KeyboardInterrupt
        if done.returncode != 0:
            raise UserError(f"step {name} failed (exit {done.returncode}; its message is above)")
        log[name] = {"seconds": seconds, "command": " ".join(shlex.quote(c) for c in cmd), "machine": machine()}
        write_json(log_path, log)
        write_text(marker, f"{seconds}\n")
        print(f"== {name}: {seconds / 60:.1f} min", flush=True)
    print(f"trained in {(time.perf_counter() - total) / 60:.1f} min this run; all steps: "
          f"{sum(v['seconds'] for v in log.values()) / 60:.1f} min. Next:\n"
          f"python bench.py --data {args.data} --pvd {out / 'single'} --pvd-cascade {out / 'cascade'} "
          f"--sds {out / 'sds-prior'} --pfid {out / 'pfid'} --num 50 --sds-num 20 --out outputs/bench")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return train(argv[1:])
    return bench(argv)


if __name__ == "__main__":
    run_command(main)
