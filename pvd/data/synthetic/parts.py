"""Convex parts and the shapes made of them: the geometry every synthetic category shares.

Every shape is a union of solid convex parts (boxes, tapered prisms, swept wings, faceted
cylinders, cones and domes), each stored as its convex hull: vertices, outward-wound triangles
and the half-space planes ``n . x + d <= 0`` that bound it. The union's outer surface is
sampled exactly: triangles are drawn by area and a sample that lies strictly inside any part
is rejected, so samples cover the exposed surface uniformly and none lies inside the solid.
Parts that touch always interpenetrate a little (never coplanar contact faces), so contact
interfaces are strictly inside a neighbour and rejected.

Besides the two classes this module holds the part vocabulary (``PART_NAMES``,
``THIN_PARTS``) and the primitives the category builders compose (in builder units, each
returning points or a ConvexPart), so that a builder is only its proportions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.spatial import ConvexHull

PART_NAMES: tuple[str, ...] = (
    # airplane
    "fuselage", "wing", "horizontal_tail", "vertical_tail", "engine",
    # chair and table (leg, pedestal and stretcher are shared)
    "seat", "backrest", "back_frame", "back_slat", "armrest", "leg", "pedestal", "stretcher",
    "tabletop", "apron", "shelf",
    # car
    "body", "cabin", "wheel", "cargo_bed",
    # lamp
    "base", "pole", "arm", "shade",
)

# Bar- and blade-like parts whose smallest dimension is a few percent of the object: the
# structures point-cloud generators tend to lose.
THIN_PARTS: frozenset[str] = frozenset({
    "wing", "horizontal_tail", "vertical_tail", "back_frame", "back_slat", "armrest", "leg",
    "stretcher", "pole", "arm",
})

_PART_INDEX = {name: i for i, name in enumerate(PART_NAMES)}
X, Y, Z = np.eye(3)  # unit axes


@dataclass
class ConvexPart:
    """One solid convex part.

    vertices: (K, 3) float64 hull vertices; faces: (F, 3) int64 triangles wound
    counter-clockwise seen from outside; planes: (M, 4) float64 distinct facet planes
    ``(n, d)`` with unit outward ``n``: a point x is inside iff ``n . x + d <= 0`` for all rows.
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    planes: np.ndarray

    def __post_init__(self) -> None:
        if self.name not in _PART_INDEX:
            raise ValueError(f"unknown part name {self.name!r}; add it to PART_NAMES")

    @classmethod
    def from_points(cls, name: str, points: np.ndarray) -> ConvexPart:
        """The convex hull of (N, 3) points (any order, interior points allowed)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        hull = ConvexHull(points)
        remap = np.full(len(points), -1, dtype=np.int64)
        remap[hull.vertices] = np.arange(len(hull.vertices))
        vertices = points[hull.vertices]
        faces = remap[hull.simplices]
        # qhull's simplices have arbitrary winding; its facet equations are outward.
        tri = vertices[faces]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        flip = np.einsum("ij,ij->i", normals, hull.equations[:, :3]) < 0
        faces[flip] = faces[flip][:, ::-1]
        # Triangles of one flat facet share its plane; keep each plane once for inside tests.
        _, first = np.unique(np.round(hull.equations, 9), axis=0, return_index=True)
        return cls(name, vertices, faces, hull.equations[np.sort(first)])

    @property
    def label(self) -> int:
        """Index of this part's name in PART_NAMES."""
        return _PART_INDEX[self.name]

    def mirrored_x(self) -> ConvexPart:
        """The mirror image in the plane x = 0 (the left twin of a right-hand part)."""
        flip = np.array([-1.0, 1.0, 1.0])
        planes = self.planes.copy()
        planes[:, 0] *= -1.0
        return ConvexPart(self.name, self.vertices * flip, self.faces[:, ::-1].copy(), planes)

    def scaled(self, scale: float, centre: np.ndarray) -> ConvexPart:
        """The part under ``x -> (x - centre) * scale`` (scale > 0)."""
        planes = self.planes.copy()
        planes[:, 3] = scale * (planes[:, 3] + planes[:, :3] @ centre)
        return ConvexPart(self.name, (self.vertices - centre) * scale, self.faces, planes)


