"""Per-shape scores: an output reduced to K points and scored against its shape's ground truth
(CD, EMD, F-score, IoU, thin-part recall, failure flags) and its surface against the truth's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pvd.bench.common import COLLAPSED, EMD_POINTS, EXPLODED, MESH_SAMPLES, THRESHOLDS, save_npy, stable_seed, write_json
from pvd.bench.data import Data, Shape
from pvd.data.hdf5 import open_dataset_file
from pvd.errors import UserError, raise_if_interrupted
from pvd.metrics import chamfer_distance, emd, normal_consistency, precision_recall, voxel_iou
from pvd.metrics.volume import sample_mesh_surface

# A surface: (M, 3) points and their (M, 3) normals (None when unknown).
Surface = tuple[np.ndarray, np.ndarray | None]


def reduce_points(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N, 3) -> (k, 3): a seeded random subset of k points (with replacement when there are fewer)."""
    rng = np.random.default_rng(seed)
    n = len(points)
    index = np.sort(rng.choice(n, k, replace=False)) if n >= k else rng.choice(n, k, replace=True)
    return points[index]


def _batch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None]


def shape_metrics(pred: np.ndarray | None, shape: Shape, k: int, seed: int, method: str,
                  surface: Surface | None) -> tuple[dict[str, Any], np.ndarray]:
    """Every per-shape number of one output (see the module docstring), and the K-point cloud scored.

    pred: (N, 3) world frame, or None for an empty output. surface: (points, normals) sampled on
    the output's mesh or stored surface, None when there is none.
    """
    record: dict[str, Any] = {"points": 0 if pred is None else int(len(pred))}
    finite = None if pred is None else pred[np.isfinite(pred).all(axis=1)]
    record["empty"] = finite is None or len(finite) == 0
    if record["empty"]:
        cloud = np.repeat(shape.centre[None], k, axis=0)
        record["extent_ratio"] = 0.0
    else:
        cloud = reduce_points(finite, k, stable_seed(seed, method, shape.row, "reduce"))
        record["extent_ratio"] = float(np.linalg.norm(finite.max(0) - finite.min(0)) / shape.diag)
    record["exploded"] = bool(pred is not None and (len(finite) < len(pred) or record["extent_ratio"] > EXPLODED))
    record["collapsed"] = bool(not record["empty"] and record["extent_ratio"] < COLLAPSED)
    a, ref, ref_k = _batch(cloud), _batch(shape.ref), _batch(shape.ref[:k])
    record["cd"] = float(chamfer_distance(a, ref)[0])
    record["emd"] = float(emd(a[:, :EMD_POINTS], ref_k[:, :EMD_POINTS], exact=True, workers=1)[0])
    record["iou"] = float(voxel_iou(a, ref_k, resolution=32)[0])
    empty = record["empty"]
    for tag, frac in THRESHOLDS.items():
        p, r = precision_recall(a, ref, frac * shape.diag)
        p, r = (0.0, 0.0) if empty else (float(p[0]), float(r[0]))
        record[f"p{tag}"], record[f"r{tag}"] = p, r
        record[f"f{tag}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    record["thin_r2"] = float("nan")
    if shape.ref_thin is not None and shape.ref_thin.any():
        if empty:
            record["thin_r2"] = 0.0
        else:
            from pvd.metrics import nearest_neighbors

            d2, _ = nearest_neighbors(_batch(shape.ref[shape.ref_thin]), a)
            record["thin_r2"] = float((d2[0].sqrt() < THRESHOLDS["2"] * shape.diag).double().mean())
    record["no_mesh"] = surface is None
    if surface is None:
        record["mesh_f1"] = 0.0
        record["mesh_nc"] = 0.0 if shape.ref_normals is not None else float("nan")
    else:
        pts, normals = surface
        p, r = precision_recall(_batch(pts), ref, THRESHOLDS["1"] * shape.diag)
        p, r = float(p[0]), float(r[0])
        record["mesh_f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        record["mesh_nc"] = float("nan")
        if normals is not None and shape.ref_normals is not None:
            record["mesh_nc"] = float(normal_consistency(_batch(pts), _batch(normals), ref, _batch(shape.ref_normals))[0])
    return record, cloud


def mesh_surface(points: np.ndarray | None, mesh_path: Path | None, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """MESH_SAMPLES points and face normals on a mesh: the given file's, else one made from the points."""
    import trimesh

    from pvd.meshing import mesh_from_points

    try:
        if mesh_path is not None:
            mesh = trimesh.load(mesh_path, process=False, force="mesh")
        elif points is not None and len(points) >= 10 and np.isfinite(points).all():
            mesh = mesh_from_points(points)
        else:
            return None
        if len(mesh.faces) == 0:
            return None
        return sample_mesh_surface(mesh.vertices, mesh.faces, MESH_SAMPLES, seed)
    except (UserError, ValueError):
        return None


def stored_surface(path: str, row: int, start: int, has_normals: bool) -> Surface:
    """A stored shape's surface: MESH_SAMPLES of its points (and normals) from ``start``."""
    with open_dataset_file(path) as f:
        pts = f["points"][row, start : start + MESH_SAMPLES].astype(np.float64)
        normals = f["normals"][row, start : start + MESH_SAMPLES].astype(np.float64) if has_normals else None
    return pts, normals


def score_method(method: str, outputs: dict[str, Any], data: Data, k: int, seed: int, folder: Path,
                 surfaces: Callable[[Shape, np.ndarray | None], Surface | None]
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Per-shape records (cached in folder/NAME.json) and K-point clouds (folder/NAME.npy) of one method.

    outputs: name -> (N, 3) world cloud or None (empty). surfaces(name, pred) -> (points, normals) | None.
    """
    folder.mkdir(parents=True, exist_ok=True)
    records, clouds = {}, {}
    names = [s for s in data.shapes[: data.num] if s.name in outputs]
    todo = {s.name for s in names if not ((folder / f"{s.name}.json").is_file() and (folder / f"{s.name}.npy").is_file())}
    bar = tqdm(total=len(todo), desc=f"metrics {method}", unit="shape", dynamic_ncols=True, disable=None if todo else True)
    for shape in names:
        rec_path, cloud_path = folder / f"{shape.name}.json", folder / f"{shape.name}.npy"
        if shape.name in todo:
            raise_if_interrupted()
            pred = outputs[shape.name]
            record, cloud = shape_metrics(pred, shape, k, seed, method, surfaces(shape, pred))
            record.update(name=shape.name, row=shape.row, category=shape.category, method=method)
            save_npy(cloud_path, cloud)
            write_json(rec_path, record)
            bar.update(1)
        records[shape.name] = json.loads(rec_path.read_text())
        clouds[shape.name] = np.load(cloud_path).astype(np.float64)
    bar.close()
    return records, clouds
