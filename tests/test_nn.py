"""Blocks, the U-Net presets and conditioning."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pvd.nn import Condition, ConditionConfig, EncoderConfig, ImageEncoder, PVDUNet, preset
from pvd.nn.embeddings import timestep_embedding
from pvd.nn.pvconv import AdaGroupNorm, CrossAttention, PVConv, SelfAttention, SharedMLP, SqueezeExcitation


def params(model):
    return sum(p.numel() for p in model.parameters())


def randomize_zero_inits(model, seed=0):
    """Adaptive-norm modulations and cross-attention outputs start at zero (identity); a trained
    model's are not, so tests that look for the condition's effect perturb them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def tiny_inputs(b=3, n=96, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g).float()
    images = torch.randint(0, 256, (b, 4, size, size), generator=g, dtype=torch.uint8)
    category = torch.randint(0, 5, (b,), generator=g)
    return x, t, images, category


def select(cond, i):
    return Condition(**{f.name: getattr(cond, f.name)[i : i + 1] for f in dataclasses.fields(cond)
                        if getattr(cond, f.name) is not None})


# ---- blocks ----


def test_timestep_embedding_matches_the_reference_formula():
    t = torch.tensor([0.0, 1.0, 999.0, 12.5])
    emb = timestep_embedding(t, 64)
    f = torch.exp(torch.arange(32, dtype=torch.float64) * -(math.log(10000) / 31)).float()
    torch.testing.assert_close(emb, torch.cat([torch.sin(t[:, None] * f), torch.cos(t[:, None] * f)], dim=1))
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and (odd[:, -1] == 0).all()
    assert timestep_embedding(t.double(), 8).dtype == torch.float64


def test_adaptive_groupnorm_starts_as_groupnorm_and_modulates():
    x = torch.randn(2, 16, 5, 4)
    norm = AdaGroupNorm(16, emb_dim=6)
    emb = torch.randn(2, 6)
    torch.testing.assert_close(norm(x, emb), F.group_norm(x, 8, norm.norm.weight, norm.norm.bias))
    with torch.no_grad():
        norm.modulation.bias[:16] = 1.0  # scale + 1 = 2
        norm.modulation.bias[16:] = 0.5
    torch.testing.assert_close(norm(x, emb), 2 * F.group_norm(x, 8) + 0.5)


def test_groupnorm_on_channels_last_views_equals_contiguous():
    x = torch.randn(2, 10, 16)  # (B, N, C)
    norm = AdaGroupNorm(16)
    torch.testing.assert_close(norm(x.transpose(1, 2)), norm(x.transpose(1, 2).contiguous()))


def test_shared_mlp_is_a_per_point_conv_gn_swish():
    mlp = SharedMLP(5, [16, 8])
    x = torch.randn(2, 5, 7, 3)
    ref = x
    for layer in mlp.layers:
        w = layer.linear.weight[:, :, None, None]
        ref = F.silu(F.group_norm(F.conv2d(ref, w, layer.linear.bias), 8, layer.norm.norm.weight, layer.norm.norm.bias))
    torch.testing.assert_close(mlp(x), ref)
    assert mlp(torch.randn(2, 7, 5).transpose(1, 2)).shape == (2, 8, 7)


@pytest.mark.parametrize("scaled", [False, True])
def test_self_attention_matches_naive(scaled):
    att = SelfAttention(16, scaled=scaled)
    x = torch.randn(2, 16, 3, 3, 3)
    h = x.flatten(2)  # (B, C, L)
    q, k, v = (torch.einsum("oc,bcl->bol", m.weight, h) + m.bias[:, None] for m in (att.q, att.k, att.v))
    logits = q.transpose(1, 2) @ k * (16**-0.5 if scaled else 1.0)
    a = v @ torch.softmax(logits, dim=-1).transpose(1, 2)
    y = torch.einsum("oc,bcl->bol", att.out.weight, a) + att.out.bias[:, None] + h
    ref = F.silu(F.group_norm(y, 8, att.norm.weight, att.norm.bias)).view(x.shape)
    torch.testing.assert_close(att(x), ref, rtol=1e-4, atol=1e-5)


