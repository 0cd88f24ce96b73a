"""Point-voxel building blocks (PVCNN / PVD): shared MLP, PVConv, set abstraction, feature
propagation, self- and cross-attention, squeeze-excitation.

Every block takes an optional embedding ``emb`` (B, E): when built with ``emb_dim > 0`` its
GroupNorms are adaptive (scale and shift from ``emb``); with ``emb_dim = 0`` they are the
reference's plain GroupNorm(8) and ``emb`` is ignored.

Point features are (B, C, N) and often views of channels-last (B, N, C) storage: the 1x1
"convolutions" are ``F.linear`` over the channel axis, which reads that storage in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvd import ops


class AdaGroupNorm(nn.Module):
    """GroupNorm(groups, C), plus ``x * (1 + scale) + shift`` from an embedding when emb_dim > 0.

    The modulation starts at zero, so a freshly built conditional block computes what the
    unconditional one does.
    """

    def __init__(self, channels: int, emb_dim: int = 0, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.modulation = nn.Linear(emb_dim, 2 * channels) if emb_dim else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """x: (B, C, *spatial) in any memory layout; emb: (B, E). Returns x's shape."""
        if x.dim() == 3:
            # A (B, C, N) view of (B, N, C) storage is a channels-last (B, C, N, 1) tensor:
            # GroupNorm's channels-last kernel then runs without a copy.
            y = self.norm(x.unsqueeze(-1)).squeeze(-1)
        else:
            y = self.norm(x)
        if self.modulation is None:
            return y
        scale, shift = self.modulation(emb).view(x.shape[0], 2, x.shape[1], *([1] * (x.dim() - 2))).unbind(1)
        return torch.addcmul(shift, y, 1 + scale)


def channel_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """A 1x1 convolution as a linear map over the channel axis: (B, C, *S) -> (B, C', *S).

    The result is a view of channels-last (B, *S, C') storage.
    """
    return layer(x.movedim(1, -1)).movedim(-1, 1)


