"""A differentiable soft rasteriser for triangle meshes, in PyTorch (SoftRas, Liu et al. 2019).

Every face covers every pixel with a probability that falls off with the pixel's squared
distance to the face's screen-space triangle, D = sigmoid(+-d^2 / sigma^2) (+ inside, in
pixels; the squared form keeps the union of many faces from bleeding past the edge); the
silhouette is the probabilistic union alpha = 1 - prod_f (1 - D_f), and colour is the
aggregation sum_f w_f c_f + w_bg bg with w_f proportional to D_f exp(z_f / gamma) for the
normalised inverse depth z_f of the face at the pixel (near faces win smoothly; gamma -> 0 is
the z-buffer). Gradients reach vertex positions through the distances, the barycentric depth
and the shading, so silhouettes and shading pull the mesh where the images want it.

Sparse in pixels x faces: a face's coverage falls below ``eps`` (SoftRas' cut-off) a few sigma
outside it, so only the (pixel, face) pairs inside each face's grown screen box are computed,
as one flat list over all views, and every per-pixel reduction (the union, the softmax) is a
scatter over it. The cost follows the pairs (about the covered pixels times the depth
complexity), not pixels x faces. pytorch3d's rasteriser is an alternative where it is
installed; this one has no dependency beyond torch.
"""

from __future__ import annotations

import math

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
    """Unsigned distance (...) from points p (..., 2) to the segments a-b (..., 2), broadcast."""
    ab = b - a
    t = ((p - a) * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-12)
    closest = a + t.clamp(0, 1)[..., None] * ab
    return (p - closest).norm(dim=-1)


def _cross(p: Tensor, q: Tensor, r: Tensor) -> Tensor:
    """Twice the signed area of the screen triangles (p, q, r), each (..., 2)."""
    return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])


def _candidate_pairs(uv: Tensor, usable: Tensor, height: int, width: int, margin: float) -> tuple[Tensor, Tensor]:
    """Every (pixel, face) pair whose pixel centre lies in the face's screen box grown by ``margin``
    pixels: the only pairs whose coverage can reach the cut-off (no gradient; the box is a bound).

    uv: (B, F, 3, 2) the faces' screen vertices per view; usable: (B, F) bool. Returns flat
    pixel indices into (B, H, W) and flat face indices into (B, F), both (E,) long.
    """
    num_faces = uv.shape[1]
    lo, hi = uv.amin(2) - margin, uv.amax(2) + margin  # (B, F, 2)
    # pixel centres sit at j + 0.5: the columns j with lo <= j + 0.5 <= hi
    first = torch.ceil(lo - 0.5).clamp(0, None)
    last = torch.floor(hi - 0.5).clamp(None, torch.tensor([width - 1, height - 1], dtype=uv.dtype, device=uv.device))
    span = (last - first + 1).clamp_min(0)
    span = torch.where(usable[..., None] & torch.isfinite(span), span, torch.zeros_like(span)).long()  # (B, F, 2)
    count = (span[..., 0] * span[..., 1]).reshape(-1)  # pixels per (view, face)
    face = torch.repeat_interleave(torch.arange(count.numel(), device=uv.device), count)
    local = torch.arange(face.numel(), device=uv.device) - (torch.cumsum(count, 0) - count)[face]
    first, span = first.long().reshape(-1, 2)[face], span.reshape(-1, 2)[face]
    col, row = first[:, 0] + local % span[:, 0], first[:, 1] + local // span[:, 0]
    view = face // num_faces
    return (view * height + row) * width + col, face


