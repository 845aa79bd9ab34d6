"""The Triton one-kernel (2+1)D unit (videoconv/triton/conv2plus1d_bn_act.py) against the float64
reference.

Without a GPU the kernel runs through Triton's interpreter on CPU tensors: run with
``TRITON_INTERPRET=1`` (set before videoconv's Triton kernels are imported). The shape table
covers both orders (spatial first, temporal first), temporal kernels 1/2/3/5, spatial kernels
1/3/7, strides (1,1,1)/(1,2,2)/(2,2,2)/(2,1,1)/(3,2,2), middle widths that are not multiples of 8
or of the tile (17, 23, 45, 46), odd sizes, both layouts, residual or not, every activation,
float32/float16/bfloat16. The ahead-of-time test compiles every variant of ``aot_variants()``
for sm_80 and sm_90 and needs neither a GPU nor the interpreter.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import pytest
import torch

from videoconv.backends import reference

pytestmark = pytest.mark.triton

c21 = pytest.importorskip("videoconv.triton.conv2plus1d_bn_act")
from videoconv.triton._common import INTERPRET  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
needs_runtime = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 (set before import) or a CUDA GPU",
)


class Case(NamedTuple):
    temporal_first: bool
    kt: int
    k: int  # spatial kernel k x k
    stride: Tuple[int, int, int]
    padding: Tuple[int, int, int]
    c_in: int
    c_mid: int
    c_out: int
    size: Tuple[int, int, int, int]  # N, D, H, W
    channels_last: bool
    residual: bool
    activation: str


# Interpreter config: 64 rows, 32 second-GEMM columns (8 output channels per slot when 4 slots
# are in flight), middle blocks of 16 and input-channel blocks of 16 — the widths below cross
# each of those tile edges.
SF, TF, CL, NCDHW = False, True, True, False
CASES = {
    # name: (temporal_first, kt, k, stride, padding, C_in, C_mid, C_out, (N, D, H, W), layout,
    #        residual, activation)
    "sf_k3_s111": Case(SF, 3, 3, (1, 1, 1), (1, 1, 1), 5, 23, 11, (2, 5, 6, 7), CL, True, "relu"),
    "sf_k3_s122": Case(SF, 3, 3, (1, 2, 2), (1, 1, 1), 19, 23, 7, (1, 4, 7, 6), CL, False, "silu"),
    "sf_k3_s222": Case(SF, 3, 3, (2, 2, 2), (1, 1, 1), 5, 46, 7, (1, 7, 5, 5), NCDHW, True,
                       "identity"),
    "sf_k3_s211": Case(SF, 3, 3, (2, 1, 1), (1, 1, 1), 8, 23, 16, (1, 6, 4, 5), CL, True, "relu"),
    "sf_k5": Case(SF, 5, 3, (1, 1, 1), (2, 1, 1), 5, 23, 9, (1, 7, 4, 5), CL, True, "silu"),
    "sf_k2_nopad": Case(SF, 2, 3, (1, 1, 1), (0, 0, 0), 5, 17, 7, (1, 5, 6, 5), NCDHW, False,
                        "relu"),
    "sf_k3_s322": Case(SF, 3, 3, (3, 2, 2), (1, 1, 1), 5, 23, 7, (1, 8, 5, 6), CL, True, "relu"),
    "sf_k1": Case(SF, 1, 3, (1, 1, 1), (0, 1, 1), 5, 23, 7, (2, 3, 5, 5), NCDHW, False, "relu"),
    "sf_spatial1": Case(SF, 3, 1, (1, 1, 1), (1, 0, 0), 16, 23, 16, (1, 5, 4, 4), CL, True,
                        "identity"),
    "sf_stem": Case(SF, 3, 7, (1, 2, 2), (1, 3, 3), 3, 45, 16, (1, 3, 7, 7), CL, False, "relu"),
    "tf_k3_s111": Case(TF, 3, 3, (1, 1, 1), (1, 1, 1), 5, 23, 11, (2, 4, 9, 5), CL, True, "relu"),
    "tf_k3_s122": Case(TF, 3, 3, (1, 2, 2), (1, 1, 1), 19, 23, 7, (1, 4, 7, 6), CL, False, "silu"),
    "tf_k3_s222": Case(TF, 3, 3, (2, 2, 2), (1, 1, 1), 5, 46, 7, (1, 7, 5, 5), NCDHW, True,
                       "identity"),
    "tf_k3_s211": Case(TF, 3, 3, (2, 1, 1), (1, 1, 1), 8, 23, 16, (1, 6, 4, 5), CL, True, "relu"),
    "tf_k5": Case(TF, 5, 3, (1, 1, 1), (2, 1, 1), 5, 23, 9, (1, 7, 4, 5), NCDHW, True, "silu"),
    "tf_k1": Case(TF, 1, 3, (1, 1, 1), (0, 1, 1), 5, 23, 7, (2, 3, 5, 5), CL, False, "relu"),
    "tf_spatial1": Case(TF, 3, 1, (1, 1, 1), (1, 0, 0), 16, 23, 16, (1, 5, 4, 4), CL, True,
                        "identity"),
}

# Max error relative to the output's max |value|. The 16-bit tolerances cover the rounding of
# the intermediate to the input dtype (which the float64 reference does not do) and of the output.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.float32 and c21._input_precision(dtype) == "tf32":
        return 5e-3  # a GPU run where cuDNN-style TF32 is allowed
    return TOLERANCES[dtype]


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, d, h, w = case.size
    if case.temporal_first:
        w1_shape = (case.c_mid, case.c_in, case.kt, 1, 1)
        w2_shape = (case.c_out, case.c_mid, 1, case.k, case.k)
    else:
        w1_shape = (case.c_mid, case.c_in, 1, case.k, case.k)
        w2_shape = (case.c_out, case.c_mid, case.kt, 1, 1)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def fan_in(shape):
        return shape[1] * shape[2] * shape[3] * shape[4]

    x = randn(n, case.c_in, d, h, w)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    inputs = dict(
        input=x,
        w1=randn(*w1_shape, scale=fan_in(w1_shape) ** -0.5),
        scale1=torch.rand(case.c_mid, generator=g) + 0.5,
        shift1=randn(case.c_mid, scale=0.2),
        w2=randn(*w2_shape, scale=fan_in(w2_shape) ** -0.5),
        scale2=torch.rand(case.c_out, generator=g) + 0.5,
        shift2=randn(case.c_out, scale=0.2),
        stride=case.stride,
        padding=case.padding,
        activation=case.activation,
        temporal_first=case.temporal_first,
        residual=None,
    )
    if case.residual:
        out = reference.conv2plus1d_bn_act(**inputs)
        # The residual in the other layout than the input: it is read through its strides.
        layout = torch.contiguous_format if case.channels_last else torch.channels_last_3d
        inputs["residual"] = randn(*out.shape).contiguous(memory_format=layout)
    return {k: (v.to(DEVICE, dtype) if isinstance(v, torch.Tensor) else v)
            for k, v in inputs.items()}


def reference_f64(inputs):
    as64 = {k: (v.cpu().double() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    return reference.conv2plus1d_bn_act(**as64)


def assert_close_to_reference(out: torch.Tensor, inputs, dtype: torch.dtype):
    expected = reference_f64(inputs)
    assert out.shape == expected.shape
    assert out.dtype == dtype
    x = inputs["input"]
    layout = (torch.channels_last_3d
              if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
              else torch.contiguous_format)
    assert out.is_contiguous(memory_format=layout), "output must have the input's layout"
    assert torch.isfinite(out).all()
    scale = expected.abs().max().item()
    assert scale > 0.1, "degenerate test data"
    err = (out.cpu().double() - expected).abs().max().item() / scale
    assert err <= _tolerance(dtype), f"max error {err:.3g} x max|y| (tolerance {_tolerance(dtype)})"


@needs_runtime
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name, dtype):
    inputs = make_inputs(CASES[name], dtype)
    out = c21.conv2plus1d_bn_act(**inputs)
    assert_close_to_reference(out, inputs, dtype)


@needs_runtime
@pytest.mark.parametrize("name, chunk", [("sf_k3_s111", 1), ("sf_k3_s111", 2), ("sf_k5", 2),
                                         ("sf_k5", 3), ("sf_k3_s222", 1), ("sf_k3_s322", 2),
                                         ("tf_k3_s111", 1), ("tf_k3_s111", 3), ("tf_k3_s211", 2)])
def test_chunks_along_the_rolled_axis(name, chunk):
    """Programs own ``chunk`` outputs along time (spatial first) or W (temporal first) and
    recompute the halo of the first conv at the chunk edges (the main test runs one chunk for
    the whole axis)."""
    inputs = make_inputs(CASES[name], torch.float32, seed=1)
    out = c21._launch(**inputs, chunk=chunk)
    assert_close_to_reference(out, inputs, torch.float32)


@needs_runtime
@pytest.mark.parametrize("name", ["sf_stem", "sf_k3_s122", "tf_k3_s122"])
@pytest.mark.parametrize("flat_k", [False, True])
def test_both_walks_of_the_first_conv(name, flat_k):
    """The channel-blocked and the flat (tap, channel) walk of the first conv's K agree."""
    inputs = make_inputs(CASES[name], torch.float16, seed=2)
    out = c21._launch(**inputs, flat_k=flat_k)
    assert_close_to_reference(out, inputs, torch.float16)


