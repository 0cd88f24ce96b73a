"""A prepared GPU check: the CUDA paths of pvd, end to end, in one table, in under 5 minutes.

    python tests/benchmarks/gpu_check.py                 # on a machine with a CUDA GPU
    python tests/benchmarks/gpu_check.py --cpu           # the same checks on the CPU, tiny sizes
    python tests/benchmarks/gpu_check.py --out /tmp/gc --timeout 240

What it checks, one row each (name | PASS/FAIL/SKIP | seconds | detail):

1. environment: torch, the GPU, NCCL, which optional packages are there; pvd imports.
2. pytest: the CUDA variants of the device-parametrised tests (``pytest -k cuda tests/``;
   with --cpu a small CPU subset, ``-k cpu`` over tests/test_ops.py and the sampler tests).
3. data: a small built-in dataset with rendered views (pvd.data.synthetic.writer) in --out.
4. ddp train / ddp resume: ``torchrun --standalone --nproc_per_node=1 train.py tiny`` for 20
   steps on the device, through the DDP code path (NCCL; gloo with --cpu): its log must say
   "(DDP)" and "done:", the last checkpoint must be step 20; then ``resume=true max_steps=24``
   must end at step 24.
5. sample / mesh: sample.py on the device from that run (--mesh obj): finite samples of the
   trained size, info.json naming the device; the mesh row checks the .obj files.
6. poisson on cuda: the spectral Poisson solve of pvd.meshing on the device against the CPU
   on a sphere, and a sphere meshed from its points (area and volume within 5%).
7. sds prior / sds: ``python -m pvd.sds.train_prior`` for 5 steps on the device, then 20
   SDS iterations (``python -m pvd.sds``) on the device with that prior.
8. speed fp32 / bf16 / tf32: training steps (forward + backward + Adam, the diffusion loss) of
   the ``pvd-paper`` network at the pvd-paper preset's batch (16 x 2048 points): milliseconds
   per step, FLOPs (torch.utils.flop_counter: convolutions, matmuls, attention; the point ops
   are not counted), TFLOP/s and that rate over an 8192 x 8192 matmul of the same precision
   timed in the same run. fp32 is exact fp32 (TF32 off for matmuls and cuDNN), tf32 turns
   both on, bf16 is autocast as train.py's amp=true. A row fails only on an error or a
   non-finite loss: the numbers are measurements.
9. emd: the auction EMD (pvd.metrics, method="auction") on the device against the exact
   assignment on random cloud pairs. pvd.metrics.matching guarantees that the auction's
   mean match distance exceeds the optimum by at most epsilon = tolerance x a lower bound of
   the EMD, so 0 <= auction / exact - 1 <= tolerance (1% by default) for every pair; a
   relative slack of 1e-5 is allowed for float32 rounding.
10. tf32 switch: TrainConfig has ``tf32`` (default False), the pvd-paper presets keep it
    False (fp32-exact), and ``tf32=true`` parses on the command line.

Every check runs in its own subprocess with a timeout (--timeout, per check); a failure
(non-zero exit, timeout, a failed assertion) is a FAIL row with the last lines of its
stderr, and the others still run. Rows that need an earlier row's output are SKIP when that
row failed, CUDA-only rows are SKIP "skipped: no CUDA" with --cpu, and the mesh row is SKIP
when trimesh is missing. Exit status: 0 when no row failed, 1 when one did, 2 when nothing
was checked (no CUDA device and no --cpu, or bad arguments). Data and runs go to a new
folder under --out (default: a temporary folder, deleted when every row passed).

On a bare CUDA image (PyTorch, h5py, scipy, scikit-image, einops, tqdm, matplotlib, pillow):
from the repository root, ``pip install -e . --no-deps`` (or nothing: the script puts the
repository on PYTHONPATH for its subprocesses), then bring the two missing packages:
``pip install pytest trimesh`` (both pure Python; offline, ``pip download pytest trimesh
--no-deps -d wheels/`` on a connected machine, plus pytest's own small dependencies
iniconfig, pluggy, packaging, and ``pip install --no-index wheels/*.whl`` on the image).
trimesh is optional for the mesh row only in principle: pvd imports it at module level
(pvd.metrics.volume, pvd.io, pvd.meshing, pvd.preview, pvd.sds), so without it the
environment row reports that pvd does not import and every pvd row is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the worker bodies, beside this script

from gpu_check_steps import CATEGORY, RESULT, WORKERS, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DDP_STEPS, RESUME_STEPS = 20, 24
SDS_ITERATIONS, PRIOR_STEPS = 20, 5


# ---- running things -------------------------------------------------------------------------

def subprocess_env(cpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if cpu:
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny sizes: a second thread only waits on shared cores
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and everything it started (its process group): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def run(cmd: list[str], timeout: float, env: dict[str, str]) -> tuple[int | None, str, str, float]:
    """(exit status or None on timeout, stdout, stderr, seconds). The command runs in its own
    process group, killed whole on timeout or when this script is interrupted (torchrun's
    workers included)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild outside the group holds the pipes
            out, err = "", "(no output: the pipes stayed open after the kill)"
        code = None
    except BaseException:  # Ctrl-C, or SIGTERM (main turns it into SystemExit)
        kill_group(proc)
        raise
    return code, out, err, time.perf_counter() - start


