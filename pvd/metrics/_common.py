"""Input checks and the process pool shared by the metric modules."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from pvd.data.pool import ordered_map


def as_points(x: Any, name: str = "points") -> torch.Tensor:
    """``x`` as a floating tensor of shape (B, N, 3); float16/bfloat16 become float32."""
    t = torch.as_tensor(x)
    if t.ndim != 3 or t.shape[-1] != 3 or t.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, N, 3) with N >= 1, got {tuple(t.shape)}")
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def as_pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of clouds (B, N, 3), (B, M, 3) with one batch size, dtype and device."""
    a, b = as_points(a, "a"), as_points(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must hold the same number of clouds, got {a.shape[0]} and {b.shape[0]}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Data handed to forked workers: set before the pool starts, read by the task functions.
_shared: dict[str, Any] = {}
_parent_pid = os.getpid()


def _single_thread_in_workers() -> None:
    # Each worker process computes one block with one thread: on two cores this measured
    # 1.8x faster than one process with two torch threads (small matmuls scale poorly).
    if os.getpid() != _parent_pid:
        torch.set_num_threads(1)


def run_blocks(function: Callable[[Any], Any], tasks: Sequence[Any], shared: dict[str, Any], workers: int,
               progress: Callable[[Any], None] | None = None) -> list[Any]:
    """``function(task)`` for every task, in ``workers`` forked processes that see ``shared``.

    ``function`` must be a module-level function reading its inputs from ``_common._shared``.
    ``progress`` is called with each result as it arrives (in task order).
    """
    global _parent_pid
    _parent_pid = os.getpid()
    _shared.clear()
    _shared.update(shared)
    results = []
    try:
        with ordered_map(function, tasks, workers, initializer=_single_thread_in_workers) as outputs:
            for output in outputs:
                results.append(output)
                if progress is not None:
                    progress(output)
    finally:
        _shared.clear()
    return results


def chunks(items: Iterable[Any], size: int) -> list[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    out, current = [], []
    for item in items:
        current.append(item)
        if len(current) == size:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def to_numpy64(x: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
