"""Magic3D's two stages (Lin et al. 2023), with the view prior in place of text-to-image models:

1. coarse: volumetric score distillation (:func:`pvd.sds.distill.distill`, any representation);
2. fine: the coarse field's marching-cubes mesh, its vertices offset and recoloured under the
   same prior, rendered by the soft rasteriser (:mod:`pvd.sds.soft_raster`) at the prior's full
   resolution, with the input view's RGB and mask losses, a uniform-Laplacian term and normal
   consistency keeping the surface smooth (Magic3D's fine stage optimises a DMTet surface with
   the same kind of terms; here the mesh's connectivity is fixed).

How the prior guides the fine stage (``RefineConfig.mode``): ``"sds"`` is Magic3D's score
distillation, one prior call per novel view and iteration. ``"sdedit"`` fits the mesh to the
prior's edits of its own renders instead (DreamGaussian's second stage, Tang et al. 2024, fits
its texture to such edits; here their silhouettes steer the vertices): a few
novel views are rendered, noised to ``edit_strength`` and denoised by the prior in
``edit_steps`` DDIM calls (SDEdit), and their silhouettes become reference views for the
iterations that follow; the edits are redone from the current mesh ``edit_rounds`` times. An
edit is a whole denoised image, so it says where the outline goes rather than which way to
nudge it, and the same prior calls buy targets that do not change from one iteration's noise
draw to the next. ``"both"`` adds the two losses.

The fine stage starts, by default, from the very mesh the coarse stage is scored on (marching
cubes on the field's own grid, every piece): the refinement's gain over its coarse stage is
then what the refinement does, not what a coarser re-meshing loses. ``mesh_resolution`` pools
the grid first (fewer faces) and ``largest_piece`` drops all but the largest connected piece;
the val comparison of these choices is in tests/benchmarks/README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

from pvd.sds import soft_raster
from pvd.sds.distill import (Camera, DistillConfig, DistillResult, camera_pairs, novel_camera, distill, score,
                             score_distillation)
from pvd.sds.prior import to_prior_image
from pvd.sds.view_prior import ViewPrior, edit_views, noise_process
from pvd.sds.volume import extract_mesh, sample_surface_points


@dataclass
class RefineConfig:
    """The fine stage. Loss weights of the input view and SDS come from the coarse DistillConfig."""

    iterations: int = 300
    mesh_resolution: int = 0  # 0: the field's own grid; else the opacity grid pooled to this before marching cubes
    largest_piece: bool = False  # keep only the largest connected piece of the coarse mesh
    lr: float = 0.002  # Adam on the vertex offsets (world units)
    color_lr: float = 0.02  # Adam on the vertex colours' logits
    laplacian_weight: float = 50.0
    normal_weight: float = 1.0
    t_max: float = 0.5  # the fine stage samples t in [t_min, t_max]: detail, not layout (Magic3D's fine range)
    # how the prior guides the fine stage (module docstring): "sds", "sdedit" or "both". On 20 val
    # shapes F@1% ties (0.101 / 0.100 / 0.098) and SDS has the best CD (6.34 vs 7.54 / 6.97 x1e-3,
    # both paired intervals excluding zero; tests/benchmarks/README.md): "sds" stays
    mode: str = "sds"
    # sdedit's knobs, 6 val shapes, F@1% over the coarse stage: silhouettes only at strength 0.5 /
    # 0.7 / 0.85: +0.021 / +0.028 / +0.028; with the edits' colours at 0.3 / 0.5 / 0.7: +0.014 /
    # +0.012 / +0.029; 6 rounds of 2 views instead of 2 of 6 (0.7, silhouettes): +0.020
    edit_rgb: bool = False  # sdedit: fit the edits' colours too, not only their silhouettes
    edit_views: int = 6  # sdedit: novel views edited per round
    edit_rounds: int = 2  # sdedit: the targets are re-edited from the current mesh this many times
    edit_strength: float = 0.7  # sdedit: noise level the renders are edited from, as a fraction of T
    edit_steps: int = 25  # sdedit: DDIM calls per edit; rounds x views x steps = prior calls (SDS: iterations)
    # the input view's rendering size (0: the prior's, like the novel views). The input's own 64 px
    # on 6 val shapes: F@1% 0.108 vs 0.114, CD 6.08 vs 6.03 (tests/benchmarks/README.md): kept at 0
    ref_size: int = 0
    sigma: float = 0.25  # soft rasteriser edge width (pixels): wider lets a dense mesh's many faces bleed past its outline
    gamma: float = 0.02

    def __post_init__(self) -> None:
        if self.iterations < 0 or not (self.mesh_resolution == 0 or self.mesh_resolution >= 4) or not 0 < self.t_max <= 1:
            raise ValueError("refine needs iterations >= 0, mesh_resolution 0 or >= 4 and t_max in (0, 1]")
        if self.ref_size < 0:
            raise ValueError("refine needs ref_size >= 0 (0: the prior's size)")
        if self.mode not in ("sds", "sdedit", "both"):
            raise ValueError(f"refine's mode is 'sds', 'sdedit' or 'both', got {self.mode!r}")
        if min(self.edit_views, self.edit_rounds, self.edit_steps) < 1 or not 0 < self.edit_strength < 1:
            raise ValueError("refine needs edit_views, edit_rounds, edit_steps >= 1 and edit_strength in (0, 1)")


@dataclass
class TwoStageResult:
    coarse: DistillResult
    mesh: trimesh.Trimesh | None  # the refined mesh, None when the coarse stage found no surface
    points: np.ndarray | None  # (num_points, 3) on the refined mesh
    history: list[dict[str, float]]  # the fine stage's scores (iteration, seconds, cd, f1): its start mesh (0) and end
    seconds: float  # both stages
    evaluations: int  # prior calls in both stages


def coarse_mesh(field, surface_opacity: float, resolution: int = 0, largest_piece: bool = False) -> trimesh.Trimesh | None:
    """The field's marching-cubes mesh at ``surface_opacity`` (:func:`pvd.sds.volume.extract_mesh`;
    ``resolution`` pools the grid first, 0 keeps it); with ``largest_piece``, only its largest
    connected piece. None when no cell reaches the level."""
    mesh = extract_mesh(field, surface_opacity, resolution)
    if mesh.is_empty:
        return None
    if not largest_piece:
        return mesh
    parts = mesh.split(only_watertight=False)
    return max(parts, key=lambda m: len(m.faces)) if len(parts) > 1 else mesh


def refine(prior: ViewPrior | None, image: np.ndarray, camera: Camera, mesh: trimesh.Trimesh, colors: np.ndarray,
           cfg: DistillConfig, rcfg: RefineConfig, *, ground_truth: np.ndarray | None = None,
           device: torch.device | str = "cpu", novel_targets: Callable[[list[Camera], int], Tensor] | None = None,
           size: int | None = None) -> tuple[trimesh.Trimesh, list[dict[str, float]], float, int]:
    """Offset and recolour ``mesh``'s vertices under the prior (see the module docstring).

    colors: (V, 3) initial vertex colours in (0, 1). Returns (refined mesh, history, seconds,
    prior evaluations). Streams as in distill: cameras and t on the host, noise on the device.
    novel_targets (an oracle for ablations): cameras, size -> (B, 1, S, S) silhouettes in [0, 1]
    that the novel views' alpha is fitted to, with the input view's mask weight, instead of SDS;
    size: the rendering resolution (default the prior's; needed when there is no prior).
    """
    device = torch.device(device)
    host = torch.Generator().manual_seed(cfg.seed + 7)
    dev = torch.Generator(device).manual_seed(cfg.seed + 8)
    v0 = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=device)
    faces = torch.tensor(np.asarray(mesh.faces), dtype=torch.long, device=device)
    offsets = torch.zeros_like(v0, requires_grad=True)
    logits = torch.logit(torch.as_tensor(colors, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([{"params": [offsets], "lr": rcfg.lr}, {"params": [logits], "lr": rcfg.color_lr}])
    size = size or prior.image_size
    guide = None if novel_targets is not None or cfg.sds_weight <= 0 else rcfg.mode
    use_sds, use_edits = guide in ("sds", "both"), guide in ("sdedit", "both")
    diffusion = noise_process(prior) if use_sds else None
    ref_size = rcfg.ref_size or size
    ref = to_prior_image(image[None], ref_size).to(device)
    ref_rgb, ref_alpha = (ref[:, :3] + 1) / 2, (ref[:, 3:] + 1) / 2
    ref_k, ref_e = (x.to(device) for x in camera.tensors(ref_size))
    input_view = to_prior_image(image[None], size).to(device)
    soft = dict(sigma=rcfg.sigma, gamma=rcfg.gamma)
    edit_starts = {r * rcfg.iterations // rcfg.edit_rounds for r in range(rcfg.edit_rounds)}
    edit_cams, edited = [], None
    seconds, evaluations, history = 0.0, 0, []
    if ground_truth is not None:  # the mesh it starts from: what the fine stage itself changes
        history.append({"iteration": 0, "seconds": 0.0,
                        **score(sample_surface_points(mesh, cfg.num_points, seed=cfg.seed), ground_truth)})
    for it in range(rcfg.iterations):
        tic = time.perf_counter()
        verts, colors_now = v0 + offsets, torch.sigmoid(logits)
        if use_edits and it in edit_starts:  # new targets: the prior's edit of the mesh as it is now
            edit_cams = [novel_camera(camera, cfg, host) for _ in range(rcfg.edit_views)]
            edited = edited_views(prior, verts.detach(), faces, colors_now.detach(), input_view, camera, edit_cams,
                                  rcfg, size, cfg.guidance, dev)
            evaluations += rcfg.edit_views * rcfg.edit_steps
        out = soft_raster.rasterize(verts, faces, colors_now, ref_k, ref_e, ref_size, ref_size, **soft)
        loss = cfg.rgb_weight * (out["rgb"] - ref_rgb).square().mean() + cfg.mask_weight * (out["alpha"] - ref_alpha).square().mean()
        if guide is not None or novel_targets is not None:
            if use_edits:
                pick = torch.randint(len(edit_cams), (cfg.novel_views,), generator=host)
                cams = [edit_cams[i] for i in pick.tolist()]
            else:
                cams = [novel_camera(camera, cfg, host) for _ in range(cfg.novel_views)]
            ks, es = zip(*(c.tensors(size) for c in cams))
            novel = soft_raster.rasterize(verts, faces, colors_now, torch.cat(ks).to(device), torch.cat(es).to(device),
                                          size, size, **soft)
        if novel_targets is not None:
            loss = loss + cfg.mask_weight * (novel["alpha"] - novel_targets(cams, size).to(device)).square().mean()
        if use_edits:  # the edited views count as reference views, with the input view's weights
            target = (edited[pick.to(device)] + 1) / 2
            loss = loss + cfg.mask_weight * (novel["alpha"] - target[:, 3:]).square().mean()
            if rcfg.edit_rgb:
                loss = loss + cfg.rgb_weight * (novel["rgb"] - target[:, :3]).square().mean()
        if use_sds:
            x = torch.cat([novel["rgb"], novel["alpha"]], 1) * 2 - 1
            loss = loss + cfg.sds_weight * score_distillation(prior, diffusion, x, input_view.expand(len(cams), -1, -1, -1),
                                                              camera, cams, (cfg.t_min, rcfg.t_max), cfg, host, dev)
            evaluations += len(cams)
        loss = loss + rcfg.laplacian_weight * soft_raster.uniform_laplacian(verts, faces) \
            + rcfg.normal_weight * soft_raster.normal_consistency(verts, faces)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - tic
    refined = trimesh.Trimesh(vertices=(v0 + offsets).detach().cpu().numpy(), faces=np.asarray(mesh.faces), process=False)
    if ground_truth is not None:
        history.append({"iteration": rcfg.iterations, "seconds": seconds,
                        **score(sample_surface_points(refined, cfg.num_points, seed=cfg.seed), ground_truth)})
    return refined, history, seconds, evaluations


@torch.no_grad()
def edited_views(prior: ViewPrior, verts: Tensor, faces: Tensor, colors: Tensor, input_view: Tensor, camera: Camera,
                 cams: list[Camera], rcfg: RefineConfig, size: int, guidance: float, generator: torch.Generator) -> Tensor:
    """The mesh (verts (V, 3), faces (F, 3), colors (V, 3)) rendered from ``cams`` at ``size``
    and edited by the prior (:func:`pvd.sds.view_prior.edit_views`), conditioned on
    ``input_view`` (1, 4, S, S) seen from ``camera``, at classifier-free ``guidance``: (len(cams), 4, S, S)
    in [-1, 1]."""
    ks, es = zip(*(c.tensors(size) for c in cams))
    out = soft_raster.rasterize(verts, faces, colors, torch.cat(ks).to(verts.device), torch.cat(es).to(verts.device),
                                size, size, sigma=rcfg.sigma, gamma=rcfg.gamma)
    renders = torch.cat([out["rgb"], out["alpha"]], 1) * 2 - 1
    return edit_views(prior, renders, input_view.expand(len(cams), -1, -1, -1), camera_pairs(camera, cams).to(verts.device),
                      strength=rcfg.edit_strength, steps=rcfg.edit_steps, guidance=guidance,
                      generator=generator)


def two_stage(prior: ViewPrior, image: np.ndarray, camera: Camera, cfg: DistillConfig, rcfg: RefineConfig, *,
              ground_truth: np.ndarray | None = None, coarse: DistillResult | None = None,
              device: torch.device | str = "cpu") -> TwoStageResult:
    """Coarse SDS with ``cfg``, then the fine stage with ``rcfg`` (see the module docstring).

    coarse: the coarse stage's result when it has already been run (an SDS run with the same
    ``cfg``, :func:`pvd.sds.distill.load_result`): the fine stage starts from it, and its cost
    still counts in ``seconds`` and ``evaluations``.
    """
    if coarse is None:
        coarse = distill(prior, image, camera, cfg, ground_truth=ground_truth,
                         eval_every=cfg.iterations if ground_truth is not None else 0, device=device)
    mesh = coarse_mesh(coarse.field, cfg.surface_opacity, rcfg.mesh_resolution, rcfg.largest_piece)
    if mesh is None:
        return TwoStageResult(coarse, None, None, [], coarse.seconds, coarse.evaluations)
    with torch.no_grad():  # vertex colours from the field's colour where it has a point query (points: grey)
        query = getattr(coarse.field, "query", None)
        colors = (query(torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=device))[1].cpu().numpy()
                  if query is not None else np.full((len(mesh.vertices), 3), 0.7))
    refined, history, seconds, evaluations = refine(prior, image, camera, mesh, colors, cfg, rcfg,
                                                    ground_truth=ground_truth, device=device)
    points = sample_surface_points(refined, cfg.num_points, seed=cfg.seed)
    return TwoStageResult(coarse, refined, points, history, coarse.seconds + seconds, coarse.evaluations + evaluations)

