"""The score-distillation loop (pvd.sds.distill) and its command (python -m pvd.sds).

An oracle prior that renders the true shape from the asked-for camera stands in for a trained
one: with it, SDS must recover geometry that the reference view alone cannot pin down.
"""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from torch import nn
from torch.overrides import TorchFunctionMode

from pvd.data.cameras import R2N2_FOCAL_NDC, intrinsics_from_ndc_focal
from pvd.diffusion.gaussian import GaussianDiffusion
from pvd.diffusion.schedules import make_betas
from pvd.sds import distill as D
from pvd.sds import volume
from pvd.sds.__main__ import main as sds_command
from pvd.sds.volume import FieldConfig, VoxelField
from in_process import run_main  # tests/in_process.py

SIZE = 16
K16 = tuple(map(tuple, intrinsics_from_ndc_focal(R2N2_FOCAL_NDC, SIZE, SIZE).tolist()))


def small_config(**kw) -> D.DistillConfig:
    base = dict(iterations=60, field=FieldConfig(resolution=20), ref_size=SIZE, num_samples=24, num_points=512,
                elevation_range=(20.0, 35.0), distance_range=(1.4, 1.4))
    base.update(kw)
    return D.DistillConfig(**base)


def box_field(resolution: int = 20) -> VoxelField:
    """A solid box, long in x, flat in y, deep in z: its depth is invisible from the front."""
    r = resolution
    centres = (np.arange(r) + 0.5) * (1.1 / r) - 0.55
    x, y, z = np.meshgrid(centres, centres, centres, indexing="ij")
    occ = (np.abs(x) < 0.35) & (np.abs(y) < 0.12) & (np.abs(z) < 0.25)
    return VoxelField.from_occupancy(occ, 0.55, color=(0.8, 0.3, 0.2))


def render_rgba(field: VoxelField, camera: D.Camera, size: int) -> np.ndarray:
    k, e = camera.tensors(size)
    with torch.no_grad():
        out = volume.render(field, k, e, size, size, num_samples=48, background=0.0)
    rgba = torch.cat([out["rgb"] / out["alpha"].clamp(min=1e-6), out["alpha"]], 1)[0].permute(1, 2, 0)
    return (rgba.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def x0_diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("linear", 1000), mean_type="x0")


class OraclePrior:
    """A ``ViewPrior`` whose denoised view is the true field rendered from the wanted camera."""

    def __init__(self, truth: VoxelField, reference: D.Camera, size: int):
        self.truth, self.reference, self.image_size = truth, reference, size
        self.process = x0_diffusion()
        self.alphas_cumprod = self.process.alphas_cumprod

    def predict_noise(self, x_t, t, input_view, cameras, guidance):
        out = []
        for elevation, azimuth, distance in cameras[:, 3:].tolist():  # the wanted camera, in the world frame
            cam = dataclasses.replace(self.reference, elevation=elevation, azimuth=azimuth, distance=distance)
            k, e = cam.tensors(self.image_size)
            with torch.no_grad():
                r = volume.render(self.truth, k, e, self.image_size, self.image_size, num_samples=48)
            out.append(torch.cat([r["rgb"], r["alpha"]], 1) * 2 - 1)
        return self.process.predict_eps(x_t, t, torch.cat(out))


def test_the_stand_in_priors_follow_the_protocol():
    from pvd.sds.view_prior import ViewPrior
    assert isinstance(OraclePrior(box_field(), D.Camera(0.0, 25.0, 1.4, K16, SIZE), SIZE), ViewPrior)
    assert isinstance(DevicePrior(8), ViewPrior)
    assert not isinstance(object(), ViewPrior)


