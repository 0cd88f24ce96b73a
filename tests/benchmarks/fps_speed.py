"""Milliseconds per furthest point sampling call: the plain loop against its CUDA graph replay.

    python tests/benchmarks/fps_speed.py                 # PVD's sizes: 16 x 2048 points
    python tests/benchmarks/fps_speed.py --batch 4 --points 8192 --centers 1024 512

On CPU only the loop runs (pvd's CPU path). On CUDA the table adds the graph path (one launch
per call; "first call" includes the capture) and checks that both give the same indices. The
pytorch3d backend is bypassed. Prints the fp32 2048^2 matmul rate of the device alongside.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pvd.ops import sampling  # noqa: E402


def per_call(fn, device: torch.device, reps: int) -> float:
    """Best of 3 rounds of ``reps`` calls, ms per call (synchronised on CUDA)."""
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--centers", type=int, nargs="+", default=[1024, 256, 64])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    x = torch.randn(2048, 2048, device=device)
    gflops = 2 * 2048**3 / (per_call(lambda: x @ x, device, 5) / 1e3) / 1e9
    print(f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{torch.get_num_threads()} CPU threads, fp32 2048^2 matmul {gflops:.0f} GFLOP/s")
    print("| B x N | m | loop (ms) | graph, first call (ms) | graph (ms) | loop / graph |")
    print("|---|---:|---:|---:|---:|---:|")
    points = torch.randn(args.batch, args.points, 3, device=device)
    q = points.transpose(1, 2).contiguous()
    for m in args.centers:
        with torch.no_grad():
            loop = per_call(lambda: sampling._fps_loop(q, m), device, args.reps)
            if device.type != "cuda":
                print(f"| {args.batch} x {args.points} | {m} | {loop:.1f} | - | - | - |")
                continue
            sampling._GRAPHS.clear()
            start = time.perf_counter()
            first = sampling._fps_cuda(q, m)
            torch.cuda.synchronize(device)
            first_ms = (time.perf_counter() - start) * 1e3
            assert sampling._GRAPHS[(tuple(q.shape), q.dtype, q.device, m)] is not None, "capture failed"
            assert torch.equal(first, sampling._fps_loop(q, m)), "graph and loop disagree"
            graph = per_call(lambda: sampling._fps_cuda(q, m), device, args.reps)
        print(f"| {args.batch} x {args.points} | {m} | {loop:.1f} | {first_ms:.1f} | {graph:.2f} | {loop / graph:.1f}x |")


if __name__ == "__main__":
    main()
