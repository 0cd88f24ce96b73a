"""Process settings for fast CPU runs.

glibc's malloc returns large freed blocks to the OS and maps fresh pages for the next large
tensor; in a CPU training step that costs ~40% of the time (REFERENCE section 6: the reference
network's batch-16 step takes 30.8 s by default, 16.4 s with these settings). glibc reads the
settings only at start-up, so a command that wants them re-executes itself once.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
OPT_OUT = "PVD_DEFAULT_MALLOC"  # set to 1 to keep the default allocator behaviour


def reexec_with_malloc_settings() -> None:
    """Restart this command with the allocator told to keep freed memory (Linux/glibc only; once)."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "1":
        return
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.environ.update(MALLOC_ENV)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.argv])


class PeakMemory:
    """Peak memory while the ``with`` block runs, in bytes (``.peak``).

    CUDA: the allocator's peak (``torch.cuda.max_memory_allocated``), reset on entry. CPU on
    Linux: the kernel's resident-set high-water mark (VmHWM), reset on entry through
    /proc/self/clear_refs, so no allocation is missed however short-lived. Elsewhere, or where
    the reset is refused: the resident set size polled every ``interval`` seconds by a
    background thread (a block that holds the GIL can hide between polls). RSS includes memory
    the process already held before the block, so it is an upper bound on what the block needs.
    Not reentrant: the high-water mark is per process.
    """

    def __init__(self, device: "torch.device | str" = "cpu", interval: float = 0.01):
        import torch

        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self._thread = None

    def __enter__(self) -> "PeakMemory":
        import threading

        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.peak = _rss()
        if _reset_high_water_mark():
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.peak = max(self.peak, _rss(), _high_water_mark())


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int:
    """Peak resident set size since the last reset, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _rss() -> int:
    """Current resident set size in bytes (the lifetime peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pick_device(name: str, option: str = "--device") -> "torch.device":
    """The device a command's ``--device`` (or ``device=``, named by ``option``) names: auto (CUDA
    when available, else CPU), cpu, cuda or cuda:N; anything else, or CUDA without a device, is a
    one-line UserError."""
    import torch

    from pvd.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        separator = " " if option.startswith("-") else "="
        raise UserError(f"{option}{separator}{name} but no CUDA device is available")
    return device
