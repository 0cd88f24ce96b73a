"""Does the SDS prior see round corners? Mask IoU of its novel views against the true ones.

    python tests/benchmarks/sds_prior_check.py runs/sds-prior [--data data/synth.h5] [--split val] [--num 100]

For each of the first ``--num`` shapes of the split, view 0 is the input and views 1..k
(``--views`` k) the targets: the prior samples each target from the input view and the
relative camera (DDIM, ``--steps`` 50, guidance ``--guidance`` 3), and its alpha, thresholded
at 0.5, is compared with the true target's mask at the prior's resolution. The baseline copies
the input view (the IoU of the input's mask with the target's). Acceptance: prior IoU >=
baseline + 0.15. ``--grid PNG`` also saves input | truth | sample rows for the first targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd import checkpoint  # noqa: E402
from pvd.data.render import image_grid, save_png  # noqa: E402
from pvd.errors import UserError  # noqa: E402
from pvd.sds.train_prior import read_views  # noqa: E402
from pvd.sds.view_prior import TrainedViewPrior, sample_views  # noqa: E402

MARGIN = 0.15  # issue 18's bar (it was 0.05 for the first prior)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (B,) of boolean masks (B, H, W); 1 where both are empty."""
    inter, union = (a & b).flatten(1).sum(1), (a | b).flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a prior run directory or checkpoint")
    p.add_argument("--data", default=None, help="default: the run's training data")
    p.add_argument("--split", default="val")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--views", type=int, default=3, help="targets per shape: views 1..k")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="sample under bf16 autocast (2x faster on CPUs with AMX)")
    p.add_argument("--grid", default=None, help="save a PNG of input | truth | sample for the first 8 targets")
    args = p.parse_args()

    prior = TrainedViewPrior.load(args.run)
    views = read_views(args.data or prior.config.data, args.split, prior.image_size)
    count, num_views = min(args.num, len(views.rows)), views.images.shape[1]
    if not 1 <= args.views < num_views:
        raise UserError(f"--views must lie in 1..{num_views - 1}")
    shape = np.repeat(np.arange(count), args.views)
    dst = np.tile(np.arange(1, args.views + 1), count)
    src = np.zeros_like(dst)
    inputs, truth, camera = views.images[shape, src], views.images[shape, dst], views.camera(shape, src, dst)

    gen = torch.Generator().manual_seed(args.seed)
    samples, tic = [], time.perf_counter()
    for s in range(0, len(shape), args.batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            samples.append(sample_views(prior, inputs[s : s + args.batch], camera[s : s + args.batch],
                                        steps=args.steps, guidance=args.guidance, generator=gen).float())
    seconds = time.perf_counter() - tic
    samples = torch.cat(samples)

    def mask(x: torch.Tensor) -> torch.Tensor:  # alpha > 0.5 in [0, 1] units is > 0 in [-1, 1]
        return x[:, 3] > 0

    prior = float(mask_iou(mask(samples), mask(truth)).mean())
    copy = float(mask_iou(mask(inputs), mask(truth)).mean())
    print(f"prior {checkpoint.resolve(args.run)}, {count} {args.split} shapes x {args.views} target views "
          f"= {len(shape)} novel views, DDIM {args.steps}, guidance {args.guidance}{', bf16' if args.bf16 else ''}, {seconds / len(shape):.2f} s/view")
    print(f"mask IoU: prior {prior:.4f}, copy-input baseline {copy:.4f}, difference {prior - copy:+.4f} "
          f"({'PASS' if prior >= copy + MARGIN else 'FAIL'}: needs >= +{MARGIN})")
    if args.grid:
        tiles = [((x[:3].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()  # RGB on white
                 for i in range(min(8, len(shape))) for x in (inputs[i], truth[i], samples[i])]
        save_png(args.grid, image_grid(tiles, columns=3))
    return 0


if __name__ == "__main__":
    from pvd.errors import run_command
    run_command(main)
