"""Cross-view consistency of generated views, per generation order (no fitting).

    python tests/benchmarks/multiview_consistency.py [--prior runs/prior-v2] [--num 20]

For the first --num val shapes (view 0 as input): 6 views generated in each order, their
silhouettes' visual-hull consistency (pvd.sds.multiview.hull_consistency), the mean per order,
seconds per shape, and the paired difference chain - independent (95% bootstrap).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.metrics.bootstrap import paired_bootstrap_ci  # noqa: E402
from pvd.sds import multiview as M  # noqa: E402
from pvd.sds.__main__ import dataset_jobs  # noqa: E402
from pvd.sds.prior import to_prior_image  # noqa: E402
from pvd.sds.view_prior import TrainedViewPrior  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--prior", default="runs/prior-v2")
p.add_argument("--data", default="data/synth.h5")
p.add_argument("--num", type=int, default=20)
args = p.parse_args()
torch.set_num_threads(2)
prior = TrainedViewPrior.load(args.prior)
jobs = dataset_jobs(argparse.Namespace(data=args.data, split="val", num=args.num, view=0))
res = {}
for order in ("chain", "independent"):
    cfg = M.MultiViewConfig(order=order)
    scores, tic = [], time.perf_counter()
    for job in jobs:
        views, cams = M.generate_views(prior, np.asarray(job["image"]), job["camera"], cfg)
        sil = np.concatenate([to_prior_image(np.asarray(job["image"])[None], prior.image_size)[:, 3].numpy() > 0,
                              views[:, 3].numpy() > 0])
        scores.append(M.hull_consistency(sil, [job["camera"], *cams]))
    res[order] = np.array(scores)
    print(f"{order}: hull consistency {np.mean(scores):.3f}, {(time.perf_counter() - tic) / len(jobs):.1f} s/shape", flush=True)
ci = paired_bootstrap_ci(res["chain"], res["independent"])
print(f"chain - independent: {ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}] over {len(jobs)} val shapes")
