"""A differentiable soft rasteriser for triangle meshes, in PyTorch (SoftRas, Liu et al. 2019).

Every face covers every pixel with a probability that falls off with the pixel's squared
distance to the face's screen-space triangle, D = sigmoid(+-d^2 / sigma^2) (+ inside, in
pixels; the squared form keeps the union of many faces from bleeding past the edge); the
silhouette is the probabilistic union alpha = 1 - prod_f (1 - D_f), and colour is the
aggregation sum_f w_f c_f + w_bg bg with w_f proportional to D_f exp(z_f / gamma) for the
normalised inverse depth z_f of the face at the pixel (near faces win smoothly; gamma -> 0 is
the z-buffer). Gradients reach vertex positions through the distances, the barycentric depth
and the shading, so silhouettes and shading pull the mesh where the images want it.

Pixels x faces are dense (no tiling): meant for the prior's small views (32 px) and meshes of
a few thousand faces, as Magic3D's refinement stage uses here. pytorch3d's rasteriser is the
faster choice where it is installed; this one has no dependency beyond torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NEAR = 0.05  # camera-z below which a vertex counts as behind the camera


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(F, 3) unit normals of the faces (counter-clockwise winding, right-hand rule)."""
    v0, v1, v2 = vertices[faces].unbind(1)
    return F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1, eps=1e-12)


def face_areas(vertices: Tensor, faces: Tensor) -> Tensor:
    """(F,) triangle areas."""
    v0, v1, v2 = vertices[faces].unbind(1)
    return 0.5 * torch.cross(v1 - v0, v2 - v0, dim=-1).norm(dim=-1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(V, 3) unit vertex normals: the area-weighted mean of the adjacent faces' normals."""
    v0, v1, v2 = vertices[faces].unbind(1)
    weighted = torch.cross(v1 - v0, v2 - v0, dim=-1)  # normal times twice the area
    n = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), weighted.repeat_interleave(3, 0))
    return F.normalize(n, dim=-1, eps=1e-12)


