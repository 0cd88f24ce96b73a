"""Lift one image (or a dataset split) to 3D with a 2D view prior: by score distillation, by
multi-view reconstruction (generate views once, then fit them: ``--method multiview``), or by
Magic3D's two stages (SDS, then its mesh refined: ``--method magic3d``).

    python -m pvd.sds --prior runs/sds-prior --image chair.png --out outputs/sds
    python -m pvd.sds --method multiview --views 6 --order chain --prior runs/sds-prior --data data/synth.h5 \
        --split val --num 6 --out outputs/mv-val
    python -m pvd.sds --method magic3d --prior runs/sds-prior --data data/synth.h5 --split val --num 6 --out outputs/m3d
    python -m pvd.sds --method magic3d --coarse-from outputs/sds-val ...   # refine an SDS run's fields (same settings)
    python -m pvd.sds --representation nerf --set orientation_weight=1 normal_smooth_weight=1 ...   # see --help
    python -m pvd.sds --prior runs/sds-prior --data data/synth.h5 --split test --num 20 --out outputs/sds-test
    python -m pvd.sds --data data/synth.h5 --split test --num 20 --sds-weight 0 --out outputs/ref-only
    python -m pvd.sds --prior runs/sds-prior --data data/synth.h5 --split val --num 5 \\
        --eval-every 50 --out outputs/sds-curve     # quality within one run
    # quality against the budget (one run per budget): tests/benchmarks/sds_budget_curve.py

Per shape NAME: NAME.ply / NAME.npy (points sampled on the mesh, world frame, like sample.py's),
NAME.obj (the marching-cubes mesh), NAME.density.npy (the density grid), with --method sds
NAME.field.pt (the field's parameters and settings: magic3d --coarse-from starts there), NAME.png (input |
front | side | back renderings), with --strip NAME.strip.png (views during the optimisation),
with --method multiview NAME.views.png (the generated views, input first) and the views'
consistency score and weights in the record, with --method magic3d the refined mesh and points
(the coarse stage's scores in the record as coarse_cd / coarse_f1, those of the mesh the fine
stage starts from, pooled and cleaned, as mesh_start_cd / mesh_start_f1),
and records/NAME.json (wall time, peak memory, prior evaluations, failure flags and, over a
dataset, Chamfer distance and F-score to the ground truth). A rerun into the same folder
skips shapes whose record exists. summary.json holds every record and the means; with
--eval-every, curve.json and curve.png plot Chamfer distance against iterations.

A photo's camera is not known: it is taken on the training views' orbit (--azimuth,
--elevation, --distance; the result's frame turns with --azimuth). Over a dataset the input
view's stored camera is used, so results are in the dataset's world frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from pvd.config import apply_overrides, to_dict
from pvd.data.cameras import R2N2_FOCAL_NDC, intrinsics_from_ndc_focal, orbit_extrinsics
from pvd.data.hdf5 import SPLITS, FileInfo, open_dataset_file, read_mesh
from pvd.data.render import image_grid, render_mesh, render_points, save_png
from pvd.errors import UserError, raise_if_interrupted, run_command
from pvd.imageprep import prepare_photo
from pvd.io import atomic_path, save_points
from pvd.meshing import save_mesh
from pvd.runtime import PeakMemory, pick_device
from pvd.sds.distill import (Camera, DistillConfig, render_view, distill, load_result, read_saved, save_result,
                             silhouette_symmetry)
from pvd.sds.multiview import INITS as M_INITS
from pvd.sds.multiview import ORDERS as M_ORDERS
from pvd.sds.multiview import WEIGHTINGS as M_WEIGHTINGS
from pvd.sds.fields import REPRESENTATIONS
from pvd.sds.magic3d import RefineConfig, two_stage
from pvd.sds.methods import METHODS, method_config
from pvd.sds.multiview import MultiViewConfig, reconstruct

GT_POINTS = 2048  # ground-truth points scored against (a fixed, seeded subset of the stored cloud)
JANUS_MARGIN = 0.15  # flag when the result's front/back silhouettes agree this much more than the truth's


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pvd.sds", description=__doc__.split("\n")[0])
    p.add_argument("--prior", help="a prior run directory or checkpoint (python -m pvd.sds.train_prior); "
                                   "not needed with --sds-weight 0")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--image", nargs="+", default=[], metavar="FILE", help="photos or renderings")
    src.add_argument("--data", metavar="FILE", help="a dataset HDF5 file: lift shapes of --split from their view --view")
    p.add_argument("--split", default="test")
    p.add_argument("--num", type=int, default=None, help="shapes of the split (default: all)")
    p.add_argument("--view", type=int, default=0, help="the input view of each dataset shape")
    p.add_argument("--azimuth", type=float, default=0.0, help="a photo's assumed camera (degrees)")
    p.add_argument("--elevation", type=float, default=27.5)
    p.add_argument("--distance", type=float, default=1.4)
    p.add_argument("--method", choices=METHODS, default="sds",
                   help="sds: score distillation; multiview: generate --views views, then fit them (no prior calls in "
                        "the fit); magic3d: SDS, then its mesh refined under the prior (--refine-set)")
    p.add_argument("--representation", choices=REPRESENTATIONS, default=None,
                   help="what is optimised: voxel grid, coordinate network (nerf) or Gaussian points (default: sds "
                        "points, multiview and magic3d's coarse stage voxel; chosen on val)")
    p.add_argument("--refine-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="magic3d: RefineConfig fields of the fine stage, e.g. iterations=300 laplacian_weight=50")
    p.add_argument("--coarse-from", metavar="DIR",
                   help="magic3d: start the fine stage from the fields an SDS run with the same settings wrote to DIR "
                        "(NAME.field.pt) instead of repeating that run; its time and prior calls still count")
    p.add_argument("--views", type=int, default=None, help="multiview: generated views (default 6)")
    p.add_argument("--order", choices=M_ORDERS, default=None, help="multiview: generation order (default independent)")
    p.add_argument("--view-weight", type=float, default=None, help="multiview: a generated view's loss weight (default 0.5)")
    p.add_argument("--steps", type=int, default=None, help="multiview: DDIM steps per view (default 50)")
    p.add_argument("--init", choices=M_INITS, default=None, help="multiview: the fit's start (default hull)")
    p.add_argument("--hull-slack", type=int, default=None,
                   help="multiview: generated silhouettes a hull cell may fall outside (default 1)")
    p.add_argument("--weighting", choices=M_WEIGHTINGS, default=None,
                   help="multiview: generated views' weights (default agreement with the visual hull)")
    p.add_argument("--iterations", type=int, default=None, help="optimisation iterations (default: sds 800, multiview fit 400)")
    p.add_argument("--sds-weight", type=float, default=None, help="0: reference-view losses only (the ablation)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other DistillConfig fields, e.g. lr=0.03 field.resolution=48")
    p.add_argument("--eval-every", type=int, default=0, help="score every K iterations (dataset input): the quality curve")
    p.add_argument("--strip", action="store_true", help="also write a PNG strip of views during the optimisation")
    p.add_argument("--out", default="outputs/sds")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    return p


def make_config(args) -> DistillConfig:
    """The optimisation's config from the command line (see :func:`pvd.sds.methods.method_config`)."""
    cfg = method_config(args.method, args.set)
    for key in ("iterations", "sds_weight", "guidance", "seed"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.representation is not None:
        cfg.representation = dataclasses.replace(cfg.representation, kind=args.representation)
    if cfg.iterations < 1:
        raise UserError(f"iterations must be at least 1, got {cfg.iterations}")
    return cfg


MULTIVIEW_OPTIONS = ("views", "order", "view_weight", "steps", "init", "hull_slack", "weighting")


def make_multiview_config(args, fit: DistillConfig) -> MultiViewConfig:
    cfg = MultiViewConfig(fit=dataclasses.replace(fit, sds_weight=0.0), guidance=fit.guidance, seed=fit.seed)
    for key in MULTIVIEW_OPTIONS:
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    try:
        MultiViewConfig.__post_init__(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    return cfg


def photo_jobs(args) -> list[dict]:
    """One job per photo: its prepared RGBA view and the assumed camera."""
    k = intrinsics_from_ndc_focal(R2N2_FOCAL_NDC, 64, 64)
    camera = Camera(args.azimuth, args.elevation, args.distance, tuple(map(tuple, k.tolist())), 64)
    jobs, names = [], set()
    for path in map(Path, args.image):
        if not path.is_file():
            raise UserError(f"{path}: no such image file")
        name = path.stem
        if name in names:
            raise UserError(f"two inputs are named {name!r}; rename one")
        names.add(name)
        jobs.append({"name": name, "image": prepare_photo(path, 64).transpose(1, 2, 0), "camera": camera,
                     "source": str(path)})
    return jobs


def dataset_jobs(args) -> list[dict]:
    """One job per shape of the split: its stored view, that view's camera and the ground truth."""
    path = Path(args.data)
    with open_dataset_file(path) as f:
        info = FileInfo.read(f)
        if args.split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
        if not info.has_images or "cameras" not in f:
            raise UserError(f"{path} has no rendered views (images and cameras)")
        rows = np.flatnonzero(info.split == SPLITS.index(args.split))
        if args.num is not None:
            rows = rows[: args.num]
        if not 0 <= args.view < f["images"].shape[1]:
            raise UserError(f"--view {args.view} is out of range (the file has {f['images'].shape[1]} views)")
        cams = f["cameras"]
        jobs = []
        for row in rows:
            v = args.view
            k = cams["intrinsics"][row, v]
            camera = Camera(float(cams["azimuth"][row, v]), float(cams["elevation"][row, v]),
                            float(cams["distance"][row, v]), tuple(map(tuple, k.tolist())), int(f["images"].shape[2]))
            points = f["points"][row]
            pick = np.random.default_rng(int(row)).choice(len(points), min(GT_POINTS, len(points)), replace=False)
            job = {"name": f"{args.split}-{int(row):05d}", "row": int(row), "image": f["images"][row, v],
                   "camera": camera, "ground_truth": points[np.sort(pick)],
                   "category": info.categories[int(info.category[row])]}
            # the truth's own front/back agreement, the Janus reference
            job["gt_silhouette_symmetry"] = silhouette_symmetry(*_truth_silhouettes(f, row, camera, k, points))
            jobs.append(job)
    return jobs


def _truth_silhouettes(f: h5py.File, row: int, camera: Camera, intrinsics: np.ndarray, points: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(front, back), each (H, W) bool: the ground truth seen from the input camera and from behind
    it (azimuth + 180 degrees, same elevation, distance and intrinsics), both drawn by one
    renderer: the stored mesh's rasteriser, or, in a file without meshes (PC15k + R2N2), the
    stored points (N, 3) splatted one pixel each."""
    size = int(f["images"].shape[2])
    masks = []
    for turn in (0.0, 180.0):
        extrinsics = orbit_extrinsics(camera.azimuth + turn, camera.elevation, camera.distance)
        if "mesh" in f:
            masks.append(render_mesh(*read_mesh(f, row), intrinsics, extrinsics, size, size)[..., 3] > 127)
        else:
            masks.append(render_points(points, intrinsics, extrinsics, size, size, radius_px=0.0)[..., 3] > 127)
    return masks[0], masks[1]


def load_coarse(folder: Path, job: dict, cfg: DistillConfig, device, *, check_only: bool = False):
    """The SDS run's result for ``job`` from ``folder`` (see --coarse-from) and its peak memory
    (MiB); check_only: only that the file exists and was made with ``cfg``."""
    path = folder / f"{job['name']}.field.pt"
    if not path.is_file():
        raise UserError(f"{path}: no such file (run python -m pvd.sds --method sds with the same settings "
                        f"--out {folder} first)")
    try:
        return read_saved(path, cfg) if check_only else load_result(path, cfg, job["camera"], device)
    except ValueError as e:
        raise UserError(str(e)) from None


def write_shape(out: Path, job: dict, result, cfg: DistillConfig, strip_frames: list[np.ndarray]) -> dict:
    """Write one shape's files (each atomically) and return its record."""
    name = job["name"]
    with atomic_path(out / f"{name}.density.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, result.field.density_grid().detach().cpu().numpy().astype(np.float32))
    if result.points is not None:
        save_points(out / f"{name}.ply", result.points)
        save_points(out / f"{name}.npy", result.points)
        save_mesh(result.mesh, out / f"{name}.obj")
    cam = job["camera"]
    views = [np.asarray(job["image"], dtype=np.float32) / 255.0]
    views += [render_view(result.field, dataclasses.replace(cam, azimuth=cam.azimuth + d), cfg) for d in (0, 90, 180)]
    tiles = [_to_uint8(v, cfg.ref_size) for v in views]
    save_png(out / f"{name}.png", image_grid(tiles, columns=len(tiles)))
    if strip_frames:
        save_png(out / f"{name}.strip.png", image_grid(strip_frames, columns=4))
    return {"name": name, "source": job.get("source", f"row {job.get('row')}"), "category": job.get("category"),
            "empty": result.points is None}


def _to_uint8(rgba: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 4) float in [0, 1] -> (size, size, 4) uint8 (nearest resize for the input view)."""
    img = np.clip(np.asarray(rgba) * 255 + 0.5, 0, 255).astype(np.uint8)
    if img.shape[0] != size:
        idx = (np.arange(size) * img.shape[0] / size).astype(int)
        img = img[idx][:, idx]
    return img


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.image) == bool(args.data):
        raise UserError("give either --image FILE ... or --data FILE")
    if args.eval_every and not args.data:
        raise UserError("--eval-every scores against the ground truth: it needs --data")
    if args.method != "multiview" and any(getattr(args, k) is not None for k in MULTIVIEW_OPTIONS):
        raise UserError("--views, --order, --view-weight, --steps, --init, --hull-slack and --weighting belong to "
                        "--method multiview")
    cfg = make_config(args)
    mv = make_multiview_config(args, cfg) if args.method == "multiview" else None
    if (args.refine_set or args.coarse_from) and args.method != "magic3d":
        raise UserError("--refine-set and --coarse-from belong to --method magic3d")
    refine_cfg = apply_overrides(RefineConfig(), args.refine_set) if args.method == "magic3d" else None
    if refine_cfg is not None:
        try:
            RefineConfig.__post_init__(refine_cfg)
        except ValueError as e:
            raise UserError(str(e)) from None
    device = pick_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    prior = None
    if cfg.sds_weight > 0 or args.method != "sds":
        if not args.prior:
            raise UserError("--prior is needed unless --sds-weight 0" if args.method == "sds" else
                            f"--method {args.method} needs --prior")
        from pvd.sds.view_prior import TrainedViewPrior
        prior = TrainedViewPrior.load(args.prior, device)
    jobs = photo_jobs(args) if args.image else dataset_jobs(args)
    if not jobs:
        raise UserError("no shapes to lift")
    out = Path(args.out)
    (out / "records").mkdir(parents=True, exist_ok=True)
    if args.coarse_from:  # every coarse field is there and made with these settings, before any work
        for job in jobs:
            if not (out / "records" / f"{job['name']}.json").is_file():
                load_coarse(Path(args.coarse_from), job, cfg, device, check_only=True)
    records = []
    bar = tqdm(jobs, desc="sds", unit="shape", dynamic_ncols=True)
    for job in bar:
        record_path = out / "records" / f"{job['name']}.json"
        if record_path.is_file():  # finished by an earlier run
            records.append(json.loads(record_path.read_text()))
            continue
        frames: list[np.ndarray] = []
        every = max(cfg.iterations // 8, 1)

        def strip(it: int, field) -> None:
            if args.strip and it % every == 0:
                cam = job["camera"]
                frames.extend(_to_uint8(render_view(field, dataclasses.replace(cam, azimuth=cam.azimuth + d), cfg),
                                        cfg.ref_size) for d in (0, 90, 180, 270))

        eval_every = args.eval_every or (cfg.iterations if "ground_truth" in job else 0)
        coarse_run, coarse_peak = (load_coarse(Path(args.coarse_from), job, cfg, device) if args.coarse_from
                                   else (None, 0.0))
        with PeakMemory(device) as memory:
            if refine_cfg is not None:
                two = two_stage(prior, np.asarray(job["image"]), job["camera"], cfg, refine_cfg,
                                ground_truth=job.get("ground_truth"), coarse=coarse_run, device=device)
                coarse = two.coarse.history[-1] if two.coarse.history else {}
                # the shape written and scored is the refined mesh; the failure flags read the coarse field
                result = dataclasses.replace(two.coarse, mesh=two.mesh, points=two.points,
                                             history=two.coarse.history + two.history)
                extra = {"seconds": two.seconds, "prior_evaluations": two.evaluations, "coarse_cd": coarse.get("cd"),
                         "coarse_f1": coarse.get("f1"), "coarse_seconds": two.coarse.seconds,
                         "mesh_start_cd": two.history[0]["cd"] if two.history else None,
                         "mesh_start_f1": two.history[0]["f1"] if two.history else None}
            elif mv is None:
                result = distill(prior, np.asarray(job["image"]), job["camera"], cfg, ground_truth=job.get("ground_truth"),
                                 eval_every=eval_every, strip=strip, device=device)
                extra = {"seconds": result.seconds, "prior_evaluations": result.evaluations}
            else:
                generated = reconstruct(prior, np.asarray(job["image"]), job["camera"], mv,
                                        ground_truth=job.get("ground_truth"), eval_every=eval_every, device=device)
                result = generated.fit
                extra = {"seconds": generated.generate_seconds + result.seconds, "generate_seconds": generated.generate_seconds,
                         "prior_evaluations": generated.evaluations, "view_consistency": generated.consistency,
                         "view_weights": generated.view_weights}
                tiles = [_to_uint8(np.asarray(job["image"], np.float32) / 255.0, prior.image_size)]
                tiles += [_to_uint8(((v + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy(), prior.image_size)  # RGB on white
                          for v in generated.views]
                save_png(out / f"{job['name']}.views.png", image_grid(tiles, columns=len(tiles)))
        raise_if_interrupted()
        record = write_shape(out, job, result, cfg, frames)
        if args.method == "sds":  # the coarse stage another run (magic3d --coarse-from) can start from
            save_result(out / f"{job['name']}.field.pt", result, cfg, memory.peak / 2**20)
        record.update(method=args.method, peak_memory_mb=max(memory.peak / 2**20, coarse_peak), iterations=cfg.iterations,
                      history=result.history, **extra, **result.failures)
        if coarse_run is not None:
            record["coarse_from"] = str(Path(args.coarse_from) / f"{job['name']}.field.pt")
        if result.history:
            record.update(cd=result.history[-1]["cd"], f1=result.history[-1]["f1"])
        record["janus"] = None  # unknown for a photo: no ground truth to compare with
        if "gt_silhouette_symmetry" in job:
            record["gt_silhouette_symmetry"] = job["gt_silhouette_symmetry"]
            record["janus"] = bool(record["silhouette_symmetry"] - job["gt_silhouette_symmetry"] > JANUS_MARGIN)
        with atomic_path(record_path) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=1))
        records.append(record)
        bar.set_postfix(s=f"{record['seconds']:.0f}", cd=f"{record.get('cd', math.nan):.4f}")
    write_summary(out, records, mv or cfg, args, device, refine_cfg)
    print(f"wrote {len(records)} shape(s) to {out}/ (summary.json)")
    return 0


def write_summary(out: Path, records: list[dict], cfg: DistillConfig | MultiViewConfig, args, device,
                  refine_cfg: RefineConfig | None = None) -> None:
    def mean(key: str) -> float | None:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return float(np.mean(values)) if values else None

    summary = {"method": args.method, "config": to_dict(cfg), "refine": to_dict(refine_cfg) if refine_cfg else None,
               "prior": args.prior, "device": str(device),
               "shapes": len(records),
               "mean": {k: mean(k) for k in ("cd", "f1", "seconds", "peak_memory_mb", "prior_evaluations", "view_consistency",
                                             "coarse_cd", "coarse_f1")},
               "failures": {k: int(sum(bool(r.get(k)) for r in records)) for k in ("empty", "floaters", "janus")},
               "records": records}
    with atomic_path(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    if args.eval_every:
        write_curve(out, records)


def write_curve(out: Path, records: list[dict]) -> None:
    """curve.json and curve.png: mean (over shapes) Chamfer distance and F-score per iteration."""
    iters = sorted({h["iteration"] for r in records for h in r["history"]})
    rows = []
    for it in iters:
        cds = [h["cd"] for r in records for h in r["history"] if h["iteration"] == it and math.isfinite(h["cd"])]
        f1s = [h["f1"] for r in records for h in r["history"] if h["iteration"] == it]
        secs = [h["seconds"] for r in records for h in r["history"] if h["iteration"] == it]
        rows.append({"iteration": it, "cd": float(np.mean(cds)) if cds else None, "f1": float(np.mean(f1s)),
                     "seconds": float(np.mean(secs)), "shapes": len(f1s)})
    with atomic_path(out / "curve.json") as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot([r["iteration"] for r in rows], [r["cd"] for r in rows], marker=".")
    ax[0].set(xlabel="iteration", ylabel="Chamfer distance (squared)", title=f"mean over {len(records)} shapes")
    ax[1].plot([r["iteration"] for r in rows], [r["f1"] for r in rows], marker=".", color="C1")
    ax[1].set(xlabel="iteration", ylabel="F-score @ 1%")
    fig.tight_layout()
    with atomic_path(out / "curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_command(main))
