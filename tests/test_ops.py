"""Point-voxel ops against naive loop references (forward and backward), pytorch3d style."""

import itertools
import math
from collections import OrderedDict

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
from pvd.ops import sampling
from pvd.ops.neighbors import ball_query_torch, three_nn_torch
from pvd.ops.rows import weighted_rows
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
    """Gradients of a fixed random projection of fn(*inputs) with respect to inputs (on the
    inputs' device; compare after .cpu())."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    (out * w).sum().backward()
    return out.detach(), [x.grad for x in inputs]


# ---- voxelisation ----

VOX_CASES = [(1, 1, 1, 1), (2, 7, 3, 2), (2, 40, 4, 5), (3, 64, 2, 8), (1, 9, 1, 3)]


@pytest.mark.parametrize("b,n,c,r", VOX_CASES)
@pytest.mark.parametrize("duplicates", [False, True])
def test_voxelize_matches_naive(b, n, c, r, duplicates, device):
    p = cloud(b, n, seed=n + r, duplicates=duplicates)
    f = torch.randn(b, c, n, dtype=DT, generator=torch.Generator().manual_seed(1))
    grid, (gf,) = grads(lambda f: voxelize(f, p.to(device), r)[0], f.to(device))
    ref_grid, ref_nc = naive_voxelize(f, p, r)
    _, (ref_gf,) = grads(lambda f: naive_voxelize(f, p, r)[0], f)
    torch.testing.assert_close(voxelize(f.to(device), p.to(device), r)[1].cpu(), ref_nc)
    torch.testing.assert_close(grid.cpu(), ref_grid)
    torch.testing.assert_close(gf.cpu(), ref_gf)
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
def test_devoxelize_matches_naive(b, n, c, r, device):
    p = cloud(b, n, seed=r)
    nc = normalize_coords(p, r)
    grid = torch.randn(b, c, r, r, r, dtype=DT, generator=torch.Generator().manual_seed(2))
    out, (gg,) = grads(lambda g: devoxelize(g, nc.to(device), r), grid.to(device))
    ref, (ref_gg,) = grads(lambda g: naive_devoxelize(g, nc, r), grid)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(gg.cpu(), ref_gg)


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
def test_fps_matches_naive(b, n, m, duplicates, device):
    p = cloud(b, n, seed=n, duplicates=duplicates)
    idx = furthest_point_sample_torch(p.to(device), m)  # on CUDA: captured in a graph, replayed
    assert idx.dtype == torch.long and idx.shape == (b, m)
    torch.testing.assert_close(idx.cpu(), naive_fps(p, m))
    assert (idx[:, 0] == 0).all()
    if device.type == "cuda":  # a second call replays the cached graph on new points
        q = cloud(b, n, seed=n + 1, duplicates=duplicates)
        torch.testing.assert_close(furthest_point_sample_torch(q.to(device), m).cpu(), naive_fps(q, m))


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
def test_ball_query_matches_naive(b, m, n, radius, k, duplicates, device):
    p = cloud(b, n, seed=n + k, duplicates=duplicates)
    centers = p[:, :m]
    idx = ball_query_torch(centers.to(device), p.to(device), radius, k)
    assert idx.dtype == torch.long and idx.shape == (b, m, k)
    torch.testing.assert_close(idx.cpu(), naive_ball_query(centers, p, radius, k))


def test_ball_query_k_beyond_n_and_far_centres(device):
    """k > N (every ball short), centres off the cloud (no hit), and points far apart in index."""
    p = cloud(2, 7, seed=11)
    centers = torch.cat([p[:, [6, 2]], torch.full((2, 1, 3), 50.0, dtype=DT)], dim=1)
    idx = ball_query_torch(centers.to(device), p.to(device), 1.5, 10)
    torch.testing.assert_close(idx.cpu(), naive_ball_query(centers, p, 1.5, 10))
    assert (idx[:, 2] == 0).all()


def test_ball_query_no_hit_gives_zero_and_short_balls_repeat_first(device):
    p = torch.tensor([[[0.0, 0, 0], [5.0, 0, 0], [0.1, 0, 0], [9.0, 0, 0]]], device=device)
    centers = torch.tensor([[[100.0, 0, 0], [5.05, 0, 0], [0.05, 0, 0]]], device=device)
    idx = ball_query(centers, p, 0.2, 3)
    assert idx.tolist() == [[[0, 0, 0], [1, 1, 1], [0, 2, 0]]]


def test_ball_query_boundary_is_strict(device):
    p = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0]]], device=device)
    assert ball_query(p[:, :1], p, 0.5, 2).tolist() == [[[0, 0]]]


# ---- grouping ----


@pytest.mark.parametrize("b,c,n,m,k", [(1, 1, 1, 1, 1), (2, 3, 10, 4, 5), (2, 5, 30, 7, 3)])
def test_group_matches_naive(b, c, n, m, k, device):
    g = torch.Generator().manual_seed(n)
    f = torch.randn(b, c, n, dtype=DT, generator=g)
    idx = torch.randint(0, n, (b, m, k), generator=g)
    idx[:, 0, :] = 0  # repeated indices accumulate gradient
    out, (gf,) = grads(lambda f: group(f, idx.to(device)), f.to(device))
    ref, (ref_gf,) = grads(lambda f: naive_group(f, idx), f)
    assert out.shape == (b, c, m, k)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(gf.cpu(), ref_gf)


# ---- 3-NN interpolation ----


@pytest.mark.parametrize("b,c,n,m", [(1, 1, 1, 1), (2, 3, 9, 2), (2, 4, 20, 3), (3, 2, 30, 11), (1, 3, 16, 16)])
def test_three_nn_interpolate_matches_naive(b, c, n, m, device):
    points = cloud(b, n, seed=n)
    centers = cloud(b, m, seed=m + 100)
    if m >= 2:
        centers[:, 1] = points[:, 0]  # a point exactly on a centre (distance clamped to 1e-10)
    feats = torch.randn(b, c, m, dtype=DT, generator=torch.Generator().manual_seed(3))
    out, (gf,) = grads(lambda f: three_nn_interpolate(points.to(device), centers.to(device), f), feats.to(device))
    ref, (ref_gf,) = grads(lambda f: naive_interpolate(points, centers, f), feats)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(gf.cpu(), ref_gf)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU path not tested here")
def test_ops_cuda_match_cpu_at_pvd_sizes():
    """PVD's sizes (2048 points, r = 32, 512 centres, k = 32), forward and backward; FPS through
    its captured graph (cached: a graph, not the fallback), twice on different clouds."""
    g = torch.Generator().manual_seed(0)
    p, f = torch.randn(4, 2048, 3, generator=g), torch.randn(4, 16, 2048, generator=g)

    def pv(p, f):
        out, (gf,) = grads(lambda f: devoxelize(*voxelize(f, p, 32), 32), f)
        return out, gf

    for a, b in zip(pv(p.cuda(), f.cuda()), pv(p, f)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5)
    sampling._GRAPHS.clear()
    for q in (p, p.flip(1)):
        torch.testing.assert_close(furthest_point_sample_torch(q.cuda(), 512).cpu(), furthest_point_sample_torch(q, 512))
    assert [v is not None for v in sampling._GRAPHS.values()] == [True]
    c = p[:, :512]
    torch.testing.assert_close(ball_query_torch(c.cuda(), p.cuda(), 0.3, 32).cpu(), ball_query_torch(c, p, 0.3, 32))


# ---- low precision: counts, weights and sums in float32 whatever the features' dtype ----

BF16 = 2.0**-8  # bf16 keeps 8 significant bits: rounding to nearest moves a value by <= 2^-8 of it


def assert_bf16_rounding_of(got, ref, extra=1e-5):
    """got (bf16) is ref (exact, float64) rounded to bf16, up to ``extra`` relative error of a
    float32 computation; ref's entries are positive or exactly 0 (so relative error is defined)."""
    assert got.dtype == torch.bfloat16
    err = (got.double() - ref).abs()
    bound = ref.abs() * (BF16 + extra)
    assert (err <= bound).all(), f"max error {(err / ref.abs().clamp_min(1e-300)).max():.2e} of the value"