def test_squeeze_excitation_gates_channels():
    se = SqueezeExcitation(16)
    x = torch.randn(2, 16, 4, 4, 4)
    gate = torch.sigmoid(se.fc[2].weight @ torch.relu(se.fc[0].weight @ x.mean(dim=(2, 3, 4)).T)).T
    torch.testing.assert_close(se(x), x * gate[:, :, None, None, None])
    assert params(se) == 2 * 16 * 2  # no biases


def test_cross_attention_starts_as_identity_and_reads_the_context():
    att = CrossAttention(16, context_dim=12, heads=4)
    x, ctx = torch.randn(2, 16, 9), torch.randn(2, 5, 12)
    torch.testing.assert_close(att(x, ctx), x)
    randomize_zero_inits(att)
    assert not torch.allclose(att(x, ctx), att(x, ctx + 1))


def test_pvconv_shapes_and_gradients():
    torch.manual_seed(0)  # (an unlucky init can leave every ReLU of the 2-unit SE dead)
    conv = PVConv(6, 16, 4, attention=True, emb_dim=8)
    randomize_zero_inits(conv)
    f = torch.randn(2, 6, 40, requires_grad=True)
    coords = torch.randn(2, 40, 3, requires_grad=True)
    out = conv(f, coords, torch.randn(2, 8))
    assert out.shape == (2, 16, 40)
    out.square().sum().backward()
    assert f.grad.abs().sum() > 0 and coords.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())


# ---- presets ----


def test_pvd_paper_forward_backward_at_2048_points():
    torch.manual_seed(0)
    model = PVDUNet(preset("pvd-paper"))
    assert params(model) == 27_649_987
    x = torch.randn(1, 2048, 3)
    out = model(x, torch.tensor([500.0]), None)
    assert out.shape == (1, 2048, 3) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_presets_build_and_run():
    for name in ("small", "tiny"):
        model = PVDUNet(preset(name)).eval()
        n = 1024 if name == "small" else 96
        x, t, images, category = tiny_inputs(2, n, size=64 if name == "small" else 16)
        labels = dict(category=category) if model.config.condition.num_categories else {}
        with torch.no_grad():
            assert model(x, t, model.condition(images=images, **labels)).shape == (2, n, 3)
    cond = PVDUNet(preset("pvd-paper-cond")).eval()
    assert params(cond) > 27_649_987
    x, t, images, _ = tiny_inputs(1, 1024, size=64)
    with torch.no_grad():
        assert cond(x, t, cond.condition(images=images)).shape == (1, 1024, 3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("large")


def test_config_validation():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="up levels"):
        dataclasses.replace(cfg, up=cfg.up[:1])
    with pytest.raises(ValueError, match="time_dim"):
        dataclasses.replace(cfg, condition=None, encoder=None, time_dim=0)
    with pytest.raises(ValueError, match="image_dim"):
        dataclasses.replace(cfg, condition=dataclasses.replace(cfg.condition, image_dim=3))
    with pytest.raises(ValueError, match="token_dim"):
        ConditionConfig(cross_attention_levels=1)


def test_conditional_network_starts_as_its_unconditional_twin():
    """Adaptive norms and cross-attention start at identity: the unconditional weights give the
    unconditional function (so pvd-paper checkpoints can seed pvd-paper-cond)."""
    cond_cfg = preset("tiny")
    plain = PVDUNet(dataclasses.replace(cond_cfg, condition=None, encoder=None)).eval()
    model = PVDUNet(cond_cfg).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("embed.", "encoder.", "cross.")) or ".modulation." in k for k in missing)
    x, t, images, category = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, model.condition(images=images, category=category)), plain(x, t, None))


# ---- conditioning ----


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_zero_inits(PVDUNet(preset("tiny"))).eval()


