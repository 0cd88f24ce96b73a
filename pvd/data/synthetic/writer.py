"""The built-in dataset file: synthetic shapes sampled, rendered and written in the pvd HDF5 schema.

Shape ``index`` of a category is keyed by (seed, category, index), so the same
:class:`SyntheticConfig` always writes the same file (``datasets/synthetic.py`` is its command
line). Kept apart from the geometry, which knows nothing of cameras, rendering or files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pvd.data.cameras import orbit_cameras, r2n2_like_views
from pvd.data.hdf5 import ShapeRecord, ShapeWriter, WriterLayout
from pvd.data.pool import ordered_map
from pvd.data.render import render_views
from pvd.data.synthetic.categories import CATEGORIES, generate_shape
from pvd.data.synthetic.parts import PART_NAMES, THIN_PARTS, SyntheticShape
from pvd.errors import UserError


@dataclass
class SyntheticConfig:
    """Options of ``datasets/synthetic.py``; the output depends on nothing else."""

    per_category: int = 200
    views: int = 8
    resolution: int = 64
    num_points: int = 15000
    seed: int = 0
    categories: tuple[str, ...] = tuple(CATEGORIES)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    supersample: int = 4  # antialiasing: coverage from 4x4 samples per pixel


def _split_of(index: int, count: int, fractions: tuple[float, float, float]) -> str:
    # Shapes are i.i.d., so contiguous blocks are a random split. From three shapes on, val and
    # test get at least one each, so that small quick-start files still evaluate.
    val, test = (max(1, round(count * f)) if count >= 3 else 0 for f in fractions[1:])
    train_end = count - val - test
    return "train" if index < train_end else "val" if index < train_end + val else "test"


def _part_colors(shape: SyntheticShape, rng: np.random.Generator) -> np.ndarray:
    """(num_parts, 3) RGB: one random base colour per shape, shaded a little per part."""
    base = rng.uniform(0.25, 0.9, 3)
    jitter = rng.uniform(-0.12, 0.12, (len(shape.parts), 3))
    return np.clip(base + jitter, 0.0, 1.0)


def make_record(config: SyntheticConfig, category: str, index: int) -> ShapeRecord:
    """Shape ``index`` of ``category``: geometry, samples, views; keyed by (seed, category, index)."""
    category_index = list(CATEGORIES).index(category)
    rng = np.random.default_rng((config.seed, category_index, index))
    shape = generate_shape(category, rng)
    points, normals, labels = shape.sample_surface(config.num_points, rng)
    vertices, faces, face_part = shape.mesh()
    cameras = orbit_cameras(r2n2_like_views(rng, config.views), config.resolution, config.resolution)
    face_colors = _part_colors(shape, rng)[face_part]
    images = render_views(vertices, faces, cameras.intrinsics, cameras.extrinsics, config.resolution,
                          config.resolution, face_colors=face_colors, supersample=config.supersample)
    return ShapeRecord(
        model_id=f"{category}_{config.seed}_{index:05d}",
        category=category,
        split=_split_of(index, config.per_category, config.split_fractions),
        points=points,
        normals=normals,
        images=images,
        cameras=cameras,
        vertices=vertices,
        faces=faces,
        part_labels=labels,
        params=shape.params,
    )


def _make_record_star(args: tuple[SyntheticConfig, str, int]) -> ShapeRecord:
    return make_record(*args)


def write_synthetic_dataset(path: str | Path, config: SyntheticConfig, workers: int = 1, progress: bool = True) -> int:
    """Generate the dataset into the HDF5 file ``path`` (atomically); returns the shape count."""
    unknown = set(config.categories) - set(CATEGORIES)
    if unknown:
        raise UserError(f"unknown categories {sorted(unknown)}; available: {', '.join(CATEGORIES)}")
    if config.per_category < 1 or config.views < 1 or config.resolution < 8 or config.num_points < 3:
        raise UserError("per-category and views must be >= 1, resolution >= 8, points >= 3")
    layout = WriterLayout(
        categories={name: CATEGORIES[name] for name in config.categories},
        num_points=config.num_points,
        num_views=config.views,
        image_size=(config.resolution, config.resolution),
        normals=True,
        meshes=True,
        part_names=PART_NAMES,
        thin_parts=tuple(sorted(THIN_PARTS)),
        params=True,
        source="pvd synthetic generator",
        extra_attrs={"synthetic_config": asdict(config)},
    )
    # Interleave categories so that a partial run still covers all of them.
    tasks = [(config, category, i) for i in range(config.per_category) for category in config.categories]
    with ShapeWriter(path, layout) as writer, tqdm(total=len(tasks), disable=not progress, unit="shape") as bar:
        with ordered_map(_make_record_star, tasks, workers) as records:
            for record in records:
                writer.append(record)
                bar.update()
    return len(tasks)
