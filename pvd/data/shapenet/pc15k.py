"""The PC15k reader: ShapeNetCore.v2.PC15k point clouds, optionally joined with R2N2's renderings.

PointFlow's tree is ``<root>/<synset>/{train,val,test}/<id>.npy`` with (15000, 3) points
each; the split comes from the folder. Optionally joined, by model id, with the 3D-R2N2
renderings (ShapeNetRendering): ``<r2n2>/<synset>/<id>/rendering/{00..23}.png`` (137 x 137
RGBA), ``renderings.txt`` and ``rendering_metadata.txt``; cameras come from
:func:`pvd.data.cameras.r2n2_cameras`.

Frames: R2N2 rendered ShapeNetCore *v1* models while PC15k sampled *v2* models. Whether the two
frames agree could not be checked when this module was written (no real ShapeNet data was
available; the tests use fabricated trees). Every joined shape is therefore measured: the
fraction of its points that project inside its R2N2 silhouettes is printed in the summary
and stored in the file's attributes, so check it on the real data before training on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pvd.data.cameras import CameraSet, project, r2n2_cameras
from pvd.data.hdf5 import SPLITS, ShapeRecord, WriterLayout
from pvd.data.shapenet.categories import model_seed, resolve_categories
from pvd.data.shapenet.tasks import Converted, CorruptInput, Plan, Skip, Task, short
from pvd.data.shapenet.trees import check_root, layout_categories, source_attrs, subdirs, synset_dirs

R2N2_VIEWS = 24
PC15K_POINTS = 15000
PC15K_LAYOUT = "ShapeNetCore.v2.PC15k: <root>/<synset>/{train,val,test}/<model_id>.npy"
R2N2_LAYOUT = "ShapeNetRendering (3D-R2N2): <root>/<synset>/<model_id>/rendering/{renderings.txt,rendering_metadata.txt,00.png,...}"


def load_point_file(path: str | os.PathLike, num_points: int | None = None) -> np.ndarray:
    """(N, 3) float32 points of a .npy file; raises CorruptInput if unusable.

    num_points: the exact N required (PC15k files hold 15000), or None for any N >= 1.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError, ... on bad files
        raise CorruptInput("unreadable file", short(e)) from None
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
        raise CorruptInput("bad R2N2 metadata", short(e)) from None
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
        raise CorruptInput("bad R2N2 metadata", short(e)) from None
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
            raise CorruptInput("unreadable PNG", f"{name}: {short(e)}") from None
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


def convert_pc15k(task: Task) -> Converted | Skip:
    """A ``pc15k`` task: the points, and the R2N2 views when joined (a bad rendering folder skips the shape)."""
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


def _is_pc15k(root: Path) -> bool:
    return any(any((s / split).is_dir() for split in SPLITS) for s in synset_dirs(root))


def _is_r2n2(root: Path) -> bool:
    for synset in synset_dirs(root):
        # the first few models of a few synsets are enough to recognise the tree
        if any((m / "rendering").is_dir() for m in subdirs(synset)[:20]):
            return True
    return False


def plan_pc15k(
    root: str | os.PathLike,
    r2n2_root: str | os.PathLike | None = None,
    categories: str | Sequence[str] | None = None,
    limit: int | None = None,
) -> Plan:
    """List a PC15k tree (and an R2N2 tree to join): see the module docstring."""
    root = check_root(root, PC15K_LAYOUT, _is_pc15k)
    r2n2 = check_root(r2n2_root, R2N2_LAYOUT, _is_r2n2) if r2n2_root is not None else None
    synsets = resolve_categories(categories, [p.name for p in synset_dirs(root)], root)
    names = layout_categories(synsets)
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
    source, extra = source_attrs("pc15k", root, options)
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
