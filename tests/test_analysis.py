"""videoconv.analysis against hand counts, torchvision's published figures and PyTorch itself."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import videoconv.models as zoo
from videoconv.analysis import (
    activation_memory,
    compare_conv_parameters,
    conv_output_shape,
    count_flops,
    count_params,
    midplanes,
    parse_input_shape,
)

# ---------------------------------------------------------------------------------------------
# FLOPs

# torchvision's model cards, in GMACs ("GFLOPS" column) at 1x3x16x112x112.
TORCHVISION_GMACS = {"r3d_18": 40.70, "mc3_18": 43.34, "r2plus1d_18": 40.52}


@pytest.mark.parametrize("name,published", sorted(TORCHVISION_GMACS.items()))
def test_flops_match_torchvision_model_cards(name, published):
    report = count_flops(zoo.get_model(name), (1, 3, 16, 112, 112))
    assert report.gmacs == pytest.approx(published, rel=0.01)
    # Rounded as torchvision rounds, the figure is the same to the last digit.
    assert round(report.gmacs, 2) == published


# Figures the papers give (they say GFLOPs and mean multiply-adds), at the clip they quote.
PAPER_GMACS = [
    # Feichtenhofer et al. 2019, Table 2/3: SlowFast R50 at 256x256 test crops.
    ("slowfast_r50", {"variant": "8x8"}, (1, 3, 32, 256, 256), 65.7),
    ("slowfast_r50", {"variant": "4x16"}, (1, 3, 32, 256, 256), 36.1),
    # Feichtenhofer 2020, Table 3 (the expansion steps): X3D-S 1.96, X3D-M 4.73 GFLOPs.
    ("x3d_s", {}, (1, 3, 13, 160, 160), 1.96),
    ("x3d_m", {}, (1, 3, 16, 224, 224), 4.73),
]


@pytest.mark.parametrize("name,kwargs,shape,published", PAPER_GMACS, ids=lambda v: str(v))
def test_flops_match_the_papers(name, kwargs, shape, published):
    report = count_flops(zoo.get_model(name, **kwargs), shape)
    assert report.gmacs == pytest.approx(published, rel=0.01)


def test_flops_of_one_convolution_by_hand():
    conv = nn.Conv3d(8, 12, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), dilation=(1, 2, 1), groups=4)
    x = torch.randn(2, 8, 6, 20, 21)
    out = conv(x)
    report = count_flops(conv, tuple(x.shape))
    (layer,) = report.layers
    assert layer.output_shape == tuple(out.shape)
    assert layer.macs == out.numel() * (8 // 4) * 3 * 5 * 5
    assert layer.params == 12 * 2 * 75 + 12


def test_flops_table_and_totals_are_consistent():
    model = zoo.get_model("r2plus1d_18")
    report = count_flops(model, (2, 3, 8, 64, 64))
    assert report.total_macs == sum(layer.macs for layer in report.layers)
    assert report.total_flops == 2 * report.total_macs
    assert set(report.by_kind()) == {"Conv3d", "Linear"}
    # Every Conv3d of the model appears exactly once.
    assert sum(1 for l in report.layers if l.kind == "Conv3d") == sum(
        1 for m in model.modules() if isinstance(m, nn.Conv3d)
    )
    table = report.table()
    assert "stem.0" in table and "fc" in table and f"{report.gmacs:.2f} GMACs" in table
    # The model itself was not moved to the meta device.
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_flops_scale_with_batch_and_clip():
    model = zoo.get_model("r3d_18")
    one = count_flops(model, (1, 3, 8, 56, 56)).total_macs
    assert count_flops(model, (4, 3, 8, 56, 56)).total_macs == 4 * one


def test_flops_accept_a_list_of_inputs():
    model = zoo.get_model("slowfast_r50")
    single = count_flops(model, (1, 3, 32, 224, 224))
    as_list = count_flops(model, [(1, 3, 8, 224, 224), (1, 3, 32, 224, 224)])
    assert single.total_macs == as_list.total_macs > 0


def test_parse_input_shape():
    assert parse_input_shape("1x3x16x112x112") == (1, 3, 16, 112, 112)
    with pytest.raises(ValueError, match="1x3x16x112x112"):
        parse_input_shape("1x3xsixteen")
    with pytest.raises(ValueError, match="positive"):
        parse_input_shape("1x0x16")


# ---------------------------------------------------------------------------------------------
# Parameters


def test_count_params_counts_parameters_not_buffers():
    model = nn.Sequential(nn.Conv3d(3, 4, 3, bias=False), nn.BatchNorm3d(4))
    assert count_params(model) == 4 * 3 * 27 + 2 * 4
    model[0].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 2 * 4


# ---------------------------------------------------------------------------------------------
# Output shapes

_SHAPE_CASES = list(
    itertools.product(
        [1, 2, 5, 7, 16],  # input size
        [1, 2, 3, 7],  # kernel
        [1, 2, 3],  # stride
        [0, 1, 3],  # padding
        [1, 2],  # dilation
    )
)


def test_conv_output_shape_agrees_with_conv3d_everywhere():
    checked = 0
    for size, k, s, p, d in _SHAPE_CASES:
        x = torch.empty(1, 1, size, 3, 3, device="meta")
        w = torch.empty(1, 1, k, 1, 1, device="meta")
        if size + 2 * p < d * (k - 1) + 1:
            with pytest.raises(ValueError, match="smaller than the dilated kernel"):
                conv_output_shape((size,), k, s, p, d)
            continue
        expected = F.conv3d(x, w, stride=(s, 1, 1), padding=(p, 0, 0), dilation=(d, 1, 1)).shape[2]
        assert conv_output_shape((size,), k, s, p, d) == (expected,), (size, k, s, p, d)
        checked += 1
    assert checked > 200


def test_conv_output_shape_ceil_mode_agrees_with_max_pool():
    for size, k, s, p in itertools.product([3, 4, 5, 7, 8, 15], [2, 3], [1, 2, 3], [0, 1]):
        if p > k // 2:
            continue
        pool = nn.MaxPool3d((k, 1, 1), (s, 1, 1), (p, 0, 0), ceil_mode=True)
        expected = pool(torch.empty(1, 1, size, 1, 1)).shape[2]
        assert conv_output_shape((size,), k, s, p, ceil_mode=True) == (expected,), (size, k, s, p)


def test_conv_output_shape_of_r3d_stem():
    assert conv_output_shape((16, 112, 112), (3, 7, 7), (1, 2, 2), (1, 3, 3)) == (16, 56, 56)


def test_conv_output_shape_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        conv_output_shape((8, 8, 8), (3, 3))
    with pytest.raises(ValueError, match="stride"):
        conv_output_shape((8, 8, 8), 3, stride=0)


# ---------------------------------------------------------------------------------------------
# 2D vs 3D vs (2+1)D


@pytest.mark.parametrize("cin,cout", [(64, 64), (64, 128), (128, 256), (3, 45), (256, 512)])
def test_compare_conv_parameters_counts_real_modules(cin, cout):
    variants = {v.name: v for v in compare_conv_parameters(cin, cout, input_size=(8, 14, 14))}
    mid = midplanes(cin, cout)
    modules = {
        "2d": nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
        "3d": nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        "(2+1)d": nn.Sequential(
            nn.Conv3d(cin, mid, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.Conv3d(mid, cout, (3, 1, 1), padding=(1, 0, 0), bias=False),
        ),
    }
    for name, module in modules.items():
        assert variants[name].params == count_params(module)
        assert variants[name].macs == count_flops(module, (1, cin, 8, 14, 14)).total_macs
    # Parameter matching: the factorised block never has more weights than the 3D one and is
    # within one middle channel of it.
    assert variants["(2+1)d"].params <= variants["3d"].params
    assert variants["3d"].params - variants["(2+1)d"].params < 9 * cin + 3 * cout


def test_midplanes_are_torchvisions_widths():
    # r2plus1d_18's first block of each stage (in -> out) and torchvision's 230/460/921.
    assert midplanes(64, 128) == 230
    assert midplanes(128, 256) == 460
    assert midplanes(256, 512) == 921
    assert midplanes(64, 64) == 144


def test_compare_conv_parameters_rejects_bad_widths():
    with pytest.raises(ValueError, match="positive"):
        compare_conv_parameters(0, 64)


# ---------------------------------------------------------------------------------------------
# Activation memory


def test_activation_memory_by_hand():
    model = nn.Sequential(
        nn.Conv3d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm3d(8),
        nn.ReLU(inplace=True),
        nn.Conv3d(8, 8, 3, padding=1),
    )
    n_in, n_mid = 2 * 3 * 4 * 8 * 8, 2 * 8 * 4 * 8 * 8
    report = activation_memory(model, (2, 3, 4, 8, 8))
    # conv0 saves its input; BN its input (conv0's output) and the batch mean and inverse std;
    # the in-place ReLU its output, which conv3 saves as its input too (counted once).
    assert report.per_module["0"] == 4 * n_in
    assert report.per_module["1"] == 4 * n_mid + 2 * 4 * 8
    assert report.per_module["2"] == 4 * n_mid
    assert report.total_bytes == 4 * (n_in + 2 * n_mid + 16)
    assert report.param_bytes == 4 * count_params(model)
    half = activation_memory(model, (2, 3, 4, 8, 8), dtype=torch.bfloat16)
    # Activations halve; BatchNorm keeps its batch statistics in float32 for bf16 inputs.
    assert half.total_bytes == 2 * (n_in + 2 * n_mid) + 2 * 4 * 8


def _saved_bytes_on_cpu(model, x):
    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen, kept = {}, []

    def pack(t):
        kept.append(t)
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


@pytest.mark.parametrize("name", ["r2plus1d_18", "x3d_s"])
def test_activation_memory_equals_what_autograd_saves_on_cpu(name):
    model = zoo.get_model(name).train()
    shape = (2,) + zoo.get_model_spec(name).test_input_shape
    estimate = activation_memory(model, shape).total_bytes
    assert estimate == _saved_bytes_on_cpu(model, torch.randn(shape))
    assert estimate > 10 * math.prod(shape) * 4
