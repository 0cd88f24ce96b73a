"""The one HDF5 schema every pvd dataset uses: the record, the atomic writer and the readers.

The schema is documented in ``datasets/README.md``; ``SCHEMA_VERSION`` changes whenever it
does. A file is written under a ``.partial`` name and renamed only when complete, and carries
``complete = True`` as a root attribute, so an interrupted conversion never leaves a file that
looks finished.

This module is the file format alone, what every converter, tool and reader shares; the
training Dataset that draws samples from such a file is :mod:`pvd.data.dataset`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pvd.data.cameras import CameraSet
from pvd.errors import UserError, raise_if_interrupted

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
# PC15k convention: the first 2/3 of each cloud (10000 of 15000 points) are for training,
# the rest for evaluation.
TRAIN_POINT_FRACTION = 2 / 3
_POINT_CHUNK = 5000  # points per chunk: training reads only the first 10000 of 15000
_GROW = 64  # rows added when a dataset fills up
_COMPRESSION = dict(compression="gzip", compression_opts=1, shuffle=True)
# Point coordinates are stored uncompressed: float32 surface samples shrink by only ~13%
# under shuffle+gzip, and decompression made a training read ~10x slower (330 vs 30 us).


@dataclass
class ShapeRecord:
    """One shape as a converter hands it to :class:`ShapeWriter`.

    points: (P, 3) surface samples in the ShapeNet frame; normals: (P, 3); images: (V, H, W, 4)
    uint8 RGBA; cameras: the V cameras of ``images``; vertices (Nv, 3) / faces (Nf, 3): the
    mesh; part_labels: (P,) indices into the file's ``part_names``; params: generator
    parameters (JSON-serialisable).
    """

    model_id: str
    category: str
    split: str
    points: np.ndarray
    normals: np.ndarray | None = None
    images: np.ndarray | None = None
    cameras: CameraSet | None = None
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None
    part_labels: np.ndarray | None = None
    params: dict[str, Any] | None = None


@dataclass
class WriterLayout:
    """What every shape of a file carries; optional groups are all-or-nothing per file."""

    categories: dict[str, str]  # name -> ShapeNet synset id (or the user's own label)
    num_points: int = 15000
    num_views: int = 0  # 0: no images or cameras
    image_size: tuple[int, int] = (0, 0)  # (H, W)
    normals: bool = False
    meshes: bool = False
    part_names: tuple[str, ...] = ()  # non-empty: per-point part labels are stored
    thin_parts: tuple[str, ...] = ()
    params: bool = False
    source: str = ""  # free text: which tree or generator produced the file
    extra_attrs: dict[str, Any] = field(default_factory=dict)


class ShapeWriter:
    """Appends :class:`ShapeRecord` s to a new HDF5 file, atomically.

    Use as a context manager: the file appears under its final name only if the block ends
    without an exception; otherwise the partial file is removed.
    """

    def __init__(self, path: str | os.PathLike, layout: WriterLayout):
        self.path = Path(path)
        self.layout = layout
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.partial_path, "w")
        self._count = 0
        self._category_index = {name: i for i, name in enumerate(layout.categories)}
        # float64 sums per (category, split) for PointFlow's global normalisation
        self._sum = np.zeros((len(layout.categories), len(SPLITS), 3))
        self._sumsq = np.zeros((len(layout.categories), len(SPLITS), 3))
        self._npoints = np.zeros((len(layout.categories), len(SPLITS)), dtype=np.int64)
        self._mesh_counts = [0, 0]  # vertices, faces written so far
        self._rows: list[h5py.Dataset] = []  # datasets with one row per shape
        self._create_datasets()

    def _dataset(self, name: str, shape: tuple[int, ...], dtype, chunks=None, compress=True):
        chunks = chunks or (1, *shape)
        kwargs = _COMPRESSION if compress else {}
        ds = self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks, **kwargs)
        self._rows.append(ds)

    def _create_datasets(self) -> None:
        lay, p = self.layout, self.layout.num_points
        self._dataset("points", (p, 3), "f4", chunks=(1, min(p, _POINT_CHUNK), 3), compress=False)
        if lay.normals:
            self._dataset("normals", (p, 3), "f4", chunks=(1, min(p, _POINT_CHUNK), 3), compress=False)
        self._dataset("category", (), "i2", chunks=(1024,), compress=False)
        self._dataset("split", (), "u1", chunks=(1024,), compress=False)
        self._dataset("model_id", (), h5py.string_dtype(), chunks=(1024,), compress=False)
        for name in ("centroid", "bbox_min", "bbox_max"):
            self._dataset(f"shape_stats/{name}", (3,), "f4", chunks=(1024, 3), compress=False)
        self._dataset("shape_stats/radius", (), "f4", chunks=(1024,), compress=False)
        if lay.num_views:
            v, (h, w) = lay.num_views, lay.image_size
            self._dataset("images", (v, h, w, 4), "u1", chunks=(1, 1, h, w, 4))
            self._dataset("cameras/intrinsics", (v, 3, 3), "f4", compress=False, chunks=(64, v, 3, 3))
            self._dataset("cameras/extrinsics", (v, 4, 4), "f4", compress=False, chunks=(64, v, 4, 4))
            for name in ("azimuth", "elevation", "distance", "fov"):
                self._dataset(f"cameras/{name}", (v,), "f4", compress=False, chunks=(64, v))
        if lay.meshes:
            self._file.create_dataset("mesh/vertices", (0, 3), "f4", maxshape=(None, 3), chunks=(16384, 3), **_COMPRESSION)
            self._file.create_dataset("mesh/faces", (0, 3), "i4", maxshape=(None, 3), chunks=(16384, 3), **_COMPRESSION)
            for name in ("vertex_offset", "face_offset"):
                self._file.create_dataset(f"mesh/{name}", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,))
        if lay.part_names:
            self._dataset("part_labels", (p,), "i2", chunks=(1, p))
        if lay.params:
            self._dataset("params", (), h5py.string_dtype(), chunks=(256,))

    def append(self, record: ShapeRecord) -> None:
        """Add one shape; checks it against the layout and raises ValueError on a mismatch."""
        raise_if_interrupted()
        lay, i = self.layout, self._count
        points = np.asarray(record.points, dtype=np.float32)
        if points.shape != (lay.num_points, 3):
            raise ValueError(f"{record.model_id}: points have shape {points.shape}, expected ({lay.num_points}, 3)")
        if not np.isfinite(points).all():
            raise ValueError(f"{record.model_id}: points contain NaN or infinity")
        if record.category not in self._category_index:
            raise ValueError(f"{record.model_id}: unknown category {record.category!r}")
        if record.split not in SPLITS:
            raise ValueError(f"{record.model_id}: split must be one of {SPLITS}, got {record.split!r}")
        self._check_optional(record)

        if self._rows[0].shape[0] <= i:
            for ds in self._rows:
                ds.resize(i + _GROW, axis=0)
        self._file["points"][i] = points
        if lay.normals:
            self._file["normals"][i] = record.normals
        cat, split = self._category_index[record.category], SPLITS.index(record.split)
        self._file["category"][i] = cat
        self._file["split"][i] = split
        self._file["model_id"][i] = record.model_id
        centroid = points.mean(0)
        self._file["shape_stats/centroid"][i] = centroid
        self._file["shape_stats/radius"][i] = np.linalg.norm(points - centroid, axis=1).max()
        self._file["shape_stats/bbox_min"][i] = points.min(0)
        self._file["shape_stats/bbox_max"][i] = points.max(0)
        p64 = points.astype(np.float64)
        self._sum[cat, split] += p64.sum(0)
        self._sumsq[cat, split] += (p64 * p64).sum(0)
        self._npoints[cat, split] += len(points)
        if lay.num_views:
            self._file["images"][i] = record.images
            cams = record.cameras
            for name in ("intrinsics", "extrinsics", "azimuth", "elevation", "distance", "fov"):
                self._file[f"cameras/{name}"][i] = getattr(cams, name)
        if lay.meshes:
            self._append_mesh(np.asarray(record.vertices, np.float32), np.asarray(record.faces, np.int32))
        if lay.part_names:
            self._file["part_labels"][i] = record.part_labels
        if lay.params:
            self._file["params"][i] = json.dumps(record.params, sort_keys=True)
        self._count += 1

    def _check_optional(self, record: ShapeRecord) -> None:
        lay, p, name = self.layout, self.layout.num_points, record.model_id
        expect = {
            "normals": (lay.normals, (p, 3)),
            "images": (lay.num_views > 0, (lay.num_views, *lay.image_size, 4)),
            "part_labels": (bool(lay.part_names), (p,)),
        }
        for field_name, (wanted, shape) in expect.items():
            value = getattr(record, field_name)
            if wanted and (value is None or np.shape(value) != shape):
                raise ValueError(f"{name}: {field_name} must have shape {shape}, got {np.shape(value) if value is not None else None}")
        if lay.num_views and (record.cameras is None or len(record.cameras) != lay.num_views):
            raise ValueError(f"{name}: expected {lay.num_views} cameras")
        if lay.meshes and (record.vertices is None or record.faces is None):
            raise ValueError(f"{name}: this file stores meshes but the record has none")
        if lay.params and record.params is None:
            raise ValueError(f"{name}: this file stores generator parameters but the record has none")

    def _append_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        nv, nf = self._mesh_counts
        for name, data, start in (("vertices", vertices, nv), ("faces", faces, nf)):
            ds = self._file[f"mesh/{name}"]
            ds.resize(start + len(data), axis=0)
            ds[start:] = data
        self._mesh_counts = [nv + len(vertices), nf + len(faces)]
        for name, end in (("vertex_offset", self._mesh_counts[0]), ("face_offset", self._mesh_counts[1])):
            ds = self._file[f"mesh/{name}"]
            ds.resize(ds.shape[0] + 1, axis=0)
            ds[-1] = end

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Trim, write the summary attributes and statistics, and rename into place."""
        for ds in self._rows:
            ds.resize(self._count, axis=0)
        lay, f = self.layout, self._file
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["num_shapes"] = self._count
        f.attrs["num_points"] = lay.num_points
        f.attrs["num_train_points"] = round(lay.num_points * TRAIN_POINT_FRACTION)
        f.attrs["num_views"] = lay.num_views
        f.attrs["image_size"] = np.asarray(lay.image_size, dtype=np.int64)
        f.attrs["category_names"] = list(lay.categories)
        f.attrs["category_synsets"] = list(lay.categories.values())
        f.attrs["split_names"] = list(SPLITS)
        f.attrs["source"] = lay.source
        if lay.part_names:
            f.attrs["part_names"] = list(lay.part_names)
            f.attrs["part_thin"] = np.array([n in lay.thin_parts for n in lay.part_names])
        for key, value in lay.extra_attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        f.create_dataset("stats/sum", data=self._sum)
        f.create_dataset("stats/sumsq", data=self._sumsq)
        f.create_dataset("stats/count", data=self._npoints)
        f.attrs["complete"] = True
        f.close()
        os.replace(self.partial_path, self.path)

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self._file.close()
        finally:
            self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> ShapeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_dataset_file(path: str | os.PathLike) -> h5py.File:
    """Open a pvd HDF5 file read-only, with a one-line UserError if it is not a usable one."""
    path = Path(path)
    if not path.is_file():
        hint = " (an interrupted conversion left a .partial file)" if path.with_name(path.name + ".partial").exists() else ""
        raise UserError(f"no dataset file at {path}{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path} is not a readable HDF5 file ({e})") from None
    version = f.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        f.close()
        raise UserError(f"{path}: schema_version {version} is not the supported {SCHEMA_VERSION}")
    if not f.attrs.get("complete", False):
        f.close()
        raise UserError(f"{path}: the file is incomplete (its conversion did not finish)")
    return f


