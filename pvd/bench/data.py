"""The test shapes: each one's input view and the ground truth it is scored against (world frame)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvd.bench.common import TRUTH_POINTS
from pvd.data.hdf5 import SPLITS, FileInfo, open_dataset_file
from pvd.errors import UserError


@dataclass
class Shape:
    """One test shape: its input view and everything it is scored against (world frame)."""

    name: str
    row: int
    category: str
    category_index: int
    image: np.ndarray  # (H, W, 4) uint8, the input view
    intrinsics: np.ndarray  # (3, 3) of the input view
    extrinsics: np.ndarray  # (4, 4)
    ref: np.ndarray | None = None  # (R, 3) ground truth, the held-out slice
    ref_normals: np.ndarray | None = None  # (R, 3) or None when the file stores no normals
    ref_thin: np.ndarray | None = None  # (R,) bool: in a thin part; None without part labels
    resample: np.ndarray | None = None  # (K, 3) another sample of the truth (points [0:K])
    diag: float = 1.0  # bounding-box diagonal of the stored cloud
    centre: np.ndarray | None = None  # (3,) its box centre


@dataclass
class Data:
    """The benchmark's view of a dataset file: the split's shapes and what the file provides."""

    path: str
    split: str
    view: int
    info: FileInfo
    shapes: list[Shape]  # every split shape of the chosen categories, in file order (inputs only)
    num: int  # the first ``num`` are evaluated (and carry ground truth)
    ref_points: int
    has_normals: bool
    has_thin: bool


def load_data(path: str, split: str, view: int, categories: list[str], num: int | None, points: int) -> Data:
    """The ``split`` shapes of ``categories`` with input ``view``; the first ``num`` (all when None)
    also get their ground truth (TRUTH_POINTS held-out points) and ``points`` resampled truth points."""
    with open_dataset_file(path) as f:
        info = FileInfo.read(f)
        if split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not info.has_images or "cameras" not in f:
            raise UserError(f"{path} has no rendered views (images and cameras): the methods start from an image")
        if not 0 <= view < info.num_views:
            raise UserError(f"--view {view} is out of range (the file has {info.num_views} views)")
        ids = info.category_ids(categories)
        rows = np.flatnonzero((info.split == SPLITS.index(split)) & np.isin(info.category, ids))
        if len(rows) == 0:
            raise UserError(f"{path} has no {split} shapes of the run's categories ({', '.join(categories)})")
        held_out = info.num_points - info.num_train_points
        ref_points = min(TRUTH_POINTS, held_out)
        if points > ref_points:
            raise UserError(f"--points {points}: the ground truth has only {ref_points} held-out points per shape")
        if points > info.num_train_points:
            raise UserError(f"--points {points} is more than the {info.num_train_points} training points per shape")
        count = len(rows) if num is None else min(num, len(rows))
        cams = f["cameras"]
        has_normals = "normals" in f
        has_thin = "part_labels" in f and "part_thin" in f.attrs
        thin_flags = np.asarray(f.attrs["part_thin"], bool) if has_thin else None
        lo_all, hi_all = f["shape_stats/bbox_min"][:], f["shape_stats/bbox_max"][:]
        shapes = []
        start = info.num_train_points
        for k, row in enumerate(rows):
            row = int(row)
            shape = Shape(name=f"{split}-{row:05d}", row=row, category=info.categories[int(info.category[row])],
                          category_index=int(info.category[row]), image=f["images"][row, view],
                          intrinsics=cams["intrinsics"][row, view].astype(np.float64),
                          extrinsics=cams["extrinsics"][row, view].astype(np.float64))
            if k < count:
                shape.ref = f["points"][row, start : start + ref_points].astype(np.float64)
                shape.resample = f["points"][row, :points].astype(np.float64)
                if has_normals:
                    shape.ref_normals = f["normals"][row, start : start + ref_points].astype(np.float64)
                if has_thin:
                    labels = f["part_labels"][row, start : start + ref_points]
                    shape.ref_thin = thin_flags[labels]
                lo, hi = lo_all[row].astype(np.float64), hi_all[row].astype(np.float64)
                shape.diag = float(np.linalg.norm(hi - lo))
                shape.centre = (lo + hi) / 2
            shapes.append(shape)
    return Data(path, split, view, info, shapes, count, ref_points, has_normals, has_thin)

