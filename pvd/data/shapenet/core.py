"""The Core.v2 reader: ShapeNetCore.v2 meshes, sampled and rendered into shapes.

The tree is ``<root>/<synset>/<id>/models/model_normalized.obj``; points and normals are
sampled on the surface and views rendered from R2N2-like cameras. The mesh cleaning,
sampling and rendering here, and :class:`MeshOptions`, serve :mod:`.folder`'s meshes too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvd.data.cameras import CameraSet, orbit_cameras, r2n2_like_views
from pvd.data.hdf5 import ShapeRecord, WriterLayout
from pvd.data.shapenet.categories import DEFAULT_SPLIT_RATIOS, hash_split, model_seed, resolve_categories
from pvd.data.shapenet.pc15k import PC15K_POINTS
from pvd.data.shapenet.tasks import Converted, CorruptInput, Plan, Skip, Task, short
from pvd.data.shapenet.trees import check_root, layout_categories, source_attrs, subdirs, synset_dirs
from pvd.errors import UserError
from pvd.metrics.volume import sample_mesh_surface

CORE_LAYOUT = "ShapeNetCore.v2: <root>/<synset>/<model_id>/models/model_normalized.obj"


def load_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Clean triangle mesh of a file: (vertices (Nv, 3) float64, faces (Nf, 3) int64).

    Every object, group and scene node is kept (scene transforms applied); materials and
    textures are not read, so missing .mtl or image files do not matter. Vertices at the
    same position are merged, then degenerate (zero-area) and duplicate faces (the same
    three vertices, either winding) and unreferenced vertices are dropped. Open surfaces are
    kept. Raises CorruptInput for unreadable files and meshes with no area left.
    """
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False, skip_materials=True)
        if isinstance(loaded, trimesh.Scene):
            parts = [g for g in loaded.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
        else:
            parts = [loaded] if isinstance(loaded, trimesh.Trimesh) else []
        vertex_list, face_list, offset = [], [], 0
        for part in parts:
            v = np.asarray(part.vertices, dtype=np.float64).reshape(-1, 3)
            f = np.asarray(part.faces, dtype=np.int64).reshape(-1, 3)
            if len(f) and (f.min() < 0 or f.max() >= len(v)):
                raise ValueError("face indices out of range")
            vertex_list.append(v)
            face_list.append(f + offset)
            offset += len(v)
    except CorruptInput:
        raise
    except Exception as e:  # trimesh raises many kinds of exceptions on malformed files
        raise CorruptInput("unreadable mesh", short(e)) from None
    if not face_list or sum(len(f) for f in face_list) == 0:
        raise CorruptInput("empty mesh", "no faces")
    vertices, faces = np.concatenate(vertex_list), np.concatenate(face_list)
    faces = faces[np.isfinite(vertices[faces]).all(axis=(1, 2))]
    vertices, inverse = np.unique(vertices, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[faces]
    if len(faces):
        extent = float(np.linalg.norm(np.ptp(vertices[np.unique(faces)], axis=0)))
        tri = vertices[faces]
        area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        faces = faces[area2 > 1e-12 * max(extent, 1e-300) ** 2]
        _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
        faces = faces[np.sort(first)]
    if len(faces) == 0:
        raise CorruptInput("empty mesh", "no face with a non-zero area")
    used, faces = np.unique(faces, return_inverse=True)
    return vertices[used], faces.reshape(-1, 3)


def normalize_bbox(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(shift (3,), scale) putting the bounding-box centre at 0 and its diagonal at 1."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    diagonal = float(np.linalg.norm(hi - lo))
    if not diagonal > 0:
        raise CorruptInput("zero extent", "all points coincide")
    return (lo + hi) / 2, diagonal


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted surface samples (P, 3) and their face normals (P, 3), float32
    (:func:`pvd.metrics.volume.sample_mesh_surface`, keyed to the shape's seed). Normals follow the
    file's face winding (ShapeNet's is not always consistent)."""
    points, normals = sample_mesh_surface(vertices, faces, num_points, [seed, 1])
    return points.astype(np.float32), normals.astype(np.float32)


def render_r2n2_like(vertices: np.ndarray, faces: np.ndarray, num_views: int, size: int, seed: int, supersample: int = 1) -> tuple[np.ndarray, CameraSet]:
    """(V, size, size, 4) uint8 renders from R2N2-like random cameras seeded by ``seed``."""
    from pvd.data.render import render_views

    views = r2n2_like_views(np.random.default_rng([seed, 2]), num_views)
    cameras = orbit_cameras(views, size, size)
    images = render_views(vertices, faces, cameras.intrinsics, cameras.extrinsics, size, size, supersample=supersample)
    return images, cameras


# ShapeNetCore.v2's model_normalized.obj: bounding box centred at the origin, diagonal 1. A mesh
# further off than this (another ShapeNet version, a user's own export) is reported.
FRAME_TOLERANCE = 0.02


def frame_offset(vertices: np.ndarray) -> str | None:
    """Why ``vertices`` are not in the normalised frame (centre off by more than FRAME_TOLERANCE x the
    diagonal, or diagonal off 1 by more than FRAME_TOLERANCE), or None when they are."""
    shift, diagonal = normalize_bbox(vertices)
    off = float(np.linalg.norm(shift))
    if off <= FRAME_TOLERANCE * diagonal and abs(diagonal - 1) <= FRAME_TOLERANCE:
        return None
    return f"box centre {np.round(shift, 3).tolist()}, diagonal {diagonal:.3g}"


def convert_mesh(task: Task) -> Converted:
    """A ``mesh`` task: the mesh cleaned, normalised if asked (else its frame checked if asked),
    sampled and rendered."""
    vertices, faces = load_mesh(task.path)
    off_frame = frame_offset(vertices) if task.check_frame and not task.normalize else None
    if task.normalize:
        shift, scale = normalize_bbox(vertices)
        vertices = (vertices - shift) / scale
    points, normals = sample_mesh(vertices, faces, task.num_points, task.seed)
    record = ShapeRecord(model_id=task.model_id, category=task.category, split=task.split, points=points)
    if task.normals:
        record.normals = normals
    if task.meshes:
        record.vertices, record.faces = vertices.astype(np.float32), faces.astype(np.int32)
    if task.num_views:
        record.images, record.cameras = render_r2n2_like(vertices, faces, task.num_views, task.image_size, task.seed, task.supersample)
    return Converted(record, off_frame=None if off_frame is None else f"{task.path}: {off_frame}")


def _is_core(root: Path) -> bool:
    for synset in synset_dirs(root):
        if any((m / "models" / "model_normalized.obj").is_file() for m in subdirs(synset)[:20]):
            return True
    return False


@dataclass(frozen=True)
class MeshOptions:
    """How meshes are turned into shapes (``core`` and ``folder``)."""

    num_points: int = PC15K_POINTS
    num_views: int = 24
    image_size: int = 137
    meshes: bool = True
    supersample: int = 1
    split_ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS

    def check(self) -> None:
        if self.num_points < 3:
            raise UserError(f"--points must be at least 3, got {self.num_points}")
        if self.num_views < 0:
            raise UserError(f"--views must be >= 0, got {self.num_views}")
        if self.num_views and self.image_size < 8:
            raise UserError(f"--image-size must be at least 8, got {self.image_size}")
        if self.supersample < 1:
            raise UserError(f"--supersample must be >= 1, got {self.supersample}")


def plan_core(
    root: str | os.PathLike,
    options: MeshOptions = MeshOptions(),
    categories: str | Sequence[str] | None = None,
    limit: int | None = None,
    normalize: bool = False,
) -> Plan:
    """List a ShapeNetCore.v2 mesh tree: see the module docstring. Its meshes are taken as they are
    and each is checked against the v2 frame (:func:`frame_offset`); ``normalize``: rescale every
    mesh to that frame instead (a tree of unnormalised meshes)."""
    options.check()
    root = check_root(root, CORE_LAYOUT, _is_core)
    synsets = resolve_categories(categories, [p.name for p in synset_dirs(root)], root)
    names = layout_categories(synsets)
    name_of = {s: n for n, s in names.items()}
    tasks, skipped = [], []
    for synset in synsets:
        models = subdirs(root / synset)
        for model in models[:limit] if limit else models:
            path = model / "models" / "model_normalized.obj"
            if not path.is_file():
                skipped.append(Skip(str(model), "missing model file", "no models/model_normalized.obj"))
                continue
            tasks.append(mesh_task(path, model.name, name_of[synset], model.name, options, normalize=normalize,
                                   check_frame=True))
    source, extra = source_attrs("core", root, {**options_dict(options), "categories": synsets, "limit": limit,
                                                "normalize": normalize})
    return Plan(mesh_layout(names, options, points_only=False, source=source, extra=extra), tasks, skipped)


def mesh_task(path: Path, model_id: str, category: str, key: str, options: MeshOptions, normalize: bool, kind: str = "mesh",
              check_frame: bool = False) -> Task:
    """The task converting one file under ``options``, its split and seed hashed from ``key``."""
    return Task(
        kind=kind,
        path=str(path),
        model_id=model_id,
        category=category,
        split=hash_split(key, options.split_ratios),
        seed=model_seed(key),
        num_points=options.num_points,
        num_views=options.num_views if kind == "mesh" else 0,
        image_size=options.image_size,
        supersample=options.supersample,
        meshes=options.meshes and kind == "mesh",
        normals=kind == "mesh",
        normalize=normalize,
        check_frame=check_frame,
    )


def options_dict(options: MeshOptions) -> dict:
    """``options`` as recorded in the file's attributes."""
    return {
        "points": options.num_points,
        "views": options.num_views,
        "image_size": options.image_size,
        "meshes": options.meshes,
        "supersample": options.supersample,
        "split_ratios": list(options.split_ratios),
    }


def mesh_layout(names: dict[str, str], options: MeshOptions, points_only: bool, source: str, extra: dict) -> WriterLayout:
    """The file layout for shapes converted under ``options`` (points only: no views, normals or meshes)."""
    views = 0 if points_only else options.num_views
    return WriterLayout(
        categories=names,
        num_points=options.num_points,
        num_views=views,
        image_size=(options.image_size, options.image_size) if views else (0, 0),
        normals=not points_only,
        meshes=options.meshes and not points_only,
        source=source,
        extra_attrs=extra,
    )
