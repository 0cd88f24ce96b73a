"""The car program: body, cabin and wheels of sedans, hatchbacks, pickups and vans.

Units: metres; wheels on the floor at y = 0, front towards -z.
"""

from __future__ import annotations

import math

from pvd.data.synthetic.parts import ConvexPart, box, cylinder, hull, with_mirror

RANGES: dict[str, tuple[float, float]] = {
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
}
CHOICES: dict[str, tuple] = {"body_style": ("sedan", "hatchback", "pickup", "van"), "wheel_count": (4, 6)}


def build(p: dict) -> list[ConvexPart]:
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
    parts = [hull("body",
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
    parts.append(hull("cabin",
                      [(sx * cabin_w, belt - sink, z) for sx in (-1, 1) for z in (z0 - sink * front_rake, z1 + sink * rear_rake)],
                      [(sx * roof_w, height, z) for sx in (-1, 1) for z in (z0 + rise * front_rake, z1 - rise * rear_rake)]))
    if style == "pickup":
        wall_t, wall_x = 0.035 * width, 0.455 * width
        wall_top = belt + 0.35 * rise
        z_start, z_end = z1 - 0.01 * length, length / 2 - tail - 0.005
        for s in (-1.0, 1.0):
            parts.append(box("cargo_bed", (min(s * wall_x, s * (wall_x - wall_t)), belt - sink, z_start),
                             (max(s * wall_x, s * (wall_x - wall_t)), wall_top, z_end)))
        parts.append(box("cargo_bed", (-(wall_x - wall_t / 2), belt - sink, z_end - 0.005 - wall_t),
                         (wall_x - wall_t / 2, wall_top - 0.01, z_end - 0.005)))

    radius = p["wheel_radius"] * height
    wheel_w = p["wheel_width"] * width
    x_out = 0.51 * width
    base = p["wheelbase"] * length
    axles = [-base / 2, base / 2] + ([base / 2 - 2.25 * radius] if p["wheel_count"] == 6 else [])
    for z in axles:
        parts += with_mirror(cylinder("wheel", (x_out - wheel_w, radius, z), (x_out, radius, z), radius, segments=20))
    return parts
