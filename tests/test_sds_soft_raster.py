"""The soft rasteriser (pvd.sds.soft_raster) against a per-pixel reference, the hard rasteriser
in its sharp limit and finite differences; mesh normals, areas and the smoothness terms on
shapes with known answers."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.special import expit

from pvd.data.cameras import orbit_extrinsics
from pvd.data.render import rasterize as hard_rasterize
from pvd.sds import soft_raster as S

K = np.array([[10.0, 0, 4.0], [0, 10.0, 4.0], [0, 0, 1]])


def two_triangles():
    v = torch.tensor([[-0.3, -0.2, 0.1], [0.3, -0.25, 0.0], [0.0, 0.3, -0.1], [0.2, 0.2, 0.3]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [1, 3, 2]])
    c = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1, 1, 0]], dtype=torch.float64)
    return v, f, c


def naive(v, f, c, k, e, h, w, sigma, gamma, bg=1.0, eps=1e-4):
    """The SoftRas formulas written per pixel and per face; a face whose coverage of a pixel is
    below eps takes no part in that pixel."""
    cam = v.numpy() @ e[:3, :3].T + e[:3, 3]
    uv = np.stack([k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2], k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]], -1)
    rgb, alpha, per_pixel = np.zeros((h, w, 3)), np.zeros((h, w)), {}
    for i in range(h):
        for j in range(w):
            p = np.array([j + 0.5, i + 0.5])
            cov, depth, col = [], [], []
            for face in f.numpy():
                a, b, cc = uv[face]

                def seg(p, a, b):
                    t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0, 1)
                    return np.linalg.norm(p - (a + t * (b - a)))

                area = (b[0] - a[0]) * (cc[1] - a[1]) - (b[1] - a[1]) * (cc[0] - a[0])
                w0 = ((b[0] - p[0]) * (cc[1] - p[1]) - (b[1] - p[1]) * (cc[0] - p[0])) / area
                w1 = ((p[0] - a[0]) * (cc[1] - a[1]) - (p[1] - a[1]) * (cc[0] - a[0])) / area
                bary = np.array([w0, w1, 1 - w0 - w1])
                d = min(seg(p, a, b), seg(p, b, cc), seg(p, cc, a))
                sq = d * d / sigma**2
                cov.append(expit(sq if (bary > 0).all() else -sq))
                cl = np.clip(bary, 0, 1)
                cl /= cl.sum()
                zs = cam[face, 2]
                inv = (cl / zs).sum()
                depth.append(1 / inv)
                col.append(((cl / zs / inv)[:, None] * c.numpy()[face]).sum(0))
            cov, depth, col = np.array(cov), np.array(depth), np.array(col)
            used = cov >= eps
            cov, depth, col = cov[used], depth[used], col[used]
            alpha[i, j] = 1 - np.prod(1 - cov)
            per_pixel[(i, j)] = (cov, depth, col)
    near, far = 0.5, 3.0
    for (i, j), (cov, depth, col) in per_pixel.items():
        zn = (far - depth) / (far - near)
        logit = np.log(cov) + zn / gamma
        all_logits = np.concatenate([logit, [1e-3 / gamma]])
        wts = np.exp(all_logits - all_logits.max())
        wts /= wts.sum()
        rgb[i, j] = (wts[:-1, None] * col).sum(0) + wts[-1] * bg
    return rgb, alpha


@pytest.mark.parametrize("eps", [1e-4, 1e-2, 0.0])
def test_soft_rasteriser_matches_the_per_pixel_formulas(eps):
    v, f, c = two_triangles()
    e = orbit_extrinsics(20.0, 15.0, 1.5)
    out = S.rasterize(v, f, c, torch.from_numpy(K)[None], torch.from_numpy(e)[None], 8, 8, sigma=0.7, gamma=0.1, eps=eps)
    rgb, alpha = naive(v, f, c, K, e, 8, 8, 0.7, 0.1, eps=eps)
    np.testing.assert_allclose(out["alpha"][0, 0].numpy(), alpha, atol=1e-9)
    np.testing.assert_allclose(out["rgb"][0].permute(1, 2, 0).numpy(), rgb, atol=1e-9)
    assert alpha.max() > 0.5 and alpha.min() < 0.05  # the triangles are in view, not everywhere


def test_sparse_pairs_cover_every_face_a_pixel_sees_in_every_view():
    # a sphere larger than the frame in one view (boxes clipped at the border), small in another;
    # pixels far outside a face's box are where the cut-off matters: against the reference per pixel
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    v = torch.tensor(np.asarray(sphere.vertices)) + torch.tensor([0.1, -0.05, 0.0], dtype=torch.float64)
    f = torch.tensor(np.asarray(sphere.faces))
    c = torch.rand(len(v), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ks = [K.copy(), K.copy()]
    ks[0][[0, 1], [0, 1]], ks[1][[0, 1], [0, 1]] = 25.0, 6.0
    es = [orbit_extrinsics(10.0, 20.0, 1.3), orbit_extrinsics(140.0, -10.0, 1.6)]
    out = S.rasterize(v, f, c, torch.from_numpy(np.stack(ks)), torch.from_numpy(np.stack(es)), 8, 8, sigma=0.5, gamma=0.05)
    for view in range(2):
        rgb, alpha = naive(v, f, c, ks[view], es[view], 8, 8, 0.5, 0.05)
        # alpha: the rasteriser caps each coverage at 1 - 1e-6 (log1p stays finite), the reference does not
        np.testing.assert_allclose(out["alpha"][view, 0].numpy(), alpha, atol=1e-6)
        np.testing.assert_allclose(out["rgb"][view].permute(1, 2, 0).numpy(), rgb, atol=1e-9)
    assert out["alpha"][0].min() > 0.75  # the close view is covered edge to edge (front and back faces)
    assert out["alpha"][1].min() < 1e-3 < 0.99 < out["alpha"][1].max()


def test_sharp_limit_is_the_hard_silhouette():
    box = trimesh.creation.box((0.5, 0.3, 0.4))
    k = np.array([[40.0, 0, 16.0], [0, 40.0, 16.0], [0, 0, 1]])
    e = orbit_extrinsics(30.0, 25.0, 1.5)
    faces_hit, _ = hard_rasterize(np.asarray(box.vertices), np.asarray(box.faces), k, e, 32, 32)
    v = torch.tensor(np.asarray(box.vertices))
    out = S.rasterize(v, torch.tensor(np.asarray(box.faces)), torch.full_like(v, 0.5), torch.from_numpy(k)[None],
                      torch.from_numpy(e)[None], 32, 32, sigma=0.05, gamma=0.01)
    soft = out["alpha"][0, 0].numpy() > 0.5
    hard = faces_hit >= 0
    assert (soft & hard).sum() / (soft | hard).sum() > 0.97
    # the aggregated depth of a covered pixel lies on the box: between its nearest and farthest corner
    cam_z = np.asarray(box.vertices) @ e[2, :3] + e[2, 3]
    d = out["depth"][0, 0].numpy()[hard]
    assert cam_z.min() - 1e-6 <= d.min() and d.max() <= cam_z.max() + 1e-6


def test_soft_rasteriser_gradients_match_finite_differences():
    v, f, c = two_triangles()
    k = torch.from_numpy(K)[None] * torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)[:, None]
    e = torch.from_numpy(orbit_extrinsics(20.0, 15.0, 1.5))[None]

    def loss(vertices, colors):
        out = S.rasterize(vertices, f, colors, k, e, 4, 4, sigma=0.8, gamma=0.2)
        return (out["rgb"] * torch.linspace(0, 1, 48, dtype=torch.float64).view(1, 3, 4, 4)).sum() + out["alpha"].square().sum()

    assert torch.autograd.gradcheck(loss, (v.clone().requires_grad_(), c.clone().requires_grad_()), eps=1e-6, atol=1e-5)


def test_sphere_normals_and_area():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    v, f = torch.tensor(np.asarray(sphere.vertices)), torch.tensor(np.asarray(sphere.faces))
    n = S.vertex_normals(v, f)
    assert ((n * torch.nn.functional.normalize(v, dim=-1)).sum(-1) > 0.999).all()  # radial, outward
    fn = S.face_normals(v, f)
    assert ((fn * torch.nn.functional.normalize(v[f].mean(1), dim=-1)).sum(-1) > 0.99).all()
    # a subdivided icosahedron inscribed in the sphere: area just below 4 pi r^2, as trimesh computes it
    assert S.face_areas(v, f).sum().item() == pytest.approx(sphere.area, rel=1e-9)
    assert 0.98 * 4 * math.pi * 0.16 < S.face_areas(v, f).sum().item() < 4 * math.pi * 0.16


def test_cube_faces_have_axis_normals_and_unit_areas():
    cube = trimesh.creation.box((1.0, 1.0, 1.0))
    v, f = torch.tensor(np.asarray(cube.vertices)), torch.tensor(np.asarray(cube.faces))
    n = S.face_normals(v, f)
    assert torch.allclose(n.abs().max(-1).values, torch.ones(len(f), dtype=torch.float64))  # one axis each
    assert S.face_areas(v, f).sum().item() == pytest.approx(6.0)
    assert S.normal_consistency(v, f).item() == pytest.approx(2 / 3)  # 12 of 18 edges bend by 90 degrees (1 - cos = 1)


def test_smoothness_terms_hand_computed():
    # a flat fan: the centre sits at its neighbours' mean, the rim vertices do not
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    assert S.normal_consistency(v, f).item() == pytest.approx(0.0, abs=1e-12)
    # rim vertex (1, 0, 0): neighbours centre, (0, 1), (0, -1): mean (0, 0) -> |(1, 0)|^2 = 1; all four alike
    assert S.uniform_laplacian(v, f).item() == pytest.approx(4 / 5)
    lifted = v.clone()
    lifted[0, 2] = 0.5  # the centre raised: the fan folds
    assert S.normal_consistency(lifted, f).item() > 0.05
