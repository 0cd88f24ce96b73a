"""pvd.regressor: the stand-alone encoder behind the independent retrieval and regressor rows."""

import dataclasses
import json

import pytest
import torch

from pvd import regressor
from pvd.config import train_preset
from pvd.errors import UserError
from pvd.metrics import chamfer_distance
from pvd.nn.unet import preset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.num_points=128", "widths=8,16", "dim=16", "blocks=1", "shape_points=16", "batch_size=4", "lr=3e-3"]


def test_default_encoder_is_the_quickstarts():
    quick = train_preset("quickstart")
    expected = dataclasses.replace(preset(quick.model).encoder, shape_points=quick.shape_points)
    assert regressor.RegressorConfig().encoder() == expected


def test_trains_loads_and_regresses_closer_than_at_the_start(pipeline_data, tmp_path):
    from pvd.data.dataset import DatasetConfig, ShapeDataset
    run = tmp_path / "reg"
    assert regressor.main([f"data.path={pipeline_data}", f"run_dir={run}", "max_steps=60", "ema_decay=0.5", *TINY]) == 0
    encoder, record = regressor.load_regressor(run, torch.device("cpu"))
    assert record["categories"] and record["normalization"]["normalization"] == "pointflow"
    data = ShapeDataset(DatasetConfig(path=str(pipeline_data), num_points=128), "train", train=False)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    torch.manual_seed(0)
    untrained = regressor.ImageEncoder(regressor.RegressorConfig(widths=(8, 16), dim=16, blocks=1, shape_points=16).encoder())
    with torch.no_grad():
        after = chamfer_distance(encoder.predict_shape(encoder(batch["image"])[0]), batch["points"]).mean()
        before = chamfer_distance(untrained.predict_shape(untrained(batch["image"])[0]), batch["points"]).mean()
    assert after < 0.5 * before, (float(after), float(before))  # 60 steps on 8 training shapes
    with pytest.raises(UserError, match="already holds"):
        regressor.main([f"data.path={pipeline_data}", f"run_dir={run}", "max_steps=1", *TINY])


def test_bad_input_is_a_user_error(pipeline_data, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        regressor.main([f"data.path={tmp_path / 'none.h5'}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(UserError, match="at least 1"):
        regressor.main([f"data.path={pipeline_data}", f"run_dir={tmp_path / 'r'}", "shape_points=0"])
    from pvd import checkpoint
    checkpoint.save(tmp_path / "other", 1, {"run": "{}"}, keep=1)
    with pytest.raises(UserError, match="not a stand-alone regressor"):
        regressor.load_regressor(tmp_path / "other", torch.device("cpu"))


def test_records_from_before_pool_grid_load_as_mean_pooled(tmp_path):
    from pvd import checkpoint
    from pvd.config import to_dict
    cfg = regressor.RegressorConfig(widths=(8, 16), dim=16, blocks=1, shape_points=16, pool_grid=1)
    old = to_dict(cfg)
    del old["pool_grid"], old["emd"]
    encoder = regressor.ImageEncoder(cfg.encoder())
    checkpoint.save(tmp_path / "old", 1, {"run": json.dumps({regressor.RECORD_KEY: old}), "encoder": encoder.state_dict()},
                    keep=1)
    loaded, _ = regressor.load_regressor(tmp_path / "old", torch.device("cpu"))
    assert loaded.config.pool_grid == 1
