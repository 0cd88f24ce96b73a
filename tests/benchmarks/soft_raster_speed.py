"""The soft rasteriser's cost (pvd.sds.soft_raster.rasterize, forward + backward) as the mesh
grows, with SoftRas' coverage cut-off (the default eps = 1e-4: only the (pixel, face) pairs
inside each face's grown screen box) and without it (eps = 0: every pixel with every face, what
the first, dense version computed). The views are Magic3D's fine stage's: the input view and
one novel view at the prior's 32 px, plus three more to show the batching.

    python tests/benchmarks/soft_raster_speed.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.data.cameras import orbit_extrinsics  # noqa: E402
from pvd.sds import soft_raster  # noqa: E402
from val_sweep import matmul_rate  # noqa: E402  (tests/benchmarks/ is the script's folder)


def time_once(vertices, faces, colors, k, e, size, eps) -> float:
    v = vertices.clone().requires_grad_(True)
    tic = time.perf_counter()
    out = soft_raster.rasterize(v, faces, colors, k, e, size, size, eps=eps)
    (out["rgb"].square().sum() + out["alpha"].sum()).backward()
    return time.perf_counter() - tic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--dense-max-faces", type=int, default=1500, help="skip eps = 0 above this many faces (slow)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rate = matmul_rate()
    s = args.size
    k = torch.tensor([[35.0 * s / 32, 0, s / 2], [0, 35.0 * s / 32, s / 2], [0, 0, 1]])
    print(f"fp32 2048^2 matmul {rate:.0f} GFLOP/s here (the Xeon reference ~380), {args.threads} threads; "
          f"{s} px, forward + backward, median of {args.repeats}")
    print("| faces | views | eps 1e-4 (s) | eps 0, every pair (s) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for subdivisions in (2, 3, 4, 5):
        sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.4)
        vertices = torch.tensor(sphere.vertices + rng.normal(0, 0.005, sphere.vertices.shape), dtype=torch.float32)
        faces = torch.tensor(np.asarray(sphere.faces))
        colors = torch.rand(len(vertices), 3, generator=torch.Generator().manual_seed(0))
        for views in (2, 5):
            e = torch.stack([torch.tensor(orbit_extrinsics(72.0 * i, 20.0, 1.4), dtype=torch.float32) for i in range(views)])
            kk = k.expand(views, 3, 3)
            sparse = np.median([time_once(vertices, faces, colors, kk, e, s, 1e-4) for _ in range(args.repeats)])
            if len(faces) <= args.dense_max_faces:
                dense = np.median([time_once(vertices, faces, colors, kk, e, s, 0.0) for _ in range(args.repeats)])
                tail = f"{dense:.3f} | {dense / sparse:.0f}x"
            else:
                tail = "- | -"
            print(f"| {len(faces)} | {views} | {sparse:.3f} | {tail} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
