"""Atomic file output: every file the project writes appears complete or not at all.

A writer fills a hidden temporary file beside the target (same directory, hence same file
system, so the final ``os.replace`` is an atomic rename) and the rename happens only when the
writer finished without an exception; on any exception, KeyboardInterrupt included, the
temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import trimesh

from pvd.errors import UserError

POINT_FORMATS = (".ply", ".npy")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    The temporary name is ``.{name}.{uuid}.partial`` in ``path``'s directory (hidden, unique
    per call, so concurrent writers never share one). No parent directory is created. If the
    body raises (anything, KeyboardInterrupt included), or leaves no file at the temporary
    path, the temporary file is removed, ``path`` is not touched and the exception propagates.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_points(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write (N, 3) float points atomically as ``.ply`` (binary little-endian x y z, float32 values)
    or ``.npy`` ((N, 3) float32), chosen by the suffix; another suffix raises UserError."""
    path = Path(path)
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"save_points expects (N, 3) points, got shape {points.shape}")
    suffix = path.suffix.lower()
    if suffix not in POINT_FORMATS:
        raise UserError(f"{path}: unsupported point file type {suffix!r} (use {' or '.join(POINT_FORMATS)})")
    if not path.parent.is_dir():
        raise UserError(f"no directory {path.parent} for {path.name}")
    with atomic_path(path) as tmp:
        if suffix == ".ply":  # trimesh's exporter: binary little-endian, one vertex element
            tmp.write_bytes(trimesh.PointCloud(points.astype(np.float32)).export(file_type="ply", encoding="binary"))
        else:
            # Through a file object: np.save(name) would append ".npy" to the temporary name.
            with open(tmp, "wb") as f:
                np.save(f, points.astype(np.float32), allow_pickle=False)
