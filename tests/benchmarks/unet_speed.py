"""Training-step speed of the U-Net presets: time, FLOPs, model FLOP utilisation, time shares.

    python tests/benchmarks/unet_speed.py [--presets pvd-paper small] [--batch 16] [--points 2048]

Per preset: forward+backward time of one training step (MSE on the output) for a batch of
``--batch`` clouds of ``--points`` points, its FLOPs (torch.utils.flop_counter on one sample,
times the batch), the achieved rate, and the model FLOP utilisation (MFU): that rate over the
rate of a large fp32 matrix product measured in the same run. Then a profile of one more step
split into point ops (FPS, ball query, grouping, 3-NN interpolation, (de)voxelisation, forward
and backward), dense compute (Conv3d, 1x1 convs / linear layers, attention) and the rest
(norms, activations, copies, allocation).

glibc's malloc returns large freed blocks to the OS and maps fresh pages for the next large
tensor; on CPU that costs ~40% of a training step. The script re-executes itself with
MALLOC_MMAP_MAX_=0 and a huge MALLOC_TRIM_THRESHOLD_ (``--default-malloc`` to measure without);
set the same two variables when training on CPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import time

from pvd.runtime import MALLOC_ENV, reexec_with_malloc_settings as _reexec_with_malloc_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["pvd-paper", "pvd-paper-cond", "small", "tiny"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset (after one warm-up); the best counts")
    parser.add_argument("--no-profile", action="store_true", help="skip the time-share profile")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default malloc settings")
    args = parser.parse_args()
    if not args.default_malloc:
        _reexec_with_malloc_settings()

    import torch

    from pvd.nn import PVDUNet, preset

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, malloc: "
          + ("default" if args.default_malloc else " ".join(f"{k}={os.environ[k]}" for k in MALLOC_ENV)))
    # The ceiling is the best matmul rate seen during the run (measured before every preset and
    # at the end): on a shared machine a single measurement may fall into a busy moment.
    rates = [matmul_rate(torch)]

    rows = []
    for name in args.presets:
        rates.append(matmul_rate(torch))
        model = PVDUNet(preset(name)).train()
        step = make_step(torch, model, args.batch, args.points)
        step()  # warm-up (allocator, oneDNN primitive caches)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        seconds = min(times)
        flops = count_flops(torch, model, args.points) * args.batch
        shares = profile_shares(torch, step) if not args.no_profile else None
        rows.append((name, sum(p.numel() for p in model.parameters()), seconds, flops, shares))
        print(f"{name}: {seconds:.2f} s per step (steps: {', '.join(f'{t:.2f}' for t in times)})", flush=True)
        del model, step
    rates.append(matmul_rate(torch))
    peak = max(rates)
    print(f"fp32 2048x2048 matmul: best {peak / 1e9:.0f} GFLOP/s, measurements: "
          + ", ".join(f"{r / 1e9:.0f}" for r in rates))

    print(f"\nbatch {args.batch} x {args.points} points, forward + backward, fp32, "
          f"matmul reference {peak / 1e9:.0f} GFLOP/s\n")
    print("| preset | parameters | step (s) | GFLOP / step | GFLOP/s | MFU | point ops | dense | other |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n_params, seconds, flops, shares in rows:
        rate = flops / seconds
        share = [f"{100 * shares[k]:.0f}%" for k in ("point ops", "dense", "other")] if shares else ["-"] * 3
        print(f"| {name} | {n_params:,} | {seconds:.2f} | {flops / 1e9:.0f} | {rate / 1e9:.0f} | "
              f"{100 * rate / peak:.0f}% | {' | '.join(share)} |")
    for name, _, _, _, shares in rows:
        if shares:
            top = sorted(shares["detail"].items(), key=lambda kv: -kv[1])[:14]
            detail = ", ".join(f"{k} {100 * v:.1f}%" for k, v in top)
            print(f"\n{name} profile (share of profiled CPU time): {detail}")


def matmul_rate(torch) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def make_inputs(torch, model, batch: int, points: int):
    x = torch.randn(batch, points, 3)
    t = torch.randint(0, 1000, (batch,)).float()
    cc = model.config.condition
    if cc is None:
        return x, t, None
    fields = {}
    if cc.num_categories:
        fields["category"] = torch.randint(0, cc.num_categories, (batch,))
    if cc.cascade:
        fields["coarse"], fields["coarse_level"] = torch.randn(batch, points // 4, 3), torch.rand(batch)
    if model.encoder is not None:
        return x, t, dict(images=torch.randint(0, 256, (batch, 4, 64, 64), dtype=torch.uint8), **fields)
    if cc.image_dim:
        fields["embedding"] = torch.randn(batch, cc.image_dim)
    return x, t, fields


def make_step(torch, model, batch: int, points: int):
    x, t, fields = make_inputs(torch, model, batch, points)

    def step():
        model.zero_grad(set_to_none=True)
        cond = model.condition(**fields) if fields is not None else None
        out = model(x, t, cond)
        out.square().mean().backward()

    return step


def count_flops(torch, model, points: int) -> int:
    """FLOPs of one sample's forward + backward (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

    x, t, fields = make_inputs(torch, model, 1, points)
    # The counter knows the CUDA attention kernels but not the CPU flash one SDPA picks here.
    aten = torch.ops.aten
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, **kw: sdpa_backward_flop(g, q, k, v),
    })
    with counter:
        cond = model.condition(**fields) if fields is not None else None
        model(x, t, cond).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# Point-op categories: forward calls are wrapped in record_function scopes; their backward
