"""How fine can Magic3D's fine stage get at the prior's resolution? The fine stage run with an
oracle in place of the prior: each iteration's novel view is fitted to the truth's silhouette
(rendered from the stored mesh at 64 px, area-downsampled like the input view), at each
rendering size asked. Same start meshes (the coarse fields of an SDS run, --coarse-from), same
cameras, iterations, Laplacian and normal terms as the default fine stage; only the SDS term is
replaced. If F@1% gains at 64 px but not at 32 px, 32 px views cannot steer a surface to 1%.

    python tests/benchmarks/refine_resolution.py --coarse-from outputs/val-sds --num 6 --sizes 32 64

Prints per size: mean CD (x10^-3) and F@1% / F@2% of the start and refined meshes, the paired
refined - start differences (95% bootstrap), seconds per shape, and the machine's matmul rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.data.cameras import orbit_extrinsics  # noqa: E402
from pvd.data.hdf5 import read_mesh  # noqa: E402
from pvd.data.render import render_mesh  # noqa: E402
from pvd.metrics.bootstrap import paired_bootstrap_ci  # noqa: E402
from pvd.metrics.distances import f_score  # noqa: E402
from pvd.sds import magic3d as M  # noqa: E402
from pvd.sds.__main__ import dataset_jobs  # noqa: E402
from pvd.sds.distill import load_result  # noqa: E402
from pvd.sds.methods import method_config  # noqa: E402
from pvd.sds.prior import to_prior_image  # noqa: E402
from pvd.sds.volume import sample_surface_points  # noqa: E402
from val_sweep import matmul_rate  # noqa: E402  (tests/benchmarks/ is the script's folder)


def truth_silhouettes(vertices: np.ndarray, faces: np.ndarray, render_size: int):
    """cameras, size -> (B, 1, size, size) the truth's antialiased silhouettes in [0, 1]."""
    def targets(cams, size):
        views = []
        for c in cams:
            k = c.tensors(render_size)[0][0].numpy()
            views.append(render_mesh(vertices, faces, k, orbit_extrinsics(c.azimuth, c.elevation, c.distance),
                                     render_size, render_size, supersample=4))
        return (to_prior_image(np.stack(views), size)[:, 3:] + 1) / 2
    return targets


def f_at(points: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    return float(f_score(torch.from_numpy(points)[None].float(), torch.from_numpy(truth)[None].float(), threshold))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--coarse-from", required=True, help="an SDS run's folder (NAME.field.pt, grid, default settings)")
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--split", default="val")
    p.add_argument("--num", type=int, default=6)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rate = matmul_rate()
    cfg, rcfg = method_config("magic3d", []), M.RefineConfig()
    jobs = dataset_jobs(argparse.Namespace(data=args.data, split=args.split, num=args.num, view=0))
    rows: dict[int, list[dict]] = {s: [] for s in args.sizes}
    with h5py.File(args.data, "r") as f:
        meshes = {job["name"]: read_mesh(f, job["row"]) for job in jobs}
    render_size = int(jobs[0]["image"].shape[0])
    for job in jobs:
        coarse, _ = load_result(Path(args.coarse_from) / f"{job['name']}.field.pt", cfg, job["camera"])
        mesh = M.coarse_mesh(coarse.field, cfg.surface_opacity, rcfg.mesh_resolution, rcfg.largest_piece)
        if mesh is None:
            print(f"{job['name']}: no coarse surface, skipped")
            continue
        with torch.no_grad():
            colors = coarse.field.query(torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32))[1].numpy()
        truth = job["ground_truth"]
        start = sample_surface_points(mesh, cfg.num_points, seed=cfg.seed)
        f1_start, f2_start = f_at(start, truth, 0.01), f_at(start, truth, 0.02)  # the same for every size
        for size in args.sizes:
            tic = time.perf_counter()
            refined, history, _, _ = M.refine(None, np.asarray(job["image"]), job["camera"], mesh, colors, cfg, rcfg,
                                              ground_truth=truth, novel_targets=truth_silhouettes(*meshes[job["name"]], render_size),
                                              size=size)
            end = sample_surface_points(refined, cfg.num_points, seed=cfg.seed)
            rows[size].append({"name": job["name"], "seconds": time.perf_counter() - tic,
                               "cd0": history[0]["cd"], "cd1": history[-1]["cd"],
                               "f1_0": f1_start, "f1_1": f_at(end, truth, 0.01),
                               "f2_0": f2_start, "f2_1": f_at(end, truth, 0.02)})
            r = rows[size][-1]
            print(f"{job['name']} {size}px: CD {1e3 * r['cd0']:.2f} -> {1e3 * r['cd1']:.2f}, F@1% {r['f1_0']:.3f} -> "
                  f"{r['f1_1']:.3f}, F@2% {r['f2_0']:.3f} -> {r['f2_1']:.3f}, {r['seconds']:.0f} s", flush=True)
    print(f"\noracle fine stage (truth silhouettes in place of SDS), {args.split} shapes from {args.coarse_from}, "
          f"{rcfg.iterations} iterations; fp32 2048^2 matmul {rate:.0f} GFLOP/s here (the Xeon reference ~380), "
          f"{args.threads} threads")
    print("| size | shapes | CD start -> refined (x1e-3) | d CD | F@1% start -> refined | d F@1% | d F@2% | s/shape |")
    print("|---:|---:|---|---|---|---|---|---:|")
    for size, rs in rows.items():
        if not rs:
            continue
        col = {k: np.array([r[k] for r in rs]) for k in rs[0] if k != "name"}

        def diff(a: str, b: str, scale: float = 1.0, fmt: str = "+.3f") -> str:
            ci = paired_bootstrap_ci(col[b] * scale, col[a] * scale)
            return f"{ci.mean:{fmt}} [{ci.low:{fmt}}, {ci.high:{fmt}}]"

        print(f"| {size} | {len(rs)} | {1e3 * col['cd0'].mean():.2f} -> {1e3 * col['cd1'].mean():.2f} | "
              f"{diff('cd0', 'cd1', 1e3, '+.2f')} | {col['f1_0'].mean():.3f} -> {col['f1_1'].mean():.3f} | "
              f"{diff('f1_0', 'f1_1')} | {diff('f2_0', 'f2_1')} | {col['seconds'].mean():.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
