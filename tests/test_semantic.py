"""pvd.semantic: R-precision and render KID against hand-built cases, the embedder seam, the evaluator on disk."""

import json

import numpy as np
import pytest
import torch

from pvd.data.cameras import intrinsics_from_ndc_focal, orbit_extrinsics
from pvd.errors import UserError
from pvd.metrics.feature_distance import kernel_distance_with_error, unbiased_mmd2
from pvd.semantic import ImageEmbedder, alignment_scores, build_reference, floor_sources, load_embedder
from pvd.semantic.alignment import (AlignmentReference, best_candidate, candidate_sets, rank_of_target,
                                    scores_from_features)
from pvd.semantic.evaluator import EvaluatorConfig, load_evaluator, save_evaluator, train_evaluator
from pvd.semantic.views import HELD_OUT_AZIMUTHS, camera_centre, held_out_extrinsics, render_cloud_views

SIZE = 32
K = intrinsics_from_ndc_focal(2.1875, SIZE, SIZE)


class CoverageEmbedder:
    """A stub ImageEmbedder: radial-basis features of the share of covered pixels. A centred
    sphere covers the same share from every azimuth, so it is view-invariant on spheres."""

    name = "coverage stub"

    def embed(self, images):
        coverage = (np.asarray(images)[..., 3] > 0).mean(axis=(1, 2))
        centres = np.linspace(0, 0.5, 24)
        return np.exp(-((coverage[:, None] - centres[None]) / 0.02) ** 2)


def sphere(radius, count=2048, seed=0):
    v = np.random.default_rng(seed).normal(size=(count, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True)


def spheres_reference(radii, embedder=None, num_candidates=32):
    truths = [sphere(r, seed=i) for i, r in enumerate(radii)]
    extrinsics = [orbit_extrinsics(37.0 * i, 27.0, 1.4) for i in range(len(radii))]
    reference = build_reference(embedder or CoverageEmbedder(), truths, [K] * len(radii), extrinsics,
                                list(range(len(radii))), SIZE, num_candidates=num_candidates)
    return truths, reference


def test_stub_is_an_image_embedder():
    assert isinstance(CoverageEmbedder(), ImageEmbedder)


def test_held_out_cameras_keep_distance_and_never_the_input_view():
    e = orbit_extrinsics(10.0, 28.0, 1.5)
    eye = camera_centre(e)
    cams = held_out_extrinsics(e)
    assert cams.shape == (len(HELD_OUT_AZIMUTHS), 4, 4)
    for c, azimuth in zip(cams, HELD_OUT_AZIMUTHS):
        other = camera_centre(c)
        assert np.linalg.norm(other) == pytest.approx(np.linalg.norm(eye))
        assert other[1] == pytest.approx(eye[1])  # same elevation: rotation about +y
        cos = (other[[0, 2]] @ eye[[0, 2]]) / (np.linalg.norm(other[[0, 2]]) * np.linalg.norm(eye[[0, 2]]))
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))) == pytest.approx(min(azimuth, 360 - azimuth), abs=1e-6)
        # the origin projects to the image centre
        centre = K @ (c[:3, 3] / c[2, 3])
        assert centre[:2] == pytest.approx([SIZE / 2, SIZE / 2])


def test_renders_reduce_every_cloud_to_the_same_count():
    cams = held_out_extrinsics(orbit_extrinsics(0.0, 27.0, 1.4))
    big = render_cloud_views(sphere(0.3, 20000), K, cams, SIZE)
    small = render_cloud_views(sphere(0.3, 300), K, cams, SIZE)
    assert big.shape == small.shape == (3, SIZE, SIZE, 4)
    # 2048 points drawn either way: the covered areas agree within a few pixels
    assert abs(int((big[..., 3] > 0).sum()) - int((small[..., 3] > 0).sum())) < 0.1 * (big[..., 3] > 0).sum()
    assert not render_cloud_views(np.zeros((0, 3)), K, cams, SIZE).any()


