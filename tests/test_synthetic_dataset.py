"""The built-in dataset file end to end: cameras vs renderings, samples vs solids, the command."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pvd.data.cameras import R2N2_DISTANCE_SCALE, project, r2n2_cameras
from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.data.hdf5 import open_dataset_file, read_mesh
from pvd.data.synthetic.categories import CATEGORIES
from pvd.data.synthetic.writer import SyntheticConfig, make_record, write_synthetic_dataset
from pvd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = SyntheticConfig(per_category=2, views=4, resolution=64, seed=7)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "synth.h5"
    write_synthetic_dataset(path, CONFIG, workers=2, progress=False)
    return path


def silhouette_iou(points, image, intrinsics, extrinsics):
    """IoU between the pixels the points project into and the rendered alpha mask."""
    uv, depth = project(points.astype(np.float64), intrinsics.astype(np.float64), extrinsics.astype(np.float64))
    assert (depth > 0).all()
    h, w = image.shape[:2]
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    hit = np.zeros((h, w), bool)
    hit[rows[inside], cols[inside]] = True
    mask = image[..., 3] > 0  # pixels the surface touches, as a pixel holding a sample does
    return (hit & mask).sum() / (hit | mask).sum()


def test_rendered_silhouettes_match_projected_points(synth):
    """Proves the camera conventions end to end, through the stored cameras and through the
    R2N2 formula applied to the stored (azimuth, elevation, distance) metadata."""
    ious, r2n2_ious = [], []
    with open_dataset_file(synth) as f:
        assert f.attrs["num_shapes"] == 2 * len(CATEGORIES)
        for row in range(f.attrs["num_shapes"]):
            points = f["points"][row]
            metadata = np.column_stack([f["cameras/azimuth"][row], f["cameras/elevation"][row], np.zeros(CONFIG.views),
                                        f["cameras/distance"][row] / R2N2_DISTANCE_SCALE])
            from_metadata = r2n2_cameras(metadata, CONFIG.resolution, CONFIG.resolution)
            for view in range(CONFIG.views):
                image = f["images"][row, view]
                ious.append(silhouette_iou(points, image, f["cameras/intrinsics"][row, view], f["cameras/extrinsics"][row, view]))
                r2n2_ious.append(silhouette_iou(points, image, from_metadata.intrinsics[view], from_metadata.extrinsics[view]))
    for values in (ious, r2n2_ious):
        assert np.mean(values) >= 0.9, np.mean(values)
        assert np.min(values) >= 0.75, np.min(values)


def test_a_wrong_camera_is_caught(synth):
    """The check above can fail: mirrored azimuth or a missing 1.75 factor break it."""
    with open_dataset_file(synth) as f:
        points, image = f["points"][0], f["images"][0, 0]
        az, el, dist = f["cameras/azimuth"][0, 0], f["cameras/elevation"][0, 0], f["cameras/distance"][0, 0]
    for bad in ([-az, el, 0.0, dist / R2N2_DISTANCE_SCALE], [az, el, 0.0, dist / R2N2_DISTANCE_SCALE ** 2]):
        cams = r2n2_cameras(np.array([bad]), CONFIG.resolution, CONFIG.resolution)
        assert silhouette_iou(points, image, cams.intrinsics[0], cams.extrinsics[0]) < 0.75


def test_no_sample_inside_the_solid(synth):
    """Checked from the file alone: every part is a closed convex hull (a connected component
    of the stored mesh), so a sample is strictly inside it when it lies more than 1e-5 below
    all of the component's face planes."""
    with open_dataset_file(synth) as f:
        for row in range(f.attrs["num_shapes"]):
            points = f["points"][row].astype(np.float64)
            vertices, faces = read_mesh(f, row)
            components = trimesh.Trimesh(vertices.astype(np.float64), faces, process=False).split(only_watertight=True)
            assert sum(len(c.faces) for c in components) == len(faces)
            for part in components:
                assert part.volume > 0  # outward winding, so face normals point out
                normals = part.face_normals
                offsets = -(normals * part.triangles[:, 0]).sum(1)
                depth = (points @ normals.T + offsets).max(axis=1)  # < 0 inside
                assert depth.min() > -1e-5, (row, depth.min())

            # and the samples do lie on the stored surface
            assert distance_to_triangles(points[::50], vertices.astype(np.float64)[faces]).max() < 1e-5


