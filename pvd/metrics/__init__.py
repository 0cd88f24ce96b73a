"""Metrics for point clouds and meshes, with the convention of every number stated.

Per pair of clouds (batches (B, N, 3) -> (B,)): :func:`chamfer_distance`, :func:`emd`,
:func:`f_score`, :func:`voxel_iou`, :func:`normal_consistency`; per pair of meshes:
:func:`mesh_iou`, :func:`mesh_normal_consistency`. Between sets of shapes:
:func:`distribution_metrics` (MMD, COV, 1-NNA over CD and EMD, PointFlow's definitions)
over :func:`pairwise_chamfer` / :func:`pairwise_emd` matrices. P-FID and P-KID live in
:mod:`pvd.pfid`.
"""

from pvd.metrics.distances import (
    CHAMFER_CONVENTIONS,
    F_SCORE_CONVENTION,
    chamfer_distance,
    f_score,
    nearest_neighbors,
    pairwise_chamfer,
    precision_recall,
)
from pvd.metrics.distribution import (
    NORMALIZATIONS,
    distribution_metrics,
    mmd_cov,
    normalize_clouds,
    one_nn_accuracy,
    pair_count,
    pairwise_matrices,
)
from pvd.metrics.matching import EMD_CONVENTION, auction_assignment, emd, emd_assignment, exact_assignment, pairwise_emd
from pvd.metrics.volume import (
    IOU_CONVENTION,
    NORMAL_CONSISTENCY_CONVENTION,
    mesh_iou,
    mesh_normal_consistency,
    normal_consistency,
    voxel_iou,
    voxelize_mesh,
    voxelize_points,
)

__all__ = [
    "CHAMFER_CONVENTIONS", "EMD_CONVENTION", "F_SCORE_CONVENTION", "IOU_CONVENTION", "NORMALIZATIONS",
    "NORMAL_CONSISTENCY_CONVENTION", "auction_assignment", "chamfer_distance", "distribution_metrics", "emd",
    "emd_assignment", "exact_assignment", "f_score", "mesh_iou", "mesh_normal_consistency", "mmd_cov",
    "nearest_neighbors", "normal_consistency", "normalize_clouds", "one_nn_accuracy", "pair_count",
    "pairwise_chamfer", "pairwise_emd", "pairwise_matrices", "precision_recall", "voxel_iou", "voxelize_mesh",
    "voxelize_points",
]
