"""The benchmark's semantic-alignment rows: R-precision and render KID per method
(:mod:`pvd.semantic.alignment`), on the clouds the geometry metrics scored.

The gallery of candidate inputs is the evaluated shapes plus, when there are fewer than N, more
shapes of the same split (inputs only), so that every method retrieves among the same N. The
ceiling is ``truth-resample`` (another sample of the truth, one of the methods already); the
floor row answers each shape with the truth of another shape of its category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pvd.bench.data import Data
from pvd.data.hdf5 import open_dataset_file
from pvd.semantic.alignment import (NUM_CANDIDATES, AlignmentReference, alignment_scores, build_reference, conventions,
                                    floor_sources)
from pvd.semantic.embedder import ImageEmbedder

FLOOR = "same-category other"


def default_embedder(data: str) -> str | None:
    """DATA.evaluator (python -m pvd.semantic train's default output) when it exists."""
    path = Path(data).with_suffix(".evaluator")
    return str(path) if path.is_dir() else None


def gallery_truths(data: Data, num_candidates: int) -> tuple[list[np.ndarray], list[Any]]:
    """(truth clouds, shapes) of the gallery: the evaluated shapes' held-out truth, then as many
    further split shapes as N needs, their truth read from the same held-out slice."""
    evaluated = data.shapes[: data.num]
    extra = data.shapes[data.num : max(num_candidates, data.num)]
    truths = [s.ref for s in evaluated]
    if extra:
        start = data.info.num_train_points
        with open_dataset_file(data.path) as f:
            truths += [f["points"][s.row, start : start + data.ref_points].astype(np.float64) for s in extra]
    return truths, evaluated + extra


def semantic_quality(embedder: ImageEmbedder, data: Data, clouds: dict[str, dict[str, np.ndarray]],
                     records: dict[str, dict[str, dict[str, Any]]], seed: int,
                     num_candidates: int = NUM_CANDIDATES) -> dict[str, Any]:
    """Per method (and the floor row): R-precision top-1/top-5/category with intervals and render
    KID with its standard error, each on the evaluated shapes the method answered.

    clouds / records: score_method's K-point clouds and records per method and shape name (an
    output recorded as empty is drawn as an empty image)."""
    truths, shapes = gallery_truths(data, num_candidates)
    num = data.num
    size = int(shapes[0].image.shape[0])
    reference: AlignmentReference = build_reference(
        embedder, truths[:num], [s.intrinsics for s in shapes[:num]], [s.extrinsics for s in shapes[:num]],
        [s.category_index for s in shapes[:num]], size, extra_truths=truths[num:],
        extra_intrinsics=[s.intrinsics for s in shapes[num:]], extra_extrinsics=[s.extrinsics for s in shapes[num:]],
        extra_categories=[s.category_index for s in shapes[num:]], num_candidates=num_candidates, seed=seed)
    names = [s.name for s in shapes[:num]]
    methods: dict[str, Any] = {}
    for method, by_name in clouds.items():
        index = [i for i, n in enumerate(names) if n in by_name]
        if not index:
            continue
        answers = [None if records[method][names[i]].get("empty") else by_name[names[i]] for i in index]
        part = reference if len(index) == num else reference.subset(index)
        methods[method] = alignment_scores(embedder, part, answers, seed=seed)
    sources = floor_sources(reference.gallery_categories, num, seed)
    index = [i for i, j in enumerate(sources) if j is not None]
    if index:
        part = reference if len(index) == num else reference.subset(index)
        methods[FLOOR] = alignment_scores(embedder, part, [truths[sources[i]] for i in index], seed=seed)
    return {"methods": methods, "candidates": int(reference.candidates.shape[1]), "gallery": len(shapes),
            "conventions": conventions(embedder.name)}
