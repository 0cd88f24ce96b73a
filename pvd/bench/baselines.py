"""The baselines beside PVD: the lifting methods (``python -m pvd.sds --method M``, each run as a
child process) and retrieval / the Chamfer oracle over the training shapes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvd.bench.common import subprocess_env
from pvd.bench.data import Data
from pvd.errors import UserError


def run_lifting(args: argparse.Namespace, data: Data, device: torch.device, folder: Path, method: str = "sds",
                *, coarse_from: Path | None = None) -> dict[str, dict[str, Any]]:
    """``python -m pvd.sds --method METHOD`` over the first --sds-num split shapes, the same shapes
    and input view for every method (its own per-shape caching); returns name -> {"points": (N, 3)
    world | None, "mesh": path | None, "record": dict}. coarse_from: magic3d refines the fields an
    SDS run with the same settings wrote there."""
    count = min(args.sds_num, data.num)
    cmd = [sys.executable, "-m", "pvd.sds", "--method", method, "--prior", args.sds, "--data", data.path, "--split",
           data.split, "--num", str(count), "--view", str(data.view), "--seed", str(args.seed), "--out", str(folder),
           "--device", str(device)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.sds_set:
        cmd += ["--set", *args.sds_set]
    if method == "multiview" and getattr(args, "multiview_args", ""):
        cmd += shlex.split(args.multiview_args)
    if method == "magic3d" and getattr(args, "refine_set", None):
        cmd += ["--refine-set", *args.refine_set]
    if method == "magic3d" and coarse_from is not None:
        cmd += ["--coarse-from", str(coarse_from)]
    print(f"{method}: {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=subprocess_env())
    if done.returncode == 130:
        raise KeyboardInterrupt
    if done.returncode != 0:
        raise UserError(f"the {method} baseline failed (exit {done.returncode}; its message is above)")
    out = {}
    for shape in data.shapes[:count]:
        record_path = folder / "records" / f"{shape.name}.json"
        if not record_path.is_file():
            continue  # the SDS command's split order differs when the run covers only some categories
        record = json.loads(record_path.read_text())
        pts = folder / f"{shape.name}.npy"
        mesh = folder / f"{shape.name}.obj"
        out[shape.name] = {"points": np.load(pts).astype(np.float64) if pts.is_file() and not record.get("empty") else None,
                           "mesh": mesh if mesh.is_file() else None, "record": record}
    return out


def lifting_cost(lifted: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A lifting method's per-shape records summarised: latency, prior evaluations, peak memory."""
    recs = [v["record"] for v in lifted.values()]
    return {
        "seconds_per_shape_batch1": float(np.median([r["seconds"] for r in recs])),
        "seconds_mean": float(np.mean([r["seconds"] for r in recs])),
        "network_evaluations_per_shape": float(np.mean([r["prior_evaluations"] for r in recs])),
        "iterations": recs[0].get("iterations"),
        "peak_memory_mb_batch1": float(np.max([r["peak_memory_mb"] for r in recs])),
        "note": "median over the lifted shapes of the optimisation's wall time (mesh extraction and scoring "
                "excluded; view generation included), one shape at a time; from the lifting command's records",
    }


def retrieval_baselines(encoder: torch.nn.Module, categories: list[str], data: Data, args: argparse.Namespace, k: int,
                        cache: Path, device: torch.device, *, name: str = "retrieval", with_oracle: bool = True,
                        bank_file: str = "embeddings-train.npz") -> dict[str, Any]:
    """Retrieval under ``name`` (nearest training view embedding from ``encoder``, over the training
    shapes of ``categories``) and, with_oracle, the Chamfer oracle: their world-frame answers
    (name -> (k, 3)), chosen training rows and the retrieval's cost."""
    from pvd.retrieval import embedding_bank, encode_images, oracle, read_clouds, retrieve

    tic = time.perf_counter()
    bank = embedding_bank(encoder, args.data, "train", cache=cache / bank_file, device=device)
    bank_seconds = time.perf_counter() - tic
    keep = np.isin(data.info.category[bank.rows], data.info.category_ids(categories))
    bank = dataclasses.replace(bank, rows=bank.rows[keep], embeddings=bank.embeddings[keep])
    evaluated = data.shapes[: data.num]
    names = [s.name for s in evaluated]
    tic = time.perf_counter()
    query = encode_images(encoder, np.stack([s.image for s in evaluated]).transpose(0, 3, 1, 2), device=device)
    answer = retrieve(query, bank, args.data, start=data.info.num_train_points, count=k, metric=args.retrieval_metric)
    seconds = (time.perf_counter() - tic) / len(evaluated)
    outputs = {name: dict(zip(names, answer.clouds.astype(np.float64)))}
    chosen = {name: dict(zip(names, answer.rows.tolist()))}
    if with_oracle:
        candidates = read_clouds(args.data, bank.rows, data.info.num_train_points, k)
        found = oracle(np.stack([s.ref for s in evaluated]), bank.rows, candidates, workers=args.workers)
        outputs["oracle"] = dict(zip(names, found.clouds.astype(np.float64)))
        chosen["oracle"] = dict(zip(names, found.rows.tolist()))
    return {
        "outputs": outputs,
        "chosen": chosen,
        "cost": {"seconds_per_shape_batch1": seconds, "network_evaluations_per_shape": 1, "bank_seconds": bank_seconds,
                 "bank_cached": bank.cached, "bank_shapes": int(len(bank.rows)),
                 "note": "one encoder call and a nearest-neighbour search over the cached training view embeddings "
                         "(the bank's one-off cost: bank_seconds)"},
    }