@dataclass
class SyntheticShape:
    """A union of convex parts in the canonical frame.

    params: JSON-serialisable generator parameters (units: see :mod:`pvd.data.synthetic.categories`).
    """

    category: str
    parts: list[ConvexPart]
    params: dict = field(default_factory=dict)

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The parts' closed hulls back to back (they overlap where parts join).

        Returns vertices (V, 3) float32, faces (F, 3) int32 wound outward, face_part (F,) int32
        index into ``self.parts`` (``self.part_labels[face_part]`` gives PART_NAMES indices).
        """
        offsets = np.cumsum([0] + [len(p.vertices) for p in self.parts])
        vertices = np.concatenate([p.vertices for p in self.parts]).astype(np.float32)
        faces = np.concatenate([p.faces + o for p, o in zip(self.parts, offsets)]).astype(np.int32)
        face_part = np.repeat(np.arange(len(self.parts), dtype=np.int32), [len(p.faces) for p in self.parts])
        return vertices, faces, face_part

    @property
    def part_labels(self) -> np.ndarray:
        """(P,) int16 PART_NAMES index of each part."""
        return np.array([p.label for p in self.parts], dtype=np.int16)

    @cached_property
    def _bounds(self) -> np.ndarray:
        return np.stack([np.stack([p.vertices.min(0), p.vertices.max(0)]) for p in self.parts])

    @cached_property
    def _triangles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Corners (T, 3, 3), unit normals (T, 3), cumulative areas (T,), part index (T,)."""
        tri = np.concatenate([p.vertices[p.faces] for p in self.parts])  # float64, unlike mesh()
        face_part = np.repeat(np.arange(len(self.parts)), [len(p.faces) for p in self.parts])
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area2 = np.linalg.norm(cross, axis=1)
        normals = cross / np.maximum(area2, 1e-300)[:, None]
        return tri, normals, np.cumsum(0.5 * area2), face_part

    def inside(self, points: np.ndarray, tol: float = 1e-6) -> np.ndarray:
        """(N,) bool: which of (N, 3) points are strictly inside the solid (deeper than tol in some part)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        result = np.zeros(len(points), dtype=bool)
        # A box cull per part: most points meet few parts (a little faster than one product with
        # all planes, and far less memory).
        for part, (lo, hi) in zip(self.parts, self._bounds):
            candidates = np.flatnonzero(~result & np.all(points > lo, axis=1) & np.all(points < hi, axis=1))
            if candidates.size:
                depth = points[candidates] @ part.planes[:, :3].T + part.planes[:, 3]
                result[candidates[depth.max(axis=1) < -tol]] = True
        return result

    def sample_surface(self, n: int, rng: np.random.Generator, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n points uniform on the outer surface of the union, in random order.

        Returns points (n, 3) float32, outward unit normals (n, 3) float32 of the face each
        point lies on, and part labels (n,) int16 indexing PART_NAMES.
        """
        tri, normals, cumulative, face_part = self._triangles
        kept_points, kept_faces, have, accept = [np.empty((0, 3))], [np.empty(0, dtype=np.int64)], 0, 0.8
        while have < n:
            # Draw a little more than the last acceptance rate says is needed.
            m = int((n - have) / accept * 1.05) + 64
            face = np.minimum(np.searchsorted(cumulative, rng.random(m) * cumulative[-1], side="right"), len(tri) - 1)
            r1, r2 = np.sqrt(rng.random(m)), rng.random(m)
            corners = tri[face]
            points = ((1.0 - r1)[:, None] * corners[:, 0] + (r1 * (1.0 - r2))[:, None] * corners[:, 1]
                      + (r1 * r2)[:, None] * corners[:, 2])
            keep = ~self.inside(points, tol)
            accept = max(keep.mean(), 0.02)
            kept_points.append(points[keep])
            kept_faces.append(face[keep])
            have += int(keep.sum())
        points = np.concatenate(kept_points)[:n]  # i.i.d. draws: any n of them are uniform
        face = np.concatenate(kept_faces)[:n]
        labels = self.part_labels[face_part[face]]
        return points.astype(np.float32), normals[face].astype(np.float32), labels


