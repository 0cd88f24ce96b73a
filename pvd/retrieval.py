"""Retrieval baselines for single-view reconstruction: answer with a training shape.

- Retrieval (Tatarchenko et al. 2019, "What do single-view 3D reconstruction networks
  learn?"): embed the input image with the same image encoder the PVD run conditions on, and
  answer with the training shape one of whose views is nearest to it (cosine or Euclidean
  distance between the encoder's global vectors; a shape's distance is the minimum over its
  views). The training views are embedded once and cached on disk.
- Oracle: the training shape nearest to the ground truth in Chamfer distance. No method that
  answers with a training shape can do better on that metric: an upper bound for retrieval.

Both answer with world-frame clouds: the stored points of the chosen training shape (the
dataset's frame, in which the ground truth and the SDS baseline's outputs also live).

    bank = embedding_bank(net.encoder, "data/synth.h5", "train", cache="out/cache/embeddings.npz")
    rows, dist = nearest_by_embedding(encode_images(net.encoder, images), bank.embeddings, "cosine")
    clouds = read_clouds("data/synth.h5", bank.rows[rows], start=10000, count=2048)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvd.data.hdf5 import SPLITS, FileInfo, open_dataset_file
from pvd.errors import UserError
from pvd.io import atomic_path
from pvd.metrics.distances import pairwise_chamfer

METRICS = ("cosine", "l2")
CACHE_FORMAT = 1


# --- distances -------------------------------------------------------------------------------

def embedding_distances(query: Any, bank: Any, metric: str = "cosine") -> np.ndarray:
    """Distance from each query (Q, D) to each bank shape (S, V, D) or (S, D) -> (Q, S) float64.

    ``"cosine"``: 1 - cos(q, b); ``"l2"``: ||q - b||. With views, a shape's distance is the
    minimum over its V views.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    q = np.asarray(query, dtype=np.float64)
    b = np.asarray(bank, dtype=np.float64)
    if b.ndim == 2:
        b = b[:, None]
    if q.ndim != 2 or b.ndim != 3 or q.shape[1] != b.shape[2] or 0 in b.shape[:2] or len(q) == 0:
        raise ValueError(f"query must be (Q, D) and bank (S, V, D) or (S, D) with one D, got {q.shape} and {b.shape}")
    s, v, d = b.shape
    flat = b.reshape(s * v, d)
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        bn = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        dist = 1.0 - qn @ bn.T
    else:
        sq = (q * q).sum(1)[:, None] + (flat * flat).sum(1)[None] - 2 * q @ flat.T
        dist = np.sqrt(np.maximum(sq, 0.0))
    return dist.reshape(len(q), s, v).min(axis=2)


