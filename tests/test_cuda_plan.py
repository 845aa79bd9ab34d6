"""The CUDA kernels' host-side plan (csrc/cuda/conv_plan.h) through ``videoconv::_cuda_plan``.

The plan is compiled into every build of the extension, so these run on the CPU: which kernel
takes a problem, its tiles and alignment choices, the limits every kernel states as reasons, and
invariants the kernels' index arithmetic relies on (checked over many geometries).
"""

from __future__ import annotations

import itertools
import os
import random

import pytest
import torch
import torch.nn.functional as F

from videoconv.backends import cuda_plan
from videoconv.backends.cuda_plan import parse_plan, plan_conv2plus1d_sizes, plan_conv3d_sizes


def _require_plan_op():
    missing = cuda_plan.plan_available()
    if missing is None:
        return
    if os.environ.get("VIDEOCONV_REQUIRE_EXTENSION") == "1":
        pytest.fail(f"videoconv::_cuda_plan must be available here: {missing}")
    pytest.skip(missing)


@pytest.fixture(autouse=True)
def _plan_op():
    _require_plan_op()


H100 = dict(sm=90, num_sms=132)
SMEM_LIMIT = 48 * 1024


def _out(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ---------------------------------------------------------------------------------------------
# conv3d_bn_act: dense / grouped (CUTLASS)


def test_dense_aligned_bf16_runs_on_cutlass_without_copies():
    plan = plan_conv3d_sizes([8, 64, 16, 56, 56], [128, 64, 3, 3, 3], 1, 1, 1, 1, "bfloat16", **H100)
    assert plan.ok, plan.reasons
    assert plan.kernel == "cutlass_implicit_gemm"
    assert plan["alignment"] == 8
    assert plan["padded_c"] == 64 and plan["pads_input"] == 0
    assert plan["vector_epilogue"] == 1
    assert plan["tile_n"] == 128 and plan["narrow_tile"] == 0
    assert plan["gemm_m"] == 8 * 16 * 56 * 56
    assert plan["gemm_n"] == 128
    assert plan["gemm_k"] == 27 * 64
    assert plan["grid_m"] == -(-plan["gemm_m"] // plan["tile_m"])
    assert (plan["out_d"], plan["out_h"], plan["out_w"]) == (16, 56, 56)


def test_narrow_tile_for_64_or_fewer_output_channels():
    plan = plan_conv3d_sizes([2, 64, 8, 28, 28], [64, 64, 1, 1, 1], dtype="float16", **H100)
    assert plan.ok and plan["tile_n"] == 64 and plan["narrow_tile"] == 1


@pytest.mark.parametrize("dtype,align", [("float16", 8), ("bfloat16", 8), ("float32", 4)])
def test_rgb_stem_pads_input_channels_to_the_vector_width(dtype, align):
    # CUTLASS 2.x's Conv3d iterators only issue 128-bit accesses: C_in = 3 is zero-padded.
    plan = plan_conv3d_sizes([2, 3, 16, 112, 112], [64, 3, 3, 7, 7], (1, 2, 2), (1, 3, 3),
                             dtype=dtype, **H100)
    assert plan.ok, plan.reasons
    assert plan["alignment"] == align
    assert plan["padded_c"] == align and plan["pads_input"] == 1
    assert plan["gemm_k"] == 3 * 7 * 7 * align


@pytest.mark.parametrize("c_out", [230, 460, 921])
def test_torchvision_widths_use_the_scalar_epilogue_when_misaligned(c_out):
    plan = plan_conv3d_sizes([1, 64, 8, 14, 14], [c_out, 64, 1, 3, 3], 1, (0, 1, 1),
                             dtype="bfloat16", **H100)
    assert plan.ok, plan.reasons
    assert plan["vector_epilogue"] == (1 if c_out % 8 == 0 else 0)
    # ... and as input channels they are padded (921 -> 928).
    plan = plan_conv3d_sizes([1, c_out, 8, 14, 14], [64, c_out, 3, 1, 1], 1, (1, 0, 0),
                             dtype="float16", **H100)
    assert plan.ok and plan["padded_c"] == -(-c_out // 8) * 8


def test_grouped_convolution_is_one_launch_per_group():
    plan = plan_conv3d_sizes([2, 64, 8, 14, 14], [128, 16, 3, 3, 3], 1, 1, 1, 4, "bfloat16", **H100)
    assert plan.ok, plan.reasons
    assert plan["launches"] == 4 and plan["gemm_n"] == 32 and plan["gemm_k"] == 27 * 16


def test_grouped_convolution_with_misaligned_groups_is_refused_with_a_reason():
    plan = plan_conv3d_sizes([2, 12, 8, 14, 14], [12, 6, 3, 3, 3], 1, 1, 1, 2, "bfloat16", **H100)
    assert not plan.ok
    assert any("channels per group" in r and "multiple of 8" in r for r in plan.reasons)


def test_float32_follows_the_tf32_switch():
    on = plan_conv3d_sizes([1, 16, 4, 8, 8], [16, 16, 3, 3, 3], 1, 1, dtype="float32",
                           allow_tf32=True, **H100)
    off = plan_conv3d_sizes([1, 16, 4, 8, 8], [16, 16, 3, 3, 3], 1, 1, dtype="float32",
                            allow_tf32=False, **H100)
    assert on.ok and on["tf32"] == 1
    assert not off.ok and any("TF32" in r for r in off.reasons)
    # The direct depthwise kernels compute float32 exactly: no TF32 question there.
    dw = plan_conv3d_sizes([1, 16, 4, 8, 8], [16, 1, 3, 3, 3], 1, 1, 1, 16, "float32",
                           allow_tf32=False, **H100)
    assert dw.ok and dw.kernel == "depthwise_direct"


def test_refusals_name_the_problem():
    f64 = plan_conv3d_sizes([1, 8, 4, 8, 8], [8, 8, 3, 3, 3], dtype="float64", **H100)
    assert not f64.ok and any("float64" in r for r in f64.reasons)
    turing = plan_conv3d_sizes([1, 8, 4, 8, 8], [8, 8, 3, 3, 3], dtype="float16", sm=75)
    assert not turing.ok and any("compute capability 8.0" in r and "7.5" in r for r in turing.reasons)
    big_kernel = plan_conv3d_sizes([1, 8, 4, 40, 40], [8, 8, 1, 33, 3], dtype="float16", **H100)
    assert not big_kernel.ok and any("above 32" in r for r in big_kernel.reasons)
    huge = plan_conv3d_sizes([64, 256, 32, 112, 112], [256, 256, 3, 3, 3], 1, 1, dtype="float16", **H100)
    assert not huge.ok and any("2 GiB" in r for r in huge.reasons)
    bad_groups = plan_conv3d_sizes([1, 8, 4, 8, 8], [8, 3, 3, 3, 3], groups=2, dtype="float16")
    assert not bad_groups.ok and any("groups=2" in r for r in bad_groups.reasons)
    too_small = plan_conv3d_sizes([1, 8, 2, 8, 8], [8, 8, 5, 3, 3], dtype="float16")
    assert not too_small.ok and any("larger than the padded input" in r for r in too_small.reasons)


def test_unknown_device_skips_the_device_checks():
    plan = plan_conv3d_sizes([1, 8, 4, 8, 8], [8, 8, 3, 3, 3], dtype="float16", sm=0)
    assert plan.ok


# ---------------------------------------------------------------------------------------------
# depthwise


@pytest.mark.parametrize("dtype,vec", [("bfloat16", 8), ("float16", 8), ("float32", 4)])
def test_depthwise_x3d_layer_is_vectorized(dtype, vec):
    plan = plan_conv3d_sizes([8, 192, 13, 10, 10], [192, 1, 3, 3, 3], 1, 1, 1, 192, dtype, **H100)
    assert plan.ok, plan.reasons
    assert plan.kernel == "depthwise_direct"
    assert plan["vector_width"] == vec
    assert plan["channels_per_block"] == (64 if dtype != "float32" else 32)
    assert plan["ring_slices"] == 3
    assert plan["smem_bytes"] <= SMEM_LIMIT
    # P = Q = 10: two even tiles of 5, not 8 + 2.
    assert plan["tile_h"] == 5 and plan["tile_w"] == 5


def test_depthwise_odd_channels_use_the_scalar_kernel():
    plan = plan_conv3d_sizes([1, 5, 7, 7, 5], [5, 1, 5, 3, 3], 1, (2, 1, 1), 1, 5, "bfloat16", **H100)
    assert plan.ok and plan["vector_width"] == 1


def test_depthwise_with_a_channel_multiplier_is_refused():
    plan = plan_conv3d_sizes([1, 8, 4, 8, 8], [16, 1, 3, 3, 3], 1, 1, 1, 8, "float16", **H100)
    assert not plan.ok and any("channel multiplier" in r for r in plan.reasons)


def test_depthwise_backward_plan_is_deterministic_and_fits():
    plan = cuda_plan._call("depthwise_backward", [8, 192, 13, 10, 10], [192, 1, 3, 3, 3], [], 1, 1,
                           1, 192, "bfloat16", False, False, True, 90, 132)
    assert plan.ok, plan.reasons
    assert plan.kernel == "depthwise_direct_backward"
    assert plan["deterministic"] == 1
    assert plan["dx_smem_bytes"] <= SMEM_LIMIT and plan["dw_smem_bytes"] <= SMEM_LIMIT
    assert plan["dw_items_per_thread"] <= 4
    assert plan["dw_workspace_bytes"] == plan["dw_chunks"] * 192 * 27 * 4
    dense = cuda_plan._call("depthwise_backward", [1, 8, 4, 8, 8], [8, 8, 3, 3, 3], [], 1, 1, 1, 1,
                            "bfloat16", False, False, True, 90, 132)
    assert not dense.ok and any("not a depthwise" in r for r in dense.reasons)


# ---------------------------------------------------------------------------------------------
# conv2plus1d_bn_act


# (input size, C_mid, C_out, kt, ks, stride, padding, temporal_first): r2plus1d_18's units
R2PLUS1D_UNITS = [
    ([8, 64, 16, 56, 56], 144, 64, 3, 3, 1, 1, False),
    ([8, 64, 16, 56, 56], 230, 128, 3, 3, 2, 1, False),
    ([8, 128, 8, 28, 28], 288, 128, 3, 3, 1, 1, False),
    ([8, 256, 4, 14, 14], 460, 256, 3, 3, 1, 1, False),
    ([8, 512, 2, 7, 7], 921, 512, 3, 3, 1, 1, False),
    ([8, 64, 16, 56, 56], 144, 64, 3, 3, 1, 1, True),
    ([2, 3, 8, 32, 32], 45, 64, 3, 7, (1, 2, 2), (1, 3, 3), False),
]


def _plus1d_plan(input_size, cmid, cout, kt, ks, stride, padding, tf, dtype="bfloat16", **kw):
    k_spatial, k_temporal = (1, ks, ks), (kt, 1, 1)
    k1, k2 = (k_temporal, k_spatial) if tf else (k_spatial, k_temporal)
    w1 = [cmid, input_size[1], *k1]
    w2 = [cout, cmid, *k2]
    return plan_conv2plus1d_sizes(input_size, w1, w2, stride, padding, tf, dtype, **kw)


@pytest.mark.parametrize("unit", R2PLUS1D_UNITS, ids=lambda u: f"{u[0][1]}-{u[1]}-{u[2]}{'-tf' if u[-1] else ''}")
def test_conv2plus1d_tiles_respect_the_kernels_invariants(unit):
    input_size, cmid, cout, kt, ks, stride, padding, tf = unit
    plan = _plus1d_plan(*unit, **H100)
    assert plan.ok, plan.reasons
    assert plan.kernel == "conv2plus1d_fused"
    assert plan["smem_bytes"] <= SMEM_LIMIT
    m = plan["tile_d"] * plan["tile_h"] * plan["tile_w"]
    # phase B: one 4 x 8 micro-tile per thread; phase A: one 4 x 4 micro-tile per thread
    assert -(-m // 4) * (plan["cout_tile"] // 8) <= 256
    assert -(-plan["mid_tile_positions"] // 4) * (plan["cmid_chunk"] // 4) <= 256
    assert plan["cout_tile"] % 8 == 0 and plan["cmid_chunk"] % 4 == 0
    assert plan["cout_tiles"] == -(-cout // plan["cout_tile"])
    assert plan["mid_recompute_x1000"] >= 1000
    st, sh, sw = stride if isinstance(stride, tuple) else (stride,) * 3
    pt, ph, pw = padding if isinstance(padding, tuple) else (padding,) * 3
    d, h, w = input_size[2:]
    assert plan["out_d"] == _out(d, kt, st, pt)
    assert plan["out_h"] == _out(h, ks, sh, ph) and plan["out_w"] == _out(w, ks, sw, pw)


def test_conv2plus1d_refuses_mismatched_weights():
    plan = plan_conv2plus1d_sizes([1, 4, 5, 8, 8], [6, 4, 1, 3, 3], [5, 7, 3, 1, 1], 1, 1, False,
                                  "float16", **H100)
    assert not plan.ok and any("w2 expects 7" in r for r in plan.reasons)


def test_conv2plus1d_float64_is_refused():
    plan = _plus1d_plan([1, 4, 5, 8, 8], 6, 5, 3, 3, 1, 1, False, dtype="float64")
    assert not plan.ok and any("float64" in r for r in plan.reasons)


def test_unknown_operator():
    plan = cuda_plan._call("conv4d", [1], [1], [], 1, 0, 1, 1, "float16", False, False, True, 0, 0)
    assert not plan.ok and "unknown operator" in plan.reasons[0]


# ---------------------------------------------------------------------------------------------
# invariants over many geometries


def _geometries(count, seed=0):
    rng = random.Random(seed)
    for _ in range(count):
        k = [rng.choice([1, 3, 5, 7]) for _ in range(3)]
        s = [rng.choice([1, 2]) for _ in range(3)]
        dl = [rng.choice([1, 1, 2]) for _ in range(3)]
        p = [rng.randint(0, kk // 2) * dd for kk, dd in zip(k, dl)]
        size = [rng.randint(1, 12) + (kk - 1) * dd for kk, dd in zip(k, dl)]
        yield [rng.randint(1, 3), rng.choice([1, 3, 5, 8, 16, 24, 64]), *size], k, s, p, dl


def test_output_sizes_match_torch_and_depthwise_tiles_fit():
    for input_size, k, s, p, dl in _geometries(300):
        c = input_size[1]
        expected = F.conv3d(torch.empty(input_size, device="meta"),
                            torch.empty([c, 1, *k], device="meta"), None, s, p, dl, c).shape
        plan = plan_conv3d_sizes(input_size, [c, 1, *k], s, p, dl, c, "bfloat16", **H100)
        assert [plan["out_d"], plan["out_h"], plan["out_w"]] == list(expected[2:])
        assert plan.ok, (input_size, k, s, p, dl, plan.reasons)
        if c == 1:  # groups == 1: an ordinary convolution
            assert plan.kernel == "cutlass_implicit_gemm"
            continue
        assert plan.kernel == "depthwise_direct"
        assert plan["smem_bytes"] <= SMEM_LIMIT
        assert plan["tile_h"] <= expected[3] and plan["tile_w"] <= expected[4]
        assert plan["depths_per_block"] <= expected[2]
        back = cuda_plan._call("depthwise_backward", input_size, [c, 1, *k], [], s, p, dl, c,
                               "float32", False, False, True, 90, 132)
        assert back.ok, back.reasons
        assert back["dx_smem_bytes"] <= SMEM_LIMIT and back["dw_smem_bytes"] <= SMEM_LIMIT


def test_dense_plans_over_many_geometries():
    for (input_size, k, s, p, dl), c_out in zip(_geometries(200, seed=1),
                                                itertools.cycle([8, 13, 64, 96, 921])):
        c = input_size[1]
        plan = plan_conv3d_sizes(input_size, [c_out, c, *k], s, p, dl, 1, "float16", **H100)
        assert plan.ok, plan.reasons
        assert plan["padded_c"] % 8 == 0 and 0 <= plan["padded_c"] - c < 8
        assert plan["vector_epilogue"] == (1 if c_out % 8 == 0 else 0)
        assert plan["gemm_k"] == k[0] * k[1] * k[2] * plan["padded_c"]


def test_parse_plan_round_trip():
    plan = parse_plan("kernel=x\na=1\nb=-2\nreason=one\nreason=two: a=b\n")
    assert plan.kernel == "x" and plan.fields == {"a": 1, "b": -2}
    assert plan.reasons == ["one", "two: a=b"] and not plan.ok
