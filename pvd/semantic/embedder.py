"""The image-embedder seam of the semantic metrics: anything that maps renders to feature vectors.

:class:`ImageEmbedder` is the protocol the metrics depend on: ``embed`` takes (B, H, W, 4)
uint8 RGBA renders (transparent background) and returns (B, D) float features; ``name``
identifies it in reports. Implementations:

- the evaluator encoder trained on the data (:mod:`pvd.semantic.evaluator`), the default;
- :class:`OpenClipEmbedder`, a user's local CLIP through ``open_clip`` with weights already on
  disk (never downloaded): ``--embedder open_clip:ViT-B-32:/path/to/weights.bin``.

:func:`load_embedder` turns either spelling into an embedder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from pvd.errors import UserError


@runtime_checkable
class ImageEmbedder(Protocol):
    """Renders -> features. ``embed``: (B, H, W, 4) uint8 RGBA -> (B, D) float array."""

    name: str

    def embed(self, images: np.ndarray) -> np.ndarray: ...


def over_white(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 4) uint8 RGBA -> (B, H, W, 3) float32 RGB in [0, 1] composited over white."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    return x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])


class OpenClipEmbedder:
    """A local CLIP image tower through ``open_clip`` (optional; not a dependency of pvd).

    model_name: an open_clip architecture (``ViT-B-32``); weights: a local checkpoint file that
    ``open_clip.create_model_and_transforms(model_name, pretrained=weights)`` reads. Renders are
    composited over white, resized and normalised by the model's own preprocessing; the features
    are the image embeddings, L2-normalised.
    """

    def __init__(self, model_name: str, weights: str, device: torch.device | str = "cpu", batch_size: int = 64):
        try:
            import open_clip
        except ImportError:
            raise UserError("the open_clip embedder needs the open_clip package (pip install open_clip_torch); "
                            "it is optional and not installed") from None
        if not Path(weights).is_file():
            raise UserError(f"{weights}: no such weights file (open_clip weights must already be on disk; "
                            "pvd never downloads them)")
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(weights))
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = f"open_clip:{model_name}:{Path(weights).resolve()}"

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        rgb = np.round(over_white(images) * 255).astype(np.uint8)
        out = []
        for start in range(0, len(rgb), self.batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(im)) for im in rgb[start : start + self.batch_size]])
            features = self.model.encode_image(batch.to(self.device)).float()
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu())
        return torch.cat(out).double().numpy()


def load_embedder(spec: str, device: torch.device | str = "cpu") -> ImageEmbedder:
    """An embedder from ``spec``: an evaluator folder (``python -m pvd.semantic train``), or
    ``open_clip:MODEL:WEIGHTS_FILE`` for a local CLIP."""
    if spec.startswith("open_clip:"):
        _, _, rest = spec.partition(":")
        model_name, sep, weights = rest.partition(":")
        if not sep or not model_name or not weights:
            raise UserError(f"--embedder {spec!r}: expected open_clip:MODEL:WEIGHTS_FILE")
        return OpenClipEmbedder(model_name, weights, device)
    from pvd.semantic.evaluator import load_evaluator

    return load_evaluator(spec, device)
