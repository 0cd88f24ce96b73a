"""P-FID and P-KID: Frechet and kernel distances between point-cloud classifier features.

Point-E's idea (Nichol et al. 2022): a classifier trained on the dataset's categories maps
each cloud to the activations of its penultimate layer; P-FID is the Frechet distance between
Gaussians fitted to the sample and reference features, P-KID the kernel inception distance
(unbiased MMD^2 with the cubic polynomial kernel) between them. Point-E used PointNet++;
here a PointNet (shared per-point MLP + max pool, Qi et al. 2017) is trained per dataset:

    python -m pvd.pfid train --data data/synth.h5 --out data/synth.pfid

Every cloud is centred and scaled to the unit sphere before the classifier sees it, so the
features do not depend on the frame the samples were saved in (nor on their overall scale).
The classifier is saved as ``weights.pt`` (a ``state_dict``, loaded with
``torch.load(weights_only=True)``) and ``config.json`` (architecture, classes, dataset,
training summary and the weights' SHA-256), each written to a temporary name and renamed
(:mod:`pvd.model_folder`); the two distances live in :mod:`pvd.metrics.feature_distance`.
Values are comparable only between runs that use the same classifier files.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pvd.data.dataset import DatasetConfig, ShapeDataset
from pvd.errors import UserError, raise_if_interrupted, run_command
from pvd.metrics.feature_distance import frechet_distance, kernel_distance
from pvd.model_folder import load_model_folder, save_model_folder

FORMAT = "pvd-pfid-classifier"
FORMAT_VERSION = 1
PFID_CONVENTION = ("Frechet distance ||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2)) between Gaussians "
                   "fitted (covariance with ddof=1) to the penultimate-layer features of a PointNet classifier trained "
                   "on the dataset's categories; P-KID: unbiased MMD^2 of the same features with kernel "
                   "(x.y / d + 1)^3; clouds are normalised to the unit sphere first")


@dataclass
class ClassifierConfig:
    """The PointNet classifier and how it is trained."""

    widths: tuple[int, ...] = (64, 128, 256)  # shared per-point MLP, then max pool
    feature_dim: int = 256  # the penultimate layer, whose activations are the features
    num_points: int = 2048  # points per training cloud
    epochs: int = 8  # ~2 min on 2 CPU cores for the built-in data (800 training shapes)
    batch_size: int = 32
    lr: float = 1e-3  # Adam; halved at 1/2 and 3/4 of the epochs
    scale_jitter: float = 0.2  # random anisotropic scale in [1 - s, 1 + s] per axis when training
    seed: int = 0


def unit_sphere(points: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) clouds centred at their centroids with the farthest point at distance 1."""
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1).clamp_min(1e-12)
    return centred / radius.reshape(-1, 1, 1)


