"""The pvd-paper network against the reference PVD network, rebuilt here from its code's logic.

``reference_layout`` follows the reference's builders (``create_pointnet2_sa_components`` and
``create_pointnet2_fp_modules`` in model/pvcnn_generation.py, quirks included) to list its
state_dict keys and shapes; ``reference_forward`` runs the reference forward pass literally
(time embedding carried as a per-point tensor, grouped and interpolated like features) from
such a state_dict. Both are independent of pvd.nn, which must match them through the converter.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pvd import ops
from pvd.nn import DownLevel, PVDUNet, UNetConfig, UpLevel, preset
from pvd.nn.convert import convert_reference_state_dict, load_reference_checkpoint

PAPER_SA = [
    ((32, 2, 32), (1024, 0.1, 32, (32, 64))),
    ((64, 3, 16), (256, 0.2, 32, (64, 128))),
    ((128, 3, 8), (64, 0.4, 32, (128, 256))),
    (None, (16, 0.8, 32, (256, 256, 512))),
]
PAPER_FP = [
    ((256, 256), (256, 3, 8)),
    ((256, 256), (256, 3, 8)),
    ((256, 128), (128, 2, 16)),
    ((128, 128, 64), (64, 2, 32)),
]
# A reduced reference config with the same quirks (3 blocks asked at level 2, 1 built; voxel
# attention there) for the forward-pass comparison on few points.
TINY_SA = [
    ((8, 2, 4), (24, 0.6, 8, (8, 16))),
    ((16, 3, 4), (12, 0.9, 6, (16, 16))),
    (None, (4, 1.5, 4, (16, 32))),
]
TINY_FP = [
    ((16, 16), (16, 2, 4)),
    ((16, 16), (16, 1, 4)),
    ((16, 8), (8, 2, 4)),
]
TINY_OURS = UNetConfig(
    down=(
        DownLevel(8, 2, 4, 24, 0.6, 8, (8, 16)),
        DownLevel(16, 1, 4, 12, 0.9, 6, (16, 16), attention=True),
        DownLevel(0, 0, 0, 4, 1.5, 4, (16, 32)),
    ),
    up=(UpLevel((16, 16), 16, 2, 4), UpLevel((16, 16), 16, 1, 4), UpLevel((16, 8), 8, 2, 4)),
    time_dim=16,
)


def reference_layout(sa_blocks, fp_blocks, embed_dim):
    """(shapes: key -> shape, plan) of the reference PVCNN2 (extra_feature_channels=0, use_att=True)."""
    shapes, plan = {}, {"sa": [], "fp": []}

    def conv(p, cin, cout, dims):
        shapes[p + "weight"], shapes[p + "bias"] = (cout, cin) + (1,) * dims, (cout,)

    def gn(p, c):
        shapes[p + "weight"], shapes[p + "bias"] = (c,), (c,)

    def mlp(p, cin, channels, dims):
        for j, oc in enumerate(channels):
            conv(f"{p}layers.{3 * j}.", cin, oc, dims)
            gn(f"{p}layers.{3 * j + 1}.", oc)
            cin = oc

    def attention(p, c, dims):
        for name in ("q", "k", "v", "out"):
            conv(f"{p}{name}.", c, c, dims)
        gn(p + "norm.", c)

    def pvconv(p, cin, cout, att):
        shapes[p + "voxel_layers.0.weight"], shapes[p + "voxel_layers.0.bias"] = (cout, cin, 3, 3, 3), (cout,)
        gn(p + "voxel_layers.1.", cout)
        shapes[p + "voxel_layers.4.weight"], shapes[p + "voxel_layers.4.bias"] = (cout, cout, 3, 3, 3), (cout,)
        gn(p + "voxel_layers.5.", cout)
        if att:
            attention(p + "voxel_layers.6.", cout, 3)
        shapes[p + "voxel_layers.7.fc.0.weight"] = (cout // 8, cout)
        shapes[p + "voxel_layers.7.fc.2.weight"] = (cout, cout // 8)
        mlp(p + "point_features.", cin, [cout], 1)

    e = embed_dim
    shapes["embedf.0.weight"], shapes["embedf.0.bias"] = (e, e), (e,)
    shapes["embedf.2.weight"], shapes["embedf.2.bias"] = (e, e), (e,)
    in_channels, extra_feature_channels, sa_in = 3, 0, []
    for c, (conv_cfg, (m, radius, k_nb, mlp_channels)) in enumerate(sa_blocks):
        k, sa_in_level, modules = 0, in_channels, []
        sa_in.append(in_channels)
        if conv_cfg is not None:
            oc, num_blocks, r = conv_cfg
            for p in range(num_blocks):
                att = (c + 1) % 2 == 0 and p == 0
                if c == 0:
                    modules.append(("pv", in_channels, oc, r, att))
                elif k == 0:
                    modules.append(("pv", in_channels + e, oc, r, att))
                in_channels = oc
                k += 1
            extra_feature_channels = in_channels
        modules.append(("sa", extra_feature_channels + (e if k == 0 else 0), m, radius, k_nb, mlp_channels))
        for j, mod in enumerate(modules):
            p = f"sa_layers.{c}." + (f"{j}." if len(modules) > 1 else "")
            if mod[0] == "pv":
                pvconv(p, mod[1], mod[2], mod[4])
            else:
                mlp(p + "mlps.0.", mod[1] + 3, mlp_channels, 2)
        plan["sa"].append([(f"sa_layers.{c}." + (f"{j}." if len(modules) > 1 else ""), mod) for j, mod in enumerate(modules)])
        in_channels = extra_feature_channels = mlp_channels[-1]
        del sa_in_level
    attention("global_att.", in_channels, 1)
    sa_in[0] = 0
    for i, (fp_channels, (oc, num_blocks, r)) in enumerate(fp_blocks):
        modules = [("fp", in_channels + sa_in[-1 - i] + e, fp_channels)]
        in_channels = fp_channels[-1]
        for _ in range(num_blocks):
            modules.append(("pv", in_channels, oc, r, False))  # the reference never builds FP attention
            in_channels = oc
        for j, mod in enumerate(modules):
            p = f"fp_layers.{i}.{j}."
            if mod[0] == "fp":
                mlp(p + "mlp.", mod[1], mod[2], 1)
            else:
                pvconv(p, mod[1], mod[2], False)
        plan["fp"].append([(f"fp_layers.{i}.{j}.", mod) for j, mod in enumerate(modules)])
    mlp("classifier.0.", in_channels, [128], 1)
    conv("classifier.2.", 128, 3, 1)
    return shapes, plan


def fabricate(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=torch.float64) * 0.3 for k, s in shapes.items()}


def reference_forward(sd, plan, inputs, t, embed_dim):
    """The reference PVCNN2 forward, module by module. inputs: (B, 3, N); t: (B,)."""

    def swish(h):
        return h * torch.sigmoid(h)

    def gn(h, p):
        return F.group_norm(h, 8, sd[p + "weight"], sd[p + "bias"])

    def conv(h, p, **kw):
        w = sd[p + "weight"]
        return {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()](h, w, sd[p + "bias"], **kw)

    def shared_mlp(h, p):
        j = 0
        while f"{p}layers.{3 * j}.weight" in sd:
            h = swish(gn(conv(h, f"{p}layers.{3 * j}."), f"{p}layers.{3 * j + 1}."))
            j += 1
        return h

    def attention(x, p):
        b, c = x.shape[:2]
        q, k, v = (conv(x, f"{p}{n}.").reshape(b, c, -1) for n in "qkv")
        w = torch.softmax(q.permute(0, 2, 1) @ k, dim=-1)  # no 1/sqrt(C)
        h = conv((v @ w.permute(0, 2, 1)).reshape(x.shape), p + "out.")
        return swish(gn(h + x, p + "norm."))

    def pvconv(features, coords, p, r, att):
        grid, nc = ops.voxelize(features, coords.transpose(1, 2), r)
        v = swish(gn(conv(grid, p + "voxel_layers.0.", padding=1), p + "voxel_layers.1."))
        v = gn(conv(v, p + "voxel_layers.4.", padding=1), p + "voxel_layers.5.")
        v = attention(v, p + "voxel_layers.6.") if att else swish(v)
        s = v.mean(-1).mean(-1).mean(-1)
        s = torch.sigmoid(torch.relu(s @ sd[p + "voxel_layers.7.fc.0.weight"].T) @ sd[p + "voxel_layers.7.fc.2.weight"].T)
        v = v * s[:, :, None, None, None]
        return ops.devoxelize(v, nc, r) + shared_mlp(features, p + "point_features.")

    def gather(x, idx):  # (B, C, N), (B, M) -> (B, C, M)
        return torch.gather(x, 2, idx[:, None].expand(-1, x.shape[1], -1))

    half = embed_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    emb = t[:, None].double() * freqs[None]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    emb = F.linear(F.leaky_relu(F.linear(emb, sd["embedf.0.weight"], sd["embedf.0.bias"]), 0.1),
                   sd["embedf.2.weight"], sd["embedf.2.bias"])
    temb = emb[:, :, None].expand(-1, -1, inputs.shape[-1])

    coords, features = inputs[:, :3], inputs
    coords_list, in_features_list = [], []
    for i, level in enumerate(plan["sa"]):
        in_features_list.append(features)
        coords_list.append(coords)
        if i > 0:
            features = torch.cat([features, temb], dim=1)
        for p, mod in level:
            if mod[0] == "pv":
                features = pvconv(features, coords, p, mod[3], mod[4])
            else:
                _, _, m, radius, k, _ = mod
                centers = gather(coords, ops.furthest_point_sample(coords.transpose(1, 2), m))
                nb = ops.ball_query(centers.transpose(1, 2), coords.transpose(1, 2), radius, k)
                grouped = torch.cat([ops.group(coords, nb) - centers[..., None], ops.group(features, nb)], dim=1)
                features = shared_mlp(grouped, p + "mlps.0.").max(dim=-1).values
                temb = ops.group(temb, nb).max(dim=-1).values
                coords = centers
    in_features_list[0] = inputs[:, 3:]
    features = attention(features, "global_att.")
    for i, level in enumerate(plan["fp"]):
        points = coords_list[-1 - i]
        for p, mod in level:
            if mod[0] == "fp":
                h = torch.cat([features, temb], dim=1)
                interp = ops.three_nn_interpolate(points.transpose(1, 2), coords.transpose(1, 2), h)
                temb = ops.three_nn_interpolate(points.transpose(1, 2), coords.transpose(1, 2), temb)
                skip = in_features_list[-1 - i]
                if skip.shape[1]:
                    interp = torch.cat([interp, skip], dim=1)
                features = shared_mlp(interp, p + "mlp.")
                coords = points
            else:
                features = pvconv(features, coords, p, mod[3], mod[4])
    h = shared_mlp(features, "classifier.0.")
    return conv(h, "classifier.2.")


def test_reference_layout_has_27_649_987_parameters():
    shapes, _ = reference_layout(PAPER_SA, PAPER_FP, 64)
    assert sum(math.prod(s) for s in shapes.values()) == 27_649_987


def test_pvd_paper_has_27_649_987_parameters():
    model = PVDUNet(preset("pvd-paper"))
    assert sum(p.numel() for p in model.parameters()) == 27_649_987


def test_converter_loads_a_fabricated_reference_checkpoint(tmp_path):
    shapes, _ = reference_layout(PAPER_SA, PAPER_FP, 64)
    state = {"model.module." + k: v.float() for k, v in fabricate(shapes).items()}
    path = tmp_path / "epoch_1999.pth"
    torch.save({"epoch": 1999, "model_state": state, "optimizer_state": {}}, path)
    model = load_reference_checkpoint(path)
    ours = model.state_dict()
    # Every tensor arrived, reshaped where a 1x1 conv became a Linear.
    torch.testing.assert_close(ours["down.1.convs.0.attention.q.weight"],
                               state["model.module.sa_layers.1.0.voxel_layers.6.q.weight"].view(64, 64))
    torch.testing.assert_close(ours["up.3.fp.mlp.layers.2.norm.norm.bias"],
                               state["model.module.fp_layers.3.0.mlp.layers.7.bias"])
    torch.testing.assert_close(ours["head_out.weight"], state["model.module.classifier.2.weight"].view(3, 128))
    assert sum(v.numel() for v in state.values()) == sum(v.numel() for v in ours.values())


def test_converter_rejects_unknown_and_misshapen_keys():
    model = PVDUNet(TINY_OURS)
    shapes, _ = reference_layout(TINY_SA, TINY_FP, 16)
    state = fabricate(shapes)
    with pytest.raises(KeyError, match="nonsense"):
        convert_reference_state_dict({**state, "nonsense.weight": torch.zeros(1)}, model)
    bad = dict(state)
    bad["embedf.0.weight"] = torch.zeros(16, 15)
    with pytest.raises(ValueError, match="embedf"):
        convert_reference_state_dict(bad, model)
    missing = dict(state)
    del missing["classifier.2.bias"]
    with pytest.raises(RuntimeError, match="head_out.bias"):
        model.load_state_dict(convert_reference_state_dict(missing, model))


def test_converted_network_computes_the_reference_forward():
    """Same weights, same input: our network equals the literal reference forward pass."""
    shapes, plan = reference_layout(TINY_SA, TINY_FP, 16)
    assert len(plan["sa"][1]) == 2  # the quirk: one PVConv built where the config asks for three
    sd = fabricate(shapes, seed=1)
    model = PVDUNet(TINY_OURS).double().eval()
    model.load_state_dict(convert_reference_state_dict(sd, model))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([3.0, 870.0], dtype=torch.float64)
    with torch.no_grad():
        ours = model(x, t, None)
        ref = reference_forward(sd, plan, x.transpose(1, 2), t, 16).transpose(1, 2)
    assert ref.abs().mean() > 1e-3
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9)
