"""Small vectorised numpy software renderer for previews of meshes and point clouds.

Cameras follow :mod:`pvd.data.cameras`: OpenCV extrinsics (4, 4) world -> camera (x right,
y down, z forward), pixel intrinsics (3, 3), and pixel ``(row i, col j)`` covering
``[j, j+1) x [i, i+1)``, so every pixel is sampled at its centre ``(j + 0.5, i + 0.5)``.

Rasterisation has no per-triangle or per-pixel Python loop: ``np.repeat`` expands triangles
into the rows of their clipped bounding boxes, the barycentric edge tests turn each row into
one span of covered pixels, the spans expand into pixels the same way, and a z-buffer built
with ``np.minimum.at`` keeps the nearest. Only covered pixels are ever materialised, so huge
triangles cost no more than their area."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from pvd.io import atomic_path

NEAR = 1e-4  # triangles with a vertex at camera z <= NEAR are dropped (no clipping)
_EDGE_EPS = 1e-7  # inclusive edge test in barycentric units, so shared edges leave no cracks
_MIN_AREA = 1e-12  # twice the pixel-space area below which a triangle is degenerate
_CHUNK = 1 << 18  # covered (triangle, pixel) pairs per batch, which bounds memory

_AMBIENT = 0.35
# Direction towards the key light in camera coordinates: upper left (-x, -y) and towards the
# viewer (-z), so that faces seen head-on are lit and the silhouette's shape reads clearly.
_LIGHT = np.array([-0.4, -0.5, -1.0]) / np.linalg.norm([-0.4, -0.5, -1.0])
_MESH_GREY = 0.8
_POINT_COLOR = np.array([0.35, 0.6, 0.95])
_POINT_FAR_SHADE = 0.35  # intensity of the farthest point; the nearest gets 1


def _to_camera(points: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 3) float64 camera coordinates."""
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ extrinsics[:3, :3].T + extrinsics[:3, 3]