def test_voxelize_crowded_voxel_with_bf16_features_matches_float64():
    """300 points in one voxel: in bf16, 1/300 and the running sum of 300 terms round to 8 bits
    (the old code was off by ~8%); counts and sums in float32 leave only the output rounding."""
    n, r = 302, 8
    p = torch.zeros(1, n, 3, dtype=DT)
    p[0, :, 0] = torch.linspace(-1e-3, 1e-3, n, dtype=DT)
    p[0, 0, 0], p[0, 1, 0] = 1.0, -1.0  # two far points fix the scale: 300 points share the centre voxel
    g = torch.Generator().manual_seed(0)
    f = (1 + torch.rand(1, 4, n, generator=g)).bfloat16()  # positive: relative errors are well defined
    grid, _ = voxelize(f, p, r)
    ref, _ = naive_voxelize(f.double(), p, r)
    assert grid.dtype == torch.bfloat16 and ref[0, 0].count_nonzero() == 3
    assert_bf16_rounding_of(grid, ref)
    w = (1 + torch.rand(grid.shape, generator=g)).bfloat16()  # d loss / d grid
    (gf,) = torch.autograd.grad(voxelize(f.requires_grad_(), p, r)[0], f, w)
    fd = f.detach().double().requires_grad_()
    (ref_gf,) = torch.autograd.grad(naive_voxelize(fd, p, r)[0], fd, w.double())
    assert_bf16_rounding_of(gf, ref_gf)


