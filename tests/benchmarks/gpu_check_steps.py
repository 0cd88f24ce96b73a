"""The in-process checks of tests/benchmarks/gpu_check.py (its docstring says what each row
checks): each runs in its own subprocess as ``gpu_check.py --worker NAME``, which calls
``WORKERS[NAME](device, cpu, out)`` and prints its rows with ``report``: the last stdout line is
``RESULT`` and the rows as a JSON list, read back by ``gpu_check.Checks.worker``.
"""

from __future__ import annotations

import importlib
import json
import platform
import time
from pathlib import Path

RESULT = "GPU_CHECK_RESULT "  # a worker's last stdout line: this prefix and a JSON list of rows
CATEGORY = "chair"
NO_CUDA = "skipped: no CUDA"


# ---- workers: the in-process checks, each run as `gpu_check.py --worker NAME` --------------

def report(rows: list[dict]) -> None:
    print(RESULT + json.dumps(rows), flush=True)


def row(name: str, ok: bool | None, detail: str, **extra) -> dict:
    return {"name": name, "status": "SKIP" if ok is None else "PASS" if ok else "FAIL", "detail": detail, **extra}


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def worker_environment(device, cpu: bool, out: Path) -> list[dict]:
    import torch
    import torch.distributed as dist

    have = {name: importable(name) for name in ("trimesh", "pytest")}
    parts = [f"torch {torch.__version__}", f"python {platform.python_version()}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts += [f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm {props.major}{props.minor})",
                  f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}",
                  f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"]
    backend = "gloo" if cpu else "nccl"
    ok_backend = dist.is_available() and (dist.is_gloo_available() if cpu else dist.is_nccl_available())
    parts.append(f"{backend} {'yes' if ok_backend else 'NO'}")
    parts.append("missing: " + (", ".join(k for k, v in have.items() if not v) or "nothing"))
    problems = [] if ok_backend else [f"torch.distributed has no {backend}"]
    try:
        import pvd
        parts.append(f"pvd from {Path(pvd.__file__).parent}")
    except ImportError as e:
        hint = " (pvd imports trimesh at module level: pip install trimesh)" if getattr(e, "name", "") == "trimesh" else ""
        problems.append(f"pvd does not import: {e}{hint}")
    detail = "; ".join(problems + parts)
    return [row("environment", not problems, detail, info=have)]


def worker_data(device, cpu: bool, out: Path) -> list[dict]:
    import h5py

    from pvd.data.render import save_png
    from pvd.data.synthetic.writer import SyntheticConfig, write_synthetic_dataset

    # 6 shapes per category: 4 train, 1 val, 1 test. 64 px views on the GPU (the SDS defaults
    # render at 64, the prior at 32); 16 px with --cpu.
    config = SyntheticConfig(per_category=6, views=4, resolution=16 if cpu else 64, num_points=512, supersample=1,
                             categories=(CATEGORY, "car"))
    count = write_synthetic_dataset(out / "data.h5", config, progress=False)
    with h5py.File(out / "data.h5", "r") as f:
        save_png(out / "view.png", f["images"][0, 0])  # a chair's first view: sample.py's input
    return [row("data", True, f"{count} shapes, {config.views} views at {config.resolution} px, "
                              f"{config.num_points} points -> {out / 'data.h5'}")]


def worker_samples(device, cpu: bool, out: Path) -> list[dict]:
    import numpy as np

    info = json.loads((out / "samples" / "info.json").read_text())
    samples = np.load(out / "samples" / "samples.npy")
    config = json.loads((out / "ddp-run" / "config.json").read_text())
    points = config["dataset"]["num_points"]
    problems = []
    if samples.shape != (2, points, 3):
        problems.append(f"samples.npy has shape {samples.shape}, expected (2, {points}, 3)")
    if not np.isfinite(samples).all():
        problems.append("non-finite points")
    if not info["device"].startswith(device.type):
        problems.append(f"sampled on {info['device']}")
    detail = "; ".join(problems) or (f"2 shapes x {points} points, DDIM-10, on {info['device']}, "
                                     f"{info['seconds_per_shape']:.2f} s/shape, checkpoint step {info['step']}")
    return [row("sample", not problems, detail)]


