"""Volumetric IoU (of point clouds or meshes) and normal consistency.

Grids: ``resolution`` cells along each axis of a cube ``bounds = (lo (3,), side)``; by default
the smallest cube holding both inputs (their joint bounding box, centred, its longest side
as the side). A point cloud occupies the cells that hold at least one of its points (points
outside given bounds are ignored); a mesh occupies the cells whose centre lies inside it.

Inside a mesh: rays along +z through the cell centres count signed crossings (the generalised
winding number of a closed surface). ``rule="nonzero"`` (default) counts a centre as inside
when the winding number is not 0, which also fills unions of overlapping closed parts (the
built-in meshes); ``rule="parity"`` uses an odd number of crossings, which does not depend on
the face orientation (ShapeNet's is inconsistent) but empties overlaps. Rays that pass exactly
through edges or vertices are resolved by a symbolic perturbation, so they count once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import trimesh

from pvd.metrics._common import as_pair, to_numpy64
from pvd.metrics.distances import nearest_neighbors

Mesh = tuple[Any, Any]  # (vertices (V, 3), faces (F, 3) int)
IOU_CONVENTION = ("|A and B| / |A or B| over a grid of `resolution` cells per side of the smallest cube holding both "
                  "inputs; clouds occupy the cells holding a point, meshes the cells whose centre is inside")
NORMAL_CONSISTENCY_CONVENTION = ("mean over both directions of |n_x . n_nn(x)|, nn = nearest point of the other "
                                 "set (absolute value: orientation is ignored)")


def cube_bounds(*point_sets: np.ndarray) -> tuple[np.ndarray, float]:
    """(lo (3,), side): the smallest axis-aligned cube, centred on their joint box, holding all the points."""
    points = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for p in point_sets])
    lo, hi = points.min(0), points.max(0)
    side = float((hi - lo).max()) * (1 + 1e-9)  # a hair larger, so rounding keeps the extreme points in
    if not side > 0:
        side = 1.0
    return (lo + hi) / 2 - side / 2, side


def voxelize_points(points: Any, resolution: int, bounds: tuple[Any, float]) -> np.ndarray:
    """(resolution,)*3 bool grid of the cells of ``bounds`` that hold at least one of (N, 3) points."""
    lo, side = np.asarray(bounds[0], np.float64), float(bounds[1])
    p = to_numpy64(points).reshape(-1, 3)
    keep = np.all((p >= lo) & (p <= lo + side), axis=1)  # the far faces belong to the last cells
    cell = np.minimum(np.floor((p[keep] - lo) / side * resolution).astype(np.int64), resolution - 1)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[tuple(cell.T)] = True
    return grid


def _perturbed_sign(w: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Sign of an edge function at the ray shifted by (delta, delta^2), delta -> 0+."""
    # w(P + (d, d^2)) = w + d * (-dy) + d^2 * dx for the edge with direction (dx, dy)
    return np.where(w != 0, np.sign(w), np.where(dy != 0, -np.sign(dy), np.sign(dx)))


