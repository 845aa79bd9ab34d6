"""The Triton implicit-GEMM ``conv3d_bn_act`` kernel against the float64 reference.

Runs on CPU tensors under ``TRITON_INTERPRET=1`` (set before Triton is imported; the conftest does
it when no GPU is visible), so shapes are tiny; they are taken from real models (ResNet3D, R(2+1)D,
CSN/X3D grouped layers, the RGB stem) and cover both K walks, both A-tile gathers (vectorised
channels_last, element-wise/NCDHW), both epilogues, every activation, residual layouts and dtypes.
The ahead-of-time test compiles every variant of ``aot_variants()`` for sm_80 and sm_90 (no GPU
needed) and requires zero spills.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.triton

if os.environ.get("TRITON_INTERPRET", "0") != "1" and not torch.cuda.is_available():
    pytest.skip("needs a GPU or TRITON_INTERPRET=1 (set before Triton is imported)",
                allow_module_level=True)

from videoconv.backends import output_memory_format, reference  # noqa: E402
from videoconv.triton import conv3d_bn_act as tk  # noqa: E402

DEVICE = "cpu" if tk.INTERPRET else "cuda"
CL = torch.channels_last_3d

# Relative to the reference output's largest magnitude. float32 runs exact fp32 dots under the
# interpreter and where TF32 is off; the 16-bit tolerances cover operand and output rounding.
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 off (on a GPU the kernel follows ``torch.backends.cudnn.allow_tf32``, default on), so
    float32 is checked at float32 accuracy; ``test_float32_uses_tf32_when_allowed`` turns it on."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


def _shape(n, c_in, c_out, dhw, kernel, stride=1, padding=0, dilation=1, groups=1):
    t = lambda v: (v, v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    return dict(n=n, c_in=c_in, c_out=c_out, dhw=t(dhw), kernel=t(kernel), stride=t(stride),
                padding=t(padding), dilation=t(dilation), groups=groups)


# name -> shape. Channel counts straddle the interpreter's BLOCK_K = BLOCK_N = 16 (masked tails,
# two N tiles) and include odd ones; D/H/W are odd where it matters.
SHAPES = {
    "r3d_3x3x3": _shape(2, 16, 16, (4, 6, 6), 3, padding=1),
    "downsample_s222": _shape(1, 8, 16, (5, 7, 7), 3, stride=2, padding=1),
    "r2plus1d_spatial_s122": _shape(2, 12, 20, (3, 9, 9), (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    "r2plus1d_temporal_s211": _shape(1, 20, 12, (6, 5, 5), (3, 1, 1), (2, 1, 1), (1, 0, 0)),
    "temporal_k5": _shape(1, 8, 8, (6, 5, 5), (5, 1, 1), padding=(2, 0, 0)),
    "temporal_k7": _shape(1, 6, 10, (7, 5, 6), (7, 1, 1), padding=(3, 0, 0)),
    "stem_rgb_3x7x7": _shape(1, 3, 16, (4, 9, 9), (3, 7, 7), (1, 2, 2), (1, 3, 3)),
    "stem_rgb_1x7x7_odd_cout": _shape(1, 3, 9, (3, 9, 8), (1, 7, 7), (1, 2, 2), (0, 3, 3)),
    "spatial_dilation2": _shape(1, 8, 8, (3, 9, 9), (1, 3, 3), padding=(0, 2, 2),
                                dilation=(1, 2, 2)),
    "grouped_g2": _shape(2, 16, 24, (3, 5, 5), 3, padding=1, groups=2),
    "grouped_g2_odd_widths": _shape(1, 6, 10, (3, 6, 5), (3, 3, 1), (1, 2, 1), (1, 1, 0), groups=2),
    "depthwise": _shape(1, 8, 8, (4, 6, 6), 3, padding=1, groups=8),
    "shortcut_1x1x1_s222": _shape(2, 24, 16, (4, 7, 7), 1, stride=2),
    "odd_everything": _shape(2, 5, 7, (3, 5, 7), (2, 3, 2), (1, 1, 2), (1, 1, 2), (2, 1, 2)),
}
ACTIVATIONS = ("relu", "silu", "identity")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _inputs(spec, dtype, layout, residual: bool, residual_layout=None):
    g = torch.Generator().manual_seed(1234)
    n, c_in, c_out, k = spec["n"], spec["c_in"], spec["c_out"], spec["kernel"]
    x = torch.randn(n, c_in, *spec["dhw"], generator=g)
    fan_in = c_in // spec["groups"] * k[0] * k[1] * k[2]
    w = torch.randn(c_out, c_in // spec["groups"], *k, generator=g) / fan_in ** 0.5
    scale = torch.rand(c_out, generator=g) + 0.5
    shift = torch.randn(c_out, generator=g) * 0.5
    out_size = tk._output_size(x, w, spec["stride"], spec["padding"], spec["dilation"])
    r = torch.randn(out_size, generator=g) if residual else None
    cast = lambda t: t.to(device=DEVICE, dtype=dtype)  # noqa: E731
    x = cast(x).contiguous(memory_format=layout)
    if r is not None:
        r = cast(r).contiguous(memory_format=residual_layout or layout)
    return dict(input=x, weight=cast(w), scale=cast(scale), shift=cast(shift),
                stride=spec["stride"], padding=spec["padding"], dilation=spec["dilation"],
                groups=spec["groups"], residual=r)


def _reference(kw, activation):
    as64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return reference.conv3d_bn_act(activation=activation, **as64)


def _check(y, kw, activation):
    x = kw["input"]
    ref = _reference(kw, activation)
    assert y.shape == ref.shape
    assert y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous(memory_format=output_memory_format(x)), "output must keep the layout"
    assert torch.isfinite(y).all()
    err = (y.double() - ref).abs().max().item()
    bound = TOL[x.dtype] * max(ref.abs().max().item(), 1e-6)
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


def _cases():
    # Every shape x layout x dtype; activation and residual rotate through the matrix so that
    # each shape and each dtype meets each activation, with and without a residual.
    for i, name in enumerate(SHAPES):
        for j, layout in enumerate(("channels_last_3d", "contiguous")):
            for d, dtype in enumerate(DTYPES):
                act = ACTIVATIONS[(i + j + d) % 3]
                residual = (i + j + d) % 2 == 0
                yield pytest.param(name, layout, dtype, act, residual,
                                   id=f"{name}-{layout}-{str(dtype)[6:]}-{act}"
                                      f"{'-res' if residual else ''}")


@pytest.mark.parametrize("name,layout,dtype,activation,residual", list(_cases()))
def test_matches_float64_reference(name, layout, dtype, activation, residual):
    fmt = CL if layout == "channels_last_3d" else torch.contiguous_format
    kw = _inputs(SHAPES[name], dtype, fmt, residual)
    y = tk.conv3d_bn_act(activation=activation, **kw)
    _check(y, kw, activation)


@pytest.mark.parametrize("flat_k", [False, True], ids=["blocked_k", "flat_k"])
@pytest.mark.parametrize("name", ["stem_rgb_3x7x7", "r2plus1d_temporal_s211", "grouped_g2",
                                  "odd_everything"])
def test_both_k_walks(name, flat_k):
    """The heuristic picks one walk per shape; force each on shapes where it is not the default."""
    kw = _inputs(SHAPES[name], torch.float32, CL, residual=True)
    y = tk._launch(activation="silu", flat_k=flat_k, **kw)
    _check(y, kw, "silu")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "res"])
def test_each_activation_with_and_without_residual(activation, residual):
    kw = _inputs(SHAPES["r3d_3x3x3"], torch.float16, CL, residual)
    y = tk.conv3d_bn_act(activation=activation, **kw)
    _check(y, kw, activation)


@pytest.mark.parametrize("layout,residual_layout", [
    (CL, torch.contiguous_format), (torch.contiguous_format, CL),
], ids=["cl_out-ncdhw_res", "ncdhw_out-cl_res"])
def test_residual_in_another_layout(layout, residual_layout):
    kw = _inputs(SHAPES["r2plus1d_spatial_s122"], torch.bfloat16, layout, True, residual_layout)
    y = tk.conv3d_bn_act(activation="relu", **kw)
    _check(y, kw, "relu")


@pytest.mark.parametrize("view", ["channel_slice_cl", "frame_subsample_ncdhw"])
def test_strided_view_input(view):
    """Any strides work; the output takes the layout ``output_memory_format`` gives the view."""
    kw = _inputs(SHAPES["r3d_3x3x3"], torch.float32, CL, residual=False)
    if view == "channel_slice_cl":
        wide = torch.randn(2, 40, 4, 6, 6, device=DEVICE).contiguous(memory_format=CL)
        kw["input"] = wide[:, 5:21]
    else:
        kw["input"] = torch.randn(2, 16, 8, 6, 6, device=DEVICE)[:, :, ::2]
    x = kw["input"]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=CL)
    y = tk.conv3d_bn_act(activation="relu", **kw)
    _check(y, kw, "relu")


@pytest.mark.cuda
def test_float32_uses_tf32_when_allowed():
    kw = _inputs(SHAPES["r3d_3x3x3"], torch.float32, CL, residual=True)
    ref = _reference(kw, "relu")
    torch.backends.cudnn.allow_tf32 = True
    assert tk._input_precision(torch.float32) == "tf32"
    y = tk.conv3d_bn_act(activation="relu", **kw)
    err = (y.double() - ref).abs().max().item()
    assert err <= 1e-2 * ref.abs().max().item()  # TF32: 10-bit mantissa operands


def test_channel_vector_plan():
    """The vector widths the launcher promises the kernel (and that the aligned paths above ran)."""
    x16 = torch.empty(1, 16, 2, 3, 3, dtype=torch.float16).contiguous(memory_format=CL)
    x32 = x16.float().contiguous(memory_format=CL)
    assert tk.channel_vector(x16, 16) == 8
    assert tk.channel_vector(x32, 16) == 4
    assert tk.channel_vector(x16, 8) == 8 and tk.channel_vector(x16, 4) == 4
    assert tk.channel_vector(x16.contiguous(), 16) == 1          # NCDHW: element-wise
    x230 = torch.empty(1, 230, 1, 2, 2, dtype=torch.bfloat16).contiguous(memory_format=CL)
    assert tk.channel_vector(x230, 230) == 2
    assert tk.channel_vector(x230, 230, min_vec=4) == 1         # epilogue: needs 4 or more
    x3 = torch.empty(1, 3, 2, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=CL)
    assert tk.channel_vector(x3, 3) == 1
    assert tk.channel_vector(x16[:, 1:9], 8) == 1                # misaligned base address
    assert tk.use_flat_k(3, 16) and tk.use_flat_k(1, 32) and tk.use_flat_k(20, 32)
    assert not tk.use_flat_k(24, 16) and not tk.use_flat_k(230, 32) and not tk.use_flat_k(64, 32)


def test_pack_weight_order():
    w = torch.randn(12, 3, 2, 3, 1)  # groups=2 -> C_out/g = 6, padded to 8
    packed = tk.pack_weight(w, 2)
    assert packed.shape == (2, 2 * 3 * 1 * 3, 8)
    assert torch.equal(packed[..., 6:], torch.zeros(2, 18, 2))
    # row (kd, kh, kw, c) of group 1, column o  ==  w[6 + o, c, kd, kh, kw]
    kd, kh, c, o = 1, 2, 1, 4
    assert packed[1, ((kd * 3 + kh) * 1 + 0) * 3 + c, o] == w[6 + o, c, kd, kh, 0]


def test_pruning_limits_elementwise_epilogue():
    configs = tk._conv3d_bn_act_fwd.configs
    if len(configs) == 1:  # the interpreter has one config: check the GPU table instead
        import triton
        configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w,
                                 num_stages=s) for bm, bn, bk, w, s in tk._GPU_CONFIGS]
    args = {"M": 1 << 20, "C_OUT_G": 256}
    vec = tk._prune_configs(configs, args, OUT_VEC=8)
    scalar = tk._prune_configs(configs, args, OUT_VEC=1)
    assert len(vec) == len(configs)
    assert 0 < len(scalar) < len(configs)
    assert all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 32 * 32 * c.num_warps for c in scalar)
    narrow = tk._prune_configs(configs, {"M": 1 << 20, "C_OUT_G": 1}, OUT_VEC=1)
    assert narrow and all(c.kwargs["BLOCK_N"] == 16 for c in narrow)


def test_not_supported_reasons():
    x = torch.empty(1, 4, 3, 5, 5, device=DEVICE)
    w = torch.empty(4, 4, 3, 3, 3, device=DEVICE)
    args = dict(stride=(1, 1, 1), padding=(1, 1, 1), dilation=(1, 1, 1), groups=1)
    assert tk.not_supported_reasons(x, w, **args, activation="relu", residual=None) == []
    reasons = tk.not_supported_reasons(x.double(), w.double(), **args)
    assert any("float64" in r for r in reasons)
    c = 70000
    huge_groups = tk.not_supported_reasons(
        torch.empty(1, c, 1, 1, 1, device=DEVICE), torch.empty(c, 1, 1, 1, 1, device=DEVICE),
        stride=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1), groups=c)
    assert any("groups=70000" in r for r in huge_groups)
    big_kernel = tk.not_supported_reasons(
        torch.empty(1, 1, 20, 20, 20, device=DEVICE), torch.empty(1, 1, 11, 11, 11, device=DEVICE),
        **args)
    assert any("kT + kH + kW" in r for r in big_kernel)


def test_aot_compiles_every_variant_without_spills():
    """Every ``aot_variants()`` entry builds for sm_80 and sm_90 and ptxas reports no spills."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    from videoconv.triton.aot import compile_all_in_subprocess

    reports = compile_all_in_subprocess(["sm_80", "sm_90"], modules=[tk.__name__], timeout=900)
    assert len(reports) == 2 * len(tk.aot_variants())
    bad = [f"{r.arch} {r.name}: {r.error or f'spills {r.spill_stores}/{r.spill_loads} bytes'}"
           for r in reports if not r.ok]
    assert not bad, "\n".join(bad)
    for r in reports:
        assert r.registers and r.registers <= 255
