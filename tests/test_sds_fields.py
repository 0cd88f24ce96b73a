"""The representations behind lifting (pvd.sds.fields): the coordinate network and the splatted
Gaussians against naive references and finite differences, depth-derived normals on a plane,
and each representation fitting a reference view through the same loop."""

import math

import numpy as np
import pytest
import torch

from pvd.data.cameras import orbit_extrinsics
from pvd.sds import distill as D
from pvd.sds import fields, volume
from pvd.sds.fields import GaussianPoints, NerfConfig, NerfField, PointsConfig, Representation
from pvd.sds.volume import FieldConfig, VoxelField

CFG = FieldConfig(resolution=12, bound=0.55)


@pytest.mark.parametrize("encoding", ["grid", "frequency"])
def test_a_fresh_network_is_the_voxel_fields_blob(encoding):
    nerf, voxel = NerfField(CFG, NerfConfig(encoding=encoding, levels=(4, 8))), VoxelField(CFG)
    nerf.init_blob(0.3, 3.0)
    voxel.init_blob(0.3, 3.0)
    torch.testing.assert_close(nerf.opacity_grid(), voxel.opacity_grid().detach(), atol=1e-6, rtol=1e-5)
    assert voxel.opacity_grid()[6, 6, 6] > 0.5 and voxel.opacity_grid()[0, 0, 0] < 0.01
    # the blob's normals point away from the centre
    p = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)), dim=-1) * 0.15
    _, _, n = nerf.query(p, normals=True)
    assert ((n * torch.nn.functional.normalize(p, dim=-1)).sum(-1) > 0.999).all()