def test_condition_changes_the_output(tiny):
    x, t, images, category = tiny_inputs()
    with torch.no_grad():
        base = tiny(x, t, tiny.condition(images=images, category=category))
        other_image = tiny(x, t, tiny.condition(images=images.roll(1, 0), category=category))
        other_label = tiny(x, t, tiny.condition(images=images, category=(category + 1) % 5))
        other_time = tiny(x, t + 100, tiny.condition(images=images, category=category))
    for other in (other_image, other_label, other_time):
        assert (base - other).abs().amax(dim=(1, 2)).min() > 1e-4


def test_dropped_samples_use_the_null_condition(tiny):
    x, t, images, category = tiny_inputs()
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        cond = tiny.condition(images=images, category=category, drop=drop)
        out = tiny(x, t, cond)
        swapped = tiny(x, t, tiny.condition(images=images.roll(1, 0), category=(category + 2) % 5, drop=drop))
        null = tiny(x, t, cond.null())
        none = tiny(x, t, None)
        kept = tiny(x, t, tiny.condition(images=images, category=category))
    torch.testing.assert_close(out[drop], swapped[drop])  # dropped: the image and label are ignored
    torch.testing.assert_close(out[drop], null[drop])
    torch.testing.assert_close(null, none)  # cond=None means the learned null for every sample
    torch.testing.assert_close(out[~drop], kept[~drop])
    assert not torch.allclose(out[~drop], swapped[~drop])
    assert not torch.allclose(null[~drop], kept[~drop])


def test_every_conditioning_layer_takes_part_when_every_sample_is_dropped():
    """DDP needs every parameter in the graph on every step: a local batch whose conditions are
    all dropped (1% of steps per process at cond_drop 0.1, local batch 2) must still run the image
    MLP and the token layers, contributing zero gradient."""
    torch.manual_seed(0)
    model = randomize_zero_inits(PVDUNet(preset("tiny")))
    x, t, images, category = tiny_inputs()
    cond = model.condition(images=images, category=category, drop=torch.ones(3, dtype=torch.bool))
    model(x, t, cond).square().mean().backward()
    for layer in (model.embed.image, model.embed.tokens):
        for name, p in layer.named_parameters():
            assert p.grad is not None, f"{name} left out of the graph"
            assert p.grad.abs().max() == 0  # dropped: the null is used, the layer only takes part
    assert model.embed.null_image.grad.abs().sum() > 0


def test_a_missing_field_is_refused_unless_every_sample_is_dropped(tiny):
    x, t, images, category = tiny_inputs()
    with torch.no_grad():
        full = tiny.condition(images=images, category=category)
        some_dropped = dataclasses.replace(full, image=None, tokens=None, drop=torch.tensor([True, False, True]))
        with pytest.raises(ValueError, match="image"):
            tiny(x, t, some_dropped)
        all_dropped = dataclasses.replace(full, image=None, tokens=None, category=None, drop=torch.ones(3, dtype=torch.bool))
        torch.testing.assert_close(tiny(x, t, all_dropped), tiny(x, t, full.null()))


def test_eval_output_of_a_shape_does_not_depend_on_its_batch(tiny):
    # float64, so that a batch-size-dependent summation order cannot hide a real dependence.
    model = copy.deepcopy(tiny).double()
    x, t, images, category = tiny_inputs(4)
    x, t = x.double(), t.double()
    with torch.no_grad():
        cond = model.condition(images=images, category=category, drop=torch.tensor([False, True, False, False]))
        batch = model(x, t, cond)
        for i in range(4):
            torch.testing.assert_close(batch[i : i + 1], model(x[i : i + 1], t[i : i + 1], select(cond, i)),
                                       rtol=1e-10, atol=1e-12)