# --------------------------------------------------------------------------------------------
# Geometry helpers (builder units; every helper returns points or a ConvexPart)


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors normal to ``axis``; the first is the one nearest +y (+x for vertical axes)."""
    a = unit(axis)
    ref = Y if abs(a[1]) < 0.9 else X
    u = unit(ref - a * (ref @ a))
    return u, np.cross(a, u)


def ring(centre, axis, radius_u: float, radius_v: float, segments: int) -> np.ndarray:
    """(segments, 3) points of an ellipse around ``axis``; the first lies along the frame's u."""
    u, v = _frame(axis)
    t = np.linspace(0.0, 2.0 * math.pi, segments, endpoint=False)
    return np.asarray(centre, dtype=np.float64) + np.outer(radius_u * np.cos(t), u) + np.outer(radius_v * np.sin(t), v)


def hull(name: str, *point_sets) -> ConvexPart:
    return ConvexPart.from_points(name, np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in point_sets]))


def box(name: str, lo, hi) -> ConvexPart:
    """Axis-aligned box from corner ``lo`` to corner ``hi``."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return hull(name, corners)


def rect(centre, half_a: float, half_b: float, dir_a, dir_b) -> np.ndarray:
    """(4, 3) corners of a rectangle spanned by two directions."""
    c, a, b = np.asarray(centre, dtype=np.float64), half_a * unit(dir_a), half_b * unit(dir_b)
    return np.array([c - a - b, c + a - b, c + a + b, c - a + b])


def square_y(cx: float, y: float, cz: float, half: float) -> np.ndarray:
    """(4, 3) corners of a horizontal square (a leg's cross-section) at height y."""
    return rect((cx, y, cz), half, half, X, Z)


def bar(name: str, p0, p1, half_a: float, half_b: float, dir_a=Y) -> ConvexPart:
    """Rectangular bar along p0 -> p1; half-size half_a along dir_a (made normal to the bar)."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    axis = unit(p1 - p0)
    a = unit(dir_a - axis * (np.asarray(dir_a) @ axis))
    b = np.cross(axis, a)
    return hull(name, rect(p0, half_a, half_b, a, b), rect(p1, half_a, half_b, a, b))


def cylinder(name: str, p0, p1, r0: float, r1: float | None = None, segments: int = 16) -> ConvexPart:
    """Faceted cylinder or frustum between two end centres."""
    axis = np.asarray(p1, dtype=np.float64) - np.asarray(p0, dtype=np.float64)
    r1 = r0 if r1 is None else r1
    return hull(name, ring(p0, axis, r0, r0, segments), ring(p1, axis, r1, r1, segments))


def dome(apex, axis, height: float, radius: float, segments: int = 16, rings: int = 4) -> np.ndarray:
    """Points of a half-ellipsoid: flat rim of ``radius`` at ``apex + axis * height``, apex at ``apex``."""
    axis, apex = unit(axis), np.asarray(apex, dtype=np.float64)
    rim = apex + axis * height
    pts = [apex[None]]
    for phi in np.linspace(0.0, 0.5 * math.pi, rings + 1)[:-1]:  # from the rim up to (not at) the apex
        pts.append(ring(rim - axis * height * math.sin(phi), axis, radius * math.cos(phi), radius * math.cos(phi), segments))
    return np.concatenate(pts)


def with_mirror(part: ConvexPart) -> list[ConvexPart]:
    return [part, part.mirrored_x()]
