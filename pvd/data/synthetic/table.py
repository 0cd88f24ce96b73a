"""The table program: rectangular or round top, four legs or a pedestal, apron, shelf or stretchers.

Units: metres; floor at y = 0.
"""

from __future__ import annotations

import math

import numpy as np

from pvd.data.synthetic.parts import Y, ConvexPart, bar, box, cylinder, hull, rect, square_y

RANGES: dict[str, tuple[float, float]] = {
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
}
CHOICES: dict[str, tuple] = {"top_shape": ("rectangular", "round"), "leg_style": ("four_legs", "pedestal"),
                             "lower": ("none", "shelf", "stretchers"), "pedestal_base": ("disk", "cross"), "has_apron": (0, 1)}


def resolve(p: dict) -> None:
    if p["leg_style"] != "four_legs" and p["lower"] == "stretchers":
        p["lower"] = "none"
    if p["leg_style"] != "four_legs" or p["top_shape"] != "rectangular":
        p["has_apron"] = 0


def build(p: dict) -> list[ConvexPart]:
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
    parts = [hull("tabletop", [(x, y, z) for x, z in outline for y in (height - top_t, height)])]

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
                parts.append(hull("leg", square_y(bottom[0], 0.0, bottom[2], a_bottom / 2),
                                  square_y(top[0], leg_top, top[2], a_top / 2)))

        def at(key, y: float) -> np.ndarray:  # leg centre at height y
            bottom, top = centres[key]
            return bottom + (top - bottom) * (y / leg_top)

        if p["has_apron"]:
            # Boards between the legs, just under the top; side boards stop a little higher.
            for s in (-1.0, 1.0):
                for y0, ends in ((height - top_t - p["apron_height"], ((-1.0, s), (1.0, s))),
                                 (height - top_t - 0.9 * p["apron_height"], ((s, -1.0), (s, 1.0)))):
                    y_mid = 0.5 * (y0 + leg_top)
                    parts.append(bar("apron", at(ends[0], y_mid), at(ends[1], y_mid), (leg_top - y0) / 2, 0.25 * a_top))
        if p["lower"] == "stretchers":
            half = 0.35 * a_bottom
            for s in (-1.0, 1.0):
                parts.append(bar("stretcher", at((s, -1.0), lower_y), at((s, 1.0), lower_y), half, half))
                parts.append(bar("stretcher", at((-1.0, s), lower_y + 3.0 * half), at((1.0, s), lower_y + 3.0 * half), half, half))
        elif p["lower"] == "shelf":
            # The shelf's corners sit in the legs' centre lines, so it is held by all four.
            corner = at((1.0, 1.0), lower_y)
            st = p["shelf_thickness"]
            parts.append(box("shelf", (-corner[0], lower_y - st / 2, -corner[2]), (corner[0], lower_y + st / 2, corner[2])))
    else:
        column_r = p["pedestal_radius_frac"] * height
        reach = p["base_radius_frac"] * (width if p["top_shape"] == "rectangular" else 0.8 * width)
        if p["pedestal_base"] == "disk":
            base_t = 0.04 * height
            parts.append(cylinder("base", (0.0, 0.0, 0.0), (0.0, base_t, 0.0), reach, 0.85 * reach, segments=24))
            foot_y = 0.5 * base_t
        else:
            # Four feet, sloping up towards the column so their faces are never coplanar.
            for k in range(4):
                phi = math.pi / 4 + k * math.pi / 2
                d, side = np.array([math.cos(phi), 0.0, math.sin(phi)]), np.array([-math.sin(phi), 0.0, math.cos(phi)])
                parts.append(hull("leg", rect((0.0, 1.1 * a_top, 0.0), 0.8 * a_top, a_top / 2, side, Y),
                                  rect(reach * d + (0.0, a_top / 2, 0.0), 0.75 * a_top, a_top / 2, side, Y)))
            parts.append(cylinder("pedestal", (0.0, 0.4 * a_top, 0.0), (0.0, 2.0 * a_top, 0.0), 1.3 * column_r, segments=20))
            foot_y = 1.5 * a_top
        parts.append(cylinder("pedestal", (0.0, foot_y, 0.0), (0.0, leg_top, 0.0), column_r, segments=20))
        if p["lower"] == "shelf":
            st = p["shelf_thickness"]
            parts.append(cylinder("shelf", (0.0, lower_y - st / 2, 0.0), (0.0, lower_y + st / 2, 0.0),
                                  0.55 * min(leg_x, leg_z) / math.sqrt(0.5), segments=24))
    return parts
