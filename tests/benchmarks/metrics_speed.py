"""Speed of the evaluation metrics on 2048-point clouds of a pvd dataset; prints tables.

    python tests/benchmarks/metrics_speed.py data/synth.h5 [--shapes 400] [--emd-pairs 20] [--workers 2]

1. The CD protocol: MMD/COV/1-NNA for --shapes samples against --shapes references
   (M_rr, M_rs, M_ss: R(R-1)/2 + S(S-1)/2 + RS Chamfer pairs), timed end to end, and the
   time extrapolated to 100 vs 100 and 400 vs 400 from the measured cost per pair.
2. EMD per pair on --emd-pairs pairs: the exact assignment (one core, then spread over
   --workers processes) against the auction at two tolerances (one core), with the auction's
   relative error to the exact value; and the exact EMD protocol time extrapolated to
   100 vs 100 and 400 vs 400.

References are the first shapes of the file, samples the next ones (all categories mixed),
each cloud the held-out points [num_train_points:][:2048], PointFlow-normalised.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.errors import UserError, run_command
from pvd.metrics import auction_assignment, distribution_metrics, exact_assignment, pair_count
from pvd.metrics._common import default_workers
from pvd.metrics.matching import _exact_many


def load_clouds(path: str, count: int, num_points: int = 2048) -> np.ndarray:
    dataset = ShapeDataset(DatasetConfig(path=path, num_points=num_points, images=False), "train", train=False)
    # every split's rows: the held-out slice is defined for all of them
    dataset.indices = np.arange(dataset.info.category.size)
    if len(dataset) < count:
        raise UserError(f"{path} has {len(dataset)} shapes; {count} are needed")
    return np.stack([dataset[i]["points"].numpy() for i in range(count)])


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def cd_protocol(clouds: np.ndarray, shapes: int, workers: int) -> None:
    references, samples = torch.from_numpy(clouds[:shapes]), torch.from_numpy(clouds[shapes : 2 * shapes])
    pairs = pair_count(shapes, shapes)
    start = time.perf_counter()
    result = distribution_metrics(samples, references, metrics=["CD"], workers=workers)
    seconds = time.perf_counter() - start
    per_pair = seconds / pairs
    print(f"\n## Chamfer protocol (MMD/COV/1-NNA), {shapes} vs {shapes}, {workers} worker processes\n")
    print("| shapes | pairs | wall time | per pair (wall) | note |\n|---:|---:|---:|---:|---|")
    print(f"| {shapes} vs {shapes} | {pairs:,} | {seconds:.1f} s | {per_pair * 1e3:.3f} ms | measured |")
    for n in (100, 400):
        if n != shapes:
            print(f"| {n} vs {n} | {pair_count(n, n):,} | {minutes(pair_count(n, n) * per_pair)} | | extrapolated |")
    print(f"\n(1-NNA-CD of these two sets: {100 * result['1-NNA-CD']:.1f}%)")


def emd_table(clouds: np.ndarray, num_pairs: int, workers: int) -> None:
    a, b = clouds[:num_pairs].astype(np.float64), clouds[num_pairs : 2 * num_pairs].astype(np.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core numbers for both methods
    start = time.perf_counter()
    exact = np.array([exact_assignment(x, y)[1] for x, y in zip(a, b)])
    exact_serial = (time.perf_counter() - start) / num_pairs
    start = time.perf_counter()
    _exact_many(a, b, [(k, k) for k in range(num_pairs)], workers)
    exact_parallel = (time.perf_counter() - start) / num_pairs
    rows = []
    for tolerance in (0.05, 0.01):
        start = time.perf_counter()
        x, y = torch.from_numpy(a).float(), torch.from_numpy(b).float()
        perm = auction_assignment(x, y, tolerance, max_batch=8)
        seconds = (time.perf_counter() - start) / num_pairs
        matched = np.take_along_axis(b, perm.numpy()[..., None], axis=1)
        value = np.linalg.norm(a - matched, axis=-1).mean(1)
        error = (value - exact) / exact
        rows.append((tolerance, seconds, error))
    torch.set_num_threads(threads)
    print(f"\n## EMD per 2048-point pair ({num_pairs} pairs, mean exact EMD {exact.mean():.4f})\n")
    print("| method | time per pair | relative error to exact: mean / max | guaranteed bound |\n|---|---:|---:|---:|")
    print(f"| exact (scipy linear_sum_assignment), 1 core | {exact_serial:.3f} s | 0 | 0 |")
    print(f"| exact, {workers} processes (wall time / pairs) | {exact_parallel:.3f} s | 0 | 0 |")
    for tolerance, seconds, error in rows:
        print(f"| auction, tolerance {tolerance:g}, 1 core, batches of 8 | {seconds:.3f} s | "
              f"{100 * error.mean():.3f}% / {100 * error.max():.3f}% | {100 * tolerance:g}% |")
    print("\n| EMD protocol (exact) | pairs | extrapolated wall time |\n|---|---:|---:|")
    for n in (100, 400):
        print(f"| {n} vs {n} | {pair_count(n, n):,} | {minutes(pair_count(n, n) * exact_parallel)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--shapes", type=int, default=400, help="samples and references each (CD protocol)")
    parser.add_argument("--emd-pairs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--skip-cd", action="store_true")
    parser.add_argument("--skip-emd", action="store_true")
    args = parser.parse_args()
    clouds = load_clouds(args.path, max(2 * args.shapes * (not args.skip_cd), 2 * args.emd_pairs))
    print(f"{args.path}: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    if not args.skip_cd:
        cd_protocol(clouds, args.shapes, args.workers)
    if not args.skip_emd:
        emd_table(clouds, args.emd_pairs, args.workers)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (above {os.cpu_count()} means others shared the CPUs)")


if __name__ == "__main__":
    run_command(main)
