"""Camera conventions shared by every dataset, renderer and projection in pvd.

World frame: ShapeNetCore.v2's canonical frame (+y up, front facing -z), objects centred
with their bounding-box diagonal scaled to 1.

Stored cameras use the OpenCV convention: ``extrinsics`` (4, 4) maps world to camera
coordinates (x right, y down, z forward, column vectors: ``X_cam = R @ X_world + t``) and
``intrinsics`` (3, 3) maps camera coordinates to pixels, where pixel ``(row i, col j)``
covers ``[j, j+1) x [i, i+1)`` so the image centre is at ``(W/2, H/2)``.

Views are parametrised as in 3D-R2N2's ``rendering_metadata.txt``: azimuth and elevation in
degrees, distance = distance ratio * 1.75, and Blender's default lens (35 mm focal length on
a 32 mm sensor, i.e. focal 2.1875 in normalised device coordinates, 49.1 degrees of
horizontal field of view; the ``fov`` column of the metadata, 25, is not what was rendered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

R2N2_DISTANCE_SCALE = 1.75  # rendering_metadata.txt stores distance / 1.75
R2N2_FOCAL_NDC = 2.1875  # Blender default: 35 mm lens / (32 mm sensor / 2)
R2N2_IMAGE_SIZE = 137

# Rotates OpenGL camera axes (x right, y up, z backward) into OpenCV ones.
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def look_at(eye: np.ndarray, target: np.ndarray = (0.0, 0.0, 0.0), up: np.ndarray = (0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera (4, 4) OpenCV extrinsics of a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    right /= norm
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = rotation
    extrinsics[:3, 3] = -rotation @ eye
    return extrinsics


def orbit_eye(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """Camera centre (3,) of an R2N2-style view: azimuth about +y, counted from +x towards +z."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return distance * np.array([math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)])


