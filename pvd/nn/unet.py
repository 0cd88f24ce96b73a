"""The point-voxel U-Net denoiser (PVD's PVCNN2 generation network) and its presets.

``model(x_t (B, N, 3), t (B,), cond: Condition | None) -> (B, N, 3)``. The encoder levels are
PVConvs followed by a set abstraction (FPS -> ball query -> MLP -> max), the decoder levels a
feature propagation (3-NN interpolation + skip -> MLP) followed by PVConvs; a global self-
attention sits at the bottleneck. As in the reference, a 64-channel time embedding is
concatenated to the input of every encoder level but the first and to every decoder input.
Conditional configs add adaptive GroupNorm everywhere (scale and shift from time + condition),
optional cross-attention to image tokens at the coarse levels, and for a cascade stage the
coarse cloud as extra input points (flagged by an extra input channel).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pvd.nn.condition import Condition
from pvd.nn.embeddings import ConditionConfig, ConditionEmbedding, TimeEmbedding
from pvd.nn.encoder import EncoderConfig, ImageEncoder
from pvd.nn.pvconv import CrossAttention, FeaturePropagation, PVConv, SelfAttention, SetAbstraction, SharedMLP


@dataclass(frozen=True)
class DownLevel:
    """Encoder level: ``num_convs`` PVConv(conv_channels, resolution), then set abstraction."""

    conv_channels: int  # 0: no PVConv at this level
    num_convs: int
    resolution: int
    num_centers: int
    radius: float
    num_neighbors: int
    mlp: tuple[int, ...]
    attention: bool = False  # voxel self-attention in the level's first PVConv


@dataclass(frozen=True)
class UpLevel:
    """Decoder level: feature propagation MLP, then ``num_convs`` PVConv(conv_channels, resolution)."""

    mlp: tuple[int, ...]
    conv_channels: int
    num_convs: int
    resolution: int


@dataclass
class UNetConfig:
    """A PVD-style U-Net. ``preset(name)`` gives the named ones."""

    down: tuple[DownLevel, ...]
    up: tuple[UpLevel, ...]  # one per down level, coarsest first
    time_dim: int = 64  # time embedding concatenated to level inputs (the reference's); 0: none
    global_attention: bool = True  # self-attention over the bottleneck centres
    scaled_attention: bool = False  # the reference omits 1/sqrt(C) in its attention
    se: bool = True  # squeeze-excitation in every PVConv
    dropout: float = 0.1
    head_channels: int = 128
    condition: ConditionConfig | None = None  # None: unconditional (cond must be None)
    encoder: EncoderConfig | None = None  # a trainable image encoder (needs condition.image_dim)

    def __post_init__(self) -> None:
        if len(self.up) != len(self.down):
            raise ValueError(f"{len(self.down)} down levels need as many up levels, got {len(self.up)}")
        if self.time_dim <= 0 and self.condition is None:
            raise ValueError("an unconditional network needs time_dim > 0: it would not see t otherwise")
        if self.encoder is not None and (self.condition is None or self.condition.image_dim != self.encoder.dim):
            raise ValueError("an image encoder needs condition.image_dim equal to encoder.dim")
        if self.encoder is not None and self.condition.token_dim not in (0, self.encoder.dim):
            raise ValueError("with an image encoder, condition.token_dim must be 0 or encoder.dim")


class PVDUNet(nn.Module):
    """The denoiser: ``forward(x_t (B, N, 3), t (B,), cond) -> (B, N, 3)``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        cc = config.condition
        e = cc.embed_dim if cc is not None else 0
        td = config.time_dim
        # Flag channel: 1 on the extra input points (the cascade's coarse cloud or the shape estimate).
        extra = 1 if cc is not None and (cc.cascade or cc.shape_points) else 0
        # Dropped samples (guidance's null) see this cloud instead of their image's shape estimate.
        self.null_shape = nn.Parameter(torch.zeros(cc.shape_points, 3)) if cc is not None and cc.shape_points else None
        pv = dict(scaled_attention=config.scaled_attention, dropout=config.dropout, se=config.se, emb_dim=e)

        self.time = TimeEmbedding(td) if td else None
        self.down = nn.ModuleList()
        skip_channels = [extra]
        channels = 3 + extra
        for i, lv in enumerate(config.down):
            cin = channels + (td if i > 0 else 0)
            convs = nn.ModuleList()
            for j in range(lv.num_convs):
                convs.append(PVConv(cin, lv.conv_channels, lv.resolution, attention=lv.attention and j == 0, **pv))
                cin = lv.conv_channels
            sa = SetAbstraction(cin, lv.num_centers, lv.radius, lv.num_neighbors, lv.mlp, e)
            self.down.append(_Down(convs, sa))
            channels = sa.out_channels
            skip_channels.append(channels)
        skip_channels.pop()  # the bottleneck's output is no skip
        self.global_attention = SelfAttention(channels, config.scaled_attention) if config.global_attention else None

        self.up = nn.ModuleList()
        for i, lv in enumerate(config.up):
            fp = FeaturePropagation(channels + td + skip_channels[-1 - i], lv.mlp, e)
            cin = fp.out_channels
            convs = nn.ModuleList()
            for _ in range(lv.num_convs):
                convs.append(PVConv(cin, lv.conv_channels, lv.resolution, **pv))
                cin = lv.conv_channels
            self.up.append(_Up(fp, convs))
            channels = cin
        self.head = SharedMLP(channels, [config.head_channels], e)
        self.head_dropout = nn.Dropout(config.dropout)
        self.head_out = nn.Linear(config.head_channels, 3)

        self.embed = None
        self.cross = nn.ModuleList()
        if cc is not None:
            # Context tokens live in the bottleneck's width; cross-attention runs at the
            # bottleneck and after the first cross_attention_levels - 1 up levels.
            ctx_dim = self.down[-1].sa.out_channels
            self.embed = ConditionEmbedding(cc, ctx_dim)
            widths = [ctx_dim] + [u.out_channels for u in self.up][: max(cc.cross_attention_levels - 1, 0)]
            for w in widths[: cc.cross_attention_levels]:
                self.cross.append(CrossAttention(w, ctx_dim, cc.heads))
        self.encoder = ImageEncoder(config.encoder) if config.encoder is not None else None

    def condition(self, images: Tensor | None = None, embedding: Tensor | None = None, **fields) -> Condition:
        """Build a :class:`Condition`: ``images`` (B, 4, H, W) uint8 go through the image encoder
        (vector and tokens), or ``embedding`` (B, D) is a precomputed image vector; other keyword
        arguments are Condition fields (category, coarse, coarse_level, drop). A model that takes
        the shape estimate gets it from the encoder's shape head, detached: the head stays a
        Chamfer regressor, trained by its own loss."""
        if images is not None:
            if self.encoder is None:
                raise ValueError("this model has no image encoder: pass a precomputed embedding")
            vector, tokens = self.encoder(images)
            if self.config.condition.shape_points and "shape" not in fields:
                fields["shape"] = self.encoder.predict_shape(vector).detach()
            return Condition(image=vector, tokens=tokens if self.config.condition.token_dim else None, **fields)
        return Condition(image=embedding, **fields)

    def forward(self, x_t: Tensor, t: Tensor, cond: Condition | None = None) -> Tensor:
        """x_t: (B, N, 3); t: (B,) timesteps on the training scale (may be fractional).
        Returns (B, N, 3)."""
        b, n, _ = x_t.shape
        cc = self.config.condition
        if cc is None and cond is not None and cond.batch_size:
            raise ValueError("this network is unconditional: call it with cond=None")
        t = t.to(x_t.dtype)
        emb, context = self.embed(t, cond) if self.embed is not None else (None, None)
        temb = self.time(t) if self.time is not None else None

        coords, extra_points = x_t, None
        if cc is not None and cc.cascade:
            if cond is None or cond.coarse is None:
                raise ValueError("a cascade stage needs Condition.coarse")
            extra_points = cond.coarse.to(x_t.dtype)
        elif cc is not None and cc.shape_points:
            if cond is None or cond.shape is None:
                raise ValueError("this model needs Condition.shape (the image's shape estimate)")
            keep = ~cond.dropped()
            null = self.null_shape.to(x_t.dtype).expand(b, -1, -1)
            extra_points = torch.where(keep[:, None, None], cond.shape.to(x_t.dtype), null)
        if extra_points is not None:
            coords = torch.cat([x_t, extra_points], dim=1)
            flag = torch.cat([x_t.new_zeros(b, 1, n), x_t.new_ones(b, 1, extra_points.shape[1])], dim=2)
            features = torch.cat([coords.transpose(1, 2), flag], dim=1)
            skips = [(flag, coords)]
        else:
            features = x_t.transpose(1, 2)
            skips = [(None, coords)]

        for i, level in enumerate(self.down):
            if i > 0:
                skips.append((features, coords))
                features = _with_time(features, temb)
            features, coords = level(features, coords, emb)
        if self.global_attention is not None:
            features = self.global_attention(features)
        cross = iter(self.cross)  # at the bottleneck, then after the first up levels
        if (attn := next(cross, None)) is not None:
            features = attn(features, context)
        for i, level in enumerate(self.up):
            skip, skip_coords = skips[-1 - i]
            features = level(skip_coords, coords, _with_time(features, temb), skip, emb)
            coords = skip_coords
            if (attn := next(cross, None)) is not None:
                features = attn(features, context)
        h = self.head_dropout(self.head(features, emb))
        out = self.head_out(h.movedim(1, -1))  # (B, N_total, 3)
        return out[:, :n]


