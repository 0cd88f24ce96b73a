"""Convert ShapeNet trees (PC15k + R2N2 renderings, Core.v2 meshes) or your own folders to pvd HDF5.

Examples (from the repository root):
    python datasets/shapenet.py pc15k data/ShapeNetCore.v2.PC15k --out data/pc15k.h5 \\
        --r2n2 data/ShapeNetRendering --categories airplane,chair
    python datasets/shapenet.py core data/ShapeNetCore.v2 --out data/core.h5 --views 24
    python datasets/shapenet.py folder my_shapes --out data/mine.h5

The logic lives in pvd/data/shapenet/; each reader's module (pc15k.py, core.py, folder.py) describes
the layout it reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pvd.data.shapenet.categories import parse_split_ratios  # noqa: E402
from pvd.data.shapenet.core import MeshOptions, plan_core  # noqa: E402
from pvd.data.shapenet.folder import plan_folder  # noqa: E402
from pvd.data.shapenet.pc15k import plan_pc15k  # noqa: E402
from pvd.data.shapenet.runner import default_workers, run_plan  # noqa: E402
from pvd.errors import run_command  # noqa: E402


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pc15k,core,folder}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output HDF5 file (written as <out>.partial, renamed when complete)")
    common.add_argument("--strict", action="store_true", help="any skipped shape is fatal: exit non-zero, write nothing")
    common.add_argument("--workers", type=_positive, default=default_workers(), help="worker processes (default: %(default)s)")
    common.add_argument("--limit", type=_positive, default=None, help="at most N shapes per category, for quick tries")
    common.add_argument("--categories", default=None, help="comma-separated category names or synset ids (folder: subfolder names); default all")

    meshes = argparse.ArgumentParser(add_help=False)
    meshes.add_argument("--points", type=_positive, default=15000, help="surface points per shape (default: %(default)s)")
    meshes.add_argument("--views", type=_non_negative, default=24, help="rendered views per shape, 0 for none (default: %(default)s)")
    meshes.add_argument("--image-size", type=_positive, default=137, help="rendered image side in pixels (default: %(default)s, R2N2's)")
    meshes.add_argument("--supersample", type=_positive, default=1, help="antialiasing factor of the renders (default: %(default)s)")
    meshes.add_argument("--no-meshes", action="store_true", help="do not store vertices and faces")
    meshes.add_argument("--split-ratios", default="70,10,20", help="train,val,test proportions of the hash split (default: %(default)s)")

    p = sub.add_parser("pc15k", parents=[common], help="ShapeNetCore.v2.PC15k point clouds, optionally with R2N2 renderings")
    p.add_argument("root", help="<root>/<synset>/{train,val,test}/<model_id>.npy")
    p.add_argument("--r2n2", default=None, help="ShapeNetRendering root to join: <synset>/<model_id>/rendering/")

    p = sub.add_parser("core", parents=[common, meshes], help="ShapeNetCore.v2 meshes: sample points, render views")
    p.add_argument("root", help="<root>/<synset>/<model_id>/models/model_normalized.obj")
    p.add_argument("--normalize", action="store_true",
                   help="rescale every mesh to ShapeNetCore.v2's frame (box centred at 0, diagonal 1); "
                        "without it, meshes outside that frame are converted as they are and listed")

    p = sub.add_parser("folder", parents=[common, meshes], help="your own meshes / point clouds, one subfolder per category")
    p.add_argument("root", help="<root>/<category>/<shape>.{obj,ply,off,glb,stl,npy}")
    p.add_argument("--keep-scale", action="store_true", help="skip the normalisation (bbox centre to origin, diagonal 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pc15k":
        plan = plan_pc15k(args.root, args.r2n2, args.categories, args.limit)
    else:
        options = MeshOptions(
            num_points=args.points,
            num_views=args.views,
            image_size=args.image_size,
            meshes=not args.no_meshes,
            supersample=args.supersample,
            split_ratios=parse_split_ratios(args.split_ratios),
        )
        if args.command == "core":
            plan = plan_core(args.root, options, args.categories, args.limit, normalize=args.normalize)
        else:
            plan = plan_folder(args.root, options, args.keep_scale, args.categories, args.limit)
    summary = run_plan(plan, args.out, workers=args.workers, strict=args.strict)
    print(summary)
    return 0


if __name__ == "__main__":
    run_command(main)
