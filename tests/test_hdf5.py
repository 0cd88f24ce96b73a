"""The HDF5 schema: writer round trip, atomic writes, normalisations and the Dataset's draws."""

import numpy as np
import pytest
import torch

from pvd.data.cameras import orbit_cameras
from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.data.hdf5 import ShapeRecord, ShapeWriter, WriterLayout, add_embeddings, open_dataset_file, read_mesh
from pvd.errors import UserError

P, V, H, W = 300, 3, 8, 10
CATEGORIES = {"chair": "03001627", "car": "02958343"}


def make_records(n=12, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        category = "chair" if i % 2 == 0 else "car"
        nv = 4 + i
        records.append(
            ShapeRecord(
                model_id=f"model{i:03d}",
                category=category,
                split=("train", "train", "val", "test")[i % 4],
                points=(rng.normal(size=(P, 3)) * (1 + i) + i).astype(np.float32),
                normals=rng.normal(size=(P, 3)).astype(np.float32),
                images=rng.integers(0, 256, (V, H, W, 4), dtype=np.uint8),
                cameras=orbit_cameras(np.column_stack([rng.uniform(0, 360, V), np.full(V, 25.0), np.full(V, 0.8)]), W, H),
                vertices=rng.normal(size=(nv, 3)).astype(np.float32),
                faces=rng.integers(0, nv, (2 * i + 1, 3)).astype(np.int32),
                part_labels=rng.integers(0, 3, P).astype(np.int16),
                params={"i": i, "width": float(i) / 3},
            )
        )
    return records


LAYOUT = dict(categories=CATEGORIES, num_points=P, num_views=V, image_size=(H, W), normals=True, meshes=True,
              part_names=("seat", "leg", "body"), thin_parts=("leg",), params=True, source="test")


@pytest.fixture(scope="module")
def h5file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "shapes.h5"
    records = make_records()
    with ShapeWriter(path, WriterLayout(**LAYOUT)) as writer:
        for record in records:
            writer.append(record)
    return path, records


def test_round_trip(h5file):
    path, records = h5file
    with open_dataset_file(path) as f:
        assert f.attrs["num_shapes"] == len(records) and f.attrs["num_train_points"] == 200
        assert list(f.attrs["category_names"]) == ["chair", "car"]
        assert list(f.attrs["part_thin"]) == [False, True, False]
        for i, r in enumerate(records):
            np.testing.assert_array_equal(f["points"][i], r.points)
            np.testing.assert_array_equal(f["normals"][i], r.normals)
            np.testing.assert_array_equal(f["images"][i], r.images)
            np.testing.assert_array_equal(f["cameras/extrinsics"][i], r.cameras.extrinsics)
            np.testing.assert_array_equal(f["part_labels"][i], r.part_labels)
            assert f["model_id"][i].decode() == r.model_id
            assert f.attrs["split_names"][f["split"][i]] == r.split
            vertices, faces = read_mesh(f, i)
            np.testing.assert_array_equal(vertices, r.vertices)
            np.testing.assert_array_equal(faces, r.faces)
            assert f["params"][i].decode() == f'{{"i": {i}, "width": {i / 3!r}}}'
            np.testing.assert_allclose(f["shape_stats/bbox_max"][i], r.points.max(0))


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with ShapeWriter(path, WriterLayout(**LAYOUT)) as writer:
            writer.append(make_records(1)[0])
            raise RuntimeError("conversion died")
    assert list(tmp_path.iterdir()) == []


def test_unfinished_file_is_refused(tmp_path):
    path = tmp_path / "out.h5"
    writer = ShapeWriter(path, WriterLayout(**LAYOUT))  # never closed: as after SIGKILL
    writer.append(make_records(1)[0])
    writer._file.flush()
    assert not path.exists()
    with pytest.raises(UserError, match="partial"):
        open_dataset_file(path)
    with pytest.raises(UserError, match="incomplete|schema_version"):
        open_dataset_file(writer.partial_path)
    writer.abort()


def test_append_rejects_mismatched_records(tmp_path):
    with ShapeWriter(tmp_path / "x.h5", WriterLayout(**LAYOUT)) as writer:
        good = make_records(1)[0]
        for change in ({"points": good.points[:10]}, {"images": None}, {"category": "lamp"}, {"split": "dev"},
                       {"points": np.full((P, 3), np.nan, np.float32)}):
            bad = ShapeRecord(**{**good.__dict__, **change})
            with pytest.raises(ValueError):
                writer.append(bad)
        writer.append(good)
    assert open_dataset_file(tmp_path / "x.h5").attrs["num_shapes"] == 1


def test_pointflow_normalisation_matches_naive(h5file):
    path, records = h5file
    ds = ShapeDataset(DatasetConfig(path=str(path), categories=["chair"], images=False, num_points=100), "val")
    train = np.stack([r.points for r in records if r.category == "chair" and r.split == "train"]).astype(np.float64)
    mean, std = train.reshape(-1, 3).mean(0), train.reshape(-1).std()
    info = ds.normalization_info()
    np.testing.assert_allclose(info["mean"], mean, rtol=1e-5)
    assert info["std"] == pytest.approx(std, rel=1e-6)
    item = ds[0]
    record = records[int(item["index"])]
    expected = (record.points[200:] - mean) / std
    np.testing.assert_allclose(item["points"].numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(item["points"] * item["scale"] + item["shift"], record.points[200:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["unit_sphere", "bbox"])
def test_per_shape_normalisations(h5file, mode):
    path, records = h5file
    ds = ShapeDataset(DatasetConfig(path=str(path), normalization=mode, images=False, num_points=100), "train", train=False)
    for item in (ds[i] for i in range(len(ds))):
        full = records[int(item["index"])].points.astype(np.float64)
        normalised = (full - item["shift"].numpy()) / item["scale"].item()
        if mode == "unit_sphere":
            np.testing.assert_allclose(normalised.mean(0), 0.0, atol=1e-4)
            assert np.linalg.norm(normalised, axis=1).max() == pytest.approx(1.0, rel=1e-5)
        else:
            np.testing.assert_allclose(normalised.max(0) + normalised.min(0), 0.0, atol=1e-5)
            assert np.abs(normalised).max() == pytest.approx(1.0, rel=1e-5)


def test_training_draws(h5file):
    path, records = h5file
    ds = ShapeDataset(DatasetConfig(path=str(path), normalization="none", num_points=512, seed=3), "train")
    a, b = ds[1], ds[1]
    torch.testing.assert_close(a["points"], b["points"])
    record = records[int(a["index"])]
    train_rows = {tuple(p) for p in record.points[:200]}
    assert all(tuple(p) in train_rows for p in a["points"].numpy())  # never the held-out points
    assert len({tuple(p) for p in a["points"].numpy()}) < 512  # with replacement
    view = int(a["view"])
    np.testing.assert_array_equal(a["image"].permute(1, 2, 0).numpy(), record.images[view])
    np.testing.assert_array_equal(a["extrinsics"].numpy(), record.cameras.extrinsics[view])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["points"], a["points"])
    views = {int(ds[1]["view"]) for ds.epoch in range(20)}
    assert len(views) > 1


def test_workers_and_distributed_sampler_reproduce_single_process(h5file):
    path, _ = h5file
    ds = ShapeDataset(DatasetConfig(path=str(path), num_points=64), "train")
    plain = [b["points"] for b in torch.utils.data.DataLoader(ds, batch_size=2)]
    workers = [b["points"] for b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)]
    for x, y in zip(plain, workers, strict=True):
        torch.testing.assert_close(x, y)
    seen = []
    for rank in range(2):
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        seen += [int(i) for b in torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler) for i in b["index"]]
    assert sorted(seen) == sorted(int(i) for i in ds.indices)


