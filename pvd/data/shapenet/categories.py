"""ShapeNet's categories and the per-shape split and seed, as every reader names and keys shapes.

The names of the synsets (with common aliases) and how a ``--categories`` argument selects
them; a shape's split (when its tree has none) and its random seed are hashed from its model
id, so they stay the same across runs, machines and trees.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

from pvd.errors import UserError

# The 13 categories of 3D-R2N2 carry R2N2's names; the other ShapeNetCore.v2 synsets carry
# PointFlow's names (its loader's synsetid_to_cate), so that PC15k users find theirs.
SYNSET_NAMES: dict[str, str] = {
    # 3D-R2N2's 13
    "02691156": "airplane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car",
    "03001627": "chair",
    "03211117": "display",
    "03636649": "lamp",
    "03691459": "loudspeaker",
    "04090263": "rifle",
    "04256520": "sofa",
    "04379243": "table",
    "04401088": "telephone",
    "04530566": "watercraft",
    # the rest of ShapeNetCore.v2 (55 synsets in all)
    "02747177": "can",
    "02773838": "bag",
    "02801938": "basket",
    "02808440": "bathtub",
    "02818832": "bed",
    "02843684": "birdhouse",
    "02871439": "bookshelf",
    "02876657": "bottle",
    "02880940": "bowl",
    "02924116": "bus",
    "02942699": "camera",
    "02946921": "tin_can",
    "02954340": "cap",
    "02992529": "cellphone",
    "03046257": "clock",
    "03085013": "keyboard",
    "03207941": "dishwasher",
    "03261776": "earphone",
    "03325088": "faucet",
    "03337140": "file",
    "03467517": "guitar",
    "03513137": "helmet",
    "03593526": "jar",
    "03624134": "knife",
    "03642806": "laptop",
    "03710193": "mailbox",
    "03759954": "microphone",
    "03761084": "microwave",
    "03790512": "motorcycle",
    "03797390": "mug",
    "03928116": "piano",
    "03938244": "pillow",
    "03948459": "pistol",
    "03991062": "pot",
    "04004475": "printer",
    "04074963": "remote_control",
    "04099429": "rocket",
    "04225987": "skateboard",
    "04330267": "stove",
    "04460130": "tower",
    "04468005": "train",
    "04554684": "washer",
}
# Other names in use for the same synsets (PointFlow's for R2N2's categories, and common ones).
CATEGORY_ALIASES: dict[str, str] = {
    "monitor": "03211117",
    "speaker": "03691459",
    "vessel": "04530566",
    "boat": "04530566",
    "plane": "02691156",
    "aeroplane": "02691156",
}
SYNSET_RE = re.compile(r"^\d{8}$")


def category_name(synset: str) -> str:
    """The category name of a synset id; unknown synsets keep the id as their name."""
    return SYNSET_NAMES.get(synset, synset)


def resolve_categories(spec: str | Sequence[str] | None, available: Sequence[str], root: Path) -> list[str]:
    """The synsets chosen by ``spec`` (names, aliases or synset ids), in ``available`` order.

    spec: comma-separated string or list; None selects every available synset.
    Raises UserError for an unknown name or a category that ``root`` does not hold.
    """
    if spec is None:
        return list(available)
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not tokens:
        raise UserError("--categories is empty")
    by_name = {name: synset for synset, name in SYNSET_NAMES.items()} | CATEGORY_ALIASES
    wanted = []
    for token in tokens:
        synset = token if SYNSET_RE.match(token) else by_name.get(token.lower())
        if synset is None:
            raise UserError(f"unknown category {token!r} (use a name such as airplane or chair, or an 8-digit synset id)")
        if synset not in available:
            raise UserError(f"category {token!r} (synset {synset}) has no folder in {root}")
        wanted.append(synset)
    return [s for s in available if s in wanted]


DEFAULT_SPLIT_RATIOS = (0.7, 0.1, 0.2)  # ShapeNet's official train/val/test proportions


def parse_split_ratios(text: str) -> tuple[float, float, float]:
    """'70,10,20' or '0.7,0.1,0.2' -> normalised (train, val, test) fractions."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise UserError(f"--split-ratios must be three non-negative numbers such as 70,10,20, got {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def hash_split(key: str, ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS) -> str:
    """Split of a shape from a hash of its key (the model id): stable across runs and trees."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    if u < ratios[0]:
        return "train"
    return "val" if u < ratios[0] + ratios[1] else "test"


def model_seed(key: str) -> int:
    """Per-shape random seed derived from its key (CRC-32 of the UTF-8 bytes)."""
    return zlib.crc32(key.encode())
