"""Furthest point sampling: pytorch3d's when installed, else a loop over the centres (CPU) or
that loop replayed from a CUDA graph (CUDA)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

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
    """The plain PyTorch path of :func:`furthest_point_sample` (a loop over the m steps only).

    On CUDA the loop is captured once per (shape, dtype, device, m) in a CUDA graph and replayed:
    one launch per call instead of a few per centre (see :func:`_fps_cuda`).
    """
    # Coordinate planes (B, 3, N): each step is a handful of small ops, the whole cost of FPS
    # on CPU; this layout made them ~1.7x faster than (B, N, 3).
    # Float32 or wider, and outside autocast (which would run CUDA's sum in float32 for bf16
    # points): the indices do not depend on the caller's precision settings.
    q = points.detach().to(torch.promote_types(points.dtype, torch.float32)).transpose(1, 2).contiguous()
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
        if q.is_cuda:
            return _fps_cuda(q, m)
        with _one_cpu_thread(q.device):
            return _fps_loop(q, m)


def _fps_loop(q: Tensor, m: int) -> Tensor:
    """FPS of coordinate planes q (B, 3, N) -> (B, m) int64, one small step per centre.

    Allocates its own state, so that a CUDA graph capturing it holds the whole computation."""
    b, _, n = q.shape
    indices = torch.zeros(b, m, dtype=torch.long, device=q.device)
    distance = torch.full((b, n), float("inf"), dtype=q.dtype, device=q.device)
    last = torch.zeros(b, 1, 1, dtype=torch.long, device=q.device)
    for i in range(1, m):
        d = (q - q.gather(2, last.expand(b, 3, 1))).square_().sum(dim=1)
        torch.minimum(distance, d, out=distance)
        last = distance.argmax(dim=1).view(b, 1, 1)  # argmax returns the first maximum
        indices[:, i] = last.view(b)
    return indices


# CUDA graphs of _fps_loop, least recently used first: key -> (graph, input q, output indices),
# or None where capture failed (the loop runs instead). A training run uses a few shapes.
_GRAPHS: OrderedDict[tuple, tuple[Any, Tensor, Tensor] | None] = OrderedDict()
_GRAPHS_KEPT = 8


def _fps_cuda(q: Tensor, m: int) -> Tensor:
    """_fps_loop(q, m) replayed from a CUDA graph (identical kernels, so identical indices);
    the plain loop wherever capture or replay raises a RuntimeError. The graph's input and
    output buffers are shared: calls on one stream at a time (as a training loop makes them)."""
    key = (tuple(q.shape), q.dtype, q.device, m)
    if key in _GRAPHS:
        _GRAPHS.move_to_end(key)
        entry = _GRAPHS[key]
    else:
        try:
            entry = _capture(q, m)
        except RuntimeError:
            entry = None
        _GRAPHS[key] = entry
        while len(_GRAPHS) > _GRAPHS_KEPT:
            _GRAPHS.popitem(last=False)
    if entry is not None:
        graph, static_q, static_out = entry
        try:
            static_q.copy_(q)
            graph.replay()
            return static_out.clone()  # the graph overwrites static_out on its next replay
        except RuntimeError:
            _GRAPHS[key] = None
    return _fps_loop(q, m)


def _capture(q: Tensor, m: int) -> tuple[Any, Tensor, Tensor]:
    """A CUDA graph of _fps_loop on a static copy of q (torch.cuda.graphs' recipe: warm up on
    a side stream, then capture). ``thread_local`` capture leaves other threads' CUDA calls
    (e.g. a data loader's pinned copies) alone."""
    with torch.cuda.device(q.device):
        static_q = q.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _fps_loop(static_q, m)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = _fps_loop(static_q, m)
    return graph, static_q, static_out


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