class PointNetClassifier(nn.Module):
    """PointNet: per-point MLP (Linear, LayerNorm, ReLU), max pool, a feature layer, a linear classifier.

    LayerNorm acts on each point's channels alone, so a cloud's features never depend on the
    other clouds of its batch (as BatchNorm's would in training mode); it made training on
    small datasets converge in about half the epochs.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (64, 128, 256), feature_dim: int = 256):
        super().__init__()
        layers, previous = [], 3
        for width in widths:
            layers += [nn.Linear(previous, width), nn.LayerNorm(width), nn.ReLU()]
            previous = width
        self.point_mlp = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Linear(previous, feature_dim), nn.ReLU())
        self.classify = nn.Linear(feature_dim, num_classes)

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) clouds in any frame -> (B, feature_dim) penultimate activations."""
        return self.feature(self.point_mlp(unit_sphere(points)).amax(dim=1))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, num_classes) logits."""
        return self.classify(self.features(points))


# --- the classifier on disk ------------------------------------------------------------------

@dataclass
class Classifier:
    """A loaded classifier and its record."""

    model: PointNetClassifier
    config: ClassifierConfig
    record: dict[str, Any] = field(default_factory=dict)  # the whole config.json
    path: str = ""

    @torch.no_grad()
    def features(self, clouds: Any, batch_size: int = 64) -> np.ndarray:
        """(S, N, 3) clouds -> (S, feature_dim) float64 features."""
        x = torch.as_tensor(clouds, dtype=torch.float32)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"clouds must be (S, N, 3), got {tuple(x.shape)}")
        self.model.eval()
        return torch.cat([self.model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).double().numpy()


def save_classifier(model: PointNetClassifier, record: dict[str, Any], out: str | os.PathLike) -> None:
    """Write the classifier folder (weights.pt, then config.json with the weights' hash), atomically."""
    save_model_folder(model.state_dict(), record, out)


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Load a classifier folder written by :func:`save_classifier` (one-line UserError if unusable)."""
    state, record = load_model_folder(path, FORMAT, FORMAT_VERSION, "P-FID classifier",
                                      f"python -m pvd.pfid train --data DATA --out {path}")
    fields = dict(record["classifier"])
    fields["widths"] = tuple(fields["widths"])
    config = ClassifierConfig(**fields)
    model = PointNetClassifier(len(record["classes"]), config.widths, config.feature_dim)
    model.load_state_dict(state)
    model.eval()
    return Classifier(model, config, record, str(path))


def pfid_metrics(classifier: Classifier, samples: Any, references: Any) -> dict[str, Any]:
    """P-FID and P-KID of samples (S, N, 3) against references (R, N, 3), with their convention."""
    fs, fr = classifier.features(samples), classifier.features(references)
    return {
        "P-FID": frechet_distance(fs, fr),
        "P-KID": kernel_distance(fs, fr),
        "convention": {"P-FID": PFID_CONVENTION, "classifier": classifier.path,
                       "classifier_sha256": classifier.record.get("weights_sha256", "")},
    }


# --- training --------------------------------------------------------------------------------

def _dataset(data: str, categories: list[str] | None, split: str, num_points: int, seed: int,
             train: bool) -> ShapeDataset:
    return ShapeDataset(DatasetConfig(path=data, categories=categories, num_points=num_points,
                                      normalization="none", images=False, seed=seed), split, train=train)


@torch.no_grad()
def _accuracy(model: nn.Module, dataset: ShapeDataset, labels: dict[int, int], batch_size: int) -> float:
    if len(dataset) == 0:
        return float("nan")
    model.eval()
    correct = 0
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        target = torch.tensor([labels[int(c)] for c in batch["category"]])
        correct += int((model(batch["points"]).argmax(1) == target).sum())
    return correct / len(dataset)


def train_classifier(data: str, config: ClassifierConfig, categories: list[str] | None = None,
                     log: Any = print) -> tuple[PointNetClassifier, dict[str, Any]]:
    """Train the classifier on the train split of ``data``; returns (model, record for config.json)."""
    torch.manual_seed(config.seed)
    train = _dataset(data, categories, "train", config.num_points, config.seed, train=True)
    val = _dataset(data, categories, "val", config.num_points, config.seed, train=False)
    if len(train) == 0:
        raise UserError(f"{data} has no training shapes in the chosen categories")
    names = [train.info.categories[i] for i in train.category_ids]
    if len(names) < 2:
        raise UserError("the classifier needs at least two categories")
    labels = {c: k for k, c in enumerate(train.category_ids)}
    model = PointNetClassifier(len(names), config.widths, config.feature_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    milestones = sorted({max(1, config.epochs // 2), max(1, (3 * config.epochs) // 4)})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.5)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    history = []
    for epoch in range(config.epochs):
        train.set_epoch(epoch)
        model.train()
        loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=len(train) > config.batch_size,
                                             generator=generator)
        total, correct, count = 0.0, 0, 0
        for batch in loader:
            raise_if_interrupted()
            points = batch["points"]
            scale = 1 + config.scale_jitter * (2 * torch.rand(len(points), 1, 3, generator=generator) - 1)
            target = torch.tensor([labels[int(c)] for c in batch["category"]])
            logits = model(points * scale)
            loss = nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(points)
            correct += int((logits.argmax(1) == target).sum())
            count += len(points)
        schedule.step()
        val_acc = _accuracy(model, val, labels, config.batch_size)
        history.append({"epoch": epoch + 1, "loss": total / count, "train_accuracy": correct / count, "val_accuracy": val_acc})
        log(f"epoch {epoch + 1}/{config.epochs}: loss {total / count:.4f}, train acc {correct / count:.3f}, "
            f"val acc {val_acc:.3f}, {time.perf_counter() - start:.0f} s")
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classifier": asdict(config),
        "classes": names,
        "synsets": [train.info.synsets[i] for i in train.category_ids],
        "dataset": os.path.abspath(data),
        "features": f"penultimate layer ({config.feature_dim} ReLU activations) of clouds normalised to the unit sphere",
        "train_shapes": len(train),
        "val_shapes": len(val),
        "val_accuracy": history[-1]["val_accuracy"] if history else float("nan"),
        "history": history,
        "seconds": time.perf_counter() - start,
        "torch": torch.__version__,
    }
    model.eval()
    return model, record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pvd.pfid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the P-FID classifier of a dataset")
    train.add_argument("--data", required=True, help="pvd HDF5 dataset")
    train.add_argument("--out", help="output folder (default: the dataset path with suffix .pfid)")
    train.add_argument("--categories", nargs="+", help="category names or synsets (default: all in the file)")
    defaults = ClassifierConfig()
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--num-points", type=int, default=defaults.num_points)
    train.add_argument("--widths", type=int, nargs="+", default=list(defaults.widths))
    train.add_argument("--feature-dim", type=int, default=defaults.feature_dim)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.num_points < 1 or args.feature_dim < 1 or min(args.widths) < 1:
        raise UserError("epochs, batch size, points, widths and feature dim must be positive")
    config = ClassifierConfig(widths=tuple(args.widths), feature_dim=args.feature_dim, num_points=args.num_points,
                              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.data).with_suffix(".pfid")
    model, record = train_classifier(args.data, config, args.categories)
    save_classifier(model, record, out)
    print(f"saved {out}/weights.pt and config.json: {len(record['classes'])} classes, val accuracy "
          f"{record['val_accuracy']:.3f}, {record['seconds']:.0f} s")


if __name__ == "__main__":
    run_command(main)
