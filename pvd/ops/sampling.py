"""Furthest point sampling."""

from __future__ import annotations

import torch
from torch import Tensor

from pvd.ops import backends


def furthest_point_sample(points: Tensor, m: int) -> Tensor:
    """Indices of ``m`` points chosen by iterative furthest point sampling, starting at index 0.

    points: (B, N, 3), 1 <= m <= N. Returns (B, m) int64. Each step takes the point farthest
    (squared Euclidean) from those already chosen; ties go to the lowest index, so once every
    distinct position is taken (duplicates, m close to N) the remaining picks are index 0.
    """
    n = points.shape[1]
    if not 1 <= m <= n:
        raise ValueError(f"cannot sample {m} of {n} points")
    if backends.pytorch3d_ops is not None and backends.enabled():
        return backends.pytorch3d_ops.sample_farthest_points(points.detach().float(), K=m)[1]
    return furthest_point_sample_torch(points, m)


def furthest_point_sample_torch(points: Tensor, m: int) -> Tensor:
    """The plain PyTorch path of :func:`furthest_point_sample` (a loop over the m steps only)."""
    b, n, _ = points.shape
    # Coordinate planes (B, 3, N): each step is a handful of small ops, the whole cost of FPS
    # on CPU; this layout made them ~1.7x faster than (B, N, 3) and insensitive to the number
    # of threads (no stalls when other processes hold the cores).
    q = points.detach().transpose(1, 2).contiguous()
    indices = torch.zeros(b, m, dtype=torch.long, device=q.device)
    distance = torch.full((b, n), float("inf"), dtype=q.dtype, device=q.device)
    last = torch.zeros(b, 1, 1, dtype=torch.long, device=q.device)
    for i in range(1, m):
        d = (q - q.gather(2, last.expand(b, 3, 1))).square_().sum(dim=1)
        torch.minimum(distance, d, out=distance)
        last = distance.argmax(dim=1).view(b, 1, 1)  # argmax returns the first maximum
        indices[:, i] = last.view(b)
    return indices