def _edge_distance(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Unsigned distance (P, F) from pixels p (P, 1, 2) to the segments a-b (1, F, 2)."""
    ab = b - a
    t = ((p - a) * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-12)
    closest = a + t.clamp(0, 1)[..., None] * ab
    return (p - closest).norm(dim=-1)


def rasterize(vertices: Tensor, faces: Tensor, colors: Tensor, intrinsics: Tensor, extrinsics: Tensor,
              height: int, width: int, *, sigma: float = 0.25, gamma: float = 0.02, near: float = 0.5, far: float = 3.0,
              background: float = 1.0) -> dict[str, Tensor]:
    """Soft-rasterise one mesh into B views.

    vertices: (V, 3) world; faces: (F, 3) long; colors: (V, 3) in [0, 1] (interpolated
    barycentrically); intrinsics (B, 3, 3) pixels, extrinsics (B, 4, 4) OpenCV world -> camera.
    sigma: the coverage's edge width in pixels; gamma: the depth aggregation's temperature on the
    depth normalised over the fixed range [near, far] (SoftRas' constants, here the orbit
    cameras' scene: distance 1.15-1.65 to an object of radius 0.55).
    Returns rgb (B, 3, H, W) over ``background``, alpha (B, 1, H, W) and depth (B, 1, H, W)
    (the aggregated camera-z, where alpha > 0).
    """
    like = vertices
    k, e = intrinsics.to(like), extrinsics.to(like)
    cam = torch.einsum("bij,vj->bvi", e[:, :3, :3], vertices) + e[:, None, :3, 3]  # (B, V, 3)
    z = cam[..., 2].clamp_min(NEAR)
    uv = torch.stack([k[:, None, 0, 0] * cam[..., 0] / z + k[:, None, 0, 2],
                      k[:, None, 1, 1] * cam[..., 1] / z + k[:, None, 1, 2]], -1)  # (B, V, 2)
    cols = torch.arange(width, dtype=like.dtype, device=like.device) + 0.5
    rows = torch.arange(height, dtype=like.dtype, device=like.device) + 0.5
    pix = torch.stack(torch.meshgrid(rows, cols, indexing="ij")[::-1], -1).reshape(-1, 1, 2)  # (P, 1, 2) as (x, y)
    out_rgb, out_alpha, out_depth = [], [], []
    for view in range(cam.shape[0]):
        tri = uv[view][faces]  # (F, 3, 2)
        a, b, c = (tri[None, :, i] for i in range(3))  # (1, F, 2)
        # barycentrics of every pixel in every face (signed area ratios)
        area = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
        safe = torch.where(area.abs() < 1e-9, torch.full_like(area, 1e-9), area)

        def cross(p, q, r):
            return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])

        w0, w1 = cross(pix, b, c) / safe, cross(a, pix, c) / safe
        bary = torch.stack([w0, w1, 1 - w0 - w1], -1)  # (P, F, 3)
        inside = (bary > 0).all(-1)
        dist = torch.minimum(torch.minimum(_edge_distance(pix, a, b), _edge_distance(pix, b, c)), _edge_distance(pix, c, a))
        sq = dist.square() / sigma**2  # SoftRas's squared distance: a tail that vanishes within ~3 sigma
        coverage = torch.sigmoid(torch.where(inside, sq, -sq))  # (P, F)
        coverage = coverage * (area.abs() > 1e-9) * (cam[view][faces][..., 2] > NEAR).all(-1)
        # depth and colour at the pixel: barycentrics clipped onto the triangle (SoftRas) and
        # perspective-correct (interpolate 1/z)
        clipped = bary.clamp(0, 1)
        clipped = clipped / clipped.sum(-1, keepdim=True).clamp_min(1e-12)
        inv_z = (clipped * (1 / z[view][faces])[None]).sum(-1)  # (P, F)
        depth = 1 / inv_z
        persp = clipped * (1 / z[view][faces])[None] / inv_z[..., None]
        color = torch.einsum("pfk,fkc->pfc", persp, colors[faces])
        # aggregation: normalised inverse depth in [0, 1] (1 nearest), softmax with the background at 0
        zn = (far - depth) / (far - near)
        logits = torch.where(coverage > 0, torch.log(coverage.clamp_min(1e-30)) + zn / gamma, torch.full_like(zn, -1e30))
        eps_logit = torch.full_like(logits[:, :1], 1e-3 / gamma)
        weights = torch.softmax(torch.cat([logits, eps_logit], -1), -1)
        rgb = (weights[..., :-1, None] * color).sum(1) + weights[:, -1:] * background
        alpha = -torch.expm1(torch.log1p(-coverage.clamp(max=1 - 1e-6)).sum(-1))
        d = (weights[..., :-1] * depth).sum(-1) / weights[..., :-1].sum(-1).clamp_min(1e-12)
        out_rgb.append(rgb.t().reshape(3, height, width))
        out_alpha.append(alpha.reshape(1, height, width))
        out_depth.append(d.reshape(1, height, width))
    return {"rgb": torch.stack(out_rgb), "alpha": torch.stack(out_alpha), "depth": torch.stack(out_depth)}


def uniform_laplacian(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean squared norm of v_i - mean(neighbours of v_i) (the uniform Laplacian, Magic3D's
    smoothness term on the refined mesh); 0 for a mesh whose vertices sit at their neighbours' mean."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.unique(torch.sort(edges, dim=1).values, dim=0)
    i, j = torch.cat([edges[:, 0], edges[:, 1]]), torch.cat([edges[:, 1], edges[:, 0]])
    total = torch.zeros_like(vertices).index_add_(0, i, vertices[j])
    degree = torch.zeros(len(vertices), dtype=vertices.dtype, device=vertices.device).index_add_(
        0, i, torch.ones_like(i, dtype=vertices.dtype))
    used = degree > 0
    return (vertices[used] - total[used] / degree[used, None]).square().sum(-1).mean()


def normal_consistency(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean (1 - cos) between the normals of faces that share an edge (pytorch3d's
    mesh_normal_consistency): 0 for a plane, larger for a crumpled surface."""
    n = face_normals(vertices, faces)
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = torch.sort(edges, dim=1).values
    face_of = torch.arange(len(faces), device=faces.device).repeat(3)
    key_id = key[:, 0] * (int(vertices.shape[0]) + 1) + key[:, 1]
    order = torch.argsort(key_id)
    sorted_id, sorted_face = key_id[order], face_of[order]
    pair = sorted_id[1:] == sorted_id[:-1]  # consecutive equal keys: two faces on one edge (manifold)
    if not bool(pair.any()):
        return vertices.new_zeros(())
    a, b = sorted_face[:-1][pair], sorted_face[1:][pair]
    return (1 - (n[a] * n[b]).sum(-1)).mean()
