"""Do the prior's edits of a coarse mesh's renders move its outline towards the truth? Per shape,
the coarse mesh of an SDS run (its saved fields, ``--coarse-from``) is rendered from random novel
cameras on the training orbit, each render is edited by the prior (SDEdit: noised to a strength,
denoised by guided DDIM, ``pvd.sds.view_prior.edit_views``), and the silhouettes' mask IoU with
the truth's own silhouettes is compared: the renders, their edits at each strength, and fresh
samples from noise (the multi-view route's views). What the fine stage's ``mode=sdedit`` fits.

    python tests/benchmarks/sdedit_check.py --coarse-from outputs/val-sds --num 6 --views 8

DDIM calls per edit: round(50 x strength) (DDIM-50 over the whole range); guidance as the lifting
default (3). Prints per-shape IoUs, then the means and differences against the renders, paired
per shape (95% bootstrap over shapes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.data.hdf5 import read_mesh  # noqa: E402
from pvd.metrics.bootstrap import paired_bootstrap_ci  # noqa: E402
from pvd.sds import magic3d as M  # noqa: E402
from pvd.sds import soft_raster  # noqa: E402
from pvd.sds.__main__ import dataset_jobs  # noqa: E402
from pvd.sds.distill import camera_pairs, load_result, novel_camera  # noqa: E402
from pvd.sds.methods import method_config  # noqa: E402
from pvd.sds.prior import to_prior_image  # noqa: E402
from pvd.sds.view_prior import TrainedViewPrior, edit_views, sample_views  # noqa: E402
from refine_resolution import truth_silhouettes  # noqa: E402  (tests/benchmarks/ is the script's folder)
from val_sweep import matmul_rate  # noqa: E402


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-view IoU of the masks a > 0.5 and b > 0.5, both (B, 1, S, S) in [0, 1]."""
    a, b = a > 0.5, b > 0.5
    return ((a & b).sum((1, 2, 3)).float() / (a | b).sum((1, 2, 3)).clamp_min(1).float()).numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--coarse-from", required=True, help="an SDS run's folder with saved fields (voxel, the defaults)")
    p.add_argument("--prior", default="runs/prior-v2")
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--split", default="val")
    p.add_argument("--num", type=int, default=6)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.35, 0.5, 0.7])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rate = matmul_rate()
    prior = TrainedViewPrior.load(args.prior)
    size, (cfg, rcfg) = prior.image_size, (method_config("magic3d", ["representation.kind=voxel"]), M.RefineConfig())
    jobs = dataset_jobs(argparse.Namespace(data=args.data, split=args.split, num=args.num, view=0))
    with h5py.File(args.data, "r") as f:
        meshes = {job["name"]: read_mesh(f, job["row"]) for job in jobs}
    host = torch.Generator().manual_seed(5)
    rows: dict[str, list[np.ndarray]] = {}
    for job in jobs:
        coarse, _ = load_result(Path(args.coarse_from) / f"{job['name']}.field.pt", cfg, job["camera"])
        mesh = M.coarse_mesh(coarse.field, cfg.surface_opacity)
        if mesh is None:
            print(f"{job['name']}: no coarse surface, skipped")
            continue
        verts = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)
        with torch.no_grad():
            colors = coarse.field.query(verts)[1]
        cams = [novel_camera(job["camera"], cfg, host) for _ in range(args.views)]
        ks, es = zip(*(c.tensors(size) for c in cams))
        with torch.no_grad():
            out = soft_raster.rasterize(verts, torch.tensor(np.asarray(mesh.faces)), colors, torch.cat(ks), torch.cat(es),
                                        size, size, sigma=rcfg.sigma, gamma=rcfg.gamma)
        renders = torch.cat([out["rgb"], out["alpha"]], 1) * 2 - 1
        truth = truth_silhouettes(*meshes[job["name"]], int(job["image"].shape[0]))(cams, size)
        inputs = to_prior_image(np.asarray(job["image"])[None], size).expand(len(cams), -1, -1, -1)
        pairs = camera_pairs(job["camera"], cams)
        rows.setdefault("renders", []).append(mask_iou(out["alpha"], truth))
        for strength in args.strengths:
            edited = edit_views(prior, renders, inputs, pairs, strength=strength, steps=max(2, round(50 * strength)),
                                guidance=cfg.guidance, generator=torch.Generator().manual_seed(0))
            rows.setdefault(f"edits at {strength}", []).append(mask_iou((edited[:, 3:] + 1) / 2, truth))
        fresh = sample_views(prior, inputs, pairs, steps=50, guidance=cfg.guidance, generator=torch.Generator().manual_seed(0))
        rows.setdefault("fresh samples", []).append(mask_iou((fresh[:, 3:] + 1) / 2, truth))
        print(job["name"], "  ".join(f"{k} {v[-1].mean():.3f}" for k, v in rows.items()), flush=True)
    print(f"\n{len(rows['renders'])} {args.split} shapes x {args.views} novel views, prior {args.prior}, guidance "
          f"{cfg.guidance}; fp32 2048^2 matmul {rate:.0f} GFLOP/s, {args.threads} threads")
    print("| silhouettes | mask IoU with the truth's | minus the renders' |\n|---|---:|---|")
    base = np.array([v.mean() for v in rows["renders"]])  # per shape: a shape's views are not independent
    for name, values in rows.items():
        v = np.array([x.mean() for x in values])
        ci = paired_bootstrap_ci(v, base)
        print(f"| {name} | {v.mean():.3f} | {ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
