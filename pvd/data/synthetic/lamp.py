"""The lamp program: a base, a straight or bent pole, and a cone, cylinder or dome shade.

Units: nominal lamp height 1; base on the floor at y = 0.
"""

from __future__ import annotations

import math

import numpy as np

from pvd.data.synthetic.parts import Y, ConvexPart, cylinder, dome, hull, ring, square_y, unit

RANGES: dict[str, tuple[float, float]] = {
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
}
CHOICES: dict[str, tuple] = {"pole_style": ("straight", "bent"), "shade_shape": ("cone", "cylinder", "dome"),
                             "base_shape": ("round", "square")}


def _shade_points(apex, axis, height: float, radius: float, top_ratio: float, shape: str) -> np.ndarray:
    """A solid lampshade from its top centre ``apex`` opening along ``axis``."""
    apex, axis = np.asarray(apex, dtype=np.float64), unit(axis)
    if shape == "dome":
        return dome(apex, axis, height, radius, segments=16, rings=4)
    top = radius * (top_ratio if shape == "cone" else 1.0)
    return np.concatenate([ring(apex, axis, top, top, 20), ring(apex + height * axis, axis, radius, radius, 20)])


def build(p: dict) -> list[ConvexPart]:
    base_r, base_h = p["base_radius"], p["base_height"]
    if p["base_shape"] == "round":
        parts = [cylinder("base", (0.0, 0.0, 0.0), (0.0, base_h, 0.0), base_r, base_r * p["base_taper"], segments=24)]
    else:
        s = 0.9 * base_r
        parts = [hull("base", square_y(0.0, 0.0, 0.0, s), square_y(0.0, base_h, 0.0, s * p["base_taper"]))]
    shade_h, shade_r = p["shade_height"], p["shade_radius"]
    shape, top_ratio = p["shade_shape"], p["shade_top_ratio"]

    if p["pole_style"] == "straight":
        shade = _shade_points((0.0, 1.0, 0.0), -Y, shade_h, shade_r, top_ratio, shape)
        parts.append(hull("shade", shade))
        r_pole = p["pole_thickness"] / 2  # the shade's top is at y = 1: the lamp's height
        parts.append(cylinder("pole", (0.0, base_h / 2, 0.0), (0.0, 1.0 - 0.5 * shade_h, 0.0), r_pole, segments=12))
        return parts

    # Bent (desk lamp): a post at the back of the base, an arm reaching forward (-z) and up,
    # and the shade hanging from the arm's end, tilted towards the front.
    bend = np.array([0.0, p["bend_height"], 0.4 * base_r])
    angle = math.radians(p["bend_angle_deg"])
    end = bend + p["arm_length"] * np.array([0.0, math.cos(angle), -math.sin(angle)])
    tilt = math.radians(p["shade_tilt_deg"])
    axis = np.array([0.0, -math.cos(tilt), -math.sin(tilt)])
    shade = _shade_points(end - 0.3 * shade_h * axis, axis, shade_h, shade_r, top_ratio, shape)
    parts.append(hull("shade", shade))
    height = max(float(shade[:, 1].max()), end[1], bend[1])
    r_pole = p["pole_thickness"] / 2 * height
    parts.append(cylinder("pole", (0.0, base_h / 2, bend[2]), bend, r_pole, segments=12))
    parts.append(cylinder("arm", bend, end, r_pole, segments=12))
    # A ball joint a little fatter than the tubes covers both end caps.
    parts.append(hull("pole", dome(bend + (0.0, 1.08 * r_pole, 0.0), -Y, 1.08 * r_pole, 1.08 * r_pole, 12, 3),
                      dome(bend - (0.0, 1.08 * r_pole, 0.0), Y, 1.08 * r_pole, 1.08 * r_pole, 12, 3)))
    return parts
