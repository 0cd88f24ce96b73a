"""python -m pvd.evaluate: inputs, the PointFlow protocol against an independent computation, errors."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import trimesh

import pvd.metrics as metrics
from pvd import evaluate
from pvd.data.synthetic.writer import SyntheticConfig, write_synthetic_dataset
from in_process import run_main  # tests/in_process.py

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 6300 points per shape: 4200 for training, 2100 held out (>= the protocol's 2048)
    path = tmp_path_factory.mktemp("evaluate") / "tiny.h5"
    config = SyntheticConfig(per_category=10, views=1, resolution=8, num_points=6300, supersample=1,
                             categories=("chair", "car", "lamp"))
    write_synthetic_dataset(path, config, progress=False)
    return path


def raw_clouds(path, split, categories, start, count):
    """Points [start:start+count] of the split's shapes of the categories, straight from the file."""
    with h5py.File(path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["category_names"]]
        wanted = [names.index(c) for c in categories]
        rows = np.flatnonzero((f["split"][:] == ["train", "val", "test"].index(split)) & np.isin(f["category"][:], wanted))
        return np.stack([f["points"][r, start : start + count] for r in rows]).astype(np.float64)


def pointflow_stats_by_hand(path, categories):
    train = raw_clouds(path, "train", categories, 0, 6300)
    return train.reshape(-1, 3).mean(0), train.reshape(-1).std()


def run(argv, capsys):
    """The command in this process, as run_command runs it: (exit code, stdout, stderr)."""
    return run_main(evaluate.main, argv, capsys)


def naive_pointflow(m_rr, m_rs, m_ss):
    n_r, n_s = m_rs.shape
    mmd = np.mean([m_rs[i].min() for i in range(n_r)])
    cov = len({int(np.argmin(m_rs[:, j])) for j in range(n_s)}) / n_r
    full = np.block([[m_rr, m_rs], [m_rs.T, m_ss]])
    labels = [1] * n_r + [0] * n_s
    correct = sum(labels[min((k for k in range(n_r + n_s) if k != i), key=lambda k: (full[i, k], k))] == labels[i]
                  for i in range(n_r + n_s))
    return mmd, cov, correct / (n_r + n_s)


