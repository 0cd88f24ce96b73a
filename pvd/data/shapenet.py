"""Readers that turn ShapeNet trees, and a user's own folders, into pvd's one HDF5 schema.

Three sources (the layouts are those of the published archives):

* ``pc15k``: ShapeNetCore.v2.PC15k (PointFlow), ``<root>/<synset>/{train,val,test}/<id>.npy``
  with (15000, 3) points each; the split comes from the folder. Optionally joined, by model
  id, with the 3D-R2N2 renderings (ShapeNetRendering):
  ``<r2n2>/<synset>/<id>/rendering/{00..23}.png`` (137 x 137 RGBA), ``renderings.txt`` and
  ``rendering_metadata.txt``; cameras come from :func:`pvd.data.cameras.r2n2_cameras`.
* ``core``: ShapeNetCore.v2 meshes, ``<root>/<synset>/<id>/models/model_normalized.obj``;
  points and normals are sampled on the surface and views rendered from R2N2-like cameras.
* ``folder``: ``<root>/<category>/**/<shape>.{obj,ply,off,glb,stl,npy}``, meshes or point
  clouds, normalised like ShapeNet v2 (bounding-box centre at the origin, diagonal 1).

Frames: R2N2 rendered ShapeNetCore *v1* models while PC15k sampled *v2* models. Whether the two
frames agree could not be checked when this module was written (no real ShapeNet data was
available; the tests use fabricated trees). Every joined shape is therefore measured: the
fraction of its points that project inside its R2N2 silhouettes is printed in the summary
and stored in the file's attributes, so check it on the real data before training on it.

Every skip (a corrupt file, a shape without renderings, ...) is named with its reason in the
summary; ``strict=True`` makes any skip fatal. The output is deterministic: shapes are
written in sorted order, random draws are seeded from the model id, and worker processes
return results in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pvd.data.cameras import CameraSet, orbit_cameras, project, r2n2_cameras, r2n2_like_views
from pvd.data.hdf5 import SPLITS, ShapeRecord, ShapeWriter, WriterLayout
from pvd.data.pool import ordered_map
from pvd.errors import UserError

# --- categories -------------------------------------------------------------------------

# The 13 categories of 3D-R2N2 carry R2N2's names; the other ShapeNetCore.v2 synsets carry
# PointFlow's names (its loader's synsetid_to_cate), so that PC15k users find theirs.
SYNSET_NAMES: dict[str, str] = {
    # 3D-R2N2's 13
    "02691156": "airplane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car",
    "03001627": "chair",
    "03211117": "display",
    "03636649": "lamp",
    "03691459": "loudspeaker",
    "04090263": "rifle",
    "04256520": "sofa",
    "04379243": "table",
    "04401088": "telephone",
    "04530566": "watercraft",
    # the rest of ShapeNetCore.v2 (55 synsets in all)
    "02747177": "can",
    "02773838": "bag",
    "02801938": "basket",
    "02808440": "bathtub",
    "02818832": "bed",
    "02843684": "birdhouse",
    "02871439": "bookshelf",
    "02876657": "bottle",
    "02880940": "bowl",
    "02924116": "bus",
    "02942699": "camera",
    "02946921": "tin_can",
    "02954340": "cap",
    "02992529": "cellphone",
    "03046257": "clock",
    "03085013": "keyboard",
    "03207941": "dishwasher",
    "03261776": "earphone",
    "03325088": "faucet",
    "03337140": "file",
    "03467517": "guitar",
    "03513137": "helmet",
    "03593526": "jar",
    "03624134": "knife",
    "03642806": "laptop",
    "03710193": "mailbox",
    "03759954": "microphone",
    "03761084": "microwave",
    "03790512": "motorcycle",
    "03797390": "mug",
    "03928116": "piano",
    "03938244": "pillow",
    "03948459": "pistol",
    "03991062": "pot",
    "04004475": "printer",
    "04074963": "remote_control",
    "04099429": "rocket",
    "04225987": "skateboard",
    "04330267": "stove",
    "04460130": "tower",
    "04468005": "train",
    "04554684": "washer",
}
# Other names in use for the same synsets (PointFlow's for R2N2's categories, and common ones).
CATEGORY_ALIASES: dict[str, str] = {
    "monitor": "03211117",
    "speaker": "03691459",
    "vessel": "04530566",
    "boat": "04530566",
    "plane": "02691156",
    "aeroplane": "02691156",
}
_SYNSET_RE = re.compile(r"^\d{8}$")


def category_name(synset: str) -> str:
    """The category name of a synset id; unknown synsets keep the id as their name."""
    return SYNSET_NAMES.get(synset, synset)


def resolve_categories(spec: str | Sequence[str] | None, available: Sequence[str], root: Path) -> list[str]:
    """The synsets chosen by ``spec`` (names, aliases or synset ids), in ``available`` order.

    spec: comma-separated string or list; None selects every available synset.
    Raises UserError for an unknown name or a category that ``root`` does not hold.
    """
    if spec is None:
        return list(available)
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not tokens:
        raise UserError("--categories is empty")
    by_name = {name: synset for synset, name in SYNSET_NAMES.items()} | CATEGORY_ALIASES
    wanted = []
    for token in tokens:
        synset = token if _SYNSET_RE.match(token) else by_name.get(token.lower())
        if synset is None:
            raise UserError(f"unknown category {token!r} (use a name such as airplane or chair, or an 8-digit synset id)")
        if synset not in available:
            raise UserError(f"category {token!r} (synset {synset}) has no folder in {root}")
        wanted.append(synset)
    return [s for s in available if s in wanted]


# --- deterministic splits and seeds -------------------------------------------------------

DEFAULT_SPLIT_RATIOS = (0.7, 0.1, 0.2)  # ShapeNet's official train/val/test proportions


def parse_split_ratios(text: str) -> tuple[float, float, float]:
    """'70,10,20' or '0.7,0.1,0.2' -> normalised (train, val, test) fractions."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise UserError(f"--split-ratios must be three non-negative numbers such as 70,10,20, got {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def hash_split(key: str, ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS) -> str:
    """Split of a shape from a hash of its key (the model id): stable across runs and trees."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    if u < ratios[0]:
        return "train"
    return "val" if u < ratios[0] + ratios[1] else "test"


def model_seed(key: str) -> int:
    """Per-shape random seed derived from its key (CRC-32 of the UTF-8 bytes)."""
    return zlib.crc32(key.encode())


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """A shape (or file) that was not converted: ``reason`` is a short class, ``detail`` free."""

    path: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Converted:
    """One converted shape and what the summary counts about it."""

    record: ShapeRecord
    upsampled: bool = False
    silhouette: tuple[float, float] | None = None  # R2N2 join: (points inside, IoU)


class CorruptInput(Exception):
    """A file inside a valid tree that cannot be used; the shape is skipped (see :class:`Skip`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Summary:
    """What a conversion read and skipped; ``str()`` is the report printed at the end."""

    out: str
    read: int = 0
    per_split: Counter = field(default_factory=Counter)
    per_category: Counter = field(default_factory=Counter)
    skipped: list[Skip] = field(default_factory=list)
    upsampled: int = 0
    silhouettes: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_listed: int = 20

    def frame_check(self) -> dict[str, float]:
        """R2N2 join statistics (empty without a join)."""
        if not self.silhouettes:
            return {}
        s = np.asarray(self.silhouettes)
        return {
            "r2n2_points_in_silhouette_mean": float(s[:, 0].mean()),
            "r2n2_points_in_silhouette_min": float(s[:, 0].min()),
            "r2n2_silhouette_iou_mean": float(s[:, 1].mean()),
        }

    def __str__(self) -> str:
        splits = ", ".join(f"{s} {self.per_split[s]}" for s in SPLITS)
        lines = [f"read {self.read} shapes ({splits}) in {len(self.per_category)} categories -> {self.out}"]
        if self.per_category:
            lines.append("  per category: " + ", ".join(f"{k} {v}" for k, v in self.per_category.items()))
        if self.upsampled:
            lines.append(f"upsampled {self.upsampled} point clouds that had fewer points than requested (drawn with replacement)")
        check = self.frame_check()
        if check:
            inside = check["r2n2_points_in_silhouette_mean"]
            lines.append(
                f"R2N2 frame check: {100 * inside:.1f}% of each shape's points project inside its silhouettes on average "
                f"(worst shape {100 * check['r2n2_points_in_silhouette_min']:.1f}%, silhouette IoU {check['r2n2_silhouette_iou_mean']:.2f})"
            )
            if inside < 0.9:
                lines.append("WARNING: the R2N2 renderings and the point clouds do not seem to share a frame (v1 vs v2?)")
        lines.extend(self.notes)
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            for reason, n in sorted(Counter(s.reason for s in self.skipped).items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {n:6d}  {reason}")
            shown = self.skipped[: self.max_listed]
            lines.append(f"first {len(shown)} skipped:" if len(shown) < len(self.skipped) else "skipped:")
            lines.extend(f"  {s}" for s in shown)
        else:
            lines.append("skipped 0")
        return "\n".join(lines)


# --- tasks: one per shape, processed in worker processes ------------------------------------


@dataclass(frozen=True)
class Task:
    """Everything needed to convert one shape (picklable, processed by :func:`process_task`)."""

    kind: str  # "pc15k", "mesh" or "points"
    path: str
    model_id: str
    category: str
    split: str
    seed: int
    num_points: int
    rendering: str | None = None  # pc15k: the R2N2 rendering folder to join
    num_views: int = 0
    image_size: int = 0
    supersample: int = 1
    meshes: bool = False
    normals: bool = False
    normalize: bool = True


@dataclass
class Plan:
    """A conversion before it runs: the file layout, the tasks, and skips found while listing."""

    layout: WriterLayout
    tasks: list[Task]
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


R2N2_VIEWS = 24
PC15K_POINTS = 15000
_SPLIT_DIRS = set(SPLITS)
MESH_SUFFIXES = (".obj", ".ply", ".off", ".glb", ".stl")
POINT_SUFFIXES = (".npy",)


def process_task(task: Task) -> Converted | Skip:
    """Convert one shape; a corrupt input becomes a :class:`Skip` (bugs still raise)."""
    try:
        if task.kind == "pc15k":
            return _convert_pc15k(task)
        if task.kind == "mesh":
            return _convert_mesh(task)
        if task.kind == "points":
            return _convert_points(task)
    except CorruptInput as e:
        return Skip(task.path, e.reason, e.detail)
    raise ValueError(f"unknown task kind {task.kind!r}")


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def load_point_file(path: str | os.PathLike, num_points: int | None = None) -> np.ndarray:
    """(N, 3) float32 points of a .npy file; raises CorruptInput if unusable.

    num_points: the exact N required (PC15k files hold 15000), or None for any N >= 1.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError, ... on bad files
        raise CorruptInput("unreadable file", _short(e)) from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.shape[1] != 3 or len(array) == 0 or array.dtype.kind not in "fiu":
        raise CorruptInput("wrong shape", f"{getattr(array, 'shape', '?')} {getattr(array, 'dtype', '')}, expected (N, 3) numbers")
    if num_points is not None and len(array) != num_points:
        raise CorruptInput("wrong shape", f"{array.shape}, expected ({num_points}, 3)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise CorruptInput("non-finite values", "NaN or infinity in the points")
    return array


def load_r2n2_rendering(folder: str | os.PathLike, num_views: int = R2N2_VIEWS, size: int = 137) -> tuple[np.ndarray, CameraSet]:
    """Images (V, size, size, 4) uint8 RGBA and cameras of one R2N2 ``rendering`` folder.

    The PNGs are those listed in ``renderings.txt`` (``00.png`` ... when that file is
    missing), in order; ``rendering_metadata.txt`` must hold one line of five numbers per
    image. Raises CorruptInput if anything is missing or malformed.
    """
    folder = Path(folder)
    names_file, meta_file = folder / "renderings.txt", folder / "rendering_metadata.txt"
    try:
        if names_file.exists():
            names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        else:
            names = [f"{i:02d}.png" for i in range(num_views)]
        meta_lines = [line.split() for line in meta_file.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptInput("bad R2N2 metadata", _short(e)) from None
    if len(names) != num_views:
        raise CorruptInput("bad R2N2 metadata", f"renderings.txt lists {len(names)} images, expected {num_views}")
    if len(meta_lines) != num_views:
        raise CorruptInput("bad R2N2 metadata", f"rendering_metadata.txt has {len(meta_lines)} lines, expected {num_views}")
    if any(len(row) != 5 for row in meta_lines):
        bad = next(i for i, row in enumerate(meta_lines) if len(row) != 5)
        raise CorruptInput("bad R2N2 metadata", f"line {bad + 1} of rendering_metadata.txt has {len(meta_lines[bad])} columns, expected 5")
    try:
        metadata = np.array(meta_lines, dtype=np.float64)
    except ValueError as e:
        raise CorruptInput("bad R2N2 metadata", _short(e)) from None
    if not np.isfinite(metadata).all():
        raise CorruptInput("bad R2N2 metadata", "non-finite numbers")
    try:
        cameras = r2n2_cameras(metadata, size, size)
    except ValueError as e:
        raise CorruptInput("bad R2N2 metadata", str(e)) from None

    from PIL import Image

    images = np.empty((num_views, size, size, 4), dtype=np.uint8)
    for i, name in enumerate(names):
        try:
            with Image.open(folder / name) as im:
                im.load()
                rgba = im.convert("RGBA")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
            raise CorruptInput("unreadable PNG", f"{name}: {_short(e)}") from None
        if rgba.size != (size, size):
            raise CorruptInput("wrong image size", f"{name} is {rgba.size[0]}x{rgba.size[1]}, expected {size}x{size}")
        images[i] = np.asarray(rgba)
    return images, cameras


def silhouette_agreement(points: np.ndarray, images: np.ndarray, cameras: CameraSet) -> tuple[float, float]:
    """How well points (N, 3) match the alpha silhouettes of images (V, H, W, 4).

    Returns (fraction of (point, view) projections landing on a pixel with alpha > 0,
    mean over views of the IoU between the pixels hit by points and the alpha > 0 pixels).
    """
    h, w = images.shape[1:3]
    uv, depth = project(points[None].astype(np.float64), cameras.intrinsics.astype(np.float64), cameras.extrinsics.astype(np.float64))
    col, row = np.floor(uv[..., 0]).astype(np.int64), np.floor(uv[..., 1]).astype(np.int64)
    on = (depth > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    inside, ious = 0, []
    for v in range(len(images)):
        mask = images[v, ..., 3] > 0
        hit = np.zeros((h, w), dtype=bool)
        hit[row[v][on[v]], col[v][on[v]]] = True
        inside += int(mask[row[v][on[v]], col[v][on[v]]].sum())
        union = (hit | mask).sum()
        ious.append((hit & mask).sum() / union if union else 0.0)
    return inside / (len(images) * len(points)), float(np.mean(ious))


def _convert_pc15k(task: Task) -> Converted | Skip:
    points = load_point_file(task.path, task.num_points)
    record = ShapeRecord(model_id=task.model_id, category=task.category, split=task.split, points=points)
    if task.rendering is None:
        return Converted(record)
    try:
        images, cameras = load_r2n2_rendering(task.rendering, task.num_views, task.image_size)
    except CorruptInput as e:
        return Skip(task.rendering, e.reason, e.detail)
    record.images, record.cameras = images, cameras
    return Converted(record, silhouette=silhouette_agreement(points, images, cameras))


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
        raise CorruptInput("unreadable mesh", _short(e)) from None
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
    """Area-weighted surface samples (P, 3) and their face normals (P, 3), float32.

    Normals follow the file's face winding (ShapeNet's is not always consistent).
    """
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    points, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=np.random.default_rng([seed, 1]))
    return np.asarray(points, np.float32), np.asarray(mesh.face_normals[face_index], np.float32)


def render_r2n2_like(vertices: np.ndarray, faces: np.ndarray, num_views: int, size: int, seed: int, supersample: int = 1) -> tuple[np.ndarray, CameraSet]:
    """(V, size, size, 4) uint8 renders from R2N2-like random cameras seeded by ``seed``."""
    from pvd.data.render import render_views

    views = r2n2_like_views(np.random.default_rng([seed, 2]), num_views)
    cameras = orbit_cameras(views, size, size)
    images = render_views(vertices, faces, cameras.intrinsics, cameras.extrinsics, size, size, supersample=supersample)
    return images, cameras


def _convert_mesh(task: Task) -> Converted:
    vertices, faces = load_mesh(task.path)
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
    return Converted(record)


def _convert_points(task: Task) -> Converted:
    if task.path.endswith(".npy"):
        points = load_point_file(task.path)
    else:
        import trimesh

        try:
            cloud = trimesh.load(task.path, process=False)
            points = np.asarray(cloud.vertices, dtype=np.float32).reshape(-1, 3)
        except Exception as e:
            raise CorruptInput("unreadable file", _short(e)) from None
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


# --- listing the trees --------------------------------------------------------------------


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _synset_dirs(root: Path) -> list[Path]:
    return [p for p in _subdirs(root) if _SYNSET_RE.match(p.name)]


def _looks_like(root: Path) -> str | None:
    """A guess at which known tree ``root`` is, from a few entries (for error hints)."""
    for synset in _synset_dirs(root)[:3]:
        if any((synset / s).is_dir() for s in SPLITS):
            return "a ShapeNetCore.v2.PC15k tree (use the pc15k command)"
        for model in _subdirs(synset)[:3]:
            if (model / "models" / "model_normalized.obj").is_file():
                return "a ShapeNetCore.v2 mesh tree (use the core command)"
            if (model / "rendering").is_dir():
                return "a ShapeNetRendering (3D-R2N2) tree (pass it to pc15k with --r2n2)"
            if (model / "model.obj").is_file():
                return "a ShapeNetCore.v1 tree (only v2's models/model_normalized.obj layout is read)"
    return None


def _check_root(root: str | os.PathLike, expected: str, valid) -> Path:
    """``root`` as a Path if ``valid(root)``; otherwise a UserError naming what was expected."""
    path = Path(root)
    if not path.exists():
        raise UserError(f"{path} does not exist (expected {expected})")
    if not path.is_dir():
        raise UserError(f"{path} is not a folder (expected {expected})")
    if valid(path):
        return path
    hint = _looks_like(path)
    if hint is not None:
        hint = f"; it looks like {hint}"
    else:
        inner = next((d for d in _subdirs(path) if valid(d)), None)
        hint = f"; its subfolder {inner.name!r} does: pass {inner}" if inner is not None else ""
    raise UserError(f"{path} does not look like {expected}{hint}")


PC15K_LAYOUT = "ShapeNetCore.v2.PC15k: <root>/<synset>/{train,val,test}/<model_id>.npy"
R2N2_LAYOUT = "ShapeNetRendering (3D-R2N2): <root>/<synset>/<model_id>/rendering/{renderings.txt,rendering_metadata.txt,00.png,...}"
CORE_LAYOUT = "ShapeNetCore.v2: <root>/<synset>/<model_id>/models/model_normalized.obj"
FOLDER_LAYOUT = "one subfolder per category holding meshes (.obj .ply .off .glb .stl) or point clouds (.npy, .ply)"


def _is_pc15k(root: Path) -> bool:
    return any(any((s / split).is_dir() for split in SPLITS) for s in _synset_dirs(root))


def _is_r2n2(root: Path) -> bool:
    for synset in _synset_dirs(root):
        # the first few models of a few synsets are enough to recognise the tree
        if any((m / "rendering").is_dir() for m in _subdirs(synset)[:20]):
            return True
    return False


def _is_core(root: Path) -> bool:
    for synset in _synset_dirs(root):
        if any((m / "models" / "model_normalized.obj").is_file() for m in _subdirs(synset)[:20]):
            return True
    return False


def _layout_categories(synsets: Sequence[str]) -> dict[str, str]:
    categories: dict[str, str] = {}
    for synset in synsets:
        name = category_name(synset)
        categories[name if name not in categories else synset] = synset
    return categories


def _source_attrs(kind: str, root: Path, options: dict) -> tuple[str, dict]:
    from pvd import __version__

    source = f"shapenet {kind} {root.resolve()}"
    extra = {"converter": "pvd.data.shapenet", "converter_version": __version__, "source_kind": kind, "source_root": str(root.resolve()), "options": json.dumps(options, sort_keys=True)}
    return source, extra


def plan_pc15k(
    root: str | os.PathLike,
    r2n2_root: str | os.PathLike | None = None,
    categories: str | Sequence[str] | None = None,
    limit: int | None = None,
) -> Plan:
    """List a PC15k tree (and an R2N2 tree to join): see the module docstring."""
    root = _check_root(root, PC15K_LAYOUT, _is_pc15k)
    r2n2 = _check_root(r2n2_root, R2N2_LAYOUT, _is_r2n2) if r2n2_root is not None else None
    synsets = resolve_categories(categories, [p.name for p in _synset_dirs(root)], root)
    names = _layout_categories(synsets)
    name_of = {s: n for n, s in names.items()}
    tasks, skipped, notes = [], [], []
    for synset in synsets:
        folder = root / synset
        splits = [s for s in SPLITS if (folder / s).is_dir()]
        if not splits:
            skipped.append(Skip(str(folder), "no split folders", "expected train/, val/ or test/"))
            continue
        entries: dict[str, tuple[str, Path]] = {}
        for split in splits:
            for path in sorted((folder / split).glob("*.npy")):
                if path.stem in entries:
                    skipped.append(Skip(str(path), "duplicate model id", f"also in {entries[path.stem][0]}/"))
                    continue
                entries[path.stem] = (split, path)
        ids = sorted(entries)[:limit] if limit else sorted(entries)
        if r2n2 is not None and not (r2n2 / synset).is_dir():
            notes.append(f"note: the R2N2 tree has no folder for {name_of[synset]} ({synset})")
        for model_id in ids:
            split, path = entries[model_id]
            rendering = None
            if r2n2 is not None:
                rendering = r2n2 / synset / model_id / "rendering"
                if not rendering.is_dir():
                    skipped.append(Skip(str(path), "no R2N2 rendering", f"no {rendering}"))
                    continue
            tasks.append(
                Task(
                    kind="pc15k",
                    path=str(path),
                    model_id=model_id,
                    category=name_of[synset],
                    split=split,
                    seed=model_seed(model_id),
                    num_points=PC15K_POINTS,
                    rendering=None if rendering is None else str(rendering),
                    num_views=R2N2_VIEWS if r2n2 is not None else 0,
                    image_size=137 if r2n2 is not None else 0,
                )
            )
    options = {"r2n2": None if r2n2 is None else str(r2n2.resolve()), "categories": synsets, "limit": limit}
    source, extra = _source_attrs("pc15k", root, options)
    if r2n2 is not None:
        source += f" + R2N2 {r2n2.resolve()}"
        extra["r2n2_root"] = str(r2n2.resolve())
        extra["frames_note"] = "R2N2 rendered ShapeNetCore v1, PC15k sampled v2; see r2n2_points_in_silhouette_*"
    layout = WriterLayout(
        categories=names,
        num_points=PC15K_POINTS,
        num_views=R2N2_VIEWS if r2n2 is not None else 0,
        image_size=(137, 137) if r2n2 is not None else (0, 0),
        source=source,
        extra_attrs=extra,
    )
    return Plan(layout, tasks, skipped, notes)


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
) -> Plan:
    """List a ShapeNetCore.v2 mesh tree: see the module docstring."""
    options.check()
    root = _check_root(root, CORE_LAYOUT, _is_core)
    synsets = resolve_categories(categories, [p.name for p in _synset_dirs(root)], root)
    names = _layout_categories(synsets)
    name_of = {s: n for n, s in names.items()}
    tasks, skipped = [], []
    for synset in synsets:
        models = _subdirs(root / synset)
        for model in models[:limit] if limit else models:
            path = model / "models" / "model_normalized.obj"
            if not path.is_file():
                skipped.append(Skip(str(model), "missing model file", "no models/model_normalized.obj"))
                continue
            tasks.append(_mesh_task(path, model.name, name_of[synset], model.name, options, normalize=False))
    source, extra = _source_attrs("core", root, {**_options_dict(options), "categories": synsets, "limit": limit})
    return Plan(_mesh_layout(names, options, points_only=False, source=source, extra=extra), tasks, skipped)


def _mesh_task(path: Path, model_id: str, category: str, key: str, options: MeshOptions, normalize: bool, kind: str = "mesh") -> Task:
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
    )


def _options_dict(options: MeshOptions) -> dict:
    return {
        "points": options.num_points,
        "views": options.num_views,
        "image_size": options.image_size,
        "meshes": options.meshes,
        "supersample": options.supersample,
        "split_ratios": list(options.split_ratios),
    }


def _mesh_layout(names: dict[str, str], options: MeshOptions, points_only: bool, source: str, extra: dict) -> WriterLayout:
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

    root = _check_root(root, f"a folder tree: {FOLDER_LAYOUT}", lambda p: any(shapes_in(d) for d in _subdirs(p)))
    folders = [d for d in _subdirs(root) if shapes_in(d)]
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
        task = _mesh_task(path, model_id, category, f"{category}/{model_id}", options, normalize=not keep_scale, kind=kind)
        if points_only:
            task = replace(task, num_views=0, meshes=False, normals=False)
        tasks.append(task)
    source, extra = _source_attrs("folder", root, {**_options_dict(options), "keep_scale": keep_scale, "categories": list(names), "limit": limit})
    extra["normalization"] = "none (--keep-scale)" if keep_scale else "bbox centre at origin, bbox diagonal 1"
    return Plan(_mesh_layout(names, options, points_only, source, extra), tasks, skipped, notes)


# --- running ------------------------------------------------------------------------------


def _quiet_trimesh() -> None:
    # trimesh logs a warning for every missing material or texture of a real OBJ file
    logging.getLogger("trimesh").setLevel(logging.ERROR)


def write_records(
    out: str | os.PathLike,
    layout: WriterLayout,
    results: Iterable[Converted | ShapeRecord | Skip],
    *,
    strict: bool = False,
    total: int | None = None,
    progress: bool = False,
    skipped: Sequence[Skip] = (),
    notes: Sequence[str] = (),
) -> Summary:
    """Write converted shapes into ``out`` atomically; returns the :class:`Summary`.

    ``skipped`` are skips found before conversion. With ``strict`` any skip raises UserError;
    so do zero converted shapes. On any exception (or interrupt) no file is left at ``out``.
    """
    summary = Summary(out=str(out), skipped=list(skipped), notes=list(notes))
    if strict and summary.skipped:
        raise UserError(f"--strict: {summary.skipped[0]}")
    with ShapeWriter(out, layout) as writer:
        for item in tqdm(results, total=total, disable=None if progress else True, unit="shape", dynamic_ncols=True):
            if isinstance(item, Skip):
                if strict:
                    raise UserError(f"--strict: {item}")
                summary.skipped.append(item)
                continue
            converted = item if isinstance(item, Converted) else Converted(item)
            writer.append(converted.record)
            summary.read += 1
            summary.per_split[converted.record.split] += 1
            summary.per_category[converted.record.category] += 1
            summary.upsampled += converted.upsampled
            if converted.silhouette is not None:
                summary.silhouettes.append(converted.silhouette)
        if summary.read == 0:
            counts = Counter(s.reason for s in summary.skipped)
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
            first = f"; first: {summary.skipped[0]}" if summary.skipped else ""
            raise UserError(f"no shapes could be read ({len(summary.skipped)} skipped: {reasons}{first})")
        layout.extra_attrs.update(summary.frame_check())
        layout.extra_attrs["skipped"] = len(summary.skipped)
        layout.extra_attrs["skip_reasons"] = json.dumps(dict(sorted(Counter(s.reason for s in summary.skipped).items())))
        layout.extra_attrs["upsampled"] = summary.upsampled
    return summary


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def run_plan(plan: Plan, out: str | os.PathLike, *, workers: int | None = None, strict: bool = False, progress: bool = True) -> Summary:
    """Convert every task of ``plan`` into ``out`` (see :func:`write_records`)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'shapenet.h5'}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if strict and plan.skipped:
        raise UserError(f"--strict: {plan.skipped[0]}")
    if not plan.tasks:
        reasons = f" ({len(plan.skipped)} skipped; first: {plan.skipped[0]})" if plan.skipped else ""
        raise UserError(f"nothing to convert{reasons}")
    with ordered_map(process_task, plan.tasks, workers, initializer=_quiet_trimesh) as results:
        return write_records(out, plan.layout, results, strict=strict, total=len(plan.tasks), progress=progress, skipped=plan.skipped, notes=plan.notes)
