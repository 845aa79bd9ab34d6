"""Architecture-specific tests of I3D (with 2D->3D inflation) and SlowFast R50.

The generic zoo tests (forward at the standard clip, dtypes, memory formats, bad-input listing)
cover both models like every registered one. Here:

* I3D: exact parameter counts (3D, 2D, against torchvision's GoogLeNet), identical module names
  in 2D and 3D, the paper's feature-map sizes (standard clip on the meta device, a small clip for
  real), the minimum clip and that it is tight, the inflation fixed point of the paper (a clip of
  one repeated frame gives the 2D features at every time step), inflation on its own.
* SlowFast: exact parameter counts of both variants, layer hyper-parameters, lateral-connection
  shapes and pathway frame counts, the two input forms, input errors, and (when pytorchvideo is
  importable) that pytorchvideo's own model loads into ours and computes the same logits.

Full-size clips are only ever run on the ``meta`` device (shapes without arithmetic), so the file
runs in a few seconds on a laptop CPU.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

import videoconv.models as zoo
from videoconv.models.i3d import (
    ENDPOINTS,
    I3D_MIN_FRAMES,
    I3D_MIN_SIZE,
    InceptionModule,
    InceptionV1,
    Unit,
    i3d,
    inception_v1_2d,
    inflate_2d_to_3d,
)
from videoconv.models.slowfast import (
    Bottleneck,
    LateralConnection,
    SlowFast,
    convert_pytorchvideo_state_dict,
    slowfast_r50,
)
from reference_impls import assert_close_rel, import_pytorchvideo, import_torchvision, randomise_batch_norm

I3D_PARAMS = 12_697_264  # IBM/action-recognition-pytorch's i3d (400 classes), pytorch-i3d
I3D_BN_CHANNELS = 7_280  # BN scales Sonnet's BatchNorm does not have: TF checkpoint 12,689,984
INCEPTION_V1_2D_PARAMS = 6_624_904  # torchvision googlenet (no aux heads), 1000 classes
INCEPTION_V1_2D_PARAMS_400 = 6_009_904  # IBM/action-recognition-pytorch's inception-v1, 400 cl.
SLOWFAST_8X8_PARAMS = 34_566_488  # pytorchvideo create_slowfast()
SLOWFAST_4X16_PARAMS = 34_480_216  # same with (5, 1, 1) laterals of stride 8


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ================================================================================================
# I3D
# ================================================================================================


@pytest.fixture(scope="module")
def i3d_meta() -> InceptionV1:
    with torch.device("meta"):
        return i3d().eval()  # eval: train-mode BN rejects the 1x1x1 maps of the minimum clips


def test_i3d_parameter_counts():
    model = i3d()
    assert n_params(model) == I3D_PARAMS
    assert zoo.get_model_spec("i3d").published_params == I3D_PARAMS
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm3d))
    assert bn == I3D_BN_CHANNELS
    # The logits conv is 1024 x 400 + 400; the "~12.3M" figure is the trunk without it.
    assert n_params(model) - 410_000 == 12_287_264
    assert n_params(inception_v1_2d()) == INCEPTION_V1_2D_PARAMS
    assert n_params(inception_v1_2d(num_classes=400)) == INCEPTION_V1_2D_PARAMS_400
    # Inflation multiplies each conv by its temporal extent and nothing else.
    extra = sum(
        m.weight.numel() * (m.kernel_size[0] - 1) // m.kernel_size[0]
        for m in model.modules()
        if isinstance(m, nn.Conv3d)
    )
    assert I3D_PARAMS - extra == INCEPTION_V1_2D_PARAMS_400


def test_inception_v1_2d_matches_torchvision_googlenet_count():
    torchvision = import_torchvision()
    ref = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    assert n_params(ref) == INCEPTION_V1_2D_PARAMS


def test_2d_and_3d_networks_share_module_names():
    m2, m3 = inception_v1_2d(num_classes=400), i3d()
    assert list(m2.state_dict()) == list(m3.state_dict())
    for (n2, a), (n3, b) in zip(m2.named_modules(), m3.named_modules()):
        assert n2 == n3
        assert type(a).__name__.replace("2d", "3d") == type(b).__name__.lstrip("_")
    assert [name for name, _ in m3.named_children()][: len(ENDPOINTS)] == list(ENDPOINTS)


def test_i3d_layers(i3d_meta):
    units = [m for m in i3d_meta.modules() if isinstance(m, Unit)]
    assert len(units) == 3 + 9 * 6  # stem convs + six per Inception module
    for unit in units:
        assert [name for name, _ in unit.named_children()] == ["conv", "bn", "relu"]
        assert unit.conv.bias is None
        assert unit.bn.eps == 1e-3
        assert unit.conv.padding == tuple(k // 2 for k in unit.conv.kernel_size)
    assert i3d_meta.Conv3d_1a_7x7.conv.kernel_size == (7, 7, 7)
    assert i3d_meta.Conv3d_1a_7x7.conv.stride == (2, 2, 2)
    assert i3d_meta.Conv3d_2c_3x3.conv.kernel_size == (3, 3, 3)
    pools = {name: getattr(i3d_meta, name) for name in ENDPOINTS if name.startswith("MaxPool")}
    assert [(p.kernel_size, p.stride) for p in pools.values()] == [
        ((1, 3, 3), (1, 2, 2)),
        ((1, 3, 3), (1, 2, 2)),
        ((3, 3, 3), (2, 2, 2)),
        ((2, 2, 2), (2, 2, 2)),
    ]
    mixed = i3d_meta.Mixed_5c
    assert isinstance(mixed, InceptionModule)
    assert mixed.branch2[1].conv.kernel_size == (3, 3, 3)  # not 5x5x5
    assert mixed.branch3[0].kernel_size == (3, 3, 3) and mixed.branch3[0].stride == (1, 1, 1)
    assert i3d_meta.avg_pool.kernel_size == (2, 7, 7) and i3d_meta.avg_pool.stride == (1, 1, 1)
    assert i3d_meta.logits.kernel_size == (1, 1, 1) and i3d_meta.logits.bias is not None
    m2 = inception_v1_2d()
    assert m2.Conv3d_1a_7x7.conv.kernel_size == (7, 7) and m2.MaxPool3d_5a_2x2.kernel_size == (2, 2)


#: (channels, T, H, W) of each endpoint for the standard 64x224x224 clip (the paper's sizes).
STANDARD_ENDPOINT_SHAPES = {
    "Conv3d_1a_7x7": (64, 32, 112, 112),
    "MaxPool3d_2a_3x3": (64, 32, 56, 56),
    "Conv3d_2b_1x1": (64, 32, 56, 56),
    "Conv3d_2c_3x3": (192, 32, 56, 56),
    "MaxPool3d_3a_3x3": (192, 32, 28, 28),
    "Mixed_3b": (256, 32, 28, 28),
    "Mixed_3c": (480, 32, 28, 28),
    "MaxPool3d_4a_3x3": (480, 16, 14, 14),
    "Mixed_4b": (512, 16, 14, 14),
    "Mixed_4c": (512, 16, 14, 14),
    "Mixed_4d": (512, 16, 14, 14),
    "Mixed_4e": (528, 16, 14, 14),
    "Mixed_4f": (832, 16, 14, 14),
    "MaxPool3d_5a_2x2": (832, 8, 7, 7),
    "Mixed_5b": (832, 8, 7, 7),
    "Mixed_5c": (1024, 8, 7, 7),
}


def test_i3d_standard_clip_endpoint_shapes(i3d_meta):
    x = torch.empty(2, 3, 64, 224, 224, device="meta")
    shapes = {k: tuple(v.shape) for k, v in i3d_meta.endpoints(x).items()}
    assert shapes == {k: (2,) + v for k, v in STANDARD_ENDPOINT_SHAPES.items()}
    assert i3d_meta(x).shape == (2, 400)
    # The head sees 8x7x7, pools to 7x1x1: seven temporal logits, averaged.
    assert i3d_meta.avg_pool(torch.empty(2, 1024, 8, 7, 7, device="meta")).shape == (2, 1024, 7, 1, 1)


def test_i3d_small_clip_stage_sizes():
    """A real (not meta) run on 16x96x96: every stage at the sizes the strides predict."""
    model = i3d(num_classes=7).eval()
    x = torch.randn(1, 3, 16, 96, 96)
    with torch.no_grad():
        shapes = {k: tuple(v.shape[1:]) for k, v in model.endpoints(x).items()}
    assert shapes["Conv3d_1a_7x7"] == (64, 8, 48, 48)
    assert shapes["MaxPool3d_2a_3x3"] == (64, 8, 24, 24)
    assert shapes["Conv3d_2c_3x3"] == (192, 8, 24, 24)
    assert shapes["MaxPool3d_3a_3x3"] == (192, 8, 12, 12)
    assert shapes["Mixed_3c"] == (480, 8, 12, 12)
    assert shapes["MaxPool3d_4a_3x3"] == (480, 4, 6, 6)
    assert shapes["Mixed_4f"] == (832, 4, 6, 6)
    assert shapes["MaxPool3d_5a_2x2"] == (832, 2, 3, 3)
    assert shapes["Mixed_5c"] == (1024, 2, 3, 3)
    # The 2D network's endpoints are the spatial part of the same sizes.
    m2 = inception_v1_2d(num_classes=7).eval()
    with torch.no_grad():
        shapes_2d = {k: tuple(v.shape[1:]) for k, v in m2.endpoints(x[:, :, 0]).items()}
    assert shapes_2d == {k: (c, h, w) for k, (c, _, h, w) in shapes.items()}


def test_i3d_min_clip_is_tight(i3d_meta):
    spec = zoo.get_model_spec("i3d")
    assert spec.min_frames == I3D_MIN_FRAMES == 13 and I3D_MIN_SIZE == 209
    assert spec.test_input_shape == (3, 13, 209, 209)
    # 13 frames of 209x209 end as a 2x7x7 Mixed_5c map: exactly what the 2x7x7 head pool needs...
    x = torch.empty(1, 3, 13, 209, 209, device="meta")
    assert i3d_meta.features(x).shape == (1, 1024, 2, 7, 7)
    assert i3d_meta(x).shape == (1, 400)
    # ...and one frame or one pixel fewer leaves too little for it.
    assert i3d_meta.features(torch.empty(1, 3, 12, 209, 209, device="meta")).shape[2] == 1
    assert i3d_meta.features(torch.empty(1, 3, 13, 208, 208, device="meta")).shape[3:] == (6, 6)
    with pytest.raises(ValueError, match=r"i3d needs at least 13 frames"):
        i3d_meta(torch.empty(1, 3, 12, 224, 224, device="meta"))
    with pytest.raises(ValueError, match=r"i3d needs frames of at least 209x209"):
        i3d_meta(torch.empty(1, 3, 64, 208, 224, device="meta"))
    # features() has no head and takes clips down to 5 x 17 x 17 (MaxPool3d_5a's kernel 2).
    assert i3d_meta.features(torch.empty(1, 3, 5, 17, 17, device="meta")).shape == (1, 1024, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 5 frames"):
        i3d_meta.features(torch.empty(1, 3, 4, 17, 17, device="meta"))


def test_inception_v1_2d_input_checks():
    model = inception_v1_2d()
    with pytest.raises(ValueError, match="4-D image batch"):
        model(torch.randn(1, 3, 4, 224, 224))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match="at least 209x209"):
        model(torch.randn(1, 3, 200, 224))


# -- inflation ------------------------------------------------------------------------------------


def _inflated_pair(padding_mode: str, dtype: torch.dtype, num_classes: int = 10):
    # Convert before inflating: w / kt rounded in float32 would not sum back to w in float64.
    m2 = inception_v1_2d(num_classes=num_classes, padding_mode=padding_mode).to(dtype)
    m2 = randomise_batch_norm(m2, seed=1, biases=True).eval()
    m3 = i3d(num_classes=num_classes, padding_mode=padding_mode).to(dtype).eval()
    return m2, inflate_2d_to_3d(m2, m3)


def _repeat_frame(frame: torch.Tensor, frames: int) -> torch.Tensor:
    return frame.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_inflation_fixed_point_every_time_step(dtype, rtol):
    """The paper's "boring video" fixed point: with replicate padding it holds at every frame."""
    m2, m3 = _inflated_pair("replicate", dtype)
    frame = torch.randn(2, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        expected = m2.features(frame)  # (2, 1024, 2, 2)
        got = m3.features(_repeat_frame(frame, 16))  # (2, 1024, 2, 2, 2)
    assert got.shape == (2, 1024, 2, 2, 2)
    for t in range(got.shape[2]):
        assert_close_rel(got[:, :, t], expected, rtol)


def test_inflation_fixed_point_with_zero_padding_only_inside_the_clip():
    """With the published zero padding, the temporal kernel sees zeros at the clip's ends: the
    first conv's border frames differ from the 2D response, its interior frames do not."""
    m2, m3 = _inflated_pair("zeros", torch.float64)
    frame = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = m2.Conv3d_1a_7x7(frame)
        got = m3.Conv3d_1a_7x7(_repeat_frame(frame, 16))  # 8 frames out, 7-tap kernel, pad 3
    # Output frame t reads input frames 2t-3 .. 2t+3: all inside the clip for t = 2 .. 6.
    for t in range(2, 7):
        assert_close_rel(got[:, :, t], expected, 1e-12)
    for t in (0, 1, 7):
        assert (got[:, :, t] - expected).abs().max() > 1e-3


def test_padding_mode_reaches_every_convolution():
    for model in (i3d(padding_mode="replicate"), inception_v1_2d(padding_mode="replicate")):
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        assert len(convs) == 58
        assert all(c.padding_mode == "replicate" for c in convs if c is not model.logits)


def test_inflate_weights():
    m2 = randomise_batch_norm(inception_v1_2d(num_classes=400), seed=2, biases=True)
    m3 = i3d()
    assert inflate_2d_to_3d(m2, m3) is m3
    sd2, sd3 = m2.state_dict(), m3.state_dict()
    assert list(sd2) == list(sd3)
    inflated = 0
    for name, w3 in sd3.items():
        w2 = sd2[name]
        if w3.dim() == 5:
            kt = w3.shape[2]
            assert w3.shape == (w2.shape[0], w2.shape[1], kt) + tuple(w2.shape[2:]), name
            for t in range(kt):  # every temporal slice is the 2D filter / kt...
                torch.testing.assert_close(w3[:, :, t], w2 / kt, rtol=0, atol=0)
            torch.testing.assert_close(w3.sum(dim=2), w2)  # ...so they sum to the 2D filter
            inflated += kt > 1
        else:  # BN weight/bias/running stats/num_batches_tracked, logits bias: copied
            assert torch.equal(w3, w2), name
    assert inflated == 2 + 9 * 2  # Conv3d_1a, Conv3d_2c and two 3x3x3 convs per module
    assert m3.Conv3d_1a_7x7.conv.weight.shape == (64, 3, 7, 7, 7)
    assert m3.Mixed_3b.branch0.conv.weight.shape == (64, 192, 1, 1, 1)


def test_inflate_from_state_dict_and_exported():
    assert zoo.inflate_2d_to_3d is inflate_2d_to_3d
    m2 = randomise_batch_norm(inception_v1_2d(num_classes=5), seed=3, biases=True)
    a = inflate_2d_to_3d(m2, i3d(num_classes=5))
    b = inflate_2d_to_3d(OrderedDict(m2.state_dict()), i3d(num_classes=5))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_inflate_errors_list_the_names():
    m2 = inception_v1_2d(num_classes=1000)
    m3 = i3d(num_classes=400)
    before = {k: v.clone() for k, v in m3.state_dict().items()}
    with pytest.raises(ValueError) as info:
        inflate_2d_to_3d(m2, m3)
    message = str(info.value)
    assert "2 shape-incompatible entries" in message
    assert "logits.weight: 2D (1000, 1024, 1, 1) vs 3D (400, 1024, 1, 1, 1)" in message
    assert "logits.bias: 2D (1000,) vs 3D (400,)" in message
    # Nothing was copied although the rest matched.
    assert all(torch.equal(before[k], v) for k, v in m3.state_dict().items())

    # Dropping the classifier: strict reports the two 3D entries left without a value...
    sd = {k: v for k, v in m2.state_dict().items() if not k.startswith("logits.")}
    with pytest.raises(ValueError, match=r"2 entries of the 3D model with no 2D counterpart: logits\.weight, logits\.bias"):
        inflate_2d_to_3d(sd, m3)
    # ...non-strict inflates the trunk and keeps the new head.
    head = m3.logits.weight.clone()
    inflate_2d_to_3d(sd, m3, strict=False)
    assert torch.equal(m3.logits.weight, head)
    torch.testing.assert_close(m3.Conv3d_2c_3x3.conv.weight.sum(2), m2.Conv3d_2c_3x3.conv.weight)

    # Entries the 3D model does not have.
    extra = dict(inception_v1_2d(num_classes=400).state_dict(), **{"aux1.fc.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"1 entry of the 2D model with no 3D counterpart: aux1\.fc\.weight"):
        inflate_2d_to_3d(extra, m3)
    inflate_2d_to_3d(extra, m3, strict=False)

    # A conv weight that is not the 2D version of the 3D one.
    bad = dict(inception_v1_2d(num_classes=400).state_dict())
    bad["Conv3d_1a_7x7.conv.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ValueError, match=r"Conv3d_1a_7x7\.conv\.weight: 2D \(64, 3, 5, 5\) vs 3D \(64, 3, 7, 7, 7\)"):
        inflate_2d_to_3d(bad, m3)
    with pytest.raises(TypeError):
        inflate_2d_to_3d([1, 2], m3)


# ================================================================================================
# SlowFast
# ================================================================================================


@pytest.fixture(scope="module")
def slowfast_meta():
    with torch.device("meta"):
        return {"8x8": slowfast_r50().eval(), "4x16": slowfast_r50(variant="4x16").eval()}


def test_slowfast_parameter_counts(slowfast_meta):
    assert n_params(slowfast_meta["8x8"]) == SLOWFAST_8X8_PARAMS
    assert n_params(slowfast_meta["4x16"]) == SLOWFAST_4X16_PARAMS
    spec = zoo.get_model_spec("slowfast_r50")
    assert abs(SLOWFAST_8X8_PARAMS - spec.published_params) <= spec.params_rtol * spec.published_params
    # The variants differ only in the laterals' temporal kernels (7 vs 5 taps).
    lateral_weights = sum(cf * 2 * cf for cf in (8, 32, 64, 128))
    assert SLOWFAST_8X8_PARAMS - SLOWFAST_4X16_PARAMS == 2 * lateral_weights


@pytest.mark.parametrize("variant, alpha, kernel", [("8x8", 4, 7), ("4x16", 8, 5)])
def test_slowfast_layers(slowfast_meta, variant, alpha, kernel):
    model = slowfast_meta[variant]
    assert isinstance(model, SlowFast) and model.alpha == alpha
    assert model.slow_stem.conv.kernel_size == (1, 7, 7) and model.slow_stem.conv.out_channels == 64
    assert model.fast_stem.conv.kernel_size == (5, 7, 7) and model.fast_stem.conv.out_channels == 8
    assert model.fast_stem.conv.padding == (2, 3, 3)
    for stem in (model.slow_stem, model.fast_stem):
        assert stem.conv.stride == (1, 2, 2)
        assert (stem.pool.kernel_size, stem.pool.stride, stem.pool.padding) == ((1, 3, 3), (1, 2, 2), (0, 1, 1))
    for name, cf in (("stem", 8), ("res2", 32), ("res3", 64), ("res4", 128)):
        lateral = getattr(model, f"lateral_{name}")
        assert isinstance(lateral, LateralConnection)
        assert [n for n, _ in lateral.named_children()] == ["conv", "bn", "relu"]
        conv = lateral.conv
        assert (conv.in_channels, conv.out_channels) == (cf, 2 * cf)
        assert (conv.kernel_size, conv.stride, conv.padding) == ((kernel, 1, 1), (alpha, 1, 1), (kernel // 2, 0, 0))
        assert conv.bias is None
    assert not hasattr(model, "lateral_res5")
    depths = (3, 4, 6, 3)
    slow_in = (80, 320, 640, 1280)  # 4 * inner of the previous stage + 2 * Cfast of its lateral
    for i, stage in enumerate((2, 3, 4, 5)):
        for path, inner, kt in (("slow", 64 * 2**i, (1, 1, 3, 3)[i]), ("fast", 8 * 2**i, 3)):
            blocks = getattr(model, f"{path}_res{stage}")
            assert len(blocks) == depths[i]
            for j, block in enumerate(blocks):
                assert isinstance(block, Bottleneck)
                assert block.conv_a.kernel_size == (kt, 1, 1) and block.conv_a.padding == (kt // 2, 0, 0)
                assert block.conv_b.kernel_size == (1, 3, 3)
                stride = 2 if (j == 0 and stage > 2) else 1
                assert block.conv_b.stride == (1, stride, stride)
                assert (block.conv_a.out_channels, block.conv_c.out_channels) == (inner, 4 * inner)
                assert (block.shortcut is not None) == (j == 0)
                if j == 0:
                    expected_in = slow_in[i] if path == "slow" else (8 if stage == 2 else 4 * inner // 2)
                    assert block.conv_a.in_channels == expected_in
                    assert block.shortcut.conv.stride == (1, stride, stride)
    assert (model.fc.in_features, model.fc.out_features) == (2048 + 256, 400)
    assert model.dropout.p == 0.5


@pytest.mark.parametrize("variant, slow_frames", [("8x8", 8), ("4x16", 4)])
def test_slowfast_lateral_shapes_and_pathway_frames(slowfast_meta, variant, slow_frames):
    """At the standard 32x224x224 clip (meta device): what each pathway and lateral sees."""
    model = slowfast_meta[variant]
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (tuple(inputs[0].shape), tuple(output.shape))

        return hook

    names = ["slow_stem", "fast_stem", "lateral_stem"]
    for stage in (2, 3, 4, 5):
        names += [f"slow_res{stage}", f"fast_res{stage}"] + ([f"lateral_res{stage}"] if stage < 5 else [])
    handles = [getattr(model, n).register_forward_hook(record(n)) for n in names]
    try:
        out = model(torch.empty(2, 3, 32, 224, 224, device="meta"))
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (2, 400)
    ts, tf = slow_frames, 32
    assert seen["slow_stem"][0] == (2, 3, ts, 224, 224)
    assert seen["fast_stem"][0] == (2, 3, tf, 224, 224)
    assert seen["lateral_stem"] == ((2, 8, tf, 56, 56), (2, 16, ts, 56, 56))
    assert seen["slow_res2"][0] == (2, 64 + 16, ts, 56, 56)
    sizes = {2: 56, 3: 28, 4: 14, 5: 7}
    for stage, fast_out, slow_out in ((2, 32, 256), (3, 64, 512), (4, 128, 1024), (5, 256, 2048)):
        s = sizes[stage]
        assert seen[f"fast_res{stage}"][1] == (2, fast_out, tf, s, s)
        assert seen[f"slow_res{stage}"][1] == (2, slow_out, ts, s, s)
        if stage < 5:
            assert seen[f"lateral_res{stage}"] == ((2, fast_out, tf, s, s), (2, 2 * fast_out, ts, s, s))
            assert seen[f"slow_res{stage + 1}"][0] == (2, slow_out + 2 * fast_out, ts, s, s)


def test_slowfast_input_forms_agree():
    torch.manual_seed(0)
    model = randomise_batch_norm(slowfast_r50(num_classes=11), seed=4, biases=True).eval()
    x = torch.randn(2, 3, 16, 40, 48)
    with torch.no_grad():
        single = model(x)
        pair = model([x[:, :, ::4], x])
        as_tuple = model((x[:, :, ::4].clone(), x.clone()))
        slow, fast = model.features(x)
    assert single.shape == (2, 11)
    torch.testing.assert_close(pair, single, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple, single, rtol=0, atol=0)
    assert slow.shape == (2, 2048, 4, 2, 2) and fast.shape == (2, 256, 16, 2, 2)
    # The slow pathway really is every alpha-th frame: other frames change only the fast path.
    y = x.clone()
    y[:, :, 1::4] += 1.0
    with torch.no_grad():
        y_slow, _ = model.pathway_inputs(y)
    assert torch.equal(y_slow, x[:, :, ::4])


def test_slowfast_input_errors():
    model = slowfast_r50(num_classes=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 3, 10, 32, 32))
    with pytest.raises(ValueError, match="at least 4 frames"):
        model(torch.randn(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="5-D clip"):
        model(torch.randn(3, 8, 32, 32))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 2, 8, 32, 32))
    with pytest.raises(ValueError, match="alpha=4 times the frames"):
        model([torch.randn(1, 3, 3, 32, 32), torch.randn(1, 3, 8, 32, 32)])
    with pytest.raises(ValueError, match="same batch size and frame size"):
        model([torch.randn(1, 3, 2, 32, 32), torch.randn(1, 3, 8, 32, 16)])
    with pytest.raises(ValueError, match=r"slowfast_r50 \(slow pathway\) expects a 5-D clip"):
        model([torch.randn(3, 2, 32, 32), torch.randn(1, 3, 8, 32, 32)])
    with pytest.raises(TypeError, match=r"\[slow, fast\] pair"):
        model([torch.randn(1, 3, 8, 32, 32)] * 3)
    with pytest.raises(ValueError, match="divisible by 8"):
        slowfast_r50(variant="4x16")(torch.randn(1, 3, 12, 32, 32))
    with pytest.raises(ValueError, match="variant must be one of 8x8, 4x16"):
        slowfast_r50(variant="16x8")
    spec = zoo.get_model_spec("slowfast_r50")
    assert spec.min_frames == 4 and spec.input_shape == (3, 32, 224, 224)


# -- against pytorchvideo -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("variant, alpha, kernel", [("8x8", 4, 7), ("4x16", 8, 5)])
def test_slowfast_matches_pytorchvideo(variant, alpha, kernel):
    import_pytorchvideo()
    from pytorchvideo.models.slowfast import create_slowfast

    # pytorchvideo's head pool kernel is fixed by the clip: (T_slow, H/32, W/32) and
    # (T_fast, H/32, W/32) average the whole last maps, like our adaptive pool.
    t_fast, size = 2 * alpha, 64
    torch.manual_seed(0)
    ref = create_slowfast(
        slowfast_fusion_conv_kernel_size=(kernel, 1, 1),
        slowfast_fusion_conv_stride=(alpha, 1, 1),
        head_pool_kernel_sizes=((t_fast // alpha, size // 32, size // 32), (t_fast, size // 32, size // 32)),
    )
    assert n_params(ref) == (SLOWFAST_8X8_PARAMS if variant == "8x8" else SLOWFAST_4X16_PARAMS)
    # pytorchvideo zero-initialises each bottleneck's last BN: randomise so branches count.
    randomise_batch_norm(ref, seed=5, biases=True).eval()
    ours = slowfast_r50(variant=variant).eval()
    converted = convert_pytorchvideo_state_dict(ref.state_dict())
    assert list(converted) == list(ours.state_dict())  # same layers in the same order
    ours.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, t_fast, size, size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = ref([x[:, :, ::alpha], x])
        got = ours(x)
    assert_close_rel(got, expected, 1e-5)


def test_convert_pytorchvideo_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"1 key\(s\) are not part of pytorchvideo's SlowFast layout: blocks\.7\.foo"):
        convert_pytorchvideo_state_dict({"blocks.6.proj.bias": torch.zeros(3), "blocks.7.foo": torch.zeros(1)})


def test_i3d_head_pool_runs_bfloat16_on_cpu():
    """CPU avg_pool3d has no bfloat16 kernel; the head pool computes in float32 there."""
    pool = i3d(num_classes=3).avg_pool
    assert isinstance(pool, nn.AvgPool3d)
    x = torch.randn(1, 8, 3, 7, 9)
    got = pool(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16 and got.shape == (1, 8, 2, 1, 3)
    torch.testing.assert_close(got.float(), nn.AvgPool3d((2, 7, 7), stride=1)(x), rtol=1e-2, atol=1e-2)
