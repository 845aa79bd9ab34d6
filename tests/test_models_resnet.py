"""Model-specific checks of the ResNet family of the zoo and of C3D / C2D.

* blocks: (2+1)D middle widths, layouts (which the fuse pass and torchvision's keys rely on),
  strides of each residual conv type;
* exact parameter counts of every model built here;
* torchvision equivalence: r3d_18 / mc3_18 / r2plus1d_18 take torchvision's state_dict
  strictly and compute the same logits, and C2D's trunk is torchvision's resnet18.

The generic zoo checks (standard clip, dtypes, bad clips) are in test_zoo.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import videoconv.models as zoo
from videoconv.models.blocks import Conv3DBlock, Residual3DBlock, SpatioTemporalConv, midplanes
from videoconv.models.c2d import c2d_r18
from videoconv.models.c3d import c3d
from videoconv.models.resnet3d import mc3_18, r2plus1d_18, r2plus1d_34, r3d_18, r3d_34
from reference_impls import assert_close_rel, import_torchvision, randomise_batch_norm


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------


def test_midplanes_are_torchvisions_widths():
    assert midplanes(64, 128) == 230
    assert midplanes(128, 256) == 460
    assert midplanes(256, 512) == 921
    assert midplanes(64, 64) == 144
    assert midplanes(64, 128, (3, 3, 3)) == midplanes(64, 128, 3) == 230


def test_midplanes_match_the_3d_parameter_count():
    for cin, cout, kernel in [(64, 128, (3, 3, 3)), (32, 48, (5, 3, 3)), (3, 64, (3, 7, 7))]:
        kt, kh, kw = kernel
        full = kt * kh * kw * cin * cout
        for temporal_first, per_mid in [(False, kh * kw * cin + kt * cout), (True, kt * cin + kh * kw * cout)]:
            mid = midplanes(cin, cout, kernel, temporal_first)
            # Largest width whose factorised weights do not exceed the full conv's.
            assert mid * per_mid <= full < (mid + 1) * per_mid


def test_spatiotemporal_conv_layout_matches_torchvision_conv2plus1d():
    conv = SpatioTemporalConv(64, 128, stride=2)
    assert isinstance(conv, nn.Sequential)
    assert [type(m) for m in conv] == [nn.Conv3d, nn.BatchNorm3d, nn.ReLU, nn.Conv3d]
    spatial, bn, _, temporal = conv
    assert conv.mid_channels == 230 and bn.num_features == 230
    assert (spatial.kernel_size, spatial.stride, spatial.padding) == ((1, 3, 3), (1, 2, 2), (0, 1, 1))
    assert (temporal.kernel_size, temporal.stride, temporal.padding) == ((3, 1, 1), (2, 1, 1), (1, 0, 0))
    assert spatial.bias is None and temporal.bias is None
    assert set(conv.state_dict()) == {
        "0.weight",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "3.weight",
    }
    assert n_params(conv) == 230 * (9 * 64 + 3 * 128) + 2 * 230


@pytest.mark.parametrize(
    "stride, expected", [(1, (2, 16, 8, 12, 12)), (2, (2, 16, 4, 6, 6)), ((1, 2, 2), (2, 16, 8, 6, 6))]
)
def test_spatiotemporal_conv_output_shapes(stride, expected):
    conv = SpatioTemporalConv(8, 16, stride=stride).eval()
    assert conv(torch.randn(2, 8, 8, 12, 12)).shape == expected


def test_spatiotemporal_conv_temporal_first_and_explicit_width():
    conv = SpatioTemporalConv(8, 16, (5, 3, 3), stride=(2, 1, 1), mid_channels=10, temporal_first=True)
    first, bn, _, second = conv
    assert first.kernel_size == (5, 1, 1) and first.stride == (2, 1, 1) and first.padding == (2, 0, 0)
    assert second.kernel_size == (1, 3, 3) and second.padding == (0, 1, 1)
    assert (first.out_channels, bn.num_features, second.in_channels) == (10, 10, 10)
    assert conv.eval()(torch.randn(1, 8, 8, 6, 6)).shape == (1, 16, 4, 6, 6)
    default = SpatioTemporalConv(8, 16, (5, 3, 3), temporal_first=True)
    assert default.mid_channels == midplanes(8, 16, (5, 3, 3), temporal_first=True) == (5 * 9 * 8 * 16) // (5 * 8 + 9 * 16)


def test_conv3d_block_children_and_pooling():
    block = Conv3DBlock(3, 8, pool=(1, 2, 2))
    assert list(dict(block.named_children())) == ["conv", "bn", "relu", "pool"]
    assert block.conv.bias is None and block.conv.padding == (1, 1, 1)
    assert block.eval()(torch.randn(1, 3, 4, 8, 8)).shape == (1, 8, 4, 4, 4)

    plain = Conv3DBlock(3, 8, kernel_size=(1, 5, 5), batch_norm=False)
    assert list(dict(plain.named_children())) == ["conv", "relu"]
    assert plain.conv.bias is not None  # C3D's convs: no BN, so they carry the bias
    assert plain.conv.padding == (0, 2, 2)

    padded_pool = Conv3DBlock(4, 4, pool=2, pool_padding=(0, 1, 1))
    assert padded_pool.eval()(torch.randn(1, 4, 2, 7, 7)).shape == (1, 4, 1, 4, 4)


@pytest.mark.parametrize(
    "conv_type, expected_thw", [("3d", (4, 8, 8)), ("2d", (8, 8, 8)), ("2plus1d", (4, 8, 8))]
)
def test_residual_block_downsampling(conv_type, expected_thw):
    block = Residual3DBlock(8, 16, stride=2, conv_type=conv_type).eval()
    out = block(torch.randn(2, 8, 8, 16, 16))
    assert out.shape == (2, 16) + expected_thw
    assert (out >= 0).all()  # the ReLU comes after the sum
    shortcut = block.downsample[0]
    assert shortcut.kernel_size == (1, 1, 1)
    assert shortcut.stride == ((1, 2, 2) if conv_type == "2d" else (2, 2, 2))


def test_residual_block_identity_shortcut_and_widths():
    same = Residual3DBlock(16, 16, conv_type="3d").eval()
    assert same.downsample is None
    x = torch.randn(1, 16, 3, 5, 5)
    with torch.no_grad():
        expected = torch.relu(same.conv2(same.conv1(x)) + x)
        assert torch.equal(same(x), expected)
    # torchvision uses the (Cin, Cout) middle width for conv2 as well, not conv2's own (Cout, Cout).
    wide = Residual3DBlock(64, 128, stride=2, conv_type="2plus1d")
    assert wide.conv1[0].mid_channels == wide.conv2[0].mid_channels == 230
    assert Residual3DBlock(128, 128, conv_type="2plus1d").conv2[0].mid_channels == 288
    with pytest.raises(ValueError, match="conv_type"):
        Residual3DBlock(8, 8, conv_type="3x3")


# --------------------------------------------------------------------------------------------
# whole models
# --------------------------------------------------------------------------------------------

PARAMS_AT_400 = {
    r3d_18: 33_371_472,
    r3d_34: 63_681_104,
    mc3_18: 11_695_440,
    r2plus1d_18: 31_505_325,
    r2plus1d_34: 61_831_661,
    c2d_r18: 11_381_712,
}


@pytest.mark.parametrize("builder", list(PARAMS_AT_400), ids=lambda b: b.__name__)
def test_parameter_counts(builder):
    with torch.device("meta"):  # counting needs shapes only, not 60M initialised weights
        model = builder(num_classes=400)
    assert n_params(model) == PARAMS_AT_400[builder]


def test_c3d_parameter_counts_and_head_size():
    with torch.device("meta"):
        published = c3d(num_classes=101)
        with_bn = c3d(num_classes=101, batch_norm=True)
    assert n_params(published) == 78_409_573
    # BN adds 2 parameters per channel and removes the conv biases (1 per channel).
    assert n_params(with_bn) == 78_409_573 + (64 + 128 + 2 * 256 + 4 * 512)
    assert published.fc6.in_features == 8192
    features = torch.empty(1, 3, 16, 112, 112, device="meta")
    for name in ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b"):
        features = getattr(published, name)(features)
    assert features.shape == (1, 512, 1, 4, 4)  # pool5's (0, 1, 1) padding: 7x7 -> 4x4
    assert published(torch.empty(2, 3, 16, 112, 112, device="meta")).shape == (2, 101)


def test_registry_entries_of_this_family():
    for name, count in [("r3d_18", 33_371_472), ("mc3_18", 11_695_440), ("r2plus1d_18", 31_505_325)]:
        spec = zoo.get_model_spec(name)
        assert (spec.published_params, spec.params_rtol, spec.num_classes) == (count, 0.0, 400)
        assert "torchvision" in spec.params_source
    for name in ("r3d_34", "r2plus1d_34"):
        assert zoo.get_model_spec(name).published_params is None
    spec = zoo.get_model_spec("c3d")
    assert (spec.num_classes, spec.published_params, spec.min_frames) == (101, 78_409_573, 16)
    assert spec.input_shape == spec.test_input_shape == (3, 16, 112, 112)


def test_video_resnets_take_a_single_frame():
    model = r3d_18(num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 16, 16)).shape == (1, 5)


def test_c2d_ignores_frame_order():
    model = c2d_r18(num_classes=7).eval()
    randomise_batch_norm(model, seed=1)
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        forward, backward = model(clip), model(clip.flip(2))
    assert forward.shape == (2, 7)
    torch.testing.assert_close(forward, backward, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# torchvision equivalence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_loads_torchvision_state_dict_and_matches_its_output(name):
    import_torchvision()
    from torchvision.models.video import resnet as tv_video

    reference = getattr(tv_video, name)(num_classes=400).eval()
    randomise_batch_norm(reference, seed=0)
    ours = zoo.get_model(name, num_classes=400).eval()

    reference_state = reference.state_dict()
    our_state = ours.state_dict()
    assert set(our_state) == set(reference_state)
    assert {k: v.shape for k, v in our_state.items()} == {k: v.shape for k, v in reference_state.items()}
    ours.load_state_dict(reference_state, strict=True)

    clip = torch.randn(1, 3, 8, 56, 56, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reference.double()(clip)
        got = ours.double()(clip)
    assert got.shape == (1, 400)
    assert_close_rel(got, expected, rtol=1e-5)


def _torchvision_video_resnet_34(tv_video, conv_type: str):
    """torchvision has no 34-layer video ResNet builder, but its VideoResNet class builds one."""
    if conv_type == "3d":
        makers, stem = [tv_video.Conv3DSimple] * 4, tv_video.BasicStem
    else:
        makers, stem = [tv_video.Conv2Plus1D] * 4, tv_video.R2Plus1dStem
    return tv_video.VideoResNet(tv_video.BasicBlock, makers, [3, 4, 6, 3], stem, num_classes=400)


@pytest.mark.parametrize("name,conv_type", [("r3d_34", "3d"), ("r2plus1d_34", "2plus1d")])
def test_34_layer_models_are_torchvisions_video_resnet_with_34_layers(name, conv_type):
    # No exact published parameter count exists for these two, so the independent check is
    # torchvision's own VideoResNet class with the [3, 4, 6, 3] layout of Tran et al. (2018).
    import_torchvision()
    from torchvision.models.video import resnet as tv_video

    reference = _torchvision_video_resnet_34(tv_video, conv_type).eval()
    randomise_batch_norm(reference, seed=0)
    ours = zoo.get_model(name, num_classes=400).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    ours.load_state_dict(reference.state_dict(), strict=True)
    clip = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        assert_close_rel(ours.double()(clip), reference.double()(clip), rtol=1e-5)


def test_c2d_trunk_is_torchvision_resnet18():
    torchvision = import_torchvision()
    reference = torchvision.models.resnet18(num_classes=400).eval()
    randomise_batch_norm(reference, seed=0)
    ours = c2d_r18(num_classes=400).eval()
    assert set(ours.state_dict()) == set(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)

    # T copies of one frame: every per-frame feature is that frame's, so is their mean.
    frame = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    clip = frame.unsqueeze(2).expand(-1, -1, 3, -1, -1)
    with torch.no_grad():
        expected = reference.double()(frame)
        got = ours.double()(clip)
    assert got.shape == (2, 400)
    assert_close_rel(got, expected, rtol=1e-5)


def test_c2d_takes_an_imagenet_trunk_with_a_new_head():
    torchvision = import_torchvision()
    imagenet = torchvision.models.resnet18(num_classes=1000).state_dict()
    ours = c2d_r18(num_classes=400)
    trunk = {k: v for k, v in imagenet.items() if not k.startswith("fc.")}
    missing, unexpected = ours.load_state_dict(trunk, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