def tail(text: str, lines: int = 3, width: int = 400) -> str:
    """The last non-empty lines of a log, progress-bar redraws dropped, as one line."""
    kept = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    kept = [line for line in kept if line and not re.search(r"\d+%\|", line)]
    joined = " / ".join(kept[-lines:])
    return joined if len(joined) <= width else "..." + joined[-width:]


def failure(code: int | None, err: str, out: str = "", timeout: float = 0) -> str:
    what = f"timed out after {timeout:.0f} s" if code is None else f"exit {code}"
    return f"{what}: {tail(err) or tail(out) or '(no output)'}"


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, float, str]] = []

    def add(self, name: str, status: str, seconds: float, detail: str) -> str:
        self.rows.append((name, status, seconds, detail.replace("|", "/").replace("\n", " ")))
        print(f"  {status:4s} {name} ({seconds:.1f} s): {detail}", flush=True)
        return status

    def print(self) -> None:
        print("\n| check | status | s | detail |\n|---|---|---:|---|")
        for name, status, seconds, detail in self.rows:
            print(f"| {name} | {status} | {seconds:.1f} | {detail} |")

    @property
    def failed(self) -> bool:
        return any(status == "FAIL" for _, status, _, _ in self.rows)


class Checks:
    """The checks in order; each records its rows in the table and returns whether later
    checks may use what it produced."""

    def __init__(self, args, work: Path):
        self.cpu = args.cpu
        self.device = "cpu" if args.cpu else "cuda"
        self.timeout = args.timeout
        self.work = work
        self.env = subprocess_env(args.cpu)
        self.table = Table()
        self.info: dict = {}
        self.data = work / "data.h5"
        self.view = work / "view.png"
        self.run_dir = work / "ddp-run"
        self.samples = work / "samples"
        self.prior = work / "sds-prior"

    def worker(self, name: str, *rows: str) -> list[dict] | None:
        """Run worker ``name`` (gpu_check_steps.WORKERS) in a subprocess of this file; its rows, or
        None after a FAIL row (named after the first of ``rows``, the others SKIP) when it did not
        report."""
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", str(self.work)]
        if self.cpu:
            cmd.append("--cpu")
        code, out, err, seconds = run(cmd, self.timeout, self.env)
        found = [line for line in out.splitlines() if line.startswith(RESULT)]
        if code == 0 and found:
            result = json.loads(found[-1][len(RESULT):])
            for row in result:
                row.setdefault("seconds", 0.0 if row["status"] == "SKIP" else seconds)
            return result
        self.table.add(rows[0], "FAIL", seconds, failure(code, err, out, self.timeout))
        for other in rows[1:]:
            self.table.add(other, "SKIP", 0.0, f"{rows[0]} failed")
        return None

    def record(self, result: list[dict] | None) -> bool:
        if result is None:
            return False
        return all(self.table.add(r["name"], r["status"], r["seconds"], r["detail"]) != "FAIL" for r in result)

    def command(self, name: str, cmd: list[str]) -> tuple[bool, str, str, float]:
        """Run ``cmd``; on a non-zero exit or a timeout, a FAIL row. (ok, stdout, stderr, seconds)."""
        code, out, err, seconds = run(cmd, self.timeout, self.env)
        if code != 0:
            self.table.add(name, "FAIL", seconds, failure(code, err, out, self.timeout))
        return code == 0, out, err, seconds

    # ---- the checks ----

    def environment(self) -> bool:
        result = self.worker("environment", "environment")
        if result is not None:
            self.info = result[0].pop("info", {})
        return self.record(result)

    def pytest(self) -> None:
        name = "pytest -k cuda" if not self.cpu else "pytest -k cpu (subset)"
        if not self.info.get("pytest"):
            self.table.add(name, "FAIL", 0.0, "pytest not installed: pip install pytest")
            return
        selection = (["-k", "cuda", "tests/"] if not self.cpu else
                     ["-k", "cpu", "-m", "not slow", "tests/test_ops.py", "tests/test_diffusion_samplers.py"])
        code, out, err, seconds = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
                                      self.timeout, self.env)
        summary = next((line.strip("= ") for line in reversed(out.splitlines()) if re.search(r" in [\d.]+s", line)),
                       tail(out, 1))
        if code == 0:
            missing = re.findall(r"SKIPPED.*(?:no CUDA|CUDA not available).*", out)
            if missing and not self.cpu:
                self.table.add(name, "FAIL", seconds, f"{summary}; CUDA tests skipped: {tail(missing[0], 1)}")
            else:
                self.table.add(name, "PASS", seconds, summary)
        elif code == 5 and self.cpu:
            self.table.add(name, "SKIP", seconds, f"no CPU tests matched the subset ({summary})")
        elif code == 5:
            self.table.add(name, "FAIL", seconds, f"no test matched -k cuda ({summary})")
        elif code is None:
            self.table.add(name, "FAIL", seconds, failure(code, err, out, self.timeout))
        else:
            failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
            self.table.add(name, "FAIL", seconds, f"{summary}: {'; '.join(failed[:3]) or tail(err or out)}")

    def make_data(self) -> bool:
        return self.record(self.worker("data", "data"))

    def ddp(self) -> bool:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py", "tiny"]
        common = [f"data.path={self.data}", f"run_dir={self.run_dir}", f"device={self.device}"]
        ok = True
        for name, extra, steps in (("ddp train", [f"max_steps={DDP_STEPS}"], DDP_STEPS),
                                   ("ddp resume", ["resume=true", f"max_steps={RESUME_STEPS}"], RESUME_STEPS)):
            if not ok:
                self.table.add(name, "SKIP", 0.0, "ddp train failed")
                continue
            ok, out, err, seconds = self.command(name, [*torchrun, *common, *extra])
            if not ok:
                continue
            step = last_checkpoint(self.run_dir)
            backend = "gloo" if self.cpu else "nccl"
            problems = []
            if "(DDP)" not in out:
                problems.append("the log does not say '(DDP)': train.py did not wrap the model in DDP at world size 1")
            if "done:" not in out:
                problems.append("no 'done:' line")
            if step != steps:
                problems.append(f"last checkpoint is step {step}, expected {steps}")
            if name == "ddp resume" and "resuming" not in out:
                problems.append("the log does not say 'resuming'")
            status = "FAIL" if problems else "PASS"
            detail = "; ".join(problems) if problems else f"{backend}, world size 1, checkpoint step {step}"
            done = next((line.strip() for line in reversed(out.splitlines()) if line.strip().startswith("done:")), "")
            self.table.add(name, status, seconds, f"{detail} ({done[:160]})" if done else detail)
            ok = not problems
        return ok

    def sample(self, trained: bool) -> None:
        mesh_wanted = bool(self.info.get("trimesh"))
        if not trained:
            self.table.add("sample", "SKIP", 0.0, "no trained run (ddp failed)")
            self.table.add("mesh", "SKIP", 0.0, "no trained run (ddp failed)" if mesh_wanted else
                           "trimesh not installed: pip install trimesh")
            return
        cmd = [sys.executable, "sample.py", "--ckpt", str(self.run_dir), "--image", str(self.view), "--category",
               CATEGORY, "--num", "2", "--sampler", "ddim", "--steps", "10", "--device", self.device,
               "--out", str(self.samples)]
        if mesh_wanted:
            cmd += ["--mesh", "obj"]
        ok, out, err, seconds = self.command("sample", cmd)
        if ok:
            result = self.worker("samples", "sample")
            for r in result or []:
                r["seconds"] = seconds  # sample.py's time, not the check's
            self.record(result)
        if not mesh_wanted:
            self.table.add("mesh", "SKIP", 0.0, "trimesh not installed: pip install trimesh")
        elif not ok:
            self.table.add("mesh", "SKIP", 0.0, "sample failed")
        else:
            meshes = sorted(self.samples.glob("*.obj"))
            warned = [line for line in err.splitlines() if "no mesh" in line]
            if meshes and all(p.stat().st_size > 0 for p in meshes):
                self.table.add("mesh", "PASS", 0.0, f"{len(meshes)} .obj written by sample.py (meshed on the CPU, "
                               "timed in sample)" + (f"; {len(warned)} shape(s) without a mesh" if warned else ""))
            else:
                self.table.add("mesh", "FAIL", 0.0, f"no .obj written: {tail(chr(10).join(warned) or err)}")

    def poisson(self) -> None:
        if not self.info.get("trimesh"):
            self.table.add("poisson on cuda", "SKIP", 0.0, "trimesh not installed: pip install trimesh")
            return
        self.record(self.worker("poisson", "poisson on cuda", "sphere mesh"))

    def sds(self) -> None:
        args = [f"data={self.data}", f"run_dir={self.prior}", f"max_steps={PRIOR_STEPS}", "ckpt_every=5", "log_every=1",
                f"device={self.device}"]
        args += (["batch_size=8", "threads=0"] if not self.cpu else
                 ["model.image_size=8", "model.channels=8,16", "model.heads=2", "model.embed_dim=16", "batch_size=4"])
        ok, out, err, seconds = self.command("sds prior", [sys.executable, "-m", "pvd.sds.train_prior", *args])
        if ok:
            step = last_checkpoint(self.prior)
            start = next((line.strip() for line in out.splitlines() if "the view prior" in line), "")
            problems = [] if step == PRIOR_STEPS else [f"last checkpoint is step {step}, expected {PRIOR_STEPS}"]
            if not self.cpu and "cuda" not in start:
                problems.append(f"its log does not name cuda: {start[:120]!r}")
            ok = not problems
            self.table.add("sds prior", "PASS" if ok else "FAIL", seconds, "; ".join(problems) or
                           f"{PRIOR_STEPS} steps, checkpoint step {step} ({start.split(':')[0][:120]})")
        if not ok:
            self.table.add("sds", "SKIP", 0.0, "sds prior failed")
            return
        out_dir = self.work / "sds"
        cmd = [sys.executable, "-m", "pvd.sds", "--prior", str(self.prior), "--data", str(self.data), "--split", "val",
               "--num", "1", "--iterations", str(SDS_ITERATIONS), "--device", self.device, "--out", str(out_dir)]
        if self.cpu:
            cmd += ["--threads", "1", "--set", "field.resolution=16", "ref_size=16", "num_samples=16", "num_points=256"]
        ok, out, err, seconds = self.command("sds", cmd)
        if not ok:
            return
        summary = json.loads((out_dir / "summary.json").read_text())
        record = summary["records"][0]
        problems = []
        if not summary["device"].startswith(self.device):
            problems.append(f"ran on {summary['device']}")
        if record["iterations"] != SDS_ITERATIONS or record.get("prior_evaluations", 0) < 1:
            problems.append(f"{record['iterations']} iterations, {record.get('prior_evaluations')} prior calls")
        detail = (f"{record['iterations']} iterations on {summary['device']} in {record['seconds']:.1f} s, "
                  f"{record['prior_evaluations']} prior calls, peak {record['peak_memory_mb']:.0f} MB, "
                  f"empty={record['empty']}, CD {record.get('cd', float('nan')):.4f}")
        self.table.add("sds", "FAIL" if problems else "PASS", seconds, "; ".join(problems) or detail)

    def speed(self) -> None:
        self.record(self.worker("speed", "speed fp32", "speed bf16", "speed tf32"))

    def emd(self) -> None:
        self.record(self.worker("emd", "emd auction vs exact"))

    def tf32_switch(self) -> None:
        self.record(self.worker("tf32", "tf32 switch"))


