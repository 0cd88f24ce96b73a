"""Semantic alignment metrics: does an output, seen from a new angle, look like its input?

- :mod:`pvd.semantic.views`: the one render modality (points, held-out cameras);
- :mod:`pvd.semantic.embedder`: the :class:`ImageEmbedder` protocol, a local CLIP adapter;
- :mod:`pvd.semantic.evaluator`: the default embedder, trained on the data
  (``python -m pvd.semantic train --data DATA``);
- :mod:`pvd.semantic.alignment`: R-precision and render KID, with their reference rows.
"""

from pvd.semantic.alignment import AlignmentReference, alignment_scores, build_reference, floor_sources
from pvd.semantic.embedder import ImageEmbedder, OpenClipEmbedder, load_embedder

__all__ = ["AlignmentReference", "ImageEmbedder", "OpenClipEmbedder", "alignment_scores", "build_reference",
           "floor_sources", "load_embedder"]
