"""Score distillation from one image: fit a voxel radiance field to an input view and to a
view-conditioned 2D diffusion prior's scores on random novel views (the lifting baseline).

Each iteration (Poole et al. 2022, DreamFusion; Liu et al. 2023, Zero-1-to-3; Wang et al.
2023, SJC):
- reference view: the field rendered from the input camera is pulled to the input image by
  an RGB MSE and a mask (alpha) MSE;
- novel view: a camera on the training views' orbit at a random azimuth is rendered at the
  prior's resolution, noised to a random t, and the prior, conditioned on the input view and
  the relative camera, predicts the noise with classifier-free guidance; the rendering gets the
  gradient w(t) (eps_hat - eps), with no gradient through the prior, written as the loss
  0.5 ||x - (x - grad).detach()||^2 / B;
- regularisers: opacity entropy (crisp silhouettes), sparsity (no fog), total variation, and
  on the field's normals (``orientation_weight``, ``normal_smooth_weight``): no surface facing
  away from a camera that sees it, and smooth normal maps (against bumpy SDS geometry).
t ~ U[t_min, t_max] with t_max annealed linearly from ``t_max`` to ``t_max_end``, w(t) = 1 -
alpha_bar_t. ``sds_weight = 0`` is the reference-view-only ablation the acceptance compares to.

The result is in the world frame of the cameras (ShapeNet's canonical frame, bounding-box
diagonal 1 for the dataset's shapes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import trimesh
from scipy import ndimage
from torch import Tensor

from pvd.config import to_dict
from pvd.data.cameras import orbit_extrinsics
from pvd.io import atomic_path
from pvd.metrics import chamfer_distance, f_score
from pvd.sds import volume
from pvd.sds.prior import camera_pair, to_prior_image
from pvd.sds.view_prior import ViewPrior, noise_process
from pvd.sds.fields import REPRESENTATIONS, RadianceField, Representation, make_field
from pvd.sds.volume import FieldConfig


@dataclass(frozen=True)
class Camera:
    """One orbit camera: azimuth and elevation in degrees, distance in world units, and the
    (3, 3) pixel intrinsics of an image of ``size`` x ``size`` pixels."""

    azimuth: float
    elevation: float
    distance: float
    intrinsics: tuple[tuple[float, ...], ...]
    size: int

    def tensors(self, size: int) -> tuple[Tensor, Tensor]:
        """(intrinsics (1, 3, 3), extrinsics (1, 4, 4)) float32 for a ``size`` x ``size`` rendering."""
        k = volume.scale_intrinsics(torch.tensor(self.intrinsics, dtype=torch.float32)[None], size / self.size)
        e = torch.from_numpy(orbit_extrinsics(self.azimuth, self.elevation, self.distance)).float()[None]
        return k, e


@dataclass
class DistillConfig:
    """The optimisation of one shape. ``iterations``: where the budget curve
    (tests/benchmarks/sds_budget_curve.py, 5 validation shapes) stops improving; see the README."""

    iterations: int = 800
    field: FieldConfig = field(default_factory=FieldConfig)  # the cube, and the grid of voxels / of meshing
    representation: Representation = dataclasses.field(default_factory=Representation)  # voxel | nerf | points (pvd.sds.fields)
    lr: float = 0.05  # Adam on the raw grids
    ref_size: int = 64  # reference-view rendering (the input image is resized to it)
    num_samples: int = 64  # ray-marching samples per ray
    novel_views: int = 1  # novel views per iteration
    # 0: the reference-view-only ablation. 1 beside RGB 500 / mask 200 is threestudio's image-to-3D
    # balance; 0.1, 0.3 and 1 measured within noise of each other (4 val shapes, 200 iterations)
    sds_weight: float = 1.0
    rgb_weight: float = 500.0
    mask_weight: float = 200.0
    entropy_weight: float = 1.0
    sparsity_weight: float = 0.5
    tv_weight: float = 0.0
    # normal regularisers on every rendered view (0: off): orientation penalises normals that face
    # away from the camera where a ray sees something (Ref-NeRF, DreamFusion); smoothness, the
    # squared difference of neighbouring pixels' unit normals on the surface (threestudio's
    # normal-map smoothness). Off by default: on 6 val shapes (tests/benchmarks/README.md,
    # "Normal regularisers") orientation 10 / smoothness 1 cut floaters 5 -> 1 but cost CD and 60% time
    # on the grid; on points smoothness 1 changed neither CD nor F@1% and cost 25% time
    orientation_weight: float = 0.0
    normal_smooth_weight: float = 0.0
    guidance: float = 3.0  # Zero-1-to-3's range is 3-5 (REFERENCE section 3)
    t_min: float = 0.02
    t_max: float = 0.98
    t_max_end: float = 0.5  # t_max is annealed linearly to this over the run
    grad_clip: float = 1.0  # SDS gradient clamped per pixel to [-c, c] (0: off)
    elevation_range: tuple[float, float] = (25.0, 30.0)  # novel views: the training views' orbit
    distance_range: tuple[float, float] = (1.15, 1.65)
    blob_radius: float = 0.3  # initial density: a soft ball (DreamFusion's density blob)
    blob_depth: float = 3.0  # its optical depth per cell at the centre (surface at radius ~0.23)
    surface_opacity: float = 0.5  # mesh iso-level: a cell's opacity across its width
    num_points: int = 2048  # points sampled on the mesh
    seed: int = 0


@dataclass
class DistillResult:
    field: RadianceField
    mesh: trimesh.Trimesh | None  # None when the grid holds no surface
    points: np.ndarray | None  # (num_points, 3) float32 world frame, None when empty
    failures: dict[str, float | bool]
    history: list[dict[str, float]]  # per evaluation: iteration, seconds, cd, f1 (when a ground truth was given)
    seconds: float  # optimisation wall time (evaluations excluded)
    evaluations: int  # prior calls (guided calls count once per image)


def novel_camera(ref: Camera, cfg: DistillConfig, host: torch.Generator) -> Camera:
    """A random camera on the training views' orbit (cfg's elevation and distance ranges) at any azimuth."""
    u = torch.rand(3, generator=host).tolist()
    lo, hi = cfg.elevation_range
    dlo, dhi = cfg.distance_range
    return dataclasses.replace(ref, azimuth=ref.azimuth + 360 * u[0], elevation=lo + (hi - lo) * u[1],
                               distance=dlo + (dhi - dlo) * u[2])


def _prior_input(rendered: dict[str, Tensor]) -> Tensor:
    """A rendering (white background) as the prior's (B, 4, S, S) image in [-1, 1]."""
    return torch.cat([rendered["rgb"], rendered["alpha"]], dim=1) * 2 - 1


