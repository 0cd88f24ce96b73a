"""pvd.pfid and pvd.metrics.feature_distance: the Frechet and kernel distances, the classifier on disk and P-FID's behaviour."""

import json

import numpy as np
import pytest
import torch
from scipy import linalg

from pvd import pfid
from pvd.metrics import feature_distance
from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.data.synthetic.writer import SyntheticConfig, write_synthetic_dataset
from pvd.errors import UserError

TINY = pfid.ClassifierConfig(widths=(16, 32), feature_dim=32, num_points=256, epochs=12, batch_size=10, lr=3e-3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("pfid") / "tiny.h5"
    config = SyntheticConfig(per_category=12, views=1, resolution=8, num_points=900, supersample=1)
    write_synthetic_dataset(path, config, progress=False)
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    model, record = pfid.train_classifier(tiny_data, TINY, log=lambda line: None)
    out = tmp_path_factory.mktemp("pfid") / "tiny.pfid"
    pfid.save_classifier(model, record, out)
    return out, model, record


# --- the formulas ----------------------------------------------------------------------------

def test_frechet_distance_one_dimensional_by_hand():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (50, 1)), rng.normal(-0.5, 0.5, (80, 1))
    want = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert feature_distance.frechet_distance(a, b) == pytest.approx(want, rel=1e-10)
    assert feature_distance.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_against_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 4)) @ rng.normal(size=(4, 4))
    b = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 4)) + 0.3
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert feature_distance.frechet_distance(a, b) == pytest.approx(want, rel=1e-8)
    # singular covariances (fewer samples than dimensions) stay finite and non-negative
    assert np.isfinite(feature_distance.frechet_distance(rng.normal(size=(5, 16)), rng.normal(size=(6, 16))))


def test_frechet_distance_diagonal_by_hand():
    # Gaussians with diagonal covariances: sum over axes of (mu difference)^2 + (sd difference)^2
    a = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 2.0], [-1.0, 2.0]])  # mean (0, 1), var (4/3, 4/3)
    b = np.array([[2.0, 0.0], [-2.0, 0.0], [2.0, 4.0], [-2.0, 4.0]]) + [1.0, 0.0]  # mean (1, 2), var (16/3, 16/3)
    want = (1 + 1) + 2 * (np.sqrt(16 / 3) - np.sqrt(4 / 3)) ** 2
    assert feature_distance.frechet_distance(a, b) == pytest.approx(want)


def test_kernel_distance_against_loops():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5

    def k(x, y):
        return (float(x @ y) / 3 + 1) ** 3

    xx = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x, y) for x in a for y in b) / 35
    assert feature_distance.kernel_distance(a, b) == pytest.approx(xx + yy - 2 * xy)
    big_a, big_b = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    subsets = feature_distance.kernel_distance(big_a, big_b, num_subsets=20, subset_size=100, seed=3)
    assert subsets == feature_distance.kernel_distance(big_a, big_b, num_subsets=20, subset_size=100, seed=3)
    assert abs(subsets) < feature_distance.kernel_distance(big_a, big_b + 1.0, num_subsets=20, subset_size=100) / 10


# --- the classifier --------------------------------------------------------------------------

def test_classifier_learns_and_round_trips(trained, tiny_data):
    out, model, record = trained
    assert record["history"][-1]["train_accuracy"] > 0.5  # five categories: chance is 0.2
    assert (out / "weights.pt").is_file() and not list(out.glob("*partial*"))
    loaded = pfid.load_classifier(out)
    assert loaded.record["classes"] == ["airplane", "chair", "car", "table", "lamp"]
    clouds = torch.randn(3, 100, 3)
    np.testing.assert_allclose(loaded.features(clouds), model.features(clouds).detach().double().numpy(), rtol=1e-6)
    # features do not depend on the frame: unit-sphere normalisation comes first
    np.testing.assert_allclose(loaded.features(clouds * 7 + 3), loaded.features(clouds), rtol=1e-4, atol=1e-5)
    state = torch.load(out / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_load_classifier_rejects_mismatched_or_missing_files(trained, tmp_path):
    out, model, record = trained
    with pytest.raises(UserError, match="not a P-FID classifier folder"):
        pfid.load_classifier(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text((out / "config.json").read_text())
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, copy / "weights.pt")
    with pytest.raises(UserError, match="does not match"):
        pfid.load_classifier(copy)


def test_train_command_writes_weights_and_config(tiny_data, tmp_path):
    out = tmp_path / "cmd.pfid"
    pfid.main(["train", "--data", tiny_data, "--out", str(out), "--epochs", "1", "--num-points", "64",
               "--widths", "8", "--feature-dim", "8", "--categories", "chair", "car"])
    record = json.loads((out / "config.json").read_text())
    assert record["classes"] == ["chair", "car"] and record["classifier"]["feature_dim"] == 8
    assert pfid.load_classifier(out).features(torch.randn(2, 50, 3)).shape == (2, 8)
    with pytest.raises(UserError):
        pfid.main(["train", "--data", str(tmp_path / "missing.h5"), "--out", str(out)])


def test_pfid_small_between_halves_and_monotonic_in_noise(trained, tiny_data):
    out, _, _ = trained
    classifier = pfid.load_classifier(out)
    data = ShapeDataset(DatasetConfig(path=tiny_data, num_points=256, normalization="unit_sphere", images=False),
                        "train", train=False)
    clouds = np.stack([data[i]["points"].numpy() for i in range(len(data))])
    half_a, half_b = clouds[0::2], clouds[1::2]  # disjoint, every category in each
    rng = np.random.default_rng(0)
    noise = rng.normal(size=half_b.shape)
    scores = [pfid.pfid_metrics(classifier, half_a, half_b + sigma * noise)["P-FID"]
              for sigma in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(x < y for x, y in zip(scores, scores[1:])), scores
    assert scores[0] < 0.1 * scores[-1], scores
