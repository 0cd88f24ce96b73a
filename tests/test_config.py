"""Typed configs: key=value overrides, JSON round trips, presets, and checkpoints that refuse code."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pvd import checkpoint
from pvd.config import PRESETS, TrainConfig, apply_overrides, check, from_dict, network_config, to_dict, train_preset
from pvd.diffusion import CascadeConfig
from pvd.errors import UserError
from pvd.nn import PVDUNet
from pvd.nn.unet import PRESETS as NETWORKS
from pvd.nn.unet import UNetConfig, preset


def test_overrides_parse_each_type():
    cfg = apply_overrides(train_preset("tiny"), [
        "optim.lr=5e-4", "batch_size=8", "amp=false", "data.categories=chair,car", "optim.betas=0.8,0.99",
        "optim.grad_clip=none", "optim.ema_decay=0.5", "init_from=runs/x", "diffusion.sampling_steps=20",
    ])
    assert cfg.optim.lr == 5e-4 and cfg.batch_size == 8 and cfg.amp is False
    assert cfg.data.categories == ["chair", "car"] and cfg.optim.betas == (0.8, 0.99)
    assert cfg.optim.grad_clip is None and cfg.optim.ema_decay == 0.5 and cfg.init_from == "runs/x"
    assert cfg.diffusion.sampling_steps == 20


def test_nested_config_is_created_and_json_lists_are_accepted():
    cfg = apply_overrides(train_preset("tiny"), ["diffusion.cascade=default"])
    assert isinstance(cfg.diffusion.cascade, CascadeConfig)
    cfg = apply_overrides(train_preset("tiny"), ["diffusion.cascade.ref_points=1024"])
    assert cfg.diffusion.cascade.ref_points == 1024
    cfg = apply_overrides(train_preset("tiny"), ['diffusion.cascade.stages=[{"num_points": 64}, {"num_points": 128}]'])
    assert [s.num_points for s in cfg.diffusion.cascade.stages] == [64, 128]


@pytest.mark.parametrize("bad, message", [
    ("nosuch=1", "unknown config key"), ("optim.nosuch=1", "unknown config key"), ("lr", "key=value"),
    ("batch_size=1.5", "integer"), ("optim.lr=fast", "number"), ("amp=maybe", "true or false"),
    ("optim.betas=0.9", "2 comma-separated"), ("optim.lr=none", "number"), ("optim.lr.x=1", "unknown config key"),
])
def test_bad_overrides_are_rejected(bad, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(train_preset("tiny"), [bad])


@pytest.mark.parametrize("bad", ["optim.name=sgd", "optim.schedule=step", "model=huge", "condition=text", "cond_drop=1",
                                 "batch_size=0", "optim.ema_decay=1", "model=pvd-paper",
                                 "shape_loss=-1", "shape_points=0"])
def test_check_rejects_inconsistent_settings(bad):
    cfg = apply_overrides(train_preset("tiny"), [bad])
    with pytest.raises(UserError):
        check(cfg)


@pytest.mark.parametrize("name", list(PRESETS))
def test_train_presets_round_trip_through_json(name):
    cfg = train_preset(name)
    check(cfg)
    text = json.dumps(to_dict(cfg))
    again = from_dict(TrainConfig, json.loads(text))
    assert again == cfg


@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_presets_round_trip_and_rebuild_the_same_network(name):
    cfg = preset(name)
    again = from_dict(UNetConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    if name in ("tiny", "cpu-512", "cpu-2048"):
        torch.manual_seed(0)
        a = PVDUNet(cfg).state_dict()
        torch.manual_seed(0)
        b = PVDUNet(again).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_from_dict_rejects_unknown_and_mistyped_keys():
    data = to_dict(train_preset("tiny"))
    with pytest.raises(UserError, match="unknown config key optim.nosuch"):
        from_dict(TrainConfig, {**data, "optim": {**data["optim"], "nosuch": 1}})
    with pytest.raises(UserError, match="batch_size must be an integer"):
        from_dict(TrainConfig, {**data, "batch_size": "16"})


def test_network_config_follows_the_condition():
    cfg = train_preset("tiny")
    both = network_config(cfg, 3)
    assert both.condition.num_categories == 3 and both.condition.image_dim > 0 and both.encoder is not None
    image = network_config(apply_overrides(train_preset("tiny"), ["condition=image"]), 3)
    assert image.condition.num_categories == 0 and image.encoder is not None
    category = network_config(apply_overrides(train_preset("tiny"), ["condition=category"]), 3)
    assert category.encoder is None and category.condition.image_dim == 0 and category.condition.cross_attention_levels == 0
    none = network_config(apply_overrides(train_preset("tiny"), ["condition=none"]), 3)
    assert none.condition is None and none.encoder is None
    stage = network_config(apply_overrides(train_preset("tiny"), ["condition=none"]), 3, cascade_stage=True)
    assert stage.condition.cascade and stage.condition.image_dim == 0
    assert network_config(apply_overrides(train_preset("tiny"), ["dropout=0.0"]), 3).dropout == 0.0
    assert both.encoder.shape_points == 0  # no shape head without its loss
    shaped = network_config(apply_overrides(train_preset("tiny"), ["shape_loss=1", "shape_points=32"]), 3)
    assert shaped.encoder.shape_points == 32


def test_shape_loss_needs_image_conditioning():
    with pytest.raises(UserError, match="shape_loss"):
        check(apply_overrides(train_preset("tiny"), ["shape_loss=1", "condition=category"]))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_crafted_to_run_code_does_not_run_it(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    evil = folder / "step-00000001.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "step": 1, "run": "{}",
                "models": [_RunsCode(marker)]}, evil)
    # The payload is live: an unrestricted load would run it.
    with pytest.raises(UserError, match="refused to load"):
        checkpoint.load(tmp_path / "run")
    assert not marker.exists()
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_checkpoint_keeps_the_last_k_and_rejects_foreign_files(tmp_path):
    for step in (1, 2, 3, 4):
        checkpoint.save(tmp_path, step, {"run": "{}", "models": [{"w": torch.full((2,), float(step))}]}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000003.pt", "step-00000004.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert checkpoint.load(tmp_path)["models"][0]["w"][0] == 4
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="not a pvd checkpoint"):
        checkpoint.load(other)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "garbage.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing")


def test_quickstart_is_the_recommended_model_cut_short():
    quick, full = to_dict(train_preset("quickstart")), to_dict(train_preset("image-2048"))
    differ = {k for k in full if quick[k] != full[k]}
    assert differ == {"max_steps", "run_dir", "optim"}
    assert {k for k in full["optim"] if quick["optim"][k] != full["optim"][k]} == {"ema_decay"}
    assert quick["max_steps"] < full["max_steps"] and quick["data"]["num_points"] == 2048
    assert full["diffusion"]["hierarchy"] is not None and full["shape_input"]


def test_ddim_steps_must_fit_the_hierarchy_start_at_check_time():
    # quickstart samples from t_start = 0.02 T: 21 integer timesteps (0..20) for DDIM to visit.
    quick = train_preset("quickstart")
    check(quick)
    check(apply_overrides(quick, ["diffusion.sampling_steps=21"]))
    for override in ("diffusion.sampling_steps=22", "val_steps=40", "val_sampler=ddim"):  # the last: DDIM's default 50
        with pytest.raises(UserError, match="21 timesteps"):
            check(apply_overrides(quick, [override]))
    check(apply_overrides(quick, ["val_sampler=dpm++2m", "val_steps=40"]))  # fractional timesteps: no such limit
    check(apply_overrides(quick, ["val_steps=40", "val_every=0"]))  # no validation, nothing to sample
