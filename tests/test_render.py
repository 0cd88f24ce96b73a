"""Tests for pvd.data.render against naive references and the camera conventions."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from pvd.data import render
from pvd.data.cameras import intrinsics_from_ndc_focal, look_at, project

CUBE_CORNERS = np.array([[x, y, z] for x in (-0.3, 0.3) for y in (-0.3, 0.3) for z in (-0.3, 0.3)])
# Corner index = 4 * (x > 0) + 2 * (y > 0) + (z > 0); two triangles per side, mixed windings.
CUBE_FACES = np.array(
    [
        [0, 1, 3], [0, 3, 2],  # x = -0.3
        [4, 6, 7], [4, 7, 5],  # x = +0.3
        [0, 4, 5], [0, 5, 1],  # y = -0.3
        [2, 3, 7], [2, 7, 6],  # y = +0.3
        [0, 2, 6], [0, 6, 4],  # z = -0.3
        [1, 5, 7], [1, 7, 3],  # z = +0.3
    ]
)  # fmt: skip


def reference_rasterize(vertices, faces, intrinsics, extrinsics, height, width):
    """Per-pixel, per-triangle ray casting (Moller-Trumbore) through pixel centres."""
    cam = vertices @ extrinsics[:3, :3].T + extrinsics[:3, 3]
    inv_k = np.linalg.inv(intrinsics)
    face_index = np.full((height, width), -1)
    depth = np.full((height, width), np.inf)
    for i in range(height):
        for j in range(width):
            ray = inv_k @ np.array([j + 0.5, i + 0.5, 1.0])  # z = 1, so t is the depth
            for f, (a, b, c) in enumerate(faces):
                if np.any(cam[[a, b, c], 2] <= render.NEAR):
                    continue
                e1, e2 = cam[b] - cam[a], cam[c] - cam[a]
                h = np.cross(ray, e2)
                det = e1 @ h
                if abs(det) < 1e-12:
                    continue
                s = -cam[a]
                u = (s @ h) / det
                q = np.cross(s, e1)
                v = (ray @ q) / det
                t = (e2 @ q) / det
                if u >= 0 and v >= 0 and u + v <= 1 and t < depth[i, j]:
                    face_index[i, j], depth[i, j] = f, t
    return face_index, depth


def random_scene(seed, num_faces=8):
    rng = np.random.default_rng(seed)
    vertices = rng.uniform(-0.6, 0.6, (3 * num_faces, 3))
    faces = np.arange(3 * num_faces).reshape(num_faces, 3)
    faces[::2] = faces[::2, ::-1]  # both windings
    eye = rng.normal(size=3)
    extrinsics = look_at(2.5 * eye / np.linalg.norm(eye))
    intrinsics = np.array([[40.0, 0.0, 10.0], [0.0, 40.0, 10.0], [0.0, 0.0, 1.0]])
    return vertices, faces, intrinsics, extrinsics


@pytest.mark.parametrize("seed", range(6))
def test_rasterize_matches_reference(seed):
    vertices, faces, intrinsics, extrinsics = random_scene(seed)
    face_index, depth = render.rasterize(vertices, faces, intrinsics, extrinsics, 20, 20)
    ref_index, ref_depth = reference_rasterize(vertices, faces, intrinsics, extrinsics, 20, 20)

    assert face_index.shape == depth.shape == (20, 20)
    assert face_index.dtype == np.int32 and depth.dtype == np.float32
    assert (ref_index >= 0).mean() > 0.2  # the scene really covers the image
    assert len(np.unique(ref_index[ref_index >= 0])) > 3  # and several faces are visible
    layers = sum(render.rasterize(vertices, [f], intrinsics, extrinsics, 20, 20)[0] >= 0 for f in faces)
    assert (layers > 1).sum() >= 10  # and the z-buffer has work to do
    assert (face_index != ref_index).mean() < 0.01
    same = face_index == ref_index
    np.testing.assert_allclose(depth[same], ref_depth[same], rtol=0, atol=1e-5)
    assert np.all(np.isinf(depth[face_index < 0]))


@pytest.mark.filterwarnings("error")  # and without dividing by a zero area
def test_rasterize_skips_degenerate_and_behind_camera_faces():
    vertices, faces, intrinsics, extrinsics = random_scene(0, num_faces=4)
    cam_to_world = np.linalg.inv(extrinsics)
    behind = np.array([[0.0, 0.0, -1.0, 1.0], [1.0, 0.0, 3.0, 1.0], [0.0, 1.0, 3.0, 1.0]]) @ cam_to_world.T
    extra = np.vstack([vertices[:3].mean(axis=0) + [[0, 0, 0], [0.1, 0.1, 0.1], [0.2, 0.2, 0.2]], behind[:, :3]])
    vertices = np.vstack([vertices, extra])
    n = len(vertices) - 6
    faces = np.vstack([faces, [[n, n + 1, n + 2], [n, n, n + 1], [n + 3, n + 4, n + 5]]])
    face_index, _ = render.rasterize(vertices, faces, intrinsics, extrinsics, 20, 20)
    assert (face_index >= 0).any()
    assert not np.isin(face_index, [4, 5, 6]).any()


def test_rasterize_batches_agree(monkeypatch):
    vertices, faces, intrinsics, extrinsics = random_scene(3, num_faces=30)
    whole = render.rasterize(vertices, faces, intrinsics, extrinsics, 20, 20)
    monkeypatch.setattr(render, "_CHUNK", 7)
    batched = render.rasterize(vertices, faces, intrinsics, extrinsics, 20, 20)
    np.testing.assert_array_equal(whole[0], batched[0])
    np.testing.assert_array_equal(whole[1], batched[1])


def cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def convex_hull(points):
    """Counter-clockwise hull (Andrew's monotone chain) of (N, 2) points."""
    pts = sorted(map(tuple, points))

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and cross2(np.subtract(out[-1], out[-2]), np.subtract(p, out[-2])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def test_cube_silhouette_and_depth():
    height, width = 40, 48  # not square, so swapped rows and columns show
    intrinsics = intrinsics_from_ndc_focal(2.1875, width, height)
    extrinsics = look_at([1.3, 0.9, 1.6])
    face_index, depth = render.rasterize(CUBE_CORNERS, CUBE_FACES, intrinsics, extrinsics, height, width)

    hull = convex_hull(project(CUBE_CORNERS, intrinsics, extrinsics)[0])
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    centres = np.stack([jj, ii], axis=-1)
    edges = np.roll(hull, -1, axis=0) - hull
    # Signed distance of every pixel centre to every hull edge (positive inside, CCW hull).
    lengths = np.linalg.norm(edges, axis=1)[:, None, None]
    dist = cross2(edges[:, None, None], centres[None] - hull[:, None, None]) / lengths
    inside = np.all(dist >= 0, axis=0)
    clear = np.min(np.abs(dist), axis=0) > 1e-6
    assert inside.sum() > 200
    np.testing.assert_array_equal((face_index >= 0)[clear], inside[clear])

    _, ref_depth = reference_rasterize(CUBE_CORNERS, CUBE_FACES, intrinsics, extrinsics, height, width)
    covered = np.isfinite(ref_depth) & np.isfinite(depth)
    assert covered.sum() > 0.99 * np.isfinite(ref_depth).sum()
    np.testing.assert_allclose(depth[covered], ref_depth[covered], rtol=0, atol=1e-5)


def test_huge_triangles_fill_the_view():
    vertices = CUBE_CORNERS / 0.6  # unit box; the camera is 0.4 in front of its +z side
    extrinsics = look_at([0.0, 0.0, 0.9])
    intrinsics = intrinsics_from_ndc_focal(2.1875, 50, 30)
    face_index, depth = render.rasterize(vertices, CUBE_FACES, intrinsics, extrinsics, 30, 50)
    assert np.isin(face_index, [10, 11]).all()
    np.testing.assert_allclose(depth, 0.4, rtol=1e-6)


def test_render_mesh_alpha_and_colours():
    height, width = 40, 48
    intrinsics = intrinsics_from_ndc_focal(2.1875, width, height)
    extrinsics = look_at([1.3, 0.9, 1.6])
    colors = np.random.default_rng(0).uniform(size=(len(CUBE_FACES), 3))
    image = render.render_mesh(CUBE_CORNERS, CUBE_FACES, intrinsics, extrinsics, height, width, colors)
    face_index, _ = render.rasterize(CUBE_CORNERS, CUBE_FACES, intrinsics, extrinsics, height, width)

    assert image.shape == (height, width, 4) and image.dtype == np.uint8
    covered = face_index >= 0
    assert covered.any() and not covered.all()
    assert np.all(image[~covered] == 0)
    assert np.all(image[covered, 3] == 255)
    shade = render.shade_faces(CUBE_CORNERS, CUBE_FACES, extrinsics)
    expected = np.round(255 * colors[face_index[covered]] * shade[face_index[covered], None])
    np.testing.assert_array_equal(image[covered, :3], expected)
    assert len(np.unique(shade[face_index[covered]])) == 3  # three visible sides, three shades


def test_shading_is_two_sided_and_lit_from_upper_left():
    identity = np.eye(4)
    # Triangles in camera coordinates whose normals point upper left, upper right, lower left.
    normals = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]) / np.sqrt(2)
    tangents = np.cross(normals, [0.0, 0.0, 1.0])
    vertices = np.concatenate([np.stack([0 * n, t, np.cross(n, t)]) for n, t in zip(normals, tangents)])
    faces = np.arange(9).reshape(3, 3)
    shade = render.shade_faces(vertices, faces, identity)
    np.testing.assert_allclose(render.shade_faces(vertices, faces[:, ::-1], identity), shade)
    assert np.all((shade >= 0.35) & (shade <= 1.0))
    assert shade[0] > shade[1] and shade[0] > shade[2]


