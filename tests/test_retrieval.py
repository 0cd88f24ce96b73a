"""Retrieval baselines: embedding distances and the Chamfer oracle against naive loops, the cached
embedding bank, and world-frame answers read from the dataset."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from pvd.errors import UserError
from pvd.metrics import chamfer_distance
from pvd.retrieval import (embedding_bank, embedding_distances, encode_images, encoder_fingerprint,
                           nearest_by_embedding, oracle, oracle_nearest, read_clouds, retrieve, split_rows)

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_distances(query, bank, metric):
    out = np.zeros((len(query), len(bank)))
    for i, q in enumerate(query):
        for j, views in enumerate(bank):
            best = math.inf
            for b in views:
                if metric == "cosine":
                    d = 1 - sum(x * y for x, y in zip(q, b)) / (math.sqrt(sum(x * x for x in q)) * math.sqrt(sum(y * y for y in b)))
                else:
                    d = math.sqrt(sum((x - y) ** 2 for x, y in zip(q, b)))
                best = min(best, d)
            out[i, j] = best
    return out


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("q,s,v,d", [(1, 1, 1, 2), (4, 7, 3, 5), (3, 5, 1, 8)])
def test_embedding_distances_match_a_naive_loop(metric, q, s, v, d):
    rng = np.random.default_rng(q * 100 + s * 10 + v)
    query, bank = rng.normal(size=(q, d)), rng.normal(size=(s, v, d))
    expected = naive_distances(query, bank, metric)
    np.testing.assert_allclose(embedding_distances(query, bank, metric), expected, atol=1e-9)
    index, dist = nearest_by_embedding(query, bank, metric)
    np.testing.assert_array_equal(index, expected.argmin(axis=1))
    np.testing.assert_allclose(dist, expected.min(axis=1), atol=1e-9)


def test_two_dimensional_bank_and_ties_go_to_the_lower_index():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # shapes 0 and 2 point the same way
    index, dist = nearest_by_embedding(np.array([[3.0, 0.1]]), bank, "cosine")
    assert index[0] == 0 and dist[0] == pytest.approx(1 - 3 / math.hypot(3, 0.1))
    index, _ = nearest_by_embedding(np.array([[2.0, 0.0]]), bank, "l2")
    assert index[0] == 2  # exact match in L2, while cosine ties 0 and 2


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="metric"):
        embedding_distances(np.ones((1, 2)), np.ones((1, 2)), "dot")
    with pytest.raises(ValueError, match="one D"):
        embedding_distances(np.ones((1, 3)), np.ones((2, 1, 2)))


@pytest.mark.parametrize("q,s,m,k", [(1, 1, 7, 5), (3, 6, 20, 11), (2, 9, 16, 16)])
def test_oracle_matches_a_naive_loop_and_beats_every_candidate(q, s, m, k):
    rng = np.random.default_rng(q + s + m)
    truth = rng.normal(size=(q, m, 3))
    candidates = rng.normal(size=(s, k, 3)) * rng.uniform(0.5, 2.0, size=(s, 1, 1))
    index, cd = oracle_nearest(truth, candidates, workers=1)
    for i in range(q):
        dists = [float(chamfer_distance(torch.tensor(truth[i : i + 1]), torch.tensor(candidates[j : j + 1]))[0]) for j in range(s)]
        assert index[i] == int(np.argmin(dists))
        assert cd[i] == pytest.approx(min(dists), rel=1e-5)
        assert all(cd[i] <= d * (1 + 1e-5) for d in dists)
    rows = np.arange(100, 100 + s)
    answer = oracle(truth, rows, candidates, workers=1)
    np.testing.assert_array_equal(answer.rows, rows[index])
    np.testing.assert_array_equal(answer.clouds, candidates[index])


class CountingEncoder(torch.nn.Module):
    """A fabricated encoder: mean colour and alpha through a linear map; counts its calls."""

    def __init__(self, dim: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(4, dim)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        x = images.float().mean(dim=(2, 3)) / 255
        return self.linear(x), None


def test_embedding_bank_embeds_every_view_and_is_cached(pipeline_data, tmp_path):
    enc = CountingEncoder()
    cache = tmp_path / "cache" / "bank.npz"
    bank = embedding_bank(enc, pipeline_data, "train", cache=cache, batch_size=5)
    assert not bank.cached and cache.is_file() and enc.calls > 0
    rows = split_rows(pipeline_data, "train")
    np.testing.assert_array_equal(bank.rows, rows)
    with h5py.File(pipeline_data, "r") as f:
        images = f["images"][rows]  # (S, V, H, W, 4)
    s, v = images.shape[:2]
    assert bank.embeddings.shape == (s, v, 6)
    direct = encode_images(enc, images.reshape(s * v, *images.shape[2:]).transpose(0, 3, 1, 2))
    np.testing.assert_allclose(bank.embeddings.reshape(s * v, -1), direct, atol=1e-6)

    calls = enc.calls
    again = embedding_bank(enc, pipeline_data, "train", cache=cache)
    assert again.cached and enc.calls == calls and again.key == bank.key
    np.testing.assert_array_equal(again.embeddings, bank.embeddings)

    other = CountingEncoder(seed=1)  # other weights: the cache does not apply
    assert encoder_fingerprint(other) != encoder_fingerprint(enc)
    fresh = embedding_bank(other, pipeline_data, "train", cache=cache)
    assert not fresh.cached and other.calls > 0
    cache.write_bytes(b"garbage")  # an unreadable cache is recomputed, not an error
    assert not embedding_bank(enc, pipeline_data, "train", cache=cache).cached


def test_retrieval_answers_with_stored_world_frame_points(pipeline_data):
    enc = CountingEncoder()
    bank = embedding_bank(enc, pipeline_data, "train")
    with h5py.File(pipeline_data, "r") as f:
        start = int(f.attrs["num_train_points"])
        test = split_rows(pipeline_data, "test")
        images = f["images"][test, 0].transpose(0, 3, 1, 2)
        stored = f["points"][:]
    query = encode_images(enc, images)
    answer = retrieve(query, bank, pipeline_data, start=start, count=50, metric="l2")
    index, dist = nearest_by_embedding(query, bank.embeddings, "l2")
    np.testing.assert_array_equal(answer.rows, bank.rows[index])
    np.testing.assert_allclose(answer.score, dist)
    for r, cloud in zip(answer.rows, answer.clouds):
        np.testing.assert_array_equal(cloud, stored[r, start : start + 50])
    # A training shape's own view retrieves that shape (distance 0).
    own = embedding_bank(enc, pipeline_data, "train").embeddings[:, 1]
    i, d = nearest_by_embedding(own, bank.embeddings, "l2")
    assert (d < 1e-6).all()
    # The oracle over the same candidates is at least as close as retrieval in Chamfer distance.
    truth = stored[test, start:].astype(np.float64)
    candidates = read_clouds(pipeline_data, bank.rows, start, 50)
    best = oracle(truth, bank.rows, candidates, workers=1)
    cd_retrieval = chamfer_distance(torch.tensor(answer.clouds, dtype=torch.float64), torch.tensor(truth))
    cd_oracle = chamfer_distance(torch.tensor(best.clouds, dtype=torch.float64), torch.tensor(truth))
    assert (cd_oracle <= cd_retrieval * (1 + 1e-5)).all()


def test_read_clouds_checks_the_slice(pipeline_data):
    with pytest.raises(UserError, match="do not fit"):
        read_clouds(pipeline_data, [0], 390, 20)
    assert read_clouds(pipeline_data, [], 0, 5).shape == (0, 5, 3)
    with pytest.raises(UserError, match="split"):
        split_rows(pipeline_data, "dev")
