"""sample.py: photos (any mode, size, format) -> points, previews and meshes; seeds; folders of
images; completion; guidance; bad input is one line, exit 2 and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

import sample
import train
from pvd import evaluate
from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.errors import UserError
from pvd.io import save_points
from pvd.preview import LABEL_HEIGHT, PANEL
from in_process import run_main  # tests/in_process.py

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--sampler", "ddim", "--steps", "3"]
TRAINED_POINTS = 128  # the tiny preset's data.num_points

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(pipeline_data):
    return pipeline_data


def trained(data, run_dir, *extra):
    # One step is enough: the tests check the plumbing, not the shapes.
    assert train.main(["tiny", f"data.path={data}", f"run_dir={run_dir}", "max_steps=1", *extra]) == 0
    return run_dir


@pytest.fixture(scope="module")
def cond_run(data, tmp_path_factory):
    """The tiny preset: conditioned on image + category."""
    return trained(data, tmp_path_factory.mktemp("runs") / "image-category")


@pytest.fixture(scope="module")
def uncond_run(data, tmp_path_factory):
    return trained(data, tmp_path_factory.mktemp("runs") / "none", "condition=none")


def dataset_view(data, row):
    """A view of the test split's shape ``row`` (0: a chair, 1: a car) as (H, W, 4) uint8 RGBA, and its category."""
    item = ShapeDataset(DatasetConfig(path=str(data), num_points=TRAINED_POINTS), "test")[row]
    return item["image"].permute(1, 2, 0).numpy(), int(item["category"])


@pytest.fixture(scope="module")
def view(data):
    image, category = dataset_view(data, 0)
    assert category == 0  # chair
    return image