def sphere(count: int):
    """``count`` Fibonacci points on the unit sphere and their normals (the same), float32 tensors."""
    import numpy as np
    import torch

    i = np.arange(count) + 0.5
    phi, z = np.pi * (1 + 5**0.5) * i, 1 - 2 * i / count
    r = np.sqrt(1 - z**2)
    p = torch.from_numpy(np.stack([r * np.cos(phi), r * np.sin(phi), z], 1).astype(np.float32))
    return p, p.clone()


def worker_poisson(device, cpu: bool, out: Path) -> list[dict]:
    import math

    import torch

    from pvd.meshing import mesh_from_points, poisson_indicator

    p, n = sphere(4000)
    rows = []
    if cpu:
        rows.append(row("poisson on cuda", None, NO_CUDA))
    else:
        tic = time.perf_counter()
        chi_cpu, iso_cpu, _, _ = poisson_indicator(p, n, resolution=64)
        cpu_s = time.perf_counter() - tic
        chi_dev, iso_dev, _, _ = poisson_indicator(p.to(device), n.to(device), resolution=64)
        torch.cuda.synchronize(device)
        tic = time.perf_counter()
        chi_dev, iso_dev, _, _ = poisson_indicator(p.to(device), n.to(device), resolution=64)
        torch.cuda.synchronize(device)
        dev_s = time.perf_counter() - tic
        gap = float((chi_dev.cpu() - chi_cpu).abs().max() / chi_cpu.abs().max())
        iso_gap = abs(float(iso_dev) - float(iso_cpu)) / chi_cpu.abs().max().item()
        ok = gap < 1e-3 and iso_gap < 1e-3
        rows.append(row("poisson on cuda", ok, f"64^3 spectral Poisson: max |chi_cuda - chi_cpu| / max|chi| = {gap:.1e}, "
                                               f"iso {iso_gap:.1e} (bound 1e-3); {dev_s * 1e3:.0f} ms on cuda, "
                                               f"{cpu_s * 1e3:.0f} ms on the CPU"))
    mesh = mesh_from_points(p.numpy(), n.numpy(), resolution=64)
    area, volume = mesh.area / (4 * math.pi), mesh.volume / (4 / 3 * math.pi)
    ok = abs(area - 1) < 0.05 and abs(volume - 1) < 0.05
    rows.append(row("sphere mesh", ok, f"mesh_from_points (CPU) on a unit sphere: area {area:.3f}, volume {volume:.3f} "
                                       f"of the analytic values (bound 5%), watertight={mesh.is_watertight}"))
    return rows


def set_tf32(torch, on: bool) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


class Timer:
    """Wall time of a block: CUDA events on a GPU, perf_counter after a synchronise elsewhere."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.tic = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.tic


def matmul_rate(torch, device, n: int, dtype, reps: int) -> float:
    """FLOP/s of an n x n matmul (best of ``reps``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        with Timer(torch, device) as t:
            a @ b
        best = min(best, t.seconds)
    return 2 * n**3 / best


def worker_speed(device, cpu: bool, out: Path) -> list[dict]:
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pvd.config import network_config, train_preset
    from pvd.diffusion import build
    from pvd.nn import PVDUNet

    cfg = train_preset("pvd-paper-chair")
    batch, points = (cfg.batch_size, cfg.data.num_points) if not cpu else (1, 1024)
    warmup, steps, size, reps = (3, 10, 8192, 10) if not cpu else (1, 2, 512, 3)
    torch.manual_seed(0)
    net = PVDUNet(network_config(cfg, 1)).to(device).train()
    stage = build(cfg.diffusion, points)[0]
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, points, 3, generator=g).to(device)
    t = stage.diffusion.sample_t(batch, generator=g).to(device)
    noise = torch.randn(batch, points, 3, generator=g).to(device)

    def loss_of(amp: bool):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return stage.diffusion.loss(net, x0, t, None, noise=noise).mean()

    def step(amp: bool):
        loss = loss_of(amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    set_tf32(torch, False)
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):  # the counter misses the CPU flash kernel
        from torch.utils.flop_counter import sdpa_backward_flop, sdpa_flop
        mapping = {aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop(q, k, v),
                   aten._scaled_dot_product_flash_attention_for_cpu_backward:
                       lambda gr, q, k, v, *a, **kw: sdpa_backward_flop(gr, q, k, v)}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        loss_of(False).backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    modes = [("fp32", torch.float32, False, False), ("bf16", torch.bfloat16, True, False)]
    if not cpu:
        modes.append(("tf32", torch.float32, False, True))
    rows, fp32_ms = [], None
    params = sum(p.numel() for p in net.parameters())
    for name, dtype, amp, tf32 in modes:
        set_tf32(torch, tf32)
        rate = matmul_rate(torch, device, size, dtype, reps)
        tic = time.perf_counter()
        for _ in range(warmup):
            step(amp)
        times = []
        for _ in range(steps):
            with Timer(torch, device) as timer:
                loss = step(amp)
            times.append(timer.seconds)
        value = float(loss.detach())
        ms = 1e3 * statistics.median(times)
        fp32_ms = fp32_ms or ms
        achieved = flops / (ms / 1e3)
        detail = (f"{ms:.1f} ms/step (median of {steps}), batch {batch} x {points} pts, {params / 1e6:.1f}M params, "
                  f"{flops / 1e9:.1f} GFLOP/step counted, {achieved / 1e12:.3f} TFLOP/s = {100 * achieved / rate:.2f}% of "
                  f"a {size}^2 {name} matmul ({rate / 1e12:.2f} TFLOP/s); loss {value:.4f}")
        if name != "fp32":
            detail += f"; x{fp32_ms / ms:.2f} vs fp32"
        ok = bool(torch.isfinite(loss.detach()).item())
        rows.append(row(f"speed {name}", ok, detail if ok else f"non-finite loss; {detail}",
                        seconds=time.perf_counter() - tic))
    set_tf32(torch, False)
    if cpu:
        rows.append(row("speed tf32", None, NO_CUDA))
    return rows


