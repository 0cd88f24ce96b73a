"""pvd.metrics: Chamfer, EMD, F-score and the distribution metrics against naive references."""

import itertools

import numpy as np
import pytest
import torch

import pvd.metrics as metrics
from pvd.metrics import distances, distribution, matching


def naive_nn(a, b):
    """Squared distance from each point of a (N, 3) to its nearest point of b (M, 3), by loops."""
    return np.array([min(float(((x - y) ** 2).sum()) for y in b) for x in a])


def naive_chamfer(a, b, convention="squared"):
    ab, ba = naive_nn(a, b), naive_nn(b, a)
    if convention == "squared":
        return ab.mean() + ba.mean()
    if convention == "l2":
        return (ab.mean() + ba.mean()) / 2
    return (np.sqrt(ab).mean() + np.sqrt(ba).mean()) / 2


def brute_force_emd(a, b):
    n = len(a)
    return min(np.mean([np.linalg.norm(a[i] - b[p[i]]) for i in range(n)]) for p in itertools.permutations(range(n)))


def clouds(batch, n, seed=0, dtype=torch.float64):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, n, 3))).to(dtype)


# --- Chamfer ---------------------------------------------------------------------------------

def test_chamfer_hand_computed():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[0.0, 0, 0], [0, 2, 0], [1, 0, 0]]])
    # a -> b: 0, 0; b -> a: 0, 4 (to the origin), 0
    assert metrics.chamfer_distance(a, b).item() == pytest.approx(4 / 3)
    assert metrics.chamfer_distance(a, b, "l2").item() == pytest.approx(2 / 3)
    assert metrics.chamfer_distance(a, b, "l1").item() == pytest.approx((0 + 2 / 3) / 2)


@pytest.mark.parametrize("convention", ["squared", "l1", "l2"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 9), (3, 40, 17)])
def test_chamfer_against_loops(convention, shape):
    batch, n, m = shape
    a, b = clouds(batch, n, 1), clouds(batch, m, 2)
    got = metrics.chamfer_distance(a, b, convention)
    want = [naive_chamfer(a[k].numpy(), b[k].numpy(), convention) for k in range(batch)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_chamfer_symmetric_permutation_invariant_and_blocked(monkeypatch):
    a, b = clouds(2, 30, 3), clouds(2, 20, 4)
    base = metrics.chamfer_distance(a, b)
    np.testing.assert_allclose(metrics.chamfer_distance(b, a), base, rtol=1e-12)
    perm_a, perm_b = torch.randperm(30), torch.randperm(20)
    np.testing.assert_allclose(metrics.chamfer_distance(a[:, perm_a], b[:, perm_b]), base, rtol=1e-12)
    monkeypatch.setattr(distances, "_BLOCK_ENTRIES", 7)  # many tiny blocks over rows and batches
    np.testing.assert_allclose(metrics.chamfer_distance(a, b), base, rtol=1e-12)


def test_chamfer_far_from_origin_in_float32():
    a, b = clouds(2, 50, 5), clouds(2, 50, 6)
    want = [naive_chamfer(a[k].numpy(), b[k].numpy()) for k in range(2)]
    got = metrics.chamfer_distance((a + 1000).float(), (b + 1000).float())
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-3)  # float32 at 1000: coordinates carry ~6e-5


