"""Furthest point sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
    # on CPU; this layout made them ~1.7x faster than (B, N, 3).
    q = points.detach().transpose(1, 2).contiguous()
    indices = torch.zeros(b, m, dtype=torch.long, device=q.device)
    distance = torch.full((b, n), float("inf"), dtype=q.dtype, device=q.device)
    last = torch.zeros(b, 1, 1, dtype=torch.long, device=q.device)
    with _one_cpu_thread(q.device):
        for i in range(1, m):
            d = (q - q.gather(2, last.expand(b, 3, 1))).square_().sum(dim=1)
            torch.minimum(distance, d, out=distance)
            last = distance.argmax(dim=1).view(b, 1, 1)  # argmax returns the first maximum
            indices[:, i] = last.view(b)
    return indices


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the m small steps on one thread. Splitting kernels this small across threads gains
    nothing on an idle CPU, and on a busy one every step waits for all threads to be scheduled:
    FPS of 16 x 2048 points took 4-20 s with 2 threads against 0.12 s with one, measured while
    other processes held the 2 cores. The setting is process-wide: kernels that other Python
    threads run meanwhile also get one thread; it is restored on exit."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
