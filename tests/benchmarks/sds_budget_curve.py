"""Where does SDS stop improving? Final quality against the iteration budget, on validation shapes.

    python tests/benchmarks/sds_budget_curve.py --prior runs/sds-prior --data data/synth.h5 \\
        --budgets 200 400 800 2000 --num 5 --out outputs/sds-budget

The budget is a property of the whole run, not a point inside one: t_max is annealed over the
run, so iteration k of a 2000-iteration run is not a k-iteration run. Each budget is therefore
its own ``python -m pvd.sds`` run (into OUT/budget-B; a rerun skips finished shapes), and the
final Chamfer distance and F-score are plotted against the budget (OUT/budget.png,
OUT/budget.json). ``--ablation`` adds the reference-view-only optimisation (SDS weight 0) at
the largest budget with ``--eval-every``: it has no schedule, so its in-run curve is its
budget curve. The default ``DistillConfig.iterations`` is the budget where this curve stops
improving (see the README).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from pvd.io import atomic_path  # noqa: E402


def run(args, out: Path, iterations: int, extra: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "pvd.sds", "--data", args.data, "--split", args.split, "--num", str(args.num),
           "--iterations", str(iterations), "--out", str(out), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prior", required=True)
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--split", default="val")
    p.add_argument("--num", type=int, default=5)
    p.add_argument("--budgets", type=int, nargs="+", default=[200, 400, 800, 2000])
    p.add_argument("--ablation", action="store_true", help="also the SDS-weight-0 run with its in-run curve")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="outputs/sds-budget")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for budget in sorted(args.budgets):
        summary = run(args, out / f"budget-{budget}", budget, ["--prior", args.prior])
        mean = summary["mean"]  # empty shapes (CD inf) are left out of the mean CD, counted in failures
        rows.append({"iterations": budget, "cd": mean["cd"], "f1": mean["f1"], "seconds": mean["seconds"],
                     "shapes": summary["shapes"], "empty": summary["failures"]["empty"],
                     "per_shape_cd": [r["cd"] for r in summary["records"]]})
    ablation = []
    if args.ablation:
        recs = run(args, out / "ref-only", max(args.budgets), ["--sds-weight", "0", "--eval-every", "100"])["records"]
        for it in sorted({h["iteration"] for r in recs for h in r["history"]}):
            hs = [h for r in recs for h in r["history"] if h["iteration"] == it]
            ablation.append({"iteration": it, "cd": float(np.nanmean([h["cd"] for h in hs])),
                             "f1": float(np.mean([h["f1"] for h in hs]))})
    with atomic_path(out / "budget.json") as tmp:
        Path(tmp).write_text(json.dumps({"sds": rows, "reference_only": ablation}, indent=1))

    print(f"\n{'budget':>7} {'CD x1e-3':>9} {'F@1%':>6} {'s/shape':>8}")
    for r in rows:
        print(f"{r['iterations']:>7} {r['cd'] * 1e3:>9.2f} {r['f1']:>6.3f} {r['seconds']:>8.1f}")
    if ablation:
        print("reference view only (in-run): " + ", ".join(f"{a['iteration']}: {a['cd'] * 1e3:.2f}" for a in ablation))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, (key, label) in enumerate((("cd", "Chamfer distance (squared)"), ("f1", "F-score @ 1%"))):
        ax[k].plot([r["iterations"] for r in rows], [r[key] for r in rows], marker="o", label="SDS (one run per budget)")
        if ablation:
            ax[k].plot([a["iteration"] for a in ablation], [a[key] for a in ablation], marker=".",
                       label="reference view only")
        ax[k].set(xscale="log", xlabel="iteration budget", ylabel=label)
        ax[k].set_xticks([r["iterations"] for r in rows], [str(r["iterations"]) for r in rows])
        ax[k].minorticks_off()
    ax[0].set_title(f"mean over {args.num} {args.split} shapes")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "budget.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    print(f"wrote {out}/budget.png and budget.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