@needs_runtime
@pytest.mark.parametrize("dtype, eps", [(torch.float32, 2.0**-12), (torch.float16, 2.0**-12),
                                        (torch.bfloat16, 2.0**-10)], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("temporal_first", [False, True], ids=["sf", "tf"])
def test_intermediate_is_rounded_to_the_input_dtype(dtype, eps, temporal_first):
    """h = [1 + eps, 1] with eps below half an ulp of 1 in 16 bits, then y = h0 - h1: the eager
    chain stores h in the input dtype, so y is exactly 0 in float16/bfloat16 and exactly eps in
    float32. A kernel that kept h in float32 would return eps in every dtype."""
    x = torch.ones(1, 1, 3, 2, 2)
    w1 = torch.ones(2, 1, 1, 1, 1)
    w2 = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1, 1)
    inputs = dict(input=x, w1=w1, scale1=torch.ones(2), shift1=torch.tensor([eps, 0.0]), w2=w2,
                  scale2=torch.ones(1), shift2=torch.zeros(1), stride=(1, 1, 1),
                  padding=(0, 0, 0), activation="identity", temporal_first=temporal_first,
                  residual=None)
    inputs = {k: (v.to(DEVICE, dtype) if isinstance(v, torch.Tensor) else v)
              for k, v in inputs.items()}
    out = c21.conv2plus1d_bn_act(**inputs)
    eager = reference.conv2plus1d_bn_act(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                            for k, v in inputs.items()})
    expected = eps if dtype == torch.float32 else 0.0
    assert torch.equal(eager, torch.full_like(eager, expected))
    assert torch.equal(out.cpu(), eager)


