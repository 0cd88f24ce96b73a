"""ShapeNet readers on small trees fabricated in the published layouts (no real data here).

PC15k npy files, an R2N2 rendering tree (PNGs rendered from the metadata written beside them),
a ShapeNetCore.v2 tree with messy OBJ files, and a user's folder tree; conversion, corrupt
inputs, layout errors, the end-to-end camera check and interrupted conversions.
"""

import importlib.util
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import trimesh
from PIL import Image

from pvd.data.cameras import orbit_cameras, project, r2n2_cameras, r2n2_extrinsics, r2n2_like_views
from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.data.hdf5 import ShapeRecord, WriterLayout, open_dataset_file, read_mesh
from pvd.data.render import render_views
from pvd.data.shapenet.categories import SYNSET_NAMES, category_name, hash_split, parse_split_ratios
from pvd.data.shapenet.core import MeshOptions, plan_core
from pvd.data.shapenet.folder import plan_folder
from pvd.data.shapenet.pc15k import plan_pc15k
from pvd.data.shapenet.runner import run_plan, write_records
from pvd.data.shapenet.tasks import Skip
from pvd.errors import UserError
from in_process import run_main  # tests/in_process.py

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "datasets" / "shapenet.py"
SYNSETS = ("02691156", "03001627")  # airplane, chair
SPLIT_OF = ("train", "val", "test", "train")
MODELS_PER_SYNSET = 4


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120, **kwargs)


