"""Choose the lifting configuration on val: SDS with each representation, with and without the
normal terms (or any other configurations), the same shapes and input view, one table.

    python tests/benchmarks/lifting_ablation.py --prior runs/prior-v2 --num 6 --out outputs/lifting-ablation \\
        --config voxel: --config voxel+normals:orientation_weight=1,normal_smooth_weight=1 \\
        --config nerf:representation.kind=nerf --config points:representation.kind=points

Each ``--config NAME:KEY=VALUE,...`` (DistillConfig overrides; after a ``|`` the method and any
other ``python -m pvd.sds`` options, e.g. ``mv:|multiview --init blob`` or ``old:|sds --prior
runs/prior-v1``, the last --prior winning) runs ``python -m pvd.sds`` into OUT/NAME (finished shapes are skipped on a
rerun) and the table gives per configuration: mean CD (x10^-3) and F@1% with their paired
difference to the first configuration (95% bootstrap), seconds and prior evaluations per shape,
peak memory, and the failure flags. Prints the machine's fp32 matmul rate beside the times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.metrics.bootstrap import paired_bootstrap_ci  # noqa: E402
from val_sweep import matmul_rate  # noqa: E402  (tests/benchmarks/ is the script's folder)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prior", required=True)
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--split", default="val")
    p.add_argument("--num", type=int, default=6)
    p.add_argument("--view", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", action="append", required=True, metavar="NAME:KEY=VALUE,...[|METHOD]")
    p.add_argument("--out", default="outputs/lifting-ablation")
    args = p.parse_args()
    rate = matmul_rate()
    rows = []
    for spec in args.config:
        name, _, rest = spec.partition(":")
        overrides, _, tail = rest.partition("|")
        method, *extra = tail.split() or ["sds"]
        cmd = [sys.executable, "-m", "pvd.sds", "--method", method, "--prior", args.prior, "--data", args.data,
               "--split", args.split, "--num", str(args.num), "--view", str(args.view), "--threads", str(args.threads),
               "--out", str(Path(args.out) / name), *extra]
        if overrides:
            cmd += ["--set", *overrides.split(",")]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        summary = json.loads((Path(args.out) / name / "summary.json").read_text())
        rows.append((name, {r["name"]: r for r in summary["records"]}, summary))
    base_name, base, _ = rows[0]
    print(f"\n{args.num} {args.split} shapes, view {args.view}; fp32 2048^2 matmul {rate:.0f} GFLOP/s here "
          f"(the Xeon reference ~380), {args.threads} threads")
    print("| config | CD x1e-3 | F@1% | d CD vs first | d F@1% vs first | s/shape | prior evals | peak MB | "
          "Janus | floaters | empty |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for name, recs, summary in rows:
        shared = [n for n in base if n in recs]
        cd = [recs[n].get("cd", np.inf) for n in shared]
        f1 = [recs[n].get("f1", 0.0) for n in shared]
        if name == base_name:
            dcd = df1 = "-"
        else:
            a = paired_bootstrap_ci([c * 1e3 for c in cd], [base[n].get("cd", np.inf) * 1e3 for n in shared])
            b = paired_bootstrap_ci(f1, [base[n].get("f1", 0.0) for n in shared])
            dcd = f"{a.mean:+.2f} [{a.low:+.2f}, {a.high:+.2f}]"
            df1 = f"{b.mean:+.3f} [{b.low:+.3f}, {b.high:+.3f}]"
        flags = summary["failures"]
        print(f"| {name} | {np.mean(cd) * 1e3:.2f} | {np.mean(f1):.3f} | {dcd} | {df1} | "
              f"{np.mean([recs[n]['seconds'] for n in shared]):.0f} | "
              f"{np.mean([recs[n]['prior_evaluations'] for n in shared]):.0f} | "
              f"{max(recs[n]['peak_memory_mb'] for n in shared):.0f} | {flags['janus']} | {flags['floaters']} | {flags['empty']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