@needs_runtime
def test_zero_padding_of_the_intermediate_is_not_act_of_shift():
    """The second conv pads h with zeros, not with act(shift1) (what computing the first conv on
    padded input positions would give): a large shift1 makes the difference obvious."""
    for case in (CASES["sf_k3_s111"], CASES["tf_k3_s111"]):
        inputs = make_inputs(case._replace(residual=False, activation="identity"), torch.float32)
        inputs["shift1"] = inputs["shift1"] + 5.0
        out = c21.conv2plus1d_bn_act(**inputs)
        assert_close_to_reference(out, inputs, torch.float32)


def test_not_supported_reasons():
    case = CASES["sf_k3_s111"]
    inputs = make_inputs(case, torch.float32)
    kw = {k: inputs[k] for k in ("input", "w1", "w2", "stride", "padding", "temporal_first")}
    assert c21.not_supported_reasons(**kw) == []
    as64 = dict(kw, input=kw["input"].double(), w1=kw["w1"].double(), w2=kw["w2"].double())
    assert any("float64" in r for r in c21.not_supported_reasons(**as64))
    long_kernel = dict(kw, w2=torch.zeros(case.c_out, case.c_mid, 9, 1, 1, device=DEVICE),
                       padding=(4, 1, 1))
    assert any("in flight" in r for r in c21.not_supported_reasons(**long_kernel))
    other = "cuda" if INTERPRET else "cpu"
    if other == "cpu" or torch.cuda.is_available():
        moved = dict(kw, input=kw["input"].to(other))
        assert any("tensors" in r for r in c21.not_supported_reasons(**moved))