def test_null_embeddings_are_learned():
    torch.manual_seed(0)
    model = randomize_zero_inits(PVDUNet(preset("tiny")))  # past the first step: modulations are non-zero
    x, t, images, category = tiny_inputs()
    cond = model.condition(images=images, category=category, drop=torch.tensor([True, False, False]))
    model(x, t, cond).square().mean().backward()
    embed = model.embed
    assert embed.null_image.grad.abs().sum() > 0 and embed.null_token.grad.abs().sum() > 0
    assert embed.category.weight.grad[-1].abs().sum() > 0  # the null label row
    assert model.encoder.stem.weight.grad.abs().sum() > 0  # the encoder trains with the denoiser


def test_cascade_stage_sees_the_coarse_cloud_and_its_level():
    cfg = preset("tiny")
    model = randomize_zero_inits(PVDUNet(dataclasses.replace(cfg, condition=dataclasses.replace(cfg.condition, cascade=True)))).eval()
    x, t, images, category = tiny_inputs(2, 64)
    coarse = torch.randn(2, 16, 3)
    level = torch.tensor([0.1, 0.3])
    with torch.no_grad():
        cond = model.condition(images=images, category=category, coarse=coarse, coarse_level=level)
        out = model(x, t, cond)
        assert out.shape == (2, 64, 3)
        assert not torch.allclose(out, model(x, t, dataclasses.replace(cond, coarse=coarse.flip(1) * 1.3)))
        assert not torch.allclose(out, model(x, t, dataclasses.replace(cond, coarse_level=level + 0.2)))
        # The guidance null keeps the coarse cloud: it differs from the conditional output only
        # through the image and label.
        torch.testing.assert_close(model(x, t, cond.null()), model(x, t, dataclasses.replace(cond, drop=torch.ones(2, dtype=torch.bool))))
        with pytest.raises(ValueError, match="coarse"):
            model(x, t, model.condition(images=images, category=category, coarse_level=level))


def test_the_shape_estimate_enters_as_points_and_is_dropped_with_the_image():
    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, condition=dataclasses.replace(cfg.condition, shape_points=12),
                              encoder=dataclasses.replace(cfg.encoder, shape_points=12))
    model = randomize_zero_inits(PVDUNet(cfg)).eval()
    x, t, images, category = tiny_inputs(2, 64)
    with torch.no_grad():
        cond = model.condition(images=images, category=category)
        # From the encoder's shape head, detached (the head is trained by its own Chamfer loss).
        torch.testing.assert_close(cond.shape, model.encoder.predict_shape(cond.image))
        assert not cond.shape.requires_grad
        out = model(x, t, cond)
        assert out.shape == (2, 64, 3)
        other = dataclasses.replace(cond, shape=cond.shape.flip(1) * 1.5 + 0.2)
        assert not torch.allclose(out, model(x, t, other))  # the estimate reaches the denoiser
        # Dropped samples (guidance's null) see the learned null cloud instead: their estimate has no effect.
        drop = torch.tensor([True, False])
        a = model(x, t, dataclasses.replace(cond, drop=drop))
        b = model(x, t, dataclasses.replace(other, drop=drop))
        torch.testing.assert_close(a[0], b[0])
        assert not torch.allclose(a[1], b[1])
        with pytest.raises(ValueError, match="Condition.shape"):
            model(x, t, dataclasses.replace(cond, shape=None))
    with pytest.raises(ValueError, match="cascade"):
        dataclasses.replace(cfg.condition, cascade=True)
    model.train()
    model(x, t, dataclasses.replace(cond, drop=torch.ones(2, dtype=torch.bool))).square().mean().backward()
    assert model.null_shape.grad.abs().sum() > 0  # the null cloud is learned


def test_precomputed_embeddings_without_an_encoder():
    cfg = dataclasses.replace(preset("tiny"), encoder=None,
                              condition=ConditionConfig(embed_dim=16, image_dim=24, num_categories=0))
    model = randomize_zero_inits(PVDUNet(cfg)).eval()
    x, t, _, _ = tiny_inputs(2)
    emb = torch.randn(2, 24)
    with torch.no_grad():
        out = model(x, t, model.condition(embedding=emb))
        assert not torch.allclose(out, model(x, t, model.condition(embedding=emb * 2)))
    with pytest.raises(ValueError, match="no image encoder"):
        model.condition(images=torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="Condition.image"):
        model(x, t, Condition(category=torch.zeros(2, dtype=torch.long)))