def script_main():
    """datasets/shapenet.py's main, loaded from the file (datasets/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("prepare_shapenet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def toy_shape(i: int) -> trimesh.Trimesh:
    """A box with an off-centre post: no mirror symmetry, so a wrong azimuth or elevation shows."""
    box = trimesh.creation.box(extents=(0.6, 0.12, 0.3 + 0.04 * i))
    box.apply_translation((0.0, -0.1, 0.0))
    post = trimesh.creation.cylinder(radius=0.06, height=0.4, sections=16)
    post.apply_translation((0.2 - 0.08 * i, 0.15, 0.1))
    return trimesh.util.concatenate([box, post])


def model_id(synset: str, i: int) -> str:
    return f"{synset[:4]}{i:02d}aa{synset[-2:]}"


def write_r2n2_rendering(folder: Path, mesh: trimesh.Trimesh, metadata: np.ndarray) -> None:
    """PNGs rendered with orbit cameras from (V, 3) (azimuth, elevation, ratio), R2N2 files."""
    folder.mkdir(parents=True)
    cameras = orbit_cameras(metadata, 137, 137)
    images = render_views(mesh.vertices, mesh.faces, cameras.intrinsics, cameras.extrinsics, 137, 137)
    names = [f"{k:02d}.png" for k in range(len(images))]
    for name, image in zip(names, images):
        Image.fromarray(image).save(folder / name)
    (folder / "renderings.txt").write_text("\n".join(names) + "\n")
    (folder / "rendering_metadata.txt").write_text("".join(f"{a:.6f} {e:.6f} 0 {d:.6f} 25\n" for a, e, d in metadata))


@pytest.fixture(scope="module")
def r2n2_tree(tmp_path_factory):
    """(pc15k root, r2n2 root, {model_id: (synset, split, mesh)})."""
    root = tmp_path_factory.mktemp("shapenet")
    pc15k, r2n2 = root / "ShapeNetCore.v2.PC15k", root / "ShapeNetRendering"
    models = {}
    for s, synset in enumerate(SYNSETS):
        for i in range(MODELS_PER_SYNSET):
            k = s * MODELS_PER_SYNSET + i
            mesh, mid, split = toy_shape(k), model_id(synset, i), SPLIT_OF[i]
            points, _ = trimesh.sample.sample_surface(mesh, 15000, seed=k)
            (pc15k / synset / split).mkdir(parents=True, exist_ok=True)
            np.save(pc15k / synset / split / f"{mid}.npy", points.astype(np.float32))
            metadata = r2n2_like_views(np.random.default_rng(k), 24)
            write_r2n2_rendering(r2n2 / synset / mid / "rendering", mesh, metadata)
            models[mid] = (synset, split, mesh)
    # an R2N2 model PC15k does not have, and a PC15k model R2N2 does not have
    write_r2n2_rendering(r2n2 / SYNSETS[0] / "onlyinr2n2" / "rendering", toy_shape(0), r2n2_like_views(np.random.default_rng(99), 24))
    return pc15k, r2n2, models


@pytest.fixture(scope="module")
def pc15k_file(r2n2_tree, tmp_path_factory):
    pc15k, r2n2, _ = r2n2_tree
    out = tmp_path_factory.mktemp("out") / "pc15k.h5"
    summary = run_plan(plan_pc15k(pc15k, r2n2), out, workers=1, progress=False)
    return out, summary


def test_pc15k_r2n2_round_trip(r2n2_tree, pc15k_file):
    pc15k, r2n2, models = r2n2_tree
    out, summary = pc15k_file
    assert summary.read == len(models) and not summary.skipped
    with open_dataset_file(out) as f:
        assert list(f.attrs["category_names"]) == ["airplane", "chair"]
        assert list(f.attrs["category_synsets"]) == list(SYNSETS)
        assert f.attrs["num_views"] == 24 and tuple(f.attrs["image_size"]) == (137, 137)
        assert str(r2n2.resolve()) in f.attrs["source"] and f.attrs["source_kind"] == "pc15k"
        assert f.attrs["r2n2_silhouette_iou_mean"] > 0.9
        ids = [m.decode() for m in f["model_id"][:]]
        assert sorted(ids) == sorted(models)
        for row, mid in enumerate(ids):
            synset, split, _ = models[mid]
            assert f.attrs["category_synsets"][f["category"][row]] == synset
            assert ("train", "val", "test")[f["split"][row]] == split
            np.testing.assert_array_equal(f["points"][row], np.load(pc15k / synset / split / f"{mid}.npy"))
            # the views stored for this row are this model's PNGs and cameras
            rendering = r2n2 / synset / mid / "rendering"
            for view in (0, 7, 23):
                png = np.asarray(Image.open(rendering / f"{view:02d}.png").convert("RGBA"))
                np.testing.assert_array_equal(f["images"][row, view], png)
            metadata = np.loadtxt(rendering / "rendering_metadata.txt")
            np.testing.assert_allclose(f["cameras/extrinsics"][row], r2n2_cameras(metadata).extrinsics)
            np.testing.assert_allclose(f["cameras/azimuth"][row], metadata[:, 0], rtol=1e-6)
    for split in ("train", "val", "test"):
        ds = ShapeDataset(DatasetConfig(path=str(out), num_points=512, normalization="none"), split=split)
        assert len(ds) == sum(s == split for _, s, _ in models.values())
        item = ds[0]
        assert item["points"].shape == (512, 3) and item["image"].shape == (4, 137, 137)
    chairs = ShapeDataset(DatasetConfig(path=str(out), categories=["chair"], images=False), split="train")
    assert len(chairs) == 2


def silhouette_ious(points, images, intrinsics, extrinsics):
    """Per-view IoU of the pixels hit by the projected points and the alpha > 0 silhouette."""
    uv, depth = project(points[None].astype(np.float64), intrinsics.astype(np.float64), extrinsics.astype(np.float64))
    ious = []
    for v in range(len(images)):
        mask = images[v, ..., 3] > 0
        col, row = np.floor(uv[v]).astype(int).T
        ok = (depth[v] > 0) & (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
        hit = np.zeros_like(mask)
        hit[row[ok], col[ok]] = True
        ious.append((hit & mask).sum() / (hit | mask).sum())
    return np.array(ious)


def test_r2n2_cameras_end_to_end(pc15k_file):
    """Stored points through stored cameras land on the R2N2 silhouettes (published formula)."""
    out, _ = pc15k_file
    with open_dataset_file(out) as f:
        for row in range(f.attrs["num_shapes"]):
            points, images = f["points"][row], f["images"][row]
            intrinsics, extrinsics = f["cameras/intrinsics"][row], f["cameras/extrinsics"][row]
            ious = silhouette_ious(points, images, intrinsics, extrinsics)
            assert ious.mean() >= 0.9 and ious.min() >= 0.75, (row, ious)
            # the check can fail: the cameras of a mirrored azimuth or a different model miss
            az, el, dist = f["cameras/azimuth"][row], f["cameras/elevation"][row], f["cameras/distance"][row]
            mirrored = np.stack([r2n2_extrinsics(-a, e, d) for a, e, d in zip(az, el, dist)])
            assert silhouette_ious(points, images, intrinsics, mirrored).mean() < 0.85
            other = f["points"][(row + 1) % f.attrs["num_shapes"]]
            assert silhouette_ious(other, images, intrinsics, extrinsics).mean() < 0.85


def test_pc15k_categories_limit_and_no_r2n2(r2n2_tree, tmp_path):
    pc15k, r2n2, models = r2n2_tree
    plan = plan_pc15k(pc15k, categories="chair", limit=3)
    summary = run_plan(plan, tmp_path / "a.h5", workers=1, progress=False)
    assert summary.read == 3 and summary.per_category == Counter(chair=3)
    with open_dataset_file(tmp_path / "a.h5") as f:
        assert "images" not in f and f.attrs["num_views"] == 0
        assert sorted(m.decode() for m in f["model_id"][:]) == sorted(m for m, v in models.items() if v[0] == SYNSETS[1])[:3]
    assert [t.category for t in plan_pc15k(pc15k, categories=["02691156"]).tasks] == ["airplane"] * MODELS_PER_SYNSET
    with pytest.raises(UserError, match="unknown category"):
        plan_pc15k(pc15k, categories="spaceship")
    with pytest.raises(UserError, match="no folder"):
        plan_pc15k(pc15k, categories="vessel")  # known alias, not in this tree
    assert category_name("04530566") == "watercraft" and category_name("99999999") == "99999999"
    assert len(set(SYNSET_NAMES.values())) == len(SYNSET_NAMES) == 55


def _corrupt_tree(r2n2_tree, root: Path) -> dict[str, str]:
    """A copy of the trees with one broken input per kind; returns {path fragment: reason}."""
    pc15k, r2n2 = root / "pc", root / "r2n2"
    shutil.copytree(r2n2_tree[0], pc15k)
    shutil.copytree(r2n2_tree[1], r2n2)
    a, c = pc15k / SYNSETS[0] / "train", pc15k / SYNSETS[1] / "train"
    (a / "garbage.npy").write_bytes(b"\x93NUMPY this is not really an array")
    np.save(a / "flat.npy", np.zeros((15000, 2), np.float32))
    nan = np.zeros((15000, 3), np.float32)
    nan[5] = np.nan
    np.save(c / "hasnan.npy", nan)
    shutil.copy(a / f"{model_id(SYNSETS[0], 0)}.npy", a / "norendering.npy")
    for synset, name in ((SYNSETS[0], "garbage"), (SYNSETS[0], "flat"), (SYNSETS[1], "hasnan")):  # renderings exist
        shutil.copytree(r2n2 / synset / model_id(synset, 3), r2n2 / synset / name)
    expected = {"garbage.npy": "unreadable file", "flat.npy": "wrong shape", "hasnan.npy": "non-finite values", "norendering.npy": "no R2N2 rendering"}
    broken = {  # model -> (how to break its rendering folder, reason)
        model_id(SYNSETS[0], 1): (lambda d: (d / "rendering_metadata.txt").write_text("".join((d / "rendering_metadata.txt").read_text().splitlines(True)[:23])), "bad R2N2 metadata"),
        model_id(SYNSETS[0], 2): (lambda d: (d / "rendering_metadata.txt").write_text("10 25 0\n" * 24), "bad R2N2 metadata"),
        model_id(SYNSETS[1], 0): (lambda d: (d / "05.png").write_bytes((d / "05.png").read_bytes()[:100]), "unreadable PNG"),
        model_id(SYNSETS[1], 1): (lambda d: Image.new("RGBA", (64, 64)).save(d / "03.png"), "wrong image size"),
    }
    for mid, (breaker, reason) in broken.items():
        synset = SYNSETS[0] if mid.startswith(SYNSETS[0][:4]) else SYNSETS[1]
        breaker(r2n2 / synset / mid / "rendering")
        expected[mid] = reason
    return expected


def test_corrupt_files_are_skipped_and_named(r2n2_tree, tmp_path, capsys):
    expected = _corrupt_tree(r2n2_tree, tmp_path)
    out = tmp_path / "out.h5"
    result = run_cli("pc15k", tmp_path / "pc", "--r2n2", tmp_path / "r2n2", "--out", out, "--workers", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for fragment, reason in expected.items():
        assert any(fragment in line and reason in line for line in lines), (fragment, reason, result.stdout)
    assert f"skipped {len(expected)}:" in result.stdout
    assert f"read {2 * MODELS_PER_SYNSET - 4} shapes" in result.stdout
    with open_dataset_file(out) as f:
        assert f.attrs["skipped"] == len(expected)
        ids = {m.decode() for m in f["model_id"][:]}
    assert ids == {model_id(s, i) for s in SYNSETS for i in range(MODELS_PER_SYNSET)} - set(expected)

    strict_out = tmp_path / "strict.h5"
    code, _, err = run_main(script_main(), ["pc15k", tmp_path / "pc", "--r2n2", tmp_path / "r2n2", "--out", strict_out,
                                            "--strict"], capsys)
    assert code == 2 and "--strict" in err and len(err.splitlines()) == 1
    assert not strict_out.exists() and not Path(f"{strict_out}.partial").exists()


def test_missing_root_and_wrong_layout_are_one_line_errors(r2n2_tree, core_tree, tmp_path, capsys):
    pc15k, r2n2, _ = r2n2_tree
    cases = [
        (("pc15k", tmp_path / "nope"), "does not exist"),
        (("pc15k", pc15k.parent), "ShapeNetCore.v2.PC15k"),  # the parent folder
        (("pc15k", core_tree), "use the core command"),
        (("core", pc15k), "use the pc15k command"),
    ]
    main = script_main()
    for k, (args, message) in enumerate(cases):
        out = tmp_path / "o.h5"
        if k == 0:  # the real command once; the rest through the same wrapper in this process
            result = run_cli(*args, "--out", out)
            code, err = result.returncode, result.stderr
        else:
            code, _, err = run_main(main, [*args, "--out", out], capsys)
        assert code == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert message in err and "Traceback" not in err
        assert not out.exists() and not Path(f"{out}.partial").exists()
    # the planners' own checks
    with pytest.raises(UserError, match="its subfolder 'ShapeNetCore.v2.PC15k'"):
        plan_pc15k(pc15k.parent)
    with pytest.raises(UserError, match="pass it to pc15k with --r2n2"):
        plan_pc15k(r2n2)
    with pytest.raises(UserError, match="3D-R2N2"):
        plan_pc15k(pc15k, r2n2_root=pc15k)
    with pytest.raises(UserError, match="is not a folder"):
        plan_core(next(pc15k.rglob("*.npy")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="one subfolder per category"):
        plan_folder(tmp_path / "empty")


# --- ShapeNetCore.v2 ------------------------------------------------------------------------


def messy_obj(i: int) -> str:
    """Two objects (a closed box and an open quad panel), groups, materials, vt/vn indices,
    a quad, a degenerate face, a duplicate face and a face on two coincident vertices."""
    box = trimesh.creation.box(extents=(0.5, 0.3 + 0.05 * i, 0.4))
    box.apply_translation((0.05, 0.0, -0.1))
    panel = [[-0.3, 0.25, 0.0], [0.2, 0.25, 0.0], [0.2, 0.25, 0.35], [-0.3, 0.25, 0.35]]
    lines = ["# ShapeNet-like", "mtllib model_normalized.mtl", "o body", "g body_group"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in box.vertices]
    lines += ["vt 0 0", "vt 1 0", "vt 0 1", "vn 0 1 0", "usemtl material_0_24", "s off"]
    lines += [f"f {a + 1}/1/1 {b + 1}/2/1 {c + 1}/3/1" for a, b, c in box.faces]
    lines += ["o panel", "g panel_group", "usemtl material_1_missing"]
    lines += [f"v {x} {y} {z}" for x, y, z in panel]
    lines += ["f 9 10 11 12", "f 9 9 10", "f 11 10 9", "v 0.3 0.3 0.3", "v 0.3 0.3 0.3", "f 13 14 9"]
    return "\n".join(lines) + "\n"


CLEAN_FACES, CLEAN_VERTICES = 12 + 2, 8 + 4


def write_core_tree(root: Path, per_synset: int) -> None:
    for synset in SYNSETS:
        for i in range(per_synset):
            models = root / synset / f"{synset[-3:]}core{i:03d}" / "models"
            models.mkdir(parents=True)
            (models / "model_normalized.obj").write_text(messy_obj(i % 5))
            if i % 2:  # a material file naming a texture that is not there
                (models / "model_normalized.mtl").write_text("newmtl material_0_24\nKd 0.8 0.2 0.2\nmap_Kd ../images/texture0.jpg\n")


@pytest.fixture(scope="module")
def core_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("core") / "ShapeNetCore.v2"
    write_core_tree(root, 3)
    broken = root / SYNSETS[1]
    for name, text in {
        "badtext": "this is not\nan obj file\n",
        "onlyverts": "v 0 0 0\nv 1 0 0\nv 0 1 0\n",
        "flat": "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\nf 1 1 2\n",
        "outofrange": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n",
    }.items():
        (broken / name / "models").mkdir(parents=True)
        (broken / name / "models" / "model_normalized.obj").write_text(text)
    (broken / "nomodel" / "models").mkdir(parents=True)
    return root


CORE_BROKEN = {"badtext": "empty mesh", "onlyverts": "empty mesh", "flat": "empty mesh", "outofrange": "unreadable mesh", "nomodel": "missing model file"}


def test_core_messy_objs(core_tree, tmp_path):
    out = tmp_path / "core.h5"
    options = MeshOptions(num_points=2048, num_views=4, image_size=64)
    summary = run_plan(plan_core(core_tree, options), out, workers=1, progress=False)
    assert summary.read == 6
    assert Counter(s.reason for s in summary.skipped) == Counter(CORE_BROKEN.values())
    text = str(summary)
    for name, reason in CORE_BROKEN.items():
        assert any(name in line and reason in line for line in text.splitlines()), (name, text)
    with open_dataset_file(out) as f:
        assert f.attrs["num_views"] == 4 and f.attrs["num_points"] == 2048
        ids = [m.decode() for m in f["model_id"][:]]
        assert ids == sorted(ids) and len(ids) == 6
        for row, mid in enumerate(ids):
            assert ("train", "val", "test")[f["split"][row]] == hash_split(mid)
            vertices, faces = read_mesh(f, row)
            assert faces.shape == (CLEAN_FACES, 3) and vertices.shape == (CLEAN_VERTICES, 3)
            mesh = trimesh.Trimesh(vertices, faces, process=False)
            assert (mesh.area_faces > 0).all() and len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces)
            points, normals = f["points"][row], f["normals"][row]
            np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
            # every point is on the surface (no normalisation for Core.v2) and the open panel is sampled
            assert on_surface(points, vertices, faces).all()
            on_panel = np.isclose(points[:, 1], 0.25) & (points[:, 2] >= 0.0)
            assert 0 < on_panel.sum() < len(points)
            images = f["images"][row]
            assert images.shape == (4, 64, 64, 4) and (images[..., 3] > 0).mean() > 0.05
            uv, depth = project(points[None], f["cameras/intrinsics"][row], f["cameras/extrinsics"][row])
            col, rw = np.clip(np.floor(uv), 0, 63).astype(int).transpose(2, 0, 1)
            inside = images[np.arange(4)[:, None], rw, col, 3] > 0
            assert inside.mean() > 0.95
    # the CLI with two workers writes the same data; --no-meshes drops the mesh group
    out2 = tmp_path / "core2.h5"
    result = run_cli("core", core_tree, "--out", out2, "--points", 2048, "--views", 4, "--image-size", 64, "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert_same_datasets(out, out2)
    plan = plan_core(core_tree, MeshOptions(num_points=64, num_views=0, meshes=False), categories="airplane", limit=2)
    run_plan(plan, tmp_path / "small.h5", workers=1, progress=False)
    with open_dataset_file(tmp_path / "small.h5") as f:
        assert "mesh" not in f and "images" not in f and f.attrs["num_shapes"] == 2


def on_surface(points, vertices, faces, tol=1e-5):
    """(N,) whether each point lies on some triangle (in its plane, barycentrics >= 0)."""
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    d = points[:, None].astype(np.float64) - a[None]  # (N, F, 3)
    in_plane = np.abs((d * n).sum(-1)) < tol
    e0, e1 = b - a, c - a
    d00, d01, d11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    d20, d21 = (d * e0).sum(-1), (d * e1).sum(-1)
    den = d00 * d11 - d01**2
    v, w = (d11 * d20 - d01 * d21) / den, (d00 * d21 - d01 * d20) / den
    inside = (v >= -tol) & (w >= -tol) & (v + w <= 1 + tol)
    return (in_plane & inside).any(axis=1)


def assert_same_datasets(a: Path, b: Path) -> None:
    def contents(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out

    ca, cb = contents(a), contents(b)
    assert ca.keys() == cb.keys()
    for key in ca:
        np.testing.assert_array_equal(ca[key], cb[key], err_msg=key)


# --- a user's folder ------------------------------------------------------------------------


def test_folder_meshes_normalised_and_rendered(tmp_path):
    root = tmp_path / "mine"
    mug = trimesh.creation.cylinder(radius=30.0, height=80.0, sections=24)  # millimetres, off-centre
    mug.apply_translation((100.0, 50.0, -20.0))
    rock = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    (root / "mugs").mkdir(parents=True)
    (root / "rocks" / "big").mkdir(parents=True)
    mug.export(root / "mugs" / "a.obj")
    mug.export(root / "mugs" / "b.ply")
    mug.export(root / "mugs" / "c.stl")
    rock.export(root / "rocks" / "d.off")
    rock.export(root / "rocks" / "big" / "e.glb")
    mug.export(root / "loose.obj")  # not in a category folder
    options = MeshOptions(num_points=1024, num_views=2, image_size=32)
    summary = run_plan(plan_folder(root, options), tmp_path / "f.h5", workers=1, progress=False)
    assert summary.read == 5 and [s.reason for s in summary.skipped] == ["not in a category folder"]
    with open_dataset_file(tmp_path / "f.h5") as f:
        assert list(f.attrs["category_names"]) == ["mugs", "rocks"]
        assert [m.decode() for m in f["model_id"][:]] == ["a", "b", "c", "big/e", "d"]
        for row in range(5):
            vertices, _ = read_mesh(f, row)
            lo, hi = vertices.min(0), vertices.max(0)
            np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(hi - lo), 1, rtol=1e-5)
            assert (f["images"][row][..., 3] > 0).any()
    with pytest.raises(UserError, match="strict"):
        run_plan(plan_folder(root, options), tmp_path / "s.h5", strict=True, progress=False)
    assert not (tmp_path / "s.h5").exists()
    options = MeshOptions(num_points=1024, num_views=0)
    run_plan(plan_folder(root, options, keep_scale=True, categories="mugs"), tmp_path / "k.h5", workers=1, progress=False)
    with open_dataset_file(tmp_path / "k.h5") as f:
        vertices, _ = read_mesh(f, 0)
        np.testing.assert_allclose(vertices.max(0), mug.vertices.max(0), rtol=1e-5)


def test_folder_point_clouds(tmp_path):
    root = tmp_path / "clouds"
    rng = np.random.default_rng(0)
    (root / "blobs").mkdir(parents=True)
    (root / "boxes").mkdir(parents=True)
    big, small = rng.normal(size=(3000, 3)) * 5 + 7, rng.normal(size=(300, 3))
    np.save(root / "blobs" / "big.npy", big)
    np.save(root / "blobs" / "small.npy", small)
    trimesh.PointCloud(rng.uniform(-1, 1, (2000, 3))).export(root / "blobs" / "cloud.ply")
    np.save(root / "blobs" / "broken.npy", rng.normal(size=(10, 4)))
    trimesh.creation.box().export(root / "boxes" / "box.obj")
    summary = run_plan(plan_folder(root, MeshOptions(num_points=1000)), tmp_path / "p.h5", workers=1, progress=False)
    text = str(summary)
    assert summary.read == 4 and summary.upsampled == 1 and "upsampled 1" in text
    assert "no images" in text and "broken.npy: wrong shape" in text
    with open_dataset_file(tmp_path / "p.h5") as f:
        assert "images" not in f and "normals" not in f and "mesh" not in f
        ids = [m.decode() for m in f["model_id"][:]]
        assert ids == ["big", "cloud", "small", "box"]
        # big: a subset of the normalised input points without repeats; small: every point
        lo, hi = big.min(0), big.max(0)
        expected = (big - (lo + hi) / 2) / np.linalg.norm(hi - lo)
        got = f["points"][0]
        assert len(np.unique(got, axis=0)) == 1000
        assert np.abs(expected[:, None] - got[None]).sum(-1).min(0).max() < 1e-5
        assert len(np.unique(f["points"][2], axis=0)) == 300


def test_hash_split_and_ratios():
    ids = [f"{i:08x}feedbeef" for i in range(3000)]
    counts = Counter(hash_split(m) for m in ids)
    assert abs(counts["train"] / 3000 - 0.7) < 0.04 and abs(counts["val"] / 3000 - 0.1) < 0.03
    assert [hash_split(m) for m in ids[:50]] == [hash_split(m) for m in ids[:50]]
    assert parse_split_ratios("70,10,20") == pytest.approx((0.7, 0.1, 0.2))
    assert {hash_split(m, parse_split_ratios("0,0,1")) for m in ids[:100]} == {"test"}
    for bad in ("70,30", "a,b,c", "-1,1,1", "0,0,0"):
        with pytest.raises(UserError):
            parse_split_ratios(bad)


# --- interrupted conversions ----------------------------------------------------------------


def test_records_iterator_raising_midway_leaves_nothing(tmp_path):
    layout = WriterLayout(categories={"chair": "03001627"}, num_points=100)

    def records():
        for i in range(3):
            yield ShapeRecord(model_id=f"m{i}", category="chair", split="train", points=np.zeros((100, 3), np.float32))
        raise RuntimeError("disk on fire")

    out = tmp_path / "x.h5"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_records(out, layout, records())
    assert not out.exists() and not Path(f"{out}.partial").exists()
    with pytest.raises(UserError, match="no shapes could be read"):
        write_records(out, layout, [Skip("a.npy", "wrong shape")])
    assert not out.exists() and not Path(f"{out}.partial").exists()
    good = ShapeRecord(model_id="m", category="chair", split="train", points=np.zeros((100, 3), np.float32))
    with pytest.raises(UserError, match="--strict: b.npy: unreadable file"):
        write_records(out, layout, [good, Skip("b.npy", "unreadable file")], strict=True)
    assert not out.exists() and not Path(f"{out}.partial").exists()
    assert write_records(out, layout, [good, Skip("b.npy", "unreadable file")]).read == 1
    with open_dataset_file(out) as f:
        assert f.attrs["num_shapes"] == 1 and f.attrs["skip_reasons"] == '{"unreadable file": 1}'


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def big_core_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigcore")
    write_core_tree(root, 60)  # about 0.07 s per shape per worker: several seconds in all
    return root


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_conversion_leaves_no_complete_file(big_core_tree, tmp_path, sig):
    out = tmp_path / "killed.h5"
    partial = Path(f"{out}.partial")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "core", str(big_core_tree), "--out", str(out), "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert partial.exists() and proc.poll() is None, "the conversion ended before it could be interrupted"
        time.sleep(0.3)  # let it write a few shapes
        workers = _children(proc.pid)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
        assert not partial.exists()
    else:
        assert proc.returncode == -signal.SIGKILL
        with pytest.raises(UserError, match="interrupted conversion"):
            open_dataset_file(out)
        with pytest.raises(UserError):
            open_dataset_file(partial)
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "worker processes outlived the conversion"


@pytest.mark.slow
def test_shapenet_image_preset_trains_and_samples_on_a_fabricated_tree(r2n2_tree, pc15k_file, tmp_path):
    """The GPU preset end to end on CPU: PC15k + R2N2 views -> one training step of the
    image-conditioned hierarchy at 2048 points -> sample.py from an R2N2 rendering."""
    import sample
    import train
    from pvd import checkpoint
    out, _ = pc15k_file
    run = tmp_path / "run"
    assert train.main(["shapenet-image", f"data.path={out}", f"run_dir={run}", "max_steps=1", "batch_size=2",
                       "workers=0", "val_every=1", "val_shapes=2", "val_steps=2"]) == 0
    ckpt = checkpoint.load(run)
    assert ckpt["run"]["train"]["model"] == "pvd-paper-cond" and ckpt["run"]["dataset"]["num_points"] == 2048
    assert ckpt["run"]["train"]["diffusion"]["hierarchy"]["t_max"] == 0.1
    assert (run / "val" / "step-00000001.png").is_file()
    _, r2n2, models = r2n2_tree
    mid = next(m for m, (_, split, _) in models.items() if split == "test")
    png = r2n2 / models[mid][0] / mid / "rendering" / "00.png"
    assert sample.main(["--ckpt", str(run), "--image", str(png), "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    points = np.load(tmp_path / "s" / "samples.npy")
    assert points.shape == (1, 2048, 3) and np.isfinite(points).all()


def test_core_reports_meshes_outside_the_v2_frame_and_normalizes_on_request(tmp_path):
    """A mesh in ShapeNetCore.v2's frame (box centred, diagonal 1) passes quietly; one exported at
    another scale and offset is converted as it is and listed, or rescaled with normalize=True."""
    root = tmp_path / "ShapeNetCore.v2"
    good = trimesh.creation.box(extents=(0.6, 0.5, 0.4))
    good.apply_scale(1 / np.linalg.norm(good.extents))
    bad = good.copy()
    bad.apply_scale(40.0)
    bad.apply_translation((5.0, 0.0, -3.0))
    for name, mesh in (("inframe", good), ("exported", bad)):
        folder = root / SYNSETS[0] / name / "models"
        folder.mkdir(parents=True)
        mesh.export(folder / "model_normalized.obj")
    options = MeshOptions(num_points=256, num_views=0)
    summary = run_plan(plan_core(root, options), tmp_path / "as-is.h5", workers=1, progress=False)
    assert summary.read == 2 and len(summary.off_frame) == 1 and "exported" in summary.off_frame[0]
    assert "diagonal 40" in summary.off_frame[0] and "--normalize" in str(summary)
    summary = run_plan(plan_core(root, options, normalize=True), tmp_path / "normalized.h5", workers=1, progress=False)
    assert summary.off_frame == [] and "WARNING" not in str(summary)
    with open_dataset_file(tmp_path / "normalized.h5") as f:
        for row in range(2):
            vertices, _ = read_mesh(f, row)
            lo, hi = vertices.min(0), vertices.max(0)
            np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-6)
            assert np.linalg.norm(hi - lo) == pytest.approx(1, abs=1e-5)