def test_low_precision_tables_are_weighted_in_float32():
    """weighted_rows (under devoxelize and 3-NN interpolation) with a bf16 table: float32 weights
    and sums, forward and backward, then one rounding to bf16. 80 gathers per table row make a
    bf16 accumulation of the gradient visibly wrong."""
    g = torch.Generator().manual_seed(0)
    table = (1 + torch.rand(50, 16, generator=g)).bfloat16()
    rows = torch.randint(0, 50, (500, 8), generator=g)
    weights = torch.rand(500, 8, generator=g)
    out = weighted_rows(table.requires_grad_(), rows, weights)
    ref = (table.detach().double()[rows] * weights.double()[..., None]).sum(1)
    assert_bf16_rounding_of(out, ref)
    grad_out = (1 + torch.rand(out.shape, generator=g)).bfloat16()
    (gt,) = torch.autograd.grad(out, table, grad_out)
    ref_gt = torch.zeros(50, 16, dtype=DT).index_add_(0, rows.reshape(-1),
                                                     (grad_out.double()[:, None] * weights.double()[..., None]).reshape(-1, 16))
    assert_bf16_rounding_of(gt, ref_gt)
    # devoxelize and three_nn_interpolate pass float32 weights through, and return bf16
    r = 6
    nc = normalize_coords(cloud(2, 40, seed=1), r).float()
    grid = (1 + torch.rand(2, 3, r, r, r, generator=g)).bfloat16()
    assert_bf16_rounding_of(devoxelize(grid, nc, r), naive_devoxelize(grid.double(), nc.double(), r))
    points, centers = cloud(1, 30, seed=2), cloud(1, 9, seed=3)
    feats = (1 + torch.rand(1, 3, 9, generator=g)).bfloat16()
    assert_bf16_rounding_of(three_nn_interpolate(points.float(), centers.float(), feats),
                            naive_interpolate(points.float().double(), centers.float().double(), feats.double()), extra=1e-4)


# ---- no host synchronisation on the training path ----

SYNC_OPS = {"aten.bincount", "aten.nonzero", "aten.masked_select", "aten._local_scalar_dense"}