def test_flipped_winding_renders_the_same():
    intrinsics = intrinsics_from_ndc_focal(2.1875, 32, 32)
    extrinsics = look_at([1.3, 0.9, 1.6])
    image = render.render_mesh(CUBE_CORNERS, CUBE_FACES, intrinsics, extrinsics, 32, 32)
    flipped = render.render_mesh(CUBE_CORNERS, CUBE_FACES[:, ::-1], intrinsics, extrinsics, 32, 32)
    assert (image[..., 3] > 0).sum() > 100
    np.testing.assert_array_equal(image, flipped)


def test_supersampling_gives_fractional_coverage():
    # A square at z = 1 spanning pixel x in [2.25, 10.75], y in [2.25, 5.25].
    intrinsics = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 1.0]])
    vertices = np.array([[0.225, 0.225, 1.0], [1.075, 0.225, 1.0], [1.075, 0.525, 1.0], [0.225, 0.525, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    color = [0.5, 1.0, 0.25]
    image = render.render_mesh(vertices, faces, intrinsics, np.eye(4), 8, 12, face_colors=color, supersample=4)
    coverage = np.zeros((8, 12))
    coverage[2:6, 2:11] = 1.0
    coverage[2, :] *= 0.75
    coverage[5, :] *= 0.25
    coverage[:, 2] *= 0.75
    coverage[:, 10] *= 0.75
    np.testing.assert_array_equal(image[..., 3], np.round(255 * coverage))
    # Colour is not darkened at the edges: it is un-premultiplied after filtering.
    shade = render.shade_faces(vertices, faces, np.eye(4))[0]
    expected = np.round(255 * shade * np.array(color))
    np.testing.assert_array_equal(image[coverage > 0, :3], np.broadcast_to(expected, (int((coverage > 0).sum()), 3)))


def test_render_views_stacks_render_mesh():
    intrinsics = np.stack([intrinsics_from_ndc_focal(2.1875, 24, 16)] * 2)
    extrinsics = np.stack([look_at([1.3, 0.9, 1.6]), look_at([-1.5, 0.5, 0.8])])
    views = render.render_views(CUBE_CORNERS, CUBE_FACES, intrinsics, extrinsics, 16, 24, supersample=2)
    assert views.shape == (2, 16, 24, 4)
    for view, k, e in zip(views, intrinsics, extrinsics):
        np.testing.assert_array_equal(view, render.render_mesh(CUBE_CORNERS, CUBE_FACES, k, e, 16, 24, supersample=2))


def test_render_points_pixel_disc_and_zbuffer():
    intrinsics = intrinsics_from_ndc_focal(2.1875, 30, 20)
    extrinsics = look_at([1.1, 0.7, 1.3])
    point = np.array([[0.05, -0.08, 0.11]])
    (u, v), = project(point, intrinsics, extrinsics)[0]
    i, j = int(np.floor(v)), int(np.floor(u))

    single = render.render_points(point, intrinsics, extrinsics, 20, 30, radius_px=0.5)
    assert single.shape == (20, 30, 4)
    assert np.argwhere(single[..., 3] > 0).tolist() == [[i, j]]
    assert single[i, j, 3] == 255

    disc = render.render_points(point, intrinsics, extrinsics, 20, 30, radius_px=1.0)
    assert sorted(np.argwhere(disc[..., 3] > 0).tolist()) == sorted(
        [[i, j], [i - 1, j], [i + 1, j], [i, j - 1], [i, j + 1]]
    )

    # Two points on one ray: the nearer one wins whatever the order; colours pass through.
    eye = np.linalg.inv(extrinsics)[:3, 3]
    pair = np.stack([point[0], eye + 0.5 * (point[0] - eye)])
    red_green = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for order in ([0, 1], [1, 0]):
        image = render.render_points(pair[order], intrinsics, extrinsics, 20, 30, red_green[order], radius_px=0.5)
        assert image[i, j].tolist() == [0, 255, 0, 255]


def test_render_points_default_shading_and_culling():
    extrinsics = np.eye(4)
    intrinsics = np.array([[10.0, 0.0, 8.0], [0.0, 10.0, 8.0], [0.0, 0.0, 1.0]])
    points = np.array([[-0.3, 0.0, 1.0], [0.3, 0.0, 2.0], [0.0, 0.0, -1.0]])  # near, far, behind
    image = render.render_points(points, intrinsics, extrinsics, 16, 16, radius_px=0.5)
    assert (image[..., 3] > 0).sum() == 2
    near, far = image[8, 5], image[8, 9]
    assert near[3] == far[3] == 255
    assert int(near[:3].sum()) > int(far[:3].sum())


def test_image_grid_layout_and_compositing():
    opaque = np.zeros((6, 7, 4), dtype=np.uint8)
    opaque[..., 0], opaque[..., 3] = 200, 255
    transparent = np.zeros((6, 7, 4), dtype=np.uint8)
    half = np.zeros((6, 7, 4), dtype=np.uint8)
    half[..., 3] = 128
    rgb = np.full((6, 7, 3), 17, dtype=np.uint8)
    grid = render.image_grid([opaque, transparent, half, rgb, opaque], columns=3, pad=2, background=(10, 20, 30))

    assert grid.shape == (2 * (6 + 2) + 2, 3 * (7 + 2) + 2, 3) and grid.dtype == np.uint8
    assert grid[0, 0].tolist() == [10, 20, 30]  # padding
    assert grid[2, 2].tolist() == [200, 0, 0]  # first tile, top left
    assert grid[2, 11].tolist() == [10, 20, 30]  # transparent tile shows the background
    assert grid[2, 20].tolist() == np.round(np.array([10, 20, 30]) * (1 - 128 / 255)).tolist()
    assert grid[10, 2].tolist() == [17, 17, 17]  # second row, RGB tile
    assert grid[10, 20].tolist() == [10, 20, 30]  # empty cell
    assert grid[17, 28].tolist() == [10, 20, 30]


def test_save_png_round_trip_is_atomic(tmp_path, monkeypatch):
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 4), dtype=np.uint8)
    path = tmp_path / "view.png"
    render.save_png(path, image)
    render.save_png(path, image[..., :3])  # overwriting works
    with Image.open(path) as png:
        np.testing.assert_array_equal(np.asarray(png), image[..., :3])
    assert os.listdir(tmp_path) == ["view.png"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(render.os, "replace", failing_replace)
    with pytest.raises(OSError):
        render.save_png(tmp_path / "other.png", image)
    assert os.listdir(tmp_path) == ["view.png"]
    with pytest.raises(TypeError):
        render.save_png(tmp_path / "float.png", image.astype(np.float32))