def _to_pixels(cam: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(N, 3) camera coordinates -> (N, 2) continuous pixel coordinates (x = column, y = row).

    Points at or behind the near plane get finite garbage; callers drop them.
    """
    pix = cam @ np.asarray(intrinsics, dtype=np.float64).T
    w = np.where(cam[:, 2] > NEAR, pix[:, 2], 1.0)
    return pix[:, :2] / w[:, None]


def _fold3(ufunc: np.ufunc, x: np.ndarray) -> np.ndarray:
    """ufunc.reduce over axis 1 of length 3; numpy's reductions over so short an axis are slow."""
    return ufunc(ufunc(x[:, 0], x[:, 1]), x[:, 2])


def rasterize(
    vertices: np.ndarray,
    faces: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffered rasterisation of a triangle mesh seen by one camera.

    vertices: (V, 3) world coordinates; faces: (F, 3) vertex indices (either winding);
    intrinsics: (3, 3) pixels; extrinsics: (4, 4) OpenCV world -> camera.
    Returns (face_index (H, W) int32, -1 for background; depth (H, W) float32 camera z,
    +inf for background). Depth is perspective-correct (1/z is interpolated in screen space).
    Degenerate triangles and triangles with a vertex at z <= NEAR are skipped; a pixel
    centre on an edge counts as inside, and exact depth ties go to the larger face index.
    """
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    cam = _to_camera(vertices, extrinsics)
    uv = _to_pixels(cam, intrinsics)

    ids = np.flatnonzero(_fold3(np.logical_and, cam[faces, 2] > NEAR))
    p = uv[faces[ids]]  # (T, 3, 2)
    inv_z = 1.0 / cam[faces[ids], 2]  # (T, 3)
    # Barycentric k is the edge function of the edge opposite vertex k over the signed
    # area; dividing by the signed area makes the inside positive for both windings.
    pa = p[:, [1, 2, 0]]  # (T, 3, 2) start of the edge opposite each vertex
    e = p[:, [2, 0, 1]] - pa  # (T, 3, 2) that edge's direction
    area2 = e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]  # twice the signed area

    # Bounding boxes of pixel centres, clipped to the image; clip in float before the int
    # cast because vertices close to the near plane project to huge coordinates.
    size = np.array([width, height], dtype=np.float64)
    first = np.clip(np.ceil(_fold3(np.minimum, p) - 0.5), 0, size).astype(np.int64)  # (T, 2) col, row
    last = np.clip(np.floor(_fold3(np.maximum, p) - 0.5), -1, size - 1).astype(np.int64)
    extent = np.maximum(last - first + 1, 0)
    valid = (np.abs(area2) > _MIN_AREA) & np.all(extent > 0, axis=1)
    ids, pa, e, area2, inv_z, first, extent = (x[valid] for x in (ids, pa, e, area2, inv_z, first, extent))

    # The barycentrics and 1/z (their inv_z-weighted sum) are affine in the pixel offset
    # (dx, dy) from the bbox's first pixel centre: value = c + a * dx + b * dy, each (T, 4).
    a = -e[..., 1] / area2[:, None]
    b = e[..., 0] / area2[:, None]
    c = a * (first[:, None, 0] + 0.5 - pa[..., 0]) + b * (first[:, None, 1] + 0.5 - pa[..., 1])
    a, b, c = (np.concatenate([x, _fold3(np.add, x * inv_z)[:, None]], axis=1) for x in (a, b, c))

    # One entry per (triangle, bbox row); each edge bounds the row's inside span from one
    # side (a > 0: from the left, a < 0: from the right, a == 0: all or nothing).
    rows = extent[:, 1]
    tri = np.repeat(np.arange(len(ids)), rows)
    dy = np.arange(rows.sum()) - np.repeat(np.cumsum(rows) - rows, rows)
    slope = a[tri]  # (R, 4)
    at_row = c[tri] + b[tri] * dy[:, None]  # (R, 4) values at dx = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (-_EDGE_EPS - at_row[:, :3]) / slope[:, :3]
    left = _fold3(np.maximum, np.where(slope[:, :3] > 0, bound, -np.inf))
    right = _fold3(np.minimum, np.where(slope[:, :3] < 0, bound, np.inf))
    row_ok = _fold3(np.logical_and, (slope[:, :3] != 0) | (at_row[:, :3] >= -_EDGE_EPS))
    start = np.clip(np.ceil(left), 0, extent[tri, 0])
    stop = np.clip(np.floor(right), -1, extent[tri, 0] - 1)
    span = np.where(row_ok, np.maximum(stop - start + 1, 0), 0).astype(np.int64)

    keep = span > 0
    span, start, tri = span[keep], start[keep], tri[keep]
    base = (first[tri, 1] + dy[keep]) * width + first[tri, 0] + start.astype(np.int64)
    inv_z_start = at_row[keep, 3] + slope[keep, 3] * start
    inv_z_step = slope[keep, 3]
    row_face = ids[tri]

    face_index = np.full(height * width, -1, dtype=np.int64)
    zbuf = np.full(height * width, np.inf)
    # Batches of whole rows, about _CHUNK pixels each, so that many large overlapping
    # triangles at high resolution do not need one huge temporary array.
    ends = np.cumsum(span)
    cuts = np.searchsorted(ends, np.arange(_CHUNK, ends[-1] if len(ends) else 0, _CHUNK)) + 1
    bounds = np.unique(np.r_[0, cuts, len(span)])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        n = span[lo:hi]
        dx = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # offset inside the span
        pixel = np.repeat(base[lo:hi], n) + dx
        depth = 1.0 / (np.repeat(inv_z_start[lo:hi], n) + np.repeat(inv_z_step[lo:hi], n) * dx)
        face = np.repeat(row_face[lo:hi], n)

        np.minimum.at(zbuf, pixel, depth)
        wins = depth == zbuf[pixel]
        # Break exact ties deterministically (largest face index; later batches hold larger
        # indices) instead of relying on the unspecified order of repeated-index assignment.
        best = np.full(height * width, -1, dtype=np.int64)
        np.maximum.at(best, pixel[wins], face[wins])
        won = best >= 0
        face_index[won] = best[won]

    return face_index.reshape(height, width).astype(np.int32), zbuf.reshape(height, width).astype(np.float32)


def shade_faces(vertices: np.ndarray, faces: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """(F,) Lambertian intensity in [_AMBIENT, 1] of each face under the camera's key light.

    vertices: (V, 3) world; faces: (F, 3); extrinsics: (4, 4) OpenCV world -> camera.
    Two-sided (|n . l|), so mesh winding does not matter; degenerate faces get the ambient term.
    """
    tri = _to_camera(vertices, extrinsics)[np.asarray(faces, dtype=np.int64).reshape(-1, 3)]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(normal, axis=1)
    diffuse = np.abs(normal @ _LIGHT) / np.maximum(length, 1e-30)
    return _AMBIENT + (1.0 - _AMBIENT) * diffuse


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    height: int,
    width: int,
    face_colors: np.ndarray | None = None,
    supersample: int = 1,
) -> np.ndarray:
    """Shaded (H, W, 4) uint8 RGBA image of a mesh with a transparent background.

    face_colors: (F, 3) floats in [0, 1] (anything broadcastable to it), or None for light grey.
    supersample: renders at k times the resolution and box-filters premultiplied colour and
    alpha down, which antialiases edges.
    """
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    k = int(supersample)
    if k < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    scaled = np.diag([k, k, 1.0]) @ np.asarray(intrinsics, dtype=np.float64)
    face_index, _ = rasterize(vertices, faces, scaled, extrinsics, height * k, width * k)

    colors = np.broadcast_to(_MESH_GREY if face_colors is None else face_colors, (len(faces), 3))
    shaded = np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0) * shade_faces(vertices, faces, extrinsics)[:, None]
    covered = face_index >= 0
    # Premultiplied RGBA at full resolution: background is (0, 0, 0, 0).
    rgba = np.zeros((height * k, width * k, 4))
    rgba[covered, :3] = shaded[face_index[covered]]
    rgba[covered, 3] = 1.0
    rgba = rgba.reshape(height, k, width, k, 4).mean(axis=(1, 3))
    alpha = rgba[..., 3:]
    rgb = np.divide(rgba[..., :3], alpha, out=np.zeros_like(rgba[..., :3]), where=alpha > 0)
    return np.round(np.concatenate([rgb, alpha], axis=-1) * 255.0).astype(np.uint8)


def render_views(
    vertices: np.ndarray,
    faces: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    height: int,
    width: int,
    face_colors: np.ndarray | None = None,
    supersample: int = 1,
) -> np.ndarray:
    """(V, H, W, 4) uint8 RGBA renders of one mesh from V cameras.

    intrinsics: (V, 3, 3); extrinsics: (V, 4, 4); other arguments as in :func:`render_mesh`.
    """
    return np.stack(
        [
            render_mesh(vertices, faces, k, e, height, width, face_colors, supersample)
            for k, e in zip(intrinsics, extrinsics, strict=True)
        ]
    )


def render_points(
    points: np.ndarray,
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    height: int,
    width: int,
    colors: np.ndarray | None = None,
    radius_px: float = 1.0,
) -> np.ndarray:
    """(H, W, 4) uint8 RGBA preview of a point cloud with a transparent background.

    points: (N, 3) world; intrinsics: (3, 3); extrinsics: (4, 4) OpenCV world -> camera;
    colors: (N, 3) floats in [0, 1], or None to shade by depth (nearer is brighter).
    Each point fills the pixel it projects into plus the pixels whose integer offset from it
    lies within radius_px; the nearest point wins every pixel.
    """
    cam = _to_camera(points, extrinsics)
    uv = _to_pixels(cam, intrinsics)
    depth = cam[:, 2]
    if colors is None:
        visible = depth[depth > NEAR]
        near, far = (visible.min(), visible.max()) if len(visible) else (0.0, 1.0)
        t = (depth - near) / max(far - near, 1e-12)
        colors = _POINT_COLOR * (1.0 - (1.0 - _POINT_FAR_SHADE) * np.clip(t, 0.0, 1.0))[:, None]
    colors = np.clip(np.broadcast_to(np.asarray(colors, dtype=np.float64), (len(cam), 3)), 0.0, 1.0)

    r = int(np.floor(radius_px))
    offsets = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1)), axis=-1).reshape(-1, 2)
    offsets = offsets[(offsets**2).sum(axis=1) <= radius_px**2 + 1e-9]  # (D, 2) column, row

    keep = depth > NEAR
    # Clamp far off-screen points (still off-screen after the clamp) so the int cast is safe.
    centre = np.floor(np.clip(uv[keep], -r - 1, [width + r, height + r])).astype(np.int64)
    ids = np.flatnonzero(keep)
    pix = (centre[:, None, :] + offsets[None]).reshape(-1, 2)  # (N * D, 2)
    owner = np.repeat(ids, len(offsets))
    on_image = (pix[:, 0] >= 0) & (pix[:, 0] < width) & (pix[:, 1] >= 0) & (pix[:, 1] < height)
    pixel = pix[on_image, 1] * width + pix[on_image, 0]
    owner = owner[on_image]

    zbuf = np.full(height * width, np.inf)
    np.minimum.at(zbuf, pixel, depth[owner])
    wins = depth[owner] == zbuf[pixel]
    best = np.full(height * width, -1, dtype=np.int64)
    np.maximum.at(best, pixel[wins], owner[wins])  # deterministic among equal depths

    image = np.zeros((height * width, 4))
    hit = best >= 0
    image[hit, :3] = colors[best[hit]]
    image[hit, 3] = 1.0
    return np.round(image.reshape(height, width, 4) * 255.0).astype(np.uint8)


def image_grid(
    images: Sequence[np.ndarray],
    columns: int,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Tile equally sized (H, W, 4) RGBA or (H, W, 3) RGB uint8 images into one (H', W', 3) image.

    RGBA images are composited over ``background``, which also fills the ``pad`` pixels
    around every tile and any empty cells. H' = rows * (H + pad) + pad, likewise W'.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    shape = images[0].shape[:2]
    if any(im.shape[:2] != shape for im in images):
        raise ValueError("image_grid needs images of one size")
    h, w = shape
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    bg = np.asarray(background, dtype=np.float64)
    grid = np.empty((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.uint8)
    grid[:] = np.asarray(background, dtype=np.uint8)
    for n, im in enumerate(images):
        rgb = im[..., :3].astype(np.float64)
        if im.shape[-1] == 4:
            alpha = im[..., 3:].astype(np.float64) / 255.0
            rgb = rgb * alpha + bg * (1.0 - alpha)
        top, left = pad + (n // cols) * (h + pad), pad + (n % cols) * (w + pad)
        grid[top : top + h, left : left + w] = np.round(rgb).astype(np.uint8)
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 (H, W), (H, W, 3) or (H, W, 4) image as PNG atomically (:func:`pvd.io.atomic_path`),
    so readers never see a half-written file."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"save_png expects uint8 pixels, got {image.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
