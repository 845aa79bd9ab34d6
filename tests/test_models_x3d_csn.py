"""Architecture-specific tests of X3D-S/M and ir-CSN-101.

The generic zoo tests (forward at the standard clip, dtypes, memory formats, bad input, listing)
cover these models as every other registered one; this file checks what is particular to them:
exact parameter counts, depthwise convolutions, where Squeeze-and-Excitation sits, pytorchvideo's
width rounding, strides/shortcuts and per-stage output shapes, and, when pytorchvideo is
importable, that pytorchvideo's own models load strictly into ours and compute the same logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from videoconv.models import get_model, get_model_spec
from videoconv.models.csn import BottleneckBlock, ResBlock, csn_r101
from videoconv.models.x3d import SqueezeExcitation, X3DStemConv, round_repeats, round_width, x3d_m, x3d_s
from reference_impls import import_pytorchvideo, randomise_batch_norm

X3D_PARAMS = 3_794_274  # identical to pytorchvideo's create_x3d() at 400 classes
CSN_R101_PARAMS = 22_213_776  # identical to pytorchvideo's create_csn(model_depth=101)

X3D_DEPTHS = [3, 5, 11, 7]
X3D_OUT = [24, 48, 96, 192]
X3D_INNER = [54, 108, 216, 432]
X3D_SE = [8, 8, 16, 32]

CSN_DEPTHS = [3, 4, 23, 3]
CSN_INNER = [64, 128, 256, 512]
CSN_OUT = [256, 512, 1024, 2048]
CSN_STRIDES = [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def x3d() -> nn.Module:
    torch.manual_seed(0)
    return x3d_m().eval()


@pytest.fixture(scope="module")
def csn() -> nn.Module:
    torch.manual_seed(0)
    return csn_r101().eval()


def stages(model):
    """The four ResStages (blocks[0] is the stem, blocks[-1] the head)."""
    return list(model.blocks[1:-1])


# ------------------------------------------------------------------------------------------
# pytorchvideo's rounding rules
# ------------------------------------------------------------------------------------------


def test_round_width_gives_x3d_widths():
    # SE bottleneck widths: inner/16 rounded to multiples of 8 with the >10%-loss correction
    # (27 -> 24 would lose 11%, so 32).
    assert [round_width(c, 0.0625) for c in X3D_INNER] == X3D_SE
    # Stem and stage widths: 12 -> 24, and the base widths 12, 24, 48, 96 doubled.
    assert round_width(12, 2.0) == 24
    assert [round_width(c, 2.0) for c in (12, 24, 48, 96)] == X3D_OUT
    assert [int(2.25 * c) for c in X3D_OUT] == X3D_INNER
    # Other branches of the rule.
    assert round_width(100, 0) == 100  # no multiplier: unchanged
    assert round_width(3, 1.0) == 8  # min_width
    assert round_width(20, 1.0, ceil=True) == 24
    assert round_width(20, 1.0) == 24  # 20 + 4 -> 24 (round half up)
    assert round_width(17, 1.0) == 16  # nearest multiple of 8
    assert round_width(19, 1.0) == 24  # 16 would lose more than 10% of 19


def test_round_repeats_gives_x3d_depths():
    assert [round_repeats(d, 2.2) for d in (1, 2, 5, 3)] == X3D_DEPTHS
    assert [round_repeats(d, 5.0) for d in (1, 2, 5, 3)] == [5, 10, 25, 15]  # X3D-L
    assert round_repeats(4, 0) == 4


# ------------------------------------------------------------------------------------------
# X3D
# ------------------------------------------------------------------------------------------


def test_x3d_parameter_count(x3d):
    assert n_params(x3d) == X3D_PARAMS
    assert n_params(x3d_s()) == X3D_PARAMS
    spec = get_model_spec("x3d_s")
    assert abs(X3D_PARAMS - spec.published_params) <= spec.params_rtol * spec.published_params
    # Only the classifier depends on the number of classes.
    assert n_params(x3d_m(num_classes=10)) == X3D_PARAMS - 390 * (2048 + 1)


def test_x3d_s_and_m_are_the_same_network(x3d):
    small = x3d_s()
    assert {k: v.shape for k, v in small.state_dict().items()} == {
        k: v.shape for k, v in x3d.state_dict().items()
    }
    assert get_model_spec("x3d_s").input_shape == (3, 13, 160, 160)
    assert get_model_spec("x3d_m").input_shape == (3, 16, 224, 224)


def test_x3d_stem(x3d):
    stem = x3d.blocks[0]
    assert isinstance(stem.conv, X3DStemConv)
    # pytorchvideo's names are swapped: conv_t is the spatial conv, conv_xy the temporal one.
    spatial, temporal = stem.conv.conv_t, stem.conv.conv_xy
    assert (spatial.in_channels, spatial.out_channels) == (3, 24)
    assert spatial.kernel_size == (1, 3, 3) and spatial.stride == (1, 2, 2) and spatial.padding == (0, 1, 1)
    assert temporal.kernel_size == (5, 1, 1) and temporal.padding == (2, 0, 0)
    assert temporal.groups == temporal.in_channels == temporal.out_channels == 24
    assert spatial.bias is None and temporal.bias is None
    assert isinstance(stem.norm, nn.BatchNorm3d) and isinstance(stem.activation, nn.ReLU)
    assert stem.pool is None


def test_x3d_stage_layout(x3d):
    assert [len(s.res_blocks) for s in stages(x3d)] == X3D_DEPTHS
    for stage, inner, out in zip(stages(x3d), X3D_INNER, X3D_OUT):
        for i, block in enumerate(stage.res_blocks):
            b = block.branch2
            assert isinstance(b, BottleneckBlock)
            assert (b.conv_a.out_channels, b.conv_c.in_channels, b.conv_c.out_channels) == (inner, inner, out)
            assert b.conv_a.kernel_size == b.conv_c.kernel_size == (1, 1, 1)
            # Spatial stride 2 in each stage's first block only; never temporal striding.
            assert b.conv_b.stride == ((1, 2, 2) if i == 0 else (1, 1, 1))
            assert isinstance(b.act_a, nn.ReLU) and isinstance(b.act_b, nn.SiLU)
            assert isinstance(block.activation, nn.ReLU)  # after the addition
            # No bias on any conv followed by BatchNorm.
            assert b.conv_a.bias is None and b.conv_b.bias is None and b.conv_c.bias is None


def test_x3d_conv_b_is_depthwise(x3d):
    convs = [blk.branch2.conv_b for s in stages(x3d) for blk in s.res_blocks]
    assert len(convs) == sum(X3D_DEPTHS)
    for conv in convs:
        assert conv.groups == conv.in_channels == conv.out_channels
        assert conv.weight.shape[1] == 1
        assert conv.kernel_size == (3, 3, 3) and conv.padding == (1, 1, 1)
    assert [s.res_blocks[0].branch2.conv_b.groups for s in stages(x3d)] == X3D_INNER


def test_x3d_squeeze_excitation_on_every_other_block(x3d):
    total = 0
    for stage, inner, reduced in zip(stages(x3d), X3D_INNER, X3D_SE):
        for i, block in enumerate(stage.res_blocks):
            norm_b = block.branch2.norm_b
            # pytorchvideo layout: norm_b = Sequential(BatchNorm3d, SE | Identity).
            assert isinstance(norm_b, nn.Sequential) and len(norm_b) == 2
            assert isinstance(norm_b[0], nn.BatchNorm3d) and norm_b[0].num_features == inner
            if i % 2 == 0:
                se = norm_b[1]
                assert isinstance(se, SqueezeExcitation)
                assert (se.block[0].in_channels, se.block[0].out_channels) == (inner, reduced)
                assert (se.block[2].in_channels, se.block[2].out_channels) == (reduced, inner)
                assert se.block[0].bias is not None and se.block[2].bias is not None
                total += 1
            else:
                assert isinstance(norm_b[1], nn.Identity)
    assert total == 2 + 3 + 6 + 4
    assert sum(isinstance(m, SqueezeExcitation) for m in x3d.modules()) == total


def test_squeeze_excitation_computes_the_formula():
    torch.manual_seed(1)
    se = SqueezeExcitation(16, 8)
    x = torch.randn(2, 16, 3, 5, 4)
    w1, b1 = se.block[0].weight.view(8, 16), se.block[0].bias
    w2, b2 = se.block[2].weight.view(16, 8), se.block[2].bias
    gate = torch.sigmoid(torch.relu(x.mean(dim=(2, 3, 4)) @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None, None])


def test_x3d_shortcuts(x3d):
    first = [s.res_blocks[0] for s in stages(x3d)]
    # Stage 1 keeps 24 channels but strides: projection conv without BatchNorm (pytorchvideo).
    assert first[0].branch1_conv is not None and first[0].branch1_norm is None
    assert first[0].branch1_conv.stride == (1, 2, 2) and first[0].branch1_conv.bias is None
    for block, out in zip(first[1:], X3D_OUT[1:]):
        assert block.branch1_conv.stride == (1, 2, 2) and block.branch1_conv.kernel_size == (1, 1, 1)
        assert isinstance(block.branch1_norm, nn.BatchNorm3d) and block.branch1_norm.num_features == out
    for stage in stages(x3d):
        for block in stage.res_blocks[1:]:
            assert block.branch1_conv is None and block.branch1_norm is None


def test_x3d_head(x3d):
    head = x3d.blocks[-1]
    pool = head.pool
    assert (pool.pre_conv.in_channels, pool.pre_conv.out_channels) == (192, 432)
    assert isinstance(pool.pre_norm, nn.BatchNorm3d) and isinstance(pool.pre_act, nn.ReLU)
    assert (pool.post_conv.in_channels, pool.post_conv.out_channels) == (432, 2048)
    assert pool.post_conv.bias is None and pool.post_norm is None and isinstance(pool.post_act, nn.ReLU)
    assert isinstance(head.dropout, nn.Dropout) and head.dropout.p == 0.5
    assert (head.proj.in_features, head.proj.out_features) == (2048, 400)


def test_batchnorm_hyperparameters(x3d, csn):
    for model in (x3d, csn):
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
        assert bns and all(bn.eps == 1e-5 and bn.momentum == 0.1 for bn in bns)


def test_x3d_stage_output_shapes(x3d):
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        feats = x3d.forward_features(x)
        logits = x3d(x)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (24, 4, 32, 32),  # stem: spatial /2, frames kept
        (24, 4, 16, 16),
        (48, 4, 8, 8),
        (96, 4, 4, 4),
        (192, 4, 2, 2),
    ]
    assert logits.shape == (1, 400)
    # Odd sizes: each stride-2 stage rounds up; the adaptive head takes any size.
    with torch.no_grad():
        feats = x3d.forward_features(torch.randn(1, 3, 3, 50, 70))
    assert tuple(feats[-1].shape[1:]) == (192, 3, 2, 3)


def test_x3d_dropout_only_in_training(x3d):
    x = torch.randn(2, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(x3d(x), x3d(x))  # eval: deterministic


# ------------------------------------------------------------------------------------------
# CSN
# ------------------------------------------------------------------------------------------


def test_csn_parameter_count(csn):
    assert n_params(csn) == CSN_R101_PARAMS
    spec = get_model_spec("csn_r101")
    assert abs(CSN_R101_PARAMS - spec.published_params) <= spec.params_rtol * spec.published_params
    assert spec.input_shape == (3, 32, 224, 224)


def test_csn_stem(csn):
    stem = csn.blocks[0]
    conv = stem.conv
    assert (conv.in_channels, conv.out_channels, conv.groups) == (3, 64, 1)
    assert conv.kernel_size == (3, 7, 7) and conv.stride == (1, 2, 2) and conv.padding == (1, 3, 3)
    assert conv.bias is None
    assert isinstance(stem.norm, nn.BatchNorm3d) and isinstance(stem.activation, nn.ReLU)
    pool = stem.pool
    assert isinstance(pool, nn.MaxPool3d)
    assert tuple(pool.kernel_size) == (1, 3, 3) and tuple(pool.stride) == (1, 2, 2)
    assert tuple(pool.padding) == (0, 1, 1)


def test_csn_stage_layout_and_depthwise(csn):
    assert [len(s.res_blocks) for s in stages(csn)] == CSN_DEPTHS
    n_depthwise = 0
    for stage, inner, out, stride in zip(stages(csn), CSN_INNER, CSN_OUT, CSN_STRIDES):
        for i, block in enumerate(stage.res_blocks):
            assert isinstance(block, ResBlock)
            b = block.branch2
            assert b.conv_a.kernel_size == (1, 1, 1) and b.conv_a.stride == (1, 1, 1)
            assert (b.conv_a.out_channels, b.conv_c.out_channels) == (inner, out)
            # ir-CSN: conv_b is depthwise 3x3x3 and carries the stage's stride.
            assert b.conv_b.groups == b.conv_b.in_channels == b.conv_b.out_channels == inner
            assert b.conv_b.kernel_size == (3, 3, 3) and b.conv_b.padding == (1, 1, 1)
            assert b.conv_b.stride == (stride if i == 0 else (1, 1, 1))
            assert all(isinstance(a, nn.ReLU) for a in (b.act_a, b.act_b, block.activation))
            assert all(isinstance(n, nn.BatchNorm3d) for n in (b.norm_a, b.norm_b, b.norm_c))
            assert b.conv_a.bias is None and b.conv_b.bias is None and b.conv_c.bias is None
            n_depthwise += 1
            if i == 0:
                # Projection shortcut (channels change in every stage's first block).
                assert block.branch1_conv.stride == stride and block.branch1_conv.out_channels == out
                assert block.branch1_conv.bias is None
                assert isinstance(block.branch1_norm, nn.BatchNorm3d)
            else:
                assert block.branch1_conv is None and block.branch1_norm is None
    assert n_depthwise == 33
    # No other grouped conv, and no biased conv anywhere (BN follows every conv).
    convs = [m for m in csn.modules() if isinstance(m, nn.Conv3d)]
    assert sum(c.groups > 1 for c in convs) == 33
    assert all(c.bias is None for c in convs)


def test_csn_head(csn):
    head = csn.blocks[-1]
    assert isinstance(head.pool, nn.AdaptiveAvgPool3d)
    assert head.dropout is None  # pytorchvideo's csn_r101 default (dropout_rate=0)
    assert (head.proj.in_features, head.proj.out_features) == (2048, 400)
    assert isinstance(csn_r101(dropout_rate=0.2).blocks[-1].dropout, nn.Dropout)
    assert get_model("csn_r101", num_classes=7).blocks[-1].proj.out_features == 7


def test_csn_stage_output_shapes(csn):
    with torch.no_grad():
        feats = csn.forward_features(torch.randn(1, 3, 8, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 8, 16, 16),  # conv /2 and max-pool /2 spatially, frames kept
        (256, 8, 16, 16),
        (512, 4, 8, 8),
        (1024, 2, 4, 4),
        (2048, 1, 2, 2),
    ]


def test_bad_clip_names_the_model(x3d):
    with pytest.raises(ValueError, match="x3d_m"):
        x3d(torch.randn(1, 4, 4, 32, 32))


# ------------------------------------------------------------------------------------------
# Against pytorchvideo itself (skipped when it is not importable)
# ------------------------------------------------------------------------------------------


def _check_against(ours: nn.Module, ref: nn.Module, clip_shape, seed: int) -> None:
    randomise_batch_norm(ref, seed, biases=True)
    # pytorchvideo's N(0, 0.01) classifier makes X3D's logits about as much its random bias as
    # the features; N(0, 0.05) lets the features dominate what is compared.
    with torch.no_grad():
        ref.blocks[-1].proj.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(seed))
    # Same keys in the same order, then a strict load both ways.
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.eval()
    ref.eval()
    x = torch.randn(clip_shape, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)


def test_x3d_matches_pytorchvideo():
    import_pytorchvideo()
    from pytorchvideo.models.x3d import create_x3d

    # pytorchvideo's head pool kernel is fixed by the clip it is built for; a 5x50x50 clip gives
    # (5, ceil(50/32), ceil(50/32)) = (5, 2, 2), the whole last feature map, like our adaptive pool.
    torch.manual_seed(0)
    ref = create_x3d(input_clip_length=5, input_crop_size=50, head_activation=None)
    assert sum(p.numel() for p in ref.parameters()) == X3D_PARAMS
    _check_against(x3d_m(), ref, (2, 3, 5, 50, 50), seed=10)


def test_csn_matches_pytorchvideo():
    import_pytorchvideo()
    from pytorchvideo.models.csn import create_csn

    torch.manual_seed(0)
    # As pytorchvideo's hub csn_r101 (stem max-pool), with the head pool sized for an 8x64x64
    # clip: frames 8 / 8 = 1, pixels 64 / 32 = 2 (the hub's (4, 7, 7) is for 32x224x224).
    ref = create_csn(model_depth=101, stem_pool=nn.MaxPool3d, head_pool_kernel_size=(1, 2, 2))
    assert sum(p.numel() for p in ref.parameters()) == CSN_R101_PARAMS
    _check_against(csn_r101(), ref, (2, 3, 8, 64, 64), seed=20)
