"""Semantic alignment of outputs with their inputs: R-precision and render KID.

R-precision (Dream Fields, DreamFusion, Point-E's CLIP R-precision, with the input image in
place of the caption): each output is rendered from held-out cameras (never the input view);
each render is a query that must retrieve, among ``N`` candidate inputs (its own and N - 1
others of the evaluated split, drawn once per shape with a fixed seed, so that every method
faces the same candidates), the input it came from, by cosine similarity of embeddings. The
inputs are rendered in the same modality: the ground truth drawn from the input camera
(:mod:`pvd.semantic.views`). A shape's score is the fraction of its renders that rank their own
input first (top-1) or among the first five (top-5); category R-precision counts the first
retrieved input as right when it shows a shape of the same category. Intervals are bootstrap
intervals over shapes.

Render KID: the unbiased KID between the embeddings of the outputs' renders and of the ground
truth's renders from the same cameras, with a leave-one-shape-out jackknife standard error
(:func:`pvd.metrics.feature_distance.kernel_distance_with_error`).

Reference rows on the same shapes (built by :mod:`pvd.bench.semantic`): the ceiling, another
sample of the truth (``truth-resample``) as the output; the floor, each shape answered by the
truth of another shape of its category (what a category-level guess reaches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pvd.metrics.bootstrap import bootstrap_mean_ci
from pvd.metrics.feature_distance import KID_CONVENTION, frechet_distance, kernel_distance_with_error
from pvd.semantic.embedder import ImageEmbedder
from pvd.semantic.views import HELD_OUT_AZIMUTHS, held_out_extrinsics, render_cloud_views

NUM_CANDIDATES = 32
R_PRECISION_CONVENTION = (
    "each output rendered as points from cameras at {azimuths} degrees of azimuth from the input view; each render "
    "retrieves among N candidate inputs (the ground truth rendered as points from the input camera: its own and N - 1 "
    "other shapes of the split, fixed per shape) by cosine similarity of the embedder's features; top-1 / top-5: the "
    "share of a shape's renders whose own input ranks first / in the first five; category: the first retrieved "
    "input shows the same category; 95% bootstrap intervals over shapes. Ceiling: another sample of the truth "
    "(truth resampled); floor: the truth of another shape of the same category")


def candidate_similarity(queries: np.ndarray, gallery: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(Q, C) cosine similarity of each query (Q, D) to its candidates (Q, C), rows of gallery (G, D)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return np.einsum("qd,qcd->qc", q, g[candidates])


def rank_of_target(queries: np.ndarray, gallery: np.ndarray, candidates: np.ndarray, target: np.ndarray,
                   scores: np.ndarray | None = None) -> np.ndarray:
    """(Q,) 0-based rank of each query's target among its candidates by cosine similarity.

    queries: (Q, D); gallery: (G, D); candidates: (Q, C) gallery rows each query chooses among
    (its target among them); target: (Q,) the right gallery row; scores: their
    :func:`candidate_similarity` when already computed. Ties count against the target (a
    constant embedding ranks last, not first).
    """
    if not (candidates == target[:, None]).any(axis=1).all():
        raise ValueError("every query's candidates must include its target")
    if scores is None:
        scores = candidate_similarity(queries, gallery, candidates)
    own = scores[np.arange(len(scores)), (candidates == target[:, None]).argmax(axis=1)]
    return ((scores >= own[:, None]) & (candidates != target[:, None])).sum(axis=1)


def best_candidate(queries: np.ndarray, gallery: np.ndarray, candidates: np.ndarray,
                   scores: np.ndarray | None = None) -> np.ndarray:
    """(Q,) the gallery row each query ranks first among its candidates."""
    if scores is None:
        scores = candidate_similarity(queries, gallery, candidates)
    return candidates[np.arange(len(candidates)), scores.argmax(axis=1)]


def candidate_sets(count: int, num_candidates: int, seed: int) -> np.ndarray:
    """(count, C) candidate rows per shape: itself first, then C - 1 others at random (seeded);
    C = min(num_candidates, count)."""
    c = min(num_candidates, count)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        others = np.delete(np.arange(count), i)
        rows.append(np.concatenate([[i], rng.choice(others, c - 1, replace=False)]))
    return np.asarray(rows, dtype=np.int64).reshape(count, c)


@dataclass
class AlignmentReference:
    """Everything the metrics compare outputs with, computed once per benchmark.

    The gallery covers ``len(gallery_rows)`` shapes (the evaluated ones first, then more of the
    split as extra candidates); the first ``num`` are evaluated.
    """

    embedder_name: str
    intrinsics: list[np.ndarray]  # per evaluated shape, (3, 3)
    cameras: list[np.ndarray]  # per evaluated shape, (V, 4, 4) held-out extrinsics
    size: int
    gallery: np.ndarray  # (G, D) embeddings of the inputs (truth from the input camera)
    gallery_categories: np.ndarray  # (G,)
    candidates: np.ndarray  # (num, C)
    truth_features: np.ndarray  # (num * V, D) the truth's held-out renders
    groups: np.ndarray  # (num * V,) the shape of each render
    seed: int

    @property
    def num(self) -> int:
        return len(self.cameras)

    @property
    def targets(self) -> np.ndarray:
        """(num,) the gallery row of each evaluated shape (the first of its candidates)."""
        return self.candidates[:, 0]

    def subset(self, shapes: Sequence[int]) -> AlignmentReference:
        """The reference restricted to some evaluated shapes (e.g. the ones a lifting method ran
        on): the same gallery and the same candidates per shape, so that scores stay comparable."""
        index = np.asarray(shapes, dtype=np.int64).reshape(-1)
        views = len(HELD_OUT_AZIMUTHS)
        rows = (index[:, None] * views + np.arange(views)).reshape(-1)
        return replace(self, intrinsics=[self.intrinsics[i] for i in index], cameras=[self.cameras[i] for i in index],
                       candidates=self.candidates[index], truth_features=self.truth_features[rows],
                       groups=np.repeat(np.arange(len(index)), views))


def build_reference(embedder: ImageEmbedder, truths: list[np.ndarray], intrinsics: list[np.ndarray],
                    input_extrinsics: list[np.ndarray], categories: list[int], size: int,
                    extra_truths: list[np.ndarray] = (), extra_intrinsics: list[np.ndarray] = (),
                    extra_extrinsics: list[np.ndarray] = (), extra_categories: list[int] = (),
                    num_candidates: int = NUM_CANDIDATES, seed: int = 0) -> AlignmentReference:
    """The reference of ``len(truths)`` evaluated shapes: truths (N_i, 3) world frame, their input
    cameras ((3, 3) intrinsics, (4, 4) extrinsics) and category ids; ``extra_*``: more shapes of
    the split that serve only as candidates, so that N stays ``num_candidates`` on small sets."""
    num = len(truths)
    if num < 2:
        raise ValueError("R-precision needs at least 2 shapes")
    all_truths = list(truths) + list(extra_truths)
    all_k = list(intrinsics) + list(extra_intrinsics)
    all_e = list(input_extrinsics) + list(extra_extrinsics)
    inputs = np.concatenate([render_cloud_views(p, k, np.asarray(e)[None], size, seed=seed + i)
                             for i, (p, k, e) in enumerate(zip(all_truths, all_k, all_e))])
    gallery = np.asarray(embedder.embed(inputs), dtype=np.float64)
    cameras = [held_out_extrinsics(e) for e in input_extrinsics]
    truth_renders = np.concatenate([render_cloud_views(p, k, c, size, seed=seed + 10**6 + i)
                                    for i, (p, k, c) in enumerate(zip(truths, intrinsics, cameras))])
    views = len(HELD_OUT_AZIMUTHS)
    count = len(all_truths)
    # Candidates: the evaluated shape itself and others of the whole gallery.
    candidates = candidate_sets(count, num_candidates, seed)[:num]
    return AlignmentReference(embedder.name, [np.asarray(k) for k in intrinsics], cameras, size, gallery,
                              np.asarray(list(categories) + list(extra_categories)), candidates,
                              np.asarray(embedder.embed(truth_renders), dtype=np.float64),
                              np.repeat(np.arange(num), views), seed)


def alignment_scores(embedder: ImageEmbedder, reference: AlignmentReference, clouds: list[np.ndarray | None],
                     seed: int = 0) -> dict[str, Any]:
    """R-precision (top-1, top-5, category; bootstrap intervals) and render KID (with its standard
    error) of one method's outputs: ``clouds[i]`` (N_i, 3) world frame, or None (empty), for the
    reference's i-th shape."""
    if len(clouds) != reference.num:
        raise ValueError(f"{len(clouds)} outputs for {reference.num} reference shapes")
    renders = np.concatenate([
        render_cloud_views(np.zeros((0, 3)) if c is None else c, k, cams, reference.size, seed=seed + i)
        for i, (c, k, cams) in enumerate(zip(clouds, reference.intrinsics, reference.cameras))])
    features = np.asarray(embedder.embed(renders), dtype=np.float64)
    return scores_from_features(features, reference)


