"""Choose sampler settings on the val split: CD and F@1% of each setting, with paired intervals
against the first one.

    python tests/benchmarks/val_sweep.py runs/quickstart --num 50 \\
        --settings ddim:25:1:0.5 ddim:25:2:0.5 ddim:25:2:0.35 ...

``--save`` keeps every row's per-shape scores; ``--against FILE.npz:ROW`` then compares another
run's rows with that row, paired over the same shapes (an ablation, each arm at its own setting).

A setting is SAMPLER:STEPS:GUIDANCE[:T_START] (T_START: the hierarchy's refinement start, a
fraction of T; omitted: the run's). Every setting samples the first ``--num`` shapes of the split
from their fixed evaluation view with the same seed. Scores are in the run's normalised frame:
Chamfer distance (squared, x 1e-3) and F-score at 1% of each truth's bounding-box diagonal,
against the split's evaluation points (PVD's slice), as train.py's validation scores them.
The regressor row is the encoder's shape head alone (no diffusion), when the run has one;
``--regressors RUN ...`` adds a row for each stand-alone regressor (``python -m pvd.regressor``)
and one for retrieval with its encoder (the training shape whose view embeds nearest, its
points moved into the run's frame), the bars the generator has to clear.
Network passes per shape are counted (a guided step is two). The test split is never the place for this.
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
from pvd.diffusion.hierarchy import HierarchyConfig, with_t_start  # noqa: E402
from pvd.metrics import chamfer_distance, f_score  # noqa: E402
from pvd.metrics.bootstrap import paired_bootstrap_ci  # noqa: E402
from pvd.regressor import load_regressor  # noqa: E402
from pvd.retrieval import embedding_bank, encode_images, retrieve  # noqa: E402


def parse_setting(text: str) -> tuple[str, int, float, float | None]:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"error: a setting is SAMPLER:STEPS:GUIDANCE[:T_START], got {text!r}")
    return parts[0], int(parts[1]), float(parts[2]), float(parts[3]) if len(parts) == 4 else None


def scores(samples: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-shape CD x 1e-3 and F@1% of samples (B, N, 3) against truth (B, M, 3)."""
    diagonal = (truth.amax(1) - truth.amin(1)).norm(dim=-1)
    cd = chamfer_distance(samples, truth).numpy() * 1e3
    f1 = np.array([float(f_score(s[None], g[None], 0.01 * float(d))[0]) for s, g, d in zip(samples, truth, diagonal)])
    return cd, f1


def matmul_rate() -> float:
    """This machine's fp32 2048^2 matmul rate in GFLOP/s, to print beside any time."""
    a = torch.randn(2048, 2048)
    a @ a
    tic = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - tic) / 1e9