# passes are recognised by autograd node names.
POINT_OPS = {
    "furthest_point_sample": "FPS",
    "ball_query": "ball query",
    "group": "grouping",
    "three_nn_interpolate": "3-NN interpolation",
    "voxelize": "(de)voxelisation",
    "devoxelize": "(de)voxelisation",
}
POINT_BACKWARD = {"EmbeddingBackward0": "grouping", "_WeightedRowsBackward": "(de)voxelisation / 3-NN (backward)",
                  "IndexPutBackward0": "(de)voxelisation"}
DENSE = {"aten::mkldnn_convolution": "Conv3d", "aten::convolution_backward": "Conv3d",
         "aten::addmm": "linear / 1x1 conv", "aten::mm": "linear / 1x1 conv", "aten::bmm": "linear / 1x1 conv",
         "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
         "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention"}


@contextlib.contextmanager
def scoped_point_ops(torch):
    import pvd.ops as ops

    saved = {name: getattr(ops, name) for name in POINT_OPS}

    def wrap(name, fn):
        def scoped(*a, **kw):
            with torch.profiler.record_function(f"pvd.ops.{name}"):
                return fn(*a, **kw)
        return scoped

    for name, fn in saved.items():
        setattr(ops, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(ops, name, fn)


def profile_shares(torch, step) -> dict:
    """Shares of self CPU time in one profiled step, by category."""
    from torch.profiler import ProfilerActivity, profile

    with scoped_point_ops(torch), profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    detail = collections.Counter()
    for event in prof.events():
        category = classify(event)
        detail[category] += event.self_cpu_time_total
    total = sum(detail.values())
    shares = {k: v / total for k, v in detail.items()}
    grouped = collections.Counter()
    for k, v in shares.items():
        grouped["point ops" if k.startswith("point: ") else "dense" if k.startswith("dense: ") else "other"] += v
    return {**grouped, "detail": shares}


def classify(event) -> str:
    node = event
    while node is not None:
        name = node.name
        if name.startswith("pvd.ops."):
            return "point: " + POINT_OPS[name[len("pvd.ops."):]]
        for backward, category in POINT_BACKWARD.items():
            if name.endswith(backward):
                return "point: " + category
        node = node.cpu_parent
    if event.name in DENSE:
        return "dense: " + DENSE[event.name]
    return "other: " + event.name.replace("aten::", "")


if __name__ == "__main__":
    main()
