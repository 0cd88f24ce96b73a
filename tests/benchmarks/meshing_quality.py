"""Mesh quality of pvd.meshing on the built-in dataset: F-score per category, true vs estimated normals.

For each of the first ``--per-category`` shapes of each category: mesh the 2048 held-out points
``points[:, 10000:12048]`` (with the stored normals, and with estimated ones), sample
``--pred-points`` points of the mesh, and score them with :func:`pvd.metrics.f_score` at 1% of
the bounding-box diagonal against 100k points sampled from the stored mesh (points inside
another convex part of the union are dropped: they are not on the surface). Also reports the
time per mesh.

    python tests/benchmarks/meshing_quality.py [data/synth.h5] [--per-category 50]
"""

import argparse
import time

import numpy as np
import torch
import trimesh

from pvd.data.hdf5 import open_dataset_file, read_mesh
from pvd.errors import UserError
from pvd.meshing import mesh_from_points
from pvd.metrics import f_score


def surface_truth(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to count points on the outer surface of a mesh: samples inside a closed convex part (the
    built-in shapes are unions of them) are dropped; other parts (real meshes) hide nothing."""
    # Split before any vertex merging: parts that touch must stay separate convex pieces.
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    parts = mesh.split(only_watertight=False)
    points, _ = trimesh.sample.sample_surface(mesh, int(count * 1.5), seed=seed)
    hidden = np.zeros(len(points), bool)
    for part in parts:
        if not (part.is_watertight and part.is_convex):
            continue  # the plane test below means "inside" only for a closed convex part
        normals, origins = part.face_normals, part.triangles_center
        if part.volume < 0:
            normals = -normals
        # inside a convex part: behind every face plane, by more than a small tolerance
        depth = np.einsum("fj,nj->nf", normals, points) - (normals * origins).sum(1)
        hidden |= (depth < -1e-5 * mesh.scale).all(1)
    points = points[~hidden]
    return points[np.random.default_rng(seed).permutation(len(points))[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", default="data/synth.h5")
    parser.add_argument("--per-category", type=int, default=50)
    parser.add_argument("--pred-points", type=int, default=10000)
    parser.add_argument("--truth-points", type=int, default=100000)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--normals", choices=["both", "true", "estimated"], default="both")
    args = parser.parse_args()
    modes = ["true", "estimated"] if args.normals == "both" else [args.normals]
    with open_dataset_file(args.data) as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["category_names"]]
        category = f["category"][:]
        print("| category | " + " | ".join(f"F@1% ({m} normals)" for m in modes) + " | s per mesh |")
        print("|---|" + "---|" * len(modes) + "---|")
        means = {m: [] for m in modes}
        for c, name in enumerate(names):
            rows = np.flatnonzero(category == c)[: args.per_category]
            scores = {m: [] for m in modes}
            seconds = []
            for row in rows:
                pts = f["points"][row, 10000:12048].astype(np.float64)
                nrm = f["normals"][row, 10000:12048].astype(np.float64)
                truth = surface_truth(*read_mesh(f, int(row)), args.truth_points, seed=int(row))
                if len(truth) == 0:
                    print(f"skipped row {row}: no sample of its stored mesh lies on the outer surface", flush=True)
                    continue
                lo, hi = truth.min(0), truth.max(0)
                threshold = 0.01 * float(np.linalg.norm(hi - lo))
                for m in modes:
                    t = time.perf_counter()
                    try:
                        mesh = mesh_from_points(pts, nrm if m == "true" else None, resolution=args.resolution)
                    except UserError:
                        scores[m].append(0.0)
                        continue
                    seconds.append(time.perf_counter() - t)
                    pred, _ = trimesh.sample.sample_surface(mesh, args.pred_points, seed=0)
                    scores[m].append(float(f_score(torch.tensor(pred)[None].float(), torch.tensor(truth)[None].float(), threshold)))
            for m in modes:
                means[m].extend(scores[m])
            print(f"| {name} | " + " | ".join(f"{np.mean(scores[m]):.3f}" for m in modes) + f" | {np.mean(seconds):.2f} |",
                  flush=True)
        print("| **mean** | " + " | ".join(f"{np.mean(means[m]):.3f}" for m in modes) + " | |")


if __name__ == "__main__":
    main()
