"""PVD's own task end to end (Zhou et al. 2021) on a fabricated ShapeNetCore.v2.PC15k tree.

PC15k npy files of one category (chair) -> ``datasets/shapenet.py pc15k`` -> the
``pvd-paper-chair`` preset (unconditional 27.6M-parameter network, 2048 points, PointFlow
normalisation, no images) trains one step -> ``sample.py`` -> ``python -m pvd.evaluate
--protocol pointflow``. The network is the paper's; only the step count, batch and sampler
steps are cut so that the whole file takes seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import sample
import train
from pvd import checkpoint, evaluate
from pvd.config import from_dict, network_config
from pvd.data.hdf5 import SPLITS as SPLIT_CODES
from pvd.errors import UserError
from pvd.nn import PVDUNet
from pvd.nn.unet import UNetConfig

REPO = Path(__file__).resolve().parents[1]
CHAIR = "03001627"
SPLITS = {"train": 4, "val": 2, "test": 2}  # batch 2 divides the 4 train shapes; 2 samples match 2 val shapes
PAPER_PARAMS = 27_649_987

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def toy_cloud(k: int) -> np.ndarray:
    """(15000, 3) float32 points on a noisy box (even k) or ellipsoid (odd k), each of its own size."""
    rng = np.random.default_rng(k)
    extents = np.array([0.3 + 0.05 * k, 0.5 - 0.03 * k, 0.25 + 0.02 * k])
    if k % 2 == 0:  # box surface: push the largest coordinate of a cube point onto its face
        p = rng.uniform(-1, 1, (15000, 3))
        axis = np.abs(p).argmax(1)
        p[np.arange(len(p)), axis] = np.sign(p[np.arange(len(p)), axis])
    else:
        p = rng.normal(size=(15000, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
    p = p * extents + rng.normal(scale=0.005, size=p.shape) + (0.02 * k, 0.0, -0.01 * k)
    return p.astype(np.float32)


@pytest.fixture(scope="module")
def pc15k_tree(tmp_path_factory):
    """<root>/03001627/{train,val,test}/<model_id>.npy, PointFlow's published layout."""
    root = tmp_path_factory.mktemp("shapenet") / "ShapeNetCore.v2.PC15k"
    k = 0
    for split, count in SPLITS.items():
        (root / CHAIR / split).mkdir(parents=True)
        for _ in range(count):
            np.save(root / CHAIR / split / f"{k:04d}aa{CHAIR}.npy", toy_cloud(k))
            k += 1
    return root