@pytest.mark.parametrize("encoding", ["grid", "frequency"])
def test_network_normals_have_second_order_gradients(encoding):
    torch.manual_seed(0)
    nerf = NerfField(CFG, NerfConfig(encoding=encoding, levels=(3, 5), hidden=8, layers=1, frequencies=2)).double()
    with torch.no_grad():
        for q in nerf.parameters():
            q.add_(torch.randn_like(q) * 0.3)
    points = (torch.rand(4, 3, dtype=torch.float64) - 0.5) * 0.8
    weight = nerf.mlp[0].weight

    def through_weight(w):
        del nerf.mlp[0].weight
        nerf.mlp[0].weight = w
        return nerf.query(points, normals=True)[2]

    assert torch.autograd.gradcheck(through_weight, (weight.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5)


# ---- splatting ------------------------------------------------------------------------------

def naive_splat(g: GaussianPoints, k: np.ndarray, e: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, per Gaussian in depth order: the compositing written out with loops (a Gaussian
    reaches the pixels within ``cutoff`` deviations of its centre)."""
    cutoff = g.points.cutoff
    centre = g.centre.detach().double().numpy()
    scale = np.exp(g.log_scale.detach().double().numpy())
    opacity = 1 / (1 + np.exp(-g.opacity_logit.detach().double().numpy()))
    color = 1 / (1 + np.exp(-g.color_logit.detach().double().numpy()))
    cam = centre @ e[:3, :3].T + e[:3, 3]
    rgb, alpha = np.ones((h, w, 3)), np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            t, acc, c = 1.0, 0.0, np.zeros(3)
            for n in np.argsort(cam[:, 2]):
                x, y, z = cam[n]
                if z <= 0.05:
                    continue
                u, v, s = k[0, 0] * x / z + k[0, 2], k[1, 1] * y / z + k[1, 2], scale[n] * k[0, 0] / z
                d2 = (j + 0.5 - u) ** 2 + (i + 0.5 - v) ** 2
                if d2 >= (cutoff * s) ** 2:
                    continue
                a = min(opacity[n] * math.exp(-d2 / (2 * s * s)), 0.99)
                c += t * a * color[n]
                acc += t * a
                t *= 1 - a
            rgb[i, j] = c + (1 - acc)
            alpha[i, j] = acc
    return rgb, alpha


def random_points(count: int = 5, seed: int = 0, **options) -> GaussianPoints:
    g = GaussianPoints(CFG, PointsConfig(count=count, scale=0.1, **options)).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        g.centre.copy_((torch.rand(count, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.6)
        g.opacity_logit.copy_(torch.randn(count, generator=gen, dtype=torch.float64))
        g.color_logit.copy_(torch.randn(count, 3, generator=gen, dtype=torch.float64))
        g.log_scale.add_(torch.randn(count, generator=gen, dtype=torch.float64) * 0.3)
    return g


@pytest.mark.parametrize("tile,cutoff", [(8, 4.0), (2, 2.0), (3, 1.0), (1, 50.0)])
def test_splatting_matches_the_naive_reference(tile, cutoff):
    """Tiles that divide the image or not (6 = 2 x 3, 3 x 2), a reach of 1 to 50 deviations: the
    same pixels as the loops, to rounding."""
    g = random_points(count=12, tile=tile, cutoff=cutoff)
    k = np.array([[7.0, 0, 3.5], [0, 7.0, 3.0], [0, 0, 1]])
    e = orbit_extrinsics(40.0, 20.0, 1.5)
    out = g.render(torch.from_numpy(k)[None], torch.from_numpy(e)[None], 6, 7)
    rgb, alpha = naive_splat(g, k, e, 6, 7)
    np.testing.assert_allclose(out["rgb"][0].permute(1, 2, 0).detach().numpy(), rgb, atol=1e-10)
    np.testing.assert_allclose(out["alpha"][0, 0].detach().numpy(), alpha, atol=1e-10)
    assert alpha.max() > 0.3  # the view sees the points


def test_tiles_cost_less_than_every_pixel_seeing_every_gaussian():
    """Small Gaussians spread over a 64 px view: the largest tile holds a fraction of them."""
    from pvd.sds.fields import splat_tiles

    gen = torch.Generator().manual_seed(0)
    n = 400
    u, v = torch.rand(1, n, generator=gen) * 64, torch.rand(1, n, generator=gen) * 64
    sigma = torch.full((1, n), 0.8)
    seen = []
    original = torch.Tensor.topk

    def spy(self, k, *args, **kwargs):
        seen.append(k)
        return original(self, k, *args, **kwargs)

    torch.Tensor.topk = spy
    try:
        rgb, alpha, _ = splat_tiles(u, v, sigma, torch.full((1, n), 0.5), torch.rand(1, n, 3, generator=gen),
                                    torch.rand(1, n, generator=gen), torch.ones(1, n, dtype=torch.bool), 64, 64, 8, 4.0, 1.0)
    finally:
        torch.Tensor.topk = original
    assert rgb.shape == (1, 3, 64, 64) and alpha.shape == (1, 64, 64)
    assert seen and seen[0] < n / 4  # reach 3.2 px: a tile of 8 sees its own ~6 and its neighbours' edges


def test_splatting_gradients_match_finite_differences():
    # a reach of 50 deviations: no pixel sits on the cutoff, where the image steps by exp(-cutoff^2 / 2)
    g = random_points(count=3, seed=1, tile=2, cutoff=50.0)
    k = torch.tensor([[[5.0, 0, 2.5], [0, 5.0, 2.5], [0, 0, 1]]], dtype=torch.float64)
    e = torch.from_numpy(orbit_extrinsics(10.0, 25.0, 1.4))[None]
    names = ("centre", "log_scale", "opacity_logit", "color_logit")
    start = [getattr(g, n).detach().clone().requires_grad_() for n in names]

    def loss(*params):
        for n, p in zip(names, params):
            if n in g._parameters:
                delattr(g, n)
            setattr(g, n, p)
        out = g.render(k, e, 5, 5, normals=True)
        return out["rgb"].sum() + out["alpha"].square().sum() + volume.normal_smoothness(out["normal"], out["alpha"])

    assert torch.autograd.gradcheck(loss, tuple(start), eps=1e-6, atol=1e-5)


def test_normals_from_depth_of_a_tilted_plane():
    # the plane z_cam = 2 + 0.5 x_cam, seen by a camera: its normal in camera coordinates is
    # (0.5, 0, -1) normalised (towards the camera), in world coordinates R^T of that
    k = torch.tensor([[[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]], dtype=torch.float64)
    e = torch.from_numpy(orbit_extrinsics(30.0, 20.0, 2.0))[None]
    cols = torch.arange(8, dtype=torch.float64) + 0.5
    xn = (cols - 4) / 8  # x_cam / z_cam per column
    depth = (2 / (1 - 0.5 * xn)).expand(8, 8)[None]
    n = fields.normals_from_depth(depth, k, e)
    expected = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, -1.0], dtype=torch.float64), dim=0) @ e[0, :3, :3]
    torch.testing.assert_close(n[0].permute(1, 2, 0).reshape(-1, 3), expected.expand(64, 3), atol=1e-9, rtol=0)


def test_point_opacity_grid_is_the_compositing_at_each_cell():
    g = random_points(count=4, seed=2).float()
    grid = g.opacity_grid()
    centres = volume.cell_centres(CFG.resolution, CFG.bound).view(-1, 3)
    i = 777
    a = torch.sigmoid(g.opacity_logit) * torch.exp(-0.5 * (centres[i] - g.centre).square().sum(-1) / g.log_scale.exp() ** 2)
    expected = 1 - torch.prod(1 - a.clamp(max=0.99))
    assert grid.view(-1)[i].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert grid.shape == (12, 12, 12) and 0 <= grid.min() and grid.max() <= 1


# ---- one loop, every representation ---------------------------------------------------------

@pytest.mark.parametrize("kind", fields.REPRESENTATIONS)
def test_every_representation_fits_a_reference_view(kind):
    from test_sds_distill import K16, SIZE, box_field, render_rgba, small_config
    ref = D.Camera(30.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(box_field(), ref, SIZE)
    rep = Representation(kind=kind, nerf=NerfConfig(levels=(8, 16), hidden=32), points=PointsConfig(count=512))
    cfg = small_config(sds_weight=0.0, iterations=80, representation=rep, lr=0.05 if kind == "voxel" else 0.01,
                       orientation_weight=0.1, normal_smooth_weight=0.1)
    result = D.distill(None, image, ref, cfg)
    rendered = D.render_view(result.field, ref, cfg)
    iou = D._mask_iou(rendered[..., 3] > 0.5, image[..., 3] > 127)
    assert iou > 0.8, (kind, iou)
    assert result.points is not None and result.points.shape == (512, 3)


def test_point_centres_take_their_own_step():
    # Adam's first step moves every parameter with a gradient by its group's lr exactly (m/sqrt(v) = +-1)
    from test_sds_distill import K16, SIZE, box_field, render_rgba, small_config
    ref = D.Camera(30.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(box_field(), ref, SIZE)
    start = GaussianPoints(FieldConfig(resolution=20), PointsConfig(count=256))
    start.init_blob(0.3, 3.0)
    for centre_lr, expected in ((1e-3, 1e-3), (None, 0.05)):
        rep = Representation(kind="points", points=PointsConfig(count=256, centre_lr=centre_lr))
        field = D.distill(None, image, ref, small_config(sds_weight=0.0, iterations=1, lr=0.05, representation=rep)).field
        moved = (field.centre - start.centre).abs()
        assert moved.max().item() == pytest.approx(expected, rel=1e-3), centre_lr
        assert (field.log_scale - start.log_scale).abs().max().item() == pytest.approx(0.05, rel=1e-3)
    points = GaussianPoints(FieldConfig(), PointsConfig(centre_lr=0.01))
    grouped = [id(p) for g in points.param_groups(0.05) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in points.parameters())  # every parameter, once
    with pytest.raises(ValueError, match="centre_lr"):
        PointsConfig(centre_lr=0.0)


def test_representation_options_are_checked():
    with pytest.raises(ValueError, match="representation must be one of"):
        Representation(kind="mesh")
    with pytest.raises(ValueError, match="nerf.encoding"):
        NerfConfig(encoding="hash")
    with pytest.raises(ValueError, match="tv_weight"):
        D.distill(None, np.zeros((16, 16, 4), np.uint8), D.Camera(0, 25, 1.4, ((8, 0, 8), (0, 8, 8), (0, 0, 1)), 16),
                  D.DistillConfig(iterations=1, sds_weight=0.0, tv_weight=1.0, representation=Representation(kind="nerf")))


@pytest.mark.parametrize("kind", fields.REPRESENTATIONS)
def test_every_representation_starts_from_an_occupancy_grid(kind):
    # an off-centre slab: opaque where it is set, the faint fog elsewhere
    occ = torch.zeros(12, 12, 12, dtype=torch.bool)
    occ[2:6, 3:9, 4:7] = True
    f = fields.make_field(CFG, Representation(kind=kind, points=PointsConfig(count=400, scale=0.02, init_opacity=0.9)))
    f.init_occupancy(occ, 3.0)
    if kind == "points":  # centres inside the set cells, spread over all of them
        cell = ((f.centre.detach() + 0.55) / (1.1 / 12)).floor().long()
        assert occ[cell[:, 0], cell[:, 1], cell[:, 2]].all()
        assert len({tuple(c) for c in cell.tolist()}) > 0.7 * int(occ.sum())
        return
    opacity = f.opacity_grid().detach()
    assert opacity[occ].min() > 0.9 and opacity[~occ].max() < 0.05, (opacity[occ].min(), opacity[~occ].max())
    with pytest.raises(ValueError, match="occupancy must be"):
        f.init_occupancy(torch.zeros(8, 8, 8, dtype=torch.bool), 3.0)


def test_a_network_started_from_occupancy_returns_to_the_blob_on_init_blob():
    nerf, voxel = NerfField(CFG, NerfConfig(levels=(4, 8))), VoxelField(CFG)
    nerf.init_occupancy(torch.ones(12, 12, 12, dtype=torch.bool), 3.0)
    nerf.init_blob(0.3, 3.0)
    voxel.init_blob(0.3, 3.0)
    torch.testing.assert_close(nerf.opacity_grid(), voxel.opacity_grid().detach(), atol=1e-6, rtol=1e-5)


# ---- the network's empty-space skipping ---------------------------------------------------

def test_occupancy_grid_marks_opaque_cells_and_their_neighbours():
    occ = torch.zeros(12, 12, 12, dtype=torch.bool)
    occ[2:6, 3:9, 4:7] = True
    nerf = NerfField(CFG, NerfConfig(levels=(4, 8), occupancy_every=5, occupancy_threshold=0.05))
    nerf.init_occupancy(occ, 3.0)  # fog (opacity 0.0067) elsewhere: below the threshold
    nerf.refresh_occupancy(3)
    assert nerf.occupancy is None  # only every 5th iteration
    nerf.refresh_occupancy(10)
    dilated = torch.zeros_like(occ)
    dilated[1:7, 2:10, 3:8] = True
    assert torch.equal(nerf.occupancy, dilated)
    # a point is looked up in the cell that holds it (naive: nearest cell centre)
    points = (torch.rand(500, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.55
    centres = volume.cell_centres(12, 0.55).view(-1, 3)
    nearest = torch.cdist(points, centres).argmin(-1)
    assert torch.equal(nerf.occupied(points), dilated.view(-1)[nearest])


def test_skipping_renders_the_field_with_empty_cells_zeroed():
    torch.manual_seed(0)
    nerf = NerfField(CFG, NerfConfig(levels=(4, 8)))
    nerf.init_blob(0.3, 3.0)
    with torch.no_grad():
        for q in nerf.mlp.parameters():
            q.add_(torch.randn_like(q) * 0.1)
    k = torch.tensor([[[20.0, 0, 8], [0, 20, 8], [0, 0, 1]]])
    e = torch.from_numpy(orbit_extrinsics(30.0, 25.0, 1.4)).float()[None]
    full = nerf.render(k, e, 16, 16, num_samples=24, normals=True)
    nerf.occupancy = torch.ones(12, 12, 12, dtype=torch.bool)
    for key, value in nerf.render(k, e, 16, 16, num_samples=24, normals=True).items():
        torch.testing.assert_close(value, full[key], atol=1e-6, rtol=1e-5)
    # half the cube marked: the same as a field whose density is zero in the other half
    nerf.occupancy[:, :, 6:] = False
    skipped = nerf.render(k, e, 16, 16, num_samples=24, normals=True)
    query, occupied = nerf.query, nerf.occupied
    nerf.occupied = lambda p: None

    def zeroed(p, normals=False):
        out = query(p, normals=normals)
        return (torch.where(occupied(p), out[0], 0.0), *out[1:])

    nerf.query = zeroed
    reference = nerf.render(k, e, 16, 16, num_samples=24, normals=True)
    assert (skipped["alpha"] - full["alpha"]).abs().max() > 0.05  # the test can tell them apart
    for key, value in skipped.items():
        torch.testing.assert_close(value, reference[key], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="occupancy_every"):
        NerfConfig(occupancy_every=-1)
