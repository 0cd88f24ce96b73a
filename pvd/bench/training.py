"""``bench.py train``: every model the benchmark needs, trained in turn by its own command, each
step's time kept in DIR/train-log.json (read back into the benchmark's cost table).

A finished step is skipped on a rerun (its marker DIR/.done-NAME). A started one continues: the
training commands resume from their newest checkpoint (``resume=true``), the P-FID classifier
(about a minute) starts again. Each interrupted attempt's time is kept in DIR/.partial-NAME and
added to the step's time when it finishes, so the log holds the compute the step cost in all
(an attempt killed outright, SIGKILL or a power cut, leaves no time behind).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvd import checkpoint
from pvd.bench.common import ROOT, machine, minutes, subprocess_env, write_json, write_text
from pvd.errors import UserError

def cli_options(items: list[str], flag: str) -> list[str]:
    """['epochs=1', 'widths=8,16'] -> ['--epochs', '1', '--widths', '8', '16'] for the argparse commands
    (``python -m pvd.pfid train``, ``python -m pvd.semantic train``); flag: the option they came from."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} takes KEY=VALUE, got {item!r}")
        out += ["--" + key.replace("_", "-"), *value.split(",")]
    return out


@dataclass(frozen=True)
class TrainStep:
    """One model to train: its command, the folder it makes, and whether a started run resumes
    (``resume=true`` when the folder holds a checkpoint) or starts again."""

    name: str
    command: list[str]
    folder: Path
    resumable: bool

    def command_now(self) -> list[str]:
        """The command to run now: resuming when a started run left a checkpoint behind."""
        if self.resumable and checkpoint.list_checkpoints(self.folder):
            return [*self.command, "resume=true"]
        return self.command


def train_steps(args: argparse.Namespace) -> list[TrainStep]:
    """Every model the benchmark needs, in training order. The PVD preset trains its stage 0 (the
    stand-alone regressor) first into DIR/pvd/encoder: that is the benchmark's encoder trained
    alone, counted in the PVD step's time."""
    out = Path(args.out)
    py = sys.executable
    dev = [f"device={args.device}"]  # before the *_set overrides, which may still change it
    return [
        TrainStep("pvd", [py, str(ROOT / "train.py"), "image-2048", f"data.path={args.data}",
                          f"run_dir={out / 'pvd'}", *dev, *args.pvd_set], out / "pvd", True),
        TrainStep("sds", [py, "-m", "pvd.sds.train_prior", f"data={args.data}", f"run_dir={out / 'sds-prior'}",
                          *dev, *args.prior_set], out / "sds-prior", True),
        TrainStep("pfid", [py, "-m", "pvd.pfid", "train", "--data", args.data, "--out", str(out / "pfid"),
                           *cli_options(args.pfid_set, "--pfid-set")], out / "pfid", False),
        TrainStep("evaluator", [py, "-m", "pvd.semantic", "train", "--data", args.data, "--out", str(out / "evaluator"),
                                *cli_options(args.evaluator_set, "--evaluator-set")], out / "evaluator", False),
    ]


def train(args: argparse.Namespace) -> int:
    """Run the steps of ``train_steps`` (those in --only), skipping the ones marked done; print
    the benchmark command that uses their outputs."""
    out = Path(args.out)
    steps = [s for s in train_steps(args) if not args.only or s.name in args.only]
    if args.dry_run:
        for step in steps:
            print(f"{step.name}: {' '.join(shlex.quote(c) for c in step.command_now())}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train-log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    env = subprocess_env()
    total = time.perf_counter()
    for step in steps:
        marker, partial = out / f".done-{step.name}", out / f".partial-{step.name}"
        if marker.is_file():
            print(f"== {step.name}: done earlier ({minutes(log.get(step.name, {}).get('seconds'))}), skipped")
            continue
        earlier = json.loads(partial.read_text()) if partial.is_file() else []  # interrupted attempts' seconds
        cmd = step.command_now()
        verb = "resuming" if cmd != step.command else ("starting again" if step.folder.exists() else "starting")
        print(f"== {step.name} ({verb}): {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        tic = time.perf_counter()
        try:
            done = subprocess.run(cmd, env=env)
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM reached this process too: keep the attempt's time
            write_json(partial, [*earlier, time.perf_counter() - tic])
            raise
        seconds = time.perf_counter() - tic
        if done.returncode != 0:
            write_json(partial, [*earlier, seconds])
            if done.returncode == 130:
                raise KeyboardInterrupt
            raise UserError(f"step {step.name} failed (exit {done.returncode}; its message is above); "
                            f"run the same command again to continue it")
        attempts = [*earlier, seconds]
        log[step.name] = {"seconds": sum(attempts), "attempts": attempts,
                          "command": " ".join(shlex.quote(c) for c in step.command), "machine": machine()}
        write_json(log_path, log)
        write_text(marker, f"{sum(attempts)}\n")
        partial.unlink(missing_ok=True)
        print(f"== {step.name}: {seconds / 60:.1f} min" + (f" ({sum(attempts) / 60:.1f} over {len(attempts)} attempts)"
                                                           if len(attempts) > 1 else ""), flush=True)
    print(f"trained in {(time.perf_counter() - total) / 60:.1f} min this run; all steps: "
          f"{sum(v['seconds'] for v in log.values()) / 60:.1f} min. Next:\n"
          f"python bench.py --data {args.data} --pvd {out / 'pvd'} --regressor {out / 'pvd' / 'encoder'} "
          f"--sds {out / 'sds-prior'} --pfid {out / 'pfid'} --embedder {out / 'evaluator'} --num 50 --sds-num 20 --out outputs/bench")
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
