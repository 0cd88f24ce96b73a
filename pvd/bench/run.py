"""One benchmark run: load the runs and the test shapes, produce every method's outputs (cached
per shape), score them, sample the quality curves, measure cost, and write the results and
figures into --out."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvd import __version__
from pvd.bench.aggregates import differences, distribution, per_category, summarize
from pvd.bench.baselines import lifting_cost, retrieval_baselines, run_lifting
from pvd.bench.common import (BOOTSTRAP, METHOD_ORDER, file_identity, finite_mean, machine, stable_seed, write_json,
                              write_text)
from pvd.bench.data import Data, Shape, load_data
from pvd.bench.figures import figure_curve, figure_grid, figure_worst
from pvd.bench.model import PVDModel, Spec, chunk_timing, measure_cost, regress, sample_method, shift_scales, to_world
from pvd.bench.report import conventions_record, csv_text, markdown
from pvd.bench.scoring import Surface, mesh_surface, reduce_points, score_method, stored_surface
from pvd.bench.semantic import default_embedder, semantic_quality
from pvd.bench.training import training_log
from pvd.config import apply_overrides, to_dict
from pvd.errors import UserError
from pvd.regressor import load_regressor
from pvd.metrics.bootstrap import bootstrap_mean_ci
from pvd.runtime import pick_device
from pvd.sds.magic3d import RefineConfig
from pvd.sds.methods import magic3d_reuses_sds, method_config


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A folder holds the results of one setting: refuse to mix (the caches would be wrong)."""
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise UserError(f"{out} holds results of other settings (they differ in: {', '.join(changed)}); "
                            f"use a fresh --out or delete {out}")
    else:
        write_json(path, settings)


def test_log_path(data: str) -> Path:
    """Where every test-split run on a dataset file is logged: DATA's name + .test-runs.jsonl."""
    return Path(data).with_name(Path(data).stem + ".test-runs.jsonl")


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, stable hash of a run's settings (the same knobs give the same hash)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def log_test_split_run(data: str, settings: dict[str, Any], command: str, out: Path) -> None:
    """Append one line per run on the test split (before it scores anything), so that a reader can
    check that the test split was scored once per model, with knobs chosen on val: every
    distinct settings hash for the same run is a second look at the test shapes."""
    record = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "settings_hash": settings_hash(settings), "pvd_checkpoint": settings["pvd"]["checkpoint"],
              "sampler": settings["sampler"], "out": str(out.resolve()),
              "command": command, "settings": settings}
    with open(test_log_path(data), "a") as f:  # one short append: whole lines even with two runs at once
        f.write(json.dumps(record) + "\n")


