"""Training-read throughput of a pvd HDF5 file through a DataLoader.

    python tests/benchmarks/read_throughput.py data/synth.h5 [--workers 2] [--batch-size 16]

Each sample is what training reads: 2048 of the first 10000 points with replacement and one
random RGBA view with its camera. Prints one table row per worker count.
"""

from __future__ import annotations

import argparse
import time

import torch

from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.errors import run_command


def measure(dataset: ShapeDataset, workers: int, batch_size: int, seconds: float) -> tuple[float, int]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True)
    epoch, samples, start = 0, 0, None
    while True:
        dataset.set_epoch(epoch)
        for batch in loader:
            if start is None:  # the first batch pays for starting the workers
                start = time.perf_counter()
                continue
            samples += len(batch["points"])
            if time.perf_counter() - start >= seconds:
                return samples / (time.perf_counter() - start), samples
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    dataset = ShapeDataset(DatasetConfig(path=args.path), "train")
    print(f"{args.path}: {len(dataset)} training shapes, {torch.get_num_threads()} torch threads")
    print("| workers | samples/s | samples read |\n|---:|---:|---:|")
    for workers in args.workers:
        rate, count = measure(dataset, workers, args.batch_size, args.seconds)
        print(f"| {workers} | {rate:,.0f} | {count} |")


if __name__ == "__main__":
    run_command(main)
