"""python -m pvd.semantic train: train the evaluator image encoder of the semantic metrics.

    python -m pvd.semantic train --data data/synth.h5                    # -> data/synth.evaluator
    python -m pvd.semantic train --data data/synth.h5 --out runs/evaluator --steps 1000 --seed 7
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pvd.errors import UserError, run_command
from pvd.semantic.evaluator import EvaluatorConfig, save_evaluator, train_evaluator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pvd.semantic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the evaluator on a dataset's train split")
    train.add_argument("--data", required=True, help="pvd HDF5 dataset with rendered views")
    train.add_argument("--out", help="output folder (default: the dataset path with suffix .evaluator)")
    defaults = EvaluatorConfig()
    for f in dataclasses.fields(EvaluatorConfig):
        if f.name == "widths":
            train.add_argument("--widths", type=int, nargs="+", default=list(defaults.widths))
        else:
            train.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                               default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvaluatorConfig)}
    values["widths"] = tuple(values["widths"])
    if min(values["widths"]) < 8 or any(w % 8 for w in values["widths"]):
        raise UserError("--widths must be positive multiples of 8 (GroupNorm with 8 groups)")
    config = EvaluatorConfig(**values)
    out = Path(args.out) if args.out else Path(args.data).with_suffix(".evaluator")
    net, record = train_evaluator(args.data, config)
    save_evaluator(net, record, out)
    print(f"saved {out}/weights.pt and config.json: val top-1 {record['val_top1']:.3f} among "
          f"{record['val_shapes']} val shapes, {record['seconds']:.0f} s")


if __name__ == "__main__":
    run_command(main)