def test_rank_of_target_by_hand():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    queries = np.array([[1.0, 0.1], [1.0, 0.1], [0.0, 0.0]])
    candidates = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    # cosines of query 0: 0.995, 0.0995, 0.7740, -0.995 -> target 0 first, target 2 second
    assert rank_of_target(queries[:2], gallery, candidates[:2], np.array([0, 2])).tolist() == [0, 1]
    # a zero query ties with everything: ties count against the target
    assert rank_of_target(queries[2:], gallery, candidates[2:], np.array([1])).tolist() == [3]
    assert best_candidate(queries[:1], gallery, candidates[:1]).tolist() == [0]
    with pytest.raises(ValueError, match="include its target"):
        rank_of_target(queries[:1], gallery, np.array([[1, 2]]), np.array([0]))


def test_candidate_sets_hold_the_shape_and_distinct_others():
    sets = candidate_sets(50, 32, seed=3)
    assert sets.shape == (50, 32)
    assert (sets[:, 0] == np.arange(50)).all()
    assert all(len(set(row)) == 32 for row in sets)
    assert candidate_sets(5, 32, seed=0).shape == (5, 5)


def _reference_from_features(gallery, categories, candidates, views):
    num = len(candidates)
    return AlignmentReference("features", [K] * num, [None] * num, SIZE, gallery, categories, candidates,
                              np.zeros((num * views, gallery.shape[1])), np.repeat(np.arange(num), views), 0)


def test_r_precision_is_one_for_the_inputs_and_one_over_n_for_unrelated_features():
    rng = np.random.default_rng(0)
    views = len(HELD_OUT_AZIMUTHS)
    num, dim = 400, 64
    gallery = rng.normal(size=(num, dim))
    reference = _reference_from_features(gallery, rng.integers(0, 4, num), candidate_sets(num, 32, 1), views)
    reference.truth_features = np.repeat(gallery, views, axis=0) + 0.01 * rng.normal(size=(num * views, dim))
    own = scores_from_features(reference.truth_features, reference)
    assert own["top1"]["mean"] == 1.0 and own["top5"]["mean"] == 1.0 and own["category"]["mean"] == 1.0
    unrelated = scores_from_features(rng.normal(size=(num * views, dim)), reference)
    # 1200 queries, chance 1/32: binomial sd 0.005; top-5 chance 5/32 (sd 0.010)
    assert unrelated["top1"]["mean"] == pytest.approx(1 / 32, abs=0.02)
    assert unrelated["top5"]["mean"] == pytest.approx(5 / 32, abs=0.04)
    assert unrelated["category"]["mean"] == pytest.approx(0.25, abs=0.06)


def test_render_kid_sees_directions_not_scale():
    """KID runs on features scaled to norm sqrt(D): an embedder whose features are 100x larger (or
    unit-normalised, as CLIP's are) gets the same KID; a shift of direction changes it."""
    rng = np.random.default_rng(5)
    views, num, dim = len(HELD_OUT_AZIMUTHS), 12, 16
    gallery = rng.normal(size=(num, dim))
    reference = _reference_from_features(gallery, np.zeros(num, int), candidate_sets(num, 4, 0), views)
    reference.truth_features = rng.normal(size=(num * views, dim))
    shifted = reference.truth_features + rng.normal(size=(num * views, dim)) + 2.0
    base = scores_from_features(shifted, reference)
    scaled = scores_from_features(100.0 * shifted, reference)
    assert scaled["kid"] == pytest.approx(base["kid"], rel=1e-9) and scaled["kid_se"] == pytest.approx(base["kid_se"], rel=1e-9)
    # the cosine-scaled KID of this shift is of order 1 (the cubic kernel is not near-linear)
    assert base["kid"] > 0.1
    same = scores_from_features(reference.truth_features[::-1].copy(), reference)
    assert same["kid"] < base["kid"] / 10