def test_chamfer_gradient_matches_naive():
    a, b = clouds(2, 12, 7).requires_grad_(), clouds(2, 9, 8).requires_grad_()
    metrics.chamfer_distance(a, b, "l1").sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    d = (a2[:, :, None] - b2[:, None]).square().sum(-1)
    ((d.amin(2).sqrt().mean(1) + d.amin(1).sqrt().mean(1)) / 2).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def close_clouds(batch=2, n=2048, seed=0):
    """a: uniform in [-1, 1]^3; b: a jittered by 0.01, so that nearest neighbours are close calls
    (typical spacing ~0.08) that bf16's 8-bit products get wrong."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, n, 3, generator=g) * 2 - 1
    return a, a + 0.01 * torch.randn(batch, n, 3, generator=g)


def test_nearest_neighbors_and_chamfer_ignore_bf16_autocast():
    """CPU autocast follows CUDA's rules (matrix products in bf16); the search stays in float32:
    the same neighbours (in bf16 ~13% of these differed), the same distances and gradients."""
    a, b = close_clouds()
    d32, i32 = metrics.nearest_neighbors(a, b)
    a32 = a.clone().requires_grad_()
    metrics.chamfer_distance(a32, b).sum().backward()
    a16 = a.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d16, i16 = metrics.nearest_neighbors(a, b)
        cd16 = metrics.chamfer_distance(a16, b)
        f16 = metrics.f_score(a, b, 0.01)
    cd16.sum().backward()
    assert torch.equal(i16, i32)
    assert d16.dtype == torch.float32 and torch.equal(d16, d32)
    torch.testing.assert_close(cd16, metrics.chamfer_distance(a, b), rtol=1e-6, atol=0)
    torch.testing.assert_close(a16.grad, a32.grad, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(f16, metrics.f_score(a, b, 0.01), rtol=0, atol=0)


def test_pairwise_chamfer_ignores_bf16_autocast():
    x, _ = close_clouds(batch=3, n=512, seed=1)
    want = metrics.pairwise_chamfer(x, workers=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = metrics.pairwise_chamfer(x, workers=1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_chamfer_bad_shapes():
    with pytest.raises(ValueError):
        metrics.chamfer_distance(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2))
    with pytest.raises(ValueError):
        metrics.chamfer_distance(torch.zeros(2, 5, 3), torch.zeros(3, 5, 3))
    with pytest.raises(ValueError):
        metrics.chamfer_distance(torch.zeros(1, 5, 3), torch.zeros(1, 5, 3), "manhattan")


@pytest.mark.parametrize("convention", ["squared", "l1", "l2"])
def test_pairwise_chamfer_against_loops(convention):
    x, y = clouds(5, 13, 9, torch.float32), clouds(4, 11, 10, torch.float32)
    want = np.array([[naive_chamfer(xi.double().numpy(), yj.double().numpy(), convention) for yj in y] for xi in x])
    np.testing.assert_allclose(metrics.pairwise_chamfer(x, y, convention).numpy(), want, rtol=2e-5, atol=1e-7)
    square = np.array([[naive_chamfer(xi.double().numpy(), xj.double().numpy(), convention) for xj in x] for xi in x])
    np.testing.assert_allclose(metrics.pairwise_chamfer(x, convention=convention).numpy(), square, rtol=2e-5, atol=1e-6)


def test_pairwise_chamfer_in_worker_processes(monkeypatch):
    monkeypatch.setattr(distances, "_MIN_PAIRS_FOR_PROCESSES", 1)
    monkeypatch.setattr(distances, "_TASK_PAIRS", 3)
    x, y = clouds(7, 10, 11, torch.float32), clouds(6, 12, 12, torch.float32)
    serial = metrics.pairwise_chamfer(x, y, workers=1)
    parallel = metrics.pairwise_chamfer(x, y, workers=2)
    # Workers see other batch splits, so the CPU may pick other matmul kernels (and break a
    # near-tie the other way): equal up to float32 rounding of a mean of ~10 squared distances
    # (a few ulps each, ~1e-6 relative at worst; 4e-8 measured on an AMD EPYC), not bitwise.
    torch.testing.assert_close(parallel, serial, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(metrics.pairwise_chamfer(x, workers=2), metrics.pairwise_chamfer(x, workers=1),
                               rtol=1e-5, atol=1e-8)
    want = np.array([[naive_chamfer(xi.double().numpy(), yj.double().numpy()) for yj in y] for xi in x])
    np.testing.assert_allclose(parallel.numpy(), want, rtol=2e-5)


# --- EMD -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_exact_emd_equals_brute_force(n):
    a, b = clouds(3, n, 20 + n), clouds(3, n, 40 + n)
    want = [brute_force_emd(a[k].numpy(), b[k].numpy()) for k in range(3)]
    np.testing.assert_allclose(metrics.emd(a, b, exact=True).numpy(), want, rtol=1e-12)
    auction = metrics.emd(a, b, method="auction").numpy()
    assert np.all(auction >= np.array(want) - 1e-12) and np.all(auction <= np.array(want) * (1 + matching.DEFAULT_TOLERANCE) + 1e-12)


def test_emd_hand_computed():
    a = torch.tensor([[[0.0, 0, 0], [2, 0, 0]]])
    b = torch.tensor([[[2.0, 1, 0], [0, 1, 0]]])
    assert metrics.emd(a, b, exact=True).item() == pytest.approx(1.0)
    # a permuted copy shifted by t: the mean displacement bounds any matching, so EMD = |t|
    x = clouds(1, 30, 1)
    t = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    shifted = x[:, torch.randperm(30)] + t
    assert metrics.emd(x, shifted, exact=True).item() == pytest.approx(1.3, rel=1e-12)
    assert metrics.emd(x, shifted, method="auction").item() == pytest.approx(1.3, rel=matching.DEFAULT_TOLERANCE)


def test_emd_symmetric_permutation_invariant_and_differentiable():
    a, b = clouds(2, 25, 5), clouds(2, 25, 6)
    base = metrics.emd(a, b, exact=True)
    np.testing.assert_allclose(metrics.emd(b, a, exact=True), base, rtol=1e-12)
    np.testing.assert_allclose(metrics.emd(a[:, torch.randperm(25)], b[:, torch.randperm(25)], exact=True), base, rtol=1e-12)
    perm = metrics.emd_assignment(a, b, exact=True)
    assert all(sorted(p.tolist()) == list(range(25)) for p in perm)
    a.requires_grad_()
    metrics.emd(a, b, exact=True).sum().backward()
    matched = torch.gather(b, 1, perm.unsqueeze(-1).expand(-1, -1, 3))
    torch.testing.assert_close(a.grad, (a - matched).detach() / (a - matched).detach().norm(dim=-1, keepdim=True) / 25)


def test_emd_rejects_unequal_sizes_and_nan():
    with pytest.raises(ValueError):
        metrics.emd(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3), exact=True)
    bad = torch.zeros(1, 4, 3)
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ValueError):
        metrics.emd(bad, torch.zeros(1, 4, 3), exact=True)
    with pytest.raises(ValueError):
        metrics.emd(bad, torch.zeros(1, 4, 3), method="auction")


def test_auction_error_within_its_bound_on_larger_clouds():
    a, b = clouds(3, 150, 30, torch.float32), clouds(3, 150, 31, torch.float32) * 0.8 + 0.2
    exact = metrics.emd(a, b, exact=True).double()
    for tolerance in (0.05, 0.01):
        perm = metrics.auction_assignment(a, b, tolerance)
        assert all(sorted(p.tolist()) == list(range(150)) for p in perm)
        approx = metrics.emd(a, b, method="auction", tolerance=tolerance).double()
        assert torch.all(approx >= exact * (1 - 1e-6)) and torch.all(approx <= exact * (1 + tolerance))


def test_pairwise_emd_against_loops_and_processes(monkeypatch):
    x, y = clouds(4, 6, 50), clouds(3, 6, 51)
    want = np.array([[brute_force_emd(xi.numpy(), yj.numpy()) for yj in y] for xi in x])
    np.testing.assert_allclose(metrics.pairwise_emd(x, y).numpy(), want, rtol=1e-12)
    square = np.array([[brute_force_emd(xi.numpy(), xj.numpy()) for xj in x] for xi in x])
    np.testing.assert_allclose(metrics.pairwise_emd(x).numpy(), square, rtol=1e-12, atol=1e-15)
    monkeypatch.setattr(matching, "_MIN_POINTS_FOR_PROCESSES", 1)
    np.testing.assert_allclose(metrics.pairwise_emd(x, y, workers=2).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(metrics.emd(x[:3], y, exact=True, workers=2).numpy(), np.diag(want[:3]), rtol=1e-12)
    auction = metrics.pairwise_emd(x, y, method="auction", exact=False).numpy()
    assert np.all(auction >= want - 1e-6) and np.all(auction <= want * (1 + matching.DEFAULT_TOLERANCE) + 1e-6)


# --- F-score ---------------------------------------------------------------------------------

def test_f_score_hand_computed():
    samples = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [5, 0, 0]]])
    references = torch.tensor([[[0.0, 0, 0.005], [1, 0, 0]]])
    precision, recall = metrics.precision_recall(samples, references, 0.01)
    assert precision.item() == pytest.approx(2 / 3) and recall.item() == pytest.approx(1.0)
    assert metrics.f_score(samples, references, 0.01).item() == pytest.approx(0.8)
    # a distance equal to the threshold does not count (strict <); nothing within it gives 0
    at = (torch.tensor([[[0.0, 0, 0]]]), torch.tensor([[[0.25, 0, 0]]]), 0.25)
    assert [x.item() for x in metrics.precision_recall(*at)] == [0.0, 0.0]
    assert metrics.f_score(*at).item() == 0.0


def test_f_score_against_loops():
    a, b = clouds(3, 40, 60), clouds(3, 30, 61)
    for threshold in (0.2, 0.6):
        got = metrics.f_score(a, b, threshold).numpy()
        for k in range(3):
            p = np.mean(np.sqrt(naive_nn(a[k].numpy(), b[k].numpy())) < threshold)
            r = np.mean(np.sqrt(naive_nn(b[k].numpy(), a[k].numpy())) < threshold)
            assert got[k] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


# --- distribution metrics --------------------------------------------------------------------

def naive_pointflow(m_rr, m_rs, m_ss):
    """MMD, COV, 1-NNA from the matrices by loops, as REFERENCE.md section 4 defines them."""
    n_r, n_s = m_rs.shape
    mmd = np.mean([min(m_rs[i, j] for j in range(n_s)) for i in range(n_r)])
    matched = {min(range(n_r), key=lambda i: m_rs[i, j]) for j in range(n_s)}
    full = np.block([[m_rr, m_rs], [m_rs.T, m_ss]])
    labels = [1] * n_r + [0] * n_s
    correct = 0
    for i in range(n_r + n_s):
        nearest = min((k for k in range(n_r + n_s) if k != i), key=lambda k: (full[i, k], k))
        correct += labels[nearest] == labels[i]
    return mmd, len(matched) / n_r, correct / (n_r + n_s)


def test_mmd_cov_1nna_hand_computed():
    m_rs = np.array([[1.0, 5.0, 2.0], [4.0, 3.0, 6.0]])  # 2 references x 3 samples
    got = metrics.mmd_cov(m_rs)
    assert got["MMD"] == pytest.approx((1 + 3) / 2)
    assert got["COV"] == pytest.approx(1.0)  # samples 0 and 2 pick ref 0, sample 1 picks ref 1
    assert got["MMD-smp"] == pytest.approx((1 + 3 + 2) / 3)
    m_rr = np.array([[0.0, 0.5], [0.5, 0.0]])
    m_ss = np.array([[0.0, 9, 9], [9, 0, 9], [9, 9, 0]])
    # ref 0 -> ref 1 (0.5, right), ref 1 -> ref 0 (right); samples 0, 1, 2 -> refs 0, 1, 0 (wrong)
    nna = metrics.one_nn_accuracy(m_rr, m_rs, m_ss)
    assert nna["1-NNA"] == pytest.approx(2 / 5)
    assert nna["1-NNA-references"] == 1.0 and nna["1-NNA-samples"] == 0.0


def test_distribution_metrics_against_naive_loops():
    rng = np.random.default_rng(3)
    refs, samples = rng.normal(size=(7, 5, 3)), rng.normal(size=(6, 5, 3)) * 1.1
    got = metrics.distribution_metrics(samples, refs, return_matrices=True)
    for metric, pair in (("CD", naive_chamfer), ("EMD", brute_force_emd)):
        m_rr = np.array([[pair(a, b) if i != j else 0.0 for j, b in enumerate(refs)] for i, a in enumerate(refs)])
        m_ss = np.array([[pair(a, b) if i != j else 0.0 for j, b in enumerate(samples)] for i, a in enumerate(samples)])
        m_rs = np.array([[pair(a, b) for b in samples] for a in refs])
        np.testing.assert_allclose(got["matrices"][metric]["rs"].numpy(), m_rs, rtol=1e-5)
        mmd, cov, nna = naive_pointflow(m_rr, m_rs, m_ss)
        assert got[f"MMD-{metric}"] == pytest.approx(mmd, rel=1e-5)
        assert got[f"COV-{metric}"] == pytest.approx(cov)
        assert got[f"1-NNA-{metric}"] == pytest.approx(nna)
    assert {"MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD", "COV-EMD", "1-NNA-EMD", "convention"} <= set(got)
    assert "squared" in got["convention"]["CD"] and "exact" in got["convention"]["EMD"]


def ellipsoids(count, points, seed, centre=(0.0, 0.0, 0.0)):
    """Clouds on ellipsoids with random axes in [0.5, 1.5]: one distribution of shapes."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, points, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return directions * rng.uniform(0.5, 1.5, size=(count, 1, 3)) + np.asarray(centre)


