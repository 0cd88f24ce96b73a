"""The benchmark's text outputs: results.md (tables), results.csv (one row per method and shape)
and the conventions record written into both results.json and results.md."""

from __future__ import annotations

import io
import math
from typing import Any

from pvd.bench.common import (BOOTSTRAP, COLLAPSED, EMD_POINTS, EXPLODED, FLAGS, MESH_SAMPLES, METHOD_TITLES, METRICS,
                              TABLE_METRICS, minutes)
from pvd.bench.data import Data
from pvd.bench.semantic import FLOOR
from pvd.metrics import (CHAMFER_CONVENTIONS, EMD_CONVENTION, F_SCORE_CONVENTION, IOU_CONVENTION,
                         NORMAL_CONSISTENCY_CONVENTION)
from pvd.metrics.bootstrap import convention as bootstrap_convention


def num(value: Any, spec: str = ".3f") -> str:
    """A number in a table cell; "-" for a missing or non-finite one."""
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def fmt(value: Any, key: str, digits: int = 3) -> str:
    """A metric's value at its table scale (METRICS); "-" for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * METRICS[key][2]:.{digits}f}"


def fmt_ci(ci: dict[str, Any] | None, key: str) -> str:
    """"mean [low, high]" of a bootstrap interval at the metric's table scale."""
    if not ci:
        return "-"
    return f"{fmt(ci['mean'], key)} [{fmt(ci['low'], key)}, {fmt(ci['high'], key)}]"


def metric_header(key: str) -> str:
    """A metric's column title: name, scale and which direction is better."""
    title, better, scale = METRICS[key]
    unit = f" (x10^{-round(math.log10(scale))})" if scale != 1 else ""
    return f"{title}{unit} {'↓' if better == 'low' else '↑'}"