@pytest.fixture(scope="module")
def h5(pc15k_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pc15k.h5"
    result = subprocess.run([sys.executable, str(REPO / "datasets" / "shapenet.py"), "pc15k", str(pc15k_tree), "--out", str(out),
                             "--categories", "chair", "--workers", "1"],
                            capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert "images" not in f  # PC15k alone: no views, and the paper preset needs none
        assert len(f["points"]) == sum(SPLITS.values()) and f["points"].shape[1:] == (15000, 3)
    return out


@pytest.fixture(scope="module")
def run(h5, tmp_path_factory):
    """One training step of the paper network (batch 2)."""
    run_dir = tmp_path_factory.mktemp("runs") / "pvd-paper-chair"
    assert train.main(["pvd-paper-chair", f"data.path={h5}", f"run_dir={run_dir}", "max_steps=1", "batch_size=2",
                       "val_every=0"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def samples(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "chair"
    assert sample.main(["--ckpt", str(run), "--num", "2", "--sampler", "ddim", "--steps", "2", "--out", str(out),
                        "--device", "cpu"]) == 0
    return out


def test_preset_is_pvds_setup(h5):
    cfg = train.parse_config(["pvd-paper-chair", f"data.path={h5}"])
    assert (cfg.model, cfg.condition, cfg.cond_drop) == ("pvd-paper", "none", 0.0)
    assert cfg.data.path == str(h5) and cfg.data.categories == ["chair"]
    assert (cfg.data.num_points, cfg.data.normalization, cfg.data.images) == (2048, "pointflow", False)
    o = cfg.optim
    assert (o.name, o.lr, o.betas, o.weight_decay) == ("adam", 2e-4, (0.5, 0.999), 0.0)
    assert (o.schedule, o.gamma, o.warmup_steps) == ("exponential", 0.998, 0)
    assert o.ema_decay is None and o.grad_clip is None
    assert (cfg.batch_size, cfg.seed, cfg.epochs, cfg.amp) == (16, 42, 10000, False)
    d = cfg.diffusion
    assert (d.schedule, d.num_steps, d.mean_type, d.var_type, d.cascade) == ("linear", 1000, "eps", "fixedsmall", None)
    assert train.parse_config(["pvd-paper-airplane", f"data.path={h5}"]).diffusion.schedule == "warm0.1"
    assert train.parse_config(["pvd-paper-car", f"data.path={h5}"]).diffusion.schedule == "linear"

    net = network_config(cfg, 1)
    assert net.condition is None and net.encoder is None
    assert sum(p.numel() for p in PVDUNet(net).parameters()) == PAPER_PARAMS


def test_one_paper_step_trains_and_checkpoints(run, pc15k_tree):
    run_dir = run
    ckpt = checkpoint.load(run_dir)
    assert (ckpt["step"], ckpt["epoch"], ckpt["ema"]) == (1, 0, None)
    assert len(ckpt["models"]) == 1 and len(ckpt["run"]["networks"]) == 1
    net = PVDUNet(from_dict(UNetConfig, ckpt["run"]["networks"][0]))
    net.load_state_dict(ckpt["models"][0])
    assert net.config.condition is None and net.config.encoder is None
    assert sum(p.numel() for p in net.parameters()) == PAPER_PARAMS
    assert all(torch.isfinite(v).all() for v in ckpt["models"][0].values() if v.is_floating_point())
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["lr"] == 2e-4 and tuple(group["betas"]) == (0.5, 0.999)  # epoch 0: 2e-4 x 0.998^0

    (entry,) = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert entry["step"] == 1 and entry["lr"] == 2e-4 and math.isfinite(entry["loss"]) and entry["loss"] > 0
    assert not (run_dir / "val").exists()

    # PointFlow's normalisation: per-axis mean and one scalar std over every coordinate of the train clouds.
    data = ckpt["run"]["dataset"]
    assert data["categories"] == ["chair"] and data["num_points"] == 2048 and "image_size" not in data
    train_points = np.stack([np.load(p) for p in sorted((pc15k_tree / CHAIR / "train").glob("*.npy"))]).astype(np.float64)
    np.testing.assert_allclose(data["normalization"]["mean"], train_points.reshape(-1, 3).mean(0), atol=1e-5)
    np.testing.assert_allclose(data["normalization"]["std"], train_points.reshape(-1).std(), rtol=1e-5)


def test_sample_writes_2048_point_clouds(samples, run):
    clouds = np.load(samples / "samples.npy")
    assert clouds.shape == (2, 2048, 3) and clouds.dtype == np.float32 and np.isfinite(clouds).all()
    info = json.loads((samples / "info.json").read_text())
    assert (info["sampler"], info["steps"], info["step"], info["frame"]) == ("ddim", 2, 1, "normalized")
    assert info["normalization"]["normalization"] == "pointflow" and info["shapes"] == ["sample-0000", "sample-0001"]


def test_pointflow_protocol_scores_the_samples(samples, h5, capsys):
    # The file sample.py wrote, scored against the protocol's references. Chamfer only: a one-step
    # network's DDIM samples are ~100x the references' size, and exact EMD against such clouds
    # takes ~10 s a pair; the protocol's EMD runs on the copies below (PointFlow-sized clouds).
    evaluate.main([str(samples / "samples.npy"), "--data", str(h5), "--categories", "chair", "--split", "val",
                   "--num-points", "2048", "--normalization", "pointflow", "--metrics", "cd", "--workers", "1"])
    result = json.loads((samples / "samples.metrics.json").read_text())
    assert (samples / "samples.metrics.md").is_file()
    assert result["samples"]["count"] == 2 and result["samples"]["points_used"] == 2048
    refs = result["references"]
    assert (refs["split"], refs["categories"], refs["count"], refs["points"]) == ("val", ["chair"], 2, "[10000:12048]")
    m = result["metrics"]
    for name in ("1-NNA", "MMD", "COV"):
        assert math.isfinite(m[f"{name}-CD"]), (name, m)
    assert 0 <= m["1-NNA-CD"] <= 1 and 0 < m["COV-CD"] <= 1 and m["MMD-CD"] > 0

    # Frames agree end to end: the val clouds themselves, put in the normalised frame sample.py
    # records, score as a perfect generator (MMD 0, COV 1, and every shape's nearest is its copy).
    norm = json.loads((samples / "info.json").read_text())["normalization"]
    with h5py.File(h5, "r") as f:
        val = f["points"][np.flatnonzero(f["split"][:] == SPLIT_CODES.index("val"))][:, 10000:12048]
    np.save(samples / "copies.npy", ((val - np.asarray(norm["mean"])) / norm["std"]).astype(np.float32))
    evaluate.main([str(samples / "copies.npy"), "--data", str(h5), "--categories", "chair", "--protocol", "pointflow",
                   "--workers", "1"])
    result = json.loads((samples / "copies.metrics.json").read_text())
    assert result["protocol"] == "pointflow"
    assert result["samples"]["points_used"] == 2048 and result["references"]["points"] == "[10000:12048]"
    assert result["convention"]["CD"].startswith("squared") and "exact" in result["convention"]["EMD"]
    assert result["convention"]["normalization"].startswith("pointflow")
    m = result["metrics"]
    for dist in ("CD", "EMD"):
        assert m[f"MMD-{dist}"] < 1e-6 and m[f"COV-{dist}"] == 1 and m[f"1-NNA-{dist}"] == 0, m

    # The protocol fixes its options: a conflicting one is refused in one line.
    with pytest.raises(UserError, match="--protocol pointflow fixes --split to val") as e:
        evaluate.main([str(samples / "samples.npy"), "--data", str(h5), "--protocol", "pointflow", "--split", "test"])
    assert "\n" not in str(e.value)


def test_image_conditioning_is_refused(h5, tmp_path):
    """The pvd-paper network has no image encoder, and a PC15k file has no images: one-line errors, nothing written."""
    base = ["pvd-paper-chair", f"data.path={h5}", f"run_dir={tmp_path / 'r'}", "max_steps=1", "batch_size=2", "val_every=0"]
    for extra in (["condition=image"], ["condition=image", "data.images=true"], ["data.images=true"]):
        with pytest.raises(UserError) as e:
            train.main(base + extra)
        assert "\n" not in str(e.value), extra
    assert not (tmp_path / "r").exists()
    cfg = train.parse_config(["pvd-paper-chair", f"data.path={h5}"])
    with pytest.raises(UserError, match="'pvd-paper' has no image encoder") as e:
        network_config(dataclasses.replace(cfg, condition="image"), 1)
    assert "\n" not in str(e.value)


def test_image_conditioning_refusal_names_the_encoder(h5):
    with pytest.raises(UserError, match="image encoder"):
        train.parse_config(["pvd-paper-chair", f"data.path={h5}", "condition=image"])
