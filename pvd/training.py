"""What both training loops share: train.py (the denoiser) and pvd.sds.train_prior (the view prior).

Seeds derived from (seed, step, index) keys, the learning-rate factors, the EMA update, the
logged loss statistics and the loss of the image encoder's shape head (also used by pvd.regressor). The schedule is a pure
function of the step rather than a ``torch.optim.lr_scheduler``: a resumed run then needs no
scheduler state and repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from pvd.metrics import chamfer_distance, emd


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SeedSequence mixes them; no two keys collide in practice)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup: (step + 1) / warmup_steps for the first warmup_steps steps, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Cosine decay from 1 after the warmup to min_ratio at total_steps (constant after)."""
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """One step of the exponential moving average of ``model``'s parameters into ``average``.

    The decay is warmed up as min(decay, (1 + step) / (10 + step)) so that early weights do not
    linger; buffers (no gradients, e.g. norm statistics) are copied.
    """
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1 - d)
    for a, b in zip(average.buffers(), model.buffers()):
        a.copy_(b)


def shape_head_loss(regressed: torch.Tensor, truth: torch.Tensor, emd_weight: float = 0.0) -> torch.Tensor:
    """Loss of the shape head's cloud regressed (B, M, 3) against training points truth (B, N >= M, 3) -> (B,).

    Chamfer distance (squared) to all N points, plus ``emd_weight`` times the EMD to the first M
    of them (training points are independent draws from the surface, so any M are a uniform
    subset). Chamfer alone lets a regressor pile points where it is sure and leave thin parts
    bare (Fan et al. 2017); a bijection makes the cloud spread over the surface the way the
    truth does. The matching is exact on the CPU (~5 ms per 256-point pair) and held fixed in
    the gradient.
    """
    loss = chamfer_distance(regressed, truth)
    if emd_weight:
        m = regressed.shape[1]
        if truth.shape[1] < m:
            raise ValueError(f"the EMD term needs at least {m} truth points, got {truth.shape[1]}")
        loss = loss + emd_weight * emd(regressed, truth[:, :m], workers=1)
    return loss


class LossWindow:
    """Loss statistics since the last log line (mean loss, samples/s, mean loss per quarter of the
    timestep range), accumulated on the device: read back (one sync) only when a line is logged."""

    def __init__(self, num_stages: int, num_steps: int, device: torch.device):
        self.num_steps = num_steps
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.sums = torch.zeros(num_stages, 4, dtype=torch.float64, device=device)  # per stage, per t quartile
        self.counts = torch.zeros(num_stages, 4, dtype=torch.float64, device=device)
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        """loss: () the step's mean; per_sample, t: (S, B) per stage."""
        self.loss += loss.detach()
        quartile = (t.to(per_sample.device) * 4 // self.num_steps).clamp(max=3)
        self.sums.scatter_add_(1, quartile, per_sample.double())
        self.counts.scatter_add_(1, quartile, torch.ones_like(per_sample, dtype=torch.float64))
        self.steps += 1

    def read(self, batch_size: int, per_stage: bool) -> dict[str, Any]:
        """The window's mean loss, samples/s and mean loss per t quartile; then starts a new window."""
        loss, sums, counts = self.loss.item(), self.sums.tolist(), self.counts.tolist()  # waits for the device
        elapsed = time.perf_counter() - self.start
        entry: dict[str, Any] = {"loss": loss / self.steps, "samples_per_s": self.steps * batch_size / elapsed}
        for k, (stage_sums, stage_counts) in enumerate(zip(sums, counts)):
            prefix = f"loss_stage{k}" if per_stage else "loss"
            for q in range(4):
                entry[f"{prefix}_q{q}"] = stage_sums[q] / stage_counts[q] if stage_counts[q] else None
        self.loss.zero_(), self.sums.zero_(), self.counts.zero_()
        self.steps, self.start = 0, time.perf_counter()
        return entry