def test_pointflow_protocol_matches_an_independent_computation(data, tmp_path, capsys, monkeypatch):
    # The protocol at 512 points instead of its 2048: the same slices, frames and matrices, 30x
    # less exact-EMD time (computed twice here). tests/test_pvd_paper.py checks the real protocol
    # takes points [10000:12048].
    points = 512
    monkeypatch.setitem(evaluate.PROTOCOLS, "pointflow", {**evaluate.PROTOCOLS["pointflow"], "num_points": points})
    categories = ["chair", "car"]
    references = raw_clouds(data, "val", categories, 4200, points)  # [num_train_points:][:points] of val
    generated = raw_clouds(data, "test", categories, 0, points)[::-1] * 1.02 + 0.01  # any clouds, in the original frame
    mean, std = pointflow_stats_by_hand(data, categories)
    np.save(tmp_path / "samples.npy", ((generated - mean) / std).astype(np.float32))  # as a model trained on PointFlow's normalisation emits
    code, out, err = run([tmp_path / "samples.npy", "--data", data, "--categories", *categories, "--protocol", "pointflow",
                          "--out", tmp_path / "result"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert (tmp_path / "result.md").read_text().startswith("# ") and "| 1-NNA-EMD (%) |" in out
    assert not list(tmp_path.glob("*partial*"))
    assert result["protocol"] == "pointflow" and result["references"]["split"] == "val"
    assert result["references"]["points"] == "[4200:4712]" and result["samples"]["points_used"] == points
    assert result["convention"]["pointflow_stats"]["std"] == pytest.approx(std, rel=1e-5)
    assert "exact" in result["convention"]["EMD"] and "squared" in result["convention"]["CD"]
    clouds = {"r": references, "s": generated}
    for name in ("CD", "EMD"):
        def distance(a, b):
            if name == "CD":
                return float(metrics.chamfer_distance(a[None], b[None])[0])
            return metrics.exact_assignment(a, b)[1]

        m = {"rs": np.array([[distance(a, b) for b in generated] for a in references])}
        for k in ("rr", "ss"):  # symmetric, zero diagonal: the pairs i < j
            x = clouds[k[0]]
            m[k] = np.zeros((len(x), len(x)))
            for i in range(len(x)):
                for j in range(i + 1, len(x)):
                    m[k][i, j] = m[k][j, i] = distance(x[i], x[j])
        mmd, cov, nna = naive_pointflow(m["rr"], m["rs"], m["ss"])
        # float32 samples after the normalisation round trip: 1e-4 relative
        assert result["metrics"][f"MMD-{name}"] == pytest.approx(mmd, rel=1e-4)
        assert result["metrics"][f"COV-{name}"] == pytest.approx(cov)
        assert result["metrics"][f"1-NNA-{name}"] == pytest.approx(nna)


def test_sample_formats_and_frames_agree(data, tmp_path, capsys):
    common = ["--data", data, "--split", "test", "--metrics", "cd", "--num-points", "64"]
    references = raw_clouds(data, "test", ["chair", "car", "lamp"], 4200, 64)
    samples = (raw_clouds(data, "train", ["chair", "car", "lamp"], 0, 80)[:len(references)]).astype(np.float32)
    np.save(tmp_path / "original.npy", samples)
    code, _, err = run([tmp_path / "original.npy", *common, "--sample-frame", "original", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    want = json.loads((tmp_path / "a.json").read_text())["metrics"]
    mean, std = pointflow_stats_by_hand(data, ["chair", "car", "lamp"])
    normalized = ((samples - mean) / std).astype(np.float32)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, cloud in enumerate(normalized):  # sorted as people name files: 2 before 10
        if i % 2:
            np.save(folder / f"shape_{i}.npy", cloud)
        else:
            trimesh.PointCloud(cloud).export(folder / f"shape_{i}.ply")
    np.savez(tmp_path / "samples.npz", samples=normalized, other=np.zeros(3))
    with h5py.File(tmp_path / "samples.h5", "w") as f:
        f["generated/points"] = normalized
    inputs = [[tmp_path / "samples.npz"], [tmp_path / "samples.h5"], [folder]]
    for k, given in enumerate(inputs):
        code, _, err = run([*given, *common, "--out", tmp_path / f"b{k}"], capsys)
        assert code == 0, err
        got = json.loads((tmp_path / f"b{k}.json").read_text())["metrics"]
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4), (given, key)
    # the direct computation of the same numbers
    direct = metrics.distribution_metrics(samples[:, :64], references, metrics=["CD"])
    assert want["MMD-CD"] == pytest.approx(direct["MMD-CD"], rel=1e-4)
    assert want["1-NNA-CD"] == direct["1-NNA-CD"]


def bad_inputs(tmp_path, data):
    good = np.zeros((3, 64, 3), np.float32)
    np.save(tmp_path / "flat.npy", np.zeros((3, 64, 2), np.float32))
    with_nan = np.random.default_rng(0).normal(size=(3, 64, 3)).astype(np.float32)
    with_nan[1, 5, 0] = np.nan
    np.save(tmp_path / "nan.npy", with_nan)
    np.save(tmp_path / "count.npy", np.random.default_rng(0).normal(size=(5, 64, 3)).astype(np.float32))
    np.save(tmp_path / "few.npy", np.random.default_rng(0).normal(size=(3, 10, 3)).astype(np.float32))
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    del good
    small = ["--data", data, "--split", "test", "--metrics", "cd", "--num-points", "64"]
    return {
        "no samples at": [tmp_path / "missing.npy", *small],
        "expected an array of shape (S, N, 3)": [tmp_path / "flat.npy", *small],
        "NaN": [tmp_path / "nan.npy", *small],
        "the counts must match": [tmp_path / "count.npy", *small],
        "the evaluation uses 64": [tmp_path / "few.npy", *small],
        "unreadable .npy": [tmp_path / "broken.npy", *small],
        "fixes --split": [tmp_path / "count.npy", "--data", data, "--protocol", "pointflow", "--split", "test"],
        "no dataset file": [tmp_path / "count.npy", "--data", tmp_path / "missing.h5", "--metrics", "cd", "--num-points", "64"],
        "not a P-FID classifier": [tmp_path / "count.npy", *small, "--classifier", tmp_path],
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(data, tmp_path, capsys):
    for expected, argv in bad_inputs(tmp_path, data).items():
        code, out, err = run([*argv, "--out", tmp_path / "result"], capsys)
        assert code == 2, (expected, err)
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
        assert not list(tmp_path.glob("result*")), expected


def test_command_line_error_in_a_fresh_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pvd.evaluate", str(tmp_path / "none.npy"), "--data", str(tmp_path / "d.h5")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no samples at") and result.stderr.count("\n") == 1
