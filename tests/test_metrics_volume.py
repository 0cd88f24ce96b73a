"""pvd.metrics volume metrics: voxel IoU of clouds and meshes, normal consistency."""

import numpy as np
import pytest
import torch

import pvd.metrics as metrics
from pvd.data.synthetic.categories import generate_shape
from pvd.metrics.volume import cube_bounds, sample_mesh_surface

# a closed box mesh [0, 1]^3 wound outward (12 triangles; each face split along a diagonal)
BOX_VERTICES = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
BOX_FACES = np.array([
    [0, 1, 3], [0, 3, 2],  # x = 0
    [4, 6, 7], [4, 7, 5],  # x = 1
    [0, 4, 5], [0, 5, 1],  # y = 0
    [2, 3, 7], [2, 7, 6],  # y = 1
    [0, 2, 6], [0, 6, 4],  # z = 0
    [1, 5, 7], [1, 7, 3],  # z = 1
])


def box(lo, hi):
    return BOX_VERTICES * (np.asarray(hi, float) - lo) + lo, BOX_FACES


def test_box_mesh_is_wound_outward():
    v, f = box((0, 0, 0), (1, 1, 1))
    tri = v[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(((tri.mean(1) - 0.5) * normals).sum(1) > 0)


def test_voxelize_points_hand_computed():
    points = np.array([[0.1, 0.1, 0.1], [0.9, 0.1, 0.1], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    grid = metrics.voxelize_points(points, 2, (np.zeros(3), 1.0))
    want = np.zeros((2, 2, 2), bool)
    want[0, 0, 0] = want[1, 0, 0] = want[1, 1, 1] = True  # the far corner belongs to the last cell; (2,0,0) is outside
    np.testing.assert_array_equal(grid, want)


def test_voxel_iou_of_clouds():
    a = torch.tensor([[[0.1, 0.1, 0.1], [0.9, 0.1, 0.1]]])
    b = torch.tensor([[[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]]])
    bounds = (np.zeros(3), 1.0)
    assert metrics.voxel_iou(a, b, 2, bounds).item() == pytest.approx(1 / 3)  # cells {000, 100} vs {000, 111}
    assert metrics.voxel_iou(a, a, 2, bounds).item() == 1.0
    assert metrics.voxel_iou(a, a + 5, 2, bounds).item() == 0.0 or np.isnan(metrics.voxel_iou(a, a + 5, 2, bounds).item())
    # default bounds: the cube around both clouds, so a cloud against itself moved far is 0
    assert metrics.voxel_iou(a, a + 5, 4).item() == 0.0
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 1, (2, 300, 3)))
    y = torch.from_numpy(rng.uniform(0, 1, (2, 300, 3)))
    got = metrics.voxel_iou(x, y, 5, bounds)
    for k in range(2):  # against a loop over cells
        cells_x = {tuple(np.minimum((p * 5).astype(int), 4)) for p in x[k].numpy()}
        cells_y = {tuple(np.minimum((p * 5).astype(int), 4)) for p in y[k].numpy()}
        assert got[k].item() == pytest.approx(len(cells_x & cells_y) / len(cells_x | cells_y))


@pytest.mark.parametrize("rule", ["nonzero", "parity"])
def test_box_voxelization_with_rays_through_edges(rule):
    # The grid's cell centres at 0.5, 1.5, ...: the box [0, 4]^3 inside [0, 8]^3 has its face
    # diagonals passing exactly through centres; each such ray must count one crossing.
    v, f = box((0, 0, 0), (4, 4, 4))
    grid = metrics.voxelize_mesh(v, f, 8, (np.zeros(3), 8.0), rule)
    want = np.zeros((8, 8, 8), bool)
    want[:4, :4, :4] = True
    np.testing.assert_array_equal(grid, want)
    # A box with its vertices exactly on cell centres (in grid units [0, 3]^3): rays run along
    # its edges and through its vertices. The symbolic shift of each ray by (+d, +d^2) puts
    # columns x = 0 and y = 0 inside and x = 3, y = 3 outside; a centre on a face counts the
    # face as above it, so z = 0 is outside and z = 3 inside: exactly 3 x 3 x 3 cells.
    v, f = box((0.5, 0.5, 0.5), (3.5, 3.5, 3.5))
    grid = metrics.voxelize_mesh(v, f, 8, (np.zeros(3), 8.0), rule)
    want = np.zeros((8, 8, 8), bool)
    want[0:3, 0:3, 1:4] = True
    np.testing.assert_array_equal(grid, want)


def test_mesh_iou_of_boxes_analytic():
    a, b = box((0, 0, 0), (1, 1, 1)), box((0.5, 0, 0), (1.5, 1, 1))
    bounds = (np.zeros(3), 2.0)
    assert metrics.mesh_iou(a, b, 16, bounds) == pytest.approx(1 / 3)  # overlap 0.5, union 1.5
    assert metrics.mesh_iou(a, a, 16) == 1.0
    assert metrics.mesh_iou(a, box((2, 2, 2), (3, 3, 3)), 16) == 0.0


def test_overlapping_parts_nonzero_fills_parity_empties():
    v1, f1 = box((0, 0, 0), (2, 1, 1))
    v2, f2 = box((1, 0, 0), (3, 1, 1))
    vertices, faces = np.concatenate([v1, v2]), np.concatenate([f1, f2 + len(v1)])
    bounds = (np.zeros(3), 4.0)
    union = metrics.voxelize_mesh(vertices, faces, 8, bounds, "nonzero")
    parity = metrics.voxelize_mesh(vertices, faces, 8, bounds, "parity")
    assert union.sum() == 6 * 2 * 2  # x in [0, 3) -> 6 cells, y and z -> 2 each
    assert parity.sum() == 4 * 2 * 2  # the overlap x in [1, 2) is crossed twice: empty
    assert not parity[2:4].any()


def test_voxelized_synthetic_shapes_match_their_exact_inside_test():
    rng = np.random.default_rng(5)
    for category in ("chair", "airplane", "lamp"):
        shape = generate_shape(category, rng)
        vertices, faces, _ = shape.mesh()
        lo, side = cube_bounds(vertices)
        lo, side = lo - 0.013 * side, side * 1.031  # a generic grid, off the parts' planes
        resolution = 24
        grid = metrics.voxelize_mesh(vertices, faces, resolution, (lo, side))
        centres = lo + (np.stack(np.meshgrid(*[np.arange(resolution)] * 3, indexing="ij"), -1) + 0.5) * side / resolution
        want = shape.inside(centres.reshape(-1, 3), tol=0.0).reshape(grid.shape)
        assert want.sum() > 0
        np.testing.assert_array_equal(grid, want)


def test_normal_consistency_hand_computed_and_against_loops():
    p = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    up, down = torch.tensor([[[0.0, 0, 1], [0, 0, 1]]]), torch.tensor([[[0.0, 0, -2], [0, 0, -1]]])
    assert metrics.normal_consistency(p, up, p, down).item() == pytest.approx(1.0)  # orientation ignored
    side = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]])
    assert metrics.normal_consistency(p, up, p, side).item() == pytest.approx(0.0)
    tilted = torch.tensor([[[0.0, 0.6, 0.8], [0, 0, 1]]])
    assert metrics.normal_consistency(p, up, p, tilted).item() == pytest.approx((0.8 + 1) / 2)
    rng = np.random.default_rng(1)
    pa, pb = rng.normal(size=(2, 20, 3)), rng.normal(size=(2, 15, 3))
    na, nb = rng.normal(size=(2, 20, 3)), rng.normal(size=(2, 15, 3))
    got = metrics.normal_consistency(*(torch.from_numpy(x) for x in (pa, na, pb, nb)))
    unit_a, unit_b = na / np.linalg.norm(na, axis=-1, keepdims=True), nb / np.linalg.norm(nb, axis=-1, keepdims=True)
    for k in range(2):
        ab = [abs(unit_a[k, i] @ unit_b[k, np.argmin(((pb[k] - pa[k, i]) ** 2).sum(1))]) for i in range(20)]
        ba = [abs(unit_b[k, j] @ unit_a[k, np.argmin(((pa[k] - pb[k, j]) ** 2).sum(1))]) for j in range(15)]
        assert got[k].item() == pytest.approx((np.mean(ab) + np.mean(ba)) / 2)


def test_mesh_normal_consistency_and_surface_samples():
    cube = box((0, 0, 0), (1, 1, 1))
    points, normals = sample_mesh_surface(*cube, 2000, seed=0)
    on_face = np.isclose(points, 0) | np.isclose(points, 1)
    assert on_face.any(axis=1).all()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1)
    assert metrics.mesh_normal_consistency(cube, cube, 2000) > 0.9  # only samples near the edges pair across faces
    stretched = box((0, 0, 0), (1, 1, 3))
    assert metrics.mesh_normal_consistency(cube, stretched, 2000) < metrics.mesh_normal_consistency(cube, cube, 2000)
