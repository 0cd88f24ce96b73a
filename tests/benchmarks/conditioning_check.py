"""Does the image condition steer the samples? Chamfer distance to a sample's own ground truth
against that to a random other shape of another category and of the same category.

    python tests/benchmarks/conditioning_check.py runs/quickstart [--num 100] [--split val]

For each of the first ``--num`` shapes of the split, one sample from its fixed evaluation view
(``data.eval_view``) with the run's sampler; it wins against a distractor when its Chamfer
distance (squared, the run's normalised frame) to its own ground truth is lower. Distractors
are drawn with a fixed seed: one random shape of another category and one of the same
category. Chance is 50% for both rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.checkpoint import load_run  # noqa: E402

from pvd.data.dataset import ShapeDataset  # noqa: E402
from pvd.diffusion import build  # noqa: E402
from pvd.diffusion.cascade import sample_stages  # noqa: E402
from pvd.diffusion.hierarchy import with_t_start  # noqa: E402
from pvd.metrics import chamfer_distance, f_score  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--split", default="val")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--t-start", type=float, default=None, help="hierarchy runs: the refinement's start (fraction of T)")
    p.add_argument("--raw-weights", action="store_true", help="the raw weights instead of the EMA")
    args = p.parse_args()

    run, cfg, nets = load_run(args.run, torch.device("cpu"), raw=args.raw_weights)
    data = ShapeDataset(cfg.data, args.split, train=False)
    count = min(args.num, len(data))
    batch = torch.utils.data.default_collate([data[i] for i in range(count)])
    diffusion = dataclasses.replace(cfg.diffusion, **{k: v for k, v in (
        ("sampler", args.sampler), ("sampling_steps", args.steps), ("guidance_scale", args.guidance)) if v is not None})
    diffusion.hierarchy = with_t_start(diffusion.hierarchy, args.t_start)
    stages = build(diffusion, cfg.data.num_points)
    gen = torch.Generator().manual_seed(args.seed)
    samples, tic = [], time.perf_counter()
    with torch.no_grad():
        for s in range(0, count, args.batch):
            part = {k: v[s : s + args.batch] for k, v in batch.items()}
            fields = {"category": part["category"]} if "category" in cfg.condition else {}
            conds = [net.condition(images=part["image"], **fields) if "image" in cfg.condition else None for net in nets]
            samples.append(sample_stages(stages, nets, conds, len(part["points"]), generator=gen))
    seconds = (time.perf_counter() - tic) / count
    samples = torch.cat(samples)
    truth = batch["points"]
    category = batch["category"].numpy()
    rng = np.random.default_rng(args.seed)
    other = np.array([rng.choice(np.flatnonzero(category != c)) for c in category])
    same = np.array([rng.choice(np.flatnonzero((category == c) & (np.arange(count) != i))) for i, c in enumerate(category)])
    own_cd = chamfer_distance(samples, truth)
    other_cd = chamfer_distance(samples, truth[other])
    same_cd = chamfer_distance(samples, truth[same])
    diag = (truth.amax(1) - truth.amin(1)).norm(dim=-1)
    f1 = torch.stack([f_score(a[None], b[None], 0.01 * float(d))[0] for a, b, d in zip(samples, truth, diag)])
    print(f"run {run['checkpoint']} (step {run['step']}), {count} {args.split} shapes, view {cfg.data.eval_view}, "
          f"sampler {diffusion.sampler} {diffusion.sampling_steps or ''} guidance {diffusion.guidance_scale}, "
          f"{seconds:.2f} s/shape")
    print("| distractor | win rate | CD own | CD distractor |")
    print("|---|---|---|---|")
    for name, cd in (("other category", other_cd), ("same category", same_cd)):
        print(f"| {name} | {float((own_cd < cd).float().mean()):.0%} | {float(own_cd.mean()):.4f} | {float(cd.mean()):.4f} |")
    names = run["dataset"]["categories"]
    for c in np.unique(category):
        m = torch.from_numpy(category == c)
        print(f"  {names[c]:>10}: own CD {float(own_cd[m].mean()):.4f}, same-category win {float((own_cd[m] < same_cd[m]).float().mean()):.0%}, "
              f"F@1% {float(f1[m].mean()):.3f}")


if __name__ == "__main__":
    main()
