"""videoconv.ops.channel_mean / scale_act (Squeeze-and-Excitation's pool and rescaling +
activation; csrc/cpu/squeeze_excitation.cpp on the CPU) and their use by videoconv.fuse:
values against float64, the op contract (opcheck, gradcheck), errors, and X3D fused with them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import videoconv
from videoconv import backends, models
from videoconv.ops import channel_mean, scale_act
from videoconv.ops import squeeze_excitation as se_ops

from reference_impls import assert_close_rel, randomise_batch_norm
from test_ops import ACTS, _TOL

CL = torch.channels_last_3d
_ids = lambda d: str(d).replace("torch.", "")  # noqa: E731
_ACT64 = {"relu": torch.relu, "silu": F.silu, "identity": lambda u: u}

# (N, C, D, H, W): what each exercises in the kernels
SHAPES = {
    "c54": (1, 54, 3, 10, 10),          # C not a multiple of 16: 16-position blocks of C vectors
    "c16_batch2": (2, 16, 2, 5, 7),     # 70 positions: 4 blocks and a 6-position rest
    "few_positions": (2, 23, 1, 2, 3),  # fewer than 16 positions: only the rest
    "many_chunks": (1, 8, 5, 30, 31),   # > 2048 positions: several mean chunks
}


def _x(shape, dtype, fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)


def _scale(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape[0], shape[1], 1, 1, 1, generator=g, dtype=torch.float64).to(dtype) * 2 - 0.5


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=_ids)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_channel_mean_matches_float64(shape, dtype, fmt):
    x = _x(SHAPES[shape], dtype, fmt)
    y = channel_mean(x)
    expected = x.double().mean((2, 3, 4), keepdim=True)
    assert y.shape == expected.shape and y.dtype == dtype
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(y, F.adaptive_avg_pool3d(x, 1).contiguous(), atol=atol, rtol=rtol)
    if dtype in (torch.float32, torch.bfloat16) and se_ops._has_kernels():
        # the C++ kernel ran: the same bits as calling it directly
        assert torch.equal(y, torch.ops.videoconv._channel_mean_cpu(x))


@pytest.mark.parametrize("fmt, shape, offset", [
    # One NCDHW plane of 2^27 values of 3: 16 float32 lanes summing the whole plane stop
    # absorbing the values past 2^24 each, and gave 3.33.
    (torch.contiguous_format, (1, 1, 8, 4096, 4096), None),
    # channels_last_3d, 2^26 positions of random values around 3: 32768 chunk sums, merged in
    # float32, were off by ~12 float32 ulps of the mean.
    (CL, (1, 2, 4, 4096, 4096), 3.0),
], ids=["ncdhw_constant", "cl_random"])
def test_channel_mean_of_a_large_map_is_accurate_to_float32(fmt, shape, offset):
    """The mean over tens of millions of positions, against float64: within two float32
    epsilons (relative; its one rounding is half of one), however many values are summed
    (512 MB each)."""
    if offset is None:
        x = torch.full(shape, 3.0).contiguous(memory_format=fmt)
    else:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(shape, generator=g) + offset).contiguous(memory_format=fmt)
    expected = x.double().mean((2, 3, 4), keepdim=True)
    with backends.use("cpu"):
        y = channel_mean(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expected, atol=0,
                               rtol=2 * torch.finfo(torch.float32).eps)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=_ids)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_scale_act_matches_float64(shape, dtype, fmt, act):
    x = _x(SHAPES[shape], dtype, fmt)
    s = _scale(SHAPES[shape], dtype)
    y = scale_act(x, s, act)
    expected = _ACT64[act](x.double() * s.double())
    assert y.shape == x.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=fmt)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    if dtype in (torch.float32, torch.bfloat16) and se_ops._has_kernels():
        assert torch.equal(y, torch.ops.videoconv._scale_act_cpu(x, s, act))


@pytest.fixture
def vector_lanes():
    """Force the kernels' vector width (csrc/cpu/vec16.h: 16 float lanes per register on AVX-512
    CPUs, 8 elsewhere) for one test; the CPU's choice is restored after it."""
    if not se_ops._has_kernels():
        pytest.skip("the C++ kernels are not built")
    set_lanes = torch.ops.videoconv._cpu_vector_lanes
    previous = set_lanes(0)
    yield set_lanes
    set_lanes(previous)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
