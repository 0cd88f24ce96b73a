"""Meshes from point clouds: oriented normals, a spectral Poisson solve, marching cubes, export.

The pipeline of :func:`mesh_from_points`:

1. Normals (when none are given): PCA on the k nearest neighbours (:func:`estimate_normals`),
   oriented outward by :func:`orient_normals`: a visibility vote (each point seen from many
   directions outside the shape takes the side it is seen from; this keeps the two faces of
   a thin part apart, where neighbour propagation alone flips one of them), then propagation
   over the k-NN graph for the points no view decides, with Hoppe et al.'s (1992) minimum
   spanning tree weighted by 1 - |n_i . n_j| as the fallback when no view decides any point.
   Orientation, not the solve, is what decides the quality (REFERENCE.md section 6).
2. :func:`poisson_indicator`: the spectral Poisson solver of Shape As Points (Peng et al.
   2021, eq. 4-6) in PyTorch, differentiable and on any device: oriented normals splatted
   trilinearly onto a periodic grid, Laplacian(chi) = div(V) solved in Fourier space with a
   Gaussian low-pass, the iso-level is the mean of chi at the input points.
3. Marching cubes (scikit-image) at that level, then clean-up: pieces with less than
   ``min_component`` of the area are dropped; the result is watertight unless ``trim`` cuts
   away faces farther than ``trim`` from every input point (for open surfaces).

``method="open3d"`` uses Open3D's screened Poisson instead of step 2-3 when Open3D is
installed; without it the call raises a :class:`~pvd.errors.UserError` saying so.

Command: ``python -m pvd.meshing IN.ply|IN.npy OUT.obj|OUT.ply|OUT.glb [--resolution 128] ...``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree
from scipy.spatial import cKDTree

from pvd.errors import UserError, run_command
from pvd.io import atomic_path

MESH_FORMATS = (".obj", ".ply", ".glb")
MIN_POINTS = 10


# --- input checks ---------------------------------------------------------------------------

def _check_points(points, normals=None) -> tuple[np.ndarray, np.ndarray | None]:
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise UserError(f"points must be (N, 3), got shape {p.shape}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise UserError(f"{int((~np.isfinite(p).all(1)).sum())} of {len(p)} points are NaN or infinite")
    if len(p) < MIN_POINTS:
        raise UserError(f"meshing needs at least {MIN_POINTS} points, got {len(p)}")
    centred = p - p.mean(0)
    s = np.linalg.svd(centred, compute_uv=False)
    if s[0] <= 0:
        raise UserError("all points coincide")
    if s[2] / s[0] < 1e-4:
        raise UserError("the points lie on a plane (or a line): a closed surface cannot be reconstructed from them")
    n = None
    if normals is not None:
        n = normals.detach().cpu().numpy() if isinstance(normals, torch.Tensor) else np.asarray(normals)
        if n.shape != p.shape:
            raise UserError(f"normals must have the points' shape {p.shape}, got {n.shape}")
        n = n.astype(np.float64)
        if not np.isfinite(n).all():
            raise UserError("some normals are NaN or infinite")
        length = np.linalg.norm(n, axis=1, keepdims=True)
        if (length < 1e-12).any():
            raise UserError("some normals have zero length")
        n = n / length
    return p, n


# --- normals --------------------------------------------------------------------------------

def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unoriented unit normals (N, 3) of points (N, 3): the least-variance axis of each point's
    k nearest neighbours (itself included), one batched 3x3 eigen-decomposition."""
    points = np.asarray(points, dtype=np.float64)
    k = min(k, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    nb = points[idx]  # (N, k, 3)
    nb = nb - nb.mean(1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", nb, nb)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, :, 0]


def _fibonacci_directions(count: int) -> np.ndarray:
    i = np.arange(count) + 0.5
    z = 1 - 2 * i / count
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def _visibility_votes(points: np.ndarray, normals: np.ndarray, views: int, pixels: int) -> np.ndarray:
    """Per point, the sum over the orthographic views that see it of n . d (d towards the viewer).

    A point is seen when it is within a tolerance of the front-most depth of the 3x3 pixels
    around it (the min-filter closes the gaps between sparse points).
    """
    centre = (points.max(0) + points.min(0)) / 2
    radius = np.linalg.norm(points - centre, axis=1).max()
    x = (points - centre) / radius  # in the unit ball
    dirs = _fibonacci_directions(views)
    votes = np.zeros(len(points))
    tol = 2.0 / pixels  # one pixel of depth
    for d in dirs:
        a = np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0])
        a /= np.linalg.norm(a)
        b = np.cross(d, a)
        u = np.clip(((x @ a + 1) / 2 * pixels).astype(np.int64), 0, pixels - 1)
        v = np.clip(((x @ b + 1) / 2 * pixels).astype(np.int64), 0, pixels - 1)
        depth = -(x @ d)  # smaller is nearer the viewer
        zbuf = np.full((pixels + 2, pixels + 2), np.inf)
        np.minimum.at(zbuf, (u + 1, v + 1), depth)
        near = zbuf[1:-1, 1:-1].copy()
        for du in (0, 1, 2):
            for dv in (0, 1, 2):
                near = np.minimum(near, zbuf[du : du + pixels, dv : dv + pixels])
        seen = depth <= near[u, v] + tol
        votes[seen] += normals[seen] @ d
    return votes


