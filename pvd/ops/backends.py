"""Optional faster implementations of the point ops, picked at import when installed.

pytorch3d (CPU and CUDA) supplies furthest point sampling, ball query and k-NN. torchsparse
is detected (for a future sparse voxel branch) but nothing uses it yet. Neither is required:
without them every op runs its plain PyTorch path, and :func:`use_backends` switches the
backends off, e.g. to compare both paths.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType


def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - broken builds raise more than ImportError:
        # torchsparse asserts on a CUDA device at import on a CPU-only torch.
        return None


pytorch3d_ops = _try_import("pytorch3d.ops")
torchsparse = _try_import("torchsparse")
_enabled = True


def enabled() -> bool:
    """Whether installed backends are used (True unless inside ``use_backends(False)``)."""
    return _enabled


@contextlib.contextmanager
def use_backends(on: bool) -> Iterator[None]:
    """Temporarily use (True) or bypass (False) the installed backends."""
    global _enabled
    previous, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = previous


def available() -> dict[str, bool]:
    """Which optional backends imported."""
    return {"pytorch3d": pytorch3d_ops is not None, "torchsparse": torchsparse is not None}
