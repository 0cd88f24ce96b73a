r"""Evaluate generated point clouds against a dataset split: MMD, COV, 1-NNA (CD, EMD), P-FID.

    python -m pvd.evaluate SAMPLES --data data/synth.h5 --categories chair --protocol pointflow
    python -m pvd.pfid train --data data/synth.h5      # the P-FID classifier, once per dataset
    python -m pvd.evaluate SAMPLES --data data/synth.h5 --split test --normalization unit-sphere \
        --metrics cd --classifier data/synth.pfid

SAMPLES is one array (S, N, 3) in a .npy, .npz or .h5 file, or a folder of per-shape .npy /
.ply files (taken in sorted name order). The references are the chosen split and categories
of the dataset, each cloud the held-out points ``[num_train_points:][:num_points]`` (PC15k:
``[10000:15000][:2048]``); there must be as many samples as references. Only the first
``--num-points`` points of each sample are used.

``--protocol pointflow`` follows PVD's evaluation exactly: the val split, 2048 reference points
per shape, samples and references de-normalised with the dataset's PointFlow statistics
(global per-axis mean and scalar std of the training clouds), Chamfer in PointFlow's squared
convention, and EMD, here exact (PVD's own code used an approximation that does not match
PointFlow's definition).

Samples are taken to be in PointFlow's normalised frame (what a model trained with the default
normalisation produces; ``--sample-frame original`` for samples in the dataset's stored frame).

Writes OUT.json (every number with its convention) and OUT.md (a table), both complete or
not at all; OUT defaults to SAMPLES with the suffix .metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

import pvd
from pvd.data.dataset import DatasetConfig, ShapeDataset, pointflow_stats
from pvd.data.hdf5 import open_dataset_file
from pvd.errors import UserError, run_command
from pvd.io import atomic_path
from pvd.metrics._common import default_workers
from pvd.metrics.distribution import canonical_normalization, distribution_metrics, pair_count

PROTOCOLS = {
    "pointflow": dict(split="val", num_points=2048, normalization="pointflow", metrics=["cd", "emd"], emd="exact",
                      chamfer="squared"),
}
METRIC_CHOICES = ("cd", "emd", "pfid")
SAMPLE_SUFFIXES = (".npy", ".ply")


# --- inputs ----------------------------------------------------------------------------------

def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _check_clouds(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise UserError(f"{where}: expected numbers, got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError(f"{where}: expected an array of shape (S, N, 3), got {array.shape}")
    array = array.astype(np.float32)
    bad = ~np.isfinite(array).all(axis=(1, 2))
    if bad.any():
        raise UserError(f"{where}: {int(bad.sum())} cloud(s) hold NaN or infinite coordinates (the first is cloud {int(np.flatnonzero(bad)[0])})")
    return array


def _load_one_cloud(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        try:
            cloud = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError, OSError, EOFError, ... on bad files
            raise UserError(f"{path}: unreadable .npy ({type(e).__name__}: {e})") from None
    else:
        import trimesh

        try:
            loaded = trimesh.load(path, process=False)
            cloud = np.asarray(loaded.vertices)
        except Exception as e:  # trimesh raises many types on malformed files
            raise UserError(f"{path}: unreadable .ply ({type(e).__name__}: {e})") from None
    if cloud.ndim != 2 or cloud.shape[1] != 3 or len(cloud) == 0:
        raise UserError(f"{path}: expected one cloud of shape (N, 3), got {cloud.shape}")
    return cloud


def load_samples(path: str | os.PathLike, key: str | None = None, num_points: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(S, N, 3) float32 clouds from a file or folder (see the module docstring) and a description."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no samples at {path}")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES and p.is_file()), key=_natural_key)
        if not files:
            raise UserError(f"{path} holds no .npy or .ply files")
        clouds = [_load_one_cloud(p) for p in files]
        fewest = min(len(c) for c in clouds)
        keep = fewest if num_points is None else num_points
        short = [p.name for p, c in zip(files, clouds) if len(c) < keep]
        if short:
            raise UserError(f"{path}: {len(short)} file(s) have fewer than {keep} points (first: {short[0]})")
        array = np.stack([c[:keep] for c in clouds])
        return _check_clouds(array, str(path)), {"path": str(path), "format": "folder", "files": len(files)}
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as e:
            raise UserError(f"{path}: unreadable .npy ({type(e).__name__}: {e})") from None
        chosen = None
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                chosen = key or (names[0] if len(names) == 1 else "samples" if "samples" in names else None)
                if chosen not in names:
                    raise UserError(f"{path}: choose the array with --key (it has: {', '.join(names)})")
                array = z[chosen]
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from None
    elif suffix in (".h5", ".hdf5"):
        try:
            with h5py.File(path, "r") as f:
                arrays = []
                f.visititems(lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim == 3 else None)
                chosen = key or (arrays[0] if len(arrays) == 1 else "samples" if "samples" in arrays else None)
                if chosen is None or chosen not in f or not isinstance(f[chosen], h5py.Dataset):
                    raise UserError(f"{path}: choose the array with --key (3-D arrays in it: {', '.join(arrays) or 'none'})")
                array = f[chosen][()]
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{path}: unreadable HDF5 file ({type(e).__name__}: {e})") from None
    else:
        raise UserError(f"{path}: samples must be a .npy, .npz or .h5 array or a folder of .npy/.ply files")
    array = _check_clouds(np.asarray(array), str(path) + (f":{chosen}" if chosen else ""))
    return array, {"path": str(path), "format": suffix[1:], **({"key": chosen} if chosen else {})}


def load_references(data: str, split: str, categories: list[str] | None, num_points: int,
                    normalization: str) -> tuple[np.ndarray, ShapeDataset]:
    """The split's held-out evaluation clouds (R, num_points, 3) in the dataset normalisation given."""
    dataset = ShapeDataset(DatasetConfig(path=data, categories=categories, num_points=num_points,
                                         normalization=normalization, images=False), split, train=False)
    if len(dataset) == 0:
        raise UserError(f"{data} has no {split} shapes in the chosen categories")
    return np.stack([dataset[i]["points"].numpy() for i in range(len(dataset))]), dataset


