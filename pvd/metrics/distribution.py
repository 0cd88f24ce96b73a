"""Distribution metrics with PointFlow's definitions: MMD, COV and 1-NNA over CD and EMD.

With M_rs[i, j] = D(reference_i, sample_j) (D = Chamfer or EMD):

- MMD = mean over references i of min_j M_rs[i, j] (lower is better);
- COV = |{argmin_i M_rs[i, j] : samples j}| / |references| (higher is better);
- 1-NNA: leave-one-out 1-nearest-neighbour classification over the union of references
  (label 1) and samples (label 0), using [[M_rr, M_rs], [M_rs^T, M_ss]] with +inf on the
  diagonal; accuracy over all shapes (50% is ideal, 100% means the sets are separable).
  Ties go to the lower index of that matrix (references before samples), as argmin does.

Each pairwise matrix is computed once and serves all three metrics. Results carry a
``convention`` entry that states the distance definitions and the normalisation, because
numbers under different conventions are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pvd.metrics._common import as_points
from pvd.metrics.distances import CHAMFER_CONVENTIONS, pairwise_chamfer
from pvd.metrics.matching import DEFAULT_TOLERANCE, EMD_CONVENTION, method_description, pairwise_emd

NORMALIZATIONS = {
    "none": "the clouds as given",
    "pointflow": "PointFlow's global normalisation undone: both sets de-normalised to x * std + mean with the "
                 "dataset's training-split statistics (the original data frame), as PVD and PointFlow evaluate",
    "unit-sphere": "each cloud, samples and references alike, centred at its centroid and scaled so that its "
                   "farthest point is at distance 1",
    "bbox": "each cloud, samples and references alike, centred at its bounding-box centre and scaled so that its "
            "longest side spans [-1, 1]",
}
MATRIX_KEYS = ("rr", "rs", "ss")
METRIC_DEFINITIONS = {
    "MMD": "mean over references of the distance to the nearest sample",
    "COV": "fraction of references that are the nearest reference of at least one sample",
    "1-NNA": "leave-one-out 1-NN accuracy over references (label 1) and samples (label 0) with +inf diagonal; "
             "ties to the lower index; 0.5 is ideal",
    "units": "COV and 1-NNA are fractions (x100 for percent); MMD is in the distance's units after normalisation",
}


def normalize_clouds(clouds: Any, normalization: str, stats: tuple[Any, float] | None = None) -> torch.Tensor:
    """(S, N, 3) clouds under one of :data:`NORMALIZATIONS` (a new tensor).

    ``"pointflow"`` needs ``stats = (mean (3,), std)``: the clouds are taken to be in PointFlow's
    normalised frame and mapped back with ``x * std + mean``. ``"unit_sphere"`` is accepted
    for ``"unit-sphere"`` (the dataset's spelling).
    """
    normalization = canonical_normalization(normalization)
    x = as_points(clouds, "clouds")
    if normalization == "none":
        return x.clone()
    if normalization == "pointflow":
        if stats is None:
            raise ValueError("normalization='pointflow' needs stats=(mean, std) of the training split")
        mean, std = stats
        return x * float(std) + torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, 1, 3)
    if normalization == "unit-sphere":
        centre = x.mean(dim=1, keepdim=True)
        radius = (x - centre).norm(dim=-1).amax(dim=1).reshape(-1, 1, 1)
    else:  # bbox
        lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        centre = (lo + hi) / 2
        radius = ((hi - lo).amax(dim=-1, keepdim=True)) / 2
    if not bool((radius > 0).all()):
        raise ValueError(f"{normalization} normalisation: a cloud has all its points at one place")
    return (x - centre) / radius


def canonical_normalization(name: str) -> str:
    """The metric spelling of a normalisation name (``unit_sphere`` -> ``unit-sphere``)."""
    name = name.replace("_", "-")
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {name!r}")
    return name


def mmd_cov(m_rs: Any) -> dict[str, float]:
    """MMD, COV (and MMD measured from the samples' side) from M_rs (references x samples)."""
    m = torch.as_tensor(m_rs, dtype=torch.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"M_rs must be a non-empty (references, samples) matrix, got {tuple(m.shape)}")
    nearest_ref = m.argmin(dim=0)  # for each sample, its nearest reference
    return {
        "MMD": float(m.amin(dim=1).mean()),
        "COV": float(torch.unique(nearest_ref).numel() / m.shape[0]),
        "MMD-smp": float(m.amin(dim=0).mean()),
    }


def one_nn_accuracy(m_rr: Any, m_rs: Any, m_ss: Any) -> dict[str, float]:
    """1-NNA accuracy over all shapes and over references / samples alone (see the module docstring)."""
    m_rr, m_rs, m_ss = (torch.as_tensor(m, dtype=torch.float64) for m in (m_rr, m_rs, m_ss))
    n_r, n_s = m_rs.shape
    if m_rr.shape != (n_r, n_r) or m_ss.shape != (n_s, n_s):
        raise ValueError(f"matrix shapes do not fit: M_rr {tuple(m_rr.shape)}, M_rs {tuple(m_rs.shape)}, M_ss {tuple(m_ss.shape)}")
    if n_r + n_s < 2:
        raise ValueError("1-NNA needs at least two shapes")
    full = torch.cat([torch.cat([m_rr, m_rs], 1), torch.cat([m_rs.T, m_ss], 1)], 0)
    full.fill_diagonal_(float("inf"))
    labels = torch.cat([torch.ones(n_r), torch.zeros(n_s)])
    predicted = labels[full.argmin(dim=1)]
    correct = (predicted == labels).double()
    return {
        "1-NNA": float(correct.mean()),
        "1-NNA-references": float(correct[:n_r].mean()) if n_r else float("nan"),
        "1-NNA-samples": float(correct[n_r:].mean()) if n_s else float("nan"),
    }


def pairwise_matrices(samples: Any, references: Any, metric: str, *, chamfer: str = "squared",
                      emd_method: str = "exact", tolerance: float = DEFAULT_TOLERANCE, workers: int | None = None,
                      progress: Any = None) -> dict[str, torch.Tensor]:
    """M_rr, M_rs, M_ss for ``metric`` "CD" or "EMD" (clouds already normalised)."""
    if metric == "CD":
        def compute(x, y=None):
            return pairwise_chamfer(x, y, chamfer, workers=workers, progress=progress)
    elif metric == "EMD":
        def compute(x, y=None):
            return pairwise_emd(x, y, method=emd_method, exact=emd_method == "exact", tolerance=tolerance,
                                workers=workers, progress=progress)
    else:
        raise ValueError(f"metric must be 'CD' or 'EMD', got {metric!r}")
    return {"rr": compute(references), "rs": compute(references, samples), "ss": compute(samples)}


def pair_count(num_samples: int, num_references: int) -> int:
    """Distance evaluations behind one metric's three matrices (symmetric halves counted once)."""
    return num_references * (num_references - 1) // 2 + num_samples * (num_samples - 1) // 2 + num_samples * num_references


def convention(metrics: Sequence[str], normalization: str, *, chamfer: str = "squared", emd_method: str = "exact",
               tolerance: float = DEFAULT_TOLERANCE, stats: tuple[Any, float] | None = None) -> dict[str, Any]:
    """The ``convention`` record of a result: every definition its numbers depend on."""
    normalization = canonical_normalization(normalization)
    record: dict[str, Any] = {"normalization": f"{normalization}: {NORMALIZATIONS[normalization]}"}
    if normalization == "pointflow" and stats is not None:
        record["pointflow_stats"] = {"mean": [float(v) for v in np.asarray(stats[0]).reshape(-1)], "std": float(stats[1])}
    if "CD" in metrics:
        record["CD"] = f"{chamfer}: {CHAMFER_CONVENTIONS[chamfer]}"
    if "EMD" in metrics:
        record["EMD"] = f"{EMD_CONVENTION}; {method_description(emd_method, tolerance)}"
    record.update(METRIC_DEFINITIONS)
    return record


def distribution_metrics(samples: Any, references: Any, *, metrics: Sequence[str] = ("CD", "EMD"),
                         normalization: str = "none", stats: tuple[Any, float] | None = None,
                         chamfer: str = "squared", emd_method: str = "exact", tolerance: float = DEFAULT_TOLERANCE,
                         workers: int | None = None, matrices: dict[str, dict[str, Any]] | None = None,
                         return_matrices: bool = False, progress: Any = None) -> dict[str, Any]:
    """MMD, COV and 1-NNA between samples (S, N, 3) and references (R, N, 3), PointFlow's definitions.

    Returns a dict keyed like PointFlow's results: ``MMD-CD``, ``COV-CD``, ``1-NNA-CD``,
    ``MMD-EMD``, ``COV-EMD``, ``1-NNA-EMD`` (plus ``MMD-smp-*``, ``1-NNA-*-references`` and
    ``1-NNA-*-samples``), ``num_samples``, ``num_references``, ``num_points`` and
    ``convention`` (the definitions and normalisation behind the numbers). COV and 1-NNA are
    fractions.

    normalization: ``"none"`` (as given), ``"pointflow"`` (both sets in PointFlow's normalised
    frame, de-normalised with ``stats=(mean, std)`` as PVD evaluates), ``"unit-sphere"`` or
    ``"bbox"`` (per cloud; see :data:`NORMALIZATIONS`). chamfer: the Chamfer convention
    (default PointFlow's ``"squared"``). emd_method: ``"exact"`` (default) or ``"auction"``
    (relative error at most ``tolerance``). matrices: precomputed ``{"CD": {"rr", "rs", "ss"}}``
    to reuse; ``return_matrices`` adds the computed ones under ``"matrices"``.
    """
    metrics = [m.upper() for m in metrics]
    for m in metrics:
        if m not in ("CD", "EMD"):
            raise ValueError(f"metrics must be 'CD' and/or 'EMD', got {m!r}")
    samples = normalize_clouds(samples, normalization, stats)
    references = normalize_clouds(references, normalization, stats)
    if len(samples) < 1 or len(references) < 1:
        raise ValueError("need at least one sample and one reference")
    result: dict[str, Any] = {}
    computed: dict[str, dict[str, torch.Tensor]] = {}
    for metric in metrics:
        given = (matrices or {}).get(metric)
        if given is not None:
            mats = {k: torch.as_tensor(given[k], dtype=torch.float64) for k in MATRIX_KEYS}
        else:
            mats = pairwise_matrices(samples, references, metric, chamfer=chamfer, emd_method=emd_method,
                                     tolerance=tolerance, workers=workers, progress=progress)
        computed[metric] = mats
        for key, value in mmd_cov(mats["rs"]).items():
            result[f"{key}-{metric}"] = value
        nna = one_nn_accuracy(mats["rr"], mats["rs"], mats["ss"])
        result[f"1-NNA-{metric}"] = nna["1-NNA"]
        result[f"1-NNA-{metric}-references"] = nna["1-NNA-references"]
        result[f"1-NNA-{metric}-samples"] = nna["1-NNA-samples"]
    result.update(num_samples=len(samples), num_references=len(references), num_points=int(samples.shape[1]))
    result["convention"] = convention(metrics, normalization, chamfer=chamfer, emd_method=emd_method,
                                      tolerance=tolerance, stats=stats)
    if return_matrices:
        result["matrices"] = computed
    return result
