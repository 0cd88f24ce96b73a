"""What Magic3D's fine stage changes, per stage, from a magic3d run's records (``python -m pvd.sds
--method magic3d ... --out DIR``, or a bench run's OUT/magic3d): the coarse SDS field, the mesh the
fine stage starts from (the coarse field's marching-cubes mesh, pooled or cut to its largest
piece when RefineConfig asks) and the refined mesh, each scored by the lifting command against
the same 2048 truth points; paired 95% bootstrap intervals.

    python tests/benchmarks/magic3d_stages.py outputs/bench-test-lifting/magic3d
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.metrics.bootstrap import paired_bootstrap_ci  # noqa: E402

STAGES = (("coarse SDS field", "coarse"), ("the mesh the fine stage starts from", "mesh_start"), ("refined mesh", ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a magic3d run's folder (holding records/)")
    args = p.parse_args()
    files = sorted(Path(args.run, "records").glob("*.json"))
    records = [json.loads(f.read_text()) for f in files]
    records = [r for r in records if r.get("mesh_start_f1") is not None]  # a coarse stage without surface has no fine stage
    if not records:
        print(f"error: no magic3d records with both stages in {args.run}/records", file=sys.stderr)
        return 2
    def scores(key: str, metric: str) -> np.ndarray:  # per shape; key "" is the refined mesh
        return np.array([r[f"{key}_{metric}" if key else metric] for r in records])

    print(f"{len(records)} shapes of {args.run} ({len(files) - len(records)} without a fine stage)\n")
    print("| stage | CD x1e-3 | F@1% | d CD x1e-3 vs refined | d F@1% vs refined |")
    print("|---|---:|---:|---|---|")
    for title, key in STAGES:
        cd, f1 = scores(key, "cd"), scores(key, "f1")
        row = f"| {title} | {cd.mean() * 1e3:.2f} | {f1.mean():.3f} |"
        if key:
            dcd = paired_bootstrap_ci(scores("", "cd") * 1e3, cd * 1e3)
            df1 = paired_bootstrap_ci(scores("", "f1"), f1)
            row += f" {dcd.mean:+.2f} [{dcd.low:+.2f}, {dcd.high:+.2f}] | {df1.mean:+.3f} [{df1.low:+.3f}, {df1.high:+.3f}] |"
        else:
            row += " - | - |"
        print(row)
    print("\n(d = refined minus the stage: negative CD and positive F@1% mean the refinement helped)")
    fine = np.array([r["seconds"] - r["coarse_seconds"] for r in records])
    print(f"\nper shape: {np.mean([r['seconds'] for r in records]):.0f} s in all, of which the fine stage "
          f"{fine.mean():.0f} s ({fine.min():.0f}-{fine.max():.0f}); {np.mean([r['prior_evaluations'] for r in records]):.0f} "
          f"prior calls; peak {max(r['peak_memory_mb'] for r in records):.0f} MB; Janus on "
          f"{sum(bool(r.get('janus')) for r in records)}, floaters on {sum(bool(r.get('floaters')) for r in records)} "
          f"(the coarse field's flags)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
