"""The airplane program: fuselage, swept wings, engines and tails.

Units: fuselage length = 1; the nose at z = -0.5. The wing sections live here because only
airplanes have them.
"""

from __future__ import annotations

import math

import numpy as np

from pvd.data.synthetic.parts import X, Y, Z, ConvexPart, box, cylinder, hull, ring, unit, with_mirror

RANGES: dict[str, tuple[float, float]] = {
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
}
CHOICES: dict[str, tuple] = {"engine_count": (0, 2, 4), "tail_type": ("conventional", "t_tail"), "wing_mount": ("low", "mid", "high")}


def _airfoil(leading_edge, chord_dir, thick_dir, chord: float, thickness: float) -> np.ndarray:
    """(7, 3) convex airfoil-like section: round-ish nose, maximum thickness at 30% chord."""
    le, c, t = np.asarray(leading_edge, dtype=np.float64), unit(chord_dir) * chord, unit(thick_dir) * thickness
    profile = [(0.0, 0.0), (0.08, 0.3), (0.08, -0.3), (0.3, 0.5), (0.3, -0.5), (1.0, 0.06), (1.0, -0.06)]
    return np.array([le + s * c + h * t for s, h in profile])


def _wing(name: str, root_le, tip_le, root_chord: float, tip_chord: float, root_thickness: float,
          tip_thickness: float, chord_dir=Z, thick_dir=Y) -> ConvexPart:
    """A tapered, swept wing panel: the hull of its root and tip sections."""
    return hull(name, _airfoil(root_le, chord_dir, thick_dir, root_chord, root_thickness),
                _airfoil(tip_le, chord_dir, thick_dir, tip_chord, tip_thickness))


def build(p: dict) -> list[ConvexPart]:
    r = p["fuselage_radius"]
    ry = r * p["fuselage_aspect"]
    z_nose, z_tail = -0.5, 0.5
    z_body = z_nose + p["nose_length"]  # where the nose meets the constant section
    z_cone = z_tail - p["tail_cone_length"]  # where the tail cone starts
    re, rye = r * p["tail_end_radius"], ry * p["tail_end_radius"]
    y_end = ry - rye  # the tail cone sweeps up under a straight top line

    rings = []
    for phi in np.radians([8.0, 30.0, 52.0, 72.0, 90.0]):  # elliptic nose profile
        rings.append(ring((0.0, -p["nose_droop"] * ry * math.cos(phi), z_body - p["nose_length"] * math.cos(phi)),
                          Z, ry * math.sin(phi), r * math.sin(phi), 16))
    rings.append(ring((0.0, 0.0, z_cone), Z, ry, r, 16))
    rings.append(ring((0.0, y_end, z_tail), Z, rye, re, 16))
    parts = [hull("fuselage", *rings)]

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
    parts += with_mirror(_wing("wing", (x_root, y_root, z_le), (semi, y_root + semi * dihedral, z_le + semi * sweep),
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
        parts += with_mirror(cylinder("engine", (x, y, z_front), (x, y, z_front + ln), rn, 0.8 * rn))
        z_lead_out = wing_at(x + 0.25 * rn)[0]
        z0 = max(z_front + 0.15 * ln, z_lead_out + 0.08 * chord)
        z1 = min(z_front + 0.85 * ln, z_lead + 0.65 * chord)
        parts += with_mirror(box("engine", (x - 0.25 * rn, y + 0.7 * rn, z0), (x + 0.25 * rn, y_wing, z1)))

    # Tails. Both use one thickness; tips are at least 3.5 thicknesses long in chord.
    t_tail = p["tail_thickness"] * span
    t_tail_tip = max(0.8 * t_tail, 0.0105 * span)
    v_chord, v_height = p["vtail_chord"], p["vtail_height"]
    v_tip_chord = max(v_chord * p["vtail_taper"], 3.5 * t_tail_tip)
    v_z = z_tail - 0.01 - v_chord
    v_y = y_end  # the root section sits inside the narrowing tail cone
    v_tip_le = (0.0, v_y + v_height, v_z + v_height * math.tan(math.radians(p["vtail_sweep_deg"])))
    parts.append(_wing("vertical_tail", (0.0, v_y, v_z), v_tip_le, v_chord, v_tip_chord, t_tail, t_tail_tip,
                       chord_dir=Z, thick_dir=X))

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
    parts += with_mirror(_wing("horizontal_tail", (h_root_x, h_y, h_z), h_tip_le, h_chord, h_tip_chord, t_tail, t_tail_tip))
    if p["tail_type"] == "t_tail":
        # Out in the open the two tailplane halves overlap across x = 0 with nearly coincident
        # skins; a bullet fairing on the fin's tip encloses that overlap.
        x = 1.6 * h_root_x
        lead = (h_z - 0.03 * h_chord, 1.1 * h_chord, 1.4 * t_tail)
        parts.append(hull("vertical_tail", _airfoil((x, h_y, lead[0]), Z, Y, *lead[1:]),
                          _airfoil((-x, h_y, lead[0]), Z, Y, *lead[1:])))
    return parts