# --- outputs ---------------------------------------------------------------------------------

_SCALES = {"MMD-CD": 1e3, "MMD-smp-CD": 1e3, "MMD-EMD": 1e2, "MMD-smp-EMD": 1e2, "P-KID": 1e3}


def markdown_table(result: dict[str, Any]) -> str:
    """The result as a Markdown table with the convention below it."""
    lines = [f"# {result['samples']['path']} vs {result['references']['file']}",
             "",
             f"{result['samples']['count']} samples, {result['references']['count']} references "
             f"({result['references']['split']} split of {', '.join(result['references']['categories'])}, "
             f"points {result['references']['points']}), protocol: {result['protocol'] or 'custom'}",
             "",
             "| metric | value |",
             "|---|---:|"]
    for name, value in result["metrics"].items():
        if name.startswith("1-NNA") or name.startswith("COV"):
            lines.append(f"| {name} (%) | {100 * value:.2f} |")
        elif name in _SCALES:
            lines.append(f"| {name} (x10^{round(math.log10(_SCALES[name]))}) | {value * _SCALES[name]:.4f} |")
        else:
            lines.append(f"| {name} | {value:.6g} |")
    lines += ["", "Conventions:", ""]
    lines += [f"- {key}: {value}" for key, value in result["convention"].items() if not isinstance(value, dict)]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """OUT.json and OUT.md, each written atomically; both renames wait until both are written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    targets = {out.with_name(out.name + ".json"): json.dumps(result, indent=2) + "\n",
               out.with_name(out.name + ".md"): markdown_table(result)}
    with contextlib.ExitStack() as stack:
        for target, text in targets.items():
            stack.enter_context(atomic_path(target)).write_text(text)
    return tuple(targets)  # type: ignore[return-value]


def default_out(samples: Path) -> Path:
    """SAMPLES with the suffix .metrics (beside a folder, for a folder)."""
    samples = Path(str(samples).rstrip("/"))
    return samples.with_name((samples.stem if samples.is_file() else samples.name) + ".metrics")


# --- the command -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pvd.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="a .npy/.npz/.h5 array (S, N, 3) or a folder of per-shape .npy/.ply files")
    parser.add_argument("--data", required=True, help="the pvd HDF5 dataset holding the references")
    parser.add_argument("--split", choices=("train", "val", "test"), help="reference split (default val)")
    parser.add_argument("--categories", nargs="+", help="category names or synsets (default: all in the file)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), help="fix every option to a published protocol")
    parser.add_argument("--normalization", choices=("pointflow", "unit-sphere", "bbox", "none"),
                        help="frame of the comparison (default pointflow: de-normalised, as PointFlow and PVD)")
    parser.add_argument("--sample-frame", choices=("normalized", "original"), default="normalized",
                        help="frame the samples are saved in: PointFlow-normalised (default) or the dataset's stored one")
    parser.add_argument("--metrics", nargs="+", choices=METRIC_CHOICES, help="default: cd emd (pfid with --classifier)")
    parser.add_argument("--emd", choices=("exact", "auction"), help="EMD method (default exact)")
    parser.add_argument("--chamfer", choices=("squared", "l1", "l2"), help="Chamfer convention (default squared)")
    parser.add_argument("--num-points", type=int, help="points per cloud (default 2048)")
    parser.add_argument("--classifier", help="P-FID classifier folder (python -m pvd.pfid train); adds P-FID/P-KID")
    parser.add_argument("--key", help="the array's name inside an .npz or .h5 file of samples")
    parser.add_argument("--workers", type=int, help="processes for the pairwise distances (default: all cores)")
    parser.add_argument("--out", help="output path without suffix (default: SAMPLES with the suffix .metrics)")
    return parser


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, and a protocol's fixed values (conflicting options are an error)."""
    options = {"split": "val", "num_points": 2048, "normalization": "pointflow", "metrics": ["cd", "emd"],
               "emd": "exact", "chamfer": "squared"}
    if args.protocol:
        fixed = PROTOCOLS[args.protocol]
        for name, value in fixed.items():
            given = getattr(args, name)
            if given is not None and given != value:
                raise UserError(f"--protocol {args.protocol} fixes --{name.replace('_', '-')} to {value}; drop --{name.replace('_', '-')}")
        options.update(fixed)
    else:
        for name in options:
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
    metrics = list(dict.fromkeys(options["metrics"]))
    if args.classifier and "pfid" not in metrics:
        metrics.append("pfid")
    if "pfid" in metrics and not args.classifier:
        raise UserError("the pfid metric needs --classifier (train one with: python -m pvd.pfid train --data DATA)")
    options["metrics"] = metrics
    if options["num_points"] < 1:
        raise UserError("--num-points must be positive")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be positive")
    return options


