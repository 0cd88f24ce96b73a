"""Sample point clouds (and meshes) from a trained run: photo -> points -> mesh.

    python sample.py --ckpt runs/quickstart --image chair.png --mesh obj
    python sample.py --ckpt runs/quickstart --images photos/ --guidance 3 --out outputs/photos
    python sample.py --ckpt runs/pvd-paper-chair --num 1000 --sampler ddpm --out outputs/chair
    python sample.py --ckpt runs/cls --category chair --num 8
    python sample.py --ckpt runs/pvd-paper-chair --partial scan.ply --num 4   # shape completion

Photos are prepared like the training views (cropped to the object by its alpha or, for an
opaque photo, by its difference from the border colour, recentred, padded to the training
views' framing and resized). Per shape: NAME.ply (binary), NAME.npy and a NAME.png preview
(name over input | points from two sides | mesh from two sides), and with --mesh the mesh; the
first 16 previews stacked in previews.png; all shapes together in samples.npy (S, N, 3) for
``python -m pvd.evaluate``, plus info.json. Points are in the run's normalised data frame
(original = points * std + mean with the PointFlow statistics in info.json). Every file is
written complete or not at all; inputs are all checked before anything is sampled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pvd import checkpoint
from pvd.data.render import save_png
from pvd.diffusion import build
from pvd.diffusion.cascade import sample_stages
from pvd.diffusion.hierarchy import with_t_start
from pvd.diffusion.samplers import SAMPLERS
from pvd.errors import UserError, run_command
from pvd.imageprep import prepare_photo
from pvd.io import atomic_path, save_points
from pvd.meshing import load_points, mesh_from_points, save_mesh
from pvd.nn import Condition
from pvd.preview import preview, stack_rows
from pvd.runtime import pick_device

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


PREVIEW_ROWS = 16  # previews.png stacks the first ones


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample.py", description="Sample point clouds (and meshes) from a trained run.")
    p.add_argument("--ckpt", required=True, help="a run directory (its newest checkpoint) or a checkpoint file")
    src = p.add_argument_group("what to sample (images, a category, or neither for unconditional)")
    src.add_argument("--image", nargs="+", default=[], metavar="FILE", help="photos / renderings (any format Pillow reads)")
    src.add_argument("--images", metavar="DIR", help="every image file in DIR")
    src.add_argument("--category", help="category name (class-conditional runs)")
    src.add_argument("--num", type=int, default=None, help="shapes per image, or in total without images (default 1)")
    src.add_argument("--partial", metavar="P.ply", help="shape completion: these points are kept and the rest generated")
    src.add_argument("--partial-frame", choices=["normalized", "original"], default="normalized",
                     help="frame of the --partial points (original: the dataset's stored frame)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None, help="default: the run's (diffusion.sampler)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1: none)")
    p.add_argument("--t-start", type=float, default=None,
                   help="hierarchy runs: start the refinement at this fraction of T, <= the run's t_max (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=None, help="points per shape (single-stage runs; default: trained count)")
    p.add_argument("--batch", type=int, default=8, help="shapes per sampler call")
    p.add_argument("--out", default="outputs/samples", help="output folder")
    p.add_argument("--mesh", choices=["obj", "ply", "glb"], default=None, help="also write a mesh in this format")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p


def collect_images(args) -> list[Path]:
    paths = [Path(p) for p in args.image]
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise UserError(f"--images {folder}: not a directory")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise UserError(f"--images {folder}: no image files in it")
        paths += found
    return paths


def unique_names(paths: list[Path]) -> list[str]:
    names, taken = [], set()
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem) or "image"
        name, k = base, 1
        while name in taken:  # a-2 for the second a, unless an input is itself called a-2
            k += 1
            name = f"{base}-{k}"
        taken.add(name)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    if args.batch < 1 or (args.num is not None and args.num < 1):
        raise UserError("--batch and --num must be at least 1")
    if args.points is not None and args.points < 1:
        raise UserError("--points must be at least 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")
    run, cfg, nets = checkpoint.load_run(args.ckpt, device, args.raw_weights)
    data = run["dataset"]
    image_paths = collect_images(args)
    wants_image = "image" in cfg.condition
    if image_paths and not wants_image:
        raise UserError(f"this run is not image-conditioned (condition={cfg.condition}); drop --image/--images")
    if wants_image and not image_paths:
        raise UserError("this run is image-conditioned: give --image FILE ... or --images DIR")
    category = None
    if args.category is not None:
        if "category" not in cfg.condition:
            raise UserError(f"this run is not class-conditional (condition={cfg.condition}); drop --category")
        if args.category not in data["categories"]:
            raise UserError(f"unknown category {args.category!r}; the run knows: {', '.join(data['categories'])}")
        category = data["categories"].index(args.category)
    elif "category" in cfg.condition:
        raise UserError(f"this run is class-conditional: give --category (one of {', '.join(data['categories'])})")

    # Everything the user gave is checked before anything is sampled or written.
    views = [prepare_photo(p, size=data["image_size"][0], fill=data["view_fill"]) for p in image_paths]
    diffusion = dataclasses.replace(cfg.diffusion, **{k: v for k, v in (
        ("sampler", args.sampler), ("sampling_steps", args.steps), ("guidance_scale", args.guidance)) if v is not None})
    if args.sampler == "ddpm" and args.steps is None:
        diffusion.sampling_steps = None
    diffusion.hierarchy = with_t_start(diffusion.hierarchy, args.t_start)
    num_points = args.points or cfg.data.num_points
    if args.points and diffusion.cascade is not None and args.points != cfg.data.num_points:
        raise UserError(f"a cascade generates {cfg.data.num_points} points; --points applies to single-stage runs")
    stages = build(diffusion, cfg.data.num_points)
    if diffusion.cascade is None:
        fewest = max((level.num_centers for level in nets[0].config.down), default=1)
        if num_points < fewest:
            raise UserError(f"--points {num_points}: this run's network needs at least {fewest} points per shape")
        stages = [dataclasses.replace(stages[0], num_points=num_points)]
    if diffusion.guidance_scale != 1.0 and cfg.condition == "none":
        raise UserError("guidance needs a conditional run")
    fixed = None
    if args.partial:
        if len(stages) > 1:
            raise UserError("shape completion (--partial) needs a single-stage run")
        pts, _ = load_points(args.partial)
        if not np.isfinite(pts).all():
            raise UserError(f"{args.partial}: some partial points are NaN or infinite")
        if args.partial_frame == "original":
            norm = data["normalization"]
            if norm["normalization"] != "pointflow":
                raise UserError("--partial-frame original needs a run with pointflow normalisation")
            pts = (pts - np.asarray(norm["mean"])) / norm["std"]
        if len(pts) >= num_points:
            raise UserError(f"{args.partial}: {len(pts)} partial points leave none of the {num_points} to generate")
        fixed = torch.as_tensor(pts, dtype=torch.float32)

    if views:
        per = args.num or 1
        jobs = [(name if per == 1 else f"{name}-{j}", i) for i, name in enumerate(unique_names(image_paths)) for j in range(per)]
    else:
        prefix = args.category or ("completion" if fixed is not None else "sample")
        jobs = [(f"{prefix}-{j:04d}", None) for j in range(args.num or 1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    clouds, seconds = [], []
    bar = tqdm(total=len(jobs), unit="shape", disable=None)
    with torch.no_grad():
        for start in range(0, len(jobs), args.batch):
            chunk = jobs[start : start + args.batch]
            b = len(chunk)
            fields = {"category": torch.full((b,), category, dtype=torch.long, device=device)} if category is not None else {}
            conds = []
            for net in nets:
                if net.config.condition is None:
                    conds.append(None)
                elif views:
                    images = torch.stack([torch.from_numpy(views[i]) for _, i in chunk]).to(device)
                    conds.append(net.condition(images=images, **fields))
                else:
                    conds.append(Condition(**fields))
            tic = time.perf_counter()
            x = sample_stages(stages, nets, conds, b, generator=generator, device=device,
                              fixed=None if fixed is None else fixed.to(device).expand(b, -1, -1),
                              progress=None)
            seconds.append((time.perf_counter() - tic) / b)
            clouds.append(x.float().cpu().numpy())
            bar.update(b)
    bar.close()
    samples = np.concatenate(clouds)

    written, panels = [], []
    for (name, i), points in zip(jobs, samples):
        save_points(out / f"{name}.ply", points)
        save_points(out / f"{name}.npy", points)
        mesh, no_mesh = None, None
        try:
            mesh = mesh_from_points(points)
        except UserError as e:
            no_mesh = "no mesh"
            print(f"warning: {name}: no mesh ({e})", file=sys.stderr)
        if args.mesh and mesh is not None:
            save_mesh(mesh, out / f"{name}.{args.mesh}")
        panel = preview(name, points, None if i is None else np.moveaxis(views[i], 0, -1), mesh, no_mesh)
        save_png(out / f"{name}.png", panel)
        if len(panels) < PREVIEW_ROWS:
            panels.append(panel)
        written.append(name)
    save_png(out / "previews.png", stack_rows(panels))
    with atomic_path(out / "samples.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, samples.astype(np.float32))
    info = {"checkpoint": run["checkpoint"], "step": run["step"], "sampler": diffusion.sampler,
            "steps": diffusion.sampling_steps, "guidance_scale": diffusion.guidance_scale, "seed": args.seed,
            "frame": "normalized", "normalization": data["normalization"], "shapes": written,
            "inputs": [str(p) for p in image_paths], "seconds_per_shape": float(np.mean(seconds)), "device": str(device)}
    with atomic_path(out / "info.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    print(f"{len(written)} shape(s) in {out}/ ({', '.join(written[:3])}{', ...' if len(written) > 3 else ''}): "
          f".ply .npy .png{' .' + args.mesh if args.mesh else ''}; all in samples.npy; "
          f"{np.mean(seconds):.2f} s per shape on {device}")
    return 0


if __name__ == "__main__":
    run_command(main)