@pytest.fixture(scope="module")
def car_photo(data, tmp_path_factory):
    image, category = dataset_view(data, 1)
    assert category == 1
    path = tmp_path_factory.mktemp("car") / "car.png"
    Image.fromarray(image, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def photos(view, tmp_path_factory):
    """The view as RGBA PNG, composited onto white as RGB JPEG, as grey PNG, and enlarged to 300x200."""
    folder = tmp_path_factory.mktemp("photos")
    alpha = view[..., 3:].astype(np.float64) / 255.0
    on_white = Image.fromarray(np.round(view[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8), "RGB")
    Image.fromarray(view, "RGBA").save(folder / "rgba.png")
    on_white.save(folder / "white.jpg", quality=95)
    on_white.convert("L").save(folder / "grey.png")
    on_white.resize((300, 200), Image.BILINEAR).save(folder / "large.png")
    return [folder / n for n in ("rgba.png", "white.jpg", "grey.png", "large.png")]


def cli(*argv):
    """sample.py in a subprocess: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "sample.py", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stdout, proc.stderr


def run(argv, capsys, command=sample.main):
    """sample.py (or another command) in this process, as run_command runs it: (exit code, stdout, stderr)."""
    return run_main(command, argv, capsys)


def samples_of(out):
    return np.load(Path(out) / "samples.npy")


def info_of(out):
    return json.loads((Path(out) / "info.json").read_text())


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    for needle in needles:
        assert str(needle) in err, (needle, err)


def assert_nothing_written(folder):
    folder = Path(folder)
    assert not folder.exists() or list(folder.iterdir()) == []  # no hidden .partial files either


# ---- 1. images end to end -------------------------------------------------------------------

def test_images_end_to_end_through_the_command(cond_run, photos, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = cli("--ckpt", cond_run, "--image", *photos, "--category", "chair", *FAST, "--out", out,
                            "--mesh", "obj")
    assert code == 0, err
    names = ["rgba", "white", "grey", "large"]
    files = {p.name for p in out.iterdir()}
    assert files == {f"{n}.{s}" for n in names for s in ("ply", "npy", "png", "obj")} | {"samples.npy", "info.json", "previews.png"}
    assert "4 shape(s)" in stdout

    samples = samples_of(out)
    assert samples.shape == (4, TRAINED_POINTS, 3) and samples.dtype == np.float32
    assert np.isfinite(samples).all()
    per_shape = np.stack([np.load(out / f"{n}.npy") for n in names])
    np.testing.assert_array_equal(samples, per_shape)
    # Different photos of one chair are different inputs: each shape is sampled from its own.
    assert len({s.tobytes() for s in samples}) == 4

    for name, points in zip(names, per_shape):
        raw = (out / f"{name}.ply").read_bytes()
        assert raw.startswith(b"ply\nformat binary_little_endian 1.0\n")
        cloud = trimesh.load(out / f"{name}.ply", process=False)
        assert isinstance(cloud, trimesh.PointCloud)
        np.testing.assert_array_equal(np.asarray(cloud.vertices, dtype=np.float32), points)
        mesh = trimesh.load(out / f"{name}.obj", process=False)
        assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
        with Image.open(out / f"{name}.png") as im:  # name over input view | two sides of the cloud | of the mesh
            assert im.format == "PNG" and im.size == (5 * (PANEL + 2) + 2, LABEL_HEIGHT + PANEL + 4)

    info = info_of(out)
    assert (info["sampler"], info["steps"], info["seed"], info["guidance_scale"]) == ("ddim", 3, 0, 1.0)
    assert info["shapes"] == names and info["inputs"] == [str(p) for p in photos]
    assert info["frame"] == "normalized" and info["normalization"]["normalization"] == "pointflow"
    assert info["step"] == 1 and Path(info["checkpoint"]).is_file()


# ---- 2. seeds -------------------------------------------------------------------------------

def test_the_seed_and_the_inputs_decide_the_samples(cond_run, photos, car_photo, tmp_path):
    def draw(out, seed=5, image=photos[0], category="chair"):
        assert sample.main(["--ckpt", str(cond_run), "--image", str(image), "--category", category, "--num", "2",
                            *FAST, "--seed", str(seed), "--out", str(tmp_path / out)]) == 0
        stem = Path(image).stem
        assert sorted(p.name for p in (tmp_path / out).glob("*.npy")) == [f"{stem}-0.npy", f"{stem}-1.npy", "samples.npy"]
        return samples_of(tmp_path / out)

    a = draw("a")
    np.testing.assert_array_equal(a, draw("again"))
    assert not np.array_equal(a[0], a[1])  # two shapes per image are two draws
    other = draw("other", seed=6)
    assert np.abs(a - other).min(axis=-1).mean() > 1e-3
    assert info_of(tmp_path / "other")["seed"] == 6
    # With the seed fixed, the photo and the category still change the result.
    assert not np.array_equal(a, draw("car-image", image=car_photo))
    assert not np.array_equal(a, draw("car-category", category="car"))

    # Several photos in one batch: each shape is sampled from its own photo. Same seed, same
    # position in the batch: the same start noise, so only the photo makes a difference.
    def batch(out, *images):
        assert sample.main(["--ckpt", str(cond_run), "--image", *map(str, images), "--category", "chair", *FAST,
                            "--seed", "5", "--out", str(tmp_path / out)]) == 0
        return samples_of(tmp_path / out)

    mixed, cars = batch("mixed", photos[0], car_photo), batch("cars", car_photo, car_photo)
    np.testing.assert_allclose(mixed[1], cars[1], atol=1e-5)
    assert np.abs(mixed[0] - cars[0]).max() > 1e-4


# ---- 3. a folder of images --------------------------------------------------------------------

def test_images_folder_takes_every_image_file(cond_run, view, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(view, "RGBA").save(folder / "b.png")
    Image.fromarray(view[..., :3]).save(folder / "a.JPG")
    Image.fromarray(view, "RGBA").save(folder / "c.webp", lossless=True)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "dir.png").mkdir()  # a folder whatever its name
    out = tmp_path / "out"
    assert sample.main(["--ckpt", str(cond_run), "--images", str(folder), "--category", "car", *FAST,
                        "--out", str(out)]) == 0
    info = info_of(out)
    assert info["shapes"] == ["a", "b", "c"]
    assert info["inputs"] == [str(folder / n) for n in ("a.JPG", "b.png", "c.webp")]
    assert samples_of(out).shape == (3, TRAINED_POINTS, 3)
    assert not any(p.stem in ("notes", "dir") for p in out.iterdir())


def test_inputs_with_one_name_get_distinct_outputs(cond_run, photos, tmp_path):
    # a.png and a.jpg share a stem, and a-2.png already has the name the second "a" would get.
    for name in ("a-2.png", "a.png", "a.jpg"):
        with Image.open(photos[0 if name.endswith(".png") else 1]) as im:
            im.save(tmp_path / name)
    out = tmp_path / "out"
    assert sample.main(["--ckpt", str(cond_run), "--image", *(str(tmp_path / n) for n in ("a-2.png", "a.png", "a.jpg")),
                        "--category", "chair", *FAST, "--out", str(out)]) == 0
    shapes = info_of(out)["shapes"]
    assert shapes == ["a-2", "a", "a-3"]
    samples = samples_of(out)
    assert samples.shape == (3, TRAINED_POINTS, 3) and len(list(out.glob("*.ply"))) == 3
    for name, cloud in zip(shapes, samples):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), cloud)


# ---- 4. bad input -----------------------------------------------------------------------------

def test_a_bad_image_is_one_line_exit_2_and_nothing_is_written(cond_run, photos, tmp_path, capsys):
    (tmp_path / "x.png").write_text("this is text, not a PNG\n")
    Image.new("RGB", (40, 30), "white").save(tmp_path / "blank.png")
    out = tmp_path / "out"
    out.mkdir()  # an existing, empty output folder stays empty
    common = ["--ckpt", cond_run, "--category", "chair", *FAST, "--out", out, "--mesh", "obj"]
    # The real command: the good photo before the bad one is not sampled either.
    code, stdout, err = cli(*common, "--image", photos[0], tmp_path / "x.png")
    assert_one_line_error(code, err, tmp_path / "x.png")
    assert_nothing_written(out)
    for bad in (tmp_path / "x.png", tmp_path / "missing.png", tmp_path / "blank.png"):
        code, stdout, err = run([*common, "--image", photos[0], bad], capsys)
        assert_one_line_error(code, err, bad)
        assert_nothing_written(out)
    code, stdout, err = run([*common, "--images", tmp_path / "nowhere"], capsys)
    assert_one_line_error(code, err, tmp_path / "nowhere")
    assert_nothing_written(out)


def test_options_that_do_not_fit_the_run_are_one_line_exit_2(cond_run, uncond_run, photos, tmp_path, capsys):
    out = tmp_path / "out"
    image = ["--image", photos[0]]
    nan_file = tmp_path / "nan.npy"
    np.save(nan_file, np.full((10, 3), np.nan, dtype=np.float32))
    cases = [
        (["--ckpt", uncond_run, "--category", "chair"], "not class-conditional"),
        (["--ckpt", uncond_run, *image], "not image-conditioned"),
        (["--ckpt", cond_run, "--category", "chair"], "--image"),
        (["--ckpt", cond_run, *image], "--category"),
        (["--ckpt", cond_run, *image, "--category", "lamp"], "'lamp'"),
        (["--ckpt", tmp_path / "no-run"], str(tmp_path / "no-run")),
        (["--ckpt", tmp_path, "--num", "2"], "no checkpoints"),
        (["--ckpt", cond_run, *image, "--category", "chair", "--sampler", "ddim", "--steps", "0"], "sampling_steps"),
        (["--ckpt", uncond_run, "--num", "0"], "--num"),
        (["--ckpt", uncond_run, "--points", "0"], "--points"),
        (["--ckpt", uncond_run, "--points", "8"], "at least 32 points"),  # the tiny network samples 32 centres
        (["--ckpt", uncond_run, "--device", "gpu0"], "--device"),
        (["--ckpt", uncond_run, "--partial", nan_file], "NaN"),
    ]
    for argv, needle in cases:
        code, stdout, err = run([*argv, "--out", out], capsys)
        assert_one_line_error(code, err, needle)
        assert_nothing_written(out)
    code, stdout, err = cli("--ckpt", tmp_path / "no-run", "--out", out)  # the real command too
    assert_one_line_error(code, err, tmp_path / "no-run")
    assert_nothing_written(out)
    (tmp_path / "a-file").write_text("")
    code, stdout, err = run(["--ckpt", uncond_run, *FAST, "--out", tmp_path / "a-file"], capsys)
    assert_one_line_error(code, err, tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == ""


# ---- 5. completion ----------------------------------------------------------------------------

def test_partial_points_are_kept_first_and_the_rest_generated(data, uncond_run, tmp_path, capsys):
    truth = ShapeDataset(DatasetConfig(path=str(data), num_points=TRAINED_POINTS, images=False), "val")[0]["points"]
    partial = truth.numpy()[:40]  # float32, in the normalised frame
    save_points(tmp_path / "p.ply", partial)
    out = tmp_path / "out"
    assert sample.main(["--ckpt", str(uncond_run), "--partial", str(tmp_path / "p.ply"), "--num", "2", *FAST,
                        "--out", str(out)]) == 0
    samples = samples_of(out)
    assert samples.shape == (2, TRAINED_POINTS, 3)
    assert info_of(out)["shapes"] == ["completion-0000", "completion-0001"]
    for cloud in samples:
        np.testing.assert_array_equal(cloud[:40], partial)
    assert not np.array_equal(samples[0, 40:], samples[1, 40:])
    assert np.isfinite(samples).all()

    # --points sets the total; the partial points are still the first ones.
    assert sample.main(["--ckpt", str(uncond_run), "--partial", str(tmp_path / "p.ply"), "--points", "64", *FAST,
                        "--out", str(tmp_path / "short")]) == 0
    short = samples_of(tmp_path / "short")
    assert short.shape == (1, 64, 3)
    np.testing.assert_array_equal(short[0, :40], partial)

    # Points in the dataset's stored frame are normalised with the run's statistics.
    norm = info_of(out)["normalization"]
    original = partial.astype(np.float64) * norm["std"] + np.asarray(norm["mean"])
    np.save(tmp_path / "p-original.npy", original)
    assert sample.main(["--ckpt", str(uncond_run), "--partial", str(tmp_path / "p-original.npy"),
                        "--partial-frame", "original", *FAST, "--out", str(tmp_path / "orig")]) == 0
    np.testing.assert_allclose(samples_of(tmp_path / "orig")[0, :40], partial, atol=1e-5)

    # As many partial points as the shape has (or more) leave nothing to generate.
    save_points(tmp_path / "full.ply", truth.numpy())
    for argv in (["--partial", tmp_path / "full.ply"], ["--partial", tmp_path / "p.ply", "--points", "40"]):
        code, stdout, err = run(["--ckpt", uncond_run, *argv, *FAST, "--out", tmp_path / "too-many"], capsys)
        assert_one_line_error(code, err, argv[1], "none of the")
        assert_nothing_written(tmp_path / "too-many")


# ---- 6. counts --------------------------------------------------------------------------------

def test_num_and_points_for_unconditional_sampling(uncond_run, tmp_path):
    out = tmp_path / "out"
    assert sample.main(["--ckpt", str(uncond_run), "--num", "3", "--points", "64", "--batch", "2", *FAST,
                        "--out", str(out)]) == 0
    names = [f"sample-{j:04d}" for j in range(3)]
    assert info_of(out)["shapes"] == names and info_of(out)["inputs"] == []
    assert {p.name for p in out.iterdir()} == {f"{n}.{s}" for n in names for s in ("ply", "npy", "png")} | \
        {"samples.npy", "info.json", "previews.png"}
    with Image.open(out / "previews.png") as im, Image.open(out / "sample-0000.png") as first_row:
        assert im.size[1] > 2 * first_row.size[1]  # the three previews stacked
    samples = samples_of(out)
    assert samples.shape == (3, 64, 3)
    for name, cloud in zip(names, samples):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), cloud)
    for i, j in ((0, 1), (0, 2), (1, 2)):  # the second batch is not a copy of the first
        assert np.abs(samples[i] - samples[j]).mean() > 1e-3, (i, j)
    with Image.open(out / "sample-0000.png") as im:  # no input view: two cloud panels, then mesh (2) or 'no mesh' (1)
        assert im.size[0] in (3 * (PANEL + 2) + 2, 4 * (PANEL + 2) + 2)


# ---- 7. guidance ------------------------------------------------------------------------------

def test_guidance_for_a_conditional_run_only(cond_run, uncond_run, photos, tmp_path, capsys):
    common = ["--ckpt", str(cond_run), "--image", str(photos[0]), "--category", "chair", *FAST]
    assert sample.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert sample.main([*common, "--guidance", "2", "--out", str(tmp_path / "guided")]) == 0
    assert info_of(tmp_path / "guided")["guidance_scale"] == 2.0
    plain, guided = samples_of(tmp_path / "plain"), samples_of(tmp_path / "guided")
    assert guided.shape == plain.shape and np.isfinite(guided).all()
    assert not np.array_equal(plain, guided)  # same seed: the difference is the guidance

    code, stdout, err = run(["--ckpt", uncond_run, "--guidance", "2", *FAST, "--out", tmp_path / "none"], capsys)
    assert_one_line_error(code, err, "guidance")
    assert_nothing_written(tmp_path / "none")
    with pytest.raises(UserError, match="guidance needs a conditional run"):  # 0: unconditional sampling is refused too
        sample.main(["--ckpt", str(uncond_run), "--guidance", "0", *FAST, "--out", str(tmp_path / "none")])
    assert sample.main(["--ckpt", str(uncond_run), "--guidance", "1", *FAST, "--out", str(tmp_path / "one")]) == 0


# ---- 8. the evaluator takes the samples ---------------------------------------------------------

def test_samples_npy_is_scored_by_the_evaluator(data, uncond_run, tmp_path, capsys):
    # The val split holds one chair and one car: two samples, 64 points (of the 134 held out).
    out = tmp_path / "out"
    assert sample.main(["--ckpt", str(uncond_run), "--num", "2", "--points", "64", *FAST, "--out", str(out)]) == 0
    code, stdout, err = run([out / "samples.npy", "--data", data, "--split", "val", "--num-points", "64",
                                      "--metrics", "cd", "--workers", "1", "--out", tmp_path / "scores"], capsys, evaluate.main)
    assert code == 0, err
    result = json.loads((tmp_path / "scores.json").read_text())
    assert result["samples"]["count"] == result["references"]["count"] == 2
    assert result["metrics"]["MMD-CD"] > 0 and 0 <= result["metrics"]["COV-CD"] <= 1
