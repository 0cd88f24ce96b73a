"""Seconds per shape of each sampler: DDPM-1000 (PVD's), DDIM-50 and the high-order solvers.

    python tests/benchmarks/sampling_speed.py --ckpt runs/quickstart
    python tests/benchmarks/sampling_speed.py --preset pvd-paper --points 2048 --ddpm-timed 20

Batch 1 (the latency a user waits for one shape) and --batch B (throughput), with the run's
condition (its first val image for image runs) and guidance 1, in one process so the ratios
are comparable. ``--ddpm-timed K`` times only K of DDPM's 1000 steps and scales up (every
DDPM step costs one network call, like every other step); the table says when it did.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.checkpoint import load_run  # noqa: E402

from pvd.data.dataset import ShapeDataset  # noqa: E402
from pvd.diffusion import DiffusionConfig, build  # noqa: E402
from pvd.diffusion.cascade import sample_stages  # noqa: E402
from pvd.nn import PVDUNet, preset  # noqa: E402
from pvd.runtime import reexec_with_malloc_settings  # noqa: E402

SAMPLERS = [("ddpm", None), ("ddim", 50), ("dpm++2m", 25), ("heun", 25)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="a trained run (default: an untrained --preset network)")
    p.add_argument("--preset", default="pvd-paper")
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ddpm-timed", type=int, default=1000, help="DDPM steps actually run (the rest extrapolated)")
    args = p.parse_args()
    reexec_with_malloc_settings()
    torch.manual_seed(0)
    if args.ckpt:
        run, cfg, nets = load_run(args.ckpt, torch.device("cpu"), raw=False)
        base, points, label = cfg.diffusion, cfg.data.num_points, f"{args.ckpt} ({cfg.model})"
        val = ShapeDataset(cfg.data, "val", train=False)
        item = val[0]
        fields = {"category": item["category"][None]} if "category" in cfg.condition else {}

        def conds(b):
            return [n.condition(images=item["image"][None].expand(b, -1, -1, -1), **{k: v.expand(b) for k, v in fields.items()})
                    if "image" in cfg.condition else None for n in nets]
    else:
        nets = [PVDUNet(preset(args.preset)).eval()]
        base, points, label = DiffusionConfig(), args.points, f"untrained {args.preset}"

        def conds(b):
            return [None]
    print(f"{label}, {points} points, {torch.get_num_threads()} threads")
    print("| sampler | steps | network calls | s/shape (batch 1) | s/shape (batch %d) |" % args.batch)
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for name, steps in SAMPLERS:
            dcfg = DiffusionConfig(**{**base.__dict__, "sampler": name, "sampling_steps": steps})
            stages = build(dcfg, points)
            calls = [0]

            def counted(net):
                def f(x, t, c):
                    calls[0] += 1
                    return net(x, t, c)
                return f
            models = [counted(n) for n in nets]
            row = []
            for b in (1, args.batch):
                scale = 1.0
                if name == "ddpm" and args.ddpm_timed < dcfg.num_steps:
                    # Run K steps of the same cost by stopping the loop through the progress hook.
                    scale = dcfg.num_steps / args.ddpm_timed

                    def stop(i, n, *rest):
                        if i >= args.ddpm_timed:
                            raise StopIteration
                else:
                    stop = None
                calls[0] = 0
                tic = time.perf_counter()
                try:
                    sample_stages(stages, models, conds(b), b, generator=torch.Generator().manual_seed(0),
                                  progress=None if stop is None else (lambda k, i, n: stop(i, n)))
                except StopIteration:
                    pass
                row.append((time.perf_counter() - tic) * scale / b)
                n_calls = round(calls[0] * scale)
            note = f" (timed {args.ddpm_timed}, scaled)" if name == "ddpm" and scale != 1.0 else ""
            print(f"| {name} | {steps or dcfg.num_steps}{note} | {n_calls} | {row[0]:.2f} | {row[1]:.2f} |")


if __name__ == "__main__":
    main()