@pytest.mark.parametrize("shape", ["c54", "c16_batch2", "few_positions"])
def test_scale_act_both_vector_widths(vector_lanes, shape, dtype, fmt, act):
    """The 8- and 16-lane loops give the same bits, equal to float64 within tolerance, on any CPU,
    also for NaN of either sign (kept, as torch.relu keeps it), infinities and values beyond exp's
    float32 range (|x * s| in the hundreds). On a CPU with AVX-512 BF16 the 16-lane loops are the
    intrinsic ones (csrc/cpu/squeeze_excitation.cpp), the 8-lane ones the generic vector code: the
    same float32 arithmetic step for step. The only differences are vcvtneps2bf16's: a bfloat16
    NaN keeps its sign (c10's rounding makes it +NaN; compared here by position, not sign), and a
    result below bfloat16's smallest normal is flushed to zero (none occurs here)."""
    x = _x(SHAPES[shape], torch.float64, torch.contiguous_format)
    flat = x.view(-1)
    flat[::7] *= 200.0
    flat[1::11] = float("nan")
    flat[2::11] = -float("nan")
    flat[3::13] = float("inf")
    flat[4::13] = -float("inf")
    x = x.to(dtype).contiguous(memory_format=fmt)
    s = _scale(SHAPES[shape], dtype)
    results = {}
    for lanes in (8, 16):
        vector_lanes(lanes)
        results[lanes] = torch.ops.videoconv._scale_act_cpu(x, s, act)
    vector_lanes(0)
    assert torch.equal(results[8].isnan(), results[16].isnan())
    assert torch.equal(results[8].nan_to_num(), results[16].nan_to_num())
    expected = _ACT64[act](x.double() * s.double())
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(results[8].double(), expected, atol=atol, rtol=rtol, equal_nan=True)


def test_cpu_vector_lanes_rejects_other_widths(vector_lanes):
    with pytest.raises(RuntimeError, match="lanes must be 0 \\(automatic\\), 8 or 16, got 4"):
        vector_lanes(4)


def test_strided_view_and_forced_reference_take_aten():
    """A non-dense view and the forced oracle run ATen's ops, with the same arithmetic."""
    x = _x((1, 20, 6, 9, 9), torch.float32, CL)
    s = _scale(x.shape, torch.float32)
    view = x[:, :, ::2]
    expected = F.silu(view.double() * s.double())
    y = scale_act(view, s, "silu")
    assert y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.double(), expected, atol=1e-6, rtol=1e-5)
    with backends.use("reference"):
        ref = scale_act(x, s, "silu")
        ref_mean = channel_mean(x)
    assert torch.equal(ref, F.silu(x * s).contiguous(memory_format=CL))
    torch.testing.assert_close(ref_mean, x.mean((2, 3, 4), keepdim=True), atol=1e-6, rtol=1e-6)


def test_empty_batch():
    x = torch.randn(0, 4, 2, 3, 3)
    assert channel_mean(x).shape == (0, 4, 1, 1, 1)
    assert scale_act(x, torch.rand(0, 4, 1, 1, 1), "relu").shape == (0, 4, 2, 3, 3)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_ids)
def test_opcheck(dtype, fmt):
    x = _x((2, 18, 2, 4, 5), dtype, fmt).requires_grad_()
    s = _scale(x.shape, dtype).requires_grad_()
    torch.library.opcheck(torch.ops.videoconv.channel_mean.default, (x,))
    for act in ACTS:
        torch.library.opcheck(torch.ops.videoconv.scale_act.default, (x, s, act))


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck(act):
    x = _x((2, 5, 2, 3, 3), torch.float64, CL).requires_grad_()
    s = _scale(x.shape, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: scale_act(a, b, act), (x, s))
    assert torch.autograd.gradcheck(channel_mean, (x,))


