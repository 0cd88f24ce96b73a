"""A trained PVD run (EMA weights) sampled in seeded chunks, with the timing and cost of its sampler."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pvd.bench.common import save_npy, stable_seed, sync, write_json
from pvd.bench.data import Data, Shape
from pvd.diffusion import build
from pvd.diffusion.cascade import Stage, sample_stages
from pvd.diffusion.hierarchy import with_t_start
from pvd.diffusion.samplers import SAMPLERS
from pvd.errors import UserError, raise_if_interrupted
from pvd.runtime import PeakMemory


@dataclass(frozen=True)
class Spec:
    """A sampler setting: name, steps (None: the sampler's default / all T for ddpm), guidance, and
    for a hierarchy run the refinement's start (a fraction of T; None: the run's)."""

    sampler: str
    steps: int | None
    guidance: float
    t_start: float | None = None

    @property
    def label(self) -> str:
        start = f"-t{self.t_start:g}" if self.t_start is not None else ""
        return f"{self.sampler}-{self.steps if self.steps is not None else 'all'}-g{self.guidance:g}{start}"


class Counter:
    """Wraps a denoiser and counts its calls (one per sampler step, per stage)."""

    def __init__(self, net: torch.nn.Module):
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
        d = self.cfg.diffusion
        self.recommended = Spec(d.sampler, d.sampling_steps, float(d.guidance_scale),
                                d.hierarchy.t_start if d.hierarchy is not None else None)

    def describe(self) -> dict[str, Any]:
        return {"run": self.path, "checkpoint": self.run["checkpoint"], "step": self.run["step"],
                "stages": [s.num_points for s in self.stages(self.recommended)], "model": self.cfg.model,
                "condition": self.cfg.condition, "recommended_sampler": dataclasses.asdict(self.recommended)}

    def summary(self) -> str:
        """One line naming what the run is: its network, points and stages or hierarchy."""
        d = self.cfg.diffusion
        if d.cascade is not None:
            design = "cascade " + " -> ".join(str(s.num_points) for s in d.cascade.stages)
        elif d.hierarchy is not None:
            design = f"hierarchy: {self.cfg.shape_points}-point regressor, refined over t <= {d.hierarchy.t_max:g} T"
        else:
            design = f"single stage{', shape input' if self.cfg.shape_input else ''}"
        return f"{self.cfg.model}, {self.num_points} points, {design}"

    def stages(self, spec: Spec) -> list[Stage]:
        """The run's diffusion stages (pvd.diffusion.build) with ``spec``'s sampler, steps and guidance,
        and its refinement start when the run has a hierarchy (other runs ignore it)."""
        hierarchy = self.cfg.diffusion.hierarchy
        diffusion = dataclasses.replace(self.cfg.diffusion, sampler=spec.sampler, sampling_steps=spec.steps,
                                        guidance_scale=spec.guidance,
                                        hierarchy=with_t_start(hierarchy, spec.t_start if hierarchy else None))
        return build(diffusion, self.num_points)

    def step_count(self, spec: Spec) -> int:
        """The step count a setting runs (ddpm: all T; others: given or the sampler's default)."""
        stage = self.stages(spec)[0]
        return int(stage.sampler.keywords.get("steps", self.cfg.diffusion.num_steps))

    def check_spec(self, spec: Spec) -> None:
        if spec.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {spec.sampler!r}; choose from {', '.join(SAMPLERS)}")
        self.stages(spec)  # UserError on steps that do not fit

    @property
    def has_regressor(self) -> bool:
        """Whether the run's image encoder has a shape head (a coarse cloud regressed from the image)."""
        encoder = self.nets[0].encoder
        return encoder is not None and encoder.shape_head is not None

    def regress(self, images: np.ndarray) -> np.ndarray:
        """The run's shape head alone for views (B, H, W, 4) uint8 (see :func:`regress`)."""
        return regress(self.nets[0].encoder, images, self.device)

    @torch.no_grad()
    def sample(self, spec: Spec, images: np.ndarray, categories: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        """(B, N, 3) normalised samples for images (B, H, W, 4) uint8 and (B,) category indices;
        and the denoiser calls made."""
        b = len(images)
        x = image_tensor(images, self.device)
        fields = {"category": torch.as_tensor(categories, dtype=torch.long, device=self.device)} \
            if "category" in self.cfg.condition else {}
        conds = [net.condition(images=x, **fields) if net.config.condition is not None else None for net in self.nets]
        counted = [Counter(net) for net in self.nets]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = sample_stages(self.stages(spec), counted, conds, b, generator=generator, device=self.device)
        sync(self.device)
        return out.float().cpu().numpy(), sum(c.calls for c in counted)


def image_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 4) uint8 views -> (B, 4, H, W) uint8 on ``device`` (an image encoder's input)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)


@torch.no_grad()
def regress(encoder: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """(B, S, 3) normalised clouds of an encoder's shape head for views (B, H, W, 4) uint8: the
    image-to-cloud regressor alone, no diffusion (one encoder call)."""
    vector, _ = encoder(image_tensor(images, device))
    return encoder.predict_shape(vector).float().cpu().numpy()


def to_world(points: np.ndarray, shift_scale: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """(B, N, 3) normalised clouds -> world frame; shift_scale: per cloud (shift (3,), scale)."""
    out = np.empty_like(points, dtype=np.float64)
    for i, (shift, scale) in enumerate(shift_scale):
        out[i] = points[i].astype(np.float64) * scale + shift
    return out


def shift_scales(norm: dict[str, Any], data: Data, shapes: list[Shape]) -> list[tuple[np.ndarray, float]]:
    """A run's normalisation (its record's ``normalization``) for each shape: the global PointFlow
    statistics, or the shape's own."""
    if norm["normalization"] == "pointflow":
        return [(np.asarray(norm["mean"], np.float64), float(norm["std"]))] * len(shapes)
    if norm["normalization"] == "none":
        return [(np.zeros(3), 1.0)] * len(shapes)
    from pvd.data.dataset import DatasetConfig, ShapeDataset

    ds = ShapeDataset(DatasetConfig(path=data.path, normalization=norm["normalization"], images=False,
                                    num_points=1), data.split, train=False)
    out = []
    for s in shapes:
        shift, scale = ds.shift_scale(s.row)
        out.append((np.asarray(shift, np.float64), float(scale)))
    return out


def sample_method(model: PVDModel, spec: Spec, data: Data, count: int, batch: int, seed: int, folder: Path,
                  desc: str) -> dict[str, np.ndarray]:
    """World-frame samples (name -> (N, 3) float64) of the first ``count`` shapes, cached per shape in ``folder``.

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
            world = to_world(x, shift_scales(model.normalization, data, part))
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