def _str_list(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@dataclass
class FileInfo:
    """The small per-file tables a reader needs, loaded once."""

    num_points: int
    num_train_points: int
    num_views: int
    categories: list[str]
    synsets: list[str]
    category: np.ndarray  # (N,) int
    split: np.ndarray  # (N,) int
    has_images: bool

    @classmethod
    def read(cls, f: h5py.File) -> FileInfo:
        return cls(
            num_points=int(f.attrs["num_points"]),
            num_train_points=int(f.attrs["num_train_points"]),
            num_views=int(f.attrs["num_views"]),
            categories=_str_list(f.attrs["category_names"]),
            synsets=_str_list(f.attrs["category_synsets"]),
            category=f["category"][:].astype(np.int64),
            split=f["split"][:].astype(np.int64),
            has_images="images" in f,
        )

    def category_ids(self, categories: list[str] | None) -> list[int]:
        """Indices of the named categories (names or synset ids); all when None."""
        if categories is None:
            return list(range(len(self.categories)))
        ids = []
        for name in categories:
            if name in self.categories:
                ids.append(self.categories.index(name))
            elif name in self.synsets:
                ids.append(self.synsets.index(name))
            else:
                raise UserError(f"category {name!r} is not in this file (it has: {', '.join(self.categories)})")
        return ids


def read_mesh(f: h5py.File, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored mesh of shape ``row``: (vertices (Nv, 3) float32, faces (Nf, 3) int32)."""
    if "mesh" not in f:
        raise UserError(f"{f.filename} stores no meshes")
    v0, v1 = f["mesh/vertex_offset"][row : row + 2]
    f0, f1 = f["mesh/face_offset"][row : row + 2]
    return f["mesh/vertices"][v0:v1], f["mesh/faces"][f0:f1]


def add_embeddings(path: str | os.PathLike, name: str, embeddings: np.ndarray) -> None:
    """Store precomputed image embeddings (N, V, D) or (N, D) as ``embeddings/<name>``.

    For users who compute CLIP (or other) features elsewhere. Replaces an existing entry.
    """
    with open_dataset_file(path) as f:
        num_shapes, num_views = int(f.attrs["num_shapes"]), int(f.attrs["num_views"])
    embeddings = np.asarray(embeddings)
    if embeddings.ndim not in (2, 3) or embeddings.shape[0] != num_shapes or (embeddings.ndim == 3 and embeddings.shape[1] != num_views):
        raise UserError(f"embeddings must be ({num_shapes}, {num_views}, D) or ({num_shapes}, D), got {embeddings.shape}")
    with h5py.File(path, "r+") as f:
        # An interrupted write must not leave a file that looks complete.
        f.attrs["complete"] = False
        f.flush()
        key = f"embeddings/{name}"
        if key in f:
            del f[key]
        f.create_dataset(key, data=embeddings, chunks=(1, *embeddings.shape[1:]), **_COMPRESSION)
        f.attrs["complete"] = True
