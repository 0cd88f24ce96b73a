"""Normals of the voxel field and the normal regularisers (pvd.sds.volume): a ball with known
normals, the orientation penalty's definition, the smoothness term on hand-made maps, and
gradients against finite differences."""


import numpy as np
import pytest
import torch

from pvd.sds import volume
from pvd.sds.volume import VoxelField

R, BOUND, RADIUS = 32, 0.55, 0.35


def ball() -> VoxelField:
    c = (np.arange(R) + 0.5) * (2 * BOUND / R) - BOUND
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    cell = 2 * BOUND / R  # solid fractions of a smooth ball rather than a staircase of whole cells
    return VoxelField.from_occupancy(np.clip((RADIUS - np.sqrt(x**2 + y**2 + z**2)) / cell + 0.5, 0, 1), BOUND)


def test_ball_normals_point_outwards():
    field = ball()
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    points = dirs * RADIUS  # on the surface
    with torch.no_grad():
        sigma, rgb, n = field.query(points, normals=True)
        sigma_plain, rgb_plain = field.query(points)
    torch.testing.assert_close(sigma, sigma_plain)  # the extra channels change nothing else
    torch.testing.assert_close(rgb, rgb_plain)
    assert torch.allclose(n.norm(dim=-1), torch.ones(200), atol=1e-5)
    cos = (n * dirs).sum(-1)
    assert cos.mean() > 0.99 and cos.min() > 0.95, (cos.mean(), cos.min())


def test_rendered_normal_map_faces_the_camera_and_the_ball_has_no_back_facing_normals():
    from pvd.data.cameras import orbit_extrinsics
    field = ball()
    k = torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]])
    e = torch.from_numpy(orbit_extrinsics(30.0, 20.0, 1.5)).float()[None]
    with torch.no_grad():
        out = volume.render(field, k, e, 32, 32, num_samples=96, normals=True)
    alpha, normal = out["alpha"][0, 0], out["normal"][0]
    centre = normal[:, 16, 16] / alpha[16, 16]
    eye = torch.from_numpy(np.linalg.inv(e[0].double().numpy())[:3, 3]).float()
    assert torch.dot(centre, eye / eye.norm()) > 0.95  # the centre pixel sees the point facing the eye
    # a solid ball shows only front-facing surface: the penalty is small beside the opacity
    assert out["orientation"].sum() < 0.02 * alpha.sum()
    # the penalty is sum_i w_i max(0, n_i . d)^2: with every normal along the ray it equals alpha
    query = field.query

    def along_the_ray(points, normals=False):
        sigma, rgb, _ = query(points, normals=True)
        return sigma, rgb, torch.nn.functional.normalize(points - torch.from_numpy(
            np.linalg.inv(e[0].double().numpy())[:3, 3]).float(), dim=-1)

    field.query = along_the_ray
    with torch.no_grad():
        toward = volume.render(field, k, e, 32, 32, num_samples=96, normals=True)
    torch.testing.assert_close(toward["orientation"], toward["alpha"], atol=1e-5, rtol=1e-4)


def test_normal_smoothness_hand_computed():
    alpha = torch.ones(1, 1, 2, 3)
    flat = torch.zeros(1, 3, 2, 3)
    flat[:, 2] = 1.0
    assert volume.normal_smoothness(flat, alpha) == 0
    step = flat.clone()
    step[:, :, :, 2] = torch.tensor([1.0, 0, 0])[:, None]  # last column turned 90 degrees: |n - n'|^2 = 2
    # 7 neighbour pairs (4 across, 3 down), 2 of them across the fold
    assert volume.normal_smoothness(step, alpha).item() == pytest.approx(2 * 2 / 7)
    # pairs with an empty pixel do not count
    alpha[..., 2] = 0.0
    assert volume.normal_smoothness(step, alpha).item() == pytest.approx(0.0, abs=1e-9)
    # normal maps are normalised first: a scaled map is as smooth
    assert volume.normal_smoothness(step * 3, torch.ones(1, 1, 2, 3)).item() == pytest.approx(2 * 2 / 7)


def use_density(field: VoxelField, density: torch.Tensor) -> None:
    """Make ``density`` (a plain tensor that gradcheck perturbs) the field's density grid."""
    if "density" in field._parameters:
        del field.density
    field.density = density


def test_normals_gradient_matches_finite_differences():
    torch.manual_seed(0)
    field = VoxelField(volume.FieldConfig(resolution=5, bound=0.5)).double()
    with torch.no_grad():
        field.density.normal_()
    points = (torch.rand(6, 3, dtype=torch.float64) - 0.5) * 0.8

    def f(density):
        use_density(field, density)
        return field.query(points, normals=True)[2]

    assert torch.autograd.gradcheck(lambda d: f(d), (field.density.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5)


def test_orientation_and_smoothness_gradients_match_finite_differences():
    torch.manual_seed(1)
    field = VoxelField(volume.FieldConfig(resolution=4, bound=0.5)).double()
    with torch.no_grad():
        field.density.normal_(std=2.0).add_(4.0)
    k = torch.tensor([[[6.0, 0, 2], [0, 6.0, 2], [0, 0, 1]]], dtype=torch.float64)
    from pvd.data.cameras import orbit_extrinsics
    e = torch.from_numpy(orbit_extrinsics(20.0, 15.0, 1.6))[None]

    def loss(density):
        use_density(field, density)
        out = volume.render(field, k, e, 4, 4, num_samples=8, normals=True)
        return out["orientation"].sum() + volume.normal_smoothness(out["normal"], out["alpha"])

    assert torch.autograd.gradcheck(loss, (field.density.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5)


def test_distill_with_normal_terms_smooths_the_normal_map():
    from pvd.sds import distill as D
    from test_sds_distill import K16, SIZE, box_field, render_rgba, small_config
    ref = D.Camera(30.0, 25.0, 1.4, K16, SIZE)
    image = render_rgba(box_field(), ref, SIZE)
    k, e = ref.tensors(SIZE)

    def smoothness(field):
        with torch.no_grad():
            out = volume.render(field, k, e, SIZE, SIZE, num_samples=24, normals=True)
        return volume.normal_smoothness(out["normal"], out["alpha"]).item()

    plain = D.distill(None, image, ref, small_config(iterations=60, sds_weight=0.0))
    smooth = D.distill(None, image, ref, small_config(iterations=60, sds_weight=0.0, normal_smooth_weight=5.0,
                                                      orientation_weight=1.0))
    assert smoothness(smooth.field) < 0.7 * smoothness(plain.field), (smoothness(smooth.field), smoothness(plain.field))
