"""Atomic output (pvd.io.atomic_path) and point files (pvd.io.save_points)."""

import os

import numpy as np
import pytest
import trimesh

from pvd.errors import UserError
from pvd.io import atomic_path, save_points


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.") and tmp.name.endswith(".partial")
        tmp.write_text("new")
        assert not target.exists()  # nothing visible before the body ends
    assert target.read_text() == "new"
    with atomic_path(str(target)) as tmp:  # str paths, and replacing an existing file
        tmp.write_text("newer")
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "newer"


def test_atomic_path_temporary_names_are_unique(tmp_path):
    with atomic_path(tmp_path / "a") as one, atomic_path(tmp_path / "a") as two:
        assert one != two
        one.write_text("1")
        two.write_text("2")
    assert (tmp_path / "a").read_text() == "1"  # the outer one renamed last
    assert os.listdir(tmp_path) == ["a"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("existing", [False, True])
def test_atomic_path_exception_leaves_nothing(tmp_path, error, existing):
    target = tmp_path / "out.bin"
    if existing:
        target.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise error()
    assert os.listdir(tmp_path) == (["out.bin"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old"


def test_atomic_path_without_a_written_file_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "never"):
            pass
    assert os.listdir(tmp_path) == []


def test_atomic_path_creates_no_directories(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "missing" / "out.txt") as tmp:
            tmp.write_text("x")
    assert os.listdir(tmp_path) == []


POINTS = np.random.default_rng(0).normal(size=(257, 3)) * [1.0, 1e-3, 1e3]


def read_ply_by_hand(path):
    """Header lines and the (N, 3) float32 body of a binary PLY with float x, y, z vertices."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    count = int(next(line for line in header if line.startswith("element vertex")).split()[2])
    body = np.frombuffer(data[end:], dtype="<f4")
    assert body.size == 3 * count  # nothing after the vertices
    return header, body.reshape(count, 3)


def test_ply_round_trip(tmp_path):
    path = tmp_path / "cloud.ply"
    save_points(path, POINTS)
    header, body = read_ply_by_hand(path)
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert [line for line in header if line.startswith(("element", "property"))] == [
        "element vertex 257", "property float x", "property float y", "property float z"]
    np.testing.assert_array_equal(body, POINTS.astype(np.float32))
    loaded = trimesh.load(path)
    assert isinstance(loaded, trimesh.PointCloud)
    np.testing.assert_array_equal(np.asarray(loaded.vertices), POINTS.astype(np.float32))
    assert os.listdir(tmp_path) == ["cloud.ply"]


def test_npy_round_trip(tmp_path):
    path = tmp_path / "cloud.NPY"  # suffixes are case-insensitive
    save_points(path, POINTS)
    back = np.load(path)
    assert back.dtype == np.float32 and back.shape == (257, 3)
    np.testing.assert_array_equal(back, POINTS.astype(np.float32))
    assert os.listdir(tmp_path) == ["cloud.NPY"]  # np.save appended no second ".npy"


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="cloud.xyz.*unsupported"):
        save_points(tmp_path / "cloud.xyz", POINTS)
    with pytest.raises(UserError, match="no directory"):
        save_points(tmp_path / "missing" / "cloud.ply", POINTS)
    with pytest.raises(ValueError):
        save_points(tmp_path / "cloud.ply", POINTS[:, :2])
    assert os.listdir(tmp_path) == []
