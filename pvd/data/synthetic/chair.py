"""The chair program: seat, backrest (solid or slatted), arms, and legs, pedestal or sled.

Units: metres; floor at y = 0, backrest towards +z.
"""

from __future__ import annotations

import math

import numpy as np

from pvd.data.synthetic.parts import X, Y, ConvexPart, bar, box, cylinder, hull, rect, square_y

RANGES: dict[str, tuple[float, float]] = {
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
}
CHOICES: dict[str, tuple] = {"back_style": ("solid", "vertical_slats", "horizontal_slats"), "slat_count": (3, 4, 5, 6),
                             "leg_style": ("four_legs", "pedestal", "sled"), "has_arms": (0, 1), "has_stretchers": (0, 1)}


def resolve(p: dict) -> None:
    if p["leg_style"] != "four_legs":
        p["has_stretchers"] = 0


def _max_y(parts: list[ConvexPart]) -> float:
    return max(float(p.vertices[:, 1].max()) for p in parts)


def build(p: dict) -> list[ConvexPart]:
    width, depth = p["seat_width"], p["seat_depth"]
    seat_y, seat_t = p["seat_height"], p["seat_thickness"]
    back_edge = width / p["seat_flare"]  # the seat narrows towards the back
    parts = [hull("seat", *[[(-w / 2, y, z), (w / 2, y, z)] for y in (seat_y - seat_t, seat_y)
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
    bar_t = p["leg_thickness"] * height_est  # posts, slats and arms scale with the legs
    if p["back_style"] == "solid":
        parts.append(hull("backrest", rect(foot, w_bottom / 2, back_t / 2, X, out),
                          rect(foot + length * up, w_top / 2, back_t / 2, X, out)))
    else:
        def post_x(f: float) -> float:  # centre of the right post at distance f along the back
            return (w_bottom / 2 - bar_t / 2) + (f / length) * ((w_top - w_bottom) / 2)

        for s in (-1.0, 1.0):
            parts.append(bar("back_frame", foot + s * post_x(0.0) * X, foot + length * up + s * post_x(length) * X,
                             bar_t / 2, bar_t / 2, out))
        rail = min(0.2 * length, 0.1)
        f_rail = length - 0.008 - rail / 2  # top rail ends inside the posts, just below their tops
        c_rail = foot + f_rail * up
        parts.append(bar("backrest", c_rail - post_x(f_rail) * X, c_rail + post_x(f_rail) * X,
                         rail / 2, 0.375 * bar_t, up))
        inner = 2.0 * post_x(0.0) - bar_t  # clear width between the posts at the foot
        count = p["slat_count"]
        if p["back_style"] == "vertical_slats":
            half_w = min(0.25 * inner / count, 0.03)
            for i in range(count):
                x = (i + 0.5) / count * inner - inner / 2
                parts.append(bar("back_slat", foot + x * X, foot + f_rail * up + x * X, 0.275 * bar_t, half_w, out))
        else:
            count = min(count, 5)
            half_h = min(0.2 * (f_rail - rail / 2) / count, 0.03)
            for i in range(count):
                f = (i + 0.6) / (count + 0.2) * (f_rail - rail / 2 - half_h)
                c = foot + f * up
                parts.append(bar("back_slat", c - post_x(f) * X, c + post_x(f) * X, half_h, 0.275 * bar_t, up))

    if p["has_arms"]:
        arm_y = seat_y + p["arm_height"]
        arm_t = 0.9 * bar_t
        x_arm = w_bottom / 2 + 0.01 - p["arm_width"] / 2  # aligned with the back, 1 cm proud of it
        z_back = foot[2] + (arm_y - foot[1]) * math.tan(tilt)  # mid-thickness of the back at arm height
        z_front = -depth / 2 + 0.02
        support = min(arm_t, 0.8 * p["arm_width"])
        for s in (-1.0, 1.0):
            parts.append(box("armrest", (s * x_arm - p["arm_width"] / 2, arm_y - arm_t / 2, z_front),
                             (s * x_arm + p["arm_width"] / 2, arm_y + arm_t / 2, z_back)))
            z_support = z_front + 0.6 * support + 0.01
            parts.append(bar("armrest", (s * x_arm, seat_y - seat_t / 2, z_support), (s * x_arm, arm_y, z_support),
                             support / 2, support / 2, X))

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
                parts.append(hull("leg", square_y(bottom[0], 0.0, bottom[2], a_bottom / 2),
                                  square_y(top[0], leg_top, top[2], a_top / 2)))
        if p["has_stretchers"]:
            half = 0.35 * a_bottom

            def at(key, y: float) -> np.ndarray:  # leg centre at height y
                bottom, top = centres[key]
                return bottom + (top - bottom) * (y / leg_top)

            y_side = p["stretcher_height"] * seat_y
            y_cross = y_side + 3.0 * half  # front/back bars sit higher: no shared faces with the sides
            for s in (-1.0, 1.0):
                parts.append(bar("stretcher", at((s, -1.0), y_side), at((s, 1.0), y_side), half, half))
                parts.append(bar("stretcher", at((-1.0, s), y_cross), at((1.0, s), y_cross), half, half))
    elif p["leg_style"] == "pedestal":
        # Gas-lift column on a hub with a five-spoke star base; spokes slope down to the floor.
        column_r = 0.9 * a_top
        hub_y = a_top + 0.04
        hub_r = 1.7 * column_r
        parts.append(cylinder("pedestal", (0.0, hub_y - 0.7 * a_top, 0.0), (0.0, hub_y + a_top + 0.02, 0.0), hub_r))
        parts.append(cylinder("pedestal", (0.0, hub_y + a_top, 0.0), (0.0, leg_top, 0.0), column_r))
        reach = 0.3 * (width + depth)
        for k in range(5):
            phi = 2.0 * math.pi * k / 5
            d, side = np.array([math.sin(phi), 0.0, -math.cos(phi)]), np.array([math.cos(phi), 0.0, math.sin(phi)])
            tip = reach * d
            parts.append(hull("leg", rect((0.0, hub_y, 0.0), 0.625 * a_top, a_top / 2, side, Y),
                              rect(tip + (0.0, a_top / 2, 0.0), 0.5 * a_top, a_top / 2, side, Y)))
    else:  # sled: a floor runner and two posts per side
        x = back_edge / 2 - inset - a_top / 2
        z_post = depth / 2 - inset - a_top / 2 - 0.02
        post = 0.85 * a_top  # narrower than the runner, so their side faces never coincide
        for s in (-1.0, 1.0):
            parts.append(box("leg", (s * x - a_top / 2, 0.0, -depth / 2), (s * x + a_top / 2, a_top, depth / 2 - 0.02)))
            for sz in (-1.0, 1.0):
                parts.append(bar("leg", (s * x, a_top / 2, sz * z_post), (s * x, leg_top, sz * z_post), post / 2, post / 2, X))
    return parts
