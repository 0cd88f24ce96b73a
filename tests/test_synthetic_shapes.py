"""Procedural ShapeNet-like shapes: geometry, sampling, frame and proportions.

The "nothing inside the solid" and "on the surface" checks use methods written here
(generalised winding numbers and point-triangle projections from the parts' vertices and
triangles), not the module's own half-space planes.
"""

from __future__ import annotations

import itertools
import json
from functools import lru_cache

import numpy as np
import pytest
import trimesh

from pvd.data.synthetic.categories import CATEGORIES, PARAM_CHOICES, PARAM_RANGES, build_shape, generate_shape, sample_params
from pvd.data.synthetic.parts import PART_NAMES, THIN_PARTS, ConvexPart, SyntheticShape

SEEDS = (0, 1, 2)
NUM_POINTS = 15000
CASES = [(c, s) for c in CATEGORIES for s in SEEDS]


@lru_cache(maxsize=None)
def shape_and_samples(category: str, seed: int):
    rng = np.random.default_rng(seed)
    shape = generate_shape(category, rng)
    return shape, shape.sample_surface(NUM_POINTS, rng)


def winding_number(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Generalised winding number (Van Oosterom-Strackee solid angles) of (N, 3) points w.r.t. (T, 3, 3) triangles."""
    a, b, c = (triangles[None, :, k, :] - points[:, None, :] for k in range(3))
    la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
    det = np.einsum("ntk,ntk->nt", a, np.cross(b, c))
    dots = la * lb * lc + np.einsum("ntk,ntk->nt", a, b) * lc + np.einsum("ntk,ntk->nt", b, c) * la \
        + np.einsum("ntk,ntk->nt", c, a) * lb
    return (2.0 * np.arctan2(det, dots)).sum(axis=1) / (4.0 * np.pi)


def strictly_inside_any_part(shape: SyntheticShape, points: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """True where a point is deeper than ~eps inside some part: all six points at +-eps along the axes are inside it."""
    offsets = np.concatenate([np.eye(3), -np.eye(3)]) * eps
    flagged = np.zeros(len(points), dtype=bool)
    for part in shape.parts:
        lo, hi = part.vertices.min(0), part.vertices.max(0)
        idx = np.flatnonzero(np.all(points > lo, axis=1) & np.all(points < hi, axis=1))
        if idx.size == 0:
            continue
        probes = (points[idx, None, :] + offsets[None]).reshape(-1, 3)
        w = winding_number(probes, part.vertices[part.faces]).reshape(len(idx), 6)
        flagged[idx[np.all(w > 0.5, axis=1)]] = True
    return flagged


def nearest_face(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the smallest distance to a triangle plane over triangles whose interior
    (with a small margin) contains the point's projection, and that triangle's index."""
    v0, e1, e2 = triangles[:, 0], triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    n = np.cross(e1, e2)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    rel = points[:, None, :] - v0[None]
    dist = np.einsum("ntk,tk->nt", rel, n)
    proj = rel - dist[..., None] * n[None]
    d11, d12, d22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
    p1, p2 = np.einsum("ntk,tk->nt", proj, e1), np.einsum("ntk,tk->nt", proj, e2)
    den = d11 * d22 - d12 * d12
    u, v = (d22 * p1 - d12 * p2) / den, (d11 * p2 - d12 * p1) / den
    ok = (u >= -1e-6) & (v >= -1e-6) & (u + v <= 1 + 1e-6)
    dist = np.where(ok, np.abs(dist), np.inf)
    best = dist.argmin(axis=1)
    return dist[np.arange(len(points)), best], best


def min_width(part: ConvexPart) -> float:
    """Smallest width of a convex part over its face normals (its thickness for bars and blades)."""
    tri = part.vertices[part.faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    proj = part.vertices @ n.T
    return float((proj.max(0) - proj.min(0)).min())


def extents(shape: SyntheticShape) -> np.ndarray:
    vertices, _, _ = shape.mesh()
    return vertices.max(0) - vertices.min(0)


def samples_of(shape, samples, names) -> np.ndarray:
    points, _, labels = samples
    mask = np.isin(labels, [PART_NAMES.index(n) for n in names])
    assert mask.any(), names
    return points[mask]


# ---------------------------------------------------------------------------- tables and API


def test_categories_vocabulary_and_unknown_category():
    assert CATEGORIES == {"airplane": "02691156", "chair": "03001627", "car": "02958343",
                          "table": "04379243", "lamp": "03636649"}
    assert THIN_PARTS <= set(PART_NAMES) and len(set(PART_NAMES)) == len(PART_NAMES)
    with pytest.raises(ValueError, match="airplane"):
        generate_shape("sofa", np.random.default_rng(0))
    with pytest.raises(ValueError):
        ConvexPart.from_points("not_a_part", np.eye(3).tolist() + [[0, 0, 0]])


def test_parameter_tables_have_eight_continuous_params_and_the_issue_variants():
    for category in CATEGORIES:
        ranges = PARAM_RANGES[category]
        assert len(ranges) >= 8
        assert all(lo < hi for lo, hi in ranges.values())
        assert all(len(options) >= 2 for options in PARAM_CHOICES[category].values())
    assert set(PARAM_CHOICES["airplane"]["engine_count"]) == {0, 2, 4}
    assert {"conventional", "t_tail"} <= set(PARAM_CHOICES["airplane"]["tail_type"])
    assert {"solid", "vertical_slats"} <= set(PARAM_CHOICES["chair"]["back_style"])
    assert set(PARAM_CHOICES["chair"]["leg_style"]) == {"four_legs", "pedestal", "sled"}
    assert set(PARAM_CHOICES["chair"]["has_arms"]) == {0, 1}
    assert set(PARAM_CHOICES["car"]["wheel_count"]) == {4, 6}
    assert set(PARAM_CHOICES["car"]["body_style"]) == {"sedan", "hatchback", "pickup", "van"}
    assert {"round", "rectangular"} == set(PARAM_CHOICES["table"]["top_shape"])
    assert {"four_legs", "pedestal"} == set(PARAM_CHOICES["table"]["leg_style"])
    assert {"shelf", "stretchers"} <= set(PARAM_CHOICES["table"]["lower"])
    assert {"straight", "bent"} == set(PARAM_CHOICES["lamp"]["pole_style"])
    assert {"cone", "cylinder", "dome"} == set(PARAM_CHOICES["lamp"]["shade_shape"])
    assert {"round", "square"} == set(PARAM_CHOICES["lamp"]["base_shape"])


@pytest.mark.parametrize("category", CATEGORIES)
def test_at_least_eight_continuous_params_change_the_shape(category):
    params = sample_params(category, np.random.default_rng(5))
    base = np.concatenate([p.vertices for p in build_shape(category, params).parts])
    live = 0
    for name, (lo, hi) in PARAM_RANGES[category].items():
        moved = dict(params, **{name: hi if params[name] < 0.5 * (lo + hi) else lo})
        vertices = np.concatenate([p.vertices for p in build_shape(category, moved).parts])
        live += vertices.shape != base.shape or not np.allclose(vertices, base, atol=1e-6)
    assert live >= 8


@pytest.mark.parametrize("category", CATEGORIES)
def test_params_are_json_and_rebuild_the_shape(category):
    shape, _ = shape_and_samples(category, 0)
    params = json.loads(json.dumps(shape.params))
    assert params == shape.params
    continuous = [k for k, v in params.items() if isinstance(v, float) and k != "norm_scale"]
    assert len(continuous) >= 8
    rebuilt = build_shape(category, params)
    for a, b in zip(shape.parts, rebuilt.parts, strict=True):
        np.testing.assert_array_equal(a.vertices, b.vertices)


@pytest.mark.parametrize("category", CATEGORIES)
def test_deterministic_given_the_seed_and_different_across_seeds(category):
    a = generate_shape(category, np.random.default_rng(11))
    b = generate_shape(category, np.random.default_rng(11))
    c = generate_shape(category, np.random.default_rng(12))
    assert a.params == b.params and a.params != c.params
    pa = a.sample_surface(500, np.random.default_rng(3))
    pb = b.sample_surface(500, np.random.default_rng(3))
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
    continuous = [k for k in PARAM_RANGES[category]]
    assert all(a.params[k] != c.params[k] for k in continuous)


# ---------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("category,seed", CASES)
def test_samples_count_types_and_labels(category, seed):
    shape, (points, normals, labels) = shape_and_samples(category, seed)
    assert points.shape == (NUM_POINTS, 3) and points.dtype == np.float32
    assert normals.shape == (NUM_POINTS, 3) and normals.dtype == np.float32
    assert labels.shape == (NUM_POINTS,) and labels.dtype == np.int16
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # Every part type of the shape shows up: no part is entirely buried in another.
    assert set(labels.tolist()) == set(shape.part_labels.tolist())


@pytest.mark.parametrize("category,seed", CASES)
def test_no_sample_inside_the_solid(category, seed):
    shape, (points, _, _) = shape_and_samples(category, seed)
    points = points[:3000].astype(np.float64)
    assert not strictly_inside_any_part(shape, points).any()
    # The checker does see interior points: the centroid of a part's vertices is inside it.
    centres = np.array([p.vertices.mean(0) for p in shape.parts])
    assert strictly_inside_any_part(shape, centres).all()


@pytest.mark.parametrize("category,seed", CASES)
def test_samples_lie_on_part_faces_with_their_normals(category, seed):
    shape, (points, normals, _) = shape_and_samples(category, seed)
    triangles = np.concatenate([p.vertices[p.faces] for p in shape.parts])
    dist, face = nearest_face(points[:400].astype(np.float64), triangles)
    assert dist.max() < 1e-5  # float32 rounding of coordinates of size ~0.5
    t = triangles[face]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    assert np.mean(np.einsum("ij,ij->i", n, normals[:400]) > 0.999) > 0.99


@pytest.mark.parametrize("category,seed", CASES)
def test_normals_point_out_of_the_solid(category, seed):
    shape, (points, normals, _) = shape_and_samples(category, seed)
    p, n = points[:3000].astype(np.float64), normals[:3000].astype(np.float64)
    assert shape.inside(p + 1e-4 * n).mean() < 0.01
    assert shape.inside(p - 1e-4 * n, tol=1e-6).mean() > 0.97


def test_overlapping_boxes_sample_only_the_union_surface():
    # A unit cube and a 2 x 0.5 x 0.5 bar poking into its x = 1 face. Exposed areas: cube
    # 6 - 0.25 = 5.75, bar 4.5 - 0.25 (its x = 0.5 end) - 4 * 0.25 (sides inside the cube) = 3.25.
    def box(lo, hi):
        corners = [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        return ConvexPart.from_points("body", np.array(corners, dtype=float))

    shape = SyntheticShape("toy", [box((0, 0, 0), (1, 1, 1)), box((0.5, 0.25, 0.25), (2.5, 0.75, 0.75))])
    assert shape.inside(np.array([[0.5, 0.5, 0.5], [2.0, 0.5, 0.5], [1.0, 0.5, 0.5]])).all()
    assert not shape.inside(np.array([[0.0, 0.5, 0.5], [3.0, 0.0, 0.0], [1.0, 0.9, 0.5], [1.5, 0.75, 0.5]])).any()
    points, normals, _ = shape.sample_surface(40000, np.random.default_rng(0))
    p = points.astype(np.float64)
    in_cube = np.all((p > 1e-6) & (p < 1 - 1e-6), axis=1)
    in_bar = np.all((p > np.array([0.5, 0.25, 0.25]) + 1e-6) & (p < np.array([2.5, 0.75, 0.75]) - 1e-6), axis=1)
    assert not (in_cube | in_bar).any()
    on_bar = np.all((p >= np.array([0.5, 0.25, 0.25]) - 1e-6) & (p <= np.array([2.5, 0.75, 0.75]) + 1e-6), axis=1) & (p[:, 0] > 1 + 1e-6)
    assert abs(on_bar.mean() - 3.25 / 9.0) < 0.012  # without rejection it would be 4.5 / 10.5
    cube_face_x1 = np.abs(p[:, 0] - 1.0) < 1e-6
    assert abs(cube_face_x1.mean() - 0.75 / 9.0) < 0.006  # the face minus the bar's 0.5 x 0.5 hole
    assert np.all(np.abs(normals).max(axis=1) > 0.9999)  # axis-aligned face normals


# ---------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("category,seed", CASES)
def test_parts_are_watertight_outward_convex_hulls(category, seed):
    shape, _ = shape_and_samples(category, seed)
    for part in shape.parts:
        mesh = trimesh.Trimesh(part.vertices, part.faces, process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume > 0
        assert mesh.is_convex
    _, faces, face_part = shape.mesh()
    assert len(faces) < 4000 and face_part.max() == len(shape.parts) - 1


@pytest.mark.parametrize("category,seed", CASES)
def test_normalised_bbox(category, seed):
    shape, (points, _, _) = shape_and_samples(category, seed)
    vertices, _, _ = shape.mesh()
    lo, hi = vertices.min(0), vertices.max(0)
    np.testing.assert_allclose(lo + hi, 0.0, atol=1e-6)
    assert abs(np.linalg.norm(hi - lo) - 1.0) < 1e-6
    assert np.all(points >= lo - 1e-6) and np.all(points <= hi + 1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_airplane_frame_and_proportions(seed):
    shape, samples = shape_and_samples("airplane", seed)
    points, _, labels = samples
    fuselage = next(p for p in shape.parts if p.name == "fuselage")
    size = fuselage.vertices.max(0) - fuselage.vertices.min(0)
    assert size[2] > 4 * max(size[0], size[1])  # the fuselage runs along z
    nose = points[points[:, 2].argmin()]
    assert abs(nose[0]) < 0.02 and labels[points[:, 2].argmin()] == PART_NAMES.index("fuselage")
    fin = samples_of(shape, samples, ["vertical_tail"])
    assert fin[:, 2].mean() > 0.2 and fin[:, 1].mean() > samples_of(shape, samples, ["fuselage"])[:, 1].mean()
    ext = extents(shape)
    assert 0.6 < ext[0] / ext[2] < 1.4  # span ~ length (a swept fin can overhang the fuselage)
    wing = samples_of(shape, samples, ["wing"])
    assert wing[:, 0].max() - wing[:, 0].min() > 0.99 * ext[0]  # the wings set the span


@pytest.mark.parametrize("seed", SEEDS)
def test_chair_frame_and_proportions(seed):
    shape, samples = shape_and_samples("chair", seed)
    ext = extents(shape)
    assert ext[1] > ext[0]  # taller than wide
    seat = samples_of(shape, samples, ["seat"])
    back = samples_of(shape, samples, ["backrest", "back_frame", "back_slat"])
    legs = samples_of(shape, samples, ["leg"])
    assert back[:, 2].mean() > seat[:, 2].mean() + 0.05  # the backrest is behind (+z)
    assert back[:, 1].max() > 0.5 * ext[1] - 1e-3 and legs[:, 1].min() < -0.5 * ext[1] + 1e-3  # y is up
    assert seat[:, 1].mean() > legs[:, 1].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_table_frame(seed):
    shape, samples = shape_and_samples("table", seed)
    top = samples_of(shape, samples, ["tabletop"])
    support = samples_of(shape, samples, ["leg", "pedestal", "base"])
    assert top[:, 1].max() > 0.5 * extents(shape)[1] - 1e-3
    assert support[:, 1].min() < -0.5 * extents(shape)[1] + 1e-3
    assert top[:, 1].mean() > support[:, 1].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_lamp_frame(seed):
    shape, samples = shape_and_samples("lamp", seed)
    half = 0.5 * extents(shape)[1]
    shade = samples_of(shape, samples, ["shade"])
    base = samples_of(shape, samples, ["base"])
    assert base[:, 1].min() < -half + 1e-3 and shade[:, 1].mean() > 0.0
    if shape.params["pole_style"] == "bent":
        assert shade[:, 2].mean() < base[:, 2].mean()  # the arm reaches forward (-z)


@pytest.mark.parametrize("seed", SEEDS)
def test_car_frame_and_proportions(seed):
    shape, samples = shape_and_samples("car", seed)
    ext = extents(shape)
    assert 2.5 - 1e-6 <= ext[2] / ext[1] <= 3.3 + 1e-6  # length ~ 2.5-3.3 x height
    assert ext[2] > 2 * ext[0]
    wheels = samples_of(shape, samples, ["wheel"])
    cabin = samples_of(shape, samples, ["cabin"])
    body = samples_of(shape, samples, ["body"])
    assert wheels[:, 1].min() < -0.5 * ext[1] + 1e-3 and cabin[:, 1].max() > 0.5 * ext[1] - 1e-3
    if shape.params["body_style"] == "pickup":
        assert samples_of(shape, samples, ["cargo_bed"])[:, 2].mean() > cabin[:, 2].mean()
    else:  # the bonnet in front (-z) is longer than anything behind the cabin
        assert cabin[:, 2].min() - body[:, 2].min() > body[:, 2].max() - cabin[:, 2].max()


# ---------------------------------------------------------------------------- thin parts

# part -> (reference: object height (y) or span (x), low, high)
THIN_RANGES = {
    ("chair", "leg"): (1, 0.02, 0.05), ("table", "leg"): (1, 0.02, 0.05),
    ("airplane", "wing"): (0, 0.01, 0.03), ("airplane", "horizontal_tail"): (0, 0.01, 0.03),
    ("airplane", "vertical_tail"): (0, 0.01, 0.03),
    ("lamp", "pole"): (1, 0.01, 0.03), ("lamp", "arm"): (1, 0.01, 0.03),
}


def check_thin_parts(category: str, shape: SyntheticShape) -> None:
    ext = extents(shape)
    for part in shape.parts:
        width = min_width(part)
        if (category, part.name) in THIN_RANGES:
            axis, lo, hi = THIN_RANGES[category, part.name]
            assert lo <= width / ext[axis] <= hi, (category, part.name, width / ext[axis], shape.params)
        elif part.name in THIN_PARTS:  # slats, frames, armrests, stretchers
            assert 0.01 <= width / ext[1] <= 0.05, (category, part.name, width / ext[1])


@pytest.mark.parametrize("category,seed", [(c, s) for c in CATEGORIES for s in range(8)])
def test_thin_part_proportions(category, seed):
    shape = generate_shape(category, np.random.default_rng(seed))
    if category in ("airplane", "chair", "lamp"):  # cars have none, nor pedestal tables on a disk
        assert any(p.name in THIN_PARTS for p in shape.parts)
    check_thin_parts(category, shape)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_discrete_variant_builds_with_thin_parts_in_range(category):
    params = sample_params(category, np.random.default_rng(1))
    choices = PARAM_CHOICES[category]
    signatures = set()
    for combo in itertools.product(*choices.values()):
        variant = dict(params, **dict(zip(choices, combo)))
        shape = build_shape(category, variant)
        check_thin_parts(category, shape)
        signatures.add(tuple(sorted(p.name for p in shape.parts)) + (len(shape.mesh()[1]),))
    assert len(signatures) >= 4  # the variants really change the part layout