def test_aot_variants_cover_the_autotune_configs():
    variants = c21.aot_variants()
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    for bs, bc, bm, bk, warps, stages in c21._GPU_CONFIGS:
        assert any(v.constexprs["BLOCK_S"] == bs and v.constexprs["BLOCK_C"] == bc
                   and v.constexprs["BLOCK_MID"] == bm and v.constexprs["BLOCK_K"] == bk
                   and v.num_warps == warps and v.num_stages == stages for v in variants)
    assert {v.constexprs["TEMPORAL_FIRST"] for v in variants} == {False, True}
    assert {v.constexprs["FLAT_K"] for v in variants} == {False, True}


def test_aot_compile_sm80_sm90_no_spills():
    """Every variant compiles for sm_80 and sm_90 (in a subprocess without TRITON_INTERPRET)
    with no spills."""
    from videoconv.triton.aot import compile_all_in_subprocess

    reports = compile_all_in_subprocess(["sm_80", "sm_90"], modules=[c21.__name__])
    assert len(reports) == 2 * len(c21.aot_variants())
    bad = [f"{r.name} {r.arch}: error={r.error} spills={r.spill_stores}/{r.spill_loads}"
           for r in reports if not r.ok]
    assert not bad, "\n".join(bad)
    assert all(r.registers and r.registers <= 255 for r in reports)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("nslot, c_out, p", [(1, 512, 10**5), (4, 64, 3136), (4, 16, 49),
                                             (8, 256, 10**5), (2, 8, 8)])
def test_config_pruning_keeps_epilogue_tiles_narrow(nslot, c_out, p, aligned):
    """The GPU autotune configs that survive pruning never give a slot more than 64 output
    channels (nor far more than C_out), whatever the shape, nor tiles above 64x128 for inputs
    gathered with scalar loads; one always survives."""
    import triton

    configs = [triton.Config({"BLOCK_S": bs, "BLOCK_C": bc, "BLOCK_MID": bm, "BLOCK_K": bk},
                             num_warps=w, num_stages=s)
               for bs, bc, bm, bk, w, s in c21._GPU_CONFIGS]
    kept = c21._prune_configs(configs, {"C_OUT": c_out, "P": p}, NSLOT=nslot, X_ALIGNED=aligned)
    assert kept
    for c in kept:
        block_n = c.kwargs["BLOCK_C"] // nslot
        assert 1 <= block_n <= 64
        assert c.kwargs["BLOCK_MID"] <= c21._PAD_COLUMNS
        assert aligned or c.kwargs["BLOCK_S"] * c.kwargs["BLOCK_C"] <= 64 * 128


def test_first_conv_recompute_factor():
    case = CASES["sf_k3_s111"]._replace(size=(1, 16, 8, 8), c_out=64)
    inputs = make_inputs(case, torch.float32)
    kw = {k: inputs[k] for k in ("input", "w1", "w2", "stride", "padding", "temporal_first")}
    # One chunk over the 16 frames: each h frame computed once.
    assert c21.first_conv_recompute(**kw, chunk=16) == pytest.approx(1.0)
    # Chunks of 4 outputs read frames -1..4, 3..8, 7..12, 11..16 (the padding is skipped):
    # 5 + 6 + 6 + 5 = 22 computed for 16.
    assert c21.first_conv_recompute(**kw, chunk=4) == pytest.approx(22 / 16)
    wide = dict(kw, w2=torch.zeros(256, case.c_mid, 3, 1, 1, device=DEVICE))
    assert c21.first_conv_recompute(**wide, chunk=16) == pytest.approx(4.0)
