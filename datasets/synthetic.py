"""Generate the built-in procedural ShapeNet-like dataset into one HDF5 file.

    python datasets/synthetic.py --out data/synth.h5 [--per-category 200] [--views 8]
        [--resolution 64] [--points 15000] [--seed 0] [--categories airplane,chair] [--workers 2]

The same options give the same file. The schema is described in datasets/README.md.
"""

from __future__ import annotations

import argparse
import os
import time

from pvd.data.synthetic.categories import CATEGORIES
from pvd.data.synthetic.writer import SyntheticConfig, write_synthetic_dataset
from pvd.errors import run_command


def main() -> None:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output HDF5 file")
    parser.add_argument("--per-category", type=int, default=defaults.per_category, help="shapes per category")
    parser.add_argument("--views", type=int, default=defaults.views, help="rendered views per shape")
    parser.add_argument("--resolution", type=int, default=defaults.resolution, help="image side in pixels")
    parser.add_argument("--points", type=int, default=defaults.num_points, help="surface samples per shape")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated subset of: " + ", ".join(CATEGORIES))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes generating shapes")
    args = parser.parse_args()
    config = SyntheticConfig(
        per_category=args.per_category,
        views=args.views,
        resolution=args.resolution,
        num_points=args.points,
        seed=args.seed,
        categories=tuple(c.strip() for c in args.categories.split(",") if c.strip()),
    )
    start = time.perf_counter()
    count = write_synthetic_dataset(args.out, config, workers=args.workers)
    print(f"wrote {count} shapes ({len(config.categories)} categories x {config.per_category}, "
          f"{config.views} views at {config.resolution}x{config.resolution}) to {args.out} "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    run_command(main)