def _propagate_mst(points: np.ndarray, normals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Hoppe et al.'s orientation: signs along a minimum spanning tree of the k-NN graph
    (weights 1 - |n_i . n_j|), each component seeded at its point farthest from the centroid
    with the normal pointing away from the centroid. Vectorised by pointer jumping."""
    n = len(points)
    rows = np.repeat(np.arange(n), idx.shape[1] - 1)
    cols = idx[:, 1:].reshape(-1)
    w = 1 - np.abs((normals[rows] * normals[cols]).sum(1)) + 1e-6
    graph = coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T)
    tree = minimum_spanning_tree(graph)
    tree = tree + tree.T
    _, labels = connected_components(tree, directed=False)
    centroid = points.mean(0)
    far = np.linalg.norm(points - centroid, axis=1)
    parent = np.arange(n)
    sign = np.ones(n)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        root = members[np.argmax(far[members])]
        order, pred = breadth_first_order(tree, root, directed=False)
        parent[order[1:]] = pred[order[1:]]
        sign[root] = 1.0 if normals[root] @ (points[root] - centroid) >= 0 else -1.0
    is_root = parent == np.arange(n)
    # acc[i]: product of the relative signs from i (inclusive) to ptr[i] (exclusive).
    acc = np.where(is_root, 1.0, np.where((normals * normals[parent]).sum(1) >= 0, 1.0, -1.0))
    ptr = parent.copy()
    while not is_root[ptr].all():  # pointer jumping: log2(depth) steps
        acc, ptr = acc * acc[ptr], ptr[ptr]
    rel = acc * sign[ptr]
    return normals * rel[:, None]


def orient_normals(points: np.ndarray, normals: np.ndarray, k: int = 16, views: int = 64, pixels: int = 48,
                   iterations: int = 8) -> np.ndarray:
    """Flip unit normals (N, 3) of points (N, 3) to point outward; see the module docstring."""
    points = np.asarray(points, dtype=np.float64)
    normals = np.asarray(normals, dtype=np.float64)
    k = min(k, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    votes = _visibility_votes(points, normals, views, pixels)
    decided = np.abs(votes) > 1e-3 * views ** 0.5
    if not decided.any():
        return _propagate_mst(points, normals, idx)
    out = normals * np.where(votes < 0, -1.0, 1.0)[:, None]
    # Undecided points take the orientation their decided neighbours agree on; repeat so that
    # the decision spreads through runs of hidden points.
    weight = decided.astype(np.float64)
    for _ in range(iterations):
        if weight.all():
            break
        nb = idx[:, 1:]
        agreement = ((out[:, None, :] * out[nb]).sum(-1) * weight[nb]).sum(1)
        flip = (weight == 0) & (agreement < 0)
        out[flip] *= -1
        newly = (weight == 0) & (np.abs(agreement) > 0)
        weight = np.where(newly, 0.5, weight)
    return out


def oriented_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """PCA normals of points (N, 3), oriented outward: (N, 3)."""
    return orient_normals(points, estimate_normals(points, k), k)


# --- the spectral Poisson solver (Shape As Points) ------------------------------------------

def _grid_coords(points: torch.Tensor, resolution: int, padding: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points (N, 3) -> grid coordinates in [0, resolution) and the (centre, size) of the box."""
    with torch.no_grad():
        lo, hi = points.min(0).values, points.max(0).values
        centre = (lo + hi) / 2
        size = (hi - lo).max() * (1 + 2 * padding)
    return ((points - centre) / size + 0.5) * resolution, centre, size


def _trilinear(g: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For grid coordinates g (N, 3): flat indices (N, 8) of the corner nodes (periodic) and weights (N, 8)."""
    base = torch.floor(g)
    frac = g - base
    base = base.long()
    idx, wts = [], []
    for corner in range(8):
        off = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=g.device)
        node = (base + off) % resolution
        w = torch.where(off.bool(), frac, 1 - frac).prod(-1)
        idx.append((node[:, 0] * resolution + node[:, 1]) * resolution + node[:, 2])
        wts.append(w)
    return torch.stack(idx, 1), torch.stack(wts, 1)


def poisson_indicator(points: torch.Tensor, normals: torch.Tensor, resolution: int = 128, sigma: float = 1.0,
                      padding: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAP's spectral Poisson solve: (chi (R, R, R), iso-level (), box centre (3,), box size ()).

    points, normals: (N, 3) tensors on any device; differentiable in both. chi is smaller than
    the iso-level inside the surface the outward normals describe. Grid node (i, j, l) sits at
    centre + ((i, j, l) / R - 0.5) * size. ``sigma`` is the Gaussian low-pass in voxels.
    """
    r = resolution
    g, centre, size = _grid_coords(points, r, padding)
    idx, w = _trilinear(g, r)
    field = torch.zeros(3, r**3, dtype=points.dtype, device=points.device)
    vals = (w[:, :, None] * normals[:, None, :]).reshape(-1, 3).T  # (3, N*8)
    field = field.index_add(1, idx.reshape(-1), vals).reshape(3, r, r, r)
    v_hat = torch.fft.rfftn(field, dim=(1, 2, 3))
    kf = torch.fft.fftfreq(r, d=1.0 / r, device=points.device, dtype=points.dtype)
    kl = torch.fft.rfftfreq(r, d=1.0 / r, device=points.device, dtype=points.dtype)
    kx, ky, kz = torch.meshgrid(kf, kf, kl, indexing="ij")
    k2 = kx**2 + ky**2 + kz**2
    div_hat = 2j * torch.pi * (kx * v_hat[0] + ky * v_hat[1] + kz * v_hat[2])
    lowpass = torch.exp(-2 * torch.pi**2 * sigma**2 * k2 / r**2)
    chi_hat = div_hat * lowpass / torch.where(k2 > 0, -4 * torch.pi**2 * k2, torch.ones_like(k2))
    chi_hat = torch.where(k2 > 0, chi_hat, torch.zeros_like(chi_hat))
    chi = torch.fft.irfftn(chi_hat, s=(r, r, r), dim=(0, 1, 2))
    iso = (chi.reshape(-1)[idx] * w).sum(1).mean()
    return chi, iso, centre, size


# --- meshing --------------------------------------------------------------------------------

def _marching_cubes(chi: np.ndarray, iso: float, centre: np.ndarray, size: float) -> trimesh.Trimesh:
    from skimage.measure import marching_cubes

    if not chi.min() < iso < chi.max():
        raise UserError("the Poisson solve found no surface (the normals may be inconsistent)")
    verts, faces, _, _ = marching_cubes(chi, level=iso)
    r = chi.shape[0]
    verts = centre + (verts / r - 0.5) * size
    mesh = trimesh.Trimesh(verts, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _open3d_mesh(points: np.ndarray, normals: np.ndarray, depth: int) -> trimesh.Trimesh:
    try:
        import open3d as o3d
    except ImportError:
        raise UserError("method='open3d' needs Open3D, which is not installed (pip install open3d); "
                        "the default method='spectral' needs nothing more") from None
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd.normals = o3d.utility.Vector3dVector(normals)
    mesh, _ = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth)
    return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), process=True)


