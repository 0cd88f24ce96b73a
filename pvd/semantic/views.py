"""The one render modality of the semantic metrics: point clouds drawn by the dataset's point
renderer, from cameras held out from the input view.

Dataset views are shaded meshes while PVD's outputs are points; an image encoder comparing the
two would score the modality as much as the shape. So every cloud the metrics compare (outputs,
ground truth, the training data of the evaluator) is reduced to the same number of points and
drawn the same way: :func:`pvd.data.render.render_points`, depth-shaded, radius 1 pixel, at the
dataset's image size and lens.

Held-out cameras are the input camera's centre rotated about the world's up axis (+y) by
:data:`HELD_OUT_AZIMUTHS`, looking at the origin with the input's intrinsics: the same
elevation and distance as the input, never its viewpoint (the back view is among them, where
lifting methods fail as Janus).
"""

from __future__ import annotations

import math

import numpy as np

from pvd.data.cameras import look_at
from pvd.data.render import render_points

HELD_OUT_AZIMUTHS = (90.0, 180.0, 270.0)  # degrees from the input view about +y
RENDER_POINTS = 2048  # every cloud is reduced to this many points before it is drawn
POINT_RADIUS_PX = 1.0


def camera_centre(extrinsics: np.ndarray) -> np.ndarray:
    """(3,) world position of the camera of (4, 4) OpenCV world -> camera extrinsics."""
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    return -extrinsics[:3, :3].T @ extrinsics[:3, 3]


def held_out_extrinsics(input_extrinsics: np.ndarray, azimuths: tuple[float, ...] = HELD_OUT_AZIMUTHS) -> np.ndarray:
    """(V, 4, 4) extrinsics of cameras at the input camera's centre rotated by ``azimuths`` (deg) about +y."""
    eye = camera_centre(input_extrinsics)
    out = []
    for degrees in azimuths:
        a = math.radians(degrees)
        rotation = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
        out.append(look_at(rotation @ eye))
    return np.stack(out)


def subsample(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) -> (count, 3): a random subset (with replacement only when N < count)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        raise ValueError("cannot draw an empty cloud")
    index = rng.choice(len(points), count, replace=len(points) < count)
    return points[index]


def render_cloud_views(points: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray, size: int,
                       seed: int = 0, count: int = RENDER_POINTS) -> np.ndarray:
    """(V, size, size, 4) uint8 RGBA renders of one (N, 3) world-frame cloud from V cameras.

    intrinsics: (3, 3) pixels at ``size`` (shared by the views) or (V, 3, 3); extrinsics: (V, 4, 4).
    The cloud is first reduced to ``count`` points (seeded), so that clouds of any size look alike.
    Non-finite points are dropped; an empty cloud renders as empty images.
    """
    points = np.asarray(points, dtype=np.float64)
    points = points[np.isfinite(points).all(axis=1)] if len(points) else points.reshape(0, 3)
    extrinsics = np.asarray(extrinsics, dtype=np.float64).reshape(-1, 4, 4)
    intrinsics = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (len(extrinsics), 3, 3))
    if len(points) == 0:
        return np.zeros((len(extrinsics), size, size, 4), dtype=np.uint8)
    cloud = subsample(points, count, np.random.default_rng(seed))
    return np.stack([render_points(cloud, k, e, size, size, radius_px=POINT_RADIUS_PX)
                     for k, e in zip(intrinsics, extrinsics)])
