"""Point-voxel operations in plain, batched PyTorch (CPU and CUDA).

Features are channel-first (B, C, N); coordinates are (B, N, 3). Exact semantics follow the
PVD / PVCNN reference kernels (see each function). Optional backends: :mod:`pvd.ops.backends`.
"""

from pvd.ops.neighbors import ball_query, group, square_distance, three_nn, three_nn_interpolate
from pvd.ops.sampling import furthest_point_sample
from pvd.ops.voxel import devoxelize, normalize_coords, voxelize

__all__ = [
    "ball_query",
    "devoxelize",
    "furthest_point_sample",
    "group",
    "normalize_coords",
    "square_distance",
    "three_nn",
    "three_nn_interpolate",
    "voxelize",
]
