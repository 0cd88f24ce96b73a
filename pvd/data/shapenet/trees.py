"""Finding one's way in a source tree: listing folders, recognising a tree, naming the file's source.

Shared by the three readers: a root that is not the tree a reader expects gets a one-line
error saying what it looks like instead (another ShapeNet tree, or a subfolder that would do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from pvd.data.hdf5 import SPLITS
from pvd.data.shapenet.categories import SYNSET_RE, category_name
from pvd.errors import UserError


def subdirs(path: Path) -> list[Path]:
    """The visible subfolders of ``path``, sorted (none if it cannot be listed)."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def synset_dirs(root: Path) -> list[Path]:
    """The subfolders of ``root`` named like a synset id (eight digits)."""
    return [p for p in subdirs(root) if SYNSET_RE.match(p.name)]


def _looks_like(root: Path) -> str | None:
    """A guess at which known tree ``root`` is, from a few entries (for error hints)."""
    for synset in synset_dirs(root)[:3]:
        if any((synset / s).is_dir() for s in SPLITS):
            return "a ShapeNetCore.v2.PC15k tree (use the pc15k command)"
        for model in subdirs(synset)[:3]:
            if (model / "models" / "model_normalized.obj").is_file():
                return "a ShapeNetCore.v2 mesh tree (use the core command)"
            if (model / "rendering").is_dir():
                return "a ShapeNetRendering (3D-R2N2) tree (pass it to pc15k with --r2n2)"
            if (model / "model.obj").is_file():
                return "a ShapeNetCore.v1 tree (only v2's models/model_normalized.obj layout is read)"
    return None


def check_root(root: str | os.PathLike, expected: str, valid) -> Path:
    """``root`` as a Path if ``valid(root)``; otherwise a UserError naming what was expected."""
    path = Path(root)
    if not path.exists():
        raise UserError(f"{path} does not exist (expected {expected})")
    if not path.is_dir():
        raise UserError(f"{path} is not a folder (expected {expected})")
    if valid(path):
        return path
    hint = _looks_like(path)
    if hint is not None:
        hint = f"; it looks like {hint}"
    else:
        inner = next((d for d in subdirs(path) if valid(d)), None)
        hint = f"; its subfolder {inner.name!r} does: pass {inner}" if inner is not None else ""
    raise UserError(f"{path} does not look like {expected}{hint}")


def layout_categories(synsets: Sequence[str]) -> dict[str, str]:
    """The file's categories: name -> synset (a synset whose name is taken keeps its id)."""
    categories: dict[str, str] = {}
    for synset in synsets:
        name = category_name(synset)
        categories[name if name not in categories else synset] = synset
    return categories


def source_attrs(kind: str, root: Path, options: dict) -> tuple[str, dict]:
    """The file's ``source`` text and the attributes recording the converter and its options."""
    from pvd import __version__

    source = f"shapenet {kind} {root.resolve()}"
    extra = {"converter": "pvd.data.shapenet", "converter_version": __version__, "source_kind": kind, "source_root": str(root.resolve()), "options": json.dumps(options, sort_keys=True)}
    return source, extra
