"""Procedural ShapeNet-like shapes: airplanes, chairs, cars, tables and lamps.

Every shape is a union of solid convex parts (boxes, tapered prisms, swept wings, faceted
cylinders, cones and domes), each stored as its convex hull: vertices, outward-wound triangles
and the half-space planes ``n . x + d <= 0`` that bound it. The union's outer surface is
sampled exactly: triangles are drawn by area and a sample that lies strictly inside any part
is rejected, so samples cover the exposed surface uniformly and none lies inside the solid.
Parts that touch always interpenetrate a little (never coplanar contact faces), so contact
interfaces are strictly inside a neighbour and rejected.

Frame: ShapeNetCore.v2's canonical frame (see ``cameras.py``): +y up, the front faces -z,
left-right symmetric about x = 0; every shape is finally centred at its bounding-box centre
with the bounding-box diagonal scaled to 1.

Each category has a table of continuous parameter ranges and discrete variants
(``CATEGORY_SPECS``) and a builder that turns a parameter dict into parts without drawing
anything itself, so ``build_shape(category, shape.params)`` rebuilds the same shape. Parameter
values are in the builder's units, before normalisation: metres for chairs, tables and cars,
fractions of the fuselage length (airplane) or of the nominal lamp height (lamp), angles in
degrees, ``*_ratio`` / ``*_frac`` values relative to what their comment says. The generated
shape's params add ``norm_scale``: builder length x norm_scale = normalised length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.spatial import ConvexHull
from tqdm import tqdm

from pvd.data.cameras import orbit_cameras, r2n2_like_views
from pvd.data.hdf5 import ShapeRecord, ShapeWriter, WriterLayout
from pvd.data.pool import ordered_map
from pvd.data.render import render_views
from pvd.errors import UserError

CATEGORIES: dict[str, str] = {
    "airplane": "02691156",
    "chair": "03001627",
    "car": "02958343",
    "table": "04379243",
    "lamp": "03636649",
}

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
_X, _Y, _Z = np.eye(3)


# --------------------------------------------------------------------------------------------
# Parts and shapes


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

    params: JSON-serialisable generator parameters (see the module docstring for units).
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


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors normal to ``axis``; the first is the one nearest +y (+x for vertical axes)."""
    a = _unit(axis)
    ref = _Y if abs(a[1]) < 0.9 else _X
    u = _unit(ref - a * (ref @ a))
    return u, np.cross(a, u)


def _ring(centre, axis, radius_u: float, radius_v: float, segments: int) -> np.ndarray:
    """(segments, 3) points of an ellipse around ``axis``; the first lies along the frame's u."""
    u, v = _frame(axis)
    t = np.linspace(0.0, 2.0 * math.pi, segments, endpoint=False)
    return np.asarray(centre, dtype=np.float64) + np.outer(radius_u * np.cos(t), u) + np.outer(radius_v * np.sin(t), v)


def _hull(name: str, *point_sets) -> ConvexPart:
    return ConvexPart.from_points(name, np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in point_sets]))


