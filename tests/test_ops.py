"""Point-voxel ops against naive loop references (forward and backward), pytorch3d style."""

import itertools
import math

import pytest
import torch

from pvd.ops import (
    backends,
    ball_query,
    devoxelize,
    furthest_point_sample,
    group,
    normalize_coords,
    three_nn,
    three_nn_interpolate,
    voxelize,
)
from pvd.ops.neighbors import ball_query_torch, three_nn_torch
from pvd.ops.sampling import furthest_point_sample_torch

DT = torch.float64  # exact comparisons; the ops are dtype-generic


def cloud(b, n, seed, duplicates=False):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(b, n, 3, generator=g, dtype=DT)
    if duplicates and n > 2:
        p[:, 1] = p[:, 0]  # a point repeated
        p[:, -1] = p[:, 0]
    return p


# ---- naive references: one point (one centre, one voxel) at a time ----


def naive_norm_coords(p, r):
    out = torch.zeros_like(p)
    for b in range(p.shape[0]):
        n = p.shape[1]
        mean = [sum(p[b, i, a].item() for i in range(n)) / n for a in range(3)]
        c = [[p[b, i, a].item() - mean[a] for a in range(3)] for i in range(n)]
        radius = max(math.sqrt(sum(x * x for x in row)) for row in c)
        for i in range(n):
            for a in range(3):
                v = c[i][a] / (2 * radius) + 0.5 if radius > 0 else 0.5
                out[b, i, a] = min(max(v * r, 0.0), r - 1.0)
    return out


def naive_voxelize(f, p, r):
    b, c, n = f.shape
    nc = naive_norm_coords(p, r)
    count = {}
    sums = {}
    for bi in range(b):
        for i in range(n):
            key = (bi, *(round(nc[bi, i, a].item()) for a in range(3)))  # Python rounds half to even too
            count[key] = count.get(key, 0) + 1
            sums[key] = sums.get(key, 0) + f[bi, :, i]
    out = torch.zeros(b, c, r, r, r, dtype=f.dtype)
    for (bi, x, y, z), s in sums.items():
        out[bi, :, x, y, z] = s / count[(bi, x, y, z)]
    return out, nc


def naive_devoxelize(grid, nc, r):
    b, c = grid.shape[:2]
    n = nc.shape[1]
    out = torch.zeros(b, c, n, dtype=grid.dtype)
    for bi in range(b):
        for i in range(n):
            x = [nc[bi, i, a].item() for a in range(3)]
            lo = [math.floor(v) for v in x]
            acc = 0
            for corner in itertools.product((0, 1), repeat=3):
                w = 1.0
                idx = []
                for a in range(3):
                    frac = x[a] - lo[a]
                    w *= frac if corner[a] else 1 - frac
                    idx.append(min(lo[a] + corner[a], r - 1))
                acc = acc + w * grid[bi, :, idx[0], idx[1], idx[2]]
            out[bi, :, i] = acc
    return out


def sq(a, b):
    return sum((a[k].item() - b[k].item()) ** 2 for k in range(3))


def naive_fps(p, m):
    out = []
    for bi in range(p.shape[0]):
        n = p.shape[1]
        dist = [math.inf] * n
        chosen = [0]
        for _ in range(1, m):
            last = chosen[-1]
            for i in range(n):
                dist[i] = min(dist[i], sq(p[bi, i], p[bi, last]))
            best = max(range(n), key=lambda i: (dist[i], -i))  # farthest, lowest index on ties
            chosen.append(best)
        out.append(chosen)
    return torch.tensor(out)


def naive_ball_query(centers, points, radius, k):
    b, m, _ = centers.shape
    out = torch.zeros(b, m, k, dtype=torch.long)
    for bi in range(b):
        for j in range(m):
            hits = [i for i in range(points.shape[1]) if sq(centers[bi, j], points[bi, i]) < radius**2][:k]
            if hits:
                out[bi, j] = torch.tensor(hits + [hits[0]] * (k - len(hits)))
    return out


