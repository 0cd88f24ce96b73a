"""Keyed, batched random draws that run on any device: one counter-based stream per sample.

Training keys every sample's randomness to an integer (``pvd.training.derive_seed(seed, epoch,
index, 1)``) so that a resumed run is bitwise equal to an uninterrupted one and a run over W
processes sees the same draws as one process. A ``torch.Generator`` per sample does that but
costs B generators and B host-to-device copies per step. Here the draws of a whole batch are
one set of int64 tensor ops on the keys' device: draw i of row b is a pure function of
(key_b, stream, i), so a row's draws depend on its key alone, never on its position in the batch
or on the batch size.

The generator is SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
generators", OOPSLA; the constants are those of Java's SplittableRandom and Vigna's splitmix64.c):
state_i = seed + (i + 1) * gamma mod 2^64, output_i = mix64(state_i). It is counter-based, so
any draw can be computed without the ones before it, which is what makes it batchable.
Each kind of draw (condition drop, point subset, timestep, noise, ...) uses its own stream:
stream s of key k is the generator seeded by output s of the generator seeded by mix64(k), as
SplitMix's ``split`` derives a child generator from its parent's output.

Unsigned 64-bit arithmetic in int64 tensors: add and multiply wrap mod 2^64 in two's complement
(the same bits as uint64); ``>>`` on int64 is arithmetic, so logical shifts mask the sign copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pvd.diffusion.cascade import augment, take

_U64 = 1 << 64
GAMMA = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd: the Weyl sequence's increment
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's finaliser (Stafford's Mix13)


def _s64(value: int) -> int:
    """The int64 with the bits of ``value`` mod 2^64 (what an int64 tensor op needs as a Python int)."""
    value %= _U64
    return value - _U64 if value >= 1 << 63 else value


def _srl(z: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 bits: the arithmetic shift with the copied sign bits masked off."""
    return (z >> shift) & ((1 << (64 - shift)) - 1)


