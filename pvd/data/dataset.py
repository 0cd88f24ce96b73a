"""The training Dataset over a pvd HDF5 file (the format itself is :mod:`pvd.data.hdf5`).

Separate from the format because it is one way of reading it, for torch: the seeded
per-epoch draws, the point normalisations and PointFlow's global statistics belong to how a
model sees the data, not to what a file holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import torch

from pvd.data.hdf5 import SPLITS, FileInfo, open_dataset_file
from pvd.errors import UserError

NORMALIZATIONS = ("pointflow", "unit_sphere", "bbox", "none")


def pointflow_stats(f: h5py.File, category_ids: list[int]) -> tuple[np.ndarray, float]:
    """PointFlow's global normalisation over the train split of the given categories.

    Returns (mean (3,) per axis, std: one scalar over all coordinates), exactly as PointFlow
    computes ``points.reshape(-1, 3).mean(0)`` and ``points.reshape(-1).std()`` over the
    training clouds (all their points), here from sums stored at write time.
    """
    train = SPLITS.index("train")
    total = f["stats/sum"][category_ids, train].sum(0)
    total_sq = f["stats/sumsq"][category_ids, train].sum(0)
    count = f["stats/count"][category_ids, train].sum()
    if count == 0:
        raise UserError("pointflow normalisation needs training shapes of the chosen categories; there are none")
    mean = total / count
    overall_mean = total.sum() / (3 * count)
    std = float(np.sqrt(max(total_sq.sum() / (3 * count) - overall_mean**2, 0.0)))
    return mean.astype(np.float32), std


@dataclass
class DatasetConfig:
    """How a :class:`ShapeDataset` draws samples from a pvd HDF5 file."""

    path: str = "data/synth.h5"
    categories: list[str] | None = None  # names or synsets; None: all in the file
    num_points: int = 2048  # points per sample
    normalization: str = "pointflow"  # one of NORMALIZATIONS
    images: bool = True  # return a view (image + camera) with each sample
    embedding: str | None = None  # name under embeddings/ to return instead of / besides images
    eval_view: int = 0  # the fixed view used outside training
    seed: int = 0


class ShapeDataset(torch.utils.data.Dataset):
    """Point clouds (and one view each) from a pvd HDF5 file.

    Training (``train=True``): each fetch draws ``num_points`` of the first
    ``num_train_points`` points with replacement and a random view, from a generator keyed by
    (seed, epoch, index), so a run can be replayed exactly. Otherwise the points are the fixed
    slice ``[num_train_points:][:num_points]`` (PVD's evaluation points) and the view is
    ``eval_view``.

    The file is opened lazily in each process, so the dataset is safe with DataLoader workers
    and a DistributedSampler. Each item is a dict: ``points`` (num_points, 3) float32
    normalised; ``shift`` (3,), ``scale`` () with ``original = points * scale + shift``;
    ``category`` and ``index`` (row in the file); with images: ``image`` (4, H, W) uint8 RGBA,
    ``view``, ``intrinsics`` (3, 3), ``extrinsics`` (4, 4) in the original (unnormalised) frame;
    with an embedding: ``embedding`` (D,) float32.
    """

    def __init__(self, config: DatasetConfig, split: str = "train", train: bool | None = None):
        if split not in SPLITS:
            raise UserError(f"split must be one of {SPLITS}, got {split!r}")
        if config.normalization not in NORMALIZATIONS:
            raise UserError(f"normalization must be one of {NORMALIZATIONS}, got {config.normalization!r}")
        self.config, self.split = config, split
        self.train = split == "train" if train is None else train
        self.epoch = 0
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] | None = None
        self._pid: int | None = None
        with open_dataset_file(config.path) as f:
            self.info = FileInfo.read(f)
            self.category_ids = self.info.category_ids(config.categories)
            mask = (self.info.split == SPLITS.index(split)) & np.isin(self.info.category, self.category_ids)
            self.indices = np.flatnonzero(mask)
            if config.normalization == "pointflow":
                self._global_shift, self._global_scale = pointflow_stats(f, self.category_ids)
            else:
                self._global_shift, self._global_scale = np.zeros(3, np.float32), 1.0
            if config.normalization in ("unit_sphere", "bbox"):
                self._per_shape = self._per_shape_normalization(f, config.normalization)
            if config.embedding is not None and f"embeddings/{config.embedding}" not in f:
                raise UserError(f"{config.path} has no embeddings/{config.embedding}")
        if config.images and not self.info.has_images:
            raise UserError(f"{config.path} has no images; set images=False")
        held_out = self.info.num_points - self.info.num_train_points
        if not self.train and config.num_points > held_out:
            raise UserError(f"evaluation uses the {held_out} held-out points per shape; num_points={config.num_points} is more")
        if not 0 <= config.eval_view < max(self.info.num_views, 1):
            raise UserError(f"eval_view {config.eval_view} is out of range (the file has {self.info.num_views} views)")

    def _per_shape_normalization(self, f: h5py.File, mode: str) -> tuple[np.ndarray, np.ndarray]:
        if mode == "unit_sphere":
            return f["shape_stats/centroid"][:], f["shape_stats/radius"][:]
        lo, hi = f["shape_stats/bbox_min"][:], f["shape_stats/bbox_max"][:]
        return (lo + hi) / 2, (hi - lo).max(axis=1) / 2

    def normalization_info(self) -> dict[str, Any]:
        """What to record next to any number computed on this data."""
        info: dict[str, Any] = {
            "normalization": self.config.normalization,
            "file": str(self.config.path),
            "split": self.split,
            "categories": [self.info.categories[i] for i in self.category_ids],
        }
        if self.config.normalization == "pointflow":
            info.update(mean=self._global_shift.tolist(), std=self._global_scale)
        return info

    def set_epoch(self, epoch: int) -> None:
        """Re-key the random draws (call once per epoch, like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def _h5(self) -> dict[str, h5py.Dataset]:
        # h5py handles must not cross fork(): each worker process opens its own. Dataset
        # handles are cached because each lookup by name costs about as much as a read.
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.config.path, "r")
            self._pid = os.getpid()
            names = ["points", "images", "cameras/intrinsics", "cameras/extrinsics"]
            if self.config.embedding is not None:
                names.append(f"embeddings/{self.config.embedding}")
            self._datasets = {name: self._file[name] for name in names if name in self._file}
        return self._datasets

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = state["_datasets"] = None
        return state

    def shift_scale(self, row: int) -> tuple[np.ndarray, float]:
        """The (shift (3,), scale) that normalises shape ``row`` of the file."""
        if self.config.normalization in ("unit_sphere", "bbox"):
            shifts, scales = self._per_shape
            return shifts[row], float(scales[row])
        return self._global_shift, self._global_scale

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        f, row, cfg = self._h5(), int(self.indices[item]), self.config
        info = self.info
        if self.train:
            rng = np.random.default_rng((cfg.seed, self.epoch, row))
            points = f["points"][row, : info.num_train_points]
            points = points[rng.integers(0, len(points), cfg.num_points)]
            view = int(rng.integers(0, max(info.num_views, 1)))
        else:
            start = info.num_train_points
            points = f["points"][row, start : start + cfg.num_points]
            view = cfg.eval_view
        shift, scale = self.shift_scale(row)
        sample = {
            "points": torch.from_numpy((points - shift) / scale).float(),
            "shift": torch.as_tensor(shift, dtype=torch.float32),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "category": torch.tensor(info.category[row]),
            "index": torch.tensor(row),
        }
        if cfg.images:
            sample["image"] = torch.from_numpy(f["images"][row, view]).permute(2, 0, 1)
            sample["view"] = torch.tensor(view)
            sample["intrinsics"] = torch.from_numpy(f["cameras/intrinsics"][row, view])
            sample["extrinsics"] = torch.from_numpy(f["cameras/extrinsics"][row, view])
        if cfg.embedding is not None:
            emb = f[f"embeddings/{cfg.embedding}"]
            sample["embedding"] = torch.from_numpy(np.asarray(emb[row, view] if emb.ndim == 3 else emb[row], np.float32))
        return sample