def distill(prior: ViewPrior | None, image: np.ndarray, camera: Camera, cfg: DistillConfig, *,
            extra_views: tuple[Tensor, list[Camera]] | None = None, extra_weight: float | Sequence[float] = 1.0,
            init_occupancy: Tensor | None = None, ground_truth: np.ndarray | None = None, eval_every: int = 0,
            progress: Callable[[int, int], None] | None = None,
            strip: Callable[[int, RadianceField], None] | None = None, device: torch.device | str = "cpu") -> DistillResult:
    """Optimise a voxel field for one input view.

    prior: any :class:`pvd.sds.view_prior.ViewPrior` (unused when sds_weight is 0).
    image: (H, W, 4) uint8 RGBA input view (alpha = object mask). camera: its camera.
    extra_views: more reference views, (K, 4, S, S) images in [-1, 1] (the prior's format) and
    their K cameras, fitted at S x S beside the input with ``extra_weight`` times its RGB and mask
    weights (multi-view reconstruction fits generated views this way, with sds_weight 0); one
    weight for all of them or K, one per view.
    init_occupancy: (R, R, R) bool over the field's grid (R = cfg.field.resolution) to start from
    instead of the density blob (:meth:`RadianceField.init_occupancy`; e.g. a visual hull).
    ground_truth: (M, 3) world-frame points; with ``eval_every`` > 0 the history records CD and
    F-score every ``eval_every`` iterations (for the quality curve).
    device: where the field, the prior's inputs and every draw made for them live.
    Two seeded streams: ``host`` for the cameras and timesteps (read on the host), ``dev`` on
    ``device`` for the render jitter and the SDS noise (a generator can only feed draws on its
    own device). A fixed seed gives the same result on a given device.
    """
    if cfg.tv_weight and cfg.representation.kind != "voxel":
        raise ValueError(f"tv_weight regularises a voxel grid; representation {cfg.representation.kind} has none")
    device = torch.device(device)
    host = torch.Generator().manual_seed(cfg.seed)
    dev = torch.Generator(device).manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed)
    field = make_field(cfg.field, cfg.representation).to(device)
    if init_occupancy is None:
        field.init_blob(cfg.blob_radius, cfg.blob_depth)
    else:
        field.init_occupancy(torch.as_tensor(init_occupancy, dtype=torch.bool), cfg.blob_depth)
    groups = getattr(field, "param_groups", None)  # a representation whose parameters need their own steps
    opt = torch.optim.Adam(groups(cfg.lr) if groups is not None else field.parameters(), lr=cfg.lr)

    ref_k, ref_e = (x.to(device) for x in camera.tensors(cfg.ref_size))
    ref = to_prior_image(image[None], cfg.ref_size).to(device)  # (1, 4, R, R), white background, [-1, 1]
    ref_rgb, ref_alpha = (ref[:, :3] + 1) / 2, (ref[:, 3:] + 1) / 2
    if extra_views is not None:
        ex_images, ex_cameras = extra_views
        ex_size = ex_images.shape[-1]
        if ex_images.ndim != 4 or ex_images.shape[1:] != (4, ex_size, ex_size) or len(ex_cameras) != len(ex_images):
            raise ValueError(f"extra_views needs (K, 4, S, S) images and K cameras, got {tuple(ex_images.shape)} "
                             f"and {len(ex_cameras)}")
        ks, es = zip(*(c.tensors(ex_size) for c in ex_cameras))
        ex_k, ex_e = torch.cat(ks).to(device), torch.cat(es).to(device)
        ex_rgb, ex_alpha = ((ex_images[:, :3].to(device).float() + 1) / 2), ((ex_images[:, 3:].to(device).float() + 1) / 2)
        ex_weight = torch.as_tensor(extra_weight, dtype=torch.float32).to(device).expand(len(ex_cameras))
    use_sds = cfg.sds_weight > 0
    use_normals = cfg.orientation_weight > 0 or cfg.normal_smooth_weight > 0
    if use_sds:
        size, diffusion = prior.image_size, noise_process(prior)
        cond_view = to_prior_image(image[None], size).to(device).expand(cfg.novel_views, -1, -1, -1)
    history: list[dict[str, float]] = []
    seconds, evaluations = 0.0, 0
    refresh_occupancy = getattr(field, "refresh_occupancy", None)  # the network's empty-space skipping
    for it in range(cfg.iterations):
        tic = time.perf_counter()
        if refresh_occupancy is not None:
            refresh_occupancy(it)
        out = field.render(ref_k, ref_e, cfg.ref_size, cfg.ref_size, num_samples=cfg.num_samples, generator=dev,
                           normals=use_normals)
        loss = cfg.rgb_weight * (out["rgb"] - ref_rgb).square().mean() + cfg.mask_weight * (out["alpha"] - ref_alpha).square().mean()
        alpha_all, renders = [out["alpha"]], [out]
        if extra_views is not None:
            ex = field.render(ex_k, ex_e, ex_size, ex_size, num_samples=cfg.num_samples, generator=dev,
                              normals=use_normals)
            renders.append(ex)
            per_view = (cfg.rgb_weight * (ex["rgb"] - ex_rgb).square().mean((1, 2, 3))
                        + cfg.mask_weight * (ex["alpha"] - ex_alpha).square().mean((1, 2, 3)))
            loss = loss + (ex_weight * per_view).mean()
            alpha_all.append(ex["alpha"].flatten(1))
        if use_sds:
            cams = [novel_camera(camera, cfg, host) for _ in range(cfg.novel_views)]
            ks, es = zip(*(c.tensors(size) for c in cams))
            novel = field.render(torch.cat(ks).to(device), torch.cat(es).to(device), size, size,
                                 num_samples=cfg.num_samples, generator=dev, normals=use_normals)
            renders.append(novel)
            alpha_all.append(novel["alpha"].flatten(1))
            t_max = cfg.t_max + (cfg.t_max_end - cfg.t_max) * it / max(cfg.iterations - 1, 1)
            loss = loss + cfg.sds_weight * score_distillation(prior, diffusion, _prior_input(novel), cond_view, camera, cams,
                                                              (cfg.t_min, t_max), cfg, host, dev)
            evaluations += len(cams)
        alpha = torch.cat([a.flatten() for a in alpha_all])
        loss = loss + cfg.entropy_weight * volume.opacity_entropy(alpha) + cfg.sparsity_weight * volume.sparsity(alpha)
        if cfg.tv_weight:  # voxel grids only (checked below)
            loss = loss + cfg.tv_weight * volume.density_tv(field)
        if use_normals:
            loss = loss + sum(cfg.orientation_weight * r["orientation"].mean()
                              + cfg.normal_smooth_weight * volume.normal_smoothness(r["normal"], r["alpha"]) for r in renders)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - tic
        if progress is not None:
            progress(it + 1, cfg.iterations)
        if strip is not None:
            strip(it + 1, field)
        if ground_truth is not None and eval_every and (it + 1) % eval_every == 0 and it + 1 < cfg.iterations:
            history.append({"iteration": it + 1, "seconds": seconds, **score(surface(field, cfg)[1], ground_truth)})
    mesh, points = surface(field, cfg)
    if ground_truth is not None and eval_every:
        history.append({"iteration": cfg.iterations, "seconds": seconds, **score(points, ground_truth)})
    return DistillResult(field=field, mesh=mesh, points=points, failures=failure_report(field, cfg, camera),
                         history=history, seconds=seconds, evaluations=evaluations)


