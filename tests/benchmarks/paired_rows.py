"""Paired differences between method rows of different bench runs (e.g. SDS with another
representation, scored by a second bench run on the same shapes): the first row minus each other,
on the shapes both have, with the bench's own metrics and bootstrap (pvd.bench.aggregates).

    python tests/benchmarks/paired_rows.py "SDS points=outputs/bench-test-points/metrics/sds" \\
        "SDS voxel=outputs/bench-test-lift2/metrics/sds" "PVD=outputs/bench-test-lift2/metrics/pvd"

Each argument is LABEL=FOLDER, the folder a bench run's OUT/metrics/METHOD (one JSON per shape).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.bench.aggregates import differences  # noqa: E402
from pvd.bench.common import DIFF_METRICS  # noqa: E402


def read_rows(folder: Path) -> dict[str, dict]:
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not records:
        raise SystemExit(f"error: no per-shape records (*.json) in {folder}")
    return records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rows", nargs="+", metavar="LABEL=FOLDER")
    args = p.parse_args()
    rows = {}
    for spec in args.rows:
        label, sep, folder = spec.partition("=")
        if not sep or not label:
            raise SystemExit(f"error: expected LABEL=FOLDER, got {spec!r}")
        rows[label] = read_rows(Path(folder))
    base = next(iter(rows))
    diffs = differences(rows, base)
    print(f"| {base} minus | shapes | " + " | ".join(f"d {k}" for k in DIFF_METRICS) + " |")
    print("|---|---:|" + "---|" * len(DIFF_METRICS))
    scale = {"cd": 1e3}  # CD in units of 1e-3, as the bench's tables
    for other in list(rows)[1:]:
        shared = sum(n in rows[other] for n in rows[base])
        cells = {d["metric"]: d for d in diffs if d["b"] == other}
        text = [f"{cells[k]['mean'] * scale.get(k, 1):+.3f} [{cells[k]['low'] * scale.get(k, 1):+.3f}, "
                f"{cells[k]['high'] * scale.get(k, 1):+.3f}]" if k in cells else "-" for k in DIFF_METRICS]
        print(f"| {other} | {shared} | " + " | ".join(text) + " |")
    print("(CD in units of 1e-3; 95% paired bootstrap intervals)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
