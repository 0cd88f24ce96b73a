"""Previews a person can read: a shape's name over input view | points from two sides | mesh from
two sides, each panel ``PANEL`` pixels square. sample.py writes one per shape; the benchmark's
figures use the same panels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import trimesh
from PIL import Image, ImageDraw, ImageFont

from pvd.data.cameras import R2N2_FOCAL_NDC, intrinsics_from_ndc_focal, orbit_extrinsics
from pvd.data.render import image_grid, render_mesh, render_points

PANEL = 256
AZIMUTHS = (30.0, 210.0)  # front-left and back-right: together they show every side once
ELEVATION, DISTANCE = 25.0, 2.6  # the unit-sphere-normalised shape fills about 80% of a panel
LABEL_HEIGHT = 28


def _unit_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (3,) and radius that map the cloud into the unit sphere."""
    centre = (points.max(0) + points.min(0)) / 2
    return centre, max(float(np.linalg.norm(points - centre, axis=1).max()), 1e-6)


def cloud_panels(points: np.ndarray, size: int = PANEL, frame: tuple[np.ndarray, float] | None = None) -> list[np.ndarray]:
    """The cloud (N, 3) from the two preview azimuths: two (size, size, 4) RGBA panels."""
    centre, radius = frame or _unit_frame(points)
    k = intrinsics_from_ndc_focal(R2N2_FOCAL_NDC, size, size)
    unit = (points - centre) / radius
    return [render_points(unit, k, orbit_extrinsics(a, ELEVATION, DISTANCE), size, size, radius_px=size / 128)
            for a in AZIMUTHS]


def mesh_panels(mesh: trimesh.Trimesh, size: int = PANEL, frame: tuple[np.ndarray, float] | None = None) -> list[np.ndarray]:
    """The mesh from the two preview azimuths (shaded, antialiased): two (size, size, 4) RGBA panels."""
    centre, radius = frame or _unit_frame(np.asarray(mesh.vertices))
    k = intrinsics_from_ndc_focal(R2N2_FOCAL_NDC, size, size)
    unit = (np.asarray(mesh.vertices) - centre) / radius
    return [render_mesh(unit, mesh.faces, k, orbit_extrinsics(a, ELEVATION, DISTANCE), size, size, supersample=2)
            for a in AZIMUTHS]


def image_panel(image: np.ndarray, size: int = PANEL) -> np.ndarray:
    """An input view (H, W, 3 or 4) uint8 scaled to a (size, size) panel."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))


def blank_panel(text: str, size: int = PANEL) -> np.ndarray:
    """A grey (size, size, 3) panel saying ``text`` (e.g. why there is no mesh)."""
    panel = Image.new("RGB", (size, size), (235, 235, 235))
    ImageDraw.Draw(panel).text((size // 2, size // 2), text, fill=(90, 90, 90), anchor="mm", font=_font(14))
    return np.asarray(panel)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def labelled(row: np.ndarray, label: str) -> np.ndarray:
    """``row`` (H, W, 3) uint8 with a white strip above it holding ``label``."""
    strip = Image.new("RGB", (row.shape[1], LABEL_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(strip).text((6, LABEL_HEIGHT // 2), label, fill=(20, 20, 20), anchor="lm", font=_font(16))
    return np.concatenate([np.asarray(strip), row], axis=0)


def preview(name: str, points: np.ndarray, view: np.ndarray | None = None, mesh: trimesh.Trimesh | None = None,
            no_mesh_reason: str | None = None, size: int = PANEL) -> np.ndarray:
    """name over: input view (if any) | points from two sides | mesh from two sides (or a panel saying
    why there is none, when ``no_mesh_reason`` is given). Points and mesh share one frame, so the
    panels line up. Returns (H, W, 3) uint8."""
    frame = _unit_frame(points)
    tiles: list[np.ndarray] = [] if view is None else [image_panel(view, size)]
    tiles += cloud_panels(points, size, frame)
    if mesh is not None:
        tiles += mesh_panels(mesh, size, frame)
    elif no_mesh_reason is not None:
        tiles.append(blank_panel(no_mesh_reason, size))
    return labelled(image_grid(tiles, columns=len(tiles)), name)


def captioned(panel: np.ndarray, text: str) -> np.ndarray:
    """``panel`` (H, W, 3 or 4) uint8 as RGB on white with ``text`` (one or more lines) at its top left."""
    rgba = panel if panel.shape[-1] == 4 else np.concatenate([panel, np.full(panel.shape[:2] + (1,), 255, np.uint8)], -1)
    image = Image.new("RGB", rgba.shape[1::-1], (255, 255, 255))
    image.paste(Image.fromarray(np.ascontiguousarray(rgba)), mask=Image.fromarray(np.ascontiguousarray(rgba[..., 3])))
    ImageDraw.Draw(image).multiline_text((4, 3), text, fill=(20, 20, 20), font=_font(13), spacing=2)
    return np.asarray(image)


def column_titles(titles: Sequence[str], size: int = PANEL, pad: int = 2) -> np.ndarray:
    """A white strip with each title centred over its column of an image_grid of ``size`` panels."""
    width = len(titles) * (size + pad) + pad
    strip = Image.new("RGB", (width, LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, title in enumerate(titles):
        draw.text((pad + i * (size + pad) + size // 2, LABEL_HEIGHT // 2), title, fill=(20, 20, 20), anchor="mm",
                  font=_font(15))
    return np.asarray(strip)


def stack_rows(rows: Sequence[np.ndarray], pad: int = 4) -> np.ndarray:
    """Rows of previews (each (H_i, W_i, 3)) one under another on white, left-aligned."""
    width = max(r.shape[1] for r in rows)
    out = np.full((sum(r.shape[0] for r in rows) + pad * (len(rows) - 1), width, 3), 255, dtype=np.uint8)
    top = 0
    for r in rows:
        out[top : top + r.shape[0], : r.shape[1]] = r
        top += r.shape[0] + pad
    return out