def _with_time(features: Tensor, temb: Tensor | None) -> Tensor:
    """Concatenate the time embedding (B, T) to every point's features (B, C, N)."""
    if temb is None:
        return features
    return torch.cat([features, temb.to(features.dtype)[:, :, None].expand(-1, -1, features.shape[2])], dim=1)


class _Down(nn.Module):
    def __init__(self, convs: nn.ModuleList, sa: SetAbstraction):
        super().__init__()
        self.convs = convs
        self.sa = sa

    def forward(self, features: Tensor, coords: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        for conv in self.convs:
            features = conv(features, coords, emb)
        return self.sa(features, coords, emb)


class _Up(nn.Module):
    def __init__(self, fp: FeaturePropagation, convs: nn.ModuleList):
        super().__init__()
        self.fp = fp
        self.convs = convs
        self.out_channels = convs[-1].conv2.out_channels if len(convs) else fp.out_channels

    def forward(self, points: Tensor, centers: Tensor, center_features: Tensor, skip: Tensor | None,
                emb: Tensor | None) -> Tensor:
        features = self.fp(points, centers, center_features, skip, emb)
        for conv in self.convs:
            features = conv(features, points, emb)
        return features


# ---- presets ----

def _paper() -> UNetConfig:
    # The reference's PVCNN2 for generation (train_generation.py), as its builder actually
    # builds it: the config asks for 3 PVConvs at levels 2 and 3 but only the first is created,
    # and no decoder PVConv gets voxel attention.
    return UNetConfig(
        down=(
            DownLevel(32, 2, 32, 1024, 0.1, 32, (32, 64)),
            DownLevel(64, 1, 16, 256, 0.2, 32, (64, 128), attention=True),
            DownLevel(128, 1, 8, 64, 0.4, 32, (128, 256)),
            DownLevel(0, 0, 0, 16, 0.8, 32, (256, 256, 512)),
        ),
        up=(
            UpLevel((256, 256), 256, 3, 8),
            UpLevel((256, 256), 256, 3, 8),
            UpLevel((256, 128), 128, 2, 16),
            UpLevel((128, 128, 64), 64, 2, 32),
        ),
    )


def _paper_cond() -> UNetConfig:
    enc = EncoderConfig(pool_grid=4)  # where parts are in the image, as cpu-2048's encoder
    return dataclasses.replace(_paper(), encoder=enc, condition=ConditionConfig(
        embed_dim=256, image_dim=enc.dim, token_dim=enc.dim, cross_attention_levels=2))


def _small() -> UNetConfig:
    enc = EncoderConfig(widths=(16, 32, 64, 128), dim=128)
    return UNetConfig(
        down=(
            DownLevel(16, 1, 16, 512, 0.15, 16, (16, 32)),
            DownLevel(32, 1, 8, 128, 0.3, 16, (32, 64)),
            DownLevel(0, 0, 0, 32, 0.6, 16, (64, 128)),
        ),
        up=(
            UpLevel((128, 64), 64, 1, 8),
            UpLevel((64, 64), 32, 1, 8),
            UpLevel((32, 32), 32, 1, 16),
        ),
        time_dim=32, head_channels=64, encoder=enc,
        condition=ConditionConfig(embed_dim=128, image_dim=enc.dim, token_dim=enc.dim, cross_attention_levels=1),
    )


def _cpu_512() -> UNetConfig:
    # 512 points on a CPU: coarse voxel grids (8^3, 4^3) and no dropout, about twice the training
    # throughput of ``small`` for a run of minutes (the quickstart's network before 2048 points).
    enc = EncoderConfig(widths=(16, 32, 64, 128), dim=128, blocks=1)
    return UNetConfig(
        down=(
            DownLevel(32, 1, 8, 128, 0.25, 16, (32, 64)),
            DownLevel(64, 1, 4, 32, 0.5, 16, (64, 128)),
            DownLevel(0, 0, 0, 8, 1.0, 8, (128, 256)),
        ),
        up=(
            UpLevel((256, 128), 128, 1, 4),
            UpLevel((128, 64), 64, 1, 4),
            UpLevel((64, 32), 32, 1, 8),
        ),
        time_dim=32, head_channels=64, dropout=0.0, encoder=enc,
        condition=ConditionConfig(embed_dim=128, image_dim=enc.dim, token_dim=enc.dim, cross_attention_levels=2, heads=4),
    )


def _cpu_2048() -> UNetConfig:
    # ``cpu-512`` for 2048 points (the quickstart's network): a 16^3 first voxel level (16 channels,
    # to keep its cost) where cpu-512 has 8^3, for the surface detail the hierarchy's refiner adds.
    # A CPU training step (batch 32, 2048 points) costs 1.2x cpu-512's (tests/benchmarks/unet_speed.py
    # --presets cpu-512 cpu-2048 --batch 32; the measurement log has the numbers).
    # Its encoder's vector reads a 4x4 grid of the features instead of their mean: where parts are
    # in the image (the stand-alone regressor's val CD 90 -> 49 x 1e-3, the measurement log).
    q = _cpu_512()
    return dataclasses.replace(
        q,
        down=(DownLevel(16, 1, 16, 128, 0.2, 16, (32, 64)),) + q.down[1:],
        up=q.up[:-1] + (UpLevel((64, 32), 16, 1, 16),),
        encoder=dataclasses.replace(q.encoder, pool_grid=4),
    )


def _tiny() -> UNetConfig:
    enc = EncoderConfig(widths=(8, 16), dim=16, blocks=1)
    return UNetConfig(
        down=(
            DownLevel(8, 1, 4, 32, 0.4, 8, (8, 16)),
            DownLevel(0, 0, 0, 8, 0.8, 8, (16, 16), attention=False),
        ),
        up=(
            UpLevel((16,), 16, 1, 4),
            UpLevel((16, 8), 8, 1, 4),
        ),
        time_dim=8, head_channels=16, encoder=enc,
        condition=ConditionConfig(embed_dim=16, image_dim=enc.dim, token_dim=enc.dim, num_categories=5,
                                  cross_attention_levels=2, heads=2),
    )


PRESETS = {"pvd-paper": _paper, "pvd-paper-cond": _paper_cond, "small": _small, "cpu-512": _cpu_512, "cpu-2048": _cpu_2048,
           "tiny": _tiny}


def preset(name: str) -> UNetConfig:
    """The named config: ``pvd-paper`` (the reference, unconditional), ``pvd-paper-cond`` (the same
    with image conditioning), ``small`` (CPU training in minutes), ``cpu-512`` (512 points, coarse voxels),
    ``cpu-2048`` (the quickstart's: cpu-512 with a finer first voxel level for 2048 points),
    ``tiny`` (tests)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