def worker_emd(device, cpu: bool, out: Path) -> list[dict]:
    import torch

    from pvd.metrics import emd
    from pvd.metrics.matching import DEFAULT_TOLERANCE

    pairs, n = (8, 2048) if not cpu else (3, 256)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(pairs, n, 3, generator=g)
    b = torch.rand(pairs, n, 3, generator=g) * 2 - 1  # a Gaussian blob against a cube: far from a trivial match
    b[::2] = torch.randn(b[::2].shape, generator=g) * 0.8 + 0.1  # and, for half the pairs, another blob
    with Timer(torch, device) as timer:
        auction = emd(a.to(device), b.to(device), method="auction", tolerance=DEFAULT_TOLERANCE)
    tic = time.perf_counter()
    exact = emd(a, b, exact=True)
    exact_s = time.perf_counter() - tic
    gap = auction.cpu().double() / exact.double() - 1
    slack = 1e-5
    ok = bool(gap.min() >= -slack and gap.max() <= DEFAULT_TOLERANCE + slack)
    detail = (f"{pairs} pairs x {n} pts: auction / exact - 1 in [{gap.min():.2e}, {gap.max():.2e}] (mean {gap.mean():.2e}), "
              f"bound [0, {DEFAULT_TOLERANCE:g}] (eps = tolerance x a lower bound of the EMD); auction {timer.seconds:.2f} s "
              f"on {device.type}, exact {exact_s:.2f} s on the CPU")
    return [row("emd auction vs exact", ok, detail)]


def worker_tf32(device, cpu: bool, out: Path) -> list[dict]:
    import dataclasses

    from pvd.config import PAPER_CATEGORIES, TrainConfig, apply_overrides, train_preset

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if "tf32" not in fields:
        return [row("tf32 switch", False, "TrainConfig has no tf32 field")]
    problems = []
    if TrainConfig().tf32 is not False:
        problems.append("TrainConfig().tf32 is not False")
    on = [c for c in PAPER_CATEGORIES if train_preset(f"pvd-paper-{c}").tf32]
    if on:
        problems.append(f"pvd-paper presets with tf32 on: {on}")
    if apply_overrides(train_preset("tiny"), ["tf32=true"]).tf32 is not True:
        problems.append("tf32=true does not set it")
    return [row("tf32 switch", not problems, "; ".join(problems) or
                "TrainConfig.tf32 defaults to False, pvd-paper-* keep it False, tf32=true parses")]


WORKERS = {"environment": worker_environment, "data": worker_data, "samples": worker_samples, "poisson": worker_poisson,
           "speed": worker_speed, "emd": worker_emd, "tf32": worker_tf32}
