"""An ordered process pool for dataset conversion that never outlives its caller."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _worker_init(initializer: Callable[[], Any] | None) -> None:
    # The main process handles Ctrl-C and SIGTERM and then terminates the pool; a worker
    # must also die with the main process if that is SIGKILLed (Linux: parent-death signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if initializer is not None:
        initializer()


@contextlib.contextmanager
def ordered_map(
    function: Callable[[T], R], tasks: Sequence[T], workers: int, initializer: Callable[[], Any] | None = None
) -> Iterator[Iterable[R]]:
    """``function`` over ``tasks``, results in task order, in ``workers`` processes.

    With one worker (or one task) everything runs in this process. The pool is terminated when
    the block exits, normally or not, so an interrupted conversion leaves no stray workers.
    """
    if workers <= 1 or len(tasks) <= 1:
        if initializer is not None:
            initializer()
        yield (function(task) for task in tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = context.Pool(workers, initializer=_worker_init, initargs=(initializer,))
    try:
        yield pool.imap(function, tasks, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