def test_embeddings(h5file, tmp_path):
    path, records = h5file
    copy = tmp_path / "copy.h5"
    copy.write_bytes(path.read_bytes())
    emb = np.arange(len(records) * V * 4, dtype=np.float32).reshape(len(records), V, 4)
    add_embeddings(copy, "clip", emb)
    ds = ShapeDataset(DatasetConfig(path=str(copy), embedding="clip", num_points=100), "test")
    item = ds[0]
    np.testing.assert_array_equal(item["embedding"].numpy(), emb[int(item["index"]), int(item["view"])])
    with pytest.raises(UserError):
        add_embeddings(copy, "bad", emb[:3])


def test_bad_options_are_user_errors(h5file, tmp_path):
    path, _ = h5file
    for kwargs, split in (({"categories": ["lamp"]}, "train"), ({"normalization": "minmax"}, "train"),
                          ({"num_points": 101}, "test"), ({"eval_view": 5}, "test"), ({}, "dev")):
        with pytest.raises(UserError):
            ShapeDataset(DatasetConfig(path=str(path), **kwargs), split)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError):
        open_dataset_file(tmp_path / "junk.h5")
    by_synset = ShapeDataset(DatasetConfig(path=str(path), categories=["02958343"]), "train")
    assert {int(by_synset[i]["category"]) for i in range(len(by_synset))} == {1}