def _mix64_(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser, in place (fewer temporaries: it is most of the generator's time on CPU)."""
    z ^= _srl(z, 30)
    z *= _s64(_MIX1)
    z ^= _srl(z, 27)
    z *= _s64(_MIX2)
    z ^= _srl(z, 31)
    return z


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser, elementwise on int64 bits (a bijection of 64-bit words)."""
    return _mix64_(z.clone())


def splitmix64(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """Outputs 0..count-1 of the SplitMix64 generator of each seed: seeds (B,) int64 -> (B, count) int64 bits."""
    counter = torch.arange(1, count + 1, dtype=torch.int64, device=seeds.device) * _s64(GAMMA)
    return _mix64_(seeds.unsqueeze(1) + counter)


def _check_keys(keys: torch.Tensor) -> None:
    if keys.dtype != torch.int64 or keys.dim() != 1:
        raise ValueError(f"keys must be a (B,) int64 tensor, got {tuple(keys.shape)} {keys.dtype}")


def stream_seeds(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """The seed of stream ``stream`` (an int >= 0) of each key: (B,) int64 -> (B,) int64."""
    _check_keys(keys)
    return mix64(mix64(keys) + _s64((stream + 1) * GAMMA))


def bits(keys: torch.Tensor, shape: Sequence[int] = (), stream: int = 0) -> torch.Tensor:
    """Random 64-bit words: keys (B,) int64 -> (B, *shape) int64, element i (row-major) is output i of the stream."""
    shape = tuple(shape)
    return splitmix64(stream_seeds(keys, stream), math.prod(shape)).view(len(keys), *shape)


def uniform(keys: torch.Tensor, shape: Sequence[int] = (), stream: int = 0, dtype: torch.dtype = torch.float64,
            open_low: bool = False) -> torch.Tensor:
    """Uniform floats in [0, 1) (in (0, 1] with ``open_low``): keys (B,) -> (B, *shape) of ``dtype``.

    float64 takes the top 53 bits of each word, any other dtype the top 24 (computed in float32,
    then cast); both conversions are exact, so the values are the same on every device. A cast to
    float16/bfloat16 rounds, and may round values near 1 up to 1.
    """
    wide = dtype == torch.float64
    word = _srl(bits(keys, shape, stream), 11 if wide else 40)
    if open_low:
        word = word + 1  # (0, 1]: 0 never comes, so log(u) is finite
    u = word.to(torch.float64 if wide else torch.float32) * 2.0 ** (-53 if wide else -24)
    return u if u.dtype == dtype else u.to(dtype)


def normal(keys: torch.Tensor, shape: Sequence[int] = (), stream: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal floats by Box-Muller (Box & Muller 1958): keys (B,) -> (B, *shape) of ``dtype``.

    Pair j (of P = ceil(count / 2)) gives flat elements j and P + j (the last cut when the count is
    odd): r cos(2 pi u2) and r sin(2 pi u2), r = sqrt(-2 log u1), u1 in (0, 1] so the log is finite.
    float64: u1 and u2 are 53-bit uniforms from words j and P + j of the stream. Other dtypes:
    computed in float32 from one word per pair, u1 from its top 24 bits and u2 from its bottom 24
    (half the integer work), which caps |z| at sqrt(48 log 2) = 5.77, a tail of 8e-9 (as CUDA's
    own float32 Box-Muller). log/cos/sin may round the last bit differently at different tensor
    positions (vectorised vs. scalar loops), so equality across batch layouts holds to an ulp, not
    bitwise; the same call on the same device is bitwise repeatable.
    """
    shape = tuple(shape)
    numel = math.prod(shape)
    pairs = (numel + 1) // 2
    if dtype == torch.float64:
        u = uniform(keys, (2, pairs), stream, torch.float64, open_low=True)
        u1, u2 = u[:, 0], u[:, 1]
    else:
        word = bits(keys, (pairs,), stream)
        u1 = (_srl(word, 40) + 1).to(torch.float32) * 2.0 ** -24
        u2 = (word & 0xFFFFFF).to(torch.float32) * 2.0 ** -24
    theta = (2 * math.pi) * u2
    z = torch.empty((len(keys), 2, pairs), dtype=theta.dtype, device=theta.device)  # written in place: no stack copy
    torch.cos(theta, out=z[:, 0])
    torch.sin(theta, out=z[:, 1])
    z *= u1.log_().mul_(-2.0).sqrt_().unsqueeze(1)
    return z.view(len(keys), 2 * pairs)[:, :numel].reshape(len(keys), *shape).to(dtype)


def randint(keys: torch.Tensor, high: int, shape: Sequence[int] = (), stream: int = 0) -> torch.Tensor:
    """Integers uniform on 0..high-1: keys (B,) -> (B, *shape) long.

    floor(u * high) with u a 53-bit uniform: exact IEEE arithmetic, so the same on every device;
    the bias is below high / 2^53. Clamped to high - 1 against the product rounding up to high.
    """
    high = int(high)
    if not 1 <= high <= 1 << 53:
        raise ValueError(f"high must lie in 1..2^53, got {high}")
    u = uniform(keys, shape, stream, torch.float64)
    return (u * high).floor_().long().clamp_(max=high - 1)


def subset(keys: torch.Tensor, n: int, m: int, stream: int = 0) -> torch.Tensor:
    """A uniformly random ordered subset of m of 0..n-1 per row, without replacement: keys (B,) -> (B, m) long.

    The indices sorted by a random 64-bit word each (a uniform random permutation), first m kept.
    The sort is stable, so the rare tie (about n^2 / 2^65 per row) goes to the lower index on
    every device.
    """
    if not 0 <= m <= n:
        raise ValueError(f"cannot take {m} of {n} indices")
    order = torch.sort(bits(keys, (n,), stream), dim=1, stable=True).indices
    return order[:, :m]


# Stream ids of training_draws: the drop, and per stage k six kinds at 1 + 8 k + kind.
STREAM_DROP = 0
_POINTS, _T, _NOISE, _COARSE, _LEVEL, _AUG_NOISE = range(6)


def _stream(k: int, kind: int) -> int:
    return 1 + 8 * k + kind


def training_draws(stages: Sequence[Any], x0: torch.Tensor, keys: torch.Tensor, cond_drop: float) -> dict[str, Any]:
    """Every random draw of a training batch, for every stage, keyed per sample and made on x0's device.

    The batched counterpart of drawing each sample from its own seeded ``torch.Generator``
    through ``pvd.diffusion.cascade.stage_batch`` and ``GaussianDiffusion.sample_t``, with the
    same distributions (not the same numbers). x0: (B, N, 3) data clouds; keys: (B,) int64 on
    x0's device (one per sample, e.g. ``derive_seed(seed, epoch, index, 1)``; 63-bit keys fit).

    Returns a dict:
      drop: (B,) bool, true with probability cond_drop (the condition is dropped);
      points: per stage k, (B, N_k, 3): a uniformly random subset of N_k of x0's points without
        replacement, in random order (x0 itself when N_k = N, as ``subsample``);
      t: per stage, (B,) long, uniform on 0..t_max (``stage.t_max``; None: 0..T-1);
      noise: per stage, (B, N_k, 3) standard normal in x0's dtype;
      coarse: per stage, None for k = 0, else (B, N_{k-1}, 3): sqrt(1 - a^2) s + a eps with s a
        random subset of N_{k-1} of that stage's points, eps standard normal, a the level
        (``cascade.augment``);
      level: per stage, None for k = 0, else (B,) in x0's dtype: a, uniform on the stage's
        ``aug_level_train`` (drawn in float64, as ``stage_batch``).
    """
    _check_keys(keys)
    b, n, _ = x0.shape
    if len(keys) != b or keys.device != x0.device:
        raise ValueError(f"keys must be ({b},) on {x0.device}, got ({len(keys)},) on {keys.device}")
    out: dict[str, Any] = {"drop": uniform(keys, (), STREAM_DROP) < cond_drop, "points": [], "t": [], "noise": [],
                           "coarse": [], "level": []}
    for k, stage in enumerate(stages):
        m = stage.num_points
        if m > n:
            raise ValueError(f"cannot take {m} of {n} points")
        points = x0 if m == n else take(x0, subset(keys, n, m, _stream(k, _POINTS)))
        coarse = level = None
        if k > 0:
            lo, hi = stage.config.aug_level_train
            level64 = lo + (hi - lo) * uniform(keys, (), _stream(k, _LEVEL))
            m_prev = stages[k - 1].num_points
            sub = points if m_prev == m else take(points, subset(keys, m, m_prev, _stream(k, _COARSE)))
            coarse = augment(sub, level64, noise=normal(keys, (m_prev, 3), _stream(k, _AUG_NOISE), x0.dtype))
            level = level64.to(x0.dtype)
        out["points"].append(points)
        out["t"].append(randint(keys, stage.diffusion.timestep_count(stage.t_max), (), _stream(k, _T)))
        out["noise"].append(normal(keys, (m, 3), _stream(k, _NOISE), x0.dtype))
        out["coarse"].append(coarse)
        out["level"].append(level)
    return out