def last_checkpoint(run_dir: Path) -> int | None:
    steps = [int(m.group(1)) for p in (run_dir / "checkpoints").glob("step-*.pt") if (m := re.match(r"step-(\d+)\.pt$", p.name))]
    return max(steps) if steps else None


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="See the module docstring for what each row checks.")
    parser.add_argument("--cpu", action="store_true", help="run every check on the CPU at tiny sizes (gloo for DDP)")
    parser.add_argument("--out", help="folder for the data and runs (a new subfolder is made; default: a temporary "
                                      "folder, deleted when every check passed)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per check (default 240)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        device = torch.device("cpu" if args.cpu else "cuda")
        report(WORKERS[args.worker](device, args.cpu, Path(args.out)))
        return 0

    import torch

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that a running check's processes are stopped too
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here, nothing checked (run with --cpu to check the CPU side)", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.out)).resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="pvd-gpu-check-")).resolve()
    start = time.perf_counter()
    print(f"gpu_check on {'the CPU (--cpu)' if args.cpu else 'CUDA'}, {platform.node()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, data and runs in {work}", flush=True)

    checks = Checks(args, work)
    if checks.environment():
        checks.pytest()
        if checks.make_data():
            trained = checks.ddp()
            checks.sample(trained)
            checks.sds()
        else:
            for name in ("ddp train", "ddp resume", "sample", "mesh", "sds prior", "sds"):
                checks.table.add(name, "SKIP", 0.0, "data failed")
        checks.poisson()
        checks.speed()
        checks.emd()
        checks.tf32_switch()
    else:
        checks.table.add("(all other checks)", "SKIP", 0.0, "the environment check failed")

    checks.table.print()
    total = time.perf_counter() - start
    failed = checks.table.failed
    print(f"\n{'FAILED' if failed else 'passed'}: {sum(r[1] == 'FAIL' for r in checks.table.rows)} failed, "
          f"{sum(r[1] == 'SKIP' for r in checks.table.rows)} skipped, {sum(r[1] == 'PASS' for r in checks.table.rows)} "
          f"passed in {total:.0f} s")
    if not failed and not args.out:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"data and runs kept in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
