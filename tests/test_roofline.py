"""videoconv.analysis.roofline: hand-counted FLOPs/bytes, bounds, device specs and their cache."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from videoconv.analysis import roofline
from videoconv.analysis.roofline import (DATASHEET_SPECS, DeviceSpec, achieved, attainable,
                                         device_spec, layer_cost, roofline_time)
from videoconv.bench.layers import LayerWorkload

# A toy device: 1 TFLOP/s in float32 and 0.5 in bfloat16, 100 GB/s (ridge point 10 FLOP/B).
TOY = DeviceSpec(name="toy", peak_tflops={"float32": 1.0, "bfloat16": 0.5}, bandwidth_gbs=100.0,
                 source="datasheet: made up for the test")

# Case 1: a 1x1x1 conv, x (1, 2, 1, 2, 2) = 8 elements, w (3, 2, 1, 1, 1) = 6, y (1, 3, 1, 2, 2) = 12.
#   MACs = 12 outputs * 2 input channels = 24, FLOPs = 48.
#   fused:   read x 8 + w 6 + scale/shift 2*3 = 20, write y 12                        -> 32 elements
#   unfused: conv  read 8 + 6, write 12                                                = 26
#            bn    read 12 + 4*3 (mean, var, gamma, beta), write 12                    = 36
#            act   read 12, write 12                                                   = 24  -> 86
#   + residual: fused reads 12 more (44); unfused adds "add": read 12 + 12, write 12 = 36 (122)
CASE1 = dict(weight=(3, 2, 1, 1, 1))
X1 = (1, 2, 1, 2, 2)


def test_pointwise_conv_counts_by_hand():
    c = layer_cost(X1, "float32", **CASE1)
    assert c.kind == "conv3d_bn_act"
    assert c.output_shape == (1, 3, 1, 2, 2)
    assert (c.macs, c.flops) == (24, 48)
    assert c.bytes_fused == 32 * 4
    assert c.bytes_unfused == 86 * 4
    assert [p.name for p in c.unfused_passes] == ["conv", "bn", "act"]
    assert [(p.read, p.write) for p in c.unfused_passes] == [(56, 48), (96, 48), (48, 48)]
    assert c.bytes_conv_only == 26 * 4
    assert c.bytes_fused_per_conv == c.bytes_fused
    assert c.intensity_fused == pytest.approx(48 / 128)
    assert c.intensity_unfused == pytest.approx(48 / 344)
    assert c.intensity == c.intensity_fused

    b = layer_cost(X1, torch.bfloat16, **CASE1)  # 2 bytes per element, same FLOPs
    assert (b.dtype, b.flops, b.bytes_fused, b.bytes_unfused) == ("bfloat16", 48, 64, 172)


def test_residual_and_identity_passes():
    r = layer_cost(X1, "float32", residual=True, **CASE1)
    assert r.bytes_fused == 44 * 4
    assert [p.name for p in r.unfused_passes] == ["conv", "bn", "add", "act"]
    assert r.bytes_unfused == 122 * 4
    ident = layer_cost(X1, "float32", residual=True, activation="identity", **CASE1)
    assert [p.name for p in ident.unfused_passes] == ["conv", "bn", "add"]
    assert ident.bytes_unfused == (26 + 36 + 36) * 4
    assert ident.bytes_fused == r.bytes_fused  # the activation is free when fused


def test_strided_depthwise_conv_counts():
    # x (1, 4, 4, 6, 6) = 576, depthwise 3x3x3 stride (1, 2, 2) pad 1: w (4, 1, 3, 3, 3) = 108,
    # y (1, 4, 4, 3, 3) = 144. MACs = 144 * 27 = 3888.
    # fused = 576 + 108 + 8 + 144 = 836 elements; unfused = (576 + 108 + 144) + (144 + 16 + 144)
    # + (144 + 144) = 1420 elements.
    c = layer_cost((1, 4, 4, 6, 6), "float16", weight=(4, 1, 3, 3, 3), stride=(1, 2, 2),
                   padding=1, groups=4, activation="silu")
    assert c.output_shape == (1, 4, 4, 3, 3)
    assert c.macs == 3888
    assert (c.bytes_fused, c.bytes_unfused) == (836 * 2, 1420 * 2)
    # Taps that read the input, not the zero padding: T (4 outputs, stride 1) 2+3+3+2 = 10;
    # H and W (3 outputs, stride 2, first reads rows -1..1) 2+3+3 = 8 each; x 4 channels.
    assert c.useful_macs == 4 * 10 * 8 * 8
    assert c.useful_flops == 2 * c.useful_macs
    assert c.intensity_fused == pytest.approx(c.useful_flops / c.bytes_fused)


@pytest.mark.parametrize("shape,kw", [
    ((2, 3, 2, 7, 7), dict(weight=(5, 3, 3, 3, 3), padding=1)),
    ((1, 4, 5, 9, 8), dict(weight=(4, 1, 3, 5, 3), stride=(1, 2, 3), padding=(1, 2, 0), groups=4)),
    ((1, 2, 6, 6, 6), dict(weight=(3, 2, 3, 3, 3), padding=2, dilation=2)),
    ((1, 2, 3, 5, 5), dict(convs=[dict(weight=(4, 2, 1, 3, 3), padding=(0, 1, 1)),
                                  dict(weight=(2, 4, 3, 1, 1), padding=(1, 0, 0))])),
])
def test_useful_macs_equal_a_convolution_of_ones(shape, kw):
    """conv(ones, ones) sums, at each output, the taps that land inside the input (times the
    input channels per group): its total over all outputs is the useful MAC count."""
    c = layer_cost(shape, "float32", **kw)
    total = 0.0
    x = torch.ones(shape, dtype=torch.float64)
    for conv in kw.get("convs") or [kw]:
        conv = dict(conv)
        w = torch.ones(conv.pop("weight"), dtype=torch.float64)
        y = torch.nn.functional.conv3d(x, w, **conv)
        total += y.sum().item()
        x = torch.ones_like(y)
    assert c.useful_macs == int(total)
    assert c.useful_macs <= c.macs


# Case 2: a (2+1)D unit, x (1, 2, 3, 4, 4) = 96 elements.
#   conv1 w1 (4, 2, 1, 3, 3) = 72, padding (0, 1, 1) -> h (1, 4, 3, 4, 4) = 192; MACs 192 * 2 * 9 = 3456
#   conv2 w2 (5, 4, 3, 1, 1) = 60, padding (1, 0, 0) -> y (1, 5, 3, 4, 4) = 240; MACs 240 * 4 * 3 = 2880
#   fused:   read 96 + 72 + 60 + 2*(4 + 5) = 246, write 240                          -> 486
#   unfused: conv1 96+72 | 192 = 360, bn1 192+16 | 192 = 400, act1 192 | 192 = 384,
#            conv2 192+60 | 240 = 492, bn2 240+20 | 240 = 500, act2 240 | 240 = 480 -> 2616
#   per conv (two conv3d_bn_act kernels): (96+72+8 | 192) + (192+60+10 | 240) = 368 + 502 = 870
UNIT = [dict(weight=(4, 2, 1, 3, 3), padding=(0, 1, 1)), dict(weight=(5, 4, 3, 1, 1), padding=(1, 0, 0))]
X2 = (1, 2, 3, 4, 4)


def test_conv2plus1d_unit_counts_by_hand():
    c = layer_cost(X2, "float32", convs=UNIT)
    assert c.kind == "conv2plus1d_bn_act"
    assert c.intermediate_shape == (1, 4, 3, 4, 4)
    assert c.output_shape == (1, 5, 3, 4, 4)
    assert (c.macs, c.flops) == (6336, 12672)
    assert c.bytes_fused == 486 * 4
    assert c.bytes_unfused == 2616 * 4
    assert [p.name for p in c.unfused_passes] == ["conv1", "bn1", "act1", "conv2", "bn2", "act2"]
    assert [p.bytes // 4 for p in c.unfused_passes] == [360, 400, 384, 492, 500, 480]
    assert c.bytes_fused_per_conv == 870 * 4
    assert c.bytes_conv_only == (360 + 492) * 4
    assert c.bytes_fused < c.bytes_fused_per_conv < c.bytes_unfused
    # with a residual: fused reads 240 more, unfused gets an add pass (480 + 240) before act2
    r = layer_cost(X2, "float32", convs=UNIT, residual=True)
    assert r.bytes_fused == (486 + 240) * 4
    assert r.bytes_unfused == (2616 + 720) * 4
    assert r.bytes_fused_per_conv == (870 + 240) * 4


def test_layer_workload_is_accepted_and_matches_explicit_shapes():
    wl = LayerWorkload(model="toy", name="layer1", kind="conv2plus1d_bn_act", input_shape=X2,
                       output_shape=(1, 5, 3, 4, 4),
                       convs=[dict(weight=list(c["weight"]), stride=[1, 1, 1], padding=list(c["padding"]),
                                   dilation=[1, 1, 1], groups=1) for c in UNIT],
                       activation="relu", residual=True, count=2, macs=6336)
    c = layer_cost(wl, "float32")
    assert c == layer_cost(X2, "float32", convs=UNIT, residual=True)
    with pytest.raises(ValueError):
        layer_cost(wl, "float32", weight=(3, 2, 1, 1, 1))


def test_traced_workloads_agree_with_trace_macs():
    from videoconv.bench.layers import trace_layers

    for wl in trace_layers("r2plus1d_18", (3, 4, 16, 16)):
        c = layer_cost(wl, "bfloat16")
        assert c.flops == 2 * wl.macs
        assert c.output_shape == tuple(wl.output_shape)
        assert c.bytes_fused < c.bytes_unfused
        assert c.bytes_fused <= c.bytes_fused_per_conv
        assert roofline_time(c, DATASHEET_SPECS["H100 SXM"]).fusion_headroom >= 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="channels"):
        layer_cost((1, 3, 1, 2, 2), weight=(3, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="exactly one"):
        layer_cost(X1)
    with pytest.raises(ValueError, match="dtype"):
        layer_cost(X1, "int8", **CASE1)


def test_roofline_time_headroom_attainable_and_achieved():
    c = layer_cost(X1, "float32", **CASE1)
    t = roofline_time(c, TOY)
    assert t.compute_s == pytest.approx(48 / 1e12)
    assert t.fused_s == pytest.approx(128 / 1e11)  # memory-bound: 1.28 ns
    assert t.unfused_s == pytest.approx(344 / 1e11)
    assert t.fusion_headroom == pytest.approx(344 / 128)
    assert (t.fused_bound, t.unfused_bound) == ("memory", "memory")

    # compute-bound everywhere on an infinitely fast memory: fusion cannot win
    fast = DeviceSpec("fast-mem", {"float32": 1.0}, 1e9, "datasheet: test")
    big = layer_cost((1, 256, 1, 8, 8), "float32", weight=(256, 256, 1, 1, 1))
    assert roofline_time(big, fast).fusion_headroom == 1.0
    assert roofline_time(big, fast).fused_bound == "compute"

    assert TOY.ridge_point("float32") == pytest.approx(10.0)
    assert attainable(5.0, TOY, "float32") == pytest.approx(0.5)
    assert attainable(100.0, TOY, "float32") == pytest.approx(1.0)
    assert attainable(100.0, TOY, "bfloat16") == pytest.approx(0.5)

    a = achieved(c, 2.56e-6, TOY)  # 2.56 ns, twice the fused bound
    assert a.pct_of_roofline == pytest.approx(50.0)
    assert a.tflops == pytest.approx(48 / 2.56e-9 / 1e12)
    assert a.gbs == pytest.approx(50.0)
    e = achieved(c, 3.44e-6, TOY, fused=False)  # the eager chain exactly at its bound
    assert e.pct_of_roofline == pytest.approx(100.0)

    row = roofline.fusion_summary(c, TOY, eager_ms=6.88e-6, fused_ms=2.56e-6)
    assert row["fusion_headroom"] == pytest.approx(2.6875)
    assert row["fusion_won"] == pytest.approx(6.88 / 2.56)
    assert row["eager_pct_of_roofline"] == pytest.approx(50.0)
    assert row["fused_pct_of_roofline"] == pytest.approx(50.0)


def test_datasheet_specs():
    h100, h200, a100 = (DATASHEET_SPECS[n] for n in ("H100 SXM", "H200", "A100 SXM 80GB"))
    assert (h100.peak("bfloat16"), h100.peak(torch.float16), h100.peak("tf32"), h100.peak("float32"),
            h100.bandwidth_gbs) == (989.4, 989.4, 494.7, 66.9, 3350.0)
    assert h200.peak_tflops == h100.peak_tflops and h200.bandwidth_gbs == 4800.0
    assert (a100.peak("bf16"), a100.peak("tf32"), a100.peak("float32"), a100.bandwidth_gbs) == (
        312.0, 156.0, 19.5, 2039.0)
    for spec in DATASHEET_SPECS.values():
        assert spec.source.startswith("datasheet: ")
    # H100 SXM ridge point in bf16: 989.4e12 / 3350e9 = 295.3 FLOP/B
    assert h100.ridge_point("bfloat16") == pytest.approx(295.34, abs=0.01)
    with pytest.raises(KeyError, match="float64"):
        h100.peak("float64")


@pytest.mark.parametrize("gpu,expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 SXM5 80GB", "H100 SXM"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA H100 PCIe", None),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA GH200 480GB", None),
    ("NVIDIA A100-SXM4-40GB", None),
])
def test_device_spec_matches_gpu_names(monkeypatch, gpu, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    if expected is None:
        with pytest.raises(ValueError, match="no datasheet spec"):
            device_spec("cuda:0", unknown="error")
    else:
        assert device_spec("cuda:0") is DATASHEET_SPECS[expected]


def test_math_dtype():
    assert roofline.math_dtype("float32", "cpu") == "float32"
    assert roofline.math_dtype(torch.bfloat16, "cuda") == "bfloat16"
    assert roofline.math_dtype("float32", "cuda") == ("tf32" if torch.backends.cudnn.allow_tf32 else "float32")
    assert roofline.element_size("tf32") == 4 and roofline.element_size("bf16") == 2


TINY = dict(size=64, copy_mb=1, repeats=1)


def test_measure_cpu_spec_is_positive_and_finite():
    spec = roofline.measure_cpu_spec(**TINY)
    assert spec.source.startswith("measured: ")
    assert set(spec.peak_tflops) == {"float32", "tf32", "bfloat16"}
    for value in list(spec.peak_tflops.values()) + [spec.bandwidth_gbs]:
        assert math.isfinite(value) and value > 0
    assert spec.peak("tf32") == spec.peak("float32")


def test_cpu_spec_disk_cache_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOCONV_CACHE_DIR", str(tmp_path))
    roofline.cpu_spec.cache_clear()
    try:
        first = roofline.cpu_spec(**TINY)
        path = tmp_path / "device_specs.json"
        data = json.loads(path.read_text())
        (key,) = data
        assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key
        assert DeviceSpec.from_dict(data[key]["spec"]) == first

        # a new process (empty lru cache) reads the file instead of measuring
        roofline.cpu_spec.cache_clear()

        def no_measuring(*args, **kwargs):
            raise AssertionError("measured although the disk cache holds the spec")

        monkeypatch.setattr(roofline, "measure_cpu_spec", no_measuring)
        assert roofline.cpu_spec(**TINY) == first
        assert roofline.cpu_spec(**TINY) is roofline.cpu_spec(**TINY)  # per-process cache
        # an entry measured with other parameters is not reused
        with pytest.raises(AssertionError, match="measured although"):
            roofline.cpu_spec(size=32, copy_mb=1, repeats=1)
    finally:
        roofline.cpu_spec.cache_clear()


def test_device_spec_cpu_uses_the_measured_spec(monkeypatch):
    monkeypatch.setattr(roofline, "cpu_spec", lambda: TOY)
    assert device_spec("cpu") is TOY
    with pytest.raises(ValueError, match="unknown must be"):
        device_spec("cpu", unknown="guess")
