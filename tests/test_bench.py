"""bench.py end to end on the tiny dataset with tiny trained models: every output, finite and
consistent numbers, a rerun that skips finished shapes, the same quality numbers from a fresh
folder, and bad input as one line with exit code 2."""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import bench
import train
from pvd import checkpoint, regressor
from pvd.bench import run, training
from pvd.errors import UserError
from pvd.pfid import ClassifierConfig, save_classifier, train_classifier
from pvd.sds import train_prior
from pvd.sds.magic3d import RefineConfig
from pvd.semantic.evaluator import EvaluatorConfig, save_evaluator, train_evaluator

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def models(pipeline_data, tmp_path_factory):
    """One-step tiny runs (the plumbing, not the shapes): the hierarchy (a shape head, so the
    regressor row is scored, refined over t <= 0.5 T), its single-stage ablation, the SDS prior and
    the P-FID classifier."""
    root = tmp_path_factory.mktemp("bench-models")
    data = str(pipeline_data)
    shaped = ["max_steps=1", "shape_loss=1", "shape_points=16", "shape_input=true"]
    assert train.main(["tiny", f"data.path={data}", f"run_dir={root / 'pvd'}", *shaped, "diffusion.hierarchy.t_max=0.5"]) == 0
    assert train.main(["tiny", f"data.path={data}", f"run_dir={root / 'ablation'}", *shaped]) == 0
    regressor.main([f"data.path={data}", f"run_dir={root / 'regressor'}", "data.num_points=128", "widths=8,16",
                    "dim=16", "blocks=1", "shape_points=16", "max_steps=2", "batch_size=4"])
    train_prior.main([f"data={data}", f"run_dir={root / 'prior'}", "model.image_size=8", "model.channels=8,16",
                      "model.heads=2", "model.embed_dim=16", "batch_size=4", "max_steps=1", "log_every=1", "warmup_steps=1"])
    model, record = train_classifier(data, ClassifierConfig(widths=(8, 16), feature_dim=8, num_points=64, epochs=1,
                                                            batch_size=4), log=lambda *a: None)
    save_classifier(model, record, root / "pfid")
    net, record = train_evaluator(data, EvaluatorConfig(widths=(8, 16), embed_dim=8, views_per_shape=2, steps=2,
                                                        batch_shapes=4), log=lambda *a: None)
    save_evaluator(net, record, root / "evaluator")
    return {"data": data, "pvd": str(root / "pvd"), "ablation": str(root / "ablation"), "regressor": str(root / "regressor"),
            "prior": str(root / "prior"), "pfid": str(root / "pfid"), "evaluator": str(root / "evaluator")}


def args(models, out, *extra):
    return ["--data", models["data"], "--pvd", models["pvd"], "--pvd-ablation", models["ablation"],
            "--regressor", models["regressor"],
            "--sds", models["prior"], "--pfid", models["pfid"], "--embedder", models["evaluator"], "--out", str(out), "--num", "2", "--sds-num", "1",
            "--sampler", "ddim", "--steps", "2", "--steps-curve", "ddim:1,2", "--guidance-curve", "1,2",
            "--curve-num", "2", "--batch", "2", "--latency-shapes", "1", "--throughput-batches", "1,2", "--workers", "1",
            "--sds-set", "representation.kind=voxel", "iterations=2", "field.resolution=12", "ref_size=16", "num_samples=8", "num_points=200",
            "--lifting", "sds", "multiview", "magic3d", "--multiview-args", "--views 2 --steps 2",
            "--refine-set", "iterations=2", "mesh_resolution=8", *extra]


