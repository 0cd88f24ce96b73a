"""The folder reader: a user's own meshes or point clouds, one subfolder per category.

The tree is ``<root>/<category>/**/<shape>.{obj,ply,off,glb,stl,npy}``, meshes or point
clouds, normalised like ShapeNet v2 (bounding-box centre at the origin, diagonal 1). Meshes
go the way of :mod:`.core`'s; a tree with any point cloud gives a points-only file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pvd.data.hdf5 import ShapeRecord
from pvd.data.shapenet.core import MeshOptions, mesh_layout, mesh_task, normalize_bbox, options_dict
from pvd.data.shapenet.pc15k import load_point_file
from pvd.data.shapenet.tasks import Converted, CorruptInput, Plan, Skip, Task, short
from pvd.data.shapenet.trees import check_root, source_attrs, subdirs
from pvd.errors import UserError

MESH_SUFFIXES = (".obj", ".ply", ".off", ".glb", ".stl")
POINT_SUFFIXES = (".npy",)
FOLDER_LAYOUT = "one subfolder per category holding meshes (.obj .ply .off .glb .stl) or point clouds (.npy, .ply)"


def convert_points(task: Task) -> Converted:
    """A ``points`` task: the cloud normalised if asked and drawn to the task's point count."""
    if task.path.endswith(".npy"):
        points = load_point_file(task.path)
    else:
        import trimesh

        try:
            cloud = trimesh.load(task.path, process=False)
            points = np.asarray(cloud.vertices, dtype=np.float32).reshape(-1, 3)
        except Exception as e:
            raise CorruptInput("unreadable file", short(e)) from None
        if len(points) == 0:
            raise CorruptInput("wrong shape", "no points")
        if not np.isfinite(points).all():
            raise CorruptInput("non-finite values", "NaN or infinity in the points")
    if task.normalize:
        shift, scale = normalize_bbox(points.astype(np.float64))
        points = ((points - shift) / scale).astype(np.float32)
    rng = np.random.default_rng([task.seed, 3])
    n, p = len(points), task.num_points
    if n >= p:
        chosen = rng.choice(n, p, replace=False)
    else:  # every point once, the rest drawn with replacement, in random order
        chosen = rng.permutation(np.concatenate([np.arange(n), rng.integers(0, n, p - n)]))
    record = ShapeRecord(model_id=task.model_id, category=task.category, split=task.split, points=points[chosen])
    return Converted(record, upsampled=n < p)


def _ply_has_faces(path: Path) -> bool:
    """Whether a PLY header declares faces (unreadable headers count as meshes: read later)."""
    try:
        with open(path, "rb") as f:
            header = f.read(65536)
    except OSError:
        return True
    end = header.find(b"end_header")
    if not header.startswith(b"ply") or end < 0:
        return True
    match = re.search(rb"element\s+face\s+(\d+)", header[:end])
    return bool(match) and int(match.group(1)) > 0


def plan_folder(
    root: str | os.PathLike,
    options: MeshOptions = MeshOptions(),
    keep_scale: bool = False,
    categories: str | Sequence[str] | None = None,
    limit: int | None = None,
) -> Plan:
    """List a user's folder tree: one subfolder per category, shapes anywhere below it."""
    options.check()
    suffixes = MESH_SUFFIXES + POINT_SUFFIXES

    def shapes_in(folder: Path) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / n for n in filenames if n.lower().endswith(suffixes) and not n.startswith(".")]
        return sorted(found)

    root = check_root(root, f"a folder tree: {FOLDER_LAYOUT}", lambda p: any(shapes_in(d) for d in subdirs(p)))
    folders = [d for d in subdirs(root) if shapes_in(d)]
    available = [d.name for d in folders]
    if categories is not None:
        wanted = [t.strip() for t in (categories.split(",") if isinstance(categories, str) else categories) if t.strip()]
        missing = [w for w in wanted if w not in available]
        if missing:
            raise UserError(f"no category folder {missing[0]!r} with shapes in {root} (it has: {', '.join(available)})")
        folders = [d for d in folders if d.name in wanted]
    skipped = [
        Skip(str(p), "not in a category folder", "shapes must sit in a subfolder named after their category")
        for p in sorted(root.iterdir())
        if p.is_file() and p.name.lower().endswith(suffixes)
    ]
    entries = []  # (path, category, model_id, kind)
    for folder in folders:
        seen: dict[str, Path] = {}
        files = shapes_in(folder)
        for path in files[:limit] if limit else files:
            model_id = path.relative_to(folder).with_suffix("").as_posix()
            if model_id in seen:
                skipped.append(Skip(str(path), "duplicate model id", f"also {seen[model_id].name}"))
                continue
            seen[model_id] = path
            suffix = path.suffix.lower()
            is_points = suffix in POINT_SUFFIXES or (suffix == ".ply" and not _ply_has_faces(path))
            entries.append((path, folder.name, model_id, "points" if is_points else "mesh"))
    point_inputs = [e for e in entries if e[3] == "points"]
    notes = []
    if point_inputs and (options.num_views or options.meshes):
        example = point_inputs[0][0].relative_to(root)
        notes.append(
            f"note: {len(point_inputs)} inputs are point clouds (e.g. {example}), so the file has no images, cameras, normals or meshes"
        )
    points_only = bool(point_inputs)
    names = {f.name: f.name for f in folders}
    tasks = []
    for path, category, model_id, kind in entries:
        task = mesh_task(path, model_id, category, f"{category}/{model_id}", options, normalize=not keep_scale, kind=kind)
        if points_only:
            task = replace(task, num_views=0, meshes=False, normals=False)
        tasks.append(task)
    source, extra = source_attrs("folder", root, {**options_dict(options), "keep_scale": keep_scale, "categories": list(names), "limit": limit})
    extra["normalization"] = "none (--keep-scale)" if keep_scale else "bbox centre at origin, bbox diagonal 1"
    return Plan(mesh_layout(names, options, points_only, source, extra), tasks, skipped, notes)