class _OpNames(TorchDispatchMode):
    """Records the name of every aten op dispatched (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_hot_path_ops_do_not_sync_with_the_host(device):
    """bincount, nonzero, masked_select and .item() make a CUDA device report back to the host
    (a stall in every layer); none may run in voxelize, devoxelize, ball query, grouping or 3-NN
    interpolation, forward or backward."""
    p = torch.randn(2, 300, 3, device=device)
    f = torch.randn(2, 8, 300, device=device, requires_grad=True)
    with _OpNames() as ops:
        grid, nc = voxelize(f, p, 8)
        out = devoxelize(grid, nc, 8) + three_nn_interpolate(p, p[:, :20], f[:, :, :20])
        idx = ball_query_torch(p[:, :16], p, 0.5, 8)
        out.sum().backward()
        group(f, idx).sum().backward()
    assert {"aten.index_put_", "aten.cumsum", "aten._embedding_bag"} <= ops.names  # the mode saw the ops
    assert not ops.names & SYNC_OPS, sorted(ops.names & SYNC_OPS)


def test_fps_step_loop_does_not_sync_with_the_host(device):
    """The loop a CUDA graph captures: a sync inside would make every capture fail."""
    with _OpNames() as ops:
        sampling._fps_loop(torch.randn(2, 3, 100, device=device), 16)
    assert "aten.argmax" in ops.names and not ops.names & SYNC_OPS, sorted(ops.names & SYNC_OPS)


# ---- FPS's CUDA graph cache (its bookkeeping, run on CPU with a stand-in for the capture) ----


class _FakeGraph:
    def __init__(self, q, m):
        self.static_q, self.m = q.clone(), m
        self.static_out = torch.full((q.shape[0], m), -1)

    def replay(self):
        self.static_out.copy_(sampling._fps_loop(self.static_q, self.m))


def test_fps_graph_cache_replays_captures_once_evicts_and_falls_back(monkeypatch):
    monkeypatch.setattr(sampling, "_GRAPHS", OrderedDict())
    captured = []

    def capture(q, m):
        captured.append((tuple(q.shape), m))
        if m == 5:
            raise RuntimeError("operation not permitted when stream is capturing")
        graph = _FakeGraph(q, m)
        return graph, graph.static_q, graph.static_out

    monkeypatch.setattr(sampling, "_capture", capture)
    planes = lambda p: p.transpose(1, 2).contiguous()  # noqa: E731
    p, q = cloud(2, 40, seed=1), cloud(2, 40, seed=2)
    first = sampling._fps_cuda(planes(p), 10)
    second = sampling._fps_cuda(planes(q), 10)  # same key: replayed on the new points
    torch.testing.assert_close(first, naive_fps(p, 10))
    torch.testing.assert_close(second, naive_fps(q, 10))
    assert captured == [((2, 3, 40), 10)]
    assert second.data_ptr() != sampling._GRAPHS[((2, 3, 40), DT, p.device, 10)][2].data_ptr()  # a copy
    # a failed capture runs the loop, and is remembered (not retried)
    for _ in range(2):
        torch.testing.assert_close(sampling._fps_cuda(planes(p), 5), naive_fps(p, 5))
    assert captured.count(((2, 3, 40), 5)) == 1 and sampling._GRAPHS[((2, 3, 40), DT, p.device, 5)] is None
    # least recently used graphs go first
    for m in range(11, 11 + sampling._GRAPHS_KEPT):
        sampling._fps_cuda(planes(p), m)
    assert len(sampling._GRAPHS) == sampling._GRAPHS_KEPT
    assert ((2, 3, 40), DT, p.device, 10) not in sampling._GRAPHS


def test_fps_ignores_autocast_and_widens_low_precision_points():
    p = cloud(2, 64, seed=4).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(furthest_point_sample_torch(p, 20), naive_fps(p.double(), 20))
    low = p.bfloat16()
    torch.testing.assert_close(furthest_point_sample_torch(low, 20), naive_fps(low.double(), 20))


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
