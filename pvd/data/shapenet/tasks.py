"""What a conversion passes around: one Task per shape, a Plan of them, and the results.

A reader's planner produces a :class:`Plan`; each :class:`Task` (picklable, for worker
processes) comes back as a :class:`Converted` shape or a :class:`Skip` with its reason, and
the :class:`Summary` counts them. Shared by every reader and the runner, so none of them
depends on another to name these.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pvd.data.hdf5 import SPLITS, ShapeRecord, WriterLayout


@dataclass(frozen=True)
class Skip:
    """A shape (or file) that was not converted: ``reason`` is a short class, ``detail`` free."""

    path: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Converted:
    """One converted shape and what the summary counts about it."""

    record: ShapeRecord
    upsampled: bool = False
    silhouette: tuple[float, float] | None = None  # R2N2 join: (points inside, IoU)
    off_frame: str | None = None  # Core.v2 check: why the mesh is not in the normalised frame


class CorruptInput(Exception):
    """A file inside a valid tree that cannot be used; the shape is skipped (see :class:`Skip`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def short(e: BaseException) -> str:
    """An exception as one line of at most 160 characters, for a :class:`CorruptInput` detail."""
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


@dataclass
class Summary:
    """What a conversion read and skipped; ``str()`` is the report printed at the end."""

    out: str
    read: int = 0
    per_split: Counter = field(default_factory=Counter)
    per_category: Counter = field(default_factory=Counter)
    skipped: list[Skip] = field(default_factory=list)
    upsampled: int = 0
    silhouettes: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    off_frame: list[str] = field(default_factory=list)  # "path: why" of meshes outside the expected frame
    max_listed: int = 20

    def frame_check(self) -> dict[str, float]:
        """R2N2 join statistics (empty without a join)."""
        if not self.silhouettes:
            return {}
        s = np.asarray(self.silhouettes)
        return {
            "r2n2_points_in_silhouette_mean": float(s[:, 0].mean()),
            "r2n2_points_in_silhouette_min": float(s[:, 0].min()),
            "r2n2_silhouette_iou_mean": float(s[:, 1].mean()),
        }

    def __str__(self) -> str:
        splits = ", ".join(f"{s} {self.per_split[s]}" for s in SPLITS)
        lines = [f"read {self.read} shapes ({splits}) in {len(self.per_category)} categories -> {self.out}"]
        if self.per_category:
            lines.append("  per category: " + ", ".join(f"{k} {v}" for k, v in self.per_category.items()))
        if self.upsampled:
            lines.append(f"upsampled {self.upsampled} point clouds that had fewer points than requested (drawn with replacement)")
        check = self.frame_check()
        if check:
            inside = check["r2n2_points_in_silhouette_mean"]
            lines.append(
                f"R2N2 frame check: {100 * inside:.1f}% of each shape's points project inside its silhouettes on average "
                f"(worst shape {100 * check['r2n2_points_in_silhouette_min']:.1f}%, silhouette IoU {check['r2n2_silhouette_iou_mean']:.2f})"
            )
            if inside < 0.9:
                lines.append("WARNING: the R2N2 renderings and the point clouds do not seem to share a frame (v1 vs v2?)")
        lines.extend(self.notes)
        if self.off_frame:
            lines.append(f"WARNING: {len(self.off_frame)} meshes are not in ShapeNetCore.v2's normalised frame (bounding box "
                         "centred at 0, diagonal 1); they were converted as they are and will render off-centre. "
                         "Convert again with --normalize to rescale every mesh:")
            lines.extend(f"  {s}" for s in self.off_frame[: self.max_listed])
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            for reason, n in sorted(Counter(s.reason for s in self.skipped).items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {n:6d}  {reason}")
            shown = self.skipped[: self.max_listed]
            lines.append(f"first {len(shown)} skipped:" if len(shown) < len(self.skipped) else "skipped:")
            lines.extend(f"  {s}" for s in shown)
        else:
            lines.append("skipped 0")
        return "\n".join(lines)


@dataclass(frozen=True)
class Task:
    """Everything needed to convert one shape (picklable, processed by :func:`pvd.data.shapenet.runner.process_task`)."""

    kind: str  # "pc15k", "mesh" or "points"
    path: str
    model_id: str
    category: str
    split: str
    seed: int
    num_points: int
    rendering: str | None = None  # pc15k: the R2N2 rendering folder to join
    num_views: int = 0
    image_size: int = 0
    supersample: int = 1
    meshes: bool = False
    normals: bool = False
    normalize: bool = True
    check_frame: bool = False  # not normalised: report a mesh outside ShapeNetCore.v2's frame (Converted.off_frame)


@dataclass
class Plan:
    """A conversion before it runs: the file layout, the tasks, and skips found while listing."""

    layout: WriterLayout
    tasks: list[Task]
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