def read_saved_row(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(CD, F@1%) per shape of row ROW in FILE.npz, from 'FILE.npz:ROW' (ROW may hold colons)."""
    path, sep, row = spec.partition(".npz:")
    if not sep:
        raise SystemExit(f"error: --against takes FILE.npz:ROW, got {spec!r}")
    saved = np.load(path + ".npz")
    if f"{row}/cd" not in saved:
        raise SystemExit(f"error: {path}.npz has no row {row!r}; it has {sorted({k.split('/')[0] for k in saved})}")
    return saved[f"{row}/cd"], saved[f"{row}/f1"]


class Passes:
    """Counts the clouds a network is run on (a guided call on a doubled batch counts twice)."""

    def __init__(self, net):
        self.net, self.clouds = net, 0

    def __call__(self, x, t, cond):
        self.clouds += len(x)
        return self.net(x, t, cond)


def sample_setting(cfg, nets, images: torch.Tensor, text: str, batch: int, seed: int) -> tuple[torch.Tensor, float, float]:
    """Samples (B, N, 3) of ``images`` (B, 4, H, W) at setting ``text``, network passes per shape, seconds."""
    sampler, steps, guidance, t_start = parse_setting(text)
    diffusion = dataclasses.replace(cfg.diffusion, sampler=sampler, sampling_steps=steps, guidance_scale=guidance,
                                    hierarchy=with_t_start(cfg.diffusion.hierarchy, t_start))
    stages = build(diffusion, cfg.data.num_points)
    gen = torch.Generator().manual_seed(seed)
    counted = [Passes(net) for net in nets]
    parts, tic = [], time.perf_counter()
    for s in range(0, len(images), batch):
        conds = [net.condition(images=images[s : s + batch]) for net in nets]
        parts.append(sample_stages(stages, counted, conds, len(conds[0].image), generator=gen))
    return torch.cat(parts), sum(c.clouds for c in counted) / len(images), time.perf_counter() - tic


def regressor_rows(path: str, data: ShapeDataset, batch: dict, cache_dir: str | None = None) -> list[tuple]:
    """Rows (name, CD, F@1%, 0, 0) of a stand-alone regressor and of retrieval with its encoder,
    scored in ``data``'s frame against ``batch["points"]``."""
    encoder, record = load_regressor(path, torch.device("cpu"))
    frame = data.normalization_info()
    # "split" names the split that asked for the statistics; the frame is the rest
    if any(record["normalization"].get(k) != frame.get(k) for k in ("normalization", "mean", "std", "categories")):
        raise SystemExit(f"error: {path} was trained in another frame than the run")
    truth, name = batch["points"], Path(path).name
    regressed = encoder.predict_shape(encoder(batch["image"])[0])
    cache = None if cache_dir is None else Path(cache_dir) / f"bank-{name}.npz"
    bank = embedding_bank(encoder, data.config.path, "train", cache=cache)
    info = data.info
    answer = retrieve(encode_images(encoder, batch["image"]), bank, data.config.path, start=info.num_train_points,
                      count=data.config.num_points)
    retrieved = (torch.from_numpy(answer.clouds).float() - batch["shift"][:, None]) / batch["scale"][:, None, None]
    return [(f"alone: {name}", *scores(regressed, truth), 0, 0.0),
            (f"retrieval: {name}", *scores(retrieved, truth), 0, 0.0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--settings", nargs="*", default=[])
    p.add_argument("--regressors", nargs="*", default=[],
                   help="stand-alone regressor runs to score beside the run, each also as retrieval's encoder")
    p.add_argument("--cache", default="outputs/val_sweep", help="where retrieval's embedded training views are kept")
    p.add_argument("--num", type=int, default=50)
    p.add_argument("--split", default="val")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--as-refiner", action="store_true",
                   help="sample a single-stage run with a shape head as the hierarchy does (from its regressed cloud "
                        "noised to T_START), though it was trained on every t")
    p.add_argument("--save", help="write every row's per-shape scores to this .npz (for --against)")
    p.add_argument("--against", help="FILE.npz:ROW: paired differences against a row saved by another run's sweep "
                                     "(same split, shapes and seed)")
    args = p.parse_args()
    if args.split == "test":
        raise SystemExit("error: settings are chosen on the val split")
    against = read_saved_row(args.against) if args.against else None

    run, cfg, nets = load_run(args.run, torch.device("cpu"))
    if args.as_refiner:  # a control: a network trained on the whole process, sampled as the hierarchy samples
        if cfg.diffusion.hierarchy is not None or not cfg.shape_input:
            raise SystemExit("error: --as-refiner is for single-stage runs with shape_input=true")
        cfg.diffusion.hierarchy = HierarchyConfig(t_max=1.0)
    data = ShapeDataset(cfg.data, args.split, train=False)
    count = min(args.num, len(data))
    batch = torch.utils.data.default_collate([data[i] for i in range(count)])
    truth = batch["points"]
    rate = matmul_rate()
    print(f"{args.run} (step {run['step']}), {count} {args.split} shapes, {cfg.data.num_points} points; "
          f"fp32 matmul {rate:.0f} GFLOP/s, {torch.get_num_threads()} threads")

    rows = []
    with torch.no_grad():
        if nets[0].encoder is not None and nets[0].encoder.shape_head is not None:
            regressed = nets[0].encoder.predict_shape(nets[0].encoder(batch["image"])[0])
            rows.append(("regressor (no diffusion)", *scores(regressed, truth), 0, 0.0))
        for path in args.regressors:
            rows += regressor_rows(path, data, batch, args.cache)
        for text in args.settings:
            samples, passes, seconds = sample_setting(cfg, nets, batch["image"], text, args.batch, args.seed)
            rows.append((text, *scores(samples, truth), passes, seconds))

    base_cd, base_f1 = next((r for r in rows if r[0] in args.settings), rows[0])[1:3]
    if against is not None:
        base_cd, base_f1 = against
        if len(base_cd) != count:
            raise SystemExit(f"error: {args.against} scored {len(base_cd)} shapes, this sweep {count}")
        print(f"differences against {args.against}: CD {base_cd.mean():.2f}, F@1% {base_f1.mean():.3f}")
    if args.save:
        np.savez(args.save, **{f"{name}/{key}": v for name, cd, f1, _, _ in rows for key, v in (("cd", cd), ("f1", f1))})
    print(f"{'setting':<26} {'CD x1e-3':>9} {'F@1%':>7} {'passes':>6} {'s':>6}   d CD [95% CI]   d F@1% [95% CI]"
          f"   (vs {args.against or 'the first setting'})")
    for name, cd, f1, passes, seconds in rows:
        dcd = paired_bootstrap_ci(cd, base_cd)
        df1 = paired_bootstrap_ci(f1, base_f1)
        print(f"{name:<26} {cd.mean():9.2f} {f1.mean():7.3f} {passes:6.0f} {seconds:6.0f}   "
              f"{dcd.mean:+.2f} [{dcd.low:+.2f}, {dcd.high:+.2f}]   {df1.mean:+.3f} [{df1.low:+.3f}, {df1.high:+.3f}]")


if __name__ == "__main__":
    main()
