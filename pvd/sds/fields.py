"""The three representations lifting can optimise, behind one interface (``RadianceField``):

- ``voxel``: the dense grid of :class:`pvd.sds.volume.VoxelField` (DVGO / SJC): fast, regular,
  memory cubic in the resolution;
- ``nerf``: a coordinate network (NeRF): a small MLP on a multi-resolution dense feature-grid
  encoding (Instant-NGP's levels without the hash; the levels' sizes bound its memory) or on
  NeRF's frequency encoding, volume-rendered by the same renderer as the grid, which skips the
  samples in cells its occupancy grid marks empty (Instant-NGP's empty-space skipping);
- ``points``: differentiable points, isotropic 3D Gaussians splatted front to back (3D Gaussian
  splatting's compositing with a screen-space isotropic footprint): memory linear in the count.

All three share the density units of the voxel field (optical depth per cell of the
``FieldConfig.resolution`` grid), start from the same density blob, and give an opacity grid
at that resolution for marching cubes and the failure flags, so that one optimisation loop,
one set of losses and one budget serve every representation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvd.sds import volume
from pvd.sds.volume import FieldConfig, VoxelField, blob_raw, cell_centres

REPRESENTATIONS = ("voxel", "nerf", "points")


class RadianceField(Protocol):
    """What the lifting loop needs from a representation (an ``nn.Module``)."""

    bound: float  # the object lives in [-bound, bound]^3

    def render(self, intrinsics: Tensor, extrinsics: Tensor, height: int, width: int, *, num_samples: int = 64,
               generator: torch.Generator | None = None, normals: bool = False) -> dict[str, Tensor]:
        """B views: rgb (B, 3, H, W) on white, alpha and depth (B, 1, H, W); with ``normals`` also
        normal (B, 3, H, W) and orientation (B, 1, H, W) (see :func:`pvd.sds.volume.render`)."""
        ...

    def opacity_grid(self) -> Tensor:
        """(R, R, R) opacity in [0, 1] at the cell centres of the FieldConfig grid."""
        ...

    def density_grid(self) -> Tensor:
        """(R, R, R) density sigma at the cell centres (1/world units)."""
        ...

    def init_blob(self, radius: float, depth: float) -> None:
        """Start as the density blob of :func:`pvd.sds.volume.blob_raw`."""
        ...

    def init_occupancy(self, occupancy: Tensor, depth: float) -> None:
        """Start opaque (optical depth ``depth`` per cell) in the cells where ``occupancy``
        ((R, R, R) bool over the FieldConfig grid) is set and as the faint fog elsewhere."""
        ...


@dataclass
class NerfConfig:
    """The coordinate network of ``representation=nerf``."""

    encoding: str = "grid"  # grid: multi-resolution dense feature grids | frequency: NeRF's sin/cos encoding
    levels: tuple[int, ...] = (8, 16, 32, 64)  # grid encoding: cells per side of each level
    features: int = 4  # grid encoding: features per level
    frequencies: int = 6  # frequency encoding: octaves (NeRF uses 10 for positions)
    hidden: int = 64
    layers: int = 2  # hidden layers
    # Empty-space skipping (Instant-NGP's occupancy grid): every ``occupancy_every`` iterations the
    # FieldConfig grid's cells are marked where their opacity exceeds ``occupancy_threshold``
    # (dilated by a cell, so surfaces can grow), and rendering queries the network only at samples
    # in marked cells; the rest count as empty. The threshold sits below the start's fog (0.0067
    # per cell), so a cell is skipped only once the losses have emptied it. 0: query every sample.
    occupancy_every: int = 16
    occupancy_threshold: float = 1e-3

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        if self.encoding not in ("grid", "frequency"):
            raise ValueError(f"nerf.encoding must be grid or frequency, got {self.encoding!r}")
        if not self.levels or min(self.levels) < 2 or self.features < 1 or self.frequencies < 1:
            raise ValueError("nerf needs levels >= 2, features >= 1 and frequencies >= 1")
        if self.hidden < 1 or self.layers < 1:
            raise ValueError("nerf needs hidden >= 1 and layers >= 1")
        if self.occupancy_every < 0 or not 0 <= self.occupancy_threshold < 1:
            raise ValueError("nerf needs occupancy_every >= 0 and occupancy_threshold in [0, 1)")


@dataclass
class PointsConfig:
    """The Gaussians of ``representation=points``."""

    count: int = 2048
    scale: float = 0.03  # initial standard deviation (world units); each point learns its own
    init_opacity: float = 0.5
    # A Gaussian reaches the pixels within cutoff x its screen-space deviation (3D Gaussian
    # splatting truncates at 3; at 4 the dropped tail is exp(-8) = 3e-4 of its opacity), and
    # pixels gather only the Gaussians whose reach overlaps their tile x tile block.
    cutoff: float = 4.0
    tile: int = 8
    # Adam's step on the centres (world units; None: DistillConfig.lr like the other parameters).
    # Adam moves every centre by about lr per step whatever the gradient's size, so the grids' 0.05
    # makes the points jitter by 5% of the cube each step: a blur. 0.005 on 6 val shapes: CD 16.2
    # -> 5.8 x1e-3, F@1% 0.089 -> 0.160 (tests/benchmarks/README.md; 3D Gaussian splatting uses
    # 1.6e-4 x the scene's extent over 30k steps, we have 800)
    centre_lr: float | None = 0.005

    def __post_init__(self) -> None:
        if self.count < 1 or not self.scale > 0 or not 0 < self.init_opacity < 1:
            raise ValueError("points need count >= 1, scale > 0 and init_opacity in (0, 1)")
        if not self.cutoff > 0 or self.tile < 1:
            raise ValueError("points need cutoff > 0 and tile >= 1")
        if self.centre_lr is not None and not self.centre_lr > 0:
            raise ValueError("points need centre_lr > 0 (or None: the field's lr)")


@dataclass
class Representation:
    """Which representation, and its options (``DistillConfig.representation``)."""

    kind: str = "voxel"  # voxel | nerf | points
    nerf: NerfConfig = field(default_factory=NerfConfig)
    points: PointsConfig = field(default_factory=PointsConfig)

    def __post_init__(self) -> None:
        if self.kind not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {', '.join(REPRESENTATIONS)}, got {self.kind!r}")


def make_field(config: FieldConfig, representation: Representation | None = None) -> nn.Module:
    """A fresh field of ``representation.kind`` (voxel by default) over ``config``'s cube."""
    kind = (representation or Representation()).kind
    if kind == "voxel":
        return VoxelField(config)
    if kind == "nerf":
        return NerfField(config, representation.nerf)
    return GaussianPoints(config, representation.points)


