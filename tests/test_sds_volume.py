"""Tests for pvd.sds.volume: rays, trilinear queries, volume rendering, regularisers, voxelising and meshing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pvd.data.cameras import look_at, project
from pvd.sds.volume import (FieldConfig, VoxelField, camera_rays, density_tv, extract_mesh, occupancy_from_mesh,
                            occupancy_from_points, opacity_entropy, render, sample_surface_points, scale_intrinsics,
                            sparsity)

pytestmark = pytest.mark.usefixtures("one_thread")  # small ops: a second thread on busy cores only waits

BOUND = 0.55


def random_cameras(rng: np.random.Generator, count: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 3, 3) intrinsics with unequal focals and an off-centre principal point, and
    (count, 4, 4) extrinsics looking at points near the origin from 1.2-2 units away."""
    ks, es = [], []
    for _ in range(count):
        direction = rng.normal(size=3)
        eye = direction / np.linalg.norm(direction) * rng.uniform(1.2, 2.0)
        es.append(look_at(eye, rng.uniform(-0.1, 0.1, 3)))
        f = rng.uniform(0.8, 1.3) * width
        ks.append([[f, 0.0, width / 2 + rng.uniform(-2, 2)], [0.0, f * rng.uniform(0.9, 1.1), height / 2 + rng.uniform(-2, 2)],
                   [0.0, 0.0, 1.0]])
    return torch.tensor(np.array(ks), dtype=torch.float32), torch.tensor(np.array(es), dtype=torch.float32)


def random_field(rng: np.random.Generator, resolution: int, activation: str = "softplus") -> VoxelField:
    field = VoxelField(FieldConfig(resolution=resolution, bound=BOUND, density_activation=activation))
    with torch.no_grad():
        field.density.copy_(torch.tensor(rng.normal(0, 2, field.density.shape)))
        field.color.copy_(torch.tensor(rng.normal(0, 2, field.color.shape)))
    return field


def constant_field(raw_density: float, raw_color=(0.0, 0.0, 0.0), resolution: int = 4) -> VoxelField:
    field = VoxelField(FieldConfig(resolution=resolution, bound=BOUND))
    with torch.no_grad():
        field.density.fill_(raw_density)
        field.color.copy_(torch.tensor(raw_color, dtype=torch.float32).view(1, 3, 1, 1, 1).expand_as(field.color))
    return field


def chord_length(origin: np.ndarray, direction: np.ndarray, bound: float) -> float:
    """Length of a ray's segment inside [-bound, bound]^3, by clipping its parameter interval axis by axis."""
    lo, hi = 0.0, math.inf
    for o, d in zip(origin, direction):
        if abs(d) < 1e-15:
            if abs(o) > bound:
                return 0.0
            continue
        t0, t1 = sorted(((-bound - o) / d, (bound - o) / d))
        lo, hi = max(lo, t0), min(hi, t1)
    return max(hi - lo, 0.0)


# --------------------------------------------------------------------------------------------
# Rays


