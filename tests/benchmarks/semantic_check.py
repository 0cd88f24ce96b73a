"""Does the semantic evaluator measure what it should? On val shapes, with the trained evaluator:

    python tests/benchmarks/semantic_check.py --data data/synth.h5 --embedder data/synth.evaluator --num 100

Rows (each answers every shape; the same held-out cameras, N candidates as in the benchmark):
``truth resampled`` (another sample of the truth: the ceiling), ``truth, other cameras`` (the
truth seen from cameras 45 degrees away from the held-out ones: KID's floor of a view change),
``truth + noise s`` (Gaussian jitter of s x the shape's box diagonal: KID should grow with s),
``same-category other`` (the floor) and ``other category`` (a shape of another category: R-precision
near 1/N). Prints R-precision top-1 / top-5 / category with intervals and KID ± SE, and the
evaluator's own record (val top-1, training seconds), beside this machine's matmul rate.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.bench.data import load_data  # noqa: E402
from pvd.bench.semantic import FLOOR, semantic_quality  # noqa: E402
from pvd.data.hdf5 import FileInfo, open_dataset_file  # noqa: E402
from pvd.semantic.alignment import alignment_scores, build_reference  # noqa: E402
from pvd.semantic.embedder import load_embedder  # noqa: E402
from pvd.data.render import image_grid, save_png  # noqa: E402
from pvd.semantic.views import HELD_OUT_AZIMUTHS, held_out_extrinsics, render_cloud_views  # noqa: E402
from val_sweep import matmul_rate  # noqa: E402

NOISE = (0.005, 0.01, 0.02, 0.04)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--embedder", default=None, help="default: DATA.evaluator")
    p.add_argument("--split", default="val")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--view", type=int, default=0)
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", help="PNG of what the evaluator sees for the first 5 shapes: input view | truth as "
                                    "points from the input camera | held-out views | the same with 0.02 jitter")
    args = p.parse_args()
    rate = matmul_rate()
    embedder = load_embedder(args.embedder or str(Path(args.data).with_suffix(".evaluator")))
    with open_dataset_file(args.data) as f:
        categories = list(FileInfo.read(f).categories)
    data = load_data(args.data, args.split, args.view, categories, args.num, 2048)
    shapes = data.shapes[: data.num]
    rng = np.random.default_rng(args.seed)
    clouds = {"truth-resample": {s.name: s.resample for s in shapes}}
    for sigma in NOISE:
        clouds[f"truth + noise {sigma:g}"] = {s.name: s.resample + rng.normal(scale=sigma * s.diag, size=s.resample.shape)
                                              for s in shapes}
    other = {}
    for i, s in enumerate(shapes):  # the next evaluated shape of another category
        j = next(k % len(shapes) for k in range(i + 1, i + len(shapes)) if shapes[k % len(shapes)].category != s.category)
        other[s.name] = shapes[j].ref
    clouds["other category"] = other
    records = {m: {n: {"empty": False} for n in c} for m, c in clouds.items()}
    q = semantic_quality(embedder, data, clouds, records, args.seed, args.candidates)

    # The truth from other cameras: the same reference, its held-out cameras turned by 45 degrees.
    truths = [s.ref for s in shapes]
    reference = build_reference(embedder, truths, [s.intrinsics for s in shapes], [s.extrinsics for s in shapes],
                                [s.category_index for s in shapes], int(shapes[0].image.shape[0]),
                                num_candidates=min(args.candidates, len(shapes)), seed=args.seed)
    turned = replace(reference, cameras=[held_out_extrinsics(s.extrinsics, tuple(a + 45.0 for a in HELD_OUT_AZIMUTHS))
                                         for s in shapes])
    # alignment_scores renders from the turned cameras and compares with the truth's features from the original ones.
    turned_scores = alignment_scores(embedder, turned, [s.resample for s in shapes], seed=args.seed)

    print(f"{data.num} {args.split} shapes, view {args.view}, N = {q['candidates']} candidates (gallery {q['gallery']}); "
          f"embedder {embedder.name}; fp32 2048^2 matmul {rate:.0f} GFLOP/s here")
    record = getattr(embedder, "record", {})
    if record:
        print(f"evaluator: val top-1 {record.get('val_top1', float('nan')):.3f} among {record.get('val_shapes')} val "
              f"shapes, {record.get('seconds', float('nan')):.0f} s of training, seed {record.get('evaluator', {}).get('seed')}")
    print("| answer | top-1 (%) | top-5 (%) | category (%) | render KID (± SE) |")
    print("|---|---:|---:|---:|---:|")

    def row(label, r):
        cells = [f"{100 * r[k]['mean']:.1f} [{100 * r[k]['low']:.1f}, {100 * r[k]['high']:.1f}]"
                 for k in ("top1", "top5", "category")]
        print(f"| {label} | " + " | ".join(cells) + f" | {r['kid']:.4f} ± {r['kid_se']:.4f} |")

    methods = q["methods"]
    row("truth resampled (ceiling)", methods["truth-resample"])
    row("truth resampled, cameras turned 45 deg", turned_scores)
    for sigma in NOISE:
        row(f"truth + noise {sigma:g} x diagonal", methods[f"truth + noise {sigma:g}"])
    row("same-category other (floor)", methods[FLOOR])
    row("other category", methods["other category"])
    print(f"chance top-1: {100 / q['candidates']:.1f}%")
    if args.figure:
        save_figure(shapes[:5], reference.size, args.seed, args.figure)
    return 0


def save_figure(shapes, size: int, seed: int, path: str) -> None:
    """One row per shape: the dataset's input view, the truth drawn as points from the input camera
    (the candidate the renders must retrieve), the truth from the held-out cameras, and the same
    with Gaussian jitter of 0.02 x the diagonal (R-precision 62% above)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for s in shapes:
        cams = held_out_extrinsics(s.extrinsics)
        noisy = s.resample + rng.normal(scale=0.02 * s.diag, size=s.resample.shape)
        tiles += [s.image, render_cloud_views(s.ref, s.intrinsics, s.extrinsics[None], size, seed=seed)[0],
                  *render_cloud_views(s.resample, s.intrinsics, cams, size, seed=seed),
                  *render_cloud_views(noisy, s.intrinsics, cams, size, seed=seed)]
    save_png(path, image_grid(tiles, columns=2 + 2 * len(HELD_OUT_AZIMUTHS)))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
