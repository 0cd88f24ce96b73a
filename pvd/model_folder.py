"""A small trained network on disk: ``weights.pt`` (a state dict) beside ``config.json`` (its record).

The record carries the format, the architecture and training config, the provenance (dataset
file and its hash, seed, torch version) and the SHA-256 of the weights, so a metric's network
is identified by its files alone and a mixed or interrupted save is refused on load. Both files
are written to temporary names and renamed; the weights load with ``torch.load(weights_only=True)``.
Used by the P-FID classifier (:mod:`pvd.pfid`) and the evaluator image encoder (:mod:`pvd.semantic`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from pvd.errors import UserError
from pvd.io import atomic_path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model_folder(state_dict: dict[str, torch.Tensor], record: dict[str, Any], out: str | os.PathLike) -> None:
    """Write ``out/weights.pt`` then ``out/config.json`` (``record`` plus the weights' hash), each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "weights.pt") as tmp:
        torch.save(state_dict, tmp)
    record = dict(record, weights_sha256=sha256_file(out / "weights.pt"))
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def load_model_folder(path: str | os.PathLike, fmt: str, version: int, what: str, train_hint: str
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, record) of a folder written by :func:`save_model_folder`; a one-line UserError
    when it is missing, of another format (``fmt`` v``version``), or its weights fail the hash.
    what: the network's name for messages ("P-FID classifier"); train_hint: the command that
    makes such a folder."""
    path = Path(path)
    config_path, weights_path = path / "config.json", path / "weights.pt"
    if not config_path.is_file() or not weights_path.is_file():
        raise UserError(f"{path} is not a {what} folder (it needs config.json and weights.pt; train one with: "
                        f"{train_hint})")
    try:
        record = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{config_path} is unreadable ({e})") from None
    if not isinstance(record, dict) or record.get("format") != fmt or record.get("format_version") != version:
        raise UserError(f"{config_path} is not a {what} record ({fmt} v{version})")
    if sha256_file(weights_path) != record.get("weights_sha256"):
        raise UserError(f"{weights_path} does not match {config_path} (interrupted or mixed save?); train again")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{weights_path}: not readable as plain weights ({type(e).__name__})") from None
    return state, record
