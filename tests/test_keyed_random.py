"""pvd.keyed_random: the integer arithmetic against a Python reference, per-key independence of a
row's draws, bitwise repeatability, and the distributions (tolerances from the sample size; the
keys are fixed, so each check is deterministic and fails only if the code changes)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pvd.diffusion import DiffusionConfig, build
from pvd.diffusion.cascade import CascadeConfig, StageConfig, stage_batch
from pvd.diffusion.hierarchy import HierarchyConfig
from pvd.keyed_random import bits, normal, randint, splitmix64, stream_seeds, subset, training_draws, uniform
from pvd.nn import Condition

U64 = 1 << 64
GAMMA, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
P = 1e-3  # p-value floor of the KS and chi-square tests


def ref_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * M1) % U64
    z = ((z ^ (z >> 27)) * M2) % U64
    return z ^ (z >> 31)


def ref_splitmix(seed: int, i: int) -> int:
    return ref_mix((seed + (i + 1) * GAMMA) % U64)


def ref_stream_seed(key: int, stream: int) -> int:
    return ref_mix((ref_mix(key % U64) + (stream + 1) * GAMMA) % U64)


def u64(t: torch.Tensor) -> list:
    return [int(v) % U64 for v in t.flatten().tolist()]


def many_keys(n: int, device="cpu") -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64, device=device) * 1_000_003 + 12345


def cascade_stages(points=(8, 24, 64), aug=(0.0, 0.5)):
    cascade = CascadeConfig(stages=tuple(StageConfig(n, aug_level_train=aug) for n in points))
    return build(DiffusionConfig(num_steps=50, cascade=cascade), points[-1])


# ---- the integer arithmetic -----------------------------------------------------------------

def test_splitmix64_published_values():
    # Vigna's splitmix64.c seeded with 0: its first three outputs.
    assert u64(splitmix64(torch.tensor([0]), 3)) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_matches_python_reference(device):
    keys = [0, 1, 42, 2**62 + 12345, 2**63 - 1, -1, -(2**63)]  # negatives: the upper half of the uint64 range
    k = torch.tensor(keys, dtype=torch.int64, device=device)
    assert u64(splitmix64(k, 5)) == [ref_splitmix(key % U64, i) for key in keys for i in range(5)]
    for stream in (0, 3, 17):
        assert u64(stream_seeds(k, stream)) == [ref_stream_seed(key, stream) for key in keys]
        assert u64(bits(k, (2, 3), stream)) == [ref_splitmix(ref_stream_seed(key, stream), i) for key in keys for i in range(6)]
    # uniform is exact: the top 53 bits over 2^53.
    expect = [(ref_splitmix(ref_stream_seed(key, 5), i) >> 11) / 2**53 for key in keys for i in range(4)]
    assert uniform(k, (4,), 5).flatten().tolist() == expect
    assert uniform(k, (4,), 5).device.type == device.type


# ---- keyed, repeatable ----------------------------------------------------------------------

def _assert_rows_equal(a, b, rows):
    """Draws a on a batch vs. b on batch[rows]: integers and bools equal, floats to a few ulp."""
    if a is None:
        assert b is None
        return
    a = a[rows]
    if a.is_floating_point():
        # Box-Muller's log/cos/sin may round the last bit differently at another tensor position
        # (vectorised body vs. scalar tail); a few float32 ulp of values up to ~6.
        torch.testing.assert_close(a, b, rtol=8 * torch.finfo(a.dtype).eps, atol=8 * torch.finfo(a.dtype).eps)
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["cascade", "hierarchy"])
def test_row_depends_only_on_its_key(device, kind):
    stages = cascade_stages() if kind == "cascade" else build(DiffusionConfig(hierarchy=HierarchyConfig(t_max=0.1)), 64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((5, 64, 3), generator=g).to(device)
    keys = torch.tensor([7, 2**62 + 5, -3, 99, 123456789], dtype=torch.int64, device=device)
    full = training_draws(stages, x0, keys, 0.5)
    for rows in ([1], [3, 1], [4, 0, 2]):
        part = training_draws(stages, x0[rows], keys[rows], 0.5)
        _assert_rows_equal(full["drop"], part["drop"], rows)
        for name in ("points", "t", "noise", "coarse", "level"):
            for a, b in zip(full[name], part[name], strict=True):
                _assert_rows_equal(a, b, rows)


def test_bitwise_repeatable(device):
    stages = cascade_stages()
    x0 = torch.randn((6, 64, 3), generator=torch.Generator().manual_seed(1)).to(device)
    keys = many_keys(6, device)
    a, b = training_draws(stages, x0, keys, 0.2), training_draws(stages, x0, keys.clone(), 0.2)
    assert torch.equal(a["drop"], b["drop"])
    for name in ("points", "t", "noise", "coarse", "level"):
        for u, v in zip(a[name], b[name], strict=True):
            assert (u is None and v is None) or torch.equal(u, v)
    assert a["noise"][0].device.type == device.type
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(normal(keys, (33,), 4, dtype), normal(keys, (33,), 4, dtype))
    # Another stream or key gives other draws.
    assert not torch.equal(uniform(keys, (8,), 1), uniform(keys, (8,), 2))
    assert not torch.equal(uniform(keys, (8,), 1), uniform(keys + 1, (8,), 1))


# ---- distributions ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_uniform(dtype):
    u = uniform(many_keys(100), (1000,), 3, dtype).double().flatten().numpy()
    n = len(u)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / n)  # Var(s^2) = (mu4 - sigma^4) / n
    assert stats.kstest(u, "uniform").pvalue > P
    lo = uniform(many_keys(100), (1000,), 3, dtype, open_low=True)
    assert lo.min() > 0 and lo.max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal(dtype):
    z = normal(many_keys(100), (999,), 5, dtype)  # odd count: the cut pair
    assert z.shape == (100, 999) and z.dtype == dtype
    z = z.double().flatten().numpy()
    n = len(z)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1) < 5 / math.sqrt(2 * n)
    assert stats.kstest(z, "norm").pvalue > P
    # The pairs' sin and cos halves are independent: no correlation between elements j and P + j.
    pairs = normal(many_keys(2000), (2,), 6, dtype).double().numpy()
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 5 / math.sqrt(2000)


def test_randint():
    high = 37
    r = randint(many_keys(2000), high, (50,), 2)
    assert r.dtype == torch.long and r.min() >= 0 and r.max() < high
    counts = torch.bincount(r.flatten(), minlength=high).numpy()
    assert counts.min() > 0
    assert stats.chisquare(counts).pvalue > P
    assert randint(many_keys(10), 1).eq(0).all()
    with pytest.raises(ValueError):
        randint(many_keys(2), 0)


def test_subset():
    n, m, b = 20, 7, 20000
    s = subset(many_keys(b), n, m, 9)
    assert s.shape == (b, m)
    assert (s.sort(dim=1).values.diff(dim=1) > 0).all()  # no index twice in a row
    assert stats.chisquare(torch.bincount(s.flatten(), minlength=n).numpy()).pvalue > P  # each index equally likely
    assert stats.chisquare(torch.bincount(s[:, 0], minlength=n).numpy()).pvalue > P  # and at each position
    # An unordered pair of indices is taken with probability m(m-1) / (n(n-1)) each: check (0, 1).
    both = ((s == 0).any(1) & (s == 1).any(1)).double().mean().item()
    p = m * (m - 1) / (n * (n - 1))
    assert abs(both - p) < 5 * math.sqrt(p * (1 - p) / b)
    assert torch.equal(subset(many_keys(3), 5, 5, 1).sort(1).values, torch.arange(5).expand(3, 5))
    with pytest.raises(ValueError):
        subset(many_keys(2), 3, 4)


def test_training_draws_shapes_and_ranges():
    stages = cascade_stages(aug=(0.1, 0.4))
    b, cond_drop = 4000, 0.1
    x0 = torch.randn((b, 64, 3), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = training_draws(stages, x0, many_keys(b), cond_drop)
    assert d["drop"].shape == (b,) and d["drop"].dtype == torch.bool
    rate = d["drop"].double().mean().item()
    assert abs(rate - cond_drop) < 5 * math.sqrt(cond_drop * (1 - cond_drop) / b)
    for k, stage in enumerate(stages):
        m = stage.num_points
        assert d["points"][k].shape == (b, m, 3) and d["noise"][k].shape == (b, m, 3)
        assert d["noise"][k].dtype == torch.float64
        assert d["t"][k].dtype == torch.long and 0 <= d["t"][k].min() and d["t"][k].max() < stage.diffusion.num_steps
        assert stats.chisquare(torch.bincount(d["t"][k], minlength=stage.diffusion.num_steps).numpy()).pvalue > P
        if k == 0:
            assert d["coarse"][k] is None and d["level"][k] is None
            continue
        level = d["level"][k]
        assert level.dtype == torch.float64 and d["coarse"][k].shape == (b, stages[k - 1].num_points, 3)
        assert stats.kstest(((level - 0.1) / 0.3).numpy(), "uniform").pvalue > P
    assert torch.equal(d["points"][-1], x0)  # the last stage takes every point, as subsample does


def test_hierarchy_t_within_t_max():
    (stage,) = build(DiffusionConfig(hierarchy=HierarchyConfig(t_max=0.1)), 64)
    assert stage.t_max == 100
    b = 20000
    t = training_draws([stage], torch.zeros((b, 64, 3)), many_keys(b), 0.1)["t"][0]
    assert t.min() == 0 and t.max() == stage.t_max
    assert stats.chisquare(torch.bincount(t, minlength=stage.t_max + 1).numpy()).pvalue > P


def test_points_and_coarse_are_subsets():
    stages = cascade_stages(aug=(0.0, 0.0))  # level 0: the coarse cloud is the clean subset
    b = 50
    x0 = torch.randperm(b * 64 * 3).double().view(b, 64, 3)  # every coordinate distinct: points identify themselves
    d = training_draws(stages, x0, many_keys(b), 0.0)
    for k in range(len(stages)):
        for row in range(b):
            pts = {tuple(p) for p in d["points"][k][row].tolist()}
            assert len(pts) == stages[k].num_points  # without replacement
            assert pts <= {tuple(p) for p in x0[row].tolist()}
            if k > 0:
                coarse = {tuple(p) for p in d["coarse"][k][row].tolist()}
                assert len(coarse) == stages[k - 1].num_points and coarse <= pts


def test_coarse_augmentation_noise():
    # x0 = c everywhere: coarse = sqrt(1 - a^2) c + a eps, so (coarse - sqrt(1 - a^2) c) / a is N(0, 1).
    stages = cascade_stages(aug=(0.2, 0.9))
    b, c = 500, 0.7
    x0 = torch.full((b, 64, 3), c, dtype=torch.float64)
    d = training_draws(stages, x0, many_keys(b), 0.0)
    a = d["level"][1].view(-1, 1, 1)
    eps = ((d["coarse"][1] - (1 - a.square()).sqrt() * c) / a).flatten().numpy()
    assert stats.kstest(eps, "norm").pvalue > P


def test_matches_todays_per_sample_draws():
    # The same distributions as stage_batch + sample_t with a torch.Generator (today's sample_draws):
    # one fixed cloud repeated, so rows are iid; one value per row into a two-sample KS test.
    stages = cascade_stages(aug=(0.0, 0.5))
    b = 3000
    x0 = torch.randn((1, 64, 3), generator=torch.Generator().manual_seed(3)).expand(b, -1, -1).contiguous()
    d = training_draws(stages, x0, many_keys(b), 0.0)
    g = torch.Generator().manual_seed(4)
    p0, _ = stage_batch(stages, 0, x0, None, g)
    p1, cond = stage_batch(stages, 1, x0, Condition(), g)
    t = stages[1].diffusion.sample_t(b, generator=g)
    for ours, theirs in ((d["points"][0][:, 0, 0], p0[:, 0, 0]), (d["coarse"][1][:, 0, 1], cond.coarse[:, 0, 1]),
                         (d["level"][1], cond.coarse_level), (d["t"][1].double(), t.double())):
        assert stats.ks_2samp(ours.double().numpy(), theirs.double().numpy()).pvalue > P


def test_rejects_bad_inputs():
    stages = cascade_stages()
    x0 = torch.zeros((2, 64, 3))
    with pytest.raises(ValueError):
        training_draws(stages, x0, torch.tensor([1, 2], dtype=torch.int32), 0.1)
    with pytest.raises(ValueError):
        training_draws(stages, x0, many_keys(3), 0.1)
    with pytest.raises(ValueError):
        training_draws(stages, torch.zeros((2, 32, 3)), many_keys(2), 0.1)  # fewer points than a stage takes