def _box(name: str, lo, hi) -> ConvexPart:
    """Axis-aligned box from corner ``lo`` to corner ``hi``."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return _hull(name, corners)


def _rect(centre, half_a: float, half_b: float, dir_a, dir_b) -> np.ndarray:
    """(4, 3) corners of a rectangle spanned by two directions."""
    c, a, b = np.asarray(centre, dtype=np.float64), half_a * _unit(dir_a), half_b * _unit(dir_b)
    return np.array([c - a - b, c + a - b, c + a + b, c - a + b])


def _square_y(cx: float, y: float, cz: float, half: float) -> np.ndarray:
    """(4, 3) corners of a horizontal square (a leg's cross-section) at height y."""
    return _rect((cx, y, cz), half, half, _X, _Z)


def _bar(name: str, p0, p1, half_a: float, half_b: float, dir_a=_Y) -> ConvexPart:
    """Rectangular bar along p0 -> p1; half-size half_a along dir_a (made normal to the bar)."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    axis = _unit(p1 - p0)
    a = _unit(dir_a - axis * (np.asarray(dir_a) @ axis))
    b = np.cross(axis, a)
    return _hull(name, _rect(p0, half_a, half_b, a, b), _rect(p1, half_a, half_b, a, b))


def _cylinder(name: str, p0, p1, r0: float, r1: float | None = None, segments: int = 16) -> ConvexPart:
    """Faceted cylinder or frustum between two end centres."""
    axis = np.asarray(p1, dtype=np.float64) - np.asarray(p0, dtype=np.float64)
    r1 = r0 if r1 is None else r1
    return _hull(name, _ring(p0, axis, r0, r0, segments), _ring(p1, axis, r1, r1, segments))


def _dome(apex, axis, height: float, radius: float, segments: int = 16, rings: int = 4) -> np.ndarray:
    """Points of a half-ellipsoid: flat rim of ``radius`` at ``apex + axis * height``, apex at ``apex``."""
    axis, apex = _unit(axis), np.asarray(apex, dtype=np.float64)
    rim = apex + axis * height
    pts = [apex[None]]
    for phi in np.linspace(0.0, 0.5 * math.pi, rings + 1)[:-1]:  # from the rim up to (not at) the apex
        pts.append(_ring(rim - axis * height * math.sin(phi), axis, radius * math.cos(phi), radius * math.cos(phi), segments))
    return np.concatenate(pts)


def _airfoil(leading_edge, chord_dir, thick_dir, chord: float, thickness: float) -> np.ndarray:
    """(7, 3) convex airfoil-like section: round-ish nose, maximum thickness at 30% chord."""
    le, c, t = np.asarray(leading_edge, dtype=np.float64), _unit(chord_dir) * chord, _unit(thick_dir) * thickness
    profile = [(0.0, 0.0), (0.08, 0.3), (0.08, -0.3), (0.3, 0.5), (0.3, -0.5), (1.0, 0.06), (1.0, -0.06)]
    return np.array([le + s * c + h * t for s, h in profile])


def _wing(name: str, root_le, tip_le, root_chord: float, tip_chord: float, root_thickness: float,
          tip_thickness: float, chord_dir=_Z, thick_dir=_Y) -> ConvexPart:
    """A tapered, swept wing panel: the hull of its root and tip sections."""
    return _hull(name, _airfoil(root_le, chord_dir, thick_dir, root_chord, root_thickness),
                 _airfoil(tip_le, chord_dir, thick_dir, tip_chord, tip_thickness))


def _with_mirror(part: ConvexPart) -> list[ConvexPart]:
    return [part, part.mirrored_x()]


def _max_y(parts: list[ConvexPart]) -> float:
    return max(float(p.vertices[:, 1].max()) for p in parts)


# --------------------------------------------------------------------------------------------
# Airplane (units: fuselage length = 1; the nose at z = -0.5)


def _build_airplane(p: dict) -> list[ConvexPart]:
    r = p["fuselage_radius"]
    ry = r * p["fuselage_aspect"]
    z_nose, z_tail = -0.5, 0.5
    z_body = z_nose + p["nose_length"]  # where the nose meets the constant section
    z_cone = z_tail - p["tail_cone_length"]  # where the tail cone starts
    re, rye = r * p["tail_end_radius"], ry * p["tail_end_radius"]
    y_end = ry - rye  # the tail cone sweeps up under a straight top line

    rings = []
    for phi in np.radians([8.0, 30.0, 52.0, 72.0, 90.0]):  # elliptic nose profile
        rings.append(_ring((0.0, -p["nose_droop"] * ry * math.cos(phi), z_body - p["nose_length"] * math.cos(phi)),
                           _Z, ry * math.sin(phi), r * math.sin(phi), 16))
    rings.append(_ring((0.0, 0.0, z_cone), _Z, ry, r, 16))
    rings.append(_ring((0.0, y_end, z_tail), _Z, rye, re, 16))
    parts = [_hull("fuselage", *rings)]

    # Main wing: right panel from slightly left of the centre line (so the panels overlap
    # inside the fuselage) to the tip at x = span / 2, mirrored for the left.
    span = p["wing_span"]
    semi = span / 2.0
    root_chord = p["wing_root_chord"]
    t_root = p["wing_thickness"] * span
    t_tip = max(0.7 * t_root, 0.0115 * span)
    tip_chord = max(root_chord * p["wing_taper"], 4.0 * t_tip)
    z_le = z_nose + p["wing_position"]
    y_root = {"low": -0.55, "mid": 0.0, "high": 0.55}[p["wing_mount"]] * (ry - t_root / 2.0)
    sweep, dihedral = math.tan(math.radians(p["wing_sweep_deg"])), math.tan(math.radians(p["wing_dihedral_deg"]))
    x_root = -0.15 * r
    parts += _with_mirror(_wing("wing", (x_root, y_root, z_le), (semi, y_root + semi * dihedral, z_le + semi * sweep),
                                root_chord, tip_chord, t_root, t_tip))

    def wing_at(x: float) -> tuple[float, float, float, float]:
        """Leading-edge z, chord, centre y and thickness of the right wing at span station x."""
        f = (x - x_root) / (semi - x_root)
        return (z_le + x * sweep, root_chord + f * (tip_chord - root_chord), y_root + x * dihedral,
                t_root + f * (t_tip - t_root))

    # Engines: nacelles hung on pylons under the wing, in pairs.
    rn, ln = p["engine_radius"] * r, p["engine_length"]
    stations = {0: [], 2: [p["engine_position"]], 4: [p["engine_position"], p["engine_position"] + 0.25]}[p["engine_count"]]
    for eta in stations:
        x = max(eta * semi, 1.15 * (r + rn))
        z_lead, chord, y_wing, t = wing_at(x)
        y = y_wing - 0.5 * t - 1.35 * rn
        z_front = z_lead - 0.45 * ln
        parts += _with_mirror(_cylinder("engine", (x, y, z_front), (x, y, z_front + ln), rn, 0.8 * rn))
        z_lead_out = wing_at(x + 0.25 * rn)[0]
        z0 = max(z_front + 0.15 * ln, z_lead_out + 0.08 * chord)
        z1 = min(z_front + 0.85 * ln, z_lead + 0.65 * chord)
        parts += _with_mirror(_box("engine", (x - 0.25 * rn, y + 0.7 * rn, z0), (x + 0.25 * rn, y_wing, z1)))

    # Tails. Both use one thickness; tips are at least 3.5 thicknesses long in chord.
    t_tail = p["tail_thickness"] * span
    t_tail_tip = max(0.8 * t_tail, 0.0105 * span)
    v_chord, v_height = p["vtail_chord"], p["vtail_height"]
    v_tip_chord = max(v_chord * p["vtail_taper"], 3.5 * t_tail_tip)
    v_z = z_tail - 0.01 - v_chord
    v_y = y_end  # the root section sits inside the narrowing tail cone
    v_tip_le = (0.0, v_y + v_height, v_z + v_height * math.tan(math.radians(p["vtail_sweep_deg"])))
    parts.append(_wing("vertical_tail", (0.0, v_y, v_z), v_tip_le, v_chord, v_tip_chord, t_tail, t_tail_tip,
                       chord_dir=_Z, thick_dir=_X))

    h_semi = p["htail_span"] * semi
    h_chord = p["htail_chord"]
    if p["tail_type"] == "t_tail":
        # The fin's tip section lies inside the tailplane's root, on its chord plane.
        h_chord = max(h_chord, 1.15 * v_tip_chord)
        h_z, h_y = v_tip_le[2] - 0.05 * h_chord, v_tip_le[1]
    else:
        h_z = z_tail - 0.03 - h_chord
        h_y = y_end * np.clip((h_z + 0.35 * h_chord - z_cone) / p["tail_cone_length"], 0.0, 1.0)
    h_tip_chord = max(h_chord * p["htail_taper"], 3.5 * t_tail_tip)
    h_root_x = -max(0.15 * r, 0.6 * t_tail)
    h_tip_le = (h_semi, h_y + h_semi * math.tan(math.radians(p["htail_dihedral_deg"])),
                h_z + h_semi * math.tan(math.radians(p["htail_sweep_deg"])))
    parts += _with_mirror(_wing("horizontal_tail", (h_root_x, h_y, h_z), h_tip_le, h_chord, h_tip_chord, t_tail, t_tail_tip))
    if p["tail_type"] == "t_tail":
        # Out in the open the two tailplane halves overlap across x = 0 with nearly coincident
        # skins; a bullet fairing on the fin's tip encloses that overlap.
        x = 1.6 * h_root_x
        lead = (h_z - 0.03 * h_chord, 1.1 * h_chord, 1.4 * t_tail)
        parts.append(_hull("vertical_tail", _airfoil((x, h_y, lead[0]), _Z, _Y, *lead[1:]),
                           _airfoil((-x, h_y, lead[0]), _Z, _Y, *lead[1:])))
    return parts


# --------------------------------------------------------------------------------------------
# Chair (metres; floor at y = 0, backrest towards +z)


def _build_chair(p: dict) -> list[ConvexPart]:
    width, depth = p["seat_width"], p["seat_depth"]
    seat_y, seat_t = p["seat_height"], p["seat_thickness"]
    back_edge = width / p["seat_flare"]  # the seat narrows towards the back
    parts = [_hull("seat", *[[(-w / 2, y, z), (w / 2, y, z)] for y in (seat_y - seat_t, seat_y)
                             for w, z in ((width, -depth / 2), (back_edge, depth / 2))])]

    # Backrest: leans back by the tilt, its foot embedded in the seat near the rear edge.
    tilt = math.radians(p["back_tilt_deg"])
    up, out = np.array([0.0, math.cos(tilt), math.sin(tilt)]), np.array([0.0, -math.sin(tilt), math.cos(tilt)])
    back_t = p["back_thickness"]
    foot = np.array([0.0, seat_y - seat_t / 2, depth / 2 - back_t / 2 - 0.01])
    length = (p["back_height"] + seat_t / 2) / math.cos(tilt)
    w_bottom = p["back_width_ratio"] * back_edge
    w_top = w_bottom * p["back_top_ratio"]
    height_est = seat_y + p["back_height"]
    bar = p["leg_thickness"] * height_est  # posts, slats and arms scale with the legs
    if p["back_style"] == "solid":
        parts.append(_hull("backrest", _rect(foot, w_bottom / 2, back_t / 2, _X, out),
                           _rect(foot + length * up, w_top / 2, back_t / 2, _X, out)))
    else:
        def post_x(f: float) -> float:  # centre of the right post at distance f along the back
            return (w_bottom / 2 - bar / 2) + (f / length) * ((w_top - w_bottom) / 2)

        for s in (-1.0, 1.0):
            parts.append(_bar("back_frame", foot + s * post_x(0.0) * _X, foot + length * up + s * post_x(length) * _X,
                              bar / 2, bar / 2, out))
        rail = min(0.2 * length, 0.1)
        f_rail = length - 0.008 - rail / 2  # top rail ends inside the posts, just below their tops
        c_rail = foot + f_rail * up
        parts.append(_bar("backrest", c_rail - post_x(f_rail) * _X, c_rail + post_x(f_rail) * _X,
                          rail / 2, 0.375 * bar, up))
        inner = 2.0 * post_x(0.0) - bar  # clear width between the posts at the foot
        count = p["slat_count"]
        if p["back_style"] == "vertical_slats":
            half_w = min(0.25 * inner / count, 0.03)
            for i in range(count):
                x = (i + 0.5) / count * inner - inner / 2
                parts.append(_bar("back_slat", foot + x * _X, foot + f_rail * up + x * _X, 0.275 * bar, half_w, out))
        else:
            count = min(count, 5)
            half_h = min(0.2 * (f_rail - rail / 2) / count, 0.03)
            for i in range(count):
                f = (i + 0.6) / (count + 0.2) * (f_rail - rail / 2 - half_h)
                c = foot + f * up
                parts.append(_bar("back_slat", c - post_x(f) * _X, c + post_x(f) * _X, half_h, 0.275 * bar, up))

    if p["has_arms"]:
        arm_y = seat_y + p["arm_height"]
        arm_t = 0.9 * bar
        x_arm = w_bottom / 2 + 0.01 - p["arm_width"] / 2  # aligned with the back, 1 cm proud of it
        z_back = foot[2] + (arm_y - foot[1]) * math.tan(tilt)  # mid-thickness of the back at arm height
        z_front = -depth / 2 + 0.02
        support = min(arm_t, 0.8 * p["arm_width"])
        for s in (-1.0, 1.0):
            parts.append(_box("armrest", (s * x_arm - p["arm_width"] / 2, arm_y - arm_t / 2, z_front),
                              (s * x_arm + p["arm_width"] / 2, arm_y + arm_t / 2, z_back)))
            z_support = z_front + 0.6 * support + 0.01
            parts.append(_bar("armrest", (s * x_arm, seat_y - seat_t / 2, z_support), (s * x_arm, arm_y, z_support),
                              support / 2, support / 2, _X))

    height = _max_y(parts)  # the legs end at the floor, so this is the chair's height
    a_top = p["leg_thickness"] * height
    a_bottom = max(a_top * p["leg_taper"], 0.023 * height)
    leg_top = seat_y - seat_t / 2
    inset = p["leg_inset"]
    if p["leg_style"] == "four_legs":
        splay = math.tan(math.radians(p["leg_splay_deg"])) * leg_top
        centres = {}
        for sx in (-1.0, 1.0):
            for sz, half_w in ((-1.0, width / 2), (1.0, back_edge / 2)):
                top = np.array([sx * (half_w - inset - a_top / 2), leg_top, sz * (depth / 2 - inset - a_top / 2)])
                bottom = top + np.array([sx * splay, -leg_top, sz * splay])
                centres[sx, sz] = (bottom, top)
                parts.append(_hull("leg", _square_y(bottom[0], 0.0, bottom[2], a_bottom / 2),
                                   _square_y(top[0], leg_top, top[2], a_top / 2)))
        if p["has_stretchers"]:
            half = 0.35 * a_bottom

            def at(key, y: float) -> np.ndarray:  # leg centre at height y
                bottom, top = centres[key]
                return bottom + (top - bottom) * (y / leg_top)

            y_side = p["stretcher_height"] * seat_y
            y_cross = y_side + 3.0 * half  # front/back bars sit higher: no shared faces with the sides
            for s in (-1.0, 1.0):
                parts.append(_bar("stretcher", at((s, -1.0), y_side), at((s, 1.0), y_side), half, half))
                parts.append(_bar("stretcher", at((-1.0, s), y_cross), at((1.0, s), y_cross), half, half))
    elif p["leg_style"] == "pedestal":
        # Gas-lift column on a hub with a five-spoke star base; spokes slope down to the floor.
        column_r = 0.9 * a_top
        hub_y = a_top + 0.04
        hub_r = 1.7 * column_r
        parts.append(_cylinder("pedestal", (0.0, hub_y - 0.7 * a_top, 0.0), (0.0, hub_y + a_top + 0.02, 0.0), hub_r))
        parts.append(_cylinder("pedestal", (0.0, hub_y + a_top, 0.0), (0.0, leg_top, 0.0), column_r))
        reach = 0.3 * (width + depth)
        for k in range(5):
            phi = 2.0 * math.pi * k / 5
            d, side = np.array([math.sin(phi), 0.0, -math.cos(phi)]), np.array([math.cos(phi), 0.0, math.sin(phi)])
            tip = reach * d
            parts.append(_hull("leg", _rect((0.0, hub_y, 0.0), 0.625 * a_top, a_top / 2, side, _Y),
                               _rect(tip + (0.0, a_top / 2, 0.0), 0.5 * a_top, a_top / 2, side, _Y)))
    else:  # sled: a floor runner and two posts per side
        x = back_edge / 2 - inset - a_top / 2
        z_post = depth / 2 - inset - a_top / 2 - 0.02
        post = 0.85 * a_top  # narrower than the runner, so their side faces never coincide
        for s in (-1.0, 1.0):
            parts.append(_box("leg", (s * x - a_top / 2, 0.0, -depth / 2), (s * x + a_top / 2, a_top, depth / 2 - 0.02)))
            for sz in (-1.0, 1.0):
                parts.append(_bar("leg", (s * x, a_top / 2, sz * z_post), (s * x, leg_top, sz * z_post), post / 2, post / 2, _X))
    return parts


# --------------------------------------------------------------------------------------------
# Table (metres; floor at y = 0)


def _build_table(p: dict) -> list[ConvexPart]:
    height, top_t = p["height"], p["top_thickness"]
    width = p["top_width"]
    a_top = p["leg_thickness"] * height
    a_bottom = max(a_top * p["leg_taper"], 0.023 * height)
    inset = p["leg_inset"]
    if p["top_shape"] == "rectangular":
        depth = width * p["depth_ratio"]
        c = min(p["corner_chamfer"], 0.3 * depth)
        outline = [(width / 2 - c, depth / 2), (width / 2, depth / 2 - c)]
        outline = [(sx * x, sz * z) for sx in (-1, 1) for sz in (-1, 1) for x, z in outline]
        inset = max(inset, c)  # keeps the legs under the cut corners
        leg_x, leg_z = width / 2 - inset - a_top / 2, depth / 2 - inset - a_top / 2
    else:
        rx = 0.4 * width
        rz = rx * (0.8 + 0.2 * p["depth_ratio"])
        t = np.linspace(0.0, 2.0 * math.pi, 32, endpoint=False)
        outline = list(zip(rx * np.cos(t), rz * np.sin(t)))
        shrink = 1.0 - (inset + a_top) / min(rx, rz)
        leg_x, leg_z = rx * math.sqrt(0.5) * shrink, rz * math.sqrt(0.5) * shrink
    parts = [_hull("tabletop", [(x, y, z) for x, z in outline for y in (height - top_t, height)])]

    leg_top = height - top_t / 2
    lower_y = p["lower_height_frac"] * height
    if p["leg_style"] == "four_legs":
        splay = math.tan(math.radians(p["leg_splay_deg"])) * leg_top
        centres = {}
        for sx in (-1.0, 1.0):
            for sz in (-1.0, 1.0):
                top = np.array([sx * leg_x, leg_top, sz * leg_z])
                bottom = top + np.array([sx * splay, -leg_top, sz * splay])
                centres[sx, sz] = (bottom, top)
                parts.append(_hull("leg", _square_y(bottom[0], 0.0, bottom[2], a_bottom / 2),
                                   _square_y(top[0], leg_top, top[2], a_top / 2)))

        def at(key, y: float) -> np.ndarray:  # leg centre at height y
            bottom, top = centres[key]
            return bottom + (top - bottom) * (y / leg_top)

        if p["has_apron"]:
            # Boards between the legs, just under the top; side boards stop a little higher.
            for s in (-1.0, 1.0):
                for y0, ends in ((height - top_t - p["apron_height"], ((-1.0, s), (1.0, s))),
                                 (height - top_t - 0.9 * p["apron_height"], ((s, -1.0), (s, 1.0)))):
                    y_mid = 0.5 * (y0 + leg_top)
                    parts.append(_bar("apron", at(ends[0], y_mid), at(ends[1], y_mid), (leg_top - y0) / 2, 0.25 * a_top))
        if p["lower"] == "stretchers":
            half = 0.35 * a_bottom
            for s in (-1.0, 1.0):
                parts.append(_bar("stretcher", at((s, -1.0), lower_y), at((s, 1.0), lower_y), half, half))
                parts.append(_bar("stretcher", at((-1.0, s), lower_y + 3.0 * half), at((1.0, s), lower_y + 3.0 * half), half, half))
        elif p["lower"] == "shelf":
            # The shelf's corners sit in the legs' centre lines, so it is held by all four.
            corner = at((1.0, 1.0), lower_y)
            st = p["shelf_thickness"]
            parts.append(_box("shelf", (-corner[0], lower_y - st / 2, -corner[2]), (corner[0], lower_y + st / 2, corner[2])))
    else:
        column_r = p["pedestal_radius_frac"] * height
        reach = p["base_radius_frac"] * (width if p["top_shape"] == "rectangular" else 0.8 * width)
        if p["pedestal_base"] == "disk":
            base_t = 0.04 * height
            parts.append(_cylinder("base", (0.0, 0.0, 0.0), (0.0, base_t, 0.0), reach, 0.85 * reach, segments=24))
            foot_y = 0.5 * base_t
        else:
            # Four feet, sloping up towards the column so their faces are never coplanar.
            for k in range(4):
                phi = math.pi / 4 + k * math.pi / 2
                d, side = np.array([math.cos(phi), 0.0, math.sin(phi)]), np.array([-math.sin(phi), 0.0, math.cos(phi)])
                parts.append(_hull("leg", _rect((0.0, 1.1 * a_top, 0.0), 0.8 * a_top, a_top / 2, side, _Y),
                                   _rect(reach * d + (0.0, a_top / 2, 0.0), 0.75 * a_top, a_top / 2, side, _Y)))
            parts.append(_cylinder("pedestal", (0.0, 0.4 * a_top, 0.0), (0.0, 2.0 * a_top, 0.0), 1.3 * column_r, segments=20))
            foot_y = 1.5 * a_top
        parts.append(_cylinder("pedestal", (0.0, foot_y, 0.0), (0.0, leg_top, 0.0), column_r, segments=20))
        if p["lower"] == "shelf":
            st = p["shelf_thickness"]
            parts.append(_cylinder("shelf", (0.0, lower_y - st / 2, 0.0), (0.0, lower_y + st / 2, 0.0),
                                   0.55 * min(leg_x, leg_z) / math.sqrt(0.5), segments=24))
    return parts


# --------------------------------------------------------------------------------------------
# Car (metres; wheels on the floor at y = 0, front towards -z)


def _build_car(p: dict) -> list[ConvexPart]:
    style = p["body_style"]
    height = p["height"]
    length = p["length_to_height"] * height
    width = p["width_to_length"] * length
    clear = p["ground_clearance"] * height
    belt = p["belt_line"] * height
    bumper = clear + 0.4 * (belt - clear)
    nose = p["nose_slope"] * length * (0.4 if style == "van" else 1.0)
    tail = 0.06 * length if style == "sedan" else 0.03 * length
    half = 0.47 * width
    parts = [_hull("body",
                   [(sx * half, clear, z) for sx in (-1, 1) for z in (-0.44 * length, 0.45 * length)],
                   [(sx * width / 2, bumper, z) for sx in (-1, 1) for z in (-length / 2, length / 2)],
                   [(sx * half, belt, z) for sx in (-1, 1) for z in (-length / 2 + nose, length / 2 - tail)])]

    # Cabin: a trapezoidal greenhouse; its base sinks into the body.
    hood = p["hood_length"] * length
    front_rake, rear_rake = math.tan(math.radians(p["windshield_rake_deg"])), math.tan(math.radians(p["rear_window_rake_deg"]))
    z0 = -length / 2 + hood
    if style == "sedan":
        z1 = length / 2 - 0.75 * hood
    elif style == "hatchback":
        z1, rear_rake = length / 2 - 0.02 * length, 0.5 * rear_rake
    elif style == "van":
        z0, z1, front_rake, rear_rake = -length / 2 + 0.35 * hood, length / 2 - 0.015 * length, 0.5 * front_rake, 0.05
    else:  # pickup: a short cab, then the bed
        z1, rear_rake = z0 + 0.3 * length, 0.07
    rise = height - belt
    scale = min(1.0, 0.6 * (z1 - z0) / (rise * (front_rake + rear_rake)))  # keep a roof at least 40% of the base
    front_rake, rear_rake = scale * front_rake, scale * rear_rake
    sink = 0.03 * height
    cabin_w = 0.46 * width
    roof_w = cabin_w * p["roof_taper"]
    parts.append(_hull("cabin",
                       [(sx * cabin_w, belt - sink, z) for sx in (-1, 1) for z in (z0 - sink * front_rake, z1 + sink * rear_rake)],
                       [(sx * roof_w, height, z) for sx in (-1, 1) for z in (z0 + rise * front_rake, z1 - rise * rear_rake)]))
    if style == "pickup":
        wall_t, wall_x = 0.035 * width, 0.455 * width
        wall_top = belt + 0.35 * rise
        z_start, z_end = z1 - 0.01 * length, length / 2 - tail - 0.005
        for s in (-1.0, 1.0):
            parts.append(_box("cargo_bed", (min(s * wall_x, s * (wall_x - wall_t)), belt - sink, z_start),
                              (max(s * wall_x, s * (wall_x - wall_t)), wall_top, z_end)))
        parts.append(_box("cargo_bed", (-(wall_x - wall_t / 2), belt - sink, z_end - 0.005 - wall_t),
                          (wall_x - wall_t / 2, wall_top - 0.01, z_end - 0.005)))

    radius = p["wheel_radius"] * height
    wheel_w = p["wheel_width"] * width
    x_out = 0.51 * width
    base = p["wheelbase"] * length
    axles = [-base / 2, base / 2] + ([base / 2 - 2.25 * radius] if p["wheel_count"] == 6 else [])
    for z in axles:
        parts += _with_mirror(_cylinder("wheel", (x_out - wheel_w, radius, z), (x_out, radius, z), radius, segments=20))
    return parts


# --------------------------------------------------------------------------------------------
# Lamp (units: nominal height 1; base on the floor at y = 0)


def _shade_points(apex, axis, height: float, radius: float, top_ratio: float, shape: str) -> np.ndarray:
    """A solid lampshade from its top centre ``apex`` opening along ``axis``."""
    apex, axis = np.asarray(apex, dtype=np.float64), _unit(axis)
    if shape == "dome":
        return _dome(apex, axis, height, radius, segments=16, rings=4)
    top = radius * (top_ratio if shape == "cone" else 1.0)
    return np.concatenate([_ring(apex, axis, top, top, 20), _ring(apex + height * axis, axis, radius, radius, 20)])


def _build_lamp(p: dict) -> list[ConvexPart]:
    base_r, base_h = p["base_radius"], p["base_height"]
    if p["base_shape"] == "round":
        parts = [_cylinder("base", (0.0, 0.0, 0.0), (0.0, base_h, 0.0), base_r, base_r * p["base_taper"], segments=24)]
    else:
        s = 0.9 * base_r
        parts = [_hull("base", _square_y(0.0, 0.0, 0.0, s), _square_y(0.0, base_h, 0.0, s * p["base_taper"]))]
    shade_h, shade_r = p["shade_height"], p["shade_radius"]
    shape, top_ratio = p["shade_shape"], p["shade_top_ratio"]

    if p["pole_style"] == "straight":
        shade = _shade_points((0.0, 1.0, 0.0), -_Y, shade_h, shade_r, top_ratio, shape)
        parts.append(_hull("shade", shade))
        r_pole = p["pole_thickness"] / 2  # the shade's top is at y = 1: the lamp's height
        parts.append(_cylinder("pole", (0.0, base_h / 2, 0.0), (0.0, 1.0 - 0.5 * shade_h, 0.0), r_pole, segments=12))
        return parts

    # Bent (desk lamp): a post at the back of the base, an arm reaching forward (-z) and up,
    # and the shade hanging from the arm's end, tilted towards the front.
    bend = np.array([0.0, p["bend_height"], 0.4 * base_r])
    angle = math.radians(p["bend_angle_deg"])
    end = bend + p["arm_length"] * np.array([0.0, math.cos(angle), -math.sin(angle)])
    tilt = math.radians(p["shade_tilt_deg"])
    axis = np.array([0.0, -math.cos(tilt), -math.sin(tilt)])
    shade = _shade_points(end - 0.3 * shade_h * axis, axis, shade_h, shade_r, top_ratio, shape)
    parts.append(_hull("shade", shade))
    height = max(float(shade[:, 1].max()), end[1], bend[1])
    r_pole = p["pole_thickness"] / 2 * height
    parts.append(_cylinder("pole", (0.0, base_h / 2, bend[2]), bend, r_pole, segments=12))
    parts.append(_cylinder("arm", bend, end, r_pole, segments=12))
    # A ball joint a little fatter than the tubes covers both end caps.
    parts.append(_hull("pole", _dome(bend + (0.0, 1.08 * r_pole, 0.0), -_Y, 1.08 * r_pole, 1.08 * r_pole, 12, 3),
                       _dome(bend - (0.0, 1.08 * r_pole, 0.0), _Y, 1.08 * r_pole, 1.08 * r_pole, 12, 3)))
    return parts


# --------------------------------------------------------------------------------------------
# Parameter tables


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


def _resolve_chair(p: dict) -> None:
    if p["leg_style"] != "four_legs":
        p["has_stretchers"] = 0


def _resolve_table(p: dict) -> None:
    if p["leg_style"] != "four_legs" and p["lower"] == "stretchers":
        p["lower"] = "none"
    if p["leg_style"] != "four_legs" or p["top_shape"] != "rectangular":
        p["has_apron"] = 0


CATEGORY_SPECS: dict[str, CategorySpec] = {
    "airplane": CategorySpec(
        CATEGORIES["airplane"],
        ranges={
            "fuselage_radius": (0.04, 0.065),  # of the fuselage length
            "fuselage_aspect": (1.0, 1.15),  # height / width of the cross-section
            "nose_length": (0.07, 0.14),
            "nose_droop": (0.0, 0.35),  # nose tip below the axis, in fuselage radii
            "tail_cone_length": (0.22, 0.32),
            "tail_end_radius": (0.12, 0.22),  # of the fuselage radius
            "wing_span": (0.8, 1.2),
            "wing_root_chord": (0.15, 0.25),
            "wing_taper": (0.25, 0.6),  # tip chord / root chord
            "wing_sweep_deg": (0.0, 40.0),  # leading edge
            "wing_dihedral_deg": (-2.0, 7.0),
            "wing_position": (0.3, 0.45),  # root leading edge, from the nose
            "wing_thickness": (0.016, 0.026),  # root, of the span (tip 70%, at least 1.15%)
            "engine_position": (0.3, 0.42),  # inboard engines, of the half-span
            "engine_radius": (0.45, 0.7),  # of the fuselage radius
            "engine_length": (0.09, 0.14),
            "vtail_chord": (0.12, 0.2),
            "vtail_height": (0.1, 0.18),
            "vtail_sweep_deg": (25.0, 50.0),
            "vtail_taper": (0.35, 0.7),
            "htail_span": (0.3, 0.42),  # of the wing span
            "htail_chord": (0.08, 0.13),
            "htail_sweep_deg": (15.0, 40.0),
            "htail_taper": (0.4, 0.7),
            "htail_dihedral_deg": (0.0, 8.0),
            "tail_thickness": (0.011, 0.018),  # of the wing span (tips 80%, at least 1.05%)
        },
        choices={"engine_count": (0, 2, 4), "tail_type": ("conventional", "t_tail"), "wing_mount": ("low", "mid", "high")},
        build=_build_airplane,
    ),
    "chair": CategorySpec(
        CATEGORIES["chair"],
        ranges={
            "seat_width": (0.42, 0.58),  # at the front
            "seat_depth": (0.4, 0.54),
            "seat_height": (0.4, 0.5),  # top of the seat
            "seat_thickness": (0.03, 0.08),
            "seat_flare": (1.0, 1.12),  # front width / back width
            "back_height": (0.38, 0.62),  # above the seat
            "back_tilt_deg": (0.0, 16.0),
            "back_thickness": (0.03, 0.07),
            "back_width_ratio": (0.82, 1.0),  # of the seat's back edge
            "back_top_ratio": (0.85, 1.1),  # backrest top width / bottom width
            "leg_thickness": (0.026, 0.045),  # top of the leg, of the chair's height
            "leg_taper": (0.7, 1.0),  # bottom / top (at least 2.3% of the height)
            "leg_splay_deg": (0.0, 7.0),
            "leg_inset": (0.005, 0.05),
            "arm_height": (0.17, 0.26),  # above the seat
            "arm_width": (0.04, 0.07),
            "stretcher_height": (0.2, 0.4),  # of the seat height
        },
        choices={"back_style": ("solid", "vertical_slats", "horizontal_slats"), "slat_count": (3, 4, 5, 6),
                 "leg_style": ("four_legs", "pedestal", "sled"), "has_arms": (0, 1), "has_stretchers": (0, 1)},
        build=_build_chair,
        resolve=_resolve_chair,
    ),
    "car": CategorySpec(
        CATEGORIES["car"],
        ranges={
            "height": (1.4, 1.9),
            "length_to_height": (2.5, 3.3),  # sedans ~3.3, vans and SUVs ~2.6
            "width_to_length": (0.38, 0.46),
            "ground_clearance": (0.08, 0.14),  # of the height
            "wheel_radius": (0.19, 0.24),  # of the height
            "wheel_width": (0.11, 0.15),  # of the width
            "wheelbase": (0.56, 0.66),  # of the length
            "belt_line": (0.48, 0.6),  # top of the lower body, of the height
            "hood_length": (0.18, 0.3),  # front of the cabin, of the length
            "windshield_rake_deg": (35.0, 62.0),  # from vertical
            "rear_window_rake_deg": (20.0, 55.0),
            "roof_taper": (0.78, 0.92),  # roof width / cabin base width
            "nose_slope": (0.05, 0.15),  # set-back of the bonnet's front edge, of the length
        },
        choices={"body_style": ("sedan", "hatchback", "pickup", "van"), "wheel_count": (4, 6)},
        build=_build_car,
    ),
    "table": CategorySpec(
        CATEGORIES["table"],
        ranges={
            "height": (0.55, 0.78),
            "top_width": (0.8, 1.6),  # x size (round tops: 0.8x as diameter)
            "depth_ratio": (0.5, 1.0),  # depth / width (round tops: mild ovals)
            "top_thickness": (0.025, 0.06),
            "corner_chamfer": (0.005, 0.08),
            "leg_thickness": (0.024, 0.046),  # top of the leg, of the height
            "leg_taper": (0.65, 1.0),  # bottom / top (at least 2.3% of the height)
            "leg_inset": (0.02, 0.12),
            "leg_splay_deg": (0.0, 6.0),
            "apron_height": (0.05, 0.12),
            "lower_height_frac": (0.12, 0.35),  # shelf or stretchers, of the height
            "shelf_thickness": (0.015, 0.03),
            "pedestal_radius_frac": (0.035, 0.07),  # column radius, of the height
            "base_radius_frac": (0.22, 0.35),  # pedestal base reach, of the top width
        },
        choices={"top_shape": ("rectangular", "round"), "leg_style": ("four_legs", "pedestal"),
                 "lower": ("none", "shelf", "stretchers"), "pedestal_base": ("disk", "cross"), "has_apron": (0, 1)},
        build=_build_table,
        resolve=_resolve_table,
    ),
    "lamp": CategorySpec(
        CATEGORIES["lamp"],
        ranges={
            "base_radius": (0.09, 0.18),
            "base_height": (0.02, 0.06),
            "base_taper": (0.55, 1.0),  # top / bottom
            "pole_thickness": (0.013, 0.026),  # diameter, of the lamp's height
            "shade_height": (0.14, 0.28),
            "shade_radius": (0.1, 0.22),  # at the opening
            "shade_top_ratio": (0.35, 0.75),  # cone shades: top / opening radius
            "bend_height": (0.4, 0.6),  # bent poles: the elbow
            "bend_angle_deg": (25.0, 65.0),  # bent poles: the arm, from vertical
            "arm_length": (0.3, 0.45),
            "shade_tilt_deg": (0.0, 35.0),  # bent poles: shade axis from straight down
        },
        choices={"pole_style": ("straight", "bent"), "shade_shape": ("cone", "cylinder", "dome"),
                 "base_shape": ("round", "square")},
        build=_build_lamp,
    ),
}

# Public views of the tables: continuous ranges and discrete variants per category.
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {k: s.ranges for k, s in CATEGORY_SPECS.items()}
PARAM_CHOICES: dict[str, dict[str, tuple]] = {k: s.choices for k, s in CATEGORY_SPECS.items()}


# --------------------------------------------------------------------------------------------
# Entry points


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


# --- The dataset file ---------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """Options of ``datasets/synthetic.py``; the output depends on nothing else."""

    per_category: int = 200
    views: int = 8
    resolution: int = 64
    num_points: int = 15000
    seed: int = 0
    categories: tuple[str, ...] = tuple(CATEGORIES)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    supersample: int = 4  # antialiasing: coverage from 4x4 samples per pixel


def _split_of(index: int, count: int, fractions: tuple[float, float, float]) -> str:
    # Shapes are i.i.d., so contiguous blocks are a random split. From three shapes on, val and
    # test get at least one each, so that small quick-start files still evaluate.
    val, test = (max(1, round(count * f)) if count >= 3 else 0 for f in fractions[1:])
    train_end = count - val - test
    return "train" if index < train_end else "val" if index < train_end + val else "test"


def _part_colors(shape: SyntheticShape, rng: np.random.Generator) -> np.ndarray:
    """(num_parts, 3) RGB: one random base colour per shape, shaded a little per part."""
    base = rng.uniform(0.25, 0.9, 3)
    jitter = rng.uniform(-0.12, 0.12, (len(shape.parts), 3))
    return np.clip(base + jitter, 0.0, 1.0)


def make_record(config: SyntheticConfig, category: str, index: int) -> ShapeRecord:
    """Shape ``index`` of ``category``: geometry, samples, views; keyed by (seed, category, index)."""
    category_index = list(CATEGORIES).index(category)
    rng = np.random.default_rng((config.seed, category_index, index))
    shape = generate_shape(category, rng)
    points, normals, labels = shape.sample_surface(config.num_points, rng)
    vertices, faces, face_part = shape.mesh()
    cameras = orbit_cameras(r2n2_like_views(rng, config.views), config.resolution, config.resolution)
    face_colors = _part_colors(shape, rng)[face_part]
    images = render_views(vertices, faces, cameras.intrinsics, cameras.extrinsics, config.resolution,
                          config.resolution, face_colors=face_colors, supersample=config.supersample)
    return ShapeRecord(
        model_id=f"{category}_{config.seed}_{index:05d}",
        category=category,
        split=_split_of(index, config.per_category, config.split_fractions),
        points=points,
        normals=normals,
        images=images,
        cameras=cameras,
        vertices=vertices,
        faces=faces,
        part_labels=labels,
        params=shape.params,
    )


def _make_record_star(args: tuple[SyntheticConfig, str, int]) -> ShapeRecord:
    return make_record(*args)


def write_synthetic_dataset(path: str | Path, config: SyntheticConfig, workers: int = 1, progress: bool = True) -> int:
    """Generate the dataset into the HDF5 file ``path`` (atomically); returns the shape count."""
    unknown = set(config.categories) - set(CATEGORIES)
    if unknown:
        raise UserError(f"unknown categories {sorted(unknown)}; available: {', '.join(CATEGORIES)}")
    if config.per_category < 1 or config.views < 1 or config.resolution < 8 or config.num_points < 3:
        raise UserError("per-category and views must be >= 1, resolution >= 8, points >= 3")
    layout = WriterLayout(
        categories={name: CATEGORIES[name] for name in config.categories},
        num_points=config.num_points,
        num_views=config.views,
        image_size=(config.resolution, config.resolution),
        normals=True,
        meshes=True,
        part_names=PART_NAMES,
        thin_parts=tuple(sorted(THIN_PARTS)),
        params=True,
        source="pvd synthetic generator",
        extra_attrs={"synthetic_config": asdict(config)},
    )
    # Interleave categories so that a partial run still covers all of them.
    tasks = [(config, category, i) for i in range(config.per_category) for category in config.categories]
    with ShapeWriter(path, layout) as writer, tqdm(total=len(tasks), disable=not progress, unit="shape") as bar:
        with ordered_map(_make_record_star, tasks, workers) as records:
            for record in records:
                writer.append(record)
                bar.update()
    return len(tasks)