def camera_pairs(source: Camera, targets: list[Camera]) -> Tensor:
    """(len(targets), 6) camera pairs from ``source`` to each target (:func:`pvd.sds.prior.camera_pair`)."""
    return camera_pair(source.elevation, source.azimuth, source.distance, [c.elevation for c in targets],
                       [c.azimuth for c in targets], [c.distance for c in targets])


def score_distillation(prior: ViewPrior, diffusion, x: Tensor, cond_view: Tensor, camera: Camera, cams: list[Camera],
                       t_range: tuple[float, float], cfg: DistillConfig, host: torch.Generator, dev: torch.Generator) -> Tensor:
    """The SDS loss of renderings x (B, 4, S, S) in [-1, 1] seen from ``cams`` (B of them), the prior
    conditioned on ``cond_view`` (B, 4, S, S) seen from ``camera``: t ~ U[t_range] (drawn on the
    host, where the tables are read), noise on x's device, one guided prior call without
    gradient, and the loss whose gradient is w(t) (eps_hat - eps) (:func:`sds_loss`)."""
    lo, hi = t_range
    frac = lo + (hi - lo) * torch.rand(len(cams), generator=host)
    t = (frac * (diffusion.num_steps - 1)).round().long()
    noise = torch.randn(x.shape, generator=dev, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        x_t = diffusion.q_sample(x.detach(), t, noise)
        eps_hat = prior.predict_noise(x_t, t.to(x.device), cond_view, camera_pairs(camera, cams).to(x.device), cfg.guidance)
    return sds_loss(x, sds_gradient(diffusion, eps_hat, noise, t, cfg.grad_clip))


def sds_gradient(diffusion, eps_hat: Tensor, noise: Tensor, t: Tensor, clip: float = 0.0) -> Tensor:
    """The SDS gradient w(t) (eps_hat - eps) (B, C, H, W), w(t) = 1 - alpha_bar_t, NaNs zeroed and,
    with ``clip`` > 0, each element clamped to [-clip, clip]. t: (B,) integer timesteps."""
    # indexed where t lives (a host t costs the device no sync), then moved to eps_hat
    w = (1 - diffusion.on_device(diffusion.alphas_cumprod, t.device)[t]).to(eps_hat).view(-1, *[1] * (eps_hat.ndim - 1))
    grad = torch.nan_to_num(w * (eps_hat - noise))
    return grad.clamp(-clip, clip) if clip > 0 else grad


def sds_loss(x: Tensor, grad: Tensor) -> Tensor:
    """A scalar whose gradient with respect to the renderings x (B, ...) is grad / B: the SDS
    update without differentiating through the prior (0.5 ||x - (x - grad).detach()||^2 / B)."""
    return 0.5 * (x - (x - grad).detach()).square().sum() / x.shape[0]


def surface(field: RadianceField, cfg: DistillConfig) -> tuple[trimesh.Trimesh | None, np.ndarray | None]:
    """The marching-cubes mesh of the density at the surface level and ``num_points`` points
    sampled on it (seeded); (None, None) when the grid holds no surface."""
    mesh = volume.extract_mesh(field, cfg.surface_opacity)
    if mesh.is_empty or not mesh.area > 0:
        return None, None
    return mesh, volume.sample_surface_points(mesh, cfg.num_points, cfg.seed)


def score(points: np.ndarray | None, ground_truth: np.ndarray) -> dict[str, float]:
    """Chamfer distance (squared) and F-score at 1% of the unit bounding-box diagonal of the
    points (K, 3) (from :func:`surface`) to the ground truth (M, 3); inf and 0 when empty (None)."""
    if points is None:
        return {"cd": math.inf, "f1": 0.0}
    a, b = torch.from_numpy(points)[None].float(), torch.as_tensor(ground_truth, dtype=torch.float32)[None]
    return {"cd": float(chamfer_distance(a, b)), "f1": float(f_score(a, b, 0.01))}


def save_result(path, result: DistillResult, cfg: DistillConfig, peak_memory_mb: float) -> None:
    """The optimised field's parameters with the config, cost and scores of the run that made
    them, in one torch file of tensors, numbers and strings (it loads with weights_only), written
    atomically: a later stage (Magic3D's refinement) starts from it instead of repeating the run."""
    state = {"field": result.field.state_dict(),  # detached; load_result maps it to the CPU first
             "config": json.dumps(to_dict(cfg), sort_keys=True), "history": json.dumps(result.history),
             "seconds": float(result.seconds), "evaluations": int(result.evaluations),
             "peak_memory_mb": float(peak_memory_mb)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_result(path, cfg: DistillConfig, camera: Camera, device: torch.device | str = "cpu"
                ) -> tuple[DistillResult, float]:
    """A :func:`save_result` file as the DistillResult its run returned (the surface and the
    failure report recomputed from the field) and that run's peak memory (MiB). Raises
    ValueError when the file was made with a different config than ``cfg``."""
    state = read_saved(path, cfg)
    field = make_field(cfg.field, cfg.representation)
    field.load_state_dict(state["field"])
    field = field.to(device)
    mesh, points = surface(field, cfg)
    result = DistillResult(field=field, mesh=mesh, points=points, failures=failure_report(field, cfg, camera),
                           history=json.loads(state["history"]), seconds=state["seconds"], evaluations=state["evaluations"])
    return result, state["peak_memory_mb"]


def read_saved(path, cfg: DistillConfig) -> dict:
    """A :func:`save_result` file's contents; ValueError unless it was made with ``cfg``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, wanted = _flat(json.loads(state["config"])), _flat(to_dict(cfg))
    # the options of the representations not optimised cannot have changed the field
    others = tuple(f"representation.{k}." for k in REPRESENTATIONS if k != cfg.representation.kind)
    saved, wanted = ({k: v for k, v in d.items() if not k.startswith(others)} for d in (saved, wanted))
    differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    if differ:
        raise ValueError(f"{path} was optimised with other settings ({', '.join(differ[:4])}"
                         f"{' ...' if len(differ) > 4 else ''} differ)")
    return state


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def failure_report(field: RadianceField, cfg: DistillConfig, camera: Camera, *, empty_fraction: float = 1e-4,
                   floater_fraction: float = 0.05) -> dict[str, float | bool]:
    """Detect the known failure modes of score distillation, per shape.

    empty: fewer than ``empty_fraction`` of the voxels are above the surface level.
    floaters: the share of occupied voxels outside the largest connected component
    (26-connectivity) exceeds ``floater_fraction``.
    janus_score: how much the back view (the input azimuth + 180 degrees, mirrored) looks like
    the front: IoU of the two silhouettes times one minus the mean RGB difference inside them.
    A shape whose two sides mirror each other scores high legitimately, so the caller compares
    it with the ground truth's silhouettes (:func:`silhouette_symmetry`) to flag duplication.
    """
    with torch.no_grad():
        occupied = (field.opacity_grid() > cfg.surface_opacity).cpu().numpy()
    total = int(occupied.sum())
    report: dict[str, float | bool] = {"occupied_fraction": total / occupied.size}
    report["empty"] = bool(report["occupied_fraction"] < empty_fraction)
    if total:
        labels, count = ndimage.label(occupied, structure=np.ones((3, 3, 3)))
        largest = np.bincount(labels.ravel())[1:].max()
        report["floater_fraction"] = float(1 - largest / total)
        report["components"] = int(count)
    else:
        report["floater_fraction"], report["components"] = 0.0, 0
    report["floaters"] = bool(report["floater_fraction"] > floater_fraction)
    front, back = (render_view(field, dataclasses.replace(camera, azimuth=camera.azimuth + d), cfg) for d in (0.0, 180.0))
    back = back[:, ::-1]  # mirror: a copied front appears mirrored from behind
    report["janus_score"] = _view_similarity(front, back)
    report["silhouette_symmetry"] = _mask_iou(front[..., 3] > 0.5, back[..., 3] > 0.5)
    return report


def render_view(field: RadianceField, camera: Camera, cfg: DistillConfig) -> np.ndarray:
    """(S, S, 4) float RGBA in [0, 1] (white background) at the reference size, no gradients."""
    k, e = (x.to(next(field.parameters()).device) for x in camera.tensors(cfg.ref_size))
    with torch.no_grad():
        out = field.render(k, e, cfg.ref_size, cfg.ref_size, num_samples=cfg.num_samples)
    return torch.cat([out["rgb"], out["alpha"]], dim=1)[0].permute(1, 2, 0).cpu().numpy()


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _view_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the silhouettes x (1 - mean absolute RGB difference on their intersection)."""
    ma, mb = a[..., 3] > 0.5, b[..., 3] > 0.5
    both = ma & mb
    if not both.any():
        return 0.0
    return _mask_iou(ma, mb) * (1 - float(np.abs(a[both, :3] - b[both, :3]).mean()))


def silhouette_symmetry(masks_front: np.ndarray, masks_back: np.ndarray) -> float:
    """IoU of a front silhouette (H, W) bool and the mirrored back one (H, W) bool: the
    ground-truth reference for ``failure_report``'s ``silhouette_symmetry``."""
    return _mask_iou(masks_front, masks_back[:, ::-1])
