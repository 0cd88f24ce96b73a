"""train.py: runs end to end, resumes bitwise after SIGKILL/SIGTERM, matches itself over 2 processes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from pvd import checkpoint
from pvd.config import apply_overrides, network_config, train_preset
from pvd.data.dataset import ShapeDataset
from pvd.diffusion import build
from pvd.errors import UserError
from pvd.nn import PVDUNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(pipeline_data):
    return pipeline_data


def args(data, run_dir, *extra):
    # 8 train shapes, batch 4: 2 steps per epoch, so 6 steps cross two epoch boundaries.
    return ["tiny", f"data.path={data}", f"run_dir={run_dir}", "max_steps=6", "ckpt_every=2", "keep=10", *extra]


def weights(run_dir, step=None):
    path = Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt" if step else Path(run_dir)
    ckpt = checkpoint.load(path)
    return ckpt["models"][0], ckpt["ema"][0], ckpt["optimizer"]


def assert_bitwise(a, b):
    (ma, ea, oa), (mb, eb, ob) = a, b
    for x, y in ((ma, mb), (ea, eb)):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k
    for k, s in oa["state"].items():
        for name in s:
            assert torch.equal(s[name], ob["state"][k][name]), (k, name)


def cli(*argv, env=None, **kw):
    # The child runs this process's thread count: a run resumed here is compared bitwise with
    # one run here, and reduction order (hence the last bits) can depend on the thread count.
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT,
                            env={**os.environ, **threads, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    assert train.main(args(data, run)) == 0
    return run


def test_run_writes_config_stats_and_keeps_last_k(data, tmp_path):
    run = tmp_path / "run"
    assert train.main(args(data, run, "keep=2", "val_every=3", "log_every=3")) == 0
    names = [p.name for p in checkpoint.list_checkpoints(run)]
    assert names == ["step-00000004.pt", "step-00000006.pt"]
    record = json.loads((run / "config.json").read_text())
    assert record["train"]["optim"]["lr"] == 1e-3 and record["dataset"]["categories"] == ["chair", "car"]
    assert 0.2 < record["dataset"]["view_fill"] < 1.0
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    losses = [s for s in stats if "loss" in s]
    assert [s["step"] for s in losses] == [3, 6] and all({"loss_q0", "loss_q3", "lr"} <= s.keys() for s in losses)
    vals = [s for s in stats if "val_cd" in s]
    assert [s["step"] for s in vals] == [3, 6] and all(s["val_cd"] > 0 and 0 <= s["val_fscore_1pct"] <= 1 for s in vals)
    assert (run / "val" / "step-00000006.png").is_file()


def test_same_seed_same_weights_and_a_new_seed_differs(data, reference, tmp_path):
    assert train.main(args(data, tmp_path / "a")) == 0
    assert_bitwise(weights(reference), weights(tmp_path / "a"))
    assert train.main(args(data, tmp_path / "b", "seed=7")) == 0
    assert not torch.equal(weights(reference)[0]["head_out.weight"], weights(tmp_path / "b")[0]["head_out.weight"])


def test_resume_from_a_middle_checkpoint_is_bitwise(data, reference, tmp_path):
    # A run that has only reached step 2 (as if killed right after that checkpoint) ...
    run = tmp_path / "run"
    assert train.main(args(data, run, "max_steps=2")) == 0
    assert_bitwise(weights(reference, 2), weights(run, 2))
    # ... resumed to the end equals the run that never stopped, optimizer state included.
    assert train.main(args(data, run, "resume=true")) == 0
    assert_bitwise(weights(reference), weights(run))


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise(data, reference, tmp_path):
    run = tmp_path / "run"
    proc = cli(*args(data, run, "max_steps=400", "ckpt_every=3"))
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-00000003.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for path in checkpoint.list_checkpoints(run):  # a kill leaves only complete checkpoints (and hidden partials)
        checkpoint.load(path)
    # Resume to step 6 (the reference's end) from whatever checkpoint survived.
    assert train.main(args(data, run, "resume=true")) == 0
    assert_bitwise(weights(reference), weights(run, 6))


@pytest.mark.slow
def test_sigterm_checkpoints_before_exit_and_resume_is_bitwise(data, tmp_path):
    run = tmp_path / "run"
    proc = cli(*args(data, run, "max_steps=400", "ckpt_every=1000"))
    deadline = time.time() + 120
    while not (run / "stats.jsonl").exists() or len((run / "stats.jsonl").read_text().splitlines()) < 1:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume=true" in out
    stopped_at = checkpoint.load(run)["step"]
    assert 2 <= stopped_at < 400
    # Resumed for two more steps, it equals a run that went there straight.
    end = f"max_steps={stopped_at + 2}"
    assert train.main(args(data, run, "resume=true", end)) == 0
    assert train.main(args(data, tmp_path / "straight", end, "ckpt_every=1000")) == 0
    assert_bitwise(weights(tmp_path / "straight"), weights(run, stopped_at + 2))


@pytest.mark.slow
def test_two_processes_match_one(data, tmp_path):
    # Dropout masks come from each process's own generator, so the comparison runs without it;
    # every other draw is keyed to the sample and is the same in both runs.
    single, run = tmp_path / "single", tmp_path / "ddp"
    assert train.main(args(data, single, "dropout=0.0")) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "train.py"), *args(data, run, "dropout=0.0")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (m1, _, _), (m2, _, _) = weights(single), weights(run)
    # Gradients are averaged across processes instead of over one batch: equal up to rounding.
    # Biases that feed a normalisation (or attention keys) have an exactly zero gradient, and Adam
    # turns their rounding noise into full-size steps: only weight tensors are compared.
    compared = [k for k in m1 if m1[k].ndim >= 2]
    assert len(compared) > 40
    for k in compared:
        torch.testing.assert_close(m2[k], m1[k], rtol=1e-4, atol=2e-5, msg=k)
    early = weights(single, 2)[0]
    moved = sum(float((m1[k] - early[k]).abs().sum()) for k in m1 if m1[k].is_floating_point())
    assert moved > 0  # the comparison is not between untrained networks


@pytest.mark.slow
def test_two_processes_survive_local_batches_with_every_condition_dropped(data, tmp_path):
    # At cond_drop 0.99 most local batches (2 samples per process) drop every condition: the
    # conditioning layers must still take part in the graph, or DDP's reducer stops the run
    # ("Expected to have finished reduction in the prior iteration").
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "train.py"), *args(data, tmp_path / "run", "cond_drop=0.99")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(DDP)" in proc.stdout + proc.stderr
    assert checkpoint.load(tmp_path / "run")["step"] == 6


def test_processes_agree_on_a_stop_every_few_steps_not_every_step(tmp_path, monkeypatch):
    import torch.distributed as dist
    reduced = []

    def all_reduce(tensor, op=None):
        reduced.append(tensor.device.type)

    assert not train.stop_agreed(False, 10, torch.device("cpu")) and train.stop_agreed(True, 3, torch.device("cpu"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "all_reduce", all_reduce)
        every = train.STOP_CHECK_EVERY
        assert every > 1
        stops = [step for step in range(1, 3 * every + 1) if train.stop_agreed(True, step, torch.device("cpu"))]
    finally:
        dist.destroy_process_group()
    assert stops == [every, 2 * every, 3 * every]
    assert reduced == ["cpu"] * 3  # one collective per check, on the given device


def test_init_from_copies_weights_and_refuses_a_different_network(data, reference, tmp_path):
    run = tmp_path / "ft"
    assert train.main(args(data, run, f"init_from={reference}", "max_steps=1", "ckpt_every=1")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["init_from"] == str(reference)
    # One step from the reference's EMA weights: close to them, far from a fresh initialisation.
    ref_ema = weights(reference)[1]["head_out.weight"]
    tuned = weights(run)[0]["head_out.weight"]
    assert (tuned - ref_ema).abs().max() < 0.01
    with pytest.raises(UserError, match="networks differ"):
        train.main(args(data, tmp_path / "x", f"init_from={reference}", "dropout=0.0"))


def test_init_encoder_starts_from_a_stand_alone_regressor_and_records_its_cost(data, tmp_path):
    from pvd import regressor
    reg = tmp_path / "reg"
    assert regressor.main([f"data.path={data}", f"run_dir={reg}", "max_steps=3", "data.num_points=128", "widths=8,16",
                           "dim=16", "blocks=1", "pool_grid=1", "shape_points=8", "batch_size=4"]) == 0
    trained, _ = regressor.load_regressor(reg, torch.device("cpu"))
    run = tmp_path / "run"
    shaped = ["shape_loss=1.0", "shape_points=8", "condition=image"]
    assert train.main(args(data, run, *shaped, f"init_encoder={reg}", "max_steps=1", "optim.lr=1e-7")) == 0
    after = weights(run)[0]
    # One Adam step of lr 1e-7 moves each weight by about 1e-7: the encoder is the regressor's.
    for name, value in trained.state_dict().items():
        assert (after[f"encoder.{name}"] - value).abs().max() < 1e-5, name
    record = json.loads((run / "config.json").read_text())["init_encoder"]
    assert record["path"] == str(reg) and record["train_seconds"] > 0
    with pytest.raises(UserError, match="differs from this run"):
        train.main(args(data, tmp_path / "x", "shape_loss=1.0", "shape_points=16", "condition=image",
                        f"init_encoder={reg}"))
    with pytest.raises(UserError, match="need image conditioning"):
        train.main(args(data, tmp_path / "y", "condition=category", f"init_encoder={reg}"))


def test_encoder_pretrain_trains_stage_0_first_and_leaves_the_run_as_init_encoder_would(data, tmp_path):
    shaped = ["shape_loss=1.0", "shape_points=8", "condition=image", "max_steps=2"]
    first = tmp_path / "first"
    assert train.main(args(data, first, *shaped, "encoder_pretrain=3")) == 0
    regressed = first / "encoder"
    assert checkpoint.list_checkpoints(regressed)
    assert json.loads((first / "config.json").read_text())["init_encoder"]["path"] == str(regressed)
    # The same run from the found regressor: bitwise equal (the pretraining leaves the RNG as it was).
    second = tmp_path / "second"
    assert train.main(args(data, second, *shaped, f"init_encoder={regressed}")) == 0
    assert_bitwise(weights(first), weights(second))
    # and a run without it differs
    third = tmp_path / "third"
    assert train.main(args(data, third, *shaped)) == 0
    assert not torch.equal(weights(first)[0]["encoder.shape_head.2.weight"], weights(third)[0]["encoder.shape_head.2.weight"])


def test_refuses_to_overwrite_a_run_and_to_change_a_resumed_config(data, reference, tmp_path):
    with pytest.raises(UserError, match="already holds a run"):
        train.main(args(data, reference))
    with pytest.raises(UserError, match="cannot change optim"):
        train.main(args(data, reference, "resume=true", "optim.lr=0.1"))
    with pytest.raises(UserError, match="does not exist"):
        train.main(args(data, tmp_path / "nothing", "resume=true"))


def test_bad_input_is_one_line_and_exit_2(data, tmp_path):
    # Each bad input is refused in one line before anything is written ...
    for bad in (["tiny", "optim.lr=fast"], ["tiny", "nosuchkey=1"], ["nosuchpreset"], ["tiny", "data.path=/nonexistent.h5"]):
        with pytest.raises(UserError) as e:
            train.main([*bad, f"run_dir={tmp_path / 'r'}"])
        assert "\n" not in str(e.value), bad
    assert not (tmp_path / "r").exists()
    # ... and the command turns that into one line on stderr and exit 2 (one real process: the
    # wrapper is the same for every message).
    proc = cli("tiny", "optim.lr=fast", f"run_dir={tmp_path / 'r'}")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_learning_rate_schedules():
    cfg = train.train_preset("quickstart")
    total, w = 1000, cfg.optim.warmup_steps
    lrs = [train.learning_rate(cfg, s, 0, total) for s in range(total)]
    assert lrs[0] == pytest.approx(cfg.optim.lr / cfg.optim.warmup_steps)
    assert max(lrs) == pytest.approx(cfg.optim.lr)
    assert lrs[-1] == pytest.approx(cfg.optim.lr * (cfg.optim.min_lr_ratio + (1 - cfg.optim.min_lr_ratio) *
                                                     0.5 * (1 + torch.cos(torch.tensor(torch.pi * (total - 1 - w) / (total - w))).item())))
    paper = train.train_preset("pvd-paper-chair")
    assert train.learning_rate(paper, 5000, 7, 10**6) == pytest.approx(2e-4 * 0.998**7)


def test_cascade_trains_both_stages_and_samples(data, tmp_path):
    import sample
    run = tmp_path / "cascade"
    stages = 'diffusion.cascade.stages=[{"num_points": 64}, {"num_points": 128}]'
    assert train.main(args(data, run, "max_steps=2", stages)) == 0
    ckpt = checkpoint.load(run)
    assert len(ckpt["models"]) == 2 and ckpt["run"]["networks"][1]["condition"]["cascade"] is True
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert "loss_stage0_q0" in stats[-1] and "loss_stage1_q0" in stats[-1]
    image = tmp_path / "view.png"
    from PIL import Image
    from pvd.data.dataset import DatasetConfig, ShapeDataset
    view = ShapeDataset(DatasetConfig(path=str(data), num_points=128), "test", train=False)[0]["image"]
    Image.fromarray(view.permute(1, 2, 0).numpy()).save(image)
    out = tmp_path / "out"
    assert sample.main(["--ckpt", str(run), "--image", str(image), "--category", "car", "--sampler", "ddim", "--steps", "2",
                        "--out", str(out)]) == 0
    import numpy as np
    assert np.load(out / "samples.npy").shape == (1, 128, 3)


def test_shape_input_trains_and_samples_through_the_commands(data, tmp_path):
    import numpy as np
    from PIL import Image

    import sample
    from pvd.data.dataset import DatasetConfig, ShapeDataset
    run = tmp_path / "shape-input"
    assert train.main(args(data, run, "max_steps=2", "shape_loss=1", "shape_points=16", "shape_input=true")) == 0
    ckpt = checkpoint.load(run)
    assert ckpt["run"]["networks"][0]["condition"]["shape_points"] == 16
    assert "null_shape" in ckpt["models"][0]
    view = ShapeDataset(DatasetConfig(path=str(data), num_points=128), "test", train=False)[0]["image"]
    Image.fromarray(view.permute(1, 2, 0).numpy()).save(tmp_path / "view.png")
    out = tmp_path / "out"
    assert sample.main(["--ckpt", str(run), "--image", str(tmp_path / "view.png"), "--category", "car", "--sampler",
                        "ddim", "--steps", "2", "--guidance", "2", "--out", str(out)]) == 0
    assert np.isfinite(np.load(out / "samples.npy")).all()
    with pytest.raises(UserError, match="shape_input .* needs shape_loss"):
        train.main(args(data, tmp_path / "x", "shape_input=true"))


@pytest.mark.parametrize("shape_emd", [0.0, 2.0])
def test_shape_loss_adds_the_encoder_heads_chamfer_distance_and_emd(data, shape_emd):
    # The objective with shape_loss = w is the plain one plus
    # w x (Chamfer(head(image vector), x0) + shape_emd x EMD(head(image vector), first 16 points of x0)).
    from pvd.metrics import chamfer_distance, emd
    cfg = apply_overrides(train_preset("tiny"), [f"data.path={data}", "shape_loss=0.5", "shape_points=16", "dropout=0.0",
                                                 f"shape_emd={shape_emd}"])
    dataset = ShapeDataset(cfg.data, "train")
    stages = build(cfg.diffusion, cfg.data.num_points)
    torch.manual_seed(0)
    net = PVDUNet(network_config(cfg, len(dataset.info.categories)))
    assert net.encoder.shape_head is not None
    plain = dataclasses.replace(cfg, shape_loss=0.0)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(3)])
    with torch.no_grad():
        total, _, _ = train.Objective([net], stages, cfg)(batch, [1, 2, 3])
        base, _, _ = train.Objective([net], stages, plain)(batch, [1, 2, 3])
        vector, _ = net.encoder(batch["image"])
        coarse = net.encoder.predict_shape(vector)
    assert coarse.shape == (3, 16, 3)
    matched = emd(coarse, batch["points"][:, :16], exact=True, workers=1)
    expected = base + 0.5 * (chamfer_distance(coarse, batch["points"]) + shape_emd * matched).mean()
    torch.testing.assert_close(total, expected)


def test_quickstart_preset_trains_and_validates_with_its_own_sampler(data, tmp_path):
    # README command 1's preset as it is (network, hierarchy, sampler, stage 0 pretrained) on the
    # small data: two regressor steps, one step, a validation with the run's sampler (DDIM-10 from
    # t_start), a checkpoint.
    run = tmp_path / "quick"
    assert train.main(["quickstart", f"data.path={data}", f"run_dir={run}", "data.num_points=128", "shape_points=64",
                       "batch_size=2", "max_steps=1", "val_every=1", "val_shapes=1", "encoder_pretrain=2"]) == 0
    assert checkpoint.list_checkpoints(run / "encoder")
    record = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert any(r.get("step") == 1 and "val_cd" in r for r in record), record
    assert checkpoint.load(run)["step"] == 1


def test_shape_head_is_trained_and_checkpointed(data, tmp_path):
    run = tmp_path / "run"
    assert train.main(args(data, run, "shape_loss=1.0", "shape_points=8")) == 0
    first, last = weights(run, 2)[0], weights(run, 6)[0]
    head = [k for k in last if k.startswith("encoder.shape_head.")]
    assert head and last["encoder.shape_head.2.weight"].shape == (24, 16)
    assert all(not torch.equal(first[k], last[k]) for k in head)


def test_hierarchy_trains_on_low_noise_only_and_samples_from_its_start(data, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import sample
    from pvd.data.dataset import DatasetConfig, ShapeDataset
    from pvd.diffusion import cascade
    run = tmp_path / "hierarchy"
    hierarchy = ["shape_loss=1", "shape_points=16", "shape_input=true", "diffusion.hierarchy.t_max=0.4"]
    assert train.main(args(data, run, "max_steps=4", "log_every=4", *hierarchy)) == 0
    (entry,) = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if "loss" in line]
    # 16 draws of t, all in 0..400: none in the upper half of the process, some in the lower
    assert entry["loss_q2"] is None and entry["loss_q3"] is None
    assert entry["loss_q0"] is not None or entry["loss_q1"] is not None
    view = ShapeDataset(DatasetConfig(path=str(data), num_points=128), "test", train=False)[0]["image"]
    Image.fromarray(view.permute(1, 2, 0).numpy()).save(tmp_path / "view.png")
    starts, real_start_cloud = [], cascade.start_cloud
    monkeypatch.setattr(cascade, "start_cloud",
                        lambda d, c, n, t, g: starts.append((tuple(c.shape), n, t)) or real_start_cloud(d, c, n, t, g))
    common = ["--ckpt", str(run), "--image", str(tmp_path / "view.png"), "--category", "car", "--sampler", "ddim",
              "--steps", "2"]
    assert sample.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert sample.main([*common, "--t-start", "0.2", "--out", str(tmp_path / "b")]) == 0
    # the shape head's 16 points, upsampled to the run's 128, noised to t_max, or to the start given
    assert starts == [((1, 16, 3), 128, round(0.4 * 999)), ((1, 16, 3), 128, round(0.2 * 999))]
    assert np.isfinite(np.load(tmp_path / "b" / "samples.npy")).all()
    with pytest.raises(UserError, match="t_start must lie"):
        sample.main([*common, "--t-start", "0.6", "--out", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()
    with pytest.raises(UserError, match="needs shape_loss > 0 and shape_input"):
        train.main(args(data, tmp_path / "x", "diffusion.hierarchy.t_max=0.4"))


def test_gradient_clipping_is_per_network(data, tmp_path, monkeypatch):
    clipped, real = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, norm: clipped.append(list(params)) or real(clipped[-1], norm))
    stages = 'diffusion.cascade.stages=[{"num_points": 64}, {"num_points": 128}]'
    assert train.main(args(data, tmp_path / "run", "max_steps=1", "optim.grad_clip=1.0", stages)) == 0
    _, _, nets = checkpoint.load_run(str(tmp_path / "run"), torch.device("cpu"), True)
    # one call per stage's network, each with exactly that network's parameters
    assert sorted(sum(p.numel() for p in params) for params in clipped) == \
        sorted(sum(p.numel() for p in net.parameters()) for net in nets)