def naive_group(f, idx):
    b, c, _ = f.shape
    _, m, k = idx.shape
    out = torch.zeros(b, c, m, k, dtype=f.dtype)
    for bi, j, s in itertools.product(range(b), range(m), range(k)):
        out[bi, :, j, s] = f[bi, :, idx[bi, j, s]]
    return out


def naive_interpolate(points, centers, feats):
    b, c, m = feats.shape
    n = points.shape[1]
    out = torch.zeros(b, c, n, dtype=feats.dtype)
    for bi in range(b):
        for i in range(n):
            order = sorted(range(m), key=lambda j: (sq(points[bi, i], centers[bi, j]), j))[:3]
            pairs = [(j, sq(points[bi, i], centers[bi, j])) for j in order]
            pairs += [(0, 1e10)] * (3 - len(pairs))  # fewer than 3 centres: index 0, far away
            inv = [1 / min(max(d, 1e-10), 1e10) for _, d in pairs]
            out[bi, :, i] = sum(w / sum(inv) * feats[bi, :, j] for (j, _), w in zip(pairs, inv))
    return out


def grads(fn, *inputs, seed=0):
    """Gradients of a fixed random projection of fn(*inputs) with respect to inputs."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * w).sum().backward()
    return out.detach(), [x.grad for x in inputs]


# ---- voxelisation ----

VOX_CASES = [(1, 1, 1, 1), (2, 7, 3, 2), (2, 40, 4, 5), (3, 64, 2, 8), (1, 9, 1, 3)]


@pytest.mark.parametrize("b,n,c,r", VOX_CASES)
@pytest.mark.parametrize("duplicates", [False, True])
def test_voxelize_matches_naive(b, n, c, r, duplicates):
    p = cloud(b, n, seed=n + r, duplicates=duplicates)
    f = torch.randn(b, c, n, dtype=DT, generator=torch.Generator().manual_seed(1))
    grid, (gf,) = grads(lambda f: voxelize(f, p, r)[0], f)
    ref_grid, ref_nc = naive_voxelize(f, p, r)
    _, (ref_gf,) = grads(lambda f: naive_voxelize(f, p, r)[0], f)
    torch.testing.assert_close(voxelize(f, p, r)[1], ref_nc)
    torch.testing.assert_close(grid, ref_grid)
    torch.testing.assert_close(gf, ref_gf)
    assert grid.shape == (b, c, r, r, r)


def test_voxelize_empty_voxels_are_zero_and_counts_average():
    p = torch.tensor([[[-1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]]], dtype=DT)  # two points share a voxel
    f = torch.tensor([[[1.0, 2.0, 4.0]]], dtype=DT)
    grid, nc = voxelize(f, p, 4)
    # x: -1 -> 0.5 - 0.5 = 0 -> voxel 0; +1 -> 1.0 * 4 clamped to 3; y = z = 0.5 * 4 = 2.
    assert grid[0, 0, 0, 2, 2] == 1.0 and grid[0, 0, 3, 2, 2] == 3.0
    assert grid.count_nonzero() == 2
    torch.testing.assert_close(nc[0, 0], torch.tensor([0.0, 2.0, 2.0], dtype=DT))


def test_voxelize_coincident_points_land_in_the_centre():
    grid, nc = voxelize(torch.ones(1, 1, 4), torch.full((1, 4, 3), 0.3), 5)
    assert torch.isfinite(nc).all() and grid[0, 0, 2, 2, 2] == 1.0


def test_voxelize_invariant_to_translation_and_uniform_scale():
    p = cloud(2, 200, seed=3)
    f = torch.randn(2, 3, 200, dtype=DT)
    moved = p * 2.7 + torch.tensor([1.5, -4.0, 0.25], dtype=DT)
    for r in (4, 16, 32):
        g0, c0 = voxelize(f, p, r)
        g1, c1 = voxelize(f, moved, r)
        torch.testing.assert_close(c1, c0)
        torch.testing.assert_close(g1, g0)
    # ...but not to anisotropic scaling.
    stretched = voxelize(f, p * torch.tensor([1.0, 3.0, 1.0], dtype=DT), 16)[1]
    assert not torch.allclose(stretched, voxelize(f, p, 16)[1])


def test_voxelize_unnormalized_maps_unit_cube():
    p = torch.tensor([[[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]], dtype=DT)
    nc = normalize_coords(p, 8, normalize=False)
    torch.testing.assert_close(nc, torch.tensor([[[0.0] * 3, [7.0] * 3]], dtype=DT))


def test_voxelize_coordinates_get_no_gradient():
    p = cloud(1, 10, seed=0).requires_grad_()
    grid, nc = voxelize(torch.randn(1, 2, 10, dtype=DT), p, 4)
    assert not nc.requires_grad and not grid.requires_grad


# ---- devoxelisation ----


@pytest.mark.parametrize("b,n,c,r", VOX_CASES)
def test_devoxelize_matches_naive(b, n, c, r):
    p = cloud(b, n, seed=r)
    nc = normalize_coords(p, r)
    grid = torch.randn(b, c, r, r, r, dtype=DT, generator=torch.Generator().manual_seed(2))
    out, (gg,) = grads(lambda g: devoxelize(g, nc, r), grid)
    ref, (ref_gg,) = grads(lambda g: naive_devoxelize(g, nc, r), grid)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gg, ref_gg)


def test_devoxelize_equals_grid_sample():
    r = 6
    nc = normalize_coords(cloud(2, 50, seed=4), r)
    grid = torch.randn(2, 3, r, r, r, dtype=DT)
    g = ((2 * nc + 1) / r - 1).flip(-1).view(2, 50, 1, 1, 3)  # grid_sample wants (z, y, x) order
    ref = torch.nn.functional.grid_sample(grid, g, align_corners=False).view(2, 3, 50)
    torch.testing.assert_close(devoxelize(grid, nc, r), ref)


def test_devoxelize_at_voxel_centres_returns_voxel_values():
    r = 4
    grid = torch.randn(1, 2, r, r, r, dtype=DT)
    cells = torch.tensor([[[0, 0, 0], [3, 3, 3], [1, 2, 3]]], dtype=DT)
    out = devoxelize(grid, cells, r)
    for i, (x, y, z) in enumerate(cells[0].long().tolist()):
        torch.testing.assert_close(out[0, :, i], grid[0, :, x, y, z])


def test_devoxelize_rejects_wrong_resolution():
    with pytest.raises(ValueError):
        devoxelize(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 3), 5)


# ---- furthest point sampling ----


@pytest.mark.parametrize("b,n,m", [(1, 1, 1), (2, 10, 4), (3, 33, 33), (2, 64, 17)])
@pytest.mark.parametrize("duplicates", [False, True])
def test_fps_matches_naive(b, n, m, duplicates):
    p = cloud(b, n, seed=n, duplicates=duplicates)
    idx = furthest_point_sample_torch(p, m)
    assert idx.dtype == torch.long and idx.shape == (b, m)
    torch.testing.assert_close(idx, naive_fps(p, m))
    assert (idx[:, 0] == 0).all()


def test_fps_m_equal_n_is_a_permutation_and_duplicates_pick_index_0():
    p = cloud(2, 20, seed=5)
    idx = furthest_point_sample(p, 20)
    assert (idx.sort(dim=1).values == torch.arange(20)).all()
    dup = cloud(1, 6, seed=6)
    dup[:, 3:] = dup[:, :3]  # three distinct positions, each twice
    idx = furthest_point_sample_torch(dup, 6)
    assert set(idx[0, :3].tolist()) | {0} == set(idx[0, :3].tolist()) and idx[0, 3:].tolist() == [0, 0, 0]


def test_fps_restores_the_thread_count():
    threads = torch.get_num_threads()
    furthest_point_sample_torch(cloud(2, 30, seed=0), 10)
    assert torch.get_num_threads() == threads


def test_fps_rejects_bad_m():
    with pytest.raises(ValueError):
        furthest_point_sample(torch.zeros(1, 4, 3), 5)


# ---- ball query ----

BQ_CASES = [  # b, m, n, radius, k
    (1, 1, 1, 0.5, 1),
    (2, 5, 30, 0.8, 4),  # some centres have fewer than k hits
    (2, 8, 40, 3.0, 6),  # most balls are full
    (1, 6, 25, 0.05, 3),  # mostly single hits (the centre itself)
    (2, 12, 12, 1.2, 12),  # m = n
]


@pytest.mark.parametrize("b,m,n,radius,k", BQ_CASES)
@pytest.mark.parametrize("duplicates", [False, True])
def test_ball_query_matches_naive(b, m, n, radius, k, duplicates):
    p = cloud(b, n, seed=n + k, duplicates=duplicates)
    centers = p[:, :m]
    idx = ball_query_torch(centers, p, radius, k)
    assert idx.dtype == torch.long and idx.shape == (b, m, k)
    torch.testing.assert_close(idx, naive_ball_query(centers, p, radius, k))


def test_ball_query_no_hit_gives_zero_and_short_balls_repeat_first():
    p = torch.tensor([[[0.0, 0, 0], [5.0, 0, 0], [0.1, 0, 0], [9.0, 0, 0]]])
    centers = torch.tensor([[[100.0, 0, 0], [5.05, 0, 0], [0.05, 0, 0]]])
    idx = ball_query(centers, p, 0.2, 3)
    assert idx.tolist() == [[[0, 0, 0], [1, 1, 1], [0, 2, 0]]]


def test_ball_query_boundary_is_strict():
    p = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0]]])
    assert ball_query(p[:, :1], p, 0.5, 2).tolist() == [[[0, 0]]]


# ---- grouping ----


@pytest.mark.parametrize("b,c,n,m,k", [(1, 1, 1, 1, 1), (2, 3, 10, 4, 5), (2, 5, 30, 7, 3)])
def test_group_matches_naive(b, c, n, m, k):
    g = torch.Generator().manual_seed(n)
    f = torch.randn(b, c, n, dtype=DT, generator=g)
    idx = torch.randint(0, n, (b, m, k), generator=g)
    idx[:, 0, :] = 0  # repeated indices accumulate gradient
    out, (gf,) = grads(lambda f: group(f, idx), f)
    ref, (ref_gf,) = grads(lambda f: naive_group(f, idx), f)
    assert out.shape == (b, c, m, k)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gf, ref_gf)


# ---- 3-NN interpolation ----


@pytest.mark.parametrize("b,c,n,m", [(1, 1, 1, 1), (2, 3, 9, 2), (2, 4, 20, 3), (3, 2, 30, 11), (1, 3, 16, 16)])
def test_three_nn_interpolate_matches_naive(b, c, n, m):
    points = cloud(b, n, seed=n)
    centers = cloud(b, m, seed=m + 100)
    if m >= 2:
        centers[:, 1] = points[:, 0]  # a point exactly on a centre (distance clamped to 1e-10)
    feats = torch.randn(b, c, m, dtype=DT, generator=torch.Generator().manual_seed(3))
    out, (gf,) = grads(lambda f: three_nn_interpolate(points, centers, f), feats)
    ref, (ref_gf,) = grads(lambda f: naive_interpolate(points, centers, f), feats)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gf, ref_gf)


def test_three_nn_distance_clamp_is_1e_10():
    """Distances below 1e-10 count as 1e-10: a point on one centre and 1e-5 from another
    splits its weight evenly between them."""
    points = torch.zeros(1, 1, 3, dtype=DT)
    centers = torch.tensor([[[0.0, 0, 0], [1e-5, 0, 0], [5.0, 0, 0]]], dtype=DT)
    out = three_nn_interpolate(points, centers, torch.tensor([[[1.0, 0.0, 0.0]]], dtype=DT))
    torch.testing.assert_close(out, torch.tensor([[[0.5]]], dtype=DT), atol=1e-9, rtol=0)


def test_three_nn_ties_go_to_lower_index_and_weights_ignore_coordinates():
    points = torch.zeros(1, 1, 3, dtype=DT)
    centers = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0], [0, 0, 0.5]]], dtype=DT)
    dist, idx = three_nn_torch(points, centers)
    assert idx.tolist() == [[[4, 0, 1]]]
    torch.testing.assert_close(dist, torch.tensor([[[0.25, 1.0, 1.0]]], dtype=DT))
    centers.requires_grad_()
    out = three_nn_interpolate(points, centers, torch.randn(1, 2, 5, dtype=DT, requires_grad=True))
    out.sum().backward()
    assert centers.grad is None


# ---- batching, dtypes, devices, backends ----


def test_ops_accept_float32_and_strided_views():
    p = torch.randn(2, 3, 50).transpose(1, 2)  # (B, N, 3) view of (B, 3, N) storage
    f = torch.randn(2, 50, 6).transpose(1, 2)  # (B, C, N) view of (B, N, C) storage
    grid, nc = voxelize(f, p, 4)
    torch.testing.assert_close(grid, voxelize(f.contiguous(), p.contiguous(), 4)[0])
    assert devoxelize(grid, nc, 4).dtype == torch.float32
    torch.testing.assert_close(devoxelize(grid, nc.transpose(1, 2).contiguous().transpose(1, 2), 4),
                               devoxelize(grid.contiguous(), nc, 4))
    torch.testing.assert_close(three_nn_interpolate(p, p[:, :7], f[:, :, :7]),
                               three_nn_interpolate(p.contiguous(), p[:, :7].contiguous(), f[:, :, :7].contiguous()))
    idx = ball_query(p[:, :5], p, 0.5, 4)
    torch.testing.assert_close(group(f, idx), group(f.contiguous(), idx))


def test_ops_are_per_shape():
    """A shape's results do not depend on the other shapes in its batch."""
    p = torch.randn(3, 40, 3)
    f = torch.randn(3, 4, 40)
    alone = [voxelize(f[i : i + 1], p[i : i + 1], 5)[0] for i in range(3)]
    torch.testing.assert_close(voxelize(f, p, 5)[0], torch.cat(alone))
    idx = furthest_point_sample(p, 10)
    torch.testing.assert_close(idx[1:2], furthest_point_sample(p[1:2], 10))
    c = p[:, :6]
    torch.testing.assert_close(ball_query(c, p, 0.7, 5)[2:], ball_query(c[2:], p[2:], 0.7, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU path not tested here")
def test_ops_cuda_match_cpu():
    p = torch.randn(2, 300, 3)
    f = torch.randn(2, 8, 300)
    for fn in (lambda p, f: voxelize(f, p, 8)[0], lambda p, f: three_nn_interpolate(p, p[:, :20], f[:, :, :20])):
        torch.testing.assert_close(fn(p.cuda(), f.cuda()).cpu(), fn(p, f), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(furthest_point_sample(p.cuda(), 30).cpu(), furthest_point_sample(p, 30))
    torch.testing.assert_close(ball_query(p[:, :9].cuda(), p.cuda(), 0.5, 7).cpu(), ball_query(p[:, :9], p, 0.5, 7))


needs_pytorch3d = pytest.mark.skipif(
    backends.pytorch3d_ops is None, reason="pytorch3d not installed: its backend is not tested (optional)")


@needs_pytorch3d
def test_pytorch3d_backend_matches_torch_path():
    p = torch.randn(2, 500, 3)
    centers = p[:, :64]
    with backends.use_backends(True):
        fast = (furthest_point_sample(p, 64), ball_query(centers, p, 0.3, 16), three_nn(p, centers)[1])
    with backends.use_backends(False):
        slow = (furthest_point_sample(p, 64), ball_query(centers, p, 0.3, 16), three_nn(p, centers)[1])
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)


def test_backend_import_guard_swallows_assertion_errors(monkeypatch):
    """torchsparse asserts on a CUDA device at import on CPU-only torch: that must not break pvd."""

    def broken(name):
        raise AssertionError("no CUDA device")

    monkeypatch.setattr(backends.importlib, "import_module", broken)
    assert backends._try_import("torchsparse") is None
    with backends.use_backends(False):
        assert not backends.enabled()
    assert backends.enabled()
