"""The benchmark's figures: input | truth | methods grid, each method's worst shapes, quality curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pvd.bench.common import FLAGS, METHOD_ORDER, METHOD_TITLES, METRICS
from pvd.bench.data import Data, Shape
from pvd.io import atomic_path

TILE = 96


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically, then closed."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def render(points: np.ndarray | None, shape: Shape, colors: np.ndarray | None = None,
           overlay: np.ndarray | None = None) -> np.ndarray:
    """(TILE, TILE, 4) uint8: the (N, 3) cloud seen from the input view's camera (optionally over
    the (M, 3) truth ``overlay`` in grey)."""
    from pvd.data.render import render_points

    k = shape.intrinsics.copy()
    k[:2] *= TILE / shape.image.shape[1]
    if points is None and overlay is None:
        return np.zeros((TILE, TILE, 4), np.uint8)
    pts = np.zeros((0, 3)) if points is None else points
    if overlay is not None:
        colors = np.concatenate([np.tile([[0.9, 0.3, 0.2]], (len(pts), 1)), np.tile([[0.75, 0.75, 0.75]], (len(overlay), 1))])
        pts = np.concatenate([pts, overlay])
    return render_points(pts, k, shape.extrinsics, TILE, TILE, colors=colors, radius_px=1.0)


def input_tile(shape: Shape) -> np.ndarray:
    """(TILE, TILE, 4) uint8: the input view, resized."""
    from PIL import Image

    return np.asarray(Image.fromarray(shape.image, "RGBA").resize((TILE, TILE), Image.NEAREST))


def figure_grid(data: Data, outputs: dict[str, dict[str, Any]], path: Path, count: int = 12) -> None:
    """grid.png: input | truth | each method's output for ``count`` shapes (those SDS lifted first)."""
    plt = _pyplot()
    methods = [m for m in METHOD_ORDER if m != "truth-resample" and m in outputs]
    with_sds = [s for s in data.shapes[: data.num] if "sds" not in outputs or s.name in outputs["sds"]]
    shapes = (with_sds if len(with_sds) >= min(count, data.num) else data.shapes[: data.num])[:count]
    columns = ["input", "truth"] + [METHOD_TITLES[m] for m in methods]
    fig, axes = plt.subplots(len(shapes), len(columns), figsize=(1.3 * len(columns), 1.3 * len(shapes) + 0.3), squeeze=False)
    for i, s in enumerate(shapes):
        tiles = [input_tile(s), render(s.ref, s)] + [render(outputs[m].get(s.name), s) if s.name in outputs[m]
                                                     else np.zeros((TILE, TILE, 4), np.uint8) for m in methods]
        for j, tile in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(tile)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{s.category}\n{s.name}", fontsize=6)
    fig.tight_layout(pad=0.2)
    save_figure(fig, path)


def figure_worst(data: Data, records: dict[str, dict[str, dict[str, Any]]], clouds: dict[str, dict[str, np.ndarray]],
                 path: Path, worst: dict[str, list[str]]) -> None:
    """worst.png: each method's worst shapes (``worst``: method -> names) over the truth, with their numbers."""
    plt = _pyplot()
    methods = [m for m in METHOD_ORDER if m in worst and worst[m]]
    by_name = {s.name: s for s in data.shapes[: data.num]}
    cols = 5
    fig, axes = plt.subplots(max(len(methods), 1), cols, figsize=(1.8 * cols, 2.0 * max(len(methods), 1) + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for i, m in enumerate(methods):
        for j, name in enumerate(worst[m]):
            s, r = by_name[name], records[m][name]
            ax = axes[i, j]
            ax.axis("on")
            ax.imshow(render(None if r["empty"] else clouds[m][name], s, overlay=s.ref))
            flags = ", ".join(f for f in FLAGS if r.get(f) and f != "no_mesh")
            ax.set_title(f"{name} ({s.category})\nCD {r['cd']:.3g}, F@1% {r['f1']:.2f}" + (f"\n{flags}" if flags else ""),
                         fontsize=6)
            if j == 0:
                ax.set_ylabel(METHOD_TITLES[m], fontsize=8)
    fig.suptitle("worst five shapes per method by CD (output red, truth grey, input camera)", fontsize=8)
    fig.tight_layout(pad=0.3)
    save_figure(fig, path)


def figure_curve(points: list[dict[str, Any]], x_key: str, group_key: str | None, path: Path, xlabel: str, log: bool) -> None:
    """CD and F@1% with their intervals against ``x_key``, one line per ``group_key`` value."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(p[group_key] if group_key else "", []).append(p)
    for label, items in groups.items():
        items = sorted(items, key=lambda p: p[x_key])
        for ax, key in zip(axes, ("cd", "f1")):
            xs = [p[x_key] for p in items]
            mean = [p[key]["mean"] * METRICS[key][2] for p in items]
            lo = [p[key]["low"] * METRICS[key][2] for p in items]
            hi = [p[key]["high"] * METRICS[key][2] for p in items]
            ax.errorbar(xs, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], marker="o", capsize=3,
                        label=label or None)
    axes[0].set(xlabel=xlabel, ylabel="CD (x1e-3, squared, world frame)")
    axes[1].set(xlabel=xlabel, ylabel="F-score @ 1% of the box diagonal")
    for ax in axes:
        if log:
            ax.set_xscale("log")
        if group_key:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