def clean_mesh(mesh: trimesh.Trimesh, min_component: float = 0.01) -> trimesh.Trimesh:
    """Drop connected pieces whose area is below ``min_component`` times the total area."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    total = sum(p.area for p in parts)
    keep = [p for p in parts if p.area >= min_component * total]
    return trimesh.util.concatenate(keep) if len(keep) > 1 else keep[0]


def trim_mesh(mesh: trimesh.Trimesh, points: np.ndarray, distance: float) -> trimesh.Trimesh:
    """Remove the faces whose centroid is farther than ``distance`` from every point (N, 3)."""
    d, _ = cKDTree(points).query(mesh.triangles_center)
    mesh = mesh.copy()
    mesh.update_faces(d <= distance)
    mesh.remove_unreferenced_vertices()
    return mesh


def mesh_from_points(points, normals=None, *, resolution: int = 128, sigma: float = 1.0, padding: float = 0.1,
                     k: int = 16, method: str = "spectral", min_component: float = 0.01, trim: float | None = None,
                     open3d_depth: int = 8) -> trimesh.Trimesh:
    """A mesh of the surface sampled by points (N, 3) (numpy or torch), with optional normals (N, 3).

    Without normals they are estimated and oriented (:func:`oriented_normals`); given normals
    must point outward. ``resolution``: the Poisson grid per side; ``sigma``: its low-pass in
    voxels; ``padding``: free space around the bounding box, as a fraction of its largest side.
    ``min_component``: pieces with less than this fraction of the area are dropped. ``trim``:
    when set, faces farther than ``trim`` (in the points' units) from every point are removed,
    for open surfaces; the mesh is then no longer watertight. Raises UserError on degenerate
    input (fewer than 10 points, NaN, all points on a plane) and when no surface is found.
    """
    p, n = _check_points(points, normals)
    if n is None:
        n = oriented_normals(p, k)
    if method == "spectral":
        pt = torch.as_tensor(p, dtype=torch.float32)
        nt = torch.as_tensor(n, dtype=torch.float32)
        with torch.no_grad():
            chi, iso, centre, size = poisson_indicator(pt, nt, resolution, sigma, padding)
        mesh = _marching_cubes(chi.numpy(), float(iso), centre.numpy().astype(np.float64), float(size))
    elif method == "open3d":
        mesh = _open3d_mesh(p, n, open3d_depth)
    else:
        raise UserError(f"unknown meshing method {method!r}; choose 'spectral' or 'open3d'")
    mesh = clean_mesh(mesh, min_component)
    if trim is not None:
        mesh = trim_mesh(mesh, p, trim)
    if len(mesh.faces) == 0:
        raise UserError("meshing produced no faces")
    return mesh


# --- files ----------------------------------------------------------------------------------

def load_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (N, 3) and normals (N, 3) or None from a .ply (vertex x y z [nx ny nz]) or .npy
    ((N, 3) or (N, 6)) file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is not a readable .npy file ({e})") from None
        if a.ndim != 2 or a.shape[1] not in (3, 6):
            raise UserError(f"{path}: expected an (N, 3) or (N, 6) array, got {a.shape}")
        return a[:, :3], (a[:, 3:] if a.shape[1] == 6 else None)
    if suffix == ".ply":
        try:
            loaded = trimesh.load(path, file_type="ply", process=False)
        except Exception as e:  # trimesh raises many kinds on bad files
            raise UserError(f"{path} is not a readable PLY file ({e})") from None
        points = np.asarray(loaded.vertices)
        normals = None
        raw = getattr(loaded, "metadata", {}).get("_ply_raw", {}).get("vertex", {}).get("data")
        if raw is not None and raw.dtype.names and {"nx", "ny", "nz"} <= set(raw.dtype.names):
            normals = np.stack([raw["nx"], raw["ny"], raw["nz"]], 1).astype(np.float64)
        return points, normals
    raise UserError(f"{path}: unsupported point file type {suffix!r} (use .ply or .npy)")


def save_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> None:
    """Write mesh as OBJ, PLY or GLB (by the suffix) atomically (:func:`pvd.io.atomic_path`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise UserError(f"{path}: unsupported mesh format {suffix!r} (use {', '.join(MESH_FORMATS)})")
    if not path.parent.is_dir():
        raise UserError(f"no directory {path.parent} for {path.name}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        mesh.export(f, file_type=suffix[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvd.meshing", description=__doc__.split("\n")[0])
    parser.add_argument("input", help="points: .ply (x y z [nx ny nz]) or .npy (N, 3) / (N, 6)")
    parser.add_argument("output", help="mesh: .obj, .ply or .glb")
    parser.add_argument("--resolution", type=int, default=128, help="Poisson grid per side (default 128)")
    parser.add_argument("--sigma", type=float, default=2.0, help="low-pass in voxels (default 2)")
    parser.add_argument("--method", choices=["spectral", "open3d"], default="spectral")
    parser.add_argument("--estimate-normals", action="store_true", help="ignore normals stored in the input")
    parser.add_argument("--trim", type=float, default=None,
                        help="remove faces farther than this from every point (open surfaces)")
    args = parser.parse_args(argv)
    points, normals = load_points(args.input)
    if args.estimate_normals:
        normals = None
    mesh = mesh_from_points(points, normals, resolution=args.resolution, sigma=args.sigma, method=args.method,
                            trim=args.trim)
    save_mesh(mesh, args.output)
    print(f"{args.output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, watertight={mesh.is_watertight}")
    return 0


if __name__ == "__main__":
    run_command(main)