def _announce_emd(samples: np.ndarray, method: str, pairs: int, workers: int) -> str:
    """The EMD workload, with a rough time from measurements on a 2-vCPU Xeon (the bar gives the real ETA)."""
    if method != "exact":
        return f"EMD ({method}): {pairs} pairs"
    per_pair = 0.5 * (samples.shape[1] / 2048) ** 2.5  # one core; grows a little faster than N^2
    minutes = pairs * per_pair / workers / 60
    return (f"EMD (exact): {pairs} pairs of {samples.shape[1]}-point clouds on {workers} process(es), "
            f"roughly {minutes:.1f}-{2 * minutes:.1f} min")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by parsed arguments; returns the result record."""
    options = resolve_options(args)
    num_points = options["num_points"]
    from pvd.pfid import load_classifier, pfid_metrics  # loaded here: torch.nn is not needed otherwise

    classifier = load_classifier(args.classifier) if args.classifier else None
    samples, sample_info = load_samples(args.samples, args.key, None)
    if samples.shape[1] < num_points:
        raise UserError(f"{args.samples}: the samples have {samples.shape[1]} points; the evaluation uses {num_points}")
    samples = samples[:, :num_points]
    normalization = canonical_normalization(options["normalization"])
    reference_frame = "pointflow" if normalization == "pointflow" else "none"
    references, dataset = load_references(args.data, options["split"], args.categories, num_points, reference_frame)
    if len(samples) != len(references):
        raise UserError(f"{len(samples)} samples but {len(references)} references ({options['split']} split of "
                        f"{', '.join(dataset.normalization_info()['categories'])}): the counts must match")
    mean, std = None, None
    if normalization == "pointflow" or (normalization == "none" and args.sample_frame == "normalized"):
        with open_dataset_file(args.data) as f:  # PointFlow statistics of the chosen categories
            mean, std = pointflow_stats(f, dataset.category_ids)
    if normalization == "pointflow" and args.sample_frame == "original":
        samples = (samples - mean) / std
    elif normalization == "none" and args.sample_frame == "normalized":
        samples = samples * std + mean
    _warn_if_frames_differ(samples, references)
    workers = args.workers or default_workers()
    metrics: dict[str, Any] = {}
    convention: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for metric in ("cd", "emd"):
        if metric not in options["metrics"]:
            continue
        name = metric.upper()
        pairs = pair_count(len(samples), len(references))
        if metric == "emd":
            print(_announce_emd(samples, options["emd"], pairs, workers), file=sys.stderr)
        start = time.perf_counter()
        with tqdm(total=pairs, desc=f"{name} pairs", unit="pair", file=sys.stderr, disable=None) as bar:
            result = distribution_metrics(samples, references, metrics=[name], normalization=normalization,
                                          stats=(mean, std) if mean is not None else None, chamfer=options["chamfer"], emd_method=options["emd"],
                                          workers=workers, progress=bar)
        timing[name] = time.perf_counter() - start
        convention.update(result.pop("convention"))
        for key in ("num_samples", "num_references", "num_points"):
            result.pop(key)
        metrics.update(result)
    if "pfid" in options["metrics"]:
        start = time.perf_counter()
        scores = pfid_metrics(classifier, samples, references)
        convention.update(scores.pop("convention"))
        metrics.update(scores)
        timing["P-FID"] = time.perf_counter() - start
    info = dataset.normalization_info()
    start_point = dataset.info.num_train_points
    return {
        "pvd_version": pvd.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": args.protocol,
        "samples": {**sample_info, "count": len(samples), "points_used": num_points, "frame": args.sample_frame},
        "references": {"file": info["file"], "split": info["split"], "categories": info["categories"],
                       "count": len(references), "points": f"[{start_point}:{start_point + num_points}]"},
        "metrics": metrics,
        "convention": convention,
        "seconds": timing,
        "workers": workers,
    }


def _warn_if_frames_differ(samples: np.ndarray, references: np.ndarray) -> None:
    def size(x):
        return float(np.linalg.norm(x - x.mean(axis=1, keepdims=True), axis=-1).mean())

    ratio = size(samples) / max(size(references), 1e-12)
    if not 1 / 3 < ratio < 3:
        print(f"warning: the samples are {ratio:.2g}x the size of the references; is --sample-frame right?", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = evaluate(args)
    out = Path(args.out) if args.out else default_out(Path(args.samples))
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    json_path, md_path = write_outputs(result, out)
    print(markdown_table(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    run_command(main)
