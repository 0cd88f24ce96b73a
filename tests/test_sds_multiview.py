"""Multi-view reconstruction (pvd.sds.multiview): the cameras, the generation orders, the
ground-truth-free consistency score and the fit, with stand-in priors that follow the
``ViewPrior`` protocol."""


import numpy as np
import pytest
import torch

from pvd.sds import distill as D
from pvd.sds import multiview as M
from pvd.sds.volume import VoxelField
from test_sds_distill import K16, SIZE, OraclePrior, box_field, render_rgba, small_config


def test_view_cameras_alternate_around_the_input_nearest_first():
    ref = D.Camera(10.0, 25.0, 1.4, K16, SIZE)
    cams = M.view_cameras(ref, 5)
    assert [c.azimuth - 10.0 for c in cams] == pytest.approx([60, -60, 120, -120, 180])
    assert all(c.elevation == 25.0 and c.distance == 1.4 and c.intrinsics == K16 for c in cams)


def masks_of(field: VoxelField, cameras: list[D.Camera], size: int = SIZE) -> np.ndarray:
    return np.stack([render_rgba(field, c, size)[..., 3] > 127 for c in cameras])


def other_box() -> VoxelField:
    r = 20
    centres = (np.arange(r) + 0.5) * (1.1 / r) - 0.55
    x, y, z = np.meshgrid(centres, centres, centres, indexing="ij")
    return VoxelField.from_occupancy((np.abs(x) < 0.12) & (np.abs(y) < 0.3) & (np.abs(z) < 0.12), 0.55)


def test_hull_consistency_is_high_for_one_shape_and_falls_with_contradicting_views():
    ref = D.Camera(30.0, 25.0, 1.4, K16, SIZE)
    cams = [ref, *M.view_cameras(ref, 5)]
    truth = masks_of(box_field(), cams)
    one = M.hull_consistency(truth, cams)
    assert one > 0.85, one
    assert M.hull_consistency(truth[:1], cams[:1]) > 0.9  # a single view is always consistent with itself
    # replace views, one at a time, by another shape's silhouettes: the score falls each time
    other = masks_of(other_box(), cams)
    scores = [one]
    for j in (2, 4):
        mixed = truth.copy()
        mixed[1:j] = other[1:j]
        scores.append(M.hull_consistency(mixed, cams))
    assert scores[0] > scores[1] + 0.1 and scores[1] > scores[2], scores
    with pytest.raises(ValueError, match="V cameras"):
        M.hull_consistency(truth, cams[:2])


def test_visual_hull_slack_forgives_one_contradicting_view():
    ref = D.Camera(30.0, 25.0, 1.4, K16, SIZE)
    cams = [ref, *M.view_cameras(ref, 5)]
    truth = masks_of(box_field(), cams)
    hull = M.visual_hull(truth, cams, resolution=32)
    assert M.silhouette_agreement(hull, truth, cams).min() > 0.8
    # an empty silhouette in one generated view carves everything strictly; slack 1 ignores it,
    # while the input's silhouette always carves (an empty input leaves nothing)
    broken = truth.copy()
    broken[3] = False
    assert not M.visual_hull(broken, cams, resolution=32).any()
    forgiven = M.visual_hull(broken, cams, resolution=32, slack=1)  # = the strict hull of the other views
    assert np.array_equal(forgiven, M.visual_hull(np.delete(truth, 3, 0), cams[:3] + cams[4:], resolution=32))
    assert (forgiven >= hull).all() and forgiven.any()
    # agreement: the empty view scores 0 against that hull, the others stay high
    agree = M.silhouette_agreement(forgiven, broken, cams)
    assert agree[3] == 0 and np.delete(agree, 3).min() > 0.8, agree
    broken[0] = False
    assert not M.visual_hull(broken, cams, resolution=32, slack=5).any()


