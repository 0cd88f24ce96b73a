"""Neighbourhoods of sampled centres: ball query, grouping and 3-NN interpolation (PointNet++)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pvd.ops import backends
from pvd.ops.rows import weighted_rows


def square_distance(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared distances, (B, M, 3) x (B, N, 3) -> (B, M, N).

    Summed per coordinate as dx*dx + dy*dy + dz*dz (like the reference kernels) rather than
    through a matrix product, whose cancellation would move points across a ball's boundary.
    In float32 or wider whatever the inputs' dtype (autocast does not touch these ops).
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)  # never bf16
    a = a.detach().to(dtype).transpose(1, 2).contiguous()  # coordinate planes: contiguous broadcasts
    b = b.detach().to(dtype).transpose(1, 2).contiguous()
    d = torch.sub(a[:, 0, :, None], b[:, 0, None, :]).square_()
    t = torch.sub(a[:, 1, :, None], b[:, 1, None, :])
    d.addcmul_(t, t)
    torch.sub(a[:, 2, :, None], b[:, 2, None, :], out=t)
    return d.addcmul_(t, t)


def ball_query(centers: Tensor, points: Tensor, radius: float, k: int) -> Tensor:
    """The first ``k`` points (in index order) strictly within ``radius`` of each centre.

    centers: (B, M, 3); points: (B, N, 3). Returns (B, M, k) int64 indices into points.
    Missing slots repeat the first hit; a centre with no hit gets index 0 everywhere.
    """
    if backends.pytorch3d_ops is not None and backends.enabled():
        idx = backends.pytorch3d_ops.ball_query(centers.detach().float(), points.detach().float(), K=k,
                                                radius=radius, return_nn=False)[1]
        return _fill_missing(idx)
    return ball_query_torch(centers, points, radius, k)


def ball_query_torch(centers: Tensor, points: Tensor, radius: float, k: int) -> Tensor:
    """The plain PyTorch path of :func:`ball_query`.

    Sync-free (no nonzero or masked_select, whose output sizes a CUDA device must report to the
    host): the s-th hit of a centre is the first point whose running count of hits reaches s,
    found by binary search in the cumulative count. ~20% faster on CPU than the nonzero form.
    """
    b, m, _ = centers.shape
    n = points.shape[1]
    with torch.no_grad():
        inside = square_distance(centers, points) < radius * radius  # (B, M, N); strict boundary
        count = torch.int16 if n < 2**15 else torch.int32  # int16 halves the cumsum's time
        rank = inside.cumsum(dim=2, dtype=count)  # hits among points 0..i, non-decreasing in i
        slots = torch.arange(1, k + 1, dtype=count, device=rank.device).expand(b, m, k).contiguous()
        idx = torch.searchsorted(rank, slots)  # (B, M, k) in [0, N]; N: fewer than s hits
        first = idx[..., :1]
        first = torch.where(first == n, 0, first)  # no hit at all: index 0
        return torch.where(idx == n, first, idx)  # short balls repeat the first hit


def _fill_missing(idx: Tensor) -> Tensor:
    """Replace -1 slots by the first hit, or 0 when there is none (reference semantics)."""
    first = idx[..., :1].clamp(min=0)
    return torch.where(idx < 0, first, idx)


def group(features: Tensor, idx: Tensor) -> Tensor:
    """Gather features of neighbours: (B, C, N), (B, M, K) -> (B, C, M, K).

    The result is a view of a (B, M, K, C) tensor; gradients reach ``features``.
    """
    b, c, n = features.shape
    _, m, k = idx.shape
    rows = idx + torch.arange(b, device=idx.device).view(b, 1, 1) * n
    out = F.embedding(rows, features.transpose(1, 2).reshape(b * n, c))  # (B, M, K, C)
    return out.permute(0, 3, 1, 2)


def three_nn(points: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """The 3 nearest centres of each point and their squared distances, nearest first.

    points: (B, N, 3); centers: (B, M, 3). Returns distances (B, N, 3) (float32 or wider) and
    indices (B, N, 3) int64. Ties go to the lower index; with M < 3 the missing neighbours are
    index 0 at distance inf (as in the reference).
    """
    if backends.pytorch3d_ops is not None and backends.enabled() and centers.shape[1] >= 3:
        d, i, _ = backends.pytorch3d_ops.knn_points(points.detach().float(), centers.detach().float(), K=3)
        return d.to(torch.promote_types(points.dtype, torch.float32)), i
    return three_nn_torch(points, centers)


def three_nn_torch(points: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """The plain PyTorch path of :func:`three_nn`."""
    with torch.no_grad():
        d = square_distance(points.detach(), centers.detach())  # (B, N, M)
        dist, index = [], []
        for j in range(3):
            i = d.argmin(dim=2, keepdim=True)  # first minimum: ties go to the lower index
            dist.append(d.gather(2, i))
            index.append(i)
            if j < 2:
                d.scatter_(2, i, float("inf"))
        return torch.cat(dist, dim=2), torch.cat(index, dim=2)


def three_nn_interpolate(points: Tensor, centers: Tensor, center_features: Tensor) -> Tensor:
    """Inverse squared-distance weighted average of the 3 nearest centres' features.

    points: (B, N, 3); centers: (B, M, 3); center_features: (B, C, M). Returns (B, C, N) (a view
    of a (B, N, C) tensor). Distances are clamped to [1e-10, 1e10]; gradients reach
    ``center_features`` only.
    """
    b, c, m = center_features.shape
    n = points.shape[1]
    dist, idx = three_nn(points, centers)
    with torch.no_grad():
        w = 1.0 / dist.clamp(1e-10, 1e10)
        w = (w / w.sum(dim=2, keepdim=True)).view(b * n, 3)  # float32 or wider, as weighted_rows computes
        rows = (idx + torch.arange(b, device=idx.device).view(b, 1, 1) * m).view(b * n, 3)
    table = center_features.transpose(1, 2).reshape(b * m, c)
    out = weighted_rows(table, rows, w)
    return out.view(b, n, c).transpose(1, 2)