def test_float32_gradients_match_float64():
    x = _x((1, 40, 3, 6, 6), torch.float32, CL).requires_grad_()
    s = _scale(x.shape, torch.float32).requires_grad_()
    grad = torch.randn(x.shape, dtype=torch.float64)
    scale_act(x, s, "silu").backward(grad.float())
    x64, s64 = x.detach().double().requires_grad_(), s.detach().double().requires_grad_()
    F.silu(x64 * s64).backward(grad)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.grad.double(), s64.grad, atol=1e-4, rtol=1e-5)
    assert x.grad.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("call, error, message", [
    (lambda: channel_mean(torch.randn(2, 3, 4, 4)), RuntimeError, "5-D"),
    (lambda: channel_mean(torch.ones(1, 3, 2, 2, 2, dtype=torch.int64)), RuntimeError, "floating-point"),
    (lambda: channel_mean(torch.randn(1, 3, 0, 2, 2)), RuntimeError, "non-zero"),
    (lambda: scale_act(torch.randn(1, 3, 2, 2, 2), torch.rand(1, 4, 1, 1, 1)), RuntimeError, "size"),
    (lambda: scale_act(torch.randn(2, 3, 2, 2, 2), torch.rand(1, 3, 1, 1, 1)), RuntimeError, "size"),
    (lambda: scale_act(torch.randn(1, 3, 2, 2, 2), torch.rand(1, 3)), RuntimeError, "size"),
    (lambda: scale_act(torch.randn(1, 3, 2, 2, 2), torch.rand(1, 3, 1, 1, 1, dtype=torch.float64)),
     RuntimeError, "same dtype"),
    (lambda: scale_act(torch.randn(1, 3, 2, 2, 2), torch.rand(1, 3, 1, 1, 1), "gelu"), ValueError,
     "unknown activation"),
])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not se_ops._has_kernels(), reason="needs the videoconv._C extension")
def test_private_kernels_check_their_arguments():
    x = torch.randn(1, 3, 2, 2, 2)
    with pytest.raises(RuntimeError, match="scale must have size"):
        torch.ops.videoconv._scale_act_cpu(x, torch.rand(1, 2, 1, 1, 1), "relu")
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.videoconv._channel_mean_cpu(x.double())
    with pytest.raises(RuntimeError, match="contiguous or channels_last_3d"):
        torch.ops.videoconv._channel_mean_cpu(x[:, :, ::2])
    with pytest.raises(RuntimeError, match="unknown activation"):
        torch.ops.videoconv._scale_act_cpu(x, torch.rand(1, 3, 1, 1, 1), "tanh")


# ----------------------------------------------------------------------------------------------
# fuse


def _x3d(seed):
    return randomise_batch_norm(models.get_model("x3d_s", num_classes=5), seed=seed).eval()


def test_fuse_x3d_uses_them_and_keeps_outputs():
    """Every SE block of X3D-S (one in two bottlenecks: 2 + 3 + 6 + 4) becomes channel_mean +
    scale_act with the Swish after it, and the fused model computes what the original does."""
    model = _x3d(21)
    fused = videoconv.fuse(model)
    report = videoconv.fuse_report(model)
    se = [e for e in report.fused if e.kind == "se-scale-act"]
    assert len(se) == 15 and {e.activation for e in se} == {"silu"}
    assert any(e.path.endswith("res_blocks.0.branch2") for e in se)
    ops = [n.target for gm in fused.modules() if isinstance(gm, torch.fx.GraphModule)
           for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(se_ops.fused_scale_act) == 15 and ops.count(se_ops.fused_channel_mean) == 15
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert_close_rel(fused(x), model(x), 1e-4)
        # channels_last_3d, as the benchmarks run it
        fused_cl = fused.to(memory_format=CL)
        assert_close_rel(fused_cl(x.contiguous(memory_format=CL)), model(x), 1e-4)
    # fusing again changes nothing
    again = videoconv.fuse(fused)
    with torch.no_grad():
        assert torch.equal(again(x), fused(x))


def test_fuse_with_reference_backend_leaves_se_to_eager():
    model = _x3d(22)
    fused = videoconv.fuse(model, backend="reference")
    ops = [n.target for gm in fused.modules() if isinstance(gm, torch.fx.GraphModule)
           for n in gm.graph.nodes if n.op == "call_function"]
    assert se_ops.fused_scale_act not in ops
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert_close_rel(fused(x), model(x), 1e-4)


def test_fused_x3d_compiles_fullgraph():
    torch._dynamo.reset()
    model = _x3d(23)
    fused = videoconv.fuse(model)
    x = torch.randn(1, 3, 4, 32, 32)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_close_rel(compiled(x), model(x), 1e-4)


class _SE(torch.nn.Module):
    """An SE block with its Swish, written with the ops (as a fused graph computes it)."""

    def __init__(self, c):
        super().__init__()
        self.reduce = torch.nn.Conv3d(c, 4, 1)
        self.expand = torch.nn.Conv3d(4, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(channel_mean(x)))))
        return scale_act(x, s, "silu")


def test_export():
    block = _SE(12).eval()
    x = torch.randn(2, 12, 3, 5, 5)
    exported = torch.export.export(block, (x,))
    targets = {n.target for n in exported.graph.nodes if n.op == "call_function"}
    assert torch.ops.videoconv.channel_mean.default in targets
    assert torch.ops.videoconv.scale_act.default in targets
    x2 = torch.randn(2, 12, 3, 5, 5)
    with torch.no_grad():
        got = exported.module()(x2)
        torch.testing.assert_close(got, block(x2), atol=0, rtol=0)
        ref = copy.deepcopy(block).double()
        expected = F.silu(x2.double() * torch.sigmoid(ref.expand(torch.relu(
            ref.reduce(x2.double().mean((2, 3, 4), keepdim=True))))))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