def test_camera_rays_pass_through_pixel_centres():
    rng = np.random.default_rng(0)
    h, w = 5, 7
    k, e = random_cameras(rng, 3, h, w)
    origins, dirs = camera_rays(k, e, h, w)
    assert origins.shape == dirs.shape == (3, h, w, 3)
    np.testing.assert_allclose(dirs.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    for b in range(3):
        eye = -e[b, :3, :3].double().T @ e[b, :3, 3].double()
        np.testing.assert_allclose(origins[b].reshape(-1, 3).numpy(), eye.expand(h * w, 3).numpy(), atol=1e-5)
        for i in range(h):
            for j in range(w):
                point = (origins[b, i, j] + 1.7 * dirs[b, i, j]).double().numpy()
                uv, depth = project(point[None], k[b].double().numpy(), e[b].double().numpy())
                assert depth[0] > 0  # in front of the camera, not behind it
                np.testing.assert_allclose(uv[0], [j + 0.5, i + 0.5], atol=1e-4)


def test_scaled_intrinsics_keep_the_field_of_view():
    # The ray of low-resolution pixel (i, j) passes through the shared corner (2j + 1, 2i + 1)
    # of its four high-resolution pixels.
    k, e = random_cameras(np.random.default_rng(1), 2, 8, 8)
    origins, dirs = camera_rays(scale_intrinsics(k, 0.5), e, 4, 4)
    for b in range(2):
        points = (origins[b] + dirs[b]).reshape(-1, 3).double().numpy()
        uv, _ = project(points, k[b].double().numpy(), e[b].double().numpy())
        rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
        np.testing.assert_allclose(uv, np.stack([2 * cols + 1, 2 * rows + 1], -1).reshape(-1, 2), atol=1e-4)


# --------------------------------------------------------------------------------------------
# Queries


def naive_query(field: VoxelField, point: np.ndarray) -> tuple[float, np.ndarray]:
    """Trilinear interpolation written out per corner: cell (i, j, k) centre at -b + (i + 0.5) s."""
    r, b = field.config.resolution, field.config.bound
    if np.any(np.abs(point) > b):
        return 0.0, None
    s = 2 * b / r
    idx = np.clip((point + b) / s - 0.5, 0, r - 1)  # continuous index, clamped to the outer centres
    base = np.minimum(np.floor(idx).astype(int), r - 2)
    frac = idx - base
    density = field.density.detach().double().numpy()[0, 0]
    color = field.color.detach().double().numpy()[0]
    raw_d, raw_c = 0.0, np.zeros(3)
    for corner in np.ndindex(2, 2, 2):
        weight = np.prod([f if c else 1 - f for c, f in zip(corner, frac)])
        i, j, k = base + corner
        raw_d += weight * density[i, j, k]
        raw_c += weight * color[:, i, j, k]
    x = raw_d + field.config.density_bias
    depth = math.log1p(math.exp(x)) if field.config.density_activation == "softplus" else math.exp(x)
    return depth / s, 1 / (1 + np.exp(-raw_c))


@pytest.mark.parametrize("activation", ["softplus", "exp"])
@pytest.mark.parametrize("resolution", [2, 5])
def test_query_matches_naive_trilinear(activation, resolution):
    rng = np.random.default_rng(2)
    field = random_field(rng, resolution, activation)
    points = rng.uniform(-1.2 * BOUND, 1.2 * BOUND, (200, 3))
    points[:5] = np.array([[-1, -1, -1], [1, 1, 1], [1, -1, 0.3], [0, 0, 0], [1.01, 0, 0]]) * BOUND  # faces, corners, just outside
    sigma, rgb = field.query(torch.tensor(points, dtype=torch.float32).view(10, 20, 3))
    assert sigma.shape == (10, 20) and rgb.shape == (10, 20, 3)
    sigma, rgb = sigma.detach().reshape(-1).double().numpy(), rgb.detach().reshape(-1, 3).double().numpy()
    for n, p in enumerate(points):
        want_sigma, want_rgb = naive_query(field, p)
        assert sigma[n] == pytest.approx(want_sigma, rel=1e-4, abs=1e-6)
        if want_rgb is not None:
            np.testing.assert_allclose(rgb[n], want_rgb, atol=1e-5)


def test_query_first_grid_axis_is_world_x():
    field = VoxelField(FieldConfig(resolution=4, bound=BOUND))
    with torch.no_grad():
        field.density.fill_(-30.0)
        field.density[0, 0, 3, 1, 0] = 30.0  # cell x = 3, y = 1, z = 0
    s = 2 * BOUND / 4
    centre = lambda i, j, k: [-BOUND + (i + 0.5) * s, -BOUND + (j + 0.5) * s, -BOUND + (k + 0.5) * s]
    sigma, _ = field.query(torch.tensor([centre(3, 1, 0), centre(0, 1, 3), centre(1, 3, 0)]))
    assert sigma[0] > 50 and sigma[1] < 1e-6 and sigma[2] < 1e-6


def test_from_occupancy_maps_level_to_the_activation_midpoint():
    for activation, midpoint in (("softplus", math.log(2)), ("exp", 1.0)):
        occ = np.full((3, 3, 3), 0.3, np.float32)
        occ[0] = 0.0
        field = VoxelField.from_occupancy(occ, BOUND, level=0.3, empty_depth=1e-3,
                                          config=FieldConfig(density_activation=activation))
        depth = field.cell_depth(field.density[0, 0]).detach()
        assert field.config.resolution == 3 and field.config.bound == BOUND
        np.testing.assert_allclose(depth[1:].numpy(), midpoint, rtol=1e-5)
        np.testing.assert_allclose(depth[0].numpy(), 1e-3, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# Rendering


@pytest.mark.parametrize("stratified", [False, True])
def test_constant_cube_alpha_is_one_minus_exp_of_the_chord(stratified):
    # Constant density is exact under the quadrature wherever the samples fall.
    raw, raw_color = 0.7, (0.4, -1.0, 2.0)
    field = constant_field(raw, raw_color)
    sigma = math.log1p(math.exp(raw + field.config.density_bias)) / field.voxel_size
    color = 1 / (1 + np.exp(-np.array(raw_color)))
    k, e = random_cameras(np.random.default_rng(3), 2, 12, 10)
    generator = torch.Generator().manual_seed(0) if stratified else None
    background = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        out = render(field, k, e, 12, 10, num_samples=7, background=background, generator=generator)
    assert out["rgb"].shape == (2, 3, 12, 10) and out["alpha"].shape == out["depth"].shape == (2, 1, 12, 10)
    origins, dirs = camera_rays(k, e, 12, 10)
    chords = np.array([chord_length(o, d, BOUND) for o, d in zip(origins.reshape(-1, 3).double().numpy(),
                                                                    dirs.reshape(-1, 3).double().numpy())])
    assert (chords == 0).any() and (chords > 0).mean() > 0.5
    alpha = 1 - np.exp(-sigma * chords)
    np.testing.assert_allclose(out["alpha"].reshape(-1).numpy(), alpha, rtol=1e-4, atol=1e-6)
    want_rgb = alpha[:, None] * color + (1 - alpha[:, None]) * background.numpy()
    np.testing.assert_allclose(out["rgb"].permute(0, 2, 3, 1).reshape(-1, 3).numpy(), want_rgb, atol=1e-5)
    missed = chords == 0
    assert np.all(out["alpha"].reshape(-1).numpy()[missed] == 0)
    assert np.all(out["rgb"].permute(0, 2, 3, 1).reshape(-1, 3).numpy()[missed] == background.numpy())


def test_stratified_samples_are_seeded_and_jittered(device):
    # the jitter is drawn where the field lives, from a generator on that device; host cameras are fine
    field = random_field(np.random.default_rng(4), 6).to(device)
    k, e = random_cameras(np.random.default_rng(5), 1, 6, 6)
    run = lambda seed: render(field, k, e, 6, 6, num_samples=8, generator=torch.Generator(device).manual_seed(seed))["rgb"]
    midpoints = render(field, k, e, 6, 6, num_samples=8)["rgb"]
    assert run(1).device.type == device.type
    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2)) and not torch.allclose(run(1), midpoints)