def distance_to_triangles(points, triangles):
    """(N,) distance from each point to the nearest triangle whose interior it projects into."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    normal = np.cross(b - a, c - a)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-30
    e0, e1 = b - a, c - a
    d00, d01, d11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    best = np.full(len(points), np.inf)
    for i, p in enumerate(points):
        height = ((p - a) * normal).sum(1)
        rel = p - height[:, None] * normal - a  # projection onto each plane, relative to a
        r0, r1 = (rel * e0).sum(1), (rel * e1).sum(1)
        den = d00 * d11 - d01 * d01 + 1e-30
        beta, gamma = (d11 * r0 - d01 * r1) / den, (d00 * r1 - d01 * r0) / den
        inside = (beta >= -1e-9) & (gamma >= -1e-9) & (beta + gamma <= 1 + 1e-9)
        if inside.any():
            best[i] = np.abs(height[inside]).min()
    return best


def test_dataset_contents(synth):
    with open_dataset_file(synth) as f:
        names = list(f.attrs["category_names"])
        assert names == list(CATEGORIES) and list(f.attrs["category_synsets"]) == list(CATEGORIES.values())
        assert f["images"].shape == (10, 4, 64, 64, 4) and f["points"].shape == (10, 15000, 3)
        alpha = f["images"][:, :, :, :, 3]
        border = np.concatenate([alpha[:, :, [0, -1], :].ravel(), alpha[:, :, :, [0, -1]].ravel()])
        assert (border > 0).mean() < 0.01 and (alpha > 0).mean() > 0.1  # framed like R2N2, object visible
        assert f["part_labels"][:].max() < len(f.attrs["part_names"]) and f.attrs["part_thin"].any()
        diagonal = np.linalg.norm(f["shape_stats/bbox_max"][:] - f["shape_stats/bbox_min"][:], axis=1)
        assert (diagonal <= 1.0 + 1e-6).all() and (diagonal > 0.99).all()  # samples span the unit-diagonal box
        assert len({f["params"][i].decode() for i in range(10)}) == 10
    ds = ShapeDataset(DatasetConfig(path=str(synth)), "train")
    assert len(ds) == 2 * len(CATEGORIES)  # round(0.8 * 2) = 2 training shapes per category
    assert ds[0]["image"].shape == (4, 64, 64)


def test_generation_is_deterministic():
    a, b = make_record(CONFIG, "chair", 3), make_record(CONFIG, "chair", 3)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.images, b.images)
    c = make_record(CONFIG, "chair", 4)
    assert not np.array_equal(a.points, c.points)


def test_command_rejects_bad_options(tmp_path):
    out = tmp_path / "x.h5"
    result = subprocess.run([sys.executable, str(ROOT / "datasets/synthetic.py"), "--out", str(out), "--categories", "boat"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "boat" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_splits_cover_val_and_test():
    from collections import Counter

    from pvd.data.synthetic.writer import _split_of

    assert Counter(_split_of(i, 200, (0.8, 0.1, 0.1)) for i in range(200)) == {"train": 160, "val": 20, "test": 20}
    assert Counter(_split_of(i, 3, (0.8, 0.1, 0.1)) for i in range(3)) == {"train": 1, "val": 1, "test": 1}


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_interrupted_generation_leaves_no_complete_file(tmp_path, signal_name):
    import signal
    import time

    out = tmp_path / "synth.h5"
    process = subprocess.Popen([sys.executable, str(ROOT / "datasets/synthetic.py"), "--out", str(out), "--per-category", "400"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = out.with_name(out.name + ".partial")
    deadline = time.monotonic() + 60
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # some shapes written
    process.send_signal(getattr(signal, signal_name))
    process.wait(timeout=30)
    assert process.returncode != 0 and not out.exists()
    if signal_name == "SIGTERM":
        assert not partial.exists() and "Traceback" not in process.stderr.read()
    else:
        with pytest.raises(UserError):
            open_dataset_file(partial)
