"""The evaluator image encoder: a small CNN trained from scratch on the train split to embed
point renders (:mod:`pvd.semantic.views`) so that views of one shape land together.

It stands in for CLIP, which cannot be downloaded here, and is independent of every model it
scores: its own architecture, seed and training data (the train split's training points,
drawn from random cameras), never initialised from another network. Training is SimCLR-style
(InfoNCE between two views of the same shape within a batch, temperature ``temperature``) plus
a category head (cross-entropy), the pairing the R-precision asks about (which shape?) and the
coarse one (which category?). Its embedding, the L2-normalised projection, serves both the
R-precision (cosine similarity) and the render KID.

    python -m pvd.semantic train --data data/synth.h5 --out data/synth.evaluator

The folder holds ``weights.pt`` and ``config.json`` (architecture, training config, the data
file's SHA-256, its history and the weights' checksum; :mod:`pvd.model_folder`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pvd.data.cameras import R2N2_DISTANCE_SCALE, orbit_extrinsics, r2n2_like_views
from pvd.data.hdf5 import SPLITS, FileInfo, open_dataset_file
from pvd.errors import UserError, raise_if_interrupted
from pvd.model_folder import load_model_folder, save_model_folder, sha256_file
from pvd.semantic.views import POINT_RADIUS_PX, RENDER_POINTS, render_cloud_views

FORMAT = "pvd-semantic-evaluator"
FORMAT_VERSION = 1


@dataclass
class EvaluatorConfig:
    """The evaluator network and its training."""

    widths: tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 stage each (64 px -> 4 px)
    embed_dim: int = 128
    views_per_shape: int = 12  # renders per training shape, each from its own random camera and points
    steps: int = 1500  # val top-1 among 100 rose to 0.76 by 1300-1500 of a 1500-step run (tests/benchmarks/README.md)
    batch_shapes: int = 64  # two views of each per step
    lr: float = 2e-3  # AdamW, cosine to zero (torch's scheduler)
    weight_decay: float = 1e-4
    temperature: float = 0.1
    category_weight: float = 0.5
    seed: int = 1234  # its own, unrelated to the seeds of the models it scores
    threads: int = 0  # 0: torch's default


def to_channels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 4) uint8 RGBA renders -> (B, 2, H, W) float: premultiplied grey (the depth shade) and alpha."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    alpha = x[..., 3]
    return torch.stack([x[..., :3].mean(-1) * alpha, alpha], dim=1)


class EvaluatorNet(nn.Module):
    """Conv stages (3x3 stride 2, then 3x3), GroupNorm, SiLU; mean pool; a projection and a category head."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256), embed_dim: int = 128):
        super().__init__()
        layers, previous = [], 2
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            if i > 0:  # the first stage, at full resolution, stays one layer: most of the cost
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            previous = width
        self.trunk = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(previous, previous), nn.SiLU(), nn.Linear(previous, embed_dim))
        self.classify = nn.Linear(previous, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) channels -> (B, widths[-1]) pooled trunk features."""
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, H, W) -> ((B, embed_dim) unit embeddings, (B, num_classes) category logits)."""
        h = self.pooled(x)
        return nn.functional.normalize(self.project(h), dim=-1), self.classify(h)


@dataclass
class Evaluator:
    """A loaded evaluator: an :class:`pvd.semantic.embedder.ImageEmbedder`."""

    net: EvaluatorNet
    config: EvaluatorConfig
    record: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    device: torch.device = torch.device("cpu")
    batch_size: int = 256

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 4) uint8 RGBA renders -> (B, embed_dim) float64 unit embeddings."""
        images = np.asarray(images)
        size = self.record.get("image_size")
        if images.ndim != 4 or images.shape[-1] != 4:
            raise ValueError(f"renders must be (B, H, W, 4) RGBA, got {images.shape}")
        if size is not None and images.shape[1:3] != (size, size):
            raise ValueError(f"the evaluator was trained on {size}x{size} renders, got {images.shape[1:3]}")
        self.net.eval()
        out = [self.net(to_channels(images[i : i + self.batch_size]).to(self.device))[0].cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros((0, self.config.embed_dim))


# --- the training renders ----------------------------------------------------------------------

def render_bank(data: str, split: str, views: int, seed: int, categories: list[int] | None = None,
                log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Point renders of every ``split`` shape: ((S, views, H, W, 4) uint8, (S,) category ids, lens info).

    Each view has its own R2N2-like random camera (:func:`pvd.data.cameras.r2n2_like_views`)
    and its own random subset of the shape's training points; the lens and image size are the
    dataset's (its first stored camera).
    """
    rng = np.random.default_rng(seed)
    with open_dataset_file(data) as f:
        info = FileInfo.read(f)
        if not info.has_images or "cameras" not in f:
            raise UserError(f"{data} has no rendered views: the evaluator learns the dataset's image size and lens")
        size = int(f["images"].shape[2])
        intrinsics = f["cameras"]["intrinsics"][0, 0].astype(np.float64)
        mask = info.split == SPLITS.index(split)
        if categories is not None:
            mask &= np.isin(info.category, categories)
        rows = np.flatnonzero(mask)
        start = time.perf_counter()
        bank = np.zeros((len(rows), views, size, size, 4), dtype=np.uint8)
        for n, row in enumerate(rows):
            raise_if_interrupted()
            points = f["points"][row, : info.num_train_points].astype(np.float64)
            cams = r2n2_like_views(rng, views)
            extrinsics = np.stack([orbit_extrinsics(a, e, r * R2N2_DISTANCE_SCALE) for a, e, r in cams])
            bank[n] = render_cloud_views(points, intrinsics, extrinsics, size, seed=int(rng.integers(2**31)))
        categories_of = info.category[rows].astype(np.int64)
    log(f"rendered {len(rows)} {split} shapes x {views} views at {size} px in {time.perf_counter() - start:.0f} s")
    return bank, categories_of, {"image_size": size, "intrinsics": intrinsics.tolist()}