def markdown(result: dict[str, Any]) -> str:
    """results.md from the results.json record."""
    q, cost, s = result["quality"], result["cost"], result["settings"]
    L: list[str] = []
    add = L.append
    add("# Benchmark: native 3D diffusion vs SDS lifting vs retrieval")
    add("")
    add(f"{s['shapes']} {s['split']} shapes of `{s['data']}` ({', '.join(s['categories'])}), input view {s['view']}, "
        f"outputs reduced to K = {s['points']} points, world frame; SDS on the first {s['sds_shapes']}. "
        f"Machine: {result['machine']}. Command: `{result['command']}`")
    add("")
    add("Conventions: " + "; ".join(f"**{k}**: {v}" for k, v in result["conventions"].items()))
    add("")
    add("## Quality (mean over shapes [95% bootstrap interval])")
    add("")
    add("| method | shapes | " + " | ".join(metric_header(k) for k in TABLE_METRICS) + " | empty / exploded / collapsed |")
    add("|---|---:|" + "---:|" * len(TABLE_METRICS) + "---|")
    for m, summary in q["methods"].items():
        f = summary["failures"]
        add(f"| {METHOD_TITLES.get(m, m)} | {summary['shapes']} | " +
            " | ".join(fmt_ci(summary["mean"].get(k), k) for k in TABLE_METRICS) +
            f" | {f['empty']} / {f['exploded']} / {f['collapsed']} |")
    add("")
    if q["differences"]:
        add("## Differences (paired bootstrap, 95%): first method minus second, on the shapes both have")
        add("")
        add("| comparison | metric | shapes | difference [95% CI] | verdict |")
        add("|---|---|---:|---|---|")
        for d in q["differences"]:
            key = d["metric"]
            pair = f"{METHOD_TITLES.get(d['a'], d['a'])} - {METHOD_TITLES.get(d['b'], d['b'])}"
            add(f"| {pair} | {metric_header(key)} | {d['n']} | "
                f"{fmt(d['mean'], key, 4)} [{fmt(d['low'], key, 4)}, {fmt(d['high'], key, 4)}] | {d['verdict']} |")
        add("")
    if q.get("ablation"):
        a = q["ablation"]
        add("## Ablation: the PVD run against a second run that differs in one thing")
        add("")
        add("| | " + " | ".join(metric_header(k) for k in ("cd", "emd", "f1", "f2", "iou", "thin_r2")) +
            " | s/shape (batch 1) | network evaluations | training |")
        add("|---|" + "---:|" * 9)
        for m in ("pvd", "ablation"):
            c = cost.get("methods", {}).get(m, {})
            add(f"| {METHOD_TITLES[m]} ({a['runs'][m]}) | " +
                " | ".join(fmt_ci(q["methods"][m]["mean"].get(k), k) for k in ("cd", "emd", "f1", "f2", "iou", "thin_r2")) +
                f" | {num(c.get('seconds_per_shape_batch1'))} | {num(c.get('network_evaluations_per_shape'), 'g')} | "
                f"{minutes(cost.get('training', {}).get(a['train_step'].get(m), {}).get('seconds'))} |")
        add("")
    if q.get("distribution"):
        add("## Distribution metrics against the same test shapes (K points, world frame)")
        add("")
        keys = [k for k in ("MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD", "COV-EMD", "1-NNA-EMD", "P-FID", "P-KID")
                if any(k in v for v in q["distribution"].values())]
        units = {"MMD-CD": " (x10^-3)", "MMD-EMD": " (x10^-2)", "COV-CD": " (%)", "COV-EMD": " (%)", "1-NNA-CD": " (%)",
                 "1-NNA-EMD": " (%)"}
        add("| method | shapes | " + " | ".join(k + units.get(k, "") for k in keys) + " |")
        add("|---|---:|" + "---:|" * len(keys))
        for m, d in q["distribution"].items():
            cells = []
            for k in keys:
                v = d.get(k)
                if v is None:
                    cells.append("-")
                elif k == "MMD-CD":
                    cells.append(f"{v * 1e3:.3f}")
                elif k == "MMD-EMD":
                    cells.append(f"{v * 1e2:.3f}")
                elif k[:3] in ("COV", "1-N"):
                    cells.append(f"{100 * v:.1f}")
                else:
                    cells.append(f"{v:.4g}")
            add(f"| {METHOD_TITLES.get(m, m)} | {d['num_samples']} | " + " | ".join(cells) + " |")
        add("")
    if q.get("semantic"):
        add(semantic_table(q["semantic"]))
    add("## Per category (means)")
    add("")
    cats = sorted({c for v in q["per_category"].values() for c in v})
    for key in ("cd", "f1", "thin_r2"):
        add(f"{metric_header(key)}:")
        add("")
        add("| method | " + " | ".join(cats) + " |")
        add("|---|" + "---:|" * len(cats))
        for m, v in q["per_category"].items():
            add(f"| {METHOD_TITLES.get(m, m)} | " + " | ".join(fmt(v.get(c, {}).get(key), key) for c in cats) + " |")
        add("")
    add("## Failure analysis")
    add("")
    lifting = q.get("lifting_flags") or {}
    add("| method | shapes | empty | exploded | collapsed | no mesh | recall@2% (all) | thin recall@2% |" +
        (" Janus | floaters |" if lifting else ""))
    add("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if lifting else ""))
    for m, summary in q["methods"].items():
        f = summary["failures"]
        extra = ""
        if lifting:
            extra = f" {lifting[m]['janus']} | {lifting[m]['floaters']} |" if m in lifting else " - | - |"
        add(f"| {METHOD_TITLES.get(m, m)} | {summary['shapes']} | {f['empty']} | {f['exploded']} | {f['collapsed']} | "
            f"{f['no_mesh']} | {fmt_ci(summary['mean'].get('r2'), 'r2')} | "
            f"{fmt_ci(summary['mean'].get('thin_r2'), 'thin_r2')} |" + extra)
    add("")
    add("Worst five shapes by CD (worst.png):")
    add("")
    for m, names in q["worst"].items():
        add(f"- {METHOD_TITLES.get(m, m)}: " + ", ".join(names))
    add("")
    add("## Cost (same run, same machine)")
    add("")
    add("| method | s/shape at batch 1 | best throughput (shapes/s @ batch) | network evaluations / shape | peak memory (MB) |")
    add("|---|---:|---:|---:|---:|")
    for m, c in cost.get("methods", {}).items():
        thr = f"{c['best_shapes_per_s']:.2f} @ {c['best_batch']}" if c.get("best_shapes_per_s") else "-"
        add(f"| {METHOD_TITLES.get(m, m)} | {num(c.get('seconds_per_shape_batch1'))} | {thr} | "
            f"{num(c.get('network_evaluations_per_shape'), 'g')} | {num(c.get('peak_memory_mb_batch1'), '.0f')} |")
    if cost.get("latency_ratio_sds_over_pvd"):
        add("")
        add(f"SDS / PVD latency ratio (batch 1): **{cost['latency_ratio_sds_over_pvd']:.1f}x** (target: at least 100x).")
    add("")
    add(f"Peak memory: {cost.get('memory_note', '')}")
    add("")
    for title, key, xname in (("Quality vs sampler steps", "steps", "steps"), ("Quality vs guidance", "guidance", "guidance")):
        curve = q["curves"].get(key)
        if not curve:
            continue
        add(f"## {title} ({curve[0]['shapes']} shapes; {key}.png)")
        add("")
        add("| sampler | steps | guidance | " + metric_header("cd") + " | " + metric_header("f1") + " | " + metric_header("f2") +
            " | s/shape (batch " + str(s["batch"]) + ") | network evaluations |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        timing = cost.get("curves", {}).get(key, {})
        for p in curve:
            t = timing.get(p["label"], {})
            add(f"| {p['sampler']} | {p['steps']} | {p['guidance']:g} | {fmt_ci(p['cd'], 'cd')} | {fmt_ci(p['f1'], 'f1')} | "
                f"{fmt_ci(p['f2'], 'f2')} | {num(t.get('seconds_per_shape'))} | {num(t.get('calls_per_shape'), '.0f')} |")
        add("")
    if cost.get("training"):
        add("## Training (bench.py train)")
        add("")
        add("| step | minutes | command |")
        add("|---|---:|---|")
        for name, t in cost["training"].items():
            add(f"| {name} | {t['seconds'] / 60:.1f} | `{t['command']}` |")
        add("")
    add(f"Wall time of this benchmark run: {cost['wall_seconds'] / 60:.1f} min (cached shapes are not recomputed).")
    return "\n".join(L) + "\n"


def semantic_table(semantic: dict[str, Any]) -> str:
    """The semantic-alignment section: R-precision and render KID per method, ceiling and floor marked."""
    def pct(ci: dict[str, Any]) -> str:
        return f"{100 * ci['mean']:.1f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"

    roles = {"truth-resample": " (ceiling)", FLOOR: " (floor)"}
    L = [f"## Semantic alignment (held-out views; N = {semantic['candidates']} candidates, "
         f"embedder `{semantic['conventions']['embedder']}`)", "",
         "| method | shapes | R-precision top-1 (%) ↑ | top-5 (%) ↑ | category (%) ↑ | render KID ↓ (± SE) | "
         "render FID (biased extra) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m, r in semantic["methods"].items():
        kid = "-" if r["kid"] is None else f"{r['kid']:.4f} ± {r['kid_se']:.4f}"
        L.append(f"| {METHOD_TITLES.get(m, m)}{roles.get(m, '')} | {r['shapes']} | {pct(r['top1'])} | {pct(r['top5'])} | "
                 f"{pct(r['category'])} | {kid} | {num(r.get('fid_extra'), '.3g')} |")
    L += ["", "R-precision: " + semantic["conventions"]["r_precision"] + ". Render KID: " +
          semantic["conventions"]["render_kid"] + ". Render FID: " + semantic["conventions"]["render_fid"] + ".", ""]
    return "\n".join(L)


CSV_COLUMNS = ["method", "name", "row", "category", *METRICS, *FLAGS, "points", "extent_ratio"]


def csv_text(records: dict[str, dict[str, dict[str, Any]]]) -> str:
    """results.csv: one row per method and shape (records: method -> name -> per-shape record)."""
    out = io.StringIO()
    out.write(",".join(CSV_COLUMNS) + "\n")
    for m, recs in records.items():
        for r in recs.values():
            cells = []
            for c in CSV_COLUMNS:
                v = r.get(c)
                if v is None:
                    cells.append("")
                elif isinstance(v, bool):
                    cells.append(str(v).lower())
                else:
                    cells.append(f"{v:.9g}" if isinstance(v, float) else str(v))
            out.write(",".join(cells) + "\n")
    return out.getvalue()


def conventions_record(data: Data, k: int) -> dict[str, str]:
    """Every definition the numbers depend on (written into results.json and results.md)."""
    return {
        "frame": "the dataset's world frame (PVD samples de-normalised with the run's statistics)",
        "points": f"each output reduced to K = {k} points by a seeded random subset; ground truth: the held-out "
                  f"slice points[{data.info.num_train_points}:][:{data.ref_points}]",
        "CD": f"squared: {CHAMFER_CONVENTIONS['squared']}; against all {data.ref_points} truth points",
        "EMD": f"{EMD_CONVENTION}, exact; the first {min(EMD_POINTS, k)} of the K output points against the truth's "
               f"first {min(EMD_POINTS, k)} (per shape and in the distribution metrics)",
        "F-score": f"{F_SCORE_CONVENTION}; thresholds 1% and 2% of the truth's bounding-box diagonal (full cloud)",
        "IoU": f"{IOU_CONVENTION}; 32^3, K points each",
        "thin recall": "fraction of truth points in parts flagged part_thin within 2% of the diagonal of the output",
        "mesh": f"{MESH_SAMPLES} samples of the output's surface (PVD and the regressor: pvd.meshing.mesh_from_points of the K points; "
                "SDS: its marching-cubes mesh; retrieval, oracle, truth-resample: the stored surface of their shape) "
                f"vs the truth's points and normals; normal consistency: {NORMAL_CONSISTENCY_CONVENTION}",
        "failures": f"empty: no output (scored as one point at the truth's box centre, F/IoU/recall 0); exploded: "
                    f"box diagonal > {EXPLODED}x the truth's or non-finite points; collapsed: < {COLLAPSED}x",
        "intervals": bootstrap_convention(**BOOTSTRAP),
        "distribution": "MMD/COV/1-NNA (pvd.metrics.distribution_metrics, PointFlow's definitions) and P-FID of each "
                        "method's K-point outputs against the same shapes' first K truth points, world frame",
        "latency": "batch 1, the recommended sampler, meshing excluded, median after a warm-up",
    }