def test_jackknife_kid_against_loops():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 5)), rng.normal(0.3, 1.0, size=(12, 5))
    groups = np.repeat(np.arange(4), 3)
    value, error = kernel_distance_with_error(a, b, groups, groups)
    assert value == pytest.approx(unbiased_mmd2(a, b))

    def mmd(x, y):  # the unbiased estimator, written out
        k = lambda u, v: (u @ v / 5 + 1) ** 3  # noqa: E731
        xx = sum(k(x[i], x[j]) for i in range(len(x)) for j in range(len(x)) if i != j) / (len(x) * (len(x) - 1))
        yy = sum(k(y[i], y[j]) for i in range(len(y)) for j in range(len(y)) if i != j) / (len(y) * (len(y) - 1))
        xy = sum(k(u, v) for u in x for v in y) / (len(x) * len(y))
        return xx + yy - 2 * xy

    assert value == pytest.approx(mmd(a, b), rel=1e-9)
    leave = np.array([mmd(a[groups != g], b[groups != g]) for g in range(4)])
    assert error == pytest.approx(np.sqrt(3 / 4 * ((leave - leave.mean()) ** 2).sum()), rel=1e-9)
    with pytest.raises(ValueError, match="3 groups"):
        kernel_distance_with_error(a, b, groups % 2, groups % 2)


def test_spheres_ground_truth_ceiling_and_floor():
    radii = [0.1, 0.16, 0.22, 0.28, 0.34, 0.40]
    truths, reference = spheres_reference(radii)
    embedder = CoverageEmbedder()
    ceiling = alignment_scores(embedder, reference, truths)
    assert ceiling["top1"]["mean"] == 1.0 and ceiling["candidates"] == len(radii)
    # the floor: every shape answered by another one
    shifted = [truths[(i + 3) % len(truths)] for i in range(len(truths))]
    floor = alignment_scores(embedder, reference, shifted)
    assert floor["top1"]["mean"] == 0.0
    assert ceiling["kid"] < floor["kid"]
    empty = alignment_scores(embedder, reference, [None] * len(truths))
    assert empty["top1"]["mean"] < 1.0


def test_render_kid_grows_with_noise():
    radii = [0.1, 0.13, 0.16, 0.19, 0.22, 0.25, 0.28, 0.31, 0.34, 0.37]
    truths, reference = spheres_reference(radii)
    embedder = CoverageEmbedder()
    # the same shapes from other cameras (other points too): the reference's truth renders are
    # at held-out azimuths, these at the input azimuths + 45 degrees
    moved = [AlignmentReference(**{**reference.__dict__})]
    moved[0].cameras = [held_out_extrinsics(orbit_extrinsics(37.0 * i + 45.0, 27.0, 1.4)) for i in range(len(radii))]
    same = alignment_scores(embedder, moved[0], [sphere(r, seed=100 + i) for i, r in enumerate(radii)])
    rng = np.random.default_rng(5)
    kids = [alignment_scores(embedder, reference, [t + sigma * rng.normal(size=t.shape) for t in truths])["kid"]
            for sigma in (0.01, 0.03, 0.06, 0.1)]
    assert same["kid"] < kids[0]
    assert all(a < b for a, b in zip(kids, kids[1:])), kids
    assert same["kid_se"] > 0


def test_floor_sources_pick_another_shape_of_the_category():
    categories = np.array([0, 1, 0, 2, 1, 0])
    sources = floor_sources(categories, 4, seed=0)
    assert sources[0] in (2, 5) and sources[1] == 4 and sources[2] in (0, 5) and sources[3] is None


def test_load_embedder_rejects_bad_specs(tmp_path):
    with pytest.raises(UserError, match="open_clip:MODEL:WEIGHTS_FILE"):
        load_embedder("open_clip:ViT-B-32")
    with pytest.raises(UserError, match="semantic evaluator"):
        load_embedder(str(tmp_path))


def test_open_clip_embedder_with_local_random_weights(tmp_path):
    open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed: the CLIP seam is untested here")
    model = open_clip.create_model("RN50")  # random weights, built locally (no download)
    torch.save(model.state_dict(), tmp_path / "rn50.pt")
    embedder = load_embedder(f"open_clip:RN50:{tmp_path / 'rn50.pt'}")
    images = render_cloud_views(sphere(0.3), K, held_out_extrinsics(orbit_extrinsics(0.0, 27.0, 1.4)), SIZE)
    features = embedder.embed(images)
    assert features.shape[0] == 3 and np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


TINY = EvaluatorConfig(widths=(8, 16), embed_dim=8, views_per_shape=3, steps=6, batch_shapes=4, seed=7)