def regressor_outputs(regress: Callable[[np.ndarray], np.ndarray], normalization: dict[str, Any], data: Data,
                      batch: int, points: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A shape head alone (its coarse cloud, world frame) for the evaluated shapes, and its cost: the bar
    any diffusion on top of it has to clear. regress: (B, H, W, 4) uint8 views -> (B, S, 3) normalised."""
    shapes = data.shapes[: data.num]
    clouds, tic = {}, time.perf_counter()
    for start in range(0, len(shapes), batch):
        part = shapes[start : start + batch]
        world = to_world(regress(np.stack([s.image for s in part])), shift_scales(normalization, data, part))
        clouds.update({s.name: cloud for s, cloud in zip(part, world)})
    seconds = (time.perf_counter() - tic) / max(len(shapes), 1)
    return clouds, {"seconds_per_shape_batch1": seconds, "network_evaluations_per_shape": 1,
                    "note": f"one encoder call per shape (timed at batch {batch}); {points} points, meshed like PVD's outputs"}


def load_models(args: argparse.Namespace, device: torch.device) -> tuple[PVDModel, PVDModel | None]:
    """The PVD run (--pvd) and the ablation's second run (--pvd-ablation, optional), which must
    answer the same task: the same categories and point count."""
    single = PVDModel(args.pvd, device, "pvd")
    ablation = PVDModel(args.pvd_ablation, device, "ablation") if args.pvd_ablation else None
    if ablation is not None and sorted(ablation.trained_categories) != sorted(single.trained_categories):
        raise UserError("--pvd and --pvd-ablation were trained on different categories")
    if ablation is not None and ablation.num_points != single.num_points:
        raise UserError(f"--pvd generates {single.num_points} points, --pvd-ablation {ablation.num_points}: "
                        "the ablation compares runs at one point count")
    return single, ablation


def chosen_spec(args: argparse.Namespace, single: PVDModel) -> Spec:
    """The run's recommended sampler setting, with --sampler / --steps / --guidance / --t-start applied."""
    if args.sampler is None or args.sampler == single.recommended.sampler:
        steps = single.recommended.steps if args.sampler is None or args.sampler != "ddpm" else None
    else:
        steps = None  # another sampler: its own default step count
    if args.steps is not None:
        steps = args.steps
    return Spec(args.sampler or single.recommended.sampler, steps,
                float(args.guidance if args.guidance is not None else single.recommended.guidance),
                args.t_start if args.t_start is not None else single.recommended.t_start)


def surface_function(method: str, args: argparse.Namespace, data: Data, k: int, lifted: dict[str, dict[str, dict[str, Any]]],
                     chosen: dict[str, dict[str, int]]) -> Callable[[Shape, np.ndarray | None], Surface | None]:
    """surfaces(shape, pred) for score_method: the surface that ``method`` answers ``shape`` with."""
    def surfaces(shape: Shape, pred: np.ndarray | None) -> Surface | None:
        seed = stable_seed(args.seed, method, shape.row, "mesh")
        if method in ("retrieval", "retrieval-alone", "oracle"):
            return stored_surface(args.data, chosen[method][shape.name], data.info.num_train_points, data.has_normals)
        if method == "truth-resample":
            return stored_surface(args.data, shape.row, 0, data.has_normals)
        if method in lifted:
            mesh = lifted[method][shape.name]["mesh"]
            return mesh_surface(None, mesh, seed) if mesh else None
        if pred is None:
            return None
        return mesh_surface(reduce_points(pred, k, stable_seed(args.seed, method, shape.row, "reduce")), None, seed)
    return surfaces


def run_curves(single: PVDModel, curve_specs: dict[str, list[Spec]], data: Data, curve_num: int, k: int,
               args: argparse.Namespace, out: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Quality (CD, F@1%, F@2% with intervals) and timing per sampler setting on the first curve_num shapes."""
    curve_data = dataclasses.replace(data, num=curve_num)
    curves: dict[str, list[dict[str, Any]]] = {}
    timing: dict[str, dict[str, Any]] = {}
    for key, specs in curve_specs.items():
        points = []
        for sp in specs:
            folder = out / "samples" / f"pvd@{sp.label}"
            samples = sample_method(single, sp, data, curve_num, args.batch, args.seed, folder, f"curve {sp.label}")
            recs, _ = score_method(f"pvd@{sp.label}", samples, curve_data, k, args.seed,
                                   out / "metrics" / f"pvd@{sp.label}", lambda shape, pred: None)
            entry = {"label": sp.label, "sampler": sp.sampler, "steps": single.step_count(sp), "guidance": sp.guidance,
                     "shapes": len(recs)}
            for m in ("cd", "f1", "f2"):
                entry[m] = bootstrap_mean_ci([r[m] for r in recs.values()], **BOOTSTRAP).as_dict()
            points.append(entry)
            timing.setdefault(key, {})[sp.label] = chunk_timing(folder)
        curves[key] = points
    return curves, timing


def quality_record(records: dict[str, dict[str, dict[str, Any]]], single: PVDModel, ablation: PVDModel | None,
                   lifted: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Summaries, per-category means, paired differences (against PVD, and every lifting method
    against SDS), the ablation, worst shapes and the lifting methods' failure flags."""
    quality: dict[str, Any] = {"methods": {m: summarize(r) for m, r in records.items()},
                               "per_category": {m: per_category(r) for m, r in records.items()},
                               "differences": differences(records, "pvd")}
    if "ablation" in records:
        quality["differences"] += [d for d in differences(records, "ablation") if d["b"] in ("retrieval", "sds")]
        quality["ablation"] = {"runs": {"pvd": single.summary(), "ablation": ablation.summary()},
                               "train_step": {"pvd": "pvd"}}
    quality["worst"] = {m: [n for n, _ in sorted(r.items(), key=lambda item: -item[1]["cd"])[:5]] for m, r in records.items()}
    if "sds" in records:
        quality["differences"] += [d for d in differences(records, "sds") if d["b"] in lifted]
    quality["lifting_flags"] = {}
    for method, shapes in lifted.items():
        flags = {f: int(sum(bool(v["record"].get(f)) for v in shapes.values())) for f in ("janus", "floaters", "empty")}
        flags["janus_score_mean"] = finite_mean([v["record"].get("janus_score") for v in shapes.values()])
        quality["lifting_flags"][method] = flags
    return quality


def run_benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    """The benchmark of bench.py's docstring; args: bench.py's parsed and checked arguments
    (check_args adds batches, distribution_metrics and the parsed curves), argv: as typed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    device = pick_device(args.device)
    out = Path(args.out)

    single, ablation = load_models(args, device)
    k = args.points or single.num_points
    view = args.view if args.view is not None else single.cfg.data.eval_view
    data = load_data(args.data, args.split, view, single.trained_categories, args.num, k)
    spec = chosen_spec(args, single)
    single.check_spec(spec)
    curve_specs = {"steps": [Spec(n, s, spec.guidance) for n, s in args.steps_curve_settings],
                   "guidance": [dataclasses.replace(spec, guidance=g) for g in args.guidance_values]}
    for specs in curve_specs.values():
        for sp in specs:
            single.check_spec(sp)
    classifier = None
    default_pfid = Path(args.data).with_suffix(".pfid")  # python -m pvd.pfid train's default output
    pfid_path = args.pfid or (str(default_pfid) if default_pfid.is_dir() else None)
    if pfid_path:
        from pvd.pfid import load_classifier

        classifier = load_classifier(pfid_path)
    embedder_path = args.embedder or default_embedder(args.data)
    embedder = None
    if embedder_path:
        from pvd.semantic.embedder import load_embedder

        embedder = load_embedder(embedder_path, device)
    else:
        print(f"notice: no semantic evaluator (--embedder, or {Path(args.data).with_suffix('.evaluator')}): "
              "R-precision and render KID are skipped; train one with python -m pvd.semantic train "
              f"--data {args.data}", flush=True)
    if args.sds:
        from pvd.sds.prior import load_prior

        load_prior(args.sds)  # one-line error now rather than after the PVD sampling

    settings = {"data": file_identity(args.data), "pvd": single.describe(), "ablation": ablation.describe() if ablation else None,
                "sds": str(Path(args.sds).resolve()) if args.sds else None, "sds_set": args.sds_set,
                # the effective lifting configs, so a folder made under other method defaults is refused
                "lifting_configs": {m: to_dict(method_config(m, args.sds_set)) for m in args.lifting} if args.sds else None,
                "lifting": list(args.lifting), "multiview_args": args.multiview_args, "refine_set": args.refine_set,
                "refine_config": (to_dict(apply_overrides(RefineConfig(), args.refine_set))
                                  if args.sds and "magic3d" in args.lifting else None),
                "split": args.split,
                "view": view, "points": k, "seed": args.seed, "batch": args.batch, "sampler": dataclasses.asdict(spec),
                "retrieval_metric": args.retrieval_metric, "pfid": str(Path(pfid_path).resolve()) if pfid_path else None,
                "embedder": embedder.name if embedder else None, "candidates": args.candidates}
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    command = "python bench.py " + " ".join(shlex.quote(a) for a in argv)
    if args.split == "test":
        log_test_split_run(args.data, settings, command, out)
    torch.manual_seed(args.seed)

    # --- outputs of every method (world frame), cached per shape ---
    outputs: dict[str, dict[str, Any]] = {}
    outputs["pvd"] = sample_method(single, spec, data, data.num, args.batch, args.seed,
                                   out / "samples" / f"pvd@{spec.label}", "pvd")
    if ablation is not None:
        outputs["ablation"] = sample_method(ablation, spec, data, data.num, args.batch, args.seed,
                                            out / "samples" / f"ablation@{spec.label}", "ablation")
    lifted: dict[str, dict[str, dict[str, Any]]] = {}
    if args.sds and args.sds_num > 0:
        # SDS first: where Magic3D's coarse stage has the SDS run's settings (both on the grid), it
        # refines SDS's fields instead of repeating them; by default SDS optimises points and it does not
        reuse = "sds" in args.lifting and magic3d_reuses_sds(args.sds_set)
        for method in sorted(args.lifting, key=lambda m: m != "sds"):
            coarse_from = out / "sds" if method == "magic3d" and reuse else None
            lifted[method] = run_lifting(args, data, device, out / method, method, coarse_from=coarse_from)
            outputs[method] = {name: v["points"] for name, v in lifted[method].items()}

    regressor_cost = None
    if single.has_regressor:
        outputs["regressor"], regressor_cost = regressor_outputs(single.regress, single.normalization, data, args.batch,
                                                                 single.cfg.shape_points)

    baselines = retrieval_baselines(single.nets[0].encoder, single.trained_categories, data, args, k, out / "cache",
                                    device)
    outputs.update(baselines["outputs"])
    chosen = baselines["chosen"]
    alone_cost = {}
    if args.regressor:
        encoder, record = load_regressor(args.regressor, device)
        alone = retrieval_baselines(encoder, record["categories"], data, args, k, out / "cache", device,
                                    name="retrieval-alone", with_oracle=False, bank_file="embeddings-train-alone.npz")
        outputs.update(alone["outputs"])
        chosen.update(alone["chosen"])
        outputs["regressor-alone"], alone_cost["regressor-alone"] = regressor_outputs(
            lambda images: regress(encoder, images, device), record["normalization"], data, args.batch,
            record["regressor"]["shape_points"])
        alone_cost["retrieval-alone"] = alone["cost"]
    outputs["truth-resample"] = {s.name: s.resample for s in data.shapes[: data.num]}

    # --- per-shape metrics ---
    records, clouds = {}, {}
    for method in METHOD_ORDER:
        if method in outputs:
            records[method], clouds[method] = score_method(method, outputs[method], data, k, args.seed,
                                                           out / "metrics" / method,
                                                           surface_function(method, args, data, k, lifted, chosen))

    # --- curves (the first --curve-num shapes) ---
    curve_num = min(args.curve_num, data.num)
    curves, curve_cost = run_curves(single, curve_specs, data, curve_num, k, args, out)

    # --- aggregates ---
    quality = quality_record(records, single, ablation, lifted)
    quality["chosen"] = chosen
    quality["curves"] = curves
    if args.distribution_metrics or classifier is not None:
        quality["distribution"] = distribution(clouds, data, k, args.distribution_metrics, args.workers, classifier,
                                               out / "cache" / "matrices")
    if embedder is not None:
        quality["semantic"] = semantic_quality(embedder, data, clouds, records, args.seed, args.candidates)

    # --- cost ---
    cost: dict[str, Any] = {"methods": {}, "curves": curve_cost}
    cost["methods"]["pvd"] = measure_cost(single, spec, data, args.latency_shapes, args.batches)
    if ablation is not None:
        cost["methods"]["ablation"] = measure_cost(ablation, spec, data, args.latency_shapes, args.batches)
    for method, shapes in lifted.items():
        cost["methods"][method] = lifting_cost(shapes)
    if "sds" in lifted:
        cost["latency_ratio_sds_over_pvd"] = (cost["methods"]["sds"]["seconds_per_shape_batch1"] /
                                              cost["methods"]["pvd"]["seconds_per_shape_batch1"])
    if regressor_cost is not None:
        cost["methods"]["regressor"] = regressor_cost
    cost["methods"]["retrieval"] = baselines["cost"]
    cost["methods"].update(alone_cost)
    cost["memory_note"] = ("CPU: the resident set of the process at its peak (it includes the loaded models and "
                           "data, an upper bound on what the method needs); CUDA: the allocator's peak. Each lifting "
                           "method runs in its own process.")
    cost["training"] = training_log([args.pvd, args.pvd_ablation, args.sds])
    cost["wall_seconds"] = time.perf_counter() - wall

    result = {
        "pvd_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "settings": {**settings, "data": args.data, "data_file": settings["data"], "shapes": data.num,
                     "sds_shapes": max((len(v) for v in lifted.values()), default=0), "categories": single.trained_categories, "curve_shapes": curve_num},
        "conventions": conventions_record(data, k),
        "quality": quality,
        "cost": cost,
    }
    write_json(out / "results.json", result)
    write_text(out / "results.csv", csv_text(records))
    write_text(out / "results.md", markdown(result))
    figure_grid(data, outputs, out / "grid.png")
    lifting_flags = {m: {name: [f for f in ("janus", "floaters") if v["record"].get(f)] for name, v in shapes.items()}
                     for m, shapes in lifted.items()}
    figure_worst(data, records, clouds, out / "worst.png", quality["worst"], lifting_flags)
    if curves.get("steps"):
        figure_curve(curves["steps"], "steps", "sampler", out / "steps.png", "sampler steps", log=True)
    if curves.get("guidance"):
        figure_curve(curves["guidance"], "guidance", None, out / "guidance.png", "guidance scale", log=False)
    print(f"wrote {out}/results.md, results.json, results.csv and figures "
          f"({data.num} shapes, {max((len(v) for v in lifted.values()), default=0)} lifted by "
          f"{', '.join(lifted) or 'no method'}; {(time.perf_counter() - wall) / 60:.1f} min)")
    return 0