def rasterize(vertices: Tensor, faces: Tensor, colors: Tensor, intrinsics: Tensor, extrinsics: Tensor,
              height: int, width: int, *, sigma: float = 0.25, gamma: float = 0.02, near: float = 0.5, far: float = 3.0,
              background: float = 1.0, eps: float = 1e-4) -> dict[str, Tensor]:
    """Soft-rasterise one mesh into B views.

    vertices: (V, 3) world; faces: (F, 3) long; colors: (V, 3) in [0, 1] (interpolated
    barycentrically); intrinsics (B, 3, 3) pixels, extrinsics (B, 4, 4) OpenCV world -> camera.
    sigma: the coverage's edge width in pixels; gamma: the depth aggregation's temperature on the
    depth normalised over the fixed range [near, far] (SoftRas' constants, here the orbit
    cameras' scene: distance 1.15-1.65 to an object of radius 0.55); eps: coverage below this
    counts as none (SoftRas' cut-off; 0 would pair every pixel with every face).
    Returns rgb (B, 3, H, W) over ``background``, alpha (B, 1, H, W) and depth (B, 1, H, W)
    (the aggregated camera-z, where alpha > 0).
    """
    like = vertices
    k, e = intrinsics.to(like), extrinsics.to(like)
    views, pixels = k.shape[0], height * width
    cam = torch.einsum("bij,vj->bvi", e[:, :3, :3], vertices) + e[:, None, :3, 3]  # (B, V, 3)
    z = cam[..., 2].clamp_min(NEAR)
    uv = torch.stack([k[:, None, 0, 0] * cam[..., 0] / z + k[:, None, 0, 2],
                      k[:, None, 1, 1] * cam[..., 1] / z + k[:, None, 1, 2]], -1)  # (B, V, 2)
    tri, tri_z = uv[:, faces], z[:, faces]  # (B, F, 3, 2), (B, F, 3)
    with torch.no_grad():
        usable = (_cross(*tri.unbind(2)).abs() > 1e-9) & (cam[:, faces, 2] > NEAR).all(-1)
        cutoff = math.log(1 / eps - 1) if 0 < eps < 0.5 else math.inf  # sigmoid(-sq) < eps beyond sq = cutoff
        margin = sigma * math.sqrt(cutoff) if math.isfinite(cutoff) else float(max(height, width))
        pid, fid = _candidate_pairs(tri, usable, height, width, margin)
    tri, tri_z = tri.reshape(-1, 3, 2)[fid], tri_z.reshape(-1, 3)[fid]  # (E, 3, 2), (E, 3)
    p = (pid % pixels).to(like.dtype)
    p = torch.stack([p % width, torch.div(p, width, rounding_mode="floor")], -1) + 0.5  # (E, 2) as (x, y)
    a, b, c = tri.unbind(1)
    area = _cross(a, b, c)
    w0, w1 = _cross(p, b, c) / area, _cross(a, p, c) / area
    bary = torch.stack([w0, w1, 1 - w0 - w1], -1)  # (E, 3)
    inside = (bary > 0).all(-1)
    dist = torch.minimum(torch.minimum(_edge_distance(p, a, b), _edge_distance(p, b, c)), _edge_distance(p, c, a))
    sq = dist.square() / sigma**2  # SoftRas's squared distance: a tail that vanishes within ~3 sigma
    keep = inside | (sq < cutoff)
    pid, fid, bary, inside, sq, tri_z = pid[keep], fid[keep], bary[keep], inside[keep], sq[keep], tri_z[keep]
    log_coverage = F.logsigmoid(torch.where(inside, sq, -sq))  # (E,); no underflow to log(0) when eps = 0
    coverage = log_coverage.exp()
    # depth and colour at the pixel: barycentrics clipped onto the triangle (SoftRas) and
    # perspective-correct (interpolate 1/z)
    clipped = bary.clamp(0, 1)
    clipped = clipped / clipped.sum(-1, keepdim=True).clamp_min(1e-12)
    inv_z = (clipped / tri_z).sum(-1)
    depth = 1 / inv_z
    persp = clipped / tri_z / inv_z[..., None]
    color = (persp[..., None] * colors[faces[fid % faces.shape[0]]]).sum(1)  # (E, 3)
    # aggregation per pixel: a softmax over its faces' log-coverage plus normalised inverse depth
    # ([0, 1], 1 nearest) / gamma, with the background's logit beside them
    logits = log_coverage + (far - depth) / (far - near) / gamma
    bg_logit = 1e-3 / gamma
    total = views * pixels
    with torch.no_grad():  # the softmax's shift: any per-pixel constant gives the same weights
        shift = torch.full((total,), bg_logit, dtype=like.dtype, device=like.device)
        shift = shift.scatter_reduce(0, pid, logits, "amax")
    ex = torch.exp(logits - shift[pid])
    ex_bg = torch.exp(bg_logit - shift)
    denom = ex_bg + like.new_zeros(total).index_add(0, pid, ex)
    weights = ex / denom[pid]
    rgb = like.new_zeros(total, 3).index_add(0, pid, weights[:, None] * color) + (ex_bg / denom)[:, None] * background
    alpha = -torch.expm1(like.new_zeros(total).index_add(0, pid, torch.log1p(-coverage.clamp(max=1 - 1e-6))))
    weight_sum = like.new_zeros(total).index_add(0, pid, weights)
    d = like.new_zeros(total).index_add(0, pid, weights * depth) / weight_sum.clamp_min(1e-12)
    return {"rgb": rgb.reshape(views, height, width, 3).permute(0, 3, 1, 2),
            "alpha": alpha.reshape(views, 1, height, width), "depth": d.reshape(views, 1, height, width)}


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
