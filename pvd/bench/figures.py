"""The benchmark's figures: input | truth | methods grid and each method's worst shapes (the panels
of pvd.preview), quality curves (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pvd.bench.common import FLAGS, METHOD_ORDER, METHOD_TITLES, METRICS
from pvd.bench.data import Data, Shape
from pvd.data.render import image_grid, render_points, save_png
from pvd.io import atomic_path
from pvd.preview import PANEL, blank_panel, captioned, column_titles, image_panel, labelled, stack_rows

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
           overlay: np.ndarray | None = None, size: int = PANEL) -> np.ndarray:
    """(size, size, 4) uint8: the (N, 3) cloud seen from the input view's camera (optionally over
    the (M, 3) truth ``overlay`` in grey)."""
    k = shape.intrinsics.copy()
    k[:2] *= size / shape.image.shape[1]
    if points is None and overlay is None:
        return np.zeros((size, size, 4), np.uint8)
    pts = np.zeros((0, 3)) if points is None else points
    if overlay is not None:
        colors = np.concatenate([np.tile([[0.9, 0.3, 0.2]], (len(pts), 1)), np.tile([[0.75, 0.75, 0.75]], (len(overlay), 1))])
        pts = np.concatenate([pts, overlay])
    return render_points(pts, k, shape.extrinsics, size, size, colors=colors, radius_px=size / 128)


def figure_grid(data: Data, outputs: dict[str, dict[str, Any]], path: Path, count: int = 12) -> None:
    """grid.png: per shape, its name over input | truth | each method's output, all from the input
    camera, for ``count`` shapes (those SDS lifted first); the panels of pvd.preview."""
    methods = [m for m in METHOD_ORDER if m != "truth-resample" and m in outputs]
    with_sds = [s for s in data.shapes[: data.num] if "sds" not in outputs or s.name in outputs["sds"]]
    shapes = (with_sds if len(with_sds) >= min(count, data.num) else data.shapes[: data.num])[:count]
    rows = [column_titles(["input", "truth"] + [METHOD_TITLES[m] for m in methods])]
    for s in shapes:
        tiles = [image_panel(s.image), render(s.ref, s)]
        tiles += [render(outputs[m].get(s.name), s) if s.name in outputs[m] else blank_panel("not run") for m in methods]
        rows.append(labelled(image_grid(tiles, columns=len(tiles)), f"{s.name} ({s.category})"))
    save_png(path, stack_rows(rows))


def worst_caption(name: str, category: str, record: dict[str, Any], more_flags: Sequence[str] = ()) -> str:
    """A worst-shape tile's caption: name, category, CD, F@1% and the flags that fired."""
    flags = ", ".join([f for f in FLAGS if record.get(f) and f != "no_mesh"] + list(more_flags))
    return f"{name} ({category})\nCD {record['cd']:.3g}, F@1% {record['f1']:.2f}" + (f"\n{flags}" if flags else "")


def figure_worst(data: Data, records: dict[str, dict[str, dict[str, Any]]], clouds: dict[str, dict[str, np.ndarray]],
                 path: Path, worst: dict[str, list[str]], more_flags: dict[str, dict[str, list[str]]] | None = None) -> None:
    """worst.png: per method, its worst shapes by CD (``worst``: method -> names), output in red over
    the truth in grey from the input camera, each with its name, numbers and the failure flags that
    fired (the scoring's, plus ``more_flags``: method -> name -> flags, e.g. a lifting run's Janus)."""
    methods = [m for m in METHOD_ORDER if m in worst and worst[m]]
    by_name = {s.name: s for s in data.shapes[: data.num]}
    rows = []
    for m in methods:
        tiles = []
        for name in worst[m]:
            s, r = by_name[name], records[m][name]
            text = worst_caption(name, s.category, r, (more_flags or {}).get(m, {}).get(name, []))
            tiles.append(captioned(render(None if r["empty"] else clouds[m][name], s, overlay=s.ref), text))
        rows.append(labelled(image_grid(tiles, columns=len(tiles)),
                             f"{METHOD_TITLES[m]}: worst shapes by CD (output red, truth grey, input camera)"))
    if rows:
        save_png(path, stack_rows(rows))


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