# ---- the coordinate network -----------------------------------------------------------------

class NerfField(nn.Module):
    """A coordinate MLP: (x, y, z) -> (raw density, raw colour), activated as the voxel field's
    are, plus the density blob as a fixed additive raw term (DreamFusion's blob), so that a
    fresh network (zero last layer) is exactly the voxel field's starting ball."""

    def __init__(self, config: FieldConfig, nerf: NerfConfig | None = None):
        super().__init__()
        self.config, self.nerf = config, nerf or NerfConfig()
        n = self.nerf
        if n.encoding == "grid":
            self.grids = nn.ParameterList(nn.Parameter(torch.randn(1, n.features, r, r, r) * 1e-2) for r in n.levels)
            width = n.features * len(n.levels) + 3
        else:
            self.grids = nn.ParameterList()
            width = 3 + 6 * n.frequencies
        layers: list[nn.Module] = []
        for _ in range(n.layers):
            layers += [nn.Linear(width, n.hidden), nn.SiLU()]
            width = n.hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 4))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.blob = (0.0, 1.0)  # (radius, depth): none until init_blob
        # (1, 1, R, R, R) fixed raw density: init_occupancy's start; saved with the blob as extra state
        self.register_buffer("start_raw", None, persistent=False)
        # (R, R, R) bool over the FieldConfig grid, None until refresh_occupancy: query everything
        self.register_buffer("occupancy", None, persistent=False)

    bound = property(lambda self: self.config.bound)
    voxel_size = property(lambda self: 2.0 * self.config.bound / self.config.resolution)
    cell_depth = VoxelField.cell_depth

    def init_blob(self, radius: float, depth: float) -> None:
        self.blob, self.start_raw = (radius, depth), None

    def init_occupancy(self, occupancy: Tensor, depth: float) -> None:
        """The occupancy as a fixed raw grid, trilinearly interpolated and added as the blob is."""
        self.blob = (0.0, 1.0)
        self.start_raw = volume.occupancy_raw(self, occupancy, depth).to(self.density)[None, None]

    def get_extra_state(self) -> dict:
        """The fixed start (blob or occupancy grid) lives outside the parameters: state_dict keeps it."""
        return {"blob": [float(x) for x in self.blob], "start_raw": self.start_raw}

    def set_extra_state(self, state: dict) -> None:
        self.blob = tuple(state["blob"])
        self.start_raw = None if state["start_raw"] is None else state["start_raw"].to(self.density)

    def _encode(self, p: Tensor) -> Tensor:
        x = p / self.config.bound  # [-1, 1] inside the cube
        if self.nerf.encoding == "grid":
            grid = x.flip(-1).view(1, -1, 1, 1, 3)  # grid_sample reads (z, y, x)
            feats = [F.grid_sample(g, grid, mode="bilinear", padding_mode="border", align_corners=False).view(g.shape[1], -1).t()
                     for g in self.grids]
            return torch.cat([x, *feats], -1)
        freqs = 2.0 ** torch.arange(self.nerf.frequencies, dtype=p.dtype, device=p.device) * math.pi
        angles = (x[:, :, None] * freqs).flatten(1)
        return torch.cat([x, angles.sin(), angles.cos()], -1)

    def _raw(self, p: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mlp(self._encode(p))
        radius, depth = self.blob
        start = blob_raw(self, p, radius, depth) if radius > 0 else 0.0
        if self.start_raw is not None:
            grid = (p / self.config.bound).flip(-1).view(1, -1, 1, 1, 3)
            start = F.grid_sample(self.start_raw, grid, mode="bilinear", padding_mode="border", align_corners=False).view(-1)
        return out[:, 0] + start, out[:, 1:]

    def query(self, points: Tensor, normals: bool = False) -> tuple[Tensor, ...]:
        """As :meth:`VoxelField.query`; normals are -grad(raw density) by autograd (kept in the
        graph, so that normal losses reach the network)."""
        lead = points.shape[:-1]
        p = points.reshape(-1, 3).to(self.mlp[0].weight.dtype)
        if normals:
            with torch.enable_grad():
                p = p.detach().requires_grad_(True)
                raw, raw_rgb = self._raw(p)
                (grad,) = torch.autograd.grad(raw.sum(), p, create_graph=True)
        else:
            raw, raw_rgb = self._raw(p)
        inside = (p.abs() <= self.config.bound).all(-1)
        sigma = torch.where(inside, self.cell_depth(raw) / self.voxel_size, 0.0).view(lead)
        rgb = torch.sigmoid(raw_rgb).reshape(*lead, 3)
        if not normals:
            return sigma, rgb
        return sigma, rgb, (-F.normalize(grad, dim=-1, eps=1e-12)).reshape(*lead, 3)

    def render(self, intrinsics: Tensor, extrinsics: Tensor, height: int, width: int, **options) -> dict[str, Tensor]:
        return volume.render(self, intrinsics, extrinsics, height, width, **options)

    def refresh_occupancy(self, iteration: int) -> None:
        """At every ``occupancy_every``-th iteration (the lifting loop calls this before each
        step), mark the cells whose opacity exceeds the threshold, dilated by one cell."""
        every = self.nerf.occupancy_every
        if not every or iteration % every:
            return
        marked = (self.opacity_grid() > self.nerf.occupancy_threshold).float()[None, None]
        self.occupancy = F.max_pool3d(marked, 3, stride=1, padding=1)[0, 0] > 0

    def occupied(self, points: Tensor) -> Tensor | None:
        """(...) bool: whether world points (..., 3) lie in a marked cell (None: no grid yet, all do)."""
        if self.occupancy is None:
            return None
        r = self.occupancy.shape[0]
        cell = ((points / self.bound + 1) * (0.5 * r)).floor().long().clamp_(0, r - 1)
        return self.occupancy[cell[..., 0], cell[..., 1], cell[..., 2]]

    @property
    def density(self) -> Tensor:  # what volume.render reads the dtype and device from
        return self.mlp[-1].weight

    def _cells(self) -> Tensor:
        return cell_centres(self.config.resolution, self.bound).to(self.density).view(-1, 3)

    def density_grid(self) -> Tensor:
        r = self.config.resolution
        with torch.no_grad():
            return torch.cat([self.query(c)[0] for c in self._cells().split(65536)]).view(r, r, r)

    def opacity_grid(self) -> Tensor:
        return -torch.expm1(-self.density_grid() * self.voxel_size)


# ---- differentiable points ------------------------------------------------------------------

def splat_tiles(u: Tensor, v: Tensor, sigma: Tensor, opacity: Tensor, color: Tensor, depth: Tensor, visible: Tensor,
                height: int, width: int, tile: int, cutoff: float, background: float) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of B views' N screen-space Gaussians, sorted near first.

    u, v: (B, N) centres in pixels (pixel j's centre at j + 0.5); sigma: (B, N) deviations in
    pixels; opacity, depth: (B, N); color: (B, N, 3); visible: (B, N) bool. A Gaussian reaches
    the pixels closer than ``cutoff * sigma``; each tile x tile block of pixels composites only
    the Gaussians that reach it (padded to the largest block's count, in depth order), so the
    cost is pixels x Gaussians per block instead of pixels x N. Returns rgb (B, 3, H, W) over
    ``background``, alpha (B, H, W) and the weighted depth (B, H, W).
    """
    b, n = u.shape
    ty, tx = -(-height // tile), -(-width // tile)
    reach = cutoff * sigma
    first_x, last_x = ((u - reach) // tile).clamp(0, tx - 1), ((u + reach) // tile).clamp(0, tx - 1)
    first_y, last_y = ((v - reach) // tile).clamp(0, ty - 1), ((v + reach) // tile).clamp(0, ty - 1)
    seen = visible & (u + reach > 0) & (u - reach < width) & (v + reach > 0) & (v - reach < height)
    ix = torch.arange(tx, device=u.device, dtype=u.dtype)
    iy = torch.arange(ty, device=u.device, dtype=u.dtype)
    in_x = (first_x[:, None, :] <= ix[None, :, None]) & (ix[None, :, None] <= last_x[:, None, :])  # (B, tx, N)
    in_y = (first_y[:, None, :] <= iy[None, :, None]) & (iy[None, :, None] <= last_y[:, None, :])  # (B, ty, N)
    member = (in_y[:, :, None] & in_x[:, None] & seen[:, None, None]).reshape(b, ty * tx, n)  # (B, T, N)
    count = max(int(member.sum(-1).max()), 1)
    rank = torch.arange(n, device=u.device)
    # the members of each tile first, in their depth order (the input order), then the rest
    index = torch.where(member, rank, rank + n).topk(count, dim=-1, largest=False, sorted=True).indices  # (B, T, K)
    valid = member.gather(-1, index)
    pick = lambda x: torch.gather(x[:, None].expand(b, ty * tx, n), 2, index)  # noqa: E731
    ug, vg, sg, og, zg = pick(u), pick(v), pick(sigma), pick(opacity), pick(depth)
    cg = torch.gather(color[:, None].expand(b, ty * tx, n, 3), 2, index[..., None].expand(-1, -1, -1, 3))
    # pixel centres of every tile: (T, P)
    offs = torch.arange(tile, device=u.device, dtype=u.dtype) + 0.5
    px = (ix[:, None] * tile + offs[None]).reshape(1, tx, 1, tile).expand(ty, tx, tile, tile).reshape(ty * tx, tile * tile)
    py = (iy[:, None] * tile + offs[None]).reshape(ty, 1, tile, 1).expand(ty, tx, tile, tile).reshape(ty * tx, tile * tile)
    d2 = (px[None, :, :, None] - ug[:, :, None]) ** 2 + (py[None, :, :, None] - vg[:, :, None]) ** 2  # (B, T, P, K)
    s2 = sg[:, :, None] ** 2
    alpha = og[:, :, None] * torch.exp(-0.5 * d2 / s2) * ((d2 < cutoff ** 2 * s2) & valid[:, :, None])
    alpha = alpha.clamp(max=0.99)
    through = torch.cumprod(1 - alpha, dim=-1)
    weights = alpha * torch.cat([torch.ones_like(through[..., :1]), through[..., :-1]], -1)  # T_j alpha_j
    acc = weights.sum(-1)  # (B, T, P)
    rgb = torch.einsum("btpk,btkc->btpc", weights, cg) + (1 - acc)[..., None] * background
    z = torch.einsum("btpk,btk->btp", weights, zg)

    def image(x: Tensor) -> Tensor:  # (B, T, P, C) -> (B, C, H, W)
        c = x.shape[-1]
        x = x.reshape(b, ty, tx, tile, tile, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, ty * tile, tx * tile)
        return x[:, :, :height, :width]

    return image(rgb), image(acc[..., None])[:, 0], image(z[..., None])[:, 0]


class GaussianPoints(nn.Module):
    """``count`` isotropic 3D Gaussians (centre, log standard deviation, opacity logit, colour
    logit), rendered by splatting: each projects to a screen-space Gaussian of standard deviation
    ``s f / z`` pixels (f: the focal length, z: the centre's depth), and pixels composite the
    Gaussians front to back by centre depth: alpha_j = o_j exp(-|p - u_j|^2 / (2 s_j^2)),
    T_j = prod_{k<j} (1 - alpha_k), each Gaussian cut off at ``PointsConfig.cutoff`` deviations
    and gathered per pixel tile (:func:`splat_tiles`).
    """

    def __init__(self, config: FieldConfig, points: PointsConfig | None = None):
        super().__init__()
        self.config, self.points = config, points or PointsConfig()
        n = self.points.count
        self.centre = nn.Parameter(torch.zeros(n, 3))
        self.log_scale = nn.Parameter(torch.full((n,), math.log(self.points.scale)))
        self.opacity_logit = nn.Parameter(torch.full((n,), math.log(self.points.init_opacity / (1 - self.points.init_opacity))))
        self.color_logit = nn.Parameter(torch.zeros(n, 3))

    bound = property(lambda self: self.config.bound)

    def param_groups(self, lr: float) -> list[dict]:
        """Adam's groups: the centres at ``PointsConfig.centre_lr`` (when set), the rest at ``lr``."""
        rest = [self.log_scale, self.opacity_logit, self.color_logit]
        return [{"params": [self.centre], "lr": self.points.centre_lr or lr}, {"params": rest, "lr": lr}]

    def init_blob(self, radius: float, depth: float) -> None:
        """Centres uniform in the ball of ``radius`` (a fixed draw: the same ball every run)."""
        g = torch.Generator().manual_seed(0)
        n = self.points.count
        direction = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
        r = radius * torch.rand(n, 1, generator=g) ** (1 / 3)
        with torch.no_grad():
            self.centre.copy_((direction * r * 0.8).to(self.centre))  # inside the surface of the voxel blob

    def init_occupancy(self, occupancy: Tensor, depth: float) -> None:
        """Centres uniform in the occupied cells (a fixed draw); ``depth`` is unused (the points
        keep their initial opacity)."""
        occupancy = torch.as_tensor(occupancy, dtype=torch.bool)
        cells = cell_centres(occupancy.shape[0], self.bound)[occupancy]  # (M, 3)
        if not len(cells):
            raise ValueError("init_occupancy needs at least one occupied cell")
        g = torch.Generator().manual_seed(0)
        pick = torch.randint(len(cells), (self.points.count,), generator=g)
        jitter = (torch.rand(self.points.count, 3, generator=g) - 0.5) * (2 * self.bound / occupancy.shape[0])
        with torch.no_grad():
            self.centre.copy_((cells[pick] + jitter).to(self.centre))

    def render(self, intrinsics: Tensor, extrinsics: Tensor, height: int, width: int, *, num_samples: int = 64,
               generator: torch.Generator | None = None, normals: bool = False, background: float = 1.0) -> dict[str, Tensor]:
        """Splat B views (``num_samples`` and ``generator`` are unused: splatting takes no ray samples).
        With ``normals``: the normal map of the rendered depth (screen-space differences,
        pointing at the camera), and orientation 0, which a depth-derived normal cannot violate."""
        like = self.centre
        k = torch.as_tensor(intrinsics).to(like)
        e = torch.as_tensor(extrinsics).to(like)
        cam = torch.einsum("bij,nj->bni", e[:, :3, :3], self.centre) + e[:, None, :3, 3]  # (B, N, 3)
        z = cam[..., 2]
        front = z > 0.05
        zc = z.clamp(min=0.05)
        u = k[:, None, 0, 0] * cam[..., 0] / zc + k[:, None, 0, 2]
        v = k[:, None, 1, 1] * cam[..., 1] / zc + k[:, None, 1, 2]
        sigma_px = self.log_scale.exp()[None] * k[:, None, 0, 0] / zc  # (B, N)
        order = torch.argsort(z, dim=1)  # near first
        take = lambda x: torch.gather(x, 1, order)  # noqa: E731
        u, v, sigma_px, zs, front = take(u), take(v), take(sigma_px), take(z), take(front)
        opacity = torch.sigmoid(self.opacity_logit)[order] * front
        color = torch.sigmoid(self.color_logit)[order]  # (B, N, 3)
        rgb, acc, depth = splat_tiles(u, v, sigma_px, opacity, color, zs, front, height, width,
                                      self.points.tile, self.points.cutoff, background)
        out = {"rgb": rgb, "alpha": acc[:, None], "depth": depth[:, None]}
        if normals:
            out["normal"] = acc[:, None] * normals_from_depth(depth / acc.clamp(min=1e-6), k, e)
            out["orientation"] = torch.zeros_like(out["alpha"])
        return out

    def _opacity_at(self, points: Tensor) -> Tensor:
        """(M,) 1 - prod_j (1 - o_j exp(-|x - mu_j|^2 / (2 s_j^2))): the Gaussians' compositing at a point."""
        d2 = torch.cdist(points, self.centre).square()
        a = torch.sigmoid(self.opacity_logit) * torch.exp(-0.5 * d2 / self.log_scale.exp().square())
        return -torch.expm1(torch.log1p(-a.clamp(max=0.99)).sum(-1))

    def opacity_grid(self) -> Tensor:
        r = self.config.resolution
        cells = cell_centres(r, self.bound).to(self.centre).view(-1, 3)
        with torch.no_grad():
            return torch.cat([self._opacity_at(c) for c in cells.split(8192)]).view(r, r, r)

    def density_grid(self) -> Tensor:
        cell = 2.0 * self.bound / self.config.resolution
        return -torch.log1p(-self.opacity_grid().clamp(max=1 - 1e-6)) / cell


def normals_from_depth(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> Tensor:
    """World-frame unit normals (B, 3, H, W) of a camera-z depth map (B, H, W): the cross product
    of the back-projected surface's differences to the next pixel right and down (replicated at
    the last row and column), oriented towards the camera."""
    b, h, w = depth.shape
    cols = torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5
    rows = torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5
    k = intrinsics.to(depth)
    x = (cols[None, None, :] - k[:, None, None, 0, 2]) / k[:, None, None, 0, 0] * depth
    y = (rows[None, :, None] - k[:, None, None, 1, 2]) / k[:, None, None, 1, 1] * depth
    p = torch.stack([x, y, depth], -1)  # (B, H, W, 3) camera frame
    dx = torch.cat([p[:, :, 1:] - p[:, :, :-1], p[:, :, -1:] - p[:, :, -2:-1]], 2)
    dy = torch.cat([p[:, 1:] - p[:, :-1], p[:, -1:] - p[:, -2:-1]], 1)
    n = F.normalize(torch.cross(dy, dx, dim=-1), dim=-1, eps=1e-12)
    n = torch.where((n * p).sum(-1, keepdim=True) > 0, -n, n)  # towards the camera (at the origin)
    world = torch.einsum("bji,bhwj->bhwi", extrinsics.to(depth)[:, :3, :3], n)  # R^T n
    return world.permute(0, 3, 1, 2)
