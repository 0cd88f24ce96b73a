"""Lifting outputs side by side: per shape, the input view, the truth's points and each run's mesh
(``python -m pvd.sds ... --out DIR`` writes NAME.obj and records/NAME.json), all in the truth's
frame, captioned with the run's CD and F@1%.

    python tests/benchmarks/lifting_figure.py --data data/synth.h5 --shapes val-00800 val-00801 \\
        --run voxel=outputs/representations/voxel --run points=outputs/representations/points-c005 \\
        --out tests/benchmarks/figures/representations_val.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd import preview  # noqa: E402
from pvd.data.hdf5 import open_dataset_file  # noqa: E402
from pvd.io import atomic_path  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--shapes", nargs="+", required=True, help="names as the lifting runs write them (SPLIT-ROW)")
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    p.add_argument("--view", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = [spec.partition("=")[::2] for spec in args.run]
    rows = []
    with open_dataset_file(args.data) as f:
        for name in args.shapes:
            row = int(name.rsplit("-", 1)[1])
            truth = np.asarray(f["points"][row][:4096])
            frame = preview._unit_frame(truth)
            panels = [preview.captioned(preview.image_panel(np.asarray(f["images"][row, args.view])), ""),
                      preview.captioned(preview.cloud_panels(truth, frame=frame)[0], "")]  # RGBA on white
            for _, folder in runs:
                mesh_path, record_path = Path(folder) / f"{name}.obj", Path(folder) / "records" / f"{name}.json"
                if not mesh_path.is_file() or not record_path.is_file():
                    panels.append(preview.blank_panel("not run"))
                    continue
                record = json.loads(record_path.read_text())
                mesh = trimesh.load(mesh_path, force="mesh", process=False)
                panels.append(preview.captioned(preview.mesh_panels(mesh, frame=frame)[0], f"CD {record['cd'] * 1e3:.1f}e-3  F@1% {record['f1']:.3f}"))
            rows.append(preview.labelled(np.concatenate(panels, 1), name))
    titles = preview.column_titles(["input", "truth", *(label for label, _ in runs)])
    with atomic_path(Path(args.out)) as tmp:
        Image.fromarray(preview.stack_rows([titles, *rows])).save(tmp, format="PNG")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
