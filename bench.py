"""Benchmark: native 3D diffusion (PVD) vs SDS lifting vs retrieval on the same test shapes.

Train everything the benchmark needs (sequentially; each step's time is printed and kept in
DIR/train-log.json). Rerun the same command after an interruption: finished steps (marker
DIR/.done-STEP) are skipped, a started training run resumes from its newest checkpoint, and the
step's time adds up its attempts, so a slow machine can spread the training over sessions:

    python bench.py train --data data/synth.h5 --out runs/bench

    1. pvd : python train.py image-2048 data.path=DATA run_dir=DIR/pvd  (the recommended model;
             its stage 0, the stand-alone regressor, is trained first into DIR/pvd/encoder and is
             the benchmark's "encoder trained alone")
    2. sds : python -m pvd.sds.train_prior data=DATA run_dir=DIR/sds-prior
    3. pfid: python -m pvd.pfid train --data DATA --out DIR/pfid
    4. evaluator: python -m pvd.semantic train --data DATA --out DIR/evaluator  (the semantic metrics' encoder)

On GPUs, larger runs go through the same command with overrides (untested here: no GPU), e.g.
``--pvd-set max_steps=20000 batch_size=64 --prior-set max_steps=20000``; on ShapeNet train the
``shapenet-image`` preset with train.py directly. An ablation's second run (e.g. ``python
train.py image-2048 diffusion.hierarchy=none run_dir=DIR/single-stage``) is trained apart.

Then the benchmark (per test shape, one fixed input view):

    python bench.py --data data/synth.h5 --pvd runs/bench/pvd --regressor runs/bench/pvd/encoder \\
        --sds runs/bench/sds-prior --pfid runs/bench/pfid --embedder runs/bench/evaluator --num 50 --sds-num 20 \\
        --out outputs/bench

Methods: ``pvd`` (the run with its recommended sampler: the run's own ``diffusion.sampler`` /
``sampling_steps`` / ``guidance_scale`` / ``hierarchy.t_start``, or --sampler/--steps/--guidance/
--t-start), ``ablation`` (--pvd-ablation, a second run sampled with the same setting), ``sds``
(``python -m pvd.sds`` on the first --sds-num shapes, same view), ``regressor`` (when the PVD
run's encoder has a shape head: its coarse cloud regressed from the image, no diffusion),
``retrieval`` (the training shape whose view embedding, from the PVD run's own image encoder, is
nearest to the input's), ``regressor-alone`` and ``retrieval-alone`` (with --regressor: the same
two from an encoder trained alone, so that a weak PVD encoder cannot lower the bar), ``oracle`` (the training shape nearest
to the ground truth in Chamfer distance: the bound for any retrieval) and ``truth-resample``
(another sample of the ground-truth surface itself: the ceiling at this point count).

Every number is computed in the dataset's world frame (PVD samples are mapped back with the
run's normalisation). Conventions (also written into every output):

- each output is reduced to K points (--points; default the PVD run's point count) by a
  seeded random subset (fewer points: drawn with replacement);
- the ground truth is the held-out slice ``points[num_train_points:][:2048]`` (PointFlow's);
  CD (squared, PointFlow's), F-score and precision/recall at 1% and 2% of the ground truth's
  bounding-box diagonal (full stored cloud) and the thin-structure recall (ground-truth points
  of parts flagged ``part_thin`` closer than 2% of the diagonal to the output) use all of it;
  IoU (32^3 occupancy, the joint bounding cube) uses its first K points, exact EMD the first 512
  of both (at 2048 it costs 16x more);
- meshes: PVD outputs are meshed by ``pvd.meshing.mesh_from_points``, SDS keeps its own
  marching-cubes mesh, retrieval / oracle / truth-resample answer with the stored outer
  surface of their shape; 2048 samples of each surface are scored against the ground truth's
  surface points and normals (normal consistency, F-score at 1%);
- an empty output (an SDS grid with no surface) counts as one point at the ground truth's
  box centre (F-score, IoU and recall 0, mesh scores 0); an output whose box diagonal is over
  2x the truth's (or non-finite) is "exploded", under 0.25x "collapsed";
- differences between methods: paired percentile-bootstrap 95% intervals over shapes;
- MMD / COV / 1-NNA (CD, EMD) and P-FID of each method's outputs against the same test shapes
  (K points, world frame);
- latency: seconds per shape at batch 1 with the recommended sampler, meshing excluded
  (median of --latency-shapes shapes after one warm-up); throughput: shapes/s at the best of
  --throughput-batches; network evaluations: denoiser calls per shape (a guided call on the
  doubled batch counts once, as SDS's prior evaluations do); peak memory: the process's
  resident set (CPU) or the CUDA allocator's peak.

Times measured on 2-core machines are in tests/benchmarks/README.md. On cores that other jobs
keep busy, pass --threads 1: two torch threads measured 35x slower there.

Outputs in --out (each written atomically): results.md, results.json, results.csv (one row
per method and shape), grid.png (input | truth | methods for a dozen shapes), worst.png (the
five worst shapes of each method by CD, with their numbers), steps.png and guidance.png (the
quality curves); samples/ and metrics/ cache every shape, so a rerun skips finished shapes;
sds/ holds the SDS command's own outputs. Two runs into fresh folders give the same quality
numbers (results.csv and results.json's "quality"); timings differ. Every run on the test split
appends one line (time, settings hash, checkpoint, sampler, command) to DATA's
NAME.test-runs.jsonl beside the dataset file: choose knobs on --split val, and the log shows
how often the test shapes were looked at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvd.bench.common import LIFTING
from pvd.bench.run import run_benchmark
from pvd.bench.training import train
from pvd.diffusion.samplers import SAMPLERS
from pvd.errors import UserError, run_command

DEFAULT_STEPS_CURVE = "ddim:10,25,50,100;dpm++2m:10,25;heun:10,25;ddpm:1000"
DEFAULT_GUIDANCE_CURVE = "1,2,3,5"


def parse_steps_curve(text: str) -> list[tuple[str, int | None]]:
    """'ddim:10,25;ddpm:1000' -> [('ddim', 10), ('ddim', 25), ('ddpm', None)] (ddpm runs all T)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, steps = part.partition(":")
        if name not in SAMPLERS:
            raise UserError(f"--steps-curve: unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
        try:
            counts = [int(x) for x in steps.split(",") if x.strip()] if sep else [0]
        except ValueError:
            raise UserError(f"--steps-curve: {part!r} is not SAMPLER:N,N,...") from None
        for n in counts:
            out.append((name, None if name == "ddpm" or n == 0 else n))
    return out


def parse_floats(text: str, what: str) -> list[float]:
    """'1,2.5' -> [1.0, 2.5]; ``what`` names the option in the error."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (``python bench.py --help``)."""
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0],
                                epilog="python bench.py train --help: train every model the benchmark needs")
    p.add_argument("--data", required=True, help="pvd HDF5 dataset with views (data/synth.h5)")
    p.add_argument("--pvd", required=True, help="the PVD run (image-conditioned; the hierarchy or a single stage)")
    p.add_argument("--pvd-ablation", help="a second PVD run that differs from --pvd in one thing (the ablation)")
    p.add_argument("--regressor", help="a stand-alone regressor run (python -m pvd.regressor): retrieval in its "
                                       "embedding and its cloud become two more rows")
    p.add_argument("--sds", help="the SDS baseline's prior run (python -m pvd.sds.train_prior)")
    p.add_argument("--pfid", help="P-FID classifier folder (python -m pvd.pfid train); default DATA.pfid when it exists")
    p.add_argument("--embedder", help="semantic metrics' image embedder: an evaluator folder (python -m pvd.semantic "
                                       "train) or open_clip:MODEL:WEIGHTS_FILE (local); default DATA.evaluator when it "
                                       "exists, else the semantic metrics are skipped with a notice")
    p.add_argument("--candidates", type=int, default=32, help="N of R-precision: inputs each render chooses among")
    p.add_argument("--split", default="test")
    p.add_argument("--num", type=int, default=50, help="shapes of the split (first in file order)")
    p.add_argument("--sds-num", type=int, default=20, help="of those, how many SDS lifts (minutes each on a CPU)")
    p.add_argument("--out", default="outputs/bench")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--view", type=int, default=None, help="the input view of every shape (default: the run's eval_view)")
    p.add_argument("--points", type=int, default=None, help="K: points per output scored (default: the PVD run's count)")
    p.add_argument("--batch", type=int, default=8, help="shapes per PVD sampler call (the samples depend on it)")
    p.add_argument("--sampler", choices=list(SAMPLERS), help="override the run's recommended sampler")
    p.add_argument("--steps", type=int, help="... its steps")
    p.add_argument("--guidance", type=float, help="... its guidance scale")
    p.add_argument("--t-start", type=float, help="... and for a hierarchy run the refinement's start (fraction of T)")
    p.add_argument("--steps-curve", default=DEFAULT_STEPS_CURVE, help="'SAMPLER:N,N;...' ('' for none)")
    p.add_argument("--guidance-curve", default=DEFAULT_GUIDANCE_CURVE, help="guidance scales ('' for none)")
    p.add_argument("--curve-num", type=int, default=20, help="shapes behind the curves")
    p.add_argument("--latency-shapes", type=int, default=3)
    p.add_argument("--throughput-batches", default="1,4,8,16,32")
    p.add_argument("--retrieval-metric", choices=("cosine", "l2"), default="cosine")
    p.add_argument("--distribution", default="cd,emd", help="distribution metrics over: cd, emd, both or '' for none")
    p.add_argument("--sds-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="DistillConfig overrides for every lifting method (SDS, the multi-view fit, Magic3D's coarse stage)")
    p.add_argument("--lifting", nargs="+", default=["sds"], choices=LIFTING,
                   help="lifting methods run with the --sds prior on the first --sds-num shapes: sds, multiview, magic3d")
    p.add_argument("--multiview-args", default="", metavar="'ARGS'",
                   help="extra options of python -m pvd.sds --method multiview, e.g. '--views 6 --order chain'")
    p.add_argument("--refine-set", nargs="*", default=[], metavar="KEY=VALUE", help="RefineConfig overrides for magic3d")
    p.add_argument("--workers", type=int, default=None, help="processes for pairwise distances (default: all cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads here and in the SDS command (default: torch's); 1 is much faster on cores "
                        "that other jobs keep busy")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad values before anything is loaded; adds the parsed lists (distribution_metrics,
    batches, steps_curve_settings, guidance_values) to ``args``."""
    for name in ("num", "batch", "curve_num", "latency_shapes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.candidates < 2:
        raise UserError("--candidates must be at least 2")
    if args.embedder and not args.embedder.startswith("open_clip:") and not Path(args.embedder).is_dir():
        raise UserError(f"--embedder {args.embedder}: no such evaluator folder (python -m pvd.semantic train)")
    if args.sds_num < 0:
        raise UserError("--sds-num must be >= 0")
    if len(set(args.lifting)) != len(args.lifting):
        raise UserError("--lifting names a method twice")
    if args.points is not None and args.points < 1:
        raise UserError("--points must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    for name in ("pvd", "pvd_ablation", "regressor", "sds", "pfid"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            raise UserError(f"--{name.replace('_', '-')} {value}: no such run or folder")
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data}: no such file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")
    which = [w.strip().upper() for w in args.distribution.split(",") if w.strip()]
    if any(w not in ("CD", "EMD") for w in which):
        raise UserError(f"--distribution takes cd, emd or both, got {args.distribution!r}")
    args.distribution_metrics = which
    args.batches = [int(b) for b in parse_floats(args.throughput_batches, "--throughput-batches")]
    if any(b < 1 for b in args.batches):
        raise UserError("--throughput-batches must be positive")
    for item in args.sds_set:
        if "=" not in item:
            raise UserError(f"--sds-set takes KEY=VALUE, got {item!r}")
    args.steps_curve_settings = parse_steps_curve(args.steps_curve)
    args.guidance_values = parse_floats(args.guidance_curve, "--guidance-curve")


def build_train_parser() -> argparse.ArgumentParser:
    """The train mode's options (``python bench.py train --help``)."""
    p = argparse.ArgumentParser(prog="bench.py train", description="Train every model the benchmark needs, in turn.")
    p.add_argument("--data", default="data/synth.h5")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--device", default="auto")
    p.add_argument("--only", nargs="*", choices=("pvd", "sds", "pfid", "evaluator"), help="train only these")
    p.add_argument("--pvd-set", nargs="*", default=[], metavar="KEY=VALUE", help="train.py overrides for the PVD model")
    p.add_argument("--prior-set", nargs="*", default=[], metavar="KEY=VALUE", help="pvd.sds.train_prior overrides")
    p.add_argument("--pfid-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="options of python -m pvd.pfid train (epochs=4 widths=64,128)")
    p.add_argument("--evaluator-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="options of python -m pvd.semantic train (steps=1000 seed=7)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def check_train_args(args: argparse.Namespace) -> None:
    """Refuse a missing dataset before any step starts."""
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data}: no such file (build it: python datasets/synthetic.py --out {args.data})")


def main(argv: list[str] | None = None) -> int:
    """``bench.py train ...`` trains the models; anything else runs the benchmark (pvd.bench)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        args = build_train_parser().parse_args(argv[1:])
        check_train_args(args)
        return train(args)
    args = build_parser().parse_args(argv)
    check_args(args)
    return run_benchmark(args, argv)


if __name__ == "__main__":
    run_command(main)