class MLPLayer(nn.Module):
    """1x1 conv -> (adaptive) GroupNorm(8) -> Swish."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 0):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels)
        self.norm = AdaGroupNorm(out_channels, emb_dim)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return F.silu(self.norm(channel_linear(x, self.linear), emb))


class SharedMLP(nn.Module):
    """A stack of :class:`MLPLayer` s applied to every point (or every grouped neighbour)."""

    def __init__(self, in_channels: int, channels: Sequence[int], emb_dim: int = 0):
        super().__init__()
        dims = [in_channels, *channels]
        self.layers = nn.ModuleList(MLPLayer(i, o, emb_dim) for i, o in zip(dims[:-1], dims[1:]))
        self.out_channels = dims[-1]

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """x: (B, C_in, *S) -> (B, C_out, *S)."""
        for layer in self.layers:
            x = layer(x, emb)
        return x


class SqueezeExcitation(nn.Module):
    """Channel gates from the grid mean: Linear(C, C/8) -> ReLU -> Linear(C/8, C) -> sigmoid
    (no biases, as in the reference's SE3d with ``use_relu``)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, *spatial)."""
        gate = self.fc(x.flatten(2).mean(dim=2))
        return x * gate.view(*gate.shape, *([1] * (x.dim() - 2)))


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions with a residual, then GroupNorm + Swish.

    ``scaled=False`` reproduces the reference, which omits the 1/sqrt(C) factor.
    """

    def __init__(self, channels: int, scaled: bool = False, groups: int = 8):
        super().__init__()
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.scaled = scaled

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, *spatial) -> same shape."""
        h = x.flatten(2).transpose(1, 2)  # (B, L, C): contiguous for a channels-last grid
        scale = None if self.scaled else 1.0
        a = F.scaled_dot_product_attention(self.q(h)[:, None], self.k(h)[:, None], self.v(h)[:, None], scale=scale)[:, 0]
        y = (h + self.out(a)).transpose(1, 2).view(x.shape)  # back to (B, C, *spatial), channels-last
        return F.silu(self.norm(y))


class CrossAttention(nn.Module):
    """Points attend to context tokens: x + out(MHA(GN(x), tokens)), output projection zero-init."""

    def __init__(self, channels: int, context_dim: int, heads: int = 8, groups: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.heads = heads

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (B, C, N); context: (B, T, context_dim). Returns (B, C, N)."""
        b, c, n = x.shape
        h = self.heads
        q = self.q(self.norm(x).transpose(1, 2)).view(b, n, h, c // h).transpose(1, 2)
        k, v = self.kv(context).view(b, -1, 2, h, c // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return x + self.out(a).transpose(1, 2)


class PVConv(nn.Module):
    """Point-voxel convolution: a voxel branch and a point branch, summed.

    voxel: voxelize -> Conv3d k3 -> GN -> Swish -> Dropout -> Conv3d k3 -> GN -> Swish (or voxel
    self-attention) -> [squeeze-excitation] -> trilinear devoxelize; point: SharedMLP(in -> out).
    """

    def __init__(self, in_channels: int, out_channels: int, resolution: int, *, attention: bool = False,
                 scaled_attention: bool = False, dropout: float = 0.1, se: bool = True, emb_dim: int = 0,
                 normalize: bool = True, eps: float = 0.0):
        super().__init__()
        self.resolution = resolution
        self.normalize = normalize
        self.eps = eps
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm1 = AdaGroupNorm(out_channels, emb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.norm2 = AdaGroupNorm(out_channels, emb_dim)
        self.attention = SelfAttention(out_channels, scaled_attention) if attention else None
        self.se = SqueezeExcitation(out_channels) if se else None
        self.point = SharedMLP(in_channels, [out_channels], emb_dim)

    def forward(self, features: Tensor, coords: Tensor, emb: Tensor | None = None) -> Tensor:
        """features: (B, C_in, N); coords: (B, N, 3). Returns (B, C_out, N)."""
        r = self.resolution
        grid, norm_coords = ops.voxelize(features, coords, r, self.normalize, self.eps)
        v = self.dropout(F.silu(self.norm1(self.conv1(grid), emb)))
        v = self.norm2(self.conv2(v), emb)
        v = self.attention(v) if self.attention is not None else F.silu(v)
        if self.se is not None:
            v = self.se(v)
        return ops.devoxelize(v, norm_coords, r) + self.point(features, emb)


class SetAbstraction(nn.Module):
    """Furthest point sampling -> ball query -> group [xyz - centre, features] -> SharedMLP ->
    max over the neighbours."""

    def __init__(self, in_channels: int, num_centers: int, radius: float, num_neighbors: int,
                 channels: Sequence[int], emb_dim: int = 0):
        super().__init__()
        self.num_centers = num_centers
        self.radius = radius
        self.num_neighbors = num_neighbors
        self.mlp = SharedMLP(in_channels + 3, channels, emb_dim)
        self.out_channels = self.mlp.out_channels

    def forward(self, features: Tensor, coords: Tensor, emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """features: (B, C, N); coords: (B, N, 3). Returns (B, C_out, M) and centres (B, M, 3)."""
        b = coords.shape[0]
        idx = ops.furthest_point_sample(coords, self.num_centers)
        centers = coords[torch.arange(b, device=coords.device)[:, None], idx]  # (B, M, 3)
        neighbors = ops.ball_query(centers, coords, self.radius, self.num_neighbors)
        table = torch.cat([coords, features.transpose(1, 2)], dim=2)  # (B, N, 3 + C): one gather for both
        grouped = ops.group(table.transpose(1, 2), neighbors)  # (B, 3 + C, M, K)
        grouped[:, :3] -= centers.transpose(1, 2).unsqueeze(-1)  # neighbour offsets from their centre
        return self.mlp(grouped, emb).max(dim=-1).values, centers  # (max, not amax: its backward is a scatter)


class FeaturePropagation(nn.Module):
    """3-NN interpolation of coarse features onto the points -> concat skip features -> SharedMLP."""

    def __init__(self, in_channels: int, channels: Sequence[int], emb_dim: int = 0):
        super().__init__()
        self.mlp = SharedMLP(in_channels, channels, emb_dim)
        self.out_channels = self.mlp.out_channels

    def forward(self, points: Tensor, centers: Tensor, center_features: Tensor, extra: Tensor | None = None,
                emb: Tensor | None = None) -> Tensor:
        """points: (B, N, 3); centers: (B, M, 3); center_features: (B, C, M); extra: (B, C', N)
        concatenated after the interpolated features. Returns (B, C_out, N)."""
        h = ops.three_nn_interpolate(points, centers, center_features)
        if extra is not None and extra.shape[1]:
            h = torch.cat([h, extra], dim=1)
        return self.mlp(h, emb)
