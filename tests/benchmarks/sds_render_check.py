"""Does the SDS baseline's volume renderer see shapes as the dataset's cameras do?

    python tests/benchmarks/sds_render_check.py [--data data/synth.h5] [--split test] [--num 50]
        [--resolution 64] [--voxelizer mesh|points]

Each of the first ``--num`` shapes of the split is voxelised (``mesh``: 4x supersampled solid
fractions of the stored mesh; ``points``: the stored surface points, filled), loaded with
:meth:`VoxelField.from_occupancy` and rendered by :func:`pvd.sds.volume.render` through the
STORED cameras of every view at the stored image size. Alpha > 0.5 is compared with the stored
silhouette (image alpha > 127). Prints the mean IoU, per-category means, the worst shapes and
the time per rendered view (forward only, and forward + backward at 32x32 and 64x64 on a
fresh field, as the distillation loop uses it). A camera-convention error (mirrored axes,
half-pixel offset, wrong focal) drops the IoU far below the 0.9 it must reach.

Re-executes itself with glibc's malloc told to keep freed memory (pvd.runtime).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pvd.runtime import reexec_with_malloc_settings

THRESHOLD = 0.9


def time_render(torch, render, field, intrinsics, extrinsics, size: int, backward: bool, repeats: int) -> float:
    """Median milliseconds of one render of one view (plus its backward pass when asked)."""
    times = []
    for _ in range(repeats + 1):  # the first one warms up
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = render(field, intrinsics, extrinsics, size, size)
            if backward:
                (out["rgb"].mean() + out["alpha"].mean()).backward()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synth.h5")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--num", type=int, default=50, help="shapes, the split's first")
    parser.add_argument("--resolution", type=int, default=64, help="voxel grid cells per side")
    parser.add_argument("--voxelizer", default="mesh", choices=["mesh", "points"])
    parser.add_argument("--level", type=float, default=None, help="VoxelField.from_occupancy's level (default: its own)")
    parser.add_argument("--samples", type=int, default=64, help="samples per ray")
    parser.add_argument("--repeats", type=int, default=10, help="timed renders per timing row")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on 2 shared cores a second thread made every small op wait, ~10x slower)")
    args = parser.parse_args()
    reexec_with_malloc_settings()

    import torch

    torch.set_num_threads(args.threads)
    from pvd.data.hdf5 import SPLITS, open_dataset_file, read_mesh
    from pvd.errors import UserError
    from pvd.sds.volume import (FieldConfig, VoxelField, occupancy_from_mesh, occupancy_from_points, render,
                                scale_intrinsics)

    bound = FieldConfig().bound
    level = {} if args.level is None else {"level": args.level}
    rows_out = []  # (category, model_id, mean IoU over views)
    render_seconds, views = 0.0, 0
    with open_dataset_file(args.data) as f:
        if "images" not in f or (args.voxelizer == "mesh" and "mesh" not in f):
            raise UserError(f"{args.data} needs images{' and meshes' if args.voxelizer == 'mesh' else ''}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["category_names"]]
        rows = np.flatnonzero(f["split"][:] == SPLITS.index(args.split))[: args.num]
        if not len(rows):
            raise UserError(f"{args.data} has no {args.split} shapes")
        category, model_id = f["category"][:], f["model_id"]
        for row in rows:
            if args.voxelizer == "mesh":
                occupancy = occupancy_from_mesh(*read_mesh(f, row), args.resolution, bound)
            else:
                occupancy = occupancy_from_points(f["points"][row], args.resolution, bound)
            field = VoxelField.from_occupancy(occupancy, bound, **level)
            silhouettes = f["images"][row][..., 3] > 127  # (V, H, W)
            h, w = silhouettes.shape[1:]
            start = time.perf_counter()
            with torch.no_grad():
                alpha = render(field, torch.from_numpy(f["cameras/intrinsics"][row]),
                               torch.from_numpy(f["cameras/extrinsics"][row]), h, w, num_samples=args.samples)["alpha"]
            render_seconds += time.perf_counter() - start
            views += len(silhouettes)
            mask = alpha[:, 0].numpy() > 0.5
            ious = (mask & silhouettes).sum((1, 2)) / np.maximum((mask | silhouettes).sum((1, 2)), 1)
            name = model_id[row]
            rows_out.append((names[category[row]], name.decode() if isinstance(name, bytes) else str(name), float(ious.mean())))
        intrinsics = torch.from_numpy(f["cameras/intrinsics"][rows[0], :1])
        extrinsics = torch.from_numpy(f["cameras/extrinsics"][rows[0], :1])

    print(f"{args.data} [{args.split}]: {len(rows_out)} shapes x {views // len(rows_out)} views at {h}x{w}; "
          f"{args.voxelizer} occupancy at {args.resolution}^3, {args.samples} samples per ray, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| category | shapes | mean IoU | min IoU |\n|---|---:|---:|---:|")
    for name in names:
        values = [iou for cat, _, iou in rows_out if cat == name]
        if values:
            print(f"| {name} | {len(values)} | {np.mean(values):.3f} | {np.min(values):.3f} |")
    mean = float(np.mean([iou for _, _, iou in rows_out]))
    print(f"| all | {len(rows_out)} | {mean:.3f} | {min(iou for _, _, iou in rows_out):.3f} |")
    print("worst shapes: " + ", ".join(f"{m} ({c}) {iou:.3f}" for c, m, iou in sorted(rows_out, key=lambda r: r[2])[:5]))
    print(f"check renders: {1000 * render_seconds / views:.1f} ms per {h}x{w} view (no grad, views batched per shape)")

    # The distillation loop's use: one view per iteration on a fresh 64^3 field, with backward.
    field = VoxelField(FieldConfig())
    print(f"| one view, {FieldConfig().resolution}^3 field, 64 samples | forward ms | forward + backward ms |\n|---|---:|---:|")
    for size in (32, 64):
        k = scale_intrinsics(intrinsics, size / w)
        fwd = time_render(torch, render, field, k, extrinsics, size, False, args.repeats)
        both = time_render(torch, render, field, k, extrinsics, size, True, args.repeats)
        print(f"| {size}x{size} | {fwd:.1f} | {both:.1f} |")
    print(f"mean IoU {mean:.3f} {'>=' if mean >= THRESHOLD else '<'} {THRESHOLD}: {'PASS' if mean >= THRESHOLD else 'FAIL'}")
    return 0 if mean >= THRESHOLD else 1


if __name__ == "__main__":
    from pvd.errors import run_command

    run_command(main)