def orbit_extrinsics(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """(4, 4) OpenCV extrinsics of a camera on the R2N2 orbit, looking at the origin, +y up."""
    return look_at(orbit_eye(azimuth_deg, elevation_deg, distance))


def r2n2_extrinsics(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """(4, 4) OpenCV extrinsics from one line of R2N2's metadata, by the published formula.

    This follows the reconstruction used by Mesh R-CNN and pytorch3d's R2N2 loader (Blender
    frame, OpenGL camera, then the +90 degree x-rotation Blender applies when importing OBJ)
    and converts the result to our OpenCV convention. ``distance`` is already multiplied by
    1.75. It agrees with :func:`orbit_extrinsics`; the tests check that.
    """
    a, e = -math.radians(azimuth_deg), -math.radians(elevation_deg)
    ca, sa, ce, se = math.cos(a), math.sin(a), math.cos(e), math.sin(e)
    world_to_obj = np.array([[ca * ce, sa * ce, -se], [-sa, ca, 0.0], [ca * se, sa * se, ce]])
    obj_to_cam = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    gl = np.eye(4)
    gl[:3, :3] = obj_to_cam @ world_to_obj
    gl[:3, 3] = -obj_to_cam @ np.array([distance, 0.0, 0.0])
    blender_import = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    gl = gl @ blender_import
    cv = np.eye(4)
    cv[:3, :3] = _GL_TO_CV @ gl[:3, :3]
    cv[:3, 3] = _GL_TO_CV @ gl[:3, 3]
    return cv


def intrinsics_from_ndc_focal(focal_ndc: float, width: int, height: int) -> np.ndarray:
    """(3, 3) pixel intrinsics; NDC spans [-1, 1] across the image width (square pixels)."""
    f = focal_ndc * width / 2.0
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def project(points: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into pixels.

    points: (..., N, 3); intrinsics: (..., 3, 3); extrinsics: (..., 4, 4), matching batch dims.
    Returns (uv (..., N, 2) continuous pixel coordinates (x = column, y = row), depth (..., N)).
    """
    cam = points @ np.swapaxes(extrinsics[..., :3, :3], -1, -2) + extrinsics[..., None, :3, 3]
    depth = cam[..., 2]
    pix = cam @ np.swapaxes(intrinsics, -1, -2)
    uv = pix[..., :2] / np.where(np.abs(pix[..., 2:3]) < 1e-12, 1e-12, pix[..., 2:3])
    return uv, depth


def r2n2_like_views(rng: np.random.Generator, num_views: int) -> np.ndarray:
    """(V, 3) random (azimuth deg, elevation deg, distance ratio) drawn like 3D-R2N2's views.

    Azimuth uniform over the circle, elevation 25-30 degrees, distance ratio 0.65-0.95: an
    approximation of R2N2's views (unverified; its generator is not published).
    """
    azimuth = rng.uniform(0.0, 360.0, num_views)
    elevation = rng.uniform(25.0, 30.0, num_views)
    ratio = rng.uniform(0.65, 0.95, num_views)
    return np.stack([azimuth, elevation, ratio], axis=1)


@dataclass
class CameraSet:
    """The V cameras of one shape, in the form the HDF5 schema stores them.

    intrinsics: (V, 3, 3) pixels; extrinsics: (V, 4, 4) OpenCV world-to-camera;
    azimuth, elevation: (V,) degrees; distance: (V,) world units (R2N2 ratio * 1.75);
    fov: (V,) degrees, horizontal field of view actually used.
    """

    intrinsics: np.ndarray
    extrinsics: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray
    distance: np.ndarray
    fov: np.ndarray

    def __len__(self) -> int:
        return len(self.azimuth)


def r2n2_cameras(metadata: np.ndarray, width: int = R2N2_IMAGE_SIZE, height: int = R2N2_IMAGE_SIZE) -> CameraSet:
    """Cameras from R2N2 metadata rows (V, >=4): azimuth, elevation, in-plane, distance ratio[, fov].

    The in-plane rotation is 0 in every released file; a non-zero one is rejected rather than
    silently ignored.
    """
    metadata = np.asarray(metadata, dtype=np.float64).reshape(len(metadata), -1)
    if np.any(np.abs(metadata[:, 2]) > 1e-6):
        raise ValueError("R2N2 metadata with a non-zero in-plane rotation is not supported")
    distance = metadata[:, 3] * R2N2_DISTANCE_SCALE
    extrinsics = np.stack([r2n2_extrinsics(a, e, d) for a, e, d in zip(metadata[:, 0], metadata[:, 1], distance)])
    return _camera_set(metadata[:, 0], metadata[:, 1], distance, extrinsics, width, height)


def orbit_cameras(views: np.ndarray, width: int, height: int) -> CameraSet:
    """Cameras for (V, 3) rows of (azimuth deg, elevation deg, distance ratio), R2N2 lens."""
    views = np.asarray(views, dtype=np.float64)
    distance = views[:, 2] * R2N2_DISTANCE_SCALE
    extrinsics = np.stack([orbit_extrinsics(a, e, d) for a, e, d in zip(views[:, 0], views[:, 1], distance)])
    return _camera_set(views[:, 0], views[:, 1], distance, extrinsics, width, height)


def _camera_set(azimuth, elevation, distance, extrinsics, width, height) -> CameraSet:
    intrinsics = np.broadcast_to(intrinsics_from_ndc_focal(R2N2_FOCAL_NDC, width, height), (len(azimuth), 3, 3))
    fov = np.full(len(azimuth), 2.0 * math.degrees(math.atan(1.0 / R2N2_FOCAL_NDC)))
    return CameraSet(
        intrinsics=intrinsics.astype(np.float32),
        extrinsics=extrinsics.astype(np.float32),
        azimuth=np.asarray(azimuth, dtype=np.float32),
        elevation=np.asarray(elevation, dtype=np.float32),
        distance=np.asarray(distance, dtype=np.float32),
        fov=fov.astype(np.float32),
    )