def nearest_by_embedding(query: Any, bank: Any, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """(index (Q,) into the bank's shapes, distance (Q,)) of each query's nearest shape; ties go to the lower index."""
    dist = embedding_distances(query, bank, metric)
    index = dist.argmin(axis=1)
    return index, dist[np.arange(len(dist)), index]


def oracle_nearest(truth: Any, candidates: Any, convention: str = "squared",
                   workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(index (Q,) into candidates, Chamfer distance (Q,)) of the candidate cloud (S, K, 3) nearest to
    each ground truth (Q, M, 3), by ``pvd.metrics.pairwise_chamfer`` (ties go to the lower index)."""
    matrix = pairwise_chamfer(truth, candidates, convention, workers=workers).numpy()
    index = matrix.argmin(axis=1)
    return index, matrix[np.arange(len(matrix)), index]


# --- the data --------------------------------------------------------------------------------

def split_rows(path: str | os.PathLike, split: str) -> np.ndarray:
    """The file rows of a split, in file order."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    with open_dataset_file(path) as f:
        return np.flatnonzero(FileInfo.read(f).split == SPLITS.index(split))


def read_clouds(path: str | os.PathLike, rows: Sequence[int], start: int, count: int) -> np.ndarray:
    """Stored points ``[start : start + count]`` of each row: (len(rows), count, 3) float32, world frame."""
    with open_dataset_file(path) as f:
        total = f["points"].shape[1]
        if not (0 <= start and count >= 1 and start + count <= total):
            raise UserError(f"points [{start}:{start + count}] do not fit the file's {total} points per shape")
        ds = f["points"]
        if len(rows) == 0:
            return np.zeros((0, count, 3), np.float32)
        return np.stack([ds[int(r), start : start + count] for r in rows]).astype(np.float32)


# --- embeddings ------------------------------------------------------------------------------

@torch.no_grad()
def encode_images(encoder: Callable[[torch.Tensor], Any], images: Any, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """(N, 4, H, W) uint8 RGBA images -> (N, D) float32 global vectors (the first output of ``encoder``)."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[1] != 4:
        raise ValueError(f"images must be (N, 4, H, W) RGBA, got {tuple(x.shape)}")
    out = []
    for i in range(0, len(x), batch_size):
        result = encoder(x[i : i + batch_size].to(device))
        vector = result[0] if isinstance(result, (tuple, list)) else result
        out.append(vector.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """SHA-256 of the encoder's class and state (names, shapes, values): names the weights exactly."""
    digest = hashlib.sha256(type(encoder).__name__.encode())
    for name, value in sorted(encoder.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def _data_fingerprint(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class EmbeddingBank:
    """The embedded views of one split: rows (S,) file rows; embeddings (S, V, D) float32."""

    rows: np.ndarray
    embeddings: np.ndarray
    key: str  # what they were computed from (encoder weights, data file, split)
    cached: bool = False  # True when read from the cache file


def embedding_bank(encoder: torch.nn.Module, path: str | os.PathLike, split: str = "train", *,
                   cache: str | os.PathLike | None = None, batch_size: int = 256, device: torch.device | str = "cpu",
                   progress: Callable[[int], None] | None = None) -> EmbeddingBank:
    """Embed every view of every shape of ``split`` with ``encoder`` (its global vector).

    With ``cache`` (an .npz path) the result is read from there when it was computed from the
    same encoder weights, data file (path, size, modification time) and split, and otherwise
    computed and written there atomically. ``progress(k)`` after each k shapes embedded.
    """
    key = hashlib.sha256(f"{CACHE_FORMAT}|{encoder_fingerprint(encoder)}|{_data_fingerprint(path)}|{split}".encode()).hexdigest()
    if cache is not None and Path(cache).is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return EmbeddingBank(z["rows"], z["embeddings"], key, cached=True)
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign: recompute and replace
    rows = split_rows(path, split)
    if len(rows) == 0:
        raise UserError(f"{path} has no {split} shapes to retrieve from")
    was_training = encoder.training
    encoder.eval()
    chunks = []
    try:
        with open_dataset_file(path) as f:
            if "images" not in f:
                raise UserError(f"{path} has no rendered views to embed")
            images = f["images"]
            per = max(1, batch_size // images.shape[1])
            for i in range(0, len(rows), per):
                block = np.stack([images[int(r)] for r in rows[i : i + per]])  # (b, V, H, W, 4)
                b, v = block.shape[:2]
                flat = np.ascontiguousarray(block.reshape(b * v, *block.shape[2:]).transpose(0, 3, 1, 2))
                chunks.append(encode_images(encoder, flat, batch_size, device).reshape(b, v, -1))
                if progress is not None:
                    progress(b)
    finally:
        encoder.train(was_training)
    bank = EmbeddingBank(rows, np.concatenate(chunks).astype(np.float32), key)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, key=np.array(key), rows=bank.rows, embeddings=bank.embeddings)
    return bank


# --- the two baselines -----------------------------------------------------------------------

@dataclass
class Answer:
    """One baseline's answers for Q queries: rows (Q,) the chosen training shapes' file rows,
    score (Q,) their embedding distance (retrieval) or Chamfer distance (oracle), clouds
    (Q, K, 3) their stored points, world frame."""

    rows: np.ndarray
    score: np.ndarray
    clouds: np.ndarray


def retrieve(query: Any, bank: EmbeddingBank, path: str | os.PathLike, *, start: int, count: int,
             metric: str = "cosine") -> Answer:
    """The training shape nearest to each query embedding (Q, D) and its points ``[start:start+count]``."""
    index, dist = nearest_by_embedding(query, bank.embeddings, metric)
    rows = bank.rows[index]
    return Answer(rows, dist, read_clouds(path, rows, start, count))


def oracle(truth: Any, candidate_rows: np.ndarray, candidates: np.ndarray, *, convention: str = "squared",
           workers: int | None = None) -> Answer:
    """The candidate (rows (S,), clouds (S, K, 3), world frame) nearest to each ground truth (Q, M, 3) in Chamfer distance."""
    index, cd = oracle_nearest(truth, candidates, convention, workers)
    return Answer(np.asarray(candidate_rows)[index], cd, np.asarray(candidates)[index])