@torch.no_grad()
def view_retrieval_accuracy(net: EvaluatorNet, bank: np.ndarray, categories: np.ndarray) -> tuple[float, float]:
    """(top-1 shape retrieval, category accuracy of that retrieval): view 0 of every shape is the
    gallery, each other view a query among all the bank's shapes."""
    net.eval()
    s, v = bank.shape[:2]
    z = torch.cat([net(to_channels(bank[i : i + 64].reshape(-1, *bank.shape[2:])))[0]
                   for i in range(0, s, 64)]).reshape(s, v, -1)
    gallery, queries = z[:, 0], z[:, 1:].reshape(-1, z.shape[-1])
    best = (queries @ gallery.T).argmax(1).numpy()
    target = np.repeat(np.arange(s), v - 1)
    return float((best == target).mean()), float((categories[best] == categories[target]).mean())


def train_evaluator(data: str, config: EvaluatorConfig, log: Callable[[str], None] = print
                    ) -> tuple[EvaluatorNet, dict[str, Any]]:
    """Train on ``data``'s train split; returns (net, record for config.json)."""
    if config.views_per_shape < 2 or config.steps < 1 or config.batch_shapes < 2:
        raise UserError("the evaluator needs at least 2 views per shape, 1 step and 2 shapes per batch")
    if config.threads:
        torch.set_num_threads(config.threads)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    bank, cats, lens = render_bank(data, "train", config.views_per_shape, config.seed, log=log)
    if len(bank) < 2:
        raise UserError(f"{data} has fewer than 2 training shapes")
    val_bank, val_cats, _ = render_bank(data, "val", 4, config.seed + 1, log=log)
    with open_dataset_file(data) as f:
        info = FileInfo.read(f)
    present = sorted(set(cats.tolist()))
    labels = np.full(max(present) + 1, -1)
    labels[present] = np.arange(len(present))
    net = EvaluatorNet(len(present), tuple(config.widths), config.embed_dim)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    rng = np.random.default_rng(config.seed)
    batch = min(config.batch_shapes, len(bank))
    history = []
    render_seconds = time.perf_counter() - start
    for step in range(1, config.steps + 1):
        raise_if_interrupted()
        net.train()
        shapes = rng.choice(len(bank), batch, replace=False)
        pair = np.argsort(rng.random((batch, config.views_per_shape)), axis=1)[:, :2]  # two distinct views
        x = to_channels(np.concatenate([bank[shapes, pair[:, 0]], bank[shapes, pair[:, 1]]]))
        z, logits = net(x)
        similarity = z[:batch] @ z[batch:].T / config.temperature
        target = torch.arange(batch)
        contrastive = (nn.functional.cross_entropy(similarity, target) + nn.functional.cross_entropy(similarity.T, target)) / 2
        category = nn.functional.cross_entropy(logits, torch.as_tensor(labels[cats[shapes]]).repeat(2))
        loss = contrastive + config.category_weight * category
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == config.steps:
            entry = {"step": step, "contrastive": float(contrastive.detach()), "category": float(category.detach()),
                     "seconds": time.perf_counter() - start}
            if len(val_bank) >= 2:
                entry["val_top1"], entry["val_category"] = view_retrieval_accuracy(net, val_bank, val_cats)
            history.append(entry)
            log(f"step {step}/{config.steps}: contrastive {entry['contrastive']:.3f}, category {entry['category']:.3f}, "
                f"val top-1 {entry.get('val_top1', float('nan')):.3f} among {len(val_bank)}, "
                f"{entry['seconds']:.0f} s")
    net.eval()
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "evaluator": asdict(config),
        "classes": [info.categories[i] for i in present],
        "category_ids": present,
        "dataset": os.path.abspath(data),
        "dataset_sha256": sha256_file(data),
        "modality": f"point renders (pvd.semantic.views): {RENDER_POINTS} points, depth shade, radius {POINT_RADIUS_PX:g} px, "
                    "R2N2-like cameras",
        **lens,
        "train_shapes": len(bank),
        "val_shapes": len(val_bank),
        "history": history,
        "val_top1": history[-1].get("val_top1", float("nan")),
        "render_seconds": render_seconds,
        "seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return net, record


def save_evaluator(net: EvaluatorNet, record: dict[str, Any], out: str | os.PathLike) -> None:
    """Write the evaluator folder (weights.pt, then config.json with the weights' hash and provenance), atomically."""
    save_model_folder(net.state_dict(), record, out)


def load_evaluator(path: str | os.PathLike, device: torch.device | str = "cpu") -> Evaluator:
    """An evaluator folder (:func:`save_evaluator`) as an ImageEmbedder (one-line UserError if unusable)."""
    state, record = load_model_folder(path, FORMAT, FORMAT_VERSION, "semantic evaluator",
                                      f"python -m pvd.semantic train --data DATA --out {path}")
    fields = dict(record["evaluator"])
    fields["widths"] = tuple(fields["widths"])
    config = EvaluatorConfig(**fields)
    net = EvaluatorNet(len(record["classes"]), config.widths, config.embed_dim)
    net.load_state_dict(state)
    device = torch.device(device)
    name = f"evaluator {os.path.abspath(path)} (sha256 {record['weights_sha256'][:12]})"
    return Evaluator(net.to(device).eval(), config, record, name, device)