def test_unconditional_network_rejects_a_condition():
    model = PVDUNet(dataclasses.replace(preset("tiny"), condition=None, encoder=None))
    x, t, _, _ = tiny_inputs(2)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, Condition(image=torch.zeros(2, 4)))
    assert model(x, t.double(), None).shape == (2, 96, 3)  # float64 timesteps are accepted


def test_image_encoder_returns_vector_and_tokens():
    enc = ImageEncoder(EncoderConfig(widths=(8, 16, 32), blocks=1, dim=24))
    vec, tokens = enc(torch.randint(0, 256, (2, 4, 32, 32), dtype=torch.uint8))
    assert vec.shape == (2, 24) and tokens.shape == (2, 64, 24)


@pytest.mark.parametrize("pool_grid", [1, 2, 4])
def test_image_encoder_vector_reads_the_grid_pooled_to_pool_grid_cells(pool_grid):
    # Naive reference: the 8x8 feature grid averaged over (8/g)x(8/g) blocks, flattened channel-major.
    torch.manual_seed(0)
    enc = ImageEncoder(EncoderConfig(widths=(8, 16, 32), blocks=1, dim=24, pool_grid=pool_grid)).eval()
    images = torch.randint(0, 256, (2, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        vec, _ = enc(images)
        h = torch.nn.functional.silu(enc.norm(enc.stages(enc.stem(images.float() / 255 * 2 - 1))))  # (2, 32, 8, 8)
        k = 8 // pool_grid
        blocks = h.reshape(2, 32, pool_grid, k, pool_grid, k).mean(dim=(3, 5))
        expected = enc.vector(blocks.reshape(2, -1))
    torch.testing.assert_close(vec, expected, rtol=1e-5, atol=1e-6)
    assert enc.vector[0].in_features == 32 * pool_grid**2
    with pytest.raises(ValueError, match="pool_grid"):
        ImageEncoder(EncoderConfig(widths=(8,), pool_grid=0))


# ---- the condition type ----


def test_null_is_the_unconditional_branch_of_one_guided_call(tiny):
    """What null() is for: classifier-free guidance asks the network for cat([cond, cond.null()]) in
    one call. The second half must be the unconditional output, the same whatever image and label
    the condition held; the first half the plain conditional output. (Float tolerance: the doubled
    batch may reduce in another order.)"""
    x, t, images, category = tiny_inputs()
    cond = tiny.condition(images=images, category=category)
    other = tiny.condition(images=images.roll(1, 0), category=(category + 1) % 5)
    with torch.no_grad():
        both = tiny(torch.cat([x, x]), torch.cat([t, t]), Condition.cat([cond, cond.null()]))
        conditional, unconditional = tiny(x, t, cond), tiny(x, t, other.null())
    torch.testing.assert_close(both[:3], conditional, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[3:], unconditional, rtol=1e-4, atol=1e-5)
    assert (conditional - unconditional).abs().amax(dim=(1, 2)).min() > 1e-4  # and it is not the conditional one


def test_condition_batching_and_replace():
    image = torch.randn(3, 8)
    cond = Condition(image=image, category=torch.tensor([0, 1, 2]))
    assert cond.batch_size == 3 and not cond.dropped().any()
    moved = dataclasses.replace(cond, coarse=torch.zeros(3, 5, 3), coarse_level=torch.zeros(3))
    assert moved.coarse.shape == (3, 5, 3) and moved.image is image
    with pytest.raises(ValueError, match="batch size"):
        Condition(image=image, category=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="only some"):
        Condition.cat([cond, Condition(image=image)])
    assert Condition().batch_size == 0