def test_depth_of_an_opaque_cube_is_its_near_face():
    # Seen from (0, 0, 2) down the z axis, the central rays enter through the face z = bound,
    # whose camera depth is 2 - bound on every ray; the first sample, which takes all the weight,
    # lies half a bin (at most bound / 32 in camera z) further.
    field = constant_field(400.0)
    k = torch.tensor([[[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]])
    with torch.no_grad():
        out = render(field, k, torch.tensor(look_at([0.0, 0.0, 2.0]))[None].float(), 8, 8, num_samples=32)
    inner = slice(1, 7)  # these rays all cross the front face (it spans +-3 pixels around the centre)
    assert out["alpha"][0, 0, inner, inner].min() > 0.999
    depth = out["depth"][0, 0, inner, inner].numpy()
    # camera z, not the distance along the ray (1.1 times it at the border)
    assert depth.min() > 2 - BOUND and depth.max() < 2 - BOUND + BOUND / 32 + 1e-5


def test_empty_field_shows_the_background():
    field = constant_field(-40.0)
    k, e = random_cameras(np.random.default_rng(6), 2, 6, 6)
    with torch.no_grad():
        out = render(field, k, e, 6, 6, background=0.25)
    assert out["alpha"].max() < 1e-9 and out["depth"].abs().max() < 1e-8
    np.testing.assert_allclose(out["rgb"].numpy(), 0.25, atol=1e-8)


def test_chunks_do_not_change_the_image():
    field = random_field(np.random.default_rng(7), 5)
    k, e = random_cameras(np.random.default_rng(8), 2, 5, 6)
    whole, parts = render(field, k, e, 5, 6, num_samples=9), render(field, k, e, 5, 6, num_samples=9, chunk=7)
    for key in whole:
        torch.testing.assert_close(whole[key], parts[key])


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(9)
    field = random_field(rng, 4).double()
    k, e = random_cameras(rng, 2, 4, 4)
    weights = torch.tensor(rng.normal(size=(2, 5, 4, 4)))

    def loss() -> torch.Tensor:
        out = render(field, k, e, 4, 4, num_samples=12, background=torch.tensor([0.1, 0.6, 0.3]))
        return (torch.cat([out["rgb"], out["alpha"], out["depth"]], 1) * weights).sum()

    loss().backward()
    for param in (field.density, field.color):
        assert param.grad is not None and param.grad.abs().sum() > 0
        flat = param.data.view(-1)
        for index in np.argsort(-param.grad.abs().view(-1).numpy())[:6]:  # the entries that matter most
            with torch.no_grad():
                flat[index] += 1e-6
                up = loss().item()
                flat[index] -= 2e-6
                down = loss().item()
                flat[index] += 1e-6
            assert param.grad.view(-1)[index].item() == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-7)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Three built-in shapes (chair, car, table), two 64x64 views each, with meshes."""
    from pvd.data.synthetic.writer import SyntheticConfig, write_synthetic_dataset

    path = tmp_path_factory.mktemp("sds") / "tiny.h5"
    write_synthetic_dataset(path, SyntheticConfig(per_category=1, views=2, resolution=64, num_points=3000, supersample=2,
                                                  categories=("chair", "car", "table")), progress=False)
    return path


def test_voxelised_shapes_render_their_stored_silhouettes(tiny_dataset):
    import h5py

    from pvd.data.hdf5 import read_mesh

    ious = []
    with h5py.File(tiny_dataset, "r") as f:
        for row in range(len(f["images"])):
            field = VoxelField.from_occupancy(occupancy_from_mesh(*read_mesh(f, row), 64, BOUND), BOUND)
            with torch.no_grad():
                alpha = render(field, torch.from_numpy(f["cameras/intrinsics"][row]),
                               torch.from_numpy(f["cameras/extrinsics"][row]), 64, 64)["alpha"][:, 0].numpy()
            silhouette = f["images"][row][..., 3] > 127
            mask = alpha > 0.5
            ious += list((mask & silhouette).sum((1, 2)) / (mask | silhouette).sum((1, 2)))
    assert min(ious) > 0.85 and np.mean(ious) > 0.92


# --------------------------------------------------------------------------------------------
# Regularisers


def test_regularisers_against_hand_computed_values():
    alpha = torch.tensor([0.5, 0.25, 1.0, 0.0])
    h25 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert opacity_entropy(alpha).item() == pytest.approx((math.log(2) + h25) / 4, rel=1e-4)
    assert sparsity(alpha).item() == pytest.approx(0.4375)

    field = VoxelField(FieldConfig(resolution=5))
    with torch.no_grad():
        field.density[0, 0, 3:] = 2.0  # one step of 2 between x-planes 2 and 3: 25 of the 3 * 4 * 25 pairs
    assert density_tv(field).item() == pytest.approx(2.0 * 25 / 300)
    density_tv(field).backward()
    assert field.density.grad.abs().sum() > 0
    assert density_tv(VoxelField(FieldConfig(resolution=5))).item() == 0.0


# --------------------------------------------------------------------------------------------
# Voxelising and meshing


def sphere_occupancy(resolution: int, radius: float, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    c = (np.arange(resolution) + 0.5) * 2 * BOUND / resolution - BOUND
    x, y, z = np.meshgrid(c - centre[0], c - centre[1], c - centre[2], indexing="ij")
    return x**2 + y**2 + z**2 < radius**2


def test_occupancy_of_a_sphere_mesh_has_its_volume():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    cell = (2 * BOUND / 32) ** 3
    fractions = occupancy_from_mesh(sphere.vertices, sphere.faces, 32, BOUND)
    assert fractions.shape == (32, 32, 32) and fractions.dtype == np.float32
    assert fractions.sum() * cell == pytest.approx(sphere.volume, rel=0.01)
    centres = occupancy_from_mesh(sphere.vertices, sphere.faces, 32, BOUND, supersample=1)
    assert set(np.unique(centres)) == {0.0, 1.0}
    assert centres.sum() * cell == pytest.approx(sphere.volume, rel=0.05)
    # the first axis is x: a sphere shifted along +x fills more cells at high x indices
    shifted = occupancy_from_mesh(sphere.vertices + [0.1, 0, 0], sphere.faces, 32, BOUND)
    assert shifted[16:].sum() > 2 * shifted[:16].sum()


def test_occupancy_from_surface_points_is_solid():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    points = sample_surface_points(sphere, 20000, seed=0)
    occ = occupancy_from_points(points, 32, BOUND)
    assert occ.dtype == bool and occ[16, 16, 16]  # filled, not a shell
    volume = occ.sum() * (2 * BOUND / 32) ** 3
    assert sphere.volume < volume < 1.35 * sphere.volume  # surface cells make it a little fatter
    assert not occupancy_from_points(points[:50], 32, BOUND)[16, 16, 16]  # too sparse to close: stays a shell


def test_extracted_mesh_of_a_sphere_has_its_volume_and_area():
    radius, resolution = 0.35, 40
    field = VoxelField.from_occupancy(sphere_occupancy(resolution, radius), BOUND)
    mesh = extract_mesh(field)
    assert mesh.is_watertight and mesh.volume > 0  # closed, wound outward
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)
    assert mesh.area == pytest.approx(4 * math.pi * radius**2, rel=0.12)  # staircase from the binary grid
    points = sample_surface_points(mesh, 500, seed=1)
    assert points.shape == (500, 3) and points.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), radius, atol=field.voxel_size)
    np.testing.assert_array_equal(points, sample_surface_points(mesh, 500, seed=1))
    np.testing.assert_allclose(mesh.bounds.mean(0), 0.0, atol=0.1 * field.voxel_size)  # no half-cell shift

    centre = np.array([0.12, -0.05, 0.2])  # world x, y, z: the mesh lands where the occupancy was
    shifted = extract_mesh(VoxelField.from_occupancy(sphere_occupancy(resolution, 0.2, centre), BOUND))
    np.testing.assert_allclose(shifted.bounds.mean(0), centre, atol=field.voxel_size / 2)


def test_empty_field_gives_an_empty_mesh():
    mesh = extract_mesh(VoxelField(FieldConfig(resolution=8)))
    assert mesh.is_empty
    with pytest.raises(ValueError, match="empty mesh"):
        sample_surface_points(mesh, 10)
