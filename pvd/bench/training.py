"""``bench.py train``: every model the benchmark needs, trained in turn by its own command, each
step's time kept in DIR/train-log.json (read back into the benchmark's cost table)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pvd.bench.common import ROOT, machine, minutes, subprocess_env, write_json, write_text
from pvd.errors import UserError

# The cascade step's overrides: the quickstart model as a 128 -> 512 point cascade (CPU-sized).
CASCADE_CPU = ['diffusion.cascade=default', 'diffusion.cascade.stages=[{"num_points":128},{"num_points":512}]']


def pfid_options(items: list[str]) -> list[str]:
    """['epochs=1', 'widths=8,16'] -> ['--epochs', '1', '--widths', '8', '16'] for ``python -m pvd.pfid train``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--pfid-set takes KEY=VALUE, got {item!r}")
        out += ["--" + key.replace("_", "-"), *value.split(",")]
    return out


def train_steps(args: argparse.Namespace) -> list[tuple[str, list[str], Path]]:
    """(name, command, the folder it makes) for every model the benchmark needs."""
    out = Path(args.out)
    py = sys.executable
    dev = [f"device={args.device}"]
    return [
        ("single", [py, str(ROOT / "train.py"), "quickstart", f"data.path={args.data}", f"run_dir={out / 'single'}",
                    *dev, *args.pvd_set], out / "single"),
        ("cascade", [py, str(ROOT / "train.py"), "quickstart", f"data.path={args.data}", f"run_dir={out / 'cascade'}",
                     *CASCADE_CPU, *dev, *args.cascade_set], out / "cascade"),
        ("sds", [py, "-m", "pvd.sds.train_prior", f"data={args.data}", f"run_dir={out / 'sds-prior'}", *args.prior_set],
         out / "sds-prior"),
        ("pfid", [py, "-m", "pvd.pfid", "train", "--data", args.data, "--out", str(out / "pfid"), *pfid_options(args.pfid_set)],
         out / "pfid"),
    ]


def train(args: argparse.Namespace) -> int:
    """Run the steps of ``train_steps`` (those in --only), skipping the ones marked done; print
    the benchmark command that uses their outputs."""
    out = Path(args.out)
    steps = [s for s in train_steps(args) if not args.only or s[0] in args.only]
    if args.dry_run:
        for name, cmd, _ in steps:
            print(f"{name}: {' '.join(shlex.quote(c) for c in cmd)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train-log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    env = subprocess_env()
    total = time.perf_counter()
    for name, cmd, folder in steps:
        marker = out / f".done-{name}"
        if marker.is_file():
            print(f"== {name}: done earlier ({minutes(log.get(name, {}).get('seconds'))}), skipped")
            continue
        if folder.exists() and name != "pfid":
            raise UserError(f"{folder} exists but did not finish; delete it (or resume it by hand) and run again")
        print(f"== {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        tic = time.perf_counter()
        done = subprocess.run(cmd, env=env)
        seconds = time.perf_counter() - tic
        if done.returncode == 130:
            raise KeyboardInterrupt
        if done.returncode != 0:
            raise UserError(f"step {name} failed (exit {done.returncode}; its message is above)")
        log[name] = {"seconds": seconds, "command": " ".join(shlex.quote(c) for c in cmd), "machine": machine()}
        write_json(log_path, log)
        write_text(marker, f"{seconds}\n")
        print(f"== {name}: {seconds / 60:.1f} min", flush=True)
    print(f"trained in {(time.perf_counter() - total) / 60:.1f} min this run; all steps: "
          f"{sum(v['seconds'] for v in log.values()) / 60:.1f} min. Next:\n"
          f"python bench.py --data {args.data} --pvd {out / 'single'} --pvd-cascade {out / 'cascade'} "
          f"--sds {out / 'sds-prior'} --pfid {out / 'pfid'} --num 50 --sds-num 20 --out outputs/bench")
    return 0


def training_log(paths: list[str | None]) -> dict[str, Any]:
    """Step times written by ``bench.py train`` beside the runs (DIR/train-log.json), if any."""
    out: dict[str, Any] = {}
    for p in paths:
        if p is None:
            continue
        log = Path(p).resolve().parent / "train-log.json"
        if log.is_file():
            out.update(json.loads(log.read_text()))
    return out
