"""How well a dataset file's points agree with its rendered views through the stored cameras.

    python tests/benchmarks/silhouette_check.py data/synth.h5 [--limit 200]

For every (shape, view): the IoU between the pixels the shape's points project into and the
pixels with alpha > 0. Prints mean and minimum per category. A camera-convention error
(mirrored azimuth, wrong distance or focal) drops the IoU far below 0.75.
"""

from __future__ import annotations

import argparse

import numpy as np

from pvd.data.cameras import project
from pvd.data.hdf5 import open_dataset_file
from pvd.errors import UserError, run_command


def view_ious(points: np.ndarray, images: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """(V,) IoU per view for points (N, 3), images (V, H, W, 4), cameras (V, 3, 3) / (V, 4, 4)."""
    uv, _ = project(points[None].astype(np.float64), intrinsics.astype(np.float64), extrinsics.astype(np.float64))
    h, w = images.shape[1:3]
    cols, rows = np.floor(uv[..., 0]).astype(int), np.floor(uv[..., 1]).astype(int)
    ious = []
    for v in range(len(images)):
        ok = (cols[v] >= 0) & (cols[v] < w) & (rows[v] >= 0) & (rows[v] < h)
        hit = np.zeros((h, w), bool)
        hit[rows[v][ok], cols[v][ok]] = True
        mask = images[v, ..., 3] > 0
        ious.append((hit & mask).sum() / max((hit | mask).sum(), 1))
    return np.array(ious)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--limit", type=int, default=None, help="shapes per category (default: all)")
    args = parser.parse_args()
    with open_dataset_file(args.path) as f:
        if "images" not in f:
            raise UserError(f"{args.path} has no images")
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["category_names"]]
        category = f["category"][:]
        print(f"{args.path}: {f.attrs['num_shapes']} shapes, {f.attrs['num_views']} views at {'x'.join(str(int(s)) for s in f.attrs['image_size'])}")
        print("| category | shapes | views | mean IoU | min IoU |\n|---|---:|---:|---:|---:|")
        everything = []
        for c, name in enumerate(names):
            rows = np.flatnonzero(category == c)[: args.limit]
            ious = np.concatenate([view_ious(f["points"][r], f["images"][r], f["cameras/intrinsics"][r], f["cameras/extrinsics"][r]) for r in rows])
            everything.append(ious)
            print(f"| {name} | {len(rows)} | {len(ious)} | {ious.mean():.3f} | {ious.min():.3f} |")
        ious = np.concatenate(everything)
        print(f"| all | | {len(ious)} | {ious.mean():.3f} | {ious.min():.3f} |")


if __name__ == "__main__":
    run_command(main)
