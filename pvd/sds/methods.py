"""Each lifting method's starting configuration (``python -m pvd.sds --method M`` and bench.py).

The representation is chosen per method on val (tests/benchmarks/README.md): SDS optimises
points (6 val shapes, 800 iterations: CD 5.8 vs the grid's 9.9 x1e-3, F@1% 0.160 vs 0.083);
the multi-view fit and Magic3D's coarse stage keep the grid they were tuned and measured with
(Magic3D's coarse stage is volumetric by design). ``--set representation.kind=...`` overrides.
"""

from __future__ import annotations

import dataclasses

from pvd.config import apply_overrides
from pvd.sds.distill import DistillConfig
from pvd.sds.multiview import MultiViewConfig

METHODS = ("sds", "multiview", "magic3d")
METHOD_REPRESENTATION = {"sds": "points", "multiview": "voxel", "magic3d": "voxel"}


def method_config(method: str, overrides: list[str]) -> DistillConfig:
    """The optimisation's config for ``method`` with ``KEY=VALUE`` overrides: the SDS run's (also
    Magic3D's coarse stage), or under multiview the fit's (SDS off). Unknown keys raise UserError."""
    base = MultiViewConfig().fit if method == "multiview" else DistillConfig()
    base.representation = dataclasses.replace(base.representation, kind=METHOD_REPRESENTATION[method])
    return apply_overrides(base, overrides)


def magic3d_reuses_sds(overrides: list[str]) -> bool:
    """Whether Magic3D's coarse stage is the SDS run under the same overrides (then it can refine
    that run's saved fields instead of repeating them: ``--coarse-from``)."""
    return dataclasses.asdict(method_config("sds", overrides)) == dataclasses.asdict(method_config("magic3d", overrides))