def voxelize_mesh(vertices: Any, faces: Any, resolution: int, bounds: tuple[Any, float],
                  rule: str = "nonzero") -> np.ndarray:
    """(resolution,)*3 bool grid: which cell centres of ``bounds`` lie inside the mesh (see the module docstring)."""
    if rule not in ("nonzero", "parity"):
        raise ValueError(f"rule must be 'nonzero' or 'parity', got {rule!r}")
    lo, side = np.asarray(bounds[0], np.float64), float(bounds[1])
    v = (np.asarray(vertices, np.float64) - lo) / side * resolution - 0.5  # cell centres at integers
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    tri = v[f]  # (F, 3 corners, 3)
    p0, p1, p2 = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    tri, area = tri[area != 0], area[area != 0]  # faces seen edge-on from the rays never cross them
    r = resolution
    winding = np.zeros((r * r, r + 1), dtype=np.int64)  # crossings binned by the cells below them
    if len(tri):
        x_lo = np.clip(np.ceil(tri[:, :, 0].min(1)), 0, r).astype(np.int64)
        x_hi = np.clip(np.floor(tri[:, :, 0].max(1)), -1, r - 1).astype(np.int64)
        y_lo = np.clip(np.ceil(tri[:, :, 1].min(1)), 0, r).astype(np.int64)
        y_hi = np.clip(np.floor(tri[:, :, 1].max(1)), -1, r - 1).astype(np.int64)
        nx, ny = np.maximum(x_hi - x_lo + 1, 0), np.maximum(y_hi - y_lo + 1, 0)
        counts = nx * ny
        order = np.flatnonzero(counts)
        # (triangle, column) pairs in batches of bounded memory
        start = 0
        cumulative = np.cumsum(counts[order])
        while start < len(order):
            base = cumulative[start - 1] if start else 0
            stop = int(np.searchsorted(cumulative, base + 4_000_000, side="right"))
            stop = max(stop, start + 1)
            sel = order[start:stop]
            start = stop
            rep = np.repeat(sel, counts[sel])
            offset = np.arange(len(rep)) - np.repeat(np.cumsum(counts[sel]) - counts[sel], counts[sel])
            cx = x_lo[rep] + offset % nx[rep]
            cy = y_lo[rep] + offset // nx[rep]
            t = tri[rep]
            sign = np.sign(area[rep])
            inside = np.ones(len(rep), dtype=bool)
            weights = []
            for k in range(3):  # edge opposite to corner k, from corner k+1 to k+2
                a, b = t[:, (k + 1) % 3], t[:, (k + 2) % 3]
                dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
                w = dx * (cy - a[:, 1]) - dy * (cx - a[:, 0])
                inside &= _perturbed_sign(w, dx, dy) == sign
                weights.append(w)
            if not inside.any():
                continue
            lam = np.stack(weights, 1)[inside] / area[rep][inside, None]
            z = (lam * t[inside, :, 2]).sum(1)
            # a crossing at height z lies above the cell centres 0..floor(z) (a centre on the face counts below it)
            level = np.clip(np.floor(z).astype(np.int64), -1, r - 1) + 1
            column = cx[inside] * r + cy[inside]
            np.add.at(winding, (column, level), sign[inside].astype(np.int64) if rule == "nonzero" else 1)
    # winding number at centre iz = sum of crossings binned at levels > iz
    above = np.cumsum(winding[:, ::-1], axis=1)[:, ::-1][:, 1:]
    filled = above != 0 if rule == "nonzero" else (above % 2) == 1
    return filled.reshape(r, r, r)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a and b| / |a or b| of two bool grids (nan when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def voxel_iou(a: Any, b: Any, resolution: int = 32, bounds: tuple[Any, float] | None = None) -> torch.Tensor:
    """Volumetric IoU of point clouds a (B, N, 3), b (B, M, 3) on occupancy grids -> (B,) float64.

    A cell is occupied when it holds at least one point; the grid is ``resolution`` cells per
    side of ``bounds`` (default: per pair, the smallest cube holding both clouds).
    """
    a, b = as_pair(a, b)
    out = []
    for x, y in zip(to_numpy64(a), to_numpy64(b)):
        box = bounds if bounds is not None else cube_bounds(x, y)
        out.append(iou(voxelize_points(x, resolution, box), voxelize_points(y, resolution, box)))
    return torch.tensor(out, dtype=torch.float64)


def mesh_iou(mesh_a: Mesh, mesh_b: Mesh, resolution: int = 64, bounds: tuple[Any, float] | None = None,
             rule: str = "nonzero") -> float:
    """Volumetric IoU of two meshes ``(vertices, faces)``: cells whose centre is inside each (module docstring)."""
    box = bounds if bounds is not None else cube_bounds(mesh_a[0], mesh_b[0])
    return iou(voxelize_mesh(*mesh_a, resolution, box, rule), voxelize_mesh(*mesh_b, resolution, box, rule))


def normal_consistency(points_a: Any, normals_a: Any, points_b: Any, normals_b: Any) -> torch.Tensor:
    """Normal consistency of oriented clouds (B, N, 3) / (B, M, 3) -> (B,), in [0, 1].

    The mean over both directions of |n_x . n_y| for each point x and its nearest point y in
    the other cloud (Occupancy Networks' definition; the absolute value ignores orientation).
    Normals are normalised to unit length first.
    """
    pa, pb = as_pair(points_a, points_b)
    na, nb = as_pair(normals_a, normals_b)
    if na.shape != pa.shape or nb.shape != pb.shape:
        raise ValueError("each normals tensor must have the shape of its points")
    na = na / na.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    nb = nb / nb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    _, ab = nearest_neighbors(pa, pb)
    _, ba = nearest_neighbors(pb, pa)
    dot_ab = (na * torch.gather(nb, 1, ab.unsqueeze(-1).expand(-1, -1, 3))).sum(-1).abs()
    dot_ba = (nb * torch.gather(na, 1, ba.unsqueeze(-1).expand(-1, -1, 3))).sum(-1).abs()
    return (dot_ab.mean(-1) + dot_ba.mean(-1)) / 2


def sample_mesh_surface(vertices: Any, faces: Any, count: int, seed: int | Sequence[int] = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` area-weighted surface samples of a mesh and their unit face normals, (count, 3) float64 each
    (trimesh's sampler; the normals follow the file's face winding). ``seed`` seeds numpy's default_rng."""
    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64).reshape(-1, 3), process=False)
    if not mesh.area > 0:
        raise ValueError("the mesh has no area: no surface to sample")
    points, face = trimesh.sample.sample_surface(mesh, count, seed=np.random.default_rng(seed))
    return np.asarray(points, np.float64), np.asarray(mesh.face_normals[face], np.float64)


def mesh_normal_consistency(mesh_a: Mesh, mesh_b: Mesh, num_samples: int = 10000, seed: int = 0) -> float:
    """Normal consistency of two meshes ``(vertices, faces)`` from ``num_samples`` surface samples each."""
    pa, na = sample_mesh_surface(*mesh_a, num_samples, seed)
    pb, nb = sample_mesh_surface(*mesh_b, num_samples, seed + 1)
    as_batch = [torch.from_numpy(x)[None] for x in (pa, na, pb, nb)]
    return float(normal_consistency(*as_batch)[0])