@pytest.fixture(scope="module")
def first(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    assert bench.main(args(models, out)) == 0
    return out


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_output_is_written_with_finite_consistent_numbers(first):
    for name in ("results.md", "results.json", "results.csv", "grid.png", "worst.png", "steps.png", "guidance.png",
                 "settings.json"):
        assert (first / name).is_file(), name
    assert not list(first.rglob("*.partial"))
    result = json.loads((first / "results.json").read_text())
    q = result["quality"]
    assert list(q["methods"]) == ["pvd", "ablation", "sds", "multiview", "magic3d", "regressor", "regressor-alone",
                                 "retrieval", "retrieval-alone", "oracle", "truth-resample"]
    assert result["cost"]["methods"]["regressor"]["network_evaluations_per_shape"] == 1
    assert q["methods"]["pvd"]["shapes"] == 2
    for method in ("sds", "multiview", "magic3d"):  # the same shape, the same view for every lifting method
        assert q["methods"][method]["shapes"] == 1 and set(q["lifting_flags"][method]) >= {"janus", "floaters", "empty"}
        assert result["cost"]["methods"][method]["network_evaluations_per_shape"] > 0
    assert result["cost"]["methods"]["multiview"]["network_evaluations_per_shape"] == 4  # 2 views x 2 DDIM steps
    assert result["cost"]["methods"]["magic3d"]["network_evaluations_per_shape"] == 4  # 2 coarse + 2 fine iterations
    # Magic3D refined the SDS run's field (same settings: both on the grid here) instead of repeating it:
    # its coarse scores are SDS's
    (m3d,) = [json.loads(f.read_text()) for f in (first / "magic3d" / "records").glob("*.json")]
    sds = json.loads((first / "sds" / "records" / f"{m3d['name']}.json").read_text())
    assert m3d["coarse_from"] == str(first / "sds" / f"{m3d['name']}.field.pt")
    assert (m3d["coarse_cd"], m3d["coarse_seconds"]) == (sds["cd"], sds["seconds"])
    for method, summary in q["methods"].items():
        for key in ("cd", "emd", "f1", "f2", "iou", "mesh_f1", "mesh_nc", "r2"):
            ci = summary["mean"][key]
            assert all(math.isfinite(ci[v]) for v in ("mean", "low", "high")), (method, key)
            assert ci["low"] <= ci["mean"] <= ci["high"]
        assert summary["mean"]["cd"]["mean"] >= 0 and 0 <= summary["mean"]["f1"]["mean"] <= 1
    rows = read_csv(first / "results.csv")
    assert len(rows) == 2 * 8 + 3
    by = {(r["method"], r["name"]): r for r in rows}
    for name in {r["name"] for r in rows}:
        # The oracle answers with the training shape nearest in Chamfer distance: never worse than retrieval.
        assert float(by["oracle", name]["cd"]) <= float(by["retrieval", name]["cd"]) * (1 + 1e-5)
    assert {d["b"] for d in q["differences"] if d["a"] == "pvd"} == {"ablation", "sds", "multiview", "magic3d", "regressor",
                                                                      "regressor-alone", "retrieval", "retrieval-alone", "oracle"}
    assert {d["b"] for d in q["differences"] if d["a"] == "sds"} == {"multiview", "magic3d"}  # against today's SDS
    assert all(int(r["points"]) == 16 for r in rows if r["method"] in ("regressor", "regressor-alone"))  # the heads' clouds
    for d in q["differences"]:
        assert d["low"] <= d["mean"] <= d["high"]
    for method in ("pvd", "ablation", "retrieval", "truth-resample"):
        dist = q["distribution"][method]
        assert {"MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD", "1-NNA-EMD", "P-FID"} <= set(dist)
    assert [p["steps"] for p in q["curves"]["steps"]] == [1, 2]
    assert [p["guidance"] for p in q["curves"]["guidance"]] == [1.0, 2.0]
    cost = result["cost"]
    assert cost["methods"]["pvd"]["network_evaluations_per_shape"] == 2  # ddim-2, guided calls count once
    assert cost["methods"]["ablation"]["network_evaluations_per_shape"] == 2  # the same sampler from T-1
    assert q["ablation"]["runs"]["pvd"].startswith("tiny, 128 points, hierarchy")
    assert cost["methods"]["pvd"]["seconds_per_shape_batch1"] > 0 and cost["latency_ratio_sds_over_pvd"] > 0
    assert [t["batch"] for t in cost["methods"]["pvd"]["throughput"]] == [1, 2]
    semantic = q["semantic"]
    assert set(semantic["methods"]) == set(q["methods"])  # 1 test shape per category: no floor partner here
    assert semantic["candidates"] == 2 and semantic["conventions"]["embedder"].startswith("evaluator")
    for method, r in semantic["methods"].items():
        assert r["shapes"] == q["methods"][method]["shapes"]
        assert 0 <= r["top1"]["low"] <= r["top1"]["mean"] <= r["top1"]["high"] <= 1
        assert r["kid"] is None  # the jackknife needs 3 shapes
    md = (first / "results.md").read_text()
    for heading in ("## Quality", "## Differences", "## Ablation", "## Distribution metrics", "## Semantic alignment",
                    "## Per category", "## Failure analysis", "## Cost", "## Quality vs sampler steps",
                    "## Quality vs guidance"):
        assert heading in md


def test_a_rerun_skips_finished_shapes_and_a_fresh_folder_gives_the_same_quality(models, first, tmp_path):
    cached = sorted(p for p in (first / "metrics").rglob("*") if p.is_file()) + \
        sorted(p for p in (first / "samples").rglob("*.npy")) + sorted((first / "sds" / "records").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    before = json.loads((first / "results.json").read_text())
    assert bench.main(args(models, first)) == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps  # nothing recomputed
    again = json.loads((first / "results.json").read_text())
    assert again["quality"] == before["quality"]

    fresh = tmp_path / "fresh"
    assert bench.main(args(models, fresh)) == 0
    assert json.loads((fresh / "results.json").read_text())["quality"] == before["quality"]
    assert (fresh / "results.csv").read_text() == (first / "results.csv").read_text()

    # Each test-split run left one line beside the dataset; the same settings, the same hash.
    lines = [json.loads(line) for line in run.test_log_path(models["data"]).read_text().splitlines()]
    mine = {str(first.resolve()): [], str(fresh.resolve()): []}
    for line in lines:
        if line["out"] in mine:
            mine[line["out"]].append(line)
    assert len(mine[str(first.resolve())]) == 2 and len(mine[str(fresh.resolve())]) == 1
    hashes = {line["settings_hash"] for group in mine.values() for line in group}
    assert len(hashes) == 1 and hashes == {run.settings_hash(mine[str(fresh.resolve())][0]["settings"])}
    assert all(line["sampler"]["sampler"] == "ddim" and "--out" in line["command"] for line in lines)


def test_a_validation_run_is_not_logged_as_a_test_run(models, tmp_path):
    log = run.test_log_path(models["data"])
    before = log.read_text() if log.is_file() else ""
    assert bench.main(args(models, tmp_path / "val", "--split", "val", "--steps-curve", "", "--guidance-curve", "",
                           "--distribution", "", "--sds-num", "0")) == 0
    assert (log.read_text() if log.is_file() else "") == before


def test_other_settings_in_the_same_folder_are_refused(models, first, monkeypatch):
    with pytest.raises(UserError, match="differ in: seed"):
        bench.main(args(models, first, "--seed", "1"))
    # a changed default of Magic3D's fine stage, with the same command line
    monkeypatch.setattr(run, "RefineConfig", functools.partial(RefineConfig, edit_steps=3))
    with pytest.raises(UserError, match=r"differ in: refine_config\)"):
        bench.main(args(models, first))


BAD_INPUT = [
    ({"--data": "missing.h5"}, "no such file"),
    ({"--t-start": "0.9"}, "t_start must lie"),  # beyond the hierarchy's training range (t_max 0.5)
    ({"--steps-curve": "euler:3"}, "unknown sampler"),
    ({"--num": "0"}, "--num must be at least 1"),
    ({"--sds": "pfid"}, "not an SDS prior|checkpoint"),
    ({"--embedder": "missing.evaluator"}, "no such evaluator folder"),
    ({"--embedder": "pfid"}, "is not a semantic evaluator record"),  # another model's folder
    ({"--embedder": "open_clip:ViT-B-32"}, "expected open_clip:MODEL:WEIGHTS_FILE|open_clip package"),
    ({"--candidates": "1"}, "--candidates must be at least 2"),
]


def bad_args(models, out, change):
    argv = args(models, out)
    for key, value in change.items():
        if key in argv:
            argv[argv.index(key) + 1] = models.get(value, value)
        else:
            argv += [key, models.get(value, value)]
    return argv


def test_bad_input_is_one_line_and_exit_2(models, tmp_path):
    """The command's wrapper, in a real process (one case: the interpreter and torch import cost
    seconds): a UserError becomes one line ``error: ...`` on stderr, no traceback, exit code 2."""
    change, message = BAD_INPUT[0]
    argv = bad_args(models, tmp_path / "out", change)
    done = subprocess.run([sys.executable, str(ROOT / "bench.py"), *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("change,message", BAD_INPUT)
def test_bad_input_is_a_one_line_user_error(models, tmp_path, monkeypatch, change, message):
    """Every bad input is a UserError (what the wrapper above prints as one line), raised before any result."""
    monkeypatch.chdir(tmp_path)  # relative paths resolve as in the subprocess case
    with pytest.raises(UserError, match=message) as raised:
        bench.main(bad_args(models, tmp_path / "out", change))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out" / "results.json").exists()


def test_train_mode_lists_every_step(models, tmp_path, capsys):
    assert bench.main(["train", "--data", models["data"], "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["pvd", "sds", "pfid", "evaluator"]
    assert "train.py image-2048" in lines[0]
    assert "pvd.sds.train_prior" in lines[1] and "pvd.pfid train" in lines[2] and "pvd.semantic train" in lines[3]
    with pytest.raises(UserError, match="no such file"):
        bench.main(["train", "--data", str(tmp_path / "nope.h5"), "--dry-run"])


def test_train_mode_commands_resolve_to_the_intended_configs(models, tmp_path):
    """The real commands (what a full run trains), checked by the scripts' own parsers without training."""
    from pvd.sds.train_prior import parse_config as parse_prior

    cli = bench.build_train_parser().parse_args(["--data", models["data"], "--out", str(tmp_path / "runs")])
    steps = {step.name: step.command for step in training.train_steps(cli)}
    pvd = train.parse_config(steps["pvd"][2:])
    assert (pvd.model, pvd.data.num_points, pvd.diffusion.hierarchy.t_max) == ("cpu-2048", 2048, 0.1)
    assert pvd.encoder_pretrain > 0  # stage 0 in DIR/pvd/encoder: the benchmark's encoder trained alone
    assert pvd.run_dir == str(tmp_path / "runs" / "pvd") and pvd.data.path == models["data"]
    prior = parse_prior(steps["sds"][3:])
    assert prior.run_dir == str(tmp_path / "runs" / "sds-prior") and prior.data == models["data"]
    assert pvd.device == prior.device == "auto"  # resolved by each command on its machine
    assert steps["pfid"][1:4] == ["-m", "pvd.pfid", "train"]
    assert steps["evaluator"][1:4] == ["-m", "pvd.semantic", "train"] and "--out" in steps["evaluator"]


def test_the_device_reaches_the_training_commands_and_the_sds_command(pipeline_data, tmp_path, capsys, monkeypatch):
    """bench.py train --device: the PVD and prior training commands; the benchmark's device: the SDS lifting command."""
    from pvd.bench import baselines
    from pvd.sds.__main__ import build_parser as sds_parser
    from pvd.sds.train_prior import parse_config as parse_prior

    data = str(pipeline_data)
    assert bench.main(["train", "--data", data, "--out", str(tmp_path / "runs"), "--device", "cpu", "--dry-run"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert "device=cpu" in lines["pvd"].split() and "device=cpu" in lines["sds"].split()
    cli = bench.build_train_parser().parse_args(["--data", data, "--out", str(tmp_path / "runs"), "--device", "cpu",
                                                 "--prior-set", "batch_size=4"])
    steps = {step.name: step.command for step in training.train_steps(cli)}
    assert train.parse_config(steps["pvd"][2:]).device == "cpu"
    prior = parse_prior(steps["sds"][3:])
    assert prior.device == "cpu" and prior.batch_size == 4

    calls = []
    monkeypatch.setattr(baselines.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    cli = argparse.Namespace(sds=str(tmp_path / "prior"), sds_num=1, seed=0, threads=None, sds_set=[])
    split = types.SimpleNamespace(path=data, split="test", view=0, num=1, shapes=[])
    assert baselines.run_lifting(cli, split, torch.device("cpu"), tmp_path / "sds") == {}
    (cmd,) = calls
    assert cmd[1:3] == ["-m", "pvd.sds"] and sds_parser().parse_args(cmd[3:]).device == "cpu"


def test_train_mode_runs_each_step_once_resumes_a_started_one_and_logs_its_time(models, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    fail_once = tmp_path / "pfid-fails-once"
    fail_once.touch()
    # Stand-ins for the commands: each writes a checkpoint into its folder as the real ones do and
    # appends its arguments to calls.txt; pfid fails on its first attempt.
    script = ("import os, sys, pathlib; folder, flag = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]); "
              "(folder / 'checkpoints').mkdir(parents=True, exist_ok=True); "
              "(folder / 'checkpoints' / 'step-00000001.pt').touch(); "
              "open(folder.parent / 'calls.txt', 'a').write(' '.join(sys.argv[1:]) + '\\n'); "
              "sys.exit(1 if folder.name == 'pfid' and flag.exists() and not flag.unlink() else 0)")

    def fake_steps(args):
        out = Path(args.out)
        return [training.TrainStep(name, [sys.executable, "-c", script, str(out / name), str(fail_once)], out / name,
                                   name != "pfid") for name in ("pvd", "sds", "pfid")]

    monkeypatch.setattr(training, "train_steps", fake_steps)
    argv = ["train", "--data", models["data"], "--out", str(runs)]
    with pytest.raises(UserError, match="step pfid failed .* run the same command again to continue it"):
        bench.main(argv)
    assert json.loads((runs / ".partial-pfid").read_text())[0] > 0  # the failed attempt's time is kept
    assert bench.main(argv) == 0  # the three finished steps are skipped, pfid starts again
    log = json.loads((runs / "train-log.json").read_text())
    assert list(log) == ["pvd", "sds", "pfid"] and all(v["seconds"] > 0 for v in log.values())
    assert len(log["pfid"]["attempts"]) == 2 and log["pfid"]["seconds"] == pytest.approx(sum(log["pfid"]["attempts"]))
    assert not (runs / ".partial-pfid").exists()
    assert all((runs / f".done-{name}").is_file() and (runs / name).is_dir() for name in log)
    out = capsys.readouterr().out
    assert "python bench.py --data" in out and "== pfid (starting again)" in out
    assert bench.main(argv) == 0
    assert capsys.readouterr().out.count("skipped") == 3
    (runs / ".done-sds").unlink()  # started, not finished: it resumes from its checkpoint
    assert bench.main(argv) == 0
    assert "== sds (resuming)" in capsys.readouterr().out
    calls = (runs / "calls.txt").read_text().splitlines()
    assert [c.split()[0].rsplit("/", 1)[-1] for c in calls] == ["pvd", "sds", "pfid", "pfid", "sds"]
    assert calls[-1].endswith("resume=true") and not any(c.endswith("resume=true") for c in calls[:-1])


def test_train_mode_resumes_a_real_training_run(models, tmp_path, capsys):
    """The PVD step's own command, stopped after one step and continued by ``resume=true``."""
    small = ["model=tiny", "data.num_points=128", "batch_size=4", "val_every=0", "shape_points=16", "max_steps=1"]
    cli = bench.build_train_parser().parse_args(["--data", models["data"], "--out", str(tmp_path / "runs"),
                                                 "--pvd-set", *small])
    (single, *_) = training.train_steps(cli)
    assert single.command_now() == single.command  # nothing started yet
    assert train.main(single.command[2:]) == 0
    resumed = single.command_now()
    assert resumed == [*single.command, "resume=true"]
    assert train.main([*resumed[2:], "max_steps=2"]) == 0  # same config, one more step
    assert checkpoint.load(single.folder)["step"] == 2


def test_a_worst_shape_caption_names_every_flag_that_fired():
    from pvd.bench.figures import worst_caption
    record = {"cd": 0.0123, "f1": 0.25, "empty": False, "exploded": True, "no_mesh": True}
    assert worst_caption("test-00001", "chair", record) == "test-00001 (chair)\nCD 0.0123, F@1% 0.25\nexploded"
    assert worst_caption("a", "lamp", {**record, "exploded": False}, ["janus", "floaters"]).endswith("\njanus, floaters")
    assert worst_caption("a", "lamp", {**record, "exploded": False}).count("\n") == 1  # nothing fired: no flag line
