"""Quality against training time on the val split: the hierarchy and the single stage at several
budgets (each budget its own run), with the stand-alone regressor and retrieval with its encoder
as horizontal lines. Prints a table and writes the figure the README shows.

    python tests/benchmarks/training_curve.py --num 50 \\
        --hierarchy runs/curve-h100 runs/curve-h200 runs/curve-h400 runs/quickstart \\
        --single runs/curve-s100 runs/curve-s200 runs/curve-s400 runs/quickstart-single \\
        --single-setting ddim:50:2 --regressor runs/reg-grid4 \\
        --out tests/benchmarks/figures/training_curve.png

Each run is sampled at its arm's setting (SAMPLER:STEPS:GUIDANCE[:T_START], as val_sweep.py;
the hierarchy's default is each run's own sampler). Training time is the run's own, summed from
its stats.jsonl (training steps only, validation excluded), plus its stage 0 (the stand-alone
regressor it trained first or started from, ``init_encoder``) as that regressor recorded it, in
minutes on this machine; the figure's title gives the machine's fp32 matmul rate so it can be
scaled to another.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from val_sweep import matmul_rate, regressor_rows, sample_setting, scores  # noqa: E402

from pvd.checkpoint import load_run  # noqa: E402
from pvd.data.dataset import ShapeDataset  # noqa: E402
from pvd.regressor import load_regressor  # noqa: E402


def training_seconds(run_dir: str | Path, batch_size: int) -> float:
    """The run's training time: each logged window's steps x batch / its samples per second."""
    seconds, previous = 0.0, 0
    for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "samples_per_s" in entry:
            seconds += (entry["step"] - previous) * batch_size / entry["samples_per_s"]
            previous = entry["step"]
    return seconds


def stage0_seconds(run_dir: str | Path, cfg, measured: float | None = None) -> float:
    """Training time of the stand-alone regressor the run depends on (0 if none); ``measured``
    replaces the time it recorded (when other jobs slowed that training: say so beside the figure)."""
    folder = cfg.init_encoder or (Path(run_dir) / "encoder" if cfg.encoder_pretrain else None)
    if folder is None:
        return 0.0
    if measured is not None:
        return measured
    seconds = load_regressor(folder, torch.device("cpu"))[1].get("train_seconds")
    if seconds is None:
        raise SystemExit(f"error: {folder} does not record its training time; the curve would undercount {run_dir}")
    return float(seconds)


def score_run(run_dir: str, setting: str | None, count: int, seed: int, reference=None, stage0: float | None = None) -> dict:
    """Steps, training minutes, mean CD x 1e-3 and F@1% of one run on the first ``count`` val shapes."""
    run, cfg, nets = load_run(run_dir, torch.device("cpu"))
    data = ShapeDataset(cfg.data, "val", train=False)
    batch = torch.utils.data.default_collate([data[i] for i in range(min(count, len(data)))])
    if reference is not None and not torch.equal(reference["points"], batch["points"]):
        raise SystemExit(f"error: {run_dir} scores other val points than the first run (another data file or frame)")
    if setting is None:
        d = cfg.diffusion
        start = None if d.hierarchy is None else d.hierarchy.t_start
        setting = f"{d.sampler}:{d.sampling_steps}:{d.guidance_scale:g}" + ("" if start is None else f":{start:g}")
    with torch.no_grad():
        samples, passes, _ = sample_setting(cfg, nets, batch["image"], setting, 25, seed)
    cd, f1 = scores(samples, batch["points"])
    return {"run": run_dir, "step": run["step"], "minutes": (training_seconds(run_dir, cfg.batch_size) + stage0_seconds(run_dir, cfg, stage0)) / 60,
            "setting": setting, "passes": passes, "cd": float(cd.mean()), "f1": float(f1.mean()),
            "data": data, "batch": batch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hierarchy", nargs="+", required=True, help="hierarchy runs, one per budget")
    p.add_argument("--single", nargs="*", default=[], help="single-stage runs, one per budget")
    p.add_argument("--hierarchy-setting", help="SAMPLER:STEPS:GUIDANCE[:T_START] (default: each run's own)")
    p.add_argument("--single-setting", default="ddim:50:2")
    p.add_argument("--regressor", help="a stand-alone regressor run: its line, and retrieval with its encoder")
    p.add_argument("--num", type=int, default=50)
    p.add_argument("--stage0-seconds", type=float, help="stage 0's uncontended training time, replacing what it recorded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="tests/benchmarks/figures/training_curve.png")
    args = p.parse_args()

    rate = matmul_rate()
    arms = {"hierarchy": [], "single stage": []}
    reference = None
    for arm, runs, setting in (("hierarchy", args.hierarchy, args.hierarchy_setting),
                               ("single stage", args.single, args.single_setting)):
        for run_dir in runs:
            row = score_run(run_dir, setting, args.num, args.seed, reference, args.stage0_seconds)
            reference = reference or row["batch"]
            arms[arm].append(row)
            print(f"{arm:<13} {run_dir:<32} step {row['step']:5d} {row['minutes']:6.1f} min  {row['setting']:<16} "
                  f"CD {row['cd']:7.2f}  F@1% {row['f1']:.3f}", flush=True)
    lines = []
    if args.regressor:
        first = arms["hierarchy"][0]
        seconds = args.stage0_seconds or load_regressor(args.regressor, torch.device("cpu"))[1].get("train_seconds")
        trained = "" if seconds is None else f" (trained {seconds / 60:.1f} min)"
        with torch.no_grad():
            for (name, cd, f1, _, _), label in zip(regressor_rows(args.regressor, first["data"], first["batch"]),
                                                    ("stage 0 regressor alone", "retrieval with its encoder")):
                lines.append((label + trained, float(cd.mean()), float(f1.mean())))
                print(f"{lines[-1][0]:<47} CD {lines[-1][1]:7.2f}  F@1% {lines[-1][2]:.3f}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "cd", "Chamfer distance (x1e-3, normalised) ↓"), (axes[1], "f1", "F@1% ↑")):
        for (arm, rows), marker in zip(arms.items(), ("o-", "s--")):
            if rows:
                rows = sorted(rows, key=lambda r: r["minutes"])
                ax.plot([r["minutes"] for r in rows], [r[key] for r in rows], marker, label=arm)
        for (name, cd, f1), style in zip(lines, (":", "-.")):
            ax.axhline(cd if key == "cd" else f1, color="grey", linestyle=style, label=name)
        ax.set_xlabel("training time incl. stage 0 (min, this machine)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{args.num} val shapes, 2048 points; fp32 matmul {rate:.0f} GFLOP/s here (the Xeon reference ~380)",
                 fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
