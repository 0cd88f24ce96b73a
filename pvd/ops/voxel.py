"""Point <-> voxel conversion: average voxelisation and trilinear devoxelisation (PVCNN).

Grids are indexed ``grid[b, c, x, y, z]`` as the reference CUDA kernels index them
(flat index ``(x * r + y) * r + z``), so converted Conv3d kernels keep their orientation.
Both ops work on rows of channels, (B * r^3, C): the grid they return is a channels-last
view, which is the layout oneDNN's Conv3d prefers on CPU.

Counts, 1/count, interpolation weights and sums are computed in at least float32 whatever the
features' dtype (bf16 under autocast would round 1/count and a crowded voxel's running sum to 8
bits); results come back in the features' dtype. Neither op synchronises with the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pvd.ops.rows import weighted_rows


def normalize_coords(coords: Tensor, resolution: int, normalize: bool = True, eps: float = 0.0) -> Tensor:
    """Continuous voxel coordinates in [0, r - 1], per shape, without gradient.

    coords: (B, N, 3). With ``normalize`` the shape is centred and scaled so that its farthest
    point from the centroid lands on the grid's inscribed sphere (scale- and translation-
    invariant); otherwise coordinates are taken to lie in [-1, 1]. Returns (B, N, 3).
    A shape whose points all coincide maps to the centre voxel (the reference divides 0 by 0).
    """
    c = coords.detach()
    c = c.to(_at_least_fp32(c.dtype))  # bf16 cannot tell the 32 cells of a row apart reliably
    c = c - c.mean(dim=1, keepdim=True)
    if normalize:
        radius = c.norm(dim=2, keepdim=True).amax(dim=1, keepdim=True)
        c = c / (2.0 * radius + eps).clamp_min(torch.finfo(c.dtype).tiny) + 0.5
    else:
        c = (c + 1.0) / 2.0
    return (c * resolution).clamp(0, resolution - 1)


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _flat_index(cells: Tensor, resolution: int) -> Tensor:
    """(B, N, 3) integer cells -> (B, N) row indices into a (B * r^3, C) grid."""
    b = cells.shape[0]
    r = resolution
    flat = (cells[..., 0] * r + cells[..., 1]) * r + cells[..., 2]
    return flat + torch.arange(b, device=cells.device).view(b, 1) * r**3


def voxelize(features: Tensor, coords: Tensor, resolution: int, normalize: bool = True,
             eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Average the features of the points falling into each voxel (empty voxels are 0).

    features: (B, C, N); coords: (B, N, 3) (detached: no gradient reaches them).
    Returns grid (B, C, r, r, r) (a channels-last view) and the normalised continuous
    coordinates (B, N, 3) that :func:`devoxelize` takes.
    """
    b, c, n = features.shape
    r = resolution
    norm_coords = normalize_coords(coords, r, normalize, eps)
    rows = _flat_index(torch.round(norm_coords).long(), r).reshape(-1)
    acc = _at_least_fp32(features.dtype)
    # Counts by scatter_add_, not torch.bincount: bincount reads its maximum back to the host (a
    # device sync on CUDA in every PVConv); on CPU scatter_add_ also measured 3-4x faster.
    counts = torch.zeros(b * r**3, dtype=acc, device=rows.device)
    counts.scatter_add_(0, rows, torch.ones(b * n, dtype=acc, device=rows.device))
    # Scale each point by 1/count before summing (as the reference does): the backward is
    # then a plain row gather.
    weights = counts.reciprocal_().index_select(0, rows).view(b * n, 1)
    src = features.transpose(1, 2).reshape(b * n, c).to(acc) * weights
    # index_put_ with accumulate is several times faster than index_add on CPU.
    grid = src.new_zeros(b * r**3, c).index_put_((rows,), src, accumulate=True).to(features.dtype)
    return grid.view(b, r, r, r, c).permute(0, 4, 1, 2, 3), norm_coords


def devoxelize(grid: Tensor, norm_coords: Tensor, resolution: int) -> Tensor:
    """Trilinear interpolation of a grid at continuous voxel coordinates.

    grid: (B, C, r, r, r); norm_coords: (B, N, 3) in [0, r - 1] (from :func:`voxelize`).
    Returns (B, C, N) (a view of a (B, N, C) tensor). Gradients reach ``grid`` only.
    """
    b, c = grid.shape[:2]
    n = norm_coords.shape[1]
    r = resolution
    if tuple(grid.shape[2:]) != (r, r, r):
        raise ValueError(f"grid {tuple(grid.shape)} does not have resolution {r}")
    with torch.no_grad():
        x = norm_coords.detach()
        lo = x.floor()
        frac = (x - lo).unsqueeze(2)  # (B, N, 1, 3)
        corner, upper = _corners(x.device)  # (8, 3) of 0/1, as int64 and bool
        # At x = r - 1 the upper corner is clamped onto the lower one; its weight is 0.
        cells = (lo.long().unsqueeze(2) + corner).clamp_(max=r - 1)  # (B, N, 8, 3)
        weights = torch.where(upper, frac, 1 - frac).prod(dim=3)  # (B, N, 8), float32 or wider
        rows = _flat_index(cells.reshape(b, n * 8, 3), r).view(b * n, 8)
    table = grid.permute(0, 2, 3, 4, 1).reshape(b * r**3, c)  # free for a channels-last grid
    out = weighted_rows(table, rows, weights.view(b * n, 8))
    return out.view(b, n, c).transpose(1, 2)


_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
_CORNERS_ON: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _corners(device: torch.device) -> tuple[Tensor, Tensor]:
    """The cube's corner offsets on ``device`` (copied there once, not on every call)."""
    cached = _CORNERS_ON.get(device)
    if cached is None:
        corner = _CORNERS.to(device)
        cached = _CORNERS_ON[device] = (corner, corner.bool())
    return cached
