"""Running a Plan: its tasks converted in worker processes and written into one file.

Results come back in task order whatever the number of workers; the file appears only once
every shape is written, with the :class:`~.tasks.Summary` of what was read and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from pvd.data.hdf5 import ShapeRecord, ShapeWriter, WriterLayout
from pvd.data.pool import ordered_map
from pvd.data.shapenet.core import convert_mesh
from pvd.data.shapenet.folder import convert_points
from pvd.data.shapenet.pc15k import convert_pc15k
from pvd.data.shapenet.tasks import Converted, CorruptInput, Plan, Skip, Summary, Task
from pvd.errors import UserError


def process_task(task: Task) -> Converted | Skip:
    """Convert one shape; a corrupt input becomes a :class:`Skip` (bugs still raise)."""
    try:
        if task.kind == "pc15k":
            return convert_pc15k(task)
        if task.kind == "mesh":
            return convert_mesh(task)
        if task.kind == "points":
            return convert_points(task)
    except CorruptInput as e:
        return Skip(task.path, e.reason, e.detail)
    raise ValueError(f"unknown task kind {task.kind!r}")


def _quiet_trimesh() -> None:
    # trimesh logs a warning for every missing material or texture of a real OBJ file
    logging.getLogger("trimesh").setLevel(logging.ERROR)


def write_records(
    out: str | os.PathLike,
    layout: WriterLayout,
    results: Iterable[Converted | ShapeRecord | Skip],
    *,
    strict: bool = False,
    total: int | None = None,
    progress: bool = False,
    skipped: Sequence[Skip] = (),
    notes: Sequence[str] = (),
) -> Summary:
    """Write converted shapes into ``out`` atomically; returns the :class:`Summary`.

    ``skipped`` are skips found before conversion. With ``strict`` any skip raises UserError;
    so do zero converted shapes. On any exception (or interrupt) no file is left at ``out``.
    """
    summary = Summary(out=str(out), skipped=list(skipped), notes=list(notes))
    if strict and summary.skipped:
        raise UserError(f"--strict: {summary.skipped[0]}")
    with ShapeWriter(out, layout) as writer:
        for item in tqdm(results, total=total, disable=None if progress else True, unit="shape", dynamic_ncols=True):
            if isinstance(item, Skip):
                if strict:
                    raise UserError(f"--strict: {item}")
                summary.skipped.append(item)
                continue
            converted = item if isinstance(item, Converted) else Converted(item)
            writer.append(converted.record)
            summary.read += 1
            summary.per_split[converted.record.split] += 1
            summary.per_category[converted.record.category] += 1
            summary.upsampled += converted.upsampled
            if converted.silhouette is not None:
                summary.silhouettes.append(converted.silhouette)
            if converted.off_frame is not None:
                summary.off_frame.append(converted.off_frame)
        if summary.read == 0:
            counts = Counter(s.reason for s in summary.skipped)
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
            first = f"; first: {summary.skipped[0]}" if summary.skipped else ""
            raise UserError(f"no shapes could be read ({len(summary.skipped)} skipped: {reasons}{first})")
        layout.extra_attrs.update(summary.frame_check())
        layout.extra_attrs["skipped"] = len(summary.skipped)
        layout.extra_attrs["skip_reasons"] = json.dumps(dict(sorted(Counter(s.reason for s in summary.skipped).items())))
        layout.extra_attrs["upsampled"] = summary.upsampled
    return summary


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def run_plan(plan: Plan, out: str | os.PathLike, *, workers: int | None = None, strict: bool = False, progress: bool = True) -> Summary:
    """Convert every task of ``plan`` into ``out`` (see :func:`write_records`)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'shapenet.h5'}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if strict and plan.skipped:
        raise UserError(f"--strict: {plan.skipped[0]}")
    if not plan.tasks:
        reasons = f" ({len(plan.skipped)} skipped; first: {plan.skipped[0]})" if plan.skipped else ""
        raise UserError(f"nothing to convert{reasons}")
    with ordered_map(process_task, plan.tasks, workers, initializer=_quiet_trimesh) as results:
        return write_records(out, plan.layout, results, strict=strict, total=len(plan.tasks), progress=progress, skipped=plan.skipped, notes=plan.notes)