def test_1nna_separated_and_same_distribution():
    refs = ellipsoids(100, 48, 1)
    same = ellipsoids(100, 48, 2)
    far = ellipsoids(100, 48, 3, centre=(10.0, 0.0, 0.0))
    separated = metrics.distribution_metrics(far[:30], refs[:30])
    assert separated["1-NNA-CD"] == 1.0 and separated["1-NNA-EMD"] == 1.0
    assert separated["COV-CD"] < 0.5  # far samples all pick the few references nearest to them
    result = metrics.distribution_metrics(same, refs)
    assert 0.4 <= result["1-NNA-CD"] <= 0.6
    assert 0.4 <= result["1-NNA-EMD"] <= 0.6


def test_matrices_computed_once_and_reused(monkeypatch):
    calls = []
    original = distribution.pairwise_chamfer

    def counting(*args, **kwargs):
        calls.append(args[1] is None if len(args) > 1 else True)
        return original(*args, **kwargs)

    monkeypatch.setattr(distribution, "pairwise_chamfer", counting)
    refs, samples = ellipsoids(6, 16, 4), ellipsoids(5, 16, 5)
    first = metrics.distribution_metrics(samples, refs, metrics=["CD"], return_matrices=True)
    assert len(calls) == 3  # M_rr, M_rs, M_ss, each once, for MMD, COV and 1-NNA together
    again = metrics.distribution_metrics(samples, refs, metrics=["CD"], matrices=first["matrices"])
    assert len(calls) == 3
    assert all(again[k] == first[k] for k in ("MMD-CD", "COV-CD", "1-NNA-CD"))