def test_a_view_weighted_zero_has_no_influence_on_the_fit():
    truth, ref = box_field(), D.Camera(90.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(truth, ref, SIZE)
    cams = M.view_cameras(ref, 2)
    good = torch.from_numpy(np.stack([render_rgba(truth, c, SIZE) for c in cams])).permute(0, 3, 1, 2).float() / 127.5 - 1
    garbage = good.clone()
    garbage[1] = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = small_config(iterations=20, sds_weight=0.0)
    fits = [D.distill(None, image, ref, cfg, extra_views=(v, cams), extra_weight=[1.0, 0.0]) for v in (good, garbage)]
    torch.testing.assert_close(fits[0].field.density, fits[1].field.density, atol=1e-6, rtol=0)
    weighted = D.distill(None, image, ref, cfg, extra_views=(garbage, cams), extra_weight=[1.0, 1.0])
    assert (weighted.field.density - fits[0].field.density).abs().max() > 1e-2


class RecordingPrior(OraclePrior):
    """The oracle, recording which camera each call conditions on."""

    def __init__(self, *args):
        super().__init__(*args)
        self.sources: list[tuple[float, ...]] = []

    def predict_noise(self, x_t, t, input_view, cameras, guidance):
        self.sources.append(tuple(cameras[0, :3].tolist()))
        return super().predict_noise(x_t, t, input_view, cameras, guidance)


@pytest.mark.parametrize("order", M.ORDERS)
def test_generation_orders_condition_on_the_input_or_the_nearest_view(order):
    truth, ref = box_field(), D.Camera(90.0, 25.0, 1.4, K16, SIZE)
    prior = RecordingPrior(truth, ref, SIZE)
    cfg = M.MultiViewConfig(views=4, order=order, steps=2, guidance=1.0)
    views, cams = M.generate_views(prior, render_rgba(truth, ref, SIZE), ref, cfg)
    assert views.shape == (4, 4, SIZE, SIZE) and len(cams) == 4
    # an exact x0 predictor: every generated view is the truth rendered from its camera
    for view, cam in zip(views, cams):
        expected = render_rgba(truth, cam, SIZE)[..., 3] > 127
        assert D._mask_iou(view[3].numpy() > 0, expected) > 0.9
    # sources per call (steps calls per view; the independent order batches all four views)
    sources = [round(s[1]) for s in prior.sources]
    if order == "independent":
        assert sources == [90] * 2
    else:  # +72 and -72 from the input, then +144 from +72 and -144 from -72
        assert sources == [90] * 2 + [90] * 2 + [162] * 2 + [18] * 2


def test_reconstruction_from_oracle_views_recovers_hidden_depth():
    # as the SDS oracle test: one view leaves the box's depth free, generated views pin it down.
    # Views of 32 px (a 16 px silhouette is 0.08 world units per pixel, as coarse as the box's depth
    # error); the input is fitted at 16 px as in the SDS test
    truth, ref = box_field(), D.Camera(90.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(truth, ref, 32)
    gt = D.surface(truth, small_config())[1]
    fit = small_config(iterations=200, sds_weight=0.0, seed=1)
    ref_only = D.distill(None, image, ref, fit, ground_truth=gt, eval_every=200)
    cfg = M.MultiViewConfig(views=4, steps=2, guidance=1.0, view_weight=1.0, fit=fit)
    result = M.reconstruct(OraclePrior(truth, ref, 32), image, ref, cfg, ground_truth=gt, eval_every=200)
    assert result.evaluations == 8 and result.fit.evaluations == 0  # no prior call inside the fit
    assert result.consistency > 0.8 and result.generate_seconds > 0
    # the oracle's views agree with their hull: each keeps nearly the whole view weight
    assert len(result.view_weights) == 4 and min(result.view_weights) > 0.8
    cd_ref, cd_mv = ref_only.history[-1]["cd"], result.fit.history[-1]["cd"]
    assert cd_mv < 0.75 * cd_ref, (cd_mv, cd_ref)  # measured: 0.0061 vs 0.0098


def test_extra_views_are_checked():
    ref = D.Camera(90.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(box_field(), ref, SIZE)
    with pytest.raises(ValueError, match="extra_views"):
        D.distill(None, image, ref, small_config(iterations=1, sds_weight=0.0),
                  extra_views=(torch.zeros(2, 4, 8, 8), [ref]))
    with pytest.raises(ValueError, match="order"):
        M.MultiViewConfig(order="joint")


# ---- the command ----------------------------------------------------------------------------

def test_the_command_reconstructs_from_generated_views(pipeline_data, tmp_path, capsys):
    import json

    from pvd.sds import train_prior
    from pvd.sds.__main__ import main as sds_command
    from in_process import run_main
    from test_sds_prior import tiny_args
    assert train_prior.main(tiny_args(pipeline_data, tmp_path / "prior", "model.camera=absolute",
                                      "model.cross_attention=true")) == 0
    out = tmp_path / "mv"
    code, stdout, err = run_main(sds_command, ["--method", "multiview", "--prior", tmp_path / "prior", "--data", pipeline_data,
                                               "--split", "val", "--num", "1", "--views", "2", "--steps", "2", "--iterations",
                                               "4", "--threads", "1", "--out", out, "--set", "field.resolution=12",
                                               "ref_size=16", "num_samples=12", "num_points=128"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "multiview" and summary["config"]["views"] == 2 and summary["config"]["fit"]["iterations"] == 4
    rec = summary["records"][0]
    assert rec["prior_evaluations"] == 4 and 0 <= rec["view_consistency"] <= 1  # 2 views x 2 DDIM steps
    assert rec["seconds"] >= rec["generate_seconds"] > 0 and rec["janus"] in (True, False)
    assert (out / f"{rec['name']}.views.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--views", "3", "--image", "x.png", "--prior", "p"], "belong to --method multiview"),
    (["--method", "multiview", "--image", "x.png"], "--method multiview needs --prior"),
    (["--method", "multiview", "--views", "0", "--image", "x.png", "--prior", "p"], "views and steps must be at least 1"),
    (["--coarse-from", "d", "--image", "x.png", "--prior", "p"], "belong to --method magic3d"),
])
def test_the_command_rejects_bad_multiview_options_in_one_line(tmp_path, capsys, args, message):
    from pvd.sds.__main__ import main as sds_command
    from in_process import run_main
    code, _, err = run_main(sds_command, [*args, "--out", tmp_path / "o"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_command_runs_magic3d_with_another_representation(pipeline_data, tmp_path, capsys):
    import json

    from pvd.sds import train_prior
    from pvd.sds.__main__ import main as sds_command
    from in_process import run_main
    from test_sds_prior import tiny_args
    assert train_prior.main(tiny_args(pipeline_data, tmp_path / "prior")) == 0
    out = tmp_path / "m3d"
    code, stdout, err = run_main(sds_command, ["--method", "magic3d", "--representation", "nerf", "--prior", tmp_path / "prior",
                                               "--data", pipeline_data, "--split", "val", "--num", "1", "--iterations", "3",
                                               "--threads", "1", "--out", out, "--refine-set", "iterations=2",
                                               "mesh_resolution=8", "--set", "field.resolution=12", "ref_size=16",
                                               "num_samples=12", "num_points=128", "blob_depth=6"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "magic3d" and summary["refine"]["iterations"] == 2
    assert summary["config"]["representation"]["kind"] == "nerf"
    rec = summary["records"][0]
    assert rec["prior_evaluations"] == 5 and "coarse_cd" in rec  # 3 coarse + 2 fine

    # the fine stage started from an SDS run's saved fields: same scores for its coarse stage, its calls counted
    common = ["--representation", "nerf", "--prior", tmp_path / "prior", "--data", pipeline_data, "--split", "val",
              "--num", "1", "--iterations", "3", "--threads", "1", "--set", "field.resolution=12", "ref_size=16",
              "num_samples=12", "num_points=128", "blob_depth=6"]
    assert run_main(sds_command, [*common, "--out", tmp_path / "sds"], capsys)[0] == 0
    sds = json.loads((tmp_path / "sds" / "summary.json").read_text())["records"][0]
    refine = ["--method", "magic3d", "--refine-set", "iterations=2", "mesh_resolution=8", "--coarse-from", tmp_path / "sds"]
    code, _, err = run_main(sds_command, [*common, *refine, "--out", tmp_path / "m3d-reused"], capsys)
    assert code == 0, err
    reused = json.loads((tmp_path / "m3d-reused" / "summary.json").read_text())["records"][0]
    assert reused["prior_evaluations"] == 5 and reused["coarse_seconds"] == sds["seconds"]
    assert reused["coarse_cd"] == pytest.approx(sds["cd"]) and reused["coarse_from"].endswith(f"{sds['name']}.field.pt")
    for extra, message in ((["--seed", "9"], "optimised with other settings (seed differ)"),
                           (["--coarse-from", tmp_path / "nowhere"], "no such file")):
        code, _, err = run_main(sds_command, [*common, *refine, *extra, "--out", tmp_path / "m3d-bad"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
