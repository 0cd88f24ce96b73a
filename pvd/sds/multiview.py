"""Multi-view reconstruction, the cheap lifting route: generate K novel views of the input with
the 2D prior once, then fit the field to them and to the input, with no prior call inside the
optimisation (the pattern of One-2-3-45 and of Zero-1-to-3's "3D reconstruction" use, with the
voxel field of :mod:`pvd.sds.volume` as the reconstructor).

The K views sit on the input's orbit (its elevation and distance) at equal azimuth steps
around it. Two orders of generation:
- ``independent``: every view from the input view, in one batch;
- ``chain``: views in order of their angle from the input, each conditioned on the nearest view
  already available (the input or a generated one), so that neighbours agree with each other and
  the far side is reached in small steps rather than one half-turn jump.
Their agreement is scored without a ground truth by :func:`hull_consistency`: carve the visual
hull of all silhouettes and ask how much of each silhouette the hull still fills.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pvd.data.cameras import project
from pvd.sds import volume
from pvd.sds.distill import Camera, DistillConfig, DistillResult, camera_pairs, distill
from pvd.sds.prior import to_prior_image
from pvd.sds.view_prior import ViewPrior, sample_views

ORDERS = ("independent", "chain")
INITS = ("hull", "blob")
WEIGHTINGS = ("uniform", "agreement")


@dataclass
class MultiViewConfig:
    """Generation and fitting of one shape. The fit reuses :class:`DistillConfig` with the SDS
    term off; its ``iterations`` are the fitting budget."""

    views: int = 6  # K generated views at azimuth steps of 360 / (K + 1) degrees around the input
    # independent | chain (see the module docstring). 20 val shapes: hull consistency 0.717 vs the
    # chain's 0.704 (paired -0.013 [-0.038, +0.007]) at 4.1 vs 6.6 s per shape: no gain from chaining
    order: str = "independent"
    steps: int = 50  # DDIM steps per generated view
    guidance: float = 3.0
    view_weight: float = 0.5  # a generated view's RGB + mask loss weight, relative to the input's
    # the fit's start: "hull", the visual hull of the input's and the generated silhouettes
    # (a cell may lie outside hull_slack of the generated ones), or "blob", SDS's density ball
    init: str = "hull"
    hull_slack: int = 1
    # "agreement": each generated view's weight is view_weight times its silhouette's IoU with
    # the strict visual hull's (a view that contradicts the others counts less); "uniform"
    weighting: str = "agreement"
    fit: DistillConfig = dataclasses.field(default_factory=lambda: DistillConfig(iterations=400, sds_weight=0.0))
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("order", self.order, ORDERS), ("init", self.init, INITS),
                                     ("weighting", self.weighting, WEIGHTINGS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.views < 1 or self.steps < 1 or self.view_weight < 0 or self.hull_slack < 0:
            raise ValueError("views and steps must be at least 1, view_weight and hull_slack non-negative")


@dataclass
class MultiViewResult:
    fit: DistillResult
    views: Tensor  # (K, 4, S, S) generated views in [-1, 1]
    cameras: list[Camera]  # their K cameras
    consistency: float  # hull_consistency of the input's and the generated silhouettes
    view_weights: list[float]  # each generated view's loss weight in the fit
    generate_seconds: float
    evaluations: int  # prior calls (a guided call counts once per image)


def view_cameras(camera: Camera, count: int) -> list[Camera]:
    """``count`` cameras on the input's orbit at azimuth offsets +d, -d, +2d, -2d, ... with
    d = 360 / (count + 1): ordered by their angle from the input, nearest first."""
    step = 360.0 / (count + 1)
    offsets = [step * (i // 2 + 1) * (1 if i % 2 == 0 else -1) for i in range(count)]
    return [dataclasses.replace(camera, azimuth=camera.azimuth + d) for d in offsets]


def _azimuth_gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def generate_views(prior: ViewPrior, image: np.ndarray, camera: Camera, cfg: MultiViewConfig, *,
                   device: torch.device | str = "cpu") -> tuple[Tensor, list[Camera]]:
    """(views (K, 4, S, S) in [-1, 1], their cameras): K novel views of ``image`` ((H, W, 4)
    uint8 RGBA, seen from ``camera``) sampled from ``prior`` in ``cfg.order``."""
    device = torch.device(device)
    size = prior.image_size
    source = to_prior_image(image[None], size).to(device)
    targets = view_cameras(camera, cfg.views)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    if cfg.order == "independent":
        views = sample_views(prior, source.expand(len(targets), -1, -1, -1), camera_pairs(camera, targets).to(device),
                             steps=cfg.steps, guidance=cfg.guidance, generator=gen)
        return views, targets
    known_views, known_cameras = [source], [camera]
    for target in targets:
        nearest = min(range(len(known_cameras)), key=lambda i: _azimuth_gap(known_cameras[i].azimuth, target.azimuth))
        view = sample_views(prior, known_views[nearest], camera_pairs(known_cameras[nearest], [target]).to(device),
                            steps=cfg.steps, guidance=cfg.guidance, generator=gen)
        known_views.append(view)
        known_cameras.append(target)
    return torch.cat(known_views[1:]), targets


def visual_hull(masks: np.ndarray, cameras: list[Camera], *, resolution: int = 64, bound: float = 0.55,
                slack: int = 0) -> np.ndarray:
    """(R, R, R) bool, indexed [x, y, z]: the cells of a ``resolution``^3 grid over
    [-bound, bound]^3 whose centres project inside the silhouettes.

    masks: (V, S, S) bool silhouettes seen by ``cameras`` (V of them, intrinsics for their own
    image size, scaled to S); the first is the input's. ``slack``: a cell may fall outside up to
    this many of the other V - 1 silhouettes (never outside the first): generated views that
    contradict each other then carve only what most of them agree is empty.
    """
    masks = np.asarray(masks, bool)
    v, s = masks.shape[0], masks.shape[-1]
    if masks.ndim != 3 or masks.shape[1] != s or len(cameras) != v:
        raise ValueError(f"the visual hull needs (V, S, S) masks and V cameras, got {masks.shape} and {len(cameras)}")
    centres = (np.arange(resolution) + 0.5) * (2 * bound / resolution) - bound
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
    misses = np.zeros(len(grid), np.int64)
    first = np.ones(len(grid), bool)
    for i, (mask, cam) in enumerate(zip(masks, cameras)):
        k, e = cam.tensors(s)
        uv, depth = project(grid, k[0].double().numpy(), e[0].double().numpy())
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        seen = (depth > 0) & (col >= 0) & (col < s) & (row >= 0) & (row < s)
        inside = seen & mask[row.clip(0, s - 1), col.clip(0, s - 1)]
        if i == 0:
            first = inside
        else:
            misses += ~inside
    return (first & (misses <= slack)).reshape(resolution, resolution, resolution)


def silhouette_agreement(hull: np.ndarray, masks: np.ndarray, cameras: list[Camera], *, bound: float = 0.55) -> np.ndarray:
    """(V,) IoU between each silhouette (V, S, S) bool and the rendered silhouette of ``hull``
    ((R, R, R) bool over [-bound, bound]^3) from its camera; 1 where both are empty."""
    s = masks.shape[-1]
    field = volume.VoxelField.from_occupancy(hull, bound)
    ious = []
    for mask, cam in zip(np.asarray(masks, bool), cameras):
        k, e = cam.tensors(s)
        with torch.no_grad():
            alpha = volume.render(field, k, e, s, s, num_samples=2 * hull.shape[0])["alpha"][0, 0].numpy()
        rendered = alpha > 0.5
        union = (rendered | mask).sum()
        ious.append((rendered & mask).sum() / union if union else 1.0)
    return np.asarray(ious, np.float64)


def hull_consistency(masks: np.ndarray, cameras: list[Camera], *, resolution: int = 64, bound: float = 0.55) -> float:
    """How well silhouettes agree with one 3D shape, without knowing it: in [0, 1], 1 when they do.

    masks: (V, S, S) bool silhouettes seen by ``cameras``. The score is the mean over views of
    :func:`silhouette_agreement` with their strict :func:`visual_hull` (every silhouette
    carves). Silhouettes of one shape keep a hull that fills each of them (IoU near 1, less only
    by the grid's resolution); silhouettes that contradict each other carve away what some of
    them show.
    """
    hull = visual_hull(masks, cameras, resolution=resolution, bound=bound)
    return float(silhouette_agreement(hull, masks, cameras, bound=bound).mean())


def reconstruct(prior: ViewPrior, image: np.ndarray, camera: Camera, cfg: MultiViewConfig, *,
                ground_truth: np.ndarray | None = None, eval_every: int = 0,
                device: torch.device | str = "cpu") -> MultiViewResult:
    """Generate ``cfg.views`` novel views, then fit the field to them and the input (see the module
    docstring). Arguments as in :func:`pvd.sds.distill.distill`."""
    tic = time.perf_counter()
    views, cameras = generate_views(prior, image, camera, cfg, device=device)
    generate_seconds = time.perf_counter() - tic
    size = prior.image_size
    silhouettes = np.concatenate([to_prior_image(image[None], size)[:, 3].numpy() > 0, views[:, 3].cpu().numpy() > 0])
    all_cameras = [camera, *cameras]
    agreement = silhouette_agreement(visual_hull(silhouettes, all_cameras), silhouettes, all_cameras)
    weights = cfg.view_weight * (agreement[1:] if cfg.weighting == "agreement" else np.ones(len(cameras)))
    start = None
    if cfg.init == "hull":
        grid = cfg.fit.field
        start = visual_hull(silhouettes, all_cameras, resolution=grid.resolution, bound=grid.bound, slack=cfg.hull_slack)
        start = torch.from_numpy(start) if start.any() else None  # nothing left to start from: the blob
    fit = distill(None, image, camera, dataclasses.replace(cfg.fit, sds_weight=0.0), extra_views=(views, cameras),
                  extra_weight=weights.tolist(), init_occupancy=start, ground_truth=ground_truth,
                  eval_every=eval_every, device=device)
    return MultiViewResult(fit=fit, views=views.cpu(), cameras=cameras, consistency=float(agreement.mean()),
                           view_weights=weights.tolist(), generate_seconds=generate_seconds,
                           evaluations=cfg.views * cfg.steps)
