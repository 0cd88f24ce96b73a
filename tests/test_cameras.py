"""Camera conventions: the R2N2 formula, the orbit look-at and projection agree."""

import math

import numpy as np
import pytest

from pvd.data.cameras import (
    R2N2_FOCAL_NDC,
    intrinsics_from_ndc_focal,
    orbit_cameras,
    orbit_eye,
    orbit_extrinsics,
    project,
    r2n2_cameras,
    r2n2_extrinsics,
)


@pytest.mark.parametrize("azimuth,elevation,distance", [(0, 0, 1.5), (53.41, 25.13, 0.8509 * 1.75), (200.0, 28.0, 1.3), (300.0, -10.0, 2.0)])
def test_r2n2_formula_matches_orbit_look_at(azimuth, elevation, distance):
    np.testing.assert_allclose(r2n2_extrinsics(azimuth, elevation, distance), orbit_extrinsics(azimuth, elevation, distance), atol=1e-12)


def test_orbit_camera_geometry():
    # Azimuth 90 puts the camera on +z (the back of a ShapeNet object); elevation lifts it.
    np.testing.assert_allclose(orbit_eye(90.0, 0.0, 2.0), [0.0, 0.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(orbit_eye(0.0, 90.0, 1.0), [0.0, 1.0, 0.0], atol=1e-12)
    ext = orbit_extrinsics(30.0, 20.0, 1.7)
    rotation = ext[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    # The camera centre maps to the camera origin; the world origin lies straight ahead.
    eye = orbit_eye(30.0, 20.0, 1.7)
    np.testing.assert_allclose(rotation @ eye + ext[:3, 3], 0.0, atol=1e-12)
    np.testing.assert_allclose(ext[:3, 3], [0.0, 0.0, 1.7], atol=1e-12)


def test_projection_orientation():
    # Seen from the front (camera on -z looking at +z), +y is up in the image and +x is to the
    # viewer's left... i.e. the object's right side (+x faces the camera's left on -z).
    k = intrinsics_from_ndc_focal(R2N2_FOCAL_NDC, 64, 64)
    ext = orbit_extrinsics(-90.0, 0.0, 2.0)  # eye at (0, 0, -2)
    uv, depth = project(np.array([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0], [0.3, 0.0, 0.0]]), k, ext)
    np.testing.assert_allclose(uv[0], [32.0, 32.0])
    np.testing.assert_allclose(depth, 2.0)
    assert uv[1, 1] < 32.0  # up is up
    assert uv[2, 0] < 32.0  # +x appears on the image's left from the front
    focal_px = R2N2_FOCAL_NDC * 32
    assert uv[1, 1] == pytest.approx(32.0 - focal_px * 0.3 / 2.0)


def test_field_of_view_matches_focal():
    cams = orbit_cameras(np.array([[10.0, 25.0, 0.8]]), 137, 137)
    half = math.radians(cams.fov[0] / 2)
    # A point at the edge of the horizontal field of view projects to the image border.
    ext = cams.extrinsics[0].astype(np.float64)
    cam_point = np.array([math.tan(half) * 2.0, 0.0, 2.0])
    world = ext[:3, :3].T @ (cam_point - ext[:3, 3])
    uv, _ = project(world[None], cams.intrinsics[0].astype(np.float64), ext)
    assert uv[0, 0] == pytest.approx(137.0, abs=1e-3)


def test_r2n2_cameras_reads_metadata_rows():
    rows = np.array([[53.41, 25.13, 0.0, 0.8509, 25.0], [120.0, 27.0, 0.0, 0.7, 25.0]])
    cams = r2n2_cameras(rows)
    np.testing.assert_allclose(cams.distance, rows[:, 3] * 1.75, rtol=1e-6)
    np.testing.assert_allclose(cams.extrinsics[1], r2n2_extrinsics(120.0, 27.0, 0.7 * 1.75), atol=1e-6)
    assert cams.intrinsics.shape == (2, 3, 3) and cams.intrinsics[0, 0, 0] == pytest.approx(2.1875 * 137 / 2)
    with pytest.raises(ValueError):
        r2n2_cameras(np.array([[0.0, 25.0, 5.0, 0.8, 25.0]]))