def test_evaluator_trains_saves_and_loads_with_provenance(pipeline_data, tmp_path):
    net, record = train_evaluator(str(pipeline_data), TINY, log=lambda line: None)
    out = tmp_path / "evaluator"
    save_evaluator(net, record, out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["dataset_sha256"] and saved["weights_sha256"] and saved["evaluator"]["seed"] == 7
    assert saved["image_size"] == 16 and sorted(saved["classes"]) == ["car", "chair"]
    evaluator = load_evaluator(out)
    assert isinstance(evaluator, ImageEmbedder)
    images = render_cloud_views(sphere(0.3), intrinsics_from_ndc_focal(2.1875, 16, 16),
                                held_out_extrinsics(orbit_extrinsics(0.0, 27.0, 1.4)), 16)
    features = evaluator.embed(images)
    assert features.shape == (3, 8) and np.allclose(np.linalg.norm(features, axis=1), 1.0)
    with torch.no_grad():
        want = net(torch.stack([torch.as_tensor(images[..., :3].mean(-1) * images[..., 3] / 255.0 ** 2).float(),
                                torch.as_tensor(images[..., 3] / 255.0).float()], 1))[0]
    assert np.allclose(features, want.double().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="16x16"):
        evaluator.embed(np.zeros((1, 32, 32, 4), np.uint8))
    torch.save({k: v + 1 for k, v in net.state_dict().items()}, out / "weights.pt")
    with pytest.raises(UserError, match="does not match"):
        load_evaluator(out)


def test_evaluator_command_refuses_missing_data(tmp_path):
    from pvd.semantic.__main__ import main

    with pytest.raises(UserError, match="no dataset file"):
        main(["train", "--data", str(tmp_path / "missing.h5")])


def test_a_subset_keeps_each_shapes_candidates_and_scores():
    truths, reference = spheres_reference([0.08 + 0.04 * i for i in range(8)], num_candidates=5)
    full = alignment_scores(CoverageEmbedder(), reference, truths)
    keep = [1, 4, 6]
    part_reference = reference.subset(keep)
    assert (part_reference.candidates == reference.candidates[keep]).all()
    assert (part_reference.targets == np.array(keep)).all()
    part = alignment_scores(CoverageEmbedder(), part_reference, [truths[i] for i in keep])
    assert part["shapes"] == 3 and part["candidates"] == 5
    # a centred sphere's render does not depend on the draw: the same per-shape scores
    for key in ("top1", "top5", "category"):
        assert part["per_shape"][key] == [full["per_shape"][key][i] for i in keep]


def test_bench_rows_fill_the_gallery_and_add_the_floor(pipeline_data):
    """pvd.bench.semantic on a fabricated file: 4 evaluated train shapes plus 2 more as candidates,
    a method that answered 3 shapes (one of them empty), the ceiling and the floor."""
    from pvd.bench.data import load_data
    from pvd.bench.semantic import FLOOR, semantic_quality

    data = load_data(str(pipeline_data), "train", 0, ["chair", "car"], 4, 64)
    names = [s.name for s in data.shapes[:4]]
    clouds = {"truth-resample": {s.name: s.resample for s in data.shapes[:4]},
              "partial": {n: sphere(0.2, seed=i) for i, n in enumerate(names[:3])}}
    records = {m: {n: {"empty": n == names[2]} for n in c} for m, c in clouds.items()}
    q = semantic_quality(CoverageEmbedder(), data, clouds, records, seed=0, num_candidates=6)
    assert q["gallery"] == 6 and q["candidates"] == 6
    assert set(q["methods"]) == {"truth-resample", "partial", FLOOR}
    assert q["methods"]["truth-resample"]["shapes"] == 4 and q["methods"]["partial"]["shapes"] == 3
    assert q["methods"][FLOOR]["shapes"] == 4  # each category has another shape in the gallery
    for r in q["methods"].values():
        assert 0 <= r["top1"]["mean"] <= r["top5"]["mean"] <= 1 and r["kid_se"] >= 0
    assert q["conventions"]["embedder"] == "coverage stub"