def test_normalizations():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 20, 3)) * [1, 2, 3] + 5
    unit = metrics.normalize_clouds(x, "unit-sphere").numpy()
    np.testing.assert_allclose(unit.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1).max(1), 1)
    box = metrics.normalize_clouds(x, "bbox").numpy()
    np.testing.assert_allclose((box.max(1) + box.min(1)) / 2, 0, atol=1e-12)
    np.testing.assert_allclose((box.max(1) - box.min(1)).max(1), 2)
    torch.testing.assert_close(metrics.normalize_clouds(x, "unit_sphere"), metrics.normalize_clouds(x, "unit-sphere"))
    mean, std = np.array([1.0, -2.0, 0.5]), 0.25
    np.testing.assert_allclose(metrics.normalize_clouds(x, "pointflow", (mean, std)).numpy(), x * std + mean)
    with pytest.raises(ValueError):
        metrics.normalize_clouds(x, "pointflow")
    # per-cloud normalisations make the metrics blind to each cloud's placement and size
    refs, samples = ellipsoids(5, 12, 7), ellipsoids(4, 12, 8)
    moved = samples * np.array([3.0, 0.5, 2.0, 1.5]).reshape(-1, 1, 1) + np.array([7.0, -1.0, 2.0])
    for mode in ("unit-sphere", "bbox"):
        a = metrics.distribution_metrics(samples, refs, metrics=["CD"], normalization=mode)
        b = metrics.distribution_metrics(moved, refs, metrics=["CD"], normalization=mode)
        assert a["MMD-CD"] == pytest.approx(b["MMD-CD"], rel=1e-5)
        assert mode in a["convention"]["normalization"]
    # pointflow: the numbers of the de-normalised clouds, the statistics recorded
    flow = metrics.distribution_metrics(samples, refs, metrics=["CD"], normalization="pointflow", stats=(mean, std))
    plain = metrics.distribution_metrics(samples * std + mean, refs * std + mean, metrics=["CD"])
    assert flow["MMD-CD"] == pytest.approx(plain["MMD-CD"], rel=1e-5)
    assert flow["convention"]["pointflow_stats"]["std"] == std
