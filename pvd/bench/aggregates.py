"""Aggregates over shapes: means with bootstrap intervals, per-category means, paired differences
between methods, and the distribution metrics (MMD / COV / 1-NNA, P-FID) with cached matrices."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pvd.bench.common import BOOTSTRAP, DIFF_METRICS, EMD_POINTS, FLAGS, METHOD_TITLES, METRICS, finite_mean
from pvd.bench.data import Data
from pvd.io import atomic_path
from pvd.metrics import distribution_metrics, pairwise_chamfer, pairwise_emd
from pvd.metrics.bootstrap import bootstrap_mean_ci, paired_bootstrap_ci


def summarize(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means with bootstrap intervals per metric (shapes where it is defined), and failure counts."""
    out: dict[str, Any] = {"shapes": len(records), "mean": {}, "failures": {}}
    for key in METRICS:
        values = [r[key] for r in records.values() if r.get(key) is not None and math.isfinite(r[key])]
        out["mean"][key] = bootstrap_mean_ci(values, **BOOTSTRAP).as_dict() if values else None
    for flag in FLAGS:
        out["failures"][flag] = int(sum(bool(r.get(flag)) for r in records.values()))
    return out


def per_category(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Shape counts and plain means (finite values) of the main metrics per category."""
    cats: dict[str, dict[str, Any]] = {}
    for r in records.values():
        cats.setdefault(r["category"], []).append(r)
    keys = ("cd", "emd", "f1", "f2", "iou", "thin_r2", "mesh_f1")
    return {c: {"shapes": len(rs), **{k: finite_mean([r[k] for r in rs]) for k in keys}}
            for c, rs in sorted(cats.items())}


def differences(all_records: dict[str, dict[str, dict[str, Any]]], base: str) -> list[dict[str, Any]]:
    """Paired bootstrap intervals of base - other on the shapes both have, for every other method."""
    rows = []
    if base not in all_records:
        return rows
    for other in all_records:
        if other == base or other == "truth-resample":  # the ceiling: its gap is in the quality table
            continue
        shared = [n for n in all_records[base] if n in all_records[other]]
        if not shared:
            continue
        for key in DIFF_METRICS:
            a = [all_records[base][n][key] for n in shared]
            b = [all_records[other][n][key] for n in shared]
            ci = paired_bootstrap_ci(a, b, **BOOTSTRAP)
            lower_better = METRICS[key][1] == "low"
            if not ci.excludes(0.0):
                verdict = "no significant difference"
            else:
                better = (ci.mean < 0) == lower_better
                verdict = f"{METHOD_TITLES.get(base, base)} {'better' if better else 'worse'}"
            rows.append({"a": base, "b": other, "metric": key, **ci.as_dict(), "verdict": verdict})
    return rows


def matrix_cache(folder: Path, name: str, arrays: list[np.ndarray], compute: Callable[[], Any]) -> np.ndarray:
    """A pairwise matrix cached under a hash of its inputs."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    path = folder / f"{name}-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    folder.mkdir(parents=True, exist_ok=True)
    m = np.asarray(compute(), dtype=np.float64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, m)
    return m


def distribution(clouds: dict[str, dict[str, np.ndarray]], data: Data, k: int, which: list[str], workers: int | None,
                 classifier: Any, cache: Path) -> dict[str, Any]:
    """MMD/COV/1-NNA (CD and/or EMD) and P-FID of each method's outputs against the same test shapes.

    clouds: method -> name -> (k, 3) world-frame cloud; which: "CD" and/or "EMD"; classifier:
    a pvd.pfid classifier or None (no P-FID)."""
    results: dict[str, Any] = {}
    refs_all = {s.name: s.ref[:k] for s in data.shapes[: data.num]}
    methods = [m for m in clouds if m != "oracle"]
    total = 0
    for m in methods:
        n = len(clouds[m])
        total += sum(n * (n - 1) // 2 * 2 + n * n for _ in which)
    bar = tqdm(total=total, desc="distribution metrics", unit="pair", dynamic_ncols=True, disable=None)
    for m in methods:
        names = list(clouds[m])
        if len(names) < 2:
            continue
        samples = np.stack([clouds[m][n] for n in names])
        refs = np.stack([refs_all[n] for n in names])
        matrices = {}
        for metric in which:
            fn = (lambda x, y=None: pairwise_chamfer(x, y, workers=workers)) if metric == "CD" else \
                 (lambda x, y=None: pairwise_emd(x[:, :EMD_POINTS], None if y is None else y[:, :EMD_POINTS], exact=True,
                                                 workers=workers))
            mats = {}
            for key, (x, y) in {"rr": (refs, None), "rs": (refs, samples), "ss": (samples, None)}.items():
                n = len(x)
                mats[key] = matrix_cache(cache, f"{metric}-{key}", [x] + ([] if y is None else [y]),
                                         lambda x=x, y=y: fn(torch.from_numpy(x), None if y is None else torch.from_numpy(y)))
                bar.update(n * (n - 1) // 2 if y is None else n * len(y))
            matrices[metric] = mats
        result = distribution_metrics(samples, refs, metrics=which, normalization="none", matrices=matrices)
        result.pop("convention")
        if classifier is not None:
            from pvd.pfid import pfid_metrics

            scores = pfid_metrics(classifier, samples, refs)
            scores.pop("convention")
            result.update(scores)
        results[m] = result
    bar.close()
    return results
