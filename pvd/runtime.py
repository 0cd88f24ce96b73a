"""Process settings for fast CPU runs.

glibc's malloc returns large freed blocks to the OS and maps fresh pages for the next large
tensor; in a CPU training step that costs ~40% of the time (REFERENCE section 6: the reference
network's batch-16 step takes 30.8 s by default, 16.4 s with these settings). glibc reads the
settings only at start-up, so a command that wants them re-executes itself once.
"""

from __future__ import annotations

import os
import sys

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
