"""The category registry: each category's synset, parameter table and builder, and the entry points.

Each category has a table of continuous parameter ranges and discrete variants
(``CATEGORY_SPECS``) and a builder that turns a parameter dict into parts without drawing
anything itself, so ``build_shape(category, shape.params)`` rebuilds the same shape. Parameter
values are in the builder's units, before normalisation: metres for chairs, tables and cars,
fractions of the fuselage length (airplane) or of the nominal lamp height (lamp), angles in
degrees, ``*_ratio`` / ``*_frac`` values relative to what their comment says. The generated
shape's params add ``norm_scale``: builder length x norm_scale = normalised length.

The registry is the one module that knows every category; the builders it names know only
their own proportions, and the dataset writer knows only ``generate_shape``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pvd.data.synthetic import airplane, car, chair, lamp, table
from pvd.data.synthetic.parts import ConvexPart, SyntheticShape

CATEGORIES: dict[str, str] = {
    "airplane": "02691156",
    "chair": "03001627",
    "car": "02958343",
    "table": "04379243",
    "lamp": "03636649",
}


@dataclass(frozen=True)
class CategorySpec:
    """How one category is drawn: continuous ranges (uniform), discrete variants (uniform) and
    a builder from a parameter dict to parts in builder units; ``resolve`` makes drawn
    variants consistent (e.g. no stretchers under a pedestal)."""

    synset: str
    ranges: dict[str, tuple[float, float]]
    choices: dict[str, tuple]
    build: Callable[[dict], list[ConvexPart]]
    resolve: Callable[[dict], None] | None = None


CATEGORY_SPECS: dict[str, CategorySpec] = {
    "airplane": CategorySpec(CATEGORIES["airplane"], ranges=airplane.RANGES, choices=airplane.CHOICES, build=airplane.build),
    "chair": CategorySpec(CATEGORIES["chair"], ranges=chair.RANGES, choices=chair.CHOICES, build=chair.build, resolve=chair.resolve),
    "car": CategorySpec(CATEGORIES["car"], ranges=car.RANGES, choices=car.CHOICES, build=car.build),
    "table": CategorySpec(CATEGORIES["table"], ranges=table.RANGES, choices=table.CHOICES, build=table.build, resolve=table.resolve),
    "lamp": CategorySpec(CATEGORIES["lamp"], ranges=lamp.RANGES, choices=lamp.CHOICES, build=lamp.build),
}

# Public views of the tables: continuous ranges and discrete variants per category.
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {k: s.ranges for k, s in CATEGORY_SPECS.items()}
PARAM_CHOICES: dict[str, dict[str, tuple]] = {k: s.choices for k, s in CATEGORY_SPECS.items()}


def _spec(category: str) -> CategorySpec:
    if category not in CATEGORY_SPECS:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORY_SPECS)}")
    return CATEGORY_SPECS[category]


def sample_params(category: str, rng: np.random.Generator) -> dict:
    """Draw one parameter dict (plain floats, ints and strings) for a category."""
    spec = _spec(category)
    u = rng.random(len(spec.ranges))
    params = {k: float(lo + (hi - lo) * x) for (k, (lo, hi)), x in zip(spec.ranges.items(), u)}
    picks = rng.integers(0, [len(options) for options in spec.choices.values()])
    params.update({k: options[int(i)] for (k, options), i in zip(spec.choices.items(), picks)})
    if spec.resolve is not None:
        spec.resolve(params)
    return params


def build_shape(category: str, params: dict) -> SyntheticShape:
    """Build a category's parts from params and normalise (bbox centre at 0, bbox diagonal 1)."""
    parts = _spec(category).build(params)
    vertices = np.concatenate([p.vertices for p in parts])
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    scale = 1.0 / float(np.linalg.norm(hi - lo))
    centre = 0.5 * (lo + hi)
    params = {k: v for k, v in params.items() if k != "norm_scale"}
    params["norm_scale"] = scale
    return SyntheticShape(category, [p.scaled(scale, centre) for p in parts], params)


def generate_shape(category: str, rng: np.random.Generator) -> SyntheticShape:
    """A random shape of one category, deterministic given the generator's state."""
    return build_shape(category, sample_params(category, rng))
