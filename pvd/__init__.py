"""pvd: point-voxel diffusion for explicit 3D generation.

Subpackages: ``pvd.data`` (HDF5 datasets, ShapeNet readers, the procedural dataset, renderer),
``pvd.diffusion`` (schedules, process, samplers, cascade), ``pvd.ops`` and ``pvd.nn`` (the
point-voxel denoiser), ``pvd.metrics``, ``pvd.pfid`` and ``pvd.evaluate``. The names most
scripts need are re-exported here.
"""

from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.diffusion import CascadeConfig, DiffusionConfig, GaussianDiffusion, build, make_betas
from pvd.metrics import chamfer_distance, distribution_metrics, emd, f_score
from pvd.nn import Condition, PVDUNet, preset

__version__ = "0.1.0"

__all__ = [
    "CascadeConfig", "Condition", "DatasetConfig", "DiffusionConfig", "GaussianDiffusion", "PVDUNet", "ShapeDataset",
    "build", "chamfer_distance", "distribution_metrics", "emd", "f_score", "make_betas", "preset",
]