def on_sphere(features: np.ndarray) -> np.ndarray:
    """(n, D) features L2-normalised and scaled to norm sqrt(D): the cubic kernel's argument x.y / D
    is then the cosine, of order 1 for any embedder (unit CLIP or evaluator embeddings would
    otherwise leave the kernel almost linear, and its values ~1/D)."""
    features = np.asarray(features, dtype=np.float64)
    norm = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return features / norm * np.sqrt(features.shape[1])


def scores_from_features(features: np.ndarray, reference: AlignmentReference) -> dict[str, Any]:
    """The metrics of :func:`alignment_scores` from the (num * V, D) embeddings of a method's renders."""
    views = len(HELD_OUT_AZIMUTHS)
    num = reference.num
    target = np.repeat(reference.targets, views)
    candidates = np.repeat(reference.candidates, views, axis=0)
    scores = candidate_similarity(features, reference.gallery, candidates)
    rank = rank_of_target(features, reference.gallery, candidates, target, scores)
    first = best_candidate(features, reference.gallery, candidates, scores)
    same_category = reference.gallery_categories[first] == reference.gallery_categories[target]
    per_shape = {"top1": (rank < 1).reshape(num, views).mean(1), "top5": (rank < 5).reshape(num, views).mean(1),
                 "category": same_category.reshape(num, views).mean(1)}
    ours, truth = on_sphere(features), on_sphere(reference.truth_features)
    kid, kid_se = (kernel_distance_with_error(ours, truth, reference.groups, reference.groups)
                   if num >= 3 else (None, None))  # the jackknife needs 3 shapes
    result: dict[str, Any] = {k: bootstrap_mean_ci(v).as_dict() for k, v in per_shape.items()}
    # FID only as a labelled extra: at tens of shapes its bias (which grows with d / n) dominates.
    result.update(kid=kid, kid_se=kid_se, fid_extra=frechet_distance(ours, truth), shapes=num,
                  candidates=int(reference.candidates.shape[1]),
                  per_shape={k: v.tolist() for k, v in per_shape.items()})
    return result


def floor_sources(categories: np.ndarray, num: int, seed: int = 0) -> list[int | None]:
    """For each of the first ``num`` shapes, another shape of its category among all ``categories``
    (G,) (seeded choice), or None when it is the only one: the floor row's answers."""
    rng = np.random.default_rng(seed)
    out: list[int | None] = []
    for i in range(num):
        others = np.flatnonzero((categories == categories[i]) & (np.arange(len(categories)) != i))
        out.append(int(rng.choice(others)) if len(others) else None)
    return out


def conventions(embedder_name: str) -> dict[str, str]:
    return {"r_precision": R_PRECISION_CONVENTION.format(azimuths=", ".join(f"{a:g}" for a in HELD_OUT_AZIMUTHS)),
            "render_kid": KID_CONVENTION + "; on the embedder's features L2-normalised and scaled to norm sqrt(D) (the "
                          "kernel's argument is the cosine); between the renders of the outputs and of the truth from "
                          "the same cameras",
            "render_fid": "Frechet distance of the same features (an extra: biased at tens of shapes, not for ranking)",
            "embedder": embedder_name}