def test_sds_gradient_of_an_x0_model_points_at_its_prediction():
    # eps_hat - eps = alpha / sigma (x - x0_hat) when the model predicts x0_hat (any noise, any t)
    diffusion = x0_diffusion()
    g = torch.Generator().manual_seed(0)
    x, target, noise = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([10, 500, 990])
    x_t = diffusion.q_sample(x, t, noise)
    eps_hat = diffusion.predict_eps(x_t, t, target)
    grad = D.sds_gradient(diffusion, eps_hat, noise, t)
    ab = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    expected = (1 - ab) * ab.sqrt() / (1 - ab).sqrt() * (x - target)
    torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-4)
    clipped = D.sds_gradient(diffusion, eps_hat, noise, t, clip=0.1)
    assert clipped.abs().max() <= 0.1 and torch.equal(clipped, grad.clamp(-0.1, 0.1))


def test_sds_loss_has_the_sds_gradient():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    grad = torch.randn(2, 4, 5, 5)
    D.sds_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / 2)


def test_blob_initialisation_is_a_centred_ball():
    cfg = small_config()
    field = VoxelField(cfg.field)
    field.init_blob(cfg.blob_radius, cfg.blob_depth)
    opacity = field.cell_opacity()
    r = cfg.field.resolution
    assert opacity[r // 2, r // 2, r // 2] > 0.5  # solid centre
    assert opacity[0, 0, 0] < 0.01 and opacity[r // 2, r // 2, 0] < 0.01  # empty outside the ball
    mesh, points = D.surface(field, cfg)
    radius = np.linalg.norm(points, axis=1)
    assert 0.1 < radius.mean() < cfg.blob_radius and radius.std() < 0.05


def test_reference_view_fit_reproduces_the_silhouette():
    truth = box_field()
    ref = D.Camera(30.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(truth, ref, SIZE)
    cfg = small_config(sds_weight=0.0, iterations=80)
    result = D.distill(None, image, ref, cfg)
    rendered = D.render_view(result.field, ref, cfg)
    iou = D._mask_iou(rendered[..., 3] > 0.5, image[..., 3] > 127)
    assert iou > 0.85
    assert result.evaluations == 0 and result.seconds > 0


def test_sds_with_an_oracle_prior_recovers_hidden_depth():
    # Seen from azimuth 90 (looking along -z) one view leaves the box's depth free; the
    # oracle's novel views pin it down, so SDS must beat the reference-only fit.
    truth = box_field()
    ref = D.Camera(90.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(truth, ref, SIZE)
    gt = D.surface(truth, small_config())[1]
    prior = OraclePrior(truth, ref, SIZE)
    common = dict(iterations=200, guidance=1.0, seed=1)
    ref_only = D.distill(None, image, ref, small_config(sds_weight=0.0, **common), ground_truth=gt, eval_every=200)
    with_sds = D.distill(prior, image, ref, small_config(sds_weight=2.0, **common),
                         ground_truth=gt, eval_every=200)
    assert with_sds.evaluations == 200
    cd_ref, cd_sds = ref_only.history[-1]["cd"], with_sds.history[-1]["cd"]
    assert cd_sds < 0.6 * cd_ref, (cd_sds, cd_ref)


def test_failure_report_flags_empty_floaters_and_symmetry():
    cfg = small_config()
    ref = D.Camera(0.0, 25.0, 1.4, K16, SIZE)
    empty = D.failure_report(VoxelField(cfg.field), cfg, ref)
    assert empty["empty"] and empty["components"] == 0 and not empty["floaters"]
    r = cfg.field.resolution
    occ = np.zeros((r, r, r), bool)
    occ[4:12, 4:12, 4:12] = True  # the main part
    occ[16:18, 16:18, 16:18] = True  # a floater: 8 of 520 cells, 1.5%
    two = D.failure_report(VoxelField.from_occupancy(occ, 0.55), cfg, ref)
    assert not two["empty"] and two["components"] == 2
    assert two["floater_fraction"] == pytest.approx(8 / 520, abs=0.01) and not two["floaters"]
    occ[14:19, 14:19, 14:19] = True  # a bigger floater: 125 of 637 cells
    assert D.failure_report(VoxelField.from_occupancy(occ, 0.55), cfg, ref)["floaters"]
    # a ball looks the same from the back; the box seen edge-on from azimuth 0 too
    ball = VoxelField(cfg.field)
    ball.init_blob(cfg.blob_radius, cfg.blob_depth)
    assert D.failure_report(ball, cfg, ref)["silhouette_symmetry"] > 0.9


def test_silhouette_symmetry_mirrors_the_back_view():
    front = np.zeros((4, 4), bool)
    front[:, 0] = True
    assert D.silhouette_symmetry(front, front[:, ::-1]) == 1.0
    assert D.silhouette_symmetry(front, front) == 0.0


class DrawLog(TorchFunctionMode):
    """Records every random draw made under it as (function name, generator, the device the draw
    is made on, whether the caller named that device): a factory's ``device=`` (else the host), or
    the input's device for *_like and in-place draws."""

    FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal}
    LIKE = {torch.rand_like, torch.randn_like, torch.randint_like, torch.bernoulli, torch.multinomial,
            torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.random_, torch.Tensor.bernoulli_}

    def __init__(self):
        super().__init__()
        self.draws: list[tuple[str, torch.Generator | None, torch.device, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES or func in self.LIKE:
            named = kwargs.get("device") is not None or func in self.LIKE
            where = kwargs.get("device") or (args[0].device if func in self.LIKE else "cpu")
            self.draws.append((func.__name__, kwargs.get("generator"), torch.device(where), named))
        return func(*args, **kwargs)


def same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are one device (a generator reports its index, a draw's device= may not)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class DevicePrior(nn.Module):
    """A ``ViewPrior`` that predicts x0 = 0 and records the devices of what it is given."""

    def __init__(self, size: int):
        super().__init__()
        self.image_size = size
        self.process = x0_diffusion()
        self.alphas_cumprod = self.process.alphas_cumprod
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: set[torch.device] = set()

    def predict_noise(self, x_t, t, input_view, cameras, guidance):
        self.seen |= {x_t.device, t.device, input_view.device, cameras.device}
        return self.process.predict_eps(x_t, t, torch.zeros_like(x_t) * self.scale)


def test_sds_draws_on_the_device_with_a_generator_of_that_device(device):
    # A generator feeds draws only on its own device (on CUDA a CPU generator is an error): the
    # cameras and timesteps come from a host stream, the render jitter and the SDS noise from a
    # second stream on the field's device, and the prior gets all its inputs on that device.
    ref = D.Camera(30.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(box_field(), ref, SIZE)
    cfg = small_config(iterations=3, field=FieldConfig(resolution=8), ref_size=8, num_samples=6, num_points=64,
                       novel_views=2)
    prior = DevicePrior(8).to(device)
    with DrawLog() as log:
        result = D.distill(prior, image, ref, cfg, device=device)
    field_device = result.field.density.device
    assert same_device(field_device, device) and result.evaluations == 6
    assert prior.seen and all(same_device(d, device) for d in prior.seen), prior.seen
    assert log.draws and all(g is not None for _, g, _, _ in log.draws)  # every draw seeded
    mismatched = [(name, g.device, where) for name, g, where, _ in log.draws if not same_device(g.device, where)]
    assert not mismatched, mismatched
    on_device = [(name, g) for name, g, where, named in log.draws if named and same_device(where, device)]
    on_host = [g for name, g, where, named in log.draws if not named]
    # per iteration: two renders' jitter and the SDS noise, made where the field lives
    assert sorted(name for name, _ in on_device) == ["rand"] * 6 + ["randn"] * 3, on_device
    assert all(same_device(g.device, device) for _, g in on_device)
    assert on_host and all(g.device.type == "cpu" for g in on_host)  # cameras and timesteps
    # two streams: the device's generator is not the host's (which, on CUDA, could not feed it)
    assert not {id(g) for _, g in on_device} & {id(g) for g in on_host}
    if device.type == "cpu":  # a fixed seed, the same field (CUDA's atomics in grid_sample's backward are not bitwise)
        again = D.distill(DevicePrior(8), image, ref, cfg, device=device)
        assert torch.equal(again.field.density, result.field.density) and torch.equal(again.field.color, result.field.color)


# ---- the command ----------------------------------------------------------------------------

def run_sds(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "pvd.sds", *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


SMALL = ["--set", "field.resolution=16", "ref_size=16", "num_samples=16", "num_points=256"]


@pytest.mark.slow
def test_command_over_a_dataset_writes_every_output_and_skips_finished_shapes(pipeline_data, tmp_path, capsys):
    out = tmp_path / "sds"
    run_sds("--data", pipeline_data, "--split", "val", "--num", "2", "--sds-weight", "0", "--iterations", "5",
            "--strip", "--threads", "1", "--out", out, *SMALL)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shapes"] == 2 and summary["failures"]["empty"] == sum(r["empty"] for r in summary["records"])
    for rec in summary["records"]:
        name = rec["name"]
        assert rec["seconds"] > 0 and rec["peak_memory_mb"] > 0 and rec["iterations"] == 5
        assert (out / f"{name}.png").is_file() and (out / f"{name}.strip.png").is_file()
        assert np.load(out / f"{name}.density.npy").shape == (16, 16, 16)
        if not rec["empty"]:
            assert math.isfinite(rec["cd"])
            cloud = trimesh.load(out / f"{name}.ply")
            assert np.asarray(cloud.vertices).shape == (256, 3)
            assert np.array_equal(np.load(out / f"{name}.npy"), np.asarray(cloud.vertices, dtype=np.float32))
    record = out / "records" / f"{summary['records'][0]['name']}.json"
    before = record.stat().st_mtime_ns
    # The rerun in this process (the real command ran above): finished shapes are skipped.
    code, stdout, err = run_main(sds_command, ["--data", pipeline_data, "--split", "val", "--num", "2", "--sds-weight", "0",
                                               "--iterations", "5", "--out", out, *SMALL], capsys)
    assert code == 0, err
    assert record.stat().st_mtime_ns == before and "wrote 2 shape(s)" in stdout
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))


def test_each_method_starts_from_the_representation_chosen_for_it():
    from pvd.sds.__main__ import build_parser, make_config
    from pvd.sds.methods import magic3d_reuses_sds, method_config

    def kind(*argv):
        return make_config(build_parser().parse_args(["--image", "x.png", *argv])).representation.kind

    assert (kind(), kind("--method", "multiview"), kind("--method", "magic3d")) == ("points", "voxel", "voxel")
    assert kind("--representation", "nerf") == "nerf" and kind("--set", "representation.kind=voxel") == "voxel"
    fit = method_config("multiview", [])
    assert fit.sds_weight == 0 and fit.iterations == 400  # the multi-view fit's own defaults survive
    # Magic3D refines SDS's saved fields only when its coarse stage is that very run
    assert not magic3d_reuses_sds([]) and magic3d_reuses_sds(["representation.kind=voxel", "iterations=5"])
    assert magic3d_reuses_sds(["representation.kind=nerf"])  # any representation named for both


@pytest.mark.parametrize("args, message", [
    ([], "give either --image"),
    (["--image", "missing.png", "--sds-weight", "0"], "no such image file"),
    (["--image", "x.png", "--data", "d.h5"], "give either --image"),
    (["--image", "x.png"], "--prior is needed"),
    (["--data", "missing.h5", "--sds-weight", "0"], "missing.h5"),
    (["--image", "x.png", "--eval-every", "5", "--sds-weight", "0"], "needs --data"),
    (["--image", "x.png", "--sds-weight", "0", "--set", "nonsense=1"], "nonsense"),
    (["--image", "x.png", "--sds-weight", "0", "--threads", "0"], "--threads must be at least 1"),
])
def test_command_rejects_bad_input_in_one_line(tmp_path, capsys, args, message):
    code, _, err = run_main(sds_command, [*args, "--out", tmp_path / "o"], capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "summary.json").exists()


def test_the_real_command_rejects_bad_input_in_one_line(tmp_path):
    proc = run_sds("--image", "missing.png", "--sds-weight", "0", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "no such image file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---- the Janus reference: the truth seen from behind ------------------------------------------

def _job_args(data, **kw):
    import argparse
    return argparse.Namespace(data=str(data), split=kw.get("split", "val"), num=None, view=kw.get("view", 0))


def _front_iou(f, row, job, threshold: int) -> float:
    """IoU of the stored input view's mask (alpha > threshold) with ``_truth_silhouettes``'s front."""
    from pvd.sds.__main__ import _truth_silhouettes
    front, _ = _truth_silhouettes(f, row, job["camera"], f["cameras"]["intrinsics"][row, 0], f["points"][row])
    return D._mask_iou(front, job["image"][..., 3] > threshold)


def test_every_dataset_shape_gets_a_janus_reference_from_its_mesh_or_points(pipeline_data, tmp_path):
    import h5py
    from pvd.sds.__main__ import dataset_jobs
    jobs = dataset_jobs(_job_args(pipeline_data))
    assert jobs and all(0 <= job["gt_silhouette_symmetry"] <= 1 for job in jobs)  # none left without a reference
    # the renderer behind it reproduces the stored views (16 px: a rim of antialiased pixels differs)
    with h5py.File(pipeline_data) as f:
        for job in jobs:
            assert _front_iou(f, job["row"], job, 127) > 0.85, job["name"]
    # a file without meshes (PC15k + R2N2) splats its points instead: 400 points, one pixel each,
    # cover most of a 16 px silhouette (alpha > 0: a point on the rim lands on a partly covered pixel)
    bare = tmp_path / "bare.h5"
    with h5py.File(pipeline_data) as src, h5py.File(bare, "w") as dst:
        for key in src:
            if key != "mesh":
                src.copy(key, dst)
        dst.attrs.update(src.attrs)
    bare_jobs = dataset_jobs(_job_args(bare))
    assert all(0 <= job["gt_silhouette_symmetry"] <= 1 for job in bare_jobs)
    with h5py.File(bare) as f:
        assert "mesh" not in f
        for job in bare_jobs:
            assert _front_iou(f, job["row"], job, 0) > 0.6, job["name"]


def test_the_back_silhouette_is_half_a_turn_round(tmp_path):
    # a box centred on the origin is unchanged by a half turn about the vertical axis, so from
    # behind (azimuth + 180, same elevation) it looks exactly as from the front; an L-shaped
    # solid does not
    import h5py
    from pvd.sds.__main__ import _truth_silhouettes
    box = trimesh.creation.box((0.5, 0.3, 0.4))
    k64 = intrinsics_from_ndc_focal(R2N2_FOCAL_NDC, 64, 64)
    cam = D.Camera(30.0, 25.0, 1.4, tuple(map(tuple, k64.tolist())), 64)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((1, 1, 64, 64, 4), np.uint8))
        f.create_dataset("mesh/vertices", data=np.asarray(box.vertices, np.float32))
        f.create_dataset("mesh/faces", data=np.asarray(box.faces, np.int32))
        f.create_dataset("mesh/vertex_offset", data=np.array([0, len(box.vertices)]))
        f.create_dataset("mesh/face_offset", data=np.array([0, len(box.faces)]))
        front, back = _truth_silhouettes(f, 0, cam, k64, np.zeros((1, 3)))
        # an L-shaped solid (two boxes) does not: its back view mirrors to another silhouette
        ell = trimesh.util.concatenate([box, trimesh.creation.box((0.2, 0.6, 0.2), transform=trimesh.transformations.translation_matrix([0.3, 0.15, 0.2]))])
        del f["mesh"]
        f.create_dataset("mesh/vertices", data=np.asarray(ell.vertices, np.float32))
        f.create_dataset("mesh/faces", data=np.asarray(ell.faces, np.int32))
        f.create_dataset("mesh/vertex_offset", data=np.array([0, len(ell.vertices)]))
        f.create_dataset("mesh/face_offset", data=np.array([0, len(ell.faces)]))
        l_front, l_back = _truth_silhouettes(f, 0, cam, k64, np.zeros((1, 3)))
    assert front.sum() > 200 and D._mask_iou(front, back) > 0.95
    assert D._mask_iou(l_front, l_back) < 0.8
