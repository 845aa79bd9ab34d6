"""The ``triton`` backend as the operators use it: selection, routing (dense vs depthwise), the
depthwise Triton backward inside autograd, and a fused model on it.

Without a GPU the kernels run through Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1), where the backend runs only when forced. The kernels' own shape matrices
are in tests/test_triton_*.py.
"""

from __future__ import annotations

import pytest
import torch

import videoconv
from videoconv import backends
from videoconv.backends.triton import TritonBackend, interpreting

pytestmark = pytest.mark.triton

needs_kernels = pytest.mark.skipif(
    not (interpreting() or torch.cuda.is_available()),
    reason="needs a GPU or TRITON_INTERPRET=1 (set by conftest when there is no GPU)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _f64_conv_bn_act(x, w, scale, shift, stride, padding, groups, activation, residual=None):
    z = torch.nn.functional.conv3d(x.double(), w.double(), None, stride, padding, 1, groups)
    u = z * scale.double().view(1, -1, 1, 1, 1) + shift.double().view(1, -1, 1, 1, 1)
    if residual is not None:
        u = u + residual.double()
    return {"relu": torch.relu, "silu": torch.nn.functional.silu, "identity": lambda t: t}[activation](u)


def test_registered_after_cpu_and_reasons_without_gpu():
    assert backends.names().index("triton") < backends.names().index("reference")
    if torch.cuda.is_available():
        return
    x = torch.randn(1, 4, 3, 5, 5)
    w = torch.randn(4, 4, 1, 1, 1)
    reasons = TritonBackend.not_supported_reasons(
        "conv3d_bn_act", input=x, weight=w, scale=torch.ones(4), shift=torch.zeros(4),
        stride=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1), groups=1, activation="relu",
        residual=None)
    assert reasons and ("forced" in reasons[0] or "TRITON_INTERPRET" in reasons[0])
    # automatic selection on the CPU never picks the interpreter
    assert backends.select_backend(
        "conv3d_bn_act", input=x.half(), weight=w.half(), scale=torch.ones(4), shift=torch.zeros(4),
        stride=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1), groups=1, activation="relu",
        residual=None).name == "reference"


@needs_kernels
@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("layout", ["cl3d", "ncdhw"])
def test_forward_routes_and_matches_float64(groups, layout, monkeypatch):
    from videoconv.triton import conv3d_bn_act as dense
    from videoconv.triton import depthwise_conv3d_bn_act as dw

    calls = []
    monkeypatch.setattr(dense, "conv3d_bn_act", _spy(dense.conv3d_bn_act, calls, "dense"))
    monkeypatch.setattr(dw, "depthwise_conv3d_bn_act", _spy(dw.depthwise_conv3d_bn_act, calls, "dw"))
    fmt = torch.channels_last_3d if layout == "cl3d" else torch.contiguous_format
    x = torch.randn(2, 8, 4, 6, 6, device=DEVICE).contiguous(memory_format=fmt)
    w = torch.randn(8, 8 // groups, 3, 3, 3, device=DEVICE) * 0.2
    scale, shift = torch.rand(8, device=DEVICE) + 0.5, torch.randn(8, device=DEVICE)
    res = torch.randn(2, 8, 4, 6, 6, device=DEVICE).contiguous(memory_format=fmt)
    with backends.use("triton"):
        y = videoconv.ops.conv3d_bn_act(x, w, scale, shift, padding=1, groups=groups,
                                        activation="silu", residual=res)
    assert calls == (["dw"] if groups == 8 else ["dense"])
    assert y.is_contiguous(memory_format=fmt)
    expected = _f64_conv_bn_act(x, w, scale, shift, 1, 1, groups, "silu", res)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


def _spy(fn, calls, tag):
    def wrapped(*args, **kwargs):
        calls.append(tag)
        return fn(*args, **kwargs)
    return wrapped


@needs_kernels
@pytest.mark.parametrize("stride", [(1, 1, 1), (1, 2, 2)])
def test_depthwise_training_uses_the_triton_backward(stride, monkeypatch):
    from videoconv.triton import depthwise_conv3d_bn_act as dw

    calls = []
    monkeypatch.setattr(dw, "depthwise_conv3d_backward", _spy(dw.depthwise_conv3d_backward, calls, "bwd"))
    x = torch.randn(2, 12, 5, 8, 8, device=DEVICE).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(12, 1, 3, 3, 3, device=DEVICE) * 0.3
    scale, shift = torch.rand(12, device=DEVICE) + 0.5, torch.randn(12, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    with backends.use("triton"):
        y = videoconv.ops.conv3d_bn_act(*leaves, stride=stride, padding=1, groups=12, activation="relu")
    g = torch.randn_like(y)
    y.backward(g)
    assert calls == ["bwd"]
    exact = [t.detach().double().requires_grad_() for t in (x, w, scale, shift)]
    _f64_conv_bn_act(*exact, stride, 1, 12, "relu").backward(g.double())
    for got, ref in zip(leaves, exact):
        torch.testing.assert_close(got.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)
    assert leaves[0].grad.is_contiguous(memory_format=torch.channels_last_3d)


def test_input_weight_grad_op_passes_opcheck():
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        x = torch.randn(2, 6, 4, 5, 5).contiguous(memory_format=fmt)
        w = torch.randn(6, 3, 3, 3, 3)
        gz = torch.randn(2, 6, 4, 5, 5).contiguous(memory_format=fmt)
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(torch.ops.videoconv._conv3d_input_weight_grad.default,
                                  (gz, x, w, [1, 1, 1], [1, 1, 1], [1, 1, 1], 2, mask),
                                  test_utils=("test_schema", "test_faketensor"))
        gx, gw = torch.ops.videoconv._conv3d_input_weight_grad(gz, x, w, [1, 1, 1], [1, 1, 1],
                                                               [1, 1, 1], 2, [True, True])
        ex, ew, _ = torch.ops.aten.convolution_backward(gz.double(), x.double(), w.double(), None,
                                                        [1, 1, 1], [1, 1, 1], [1, 1, 1], False,
                                                        [0, 0, 0], 2, [True, True, False])
        torch.testing.assert_close(gx.double(), ex, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gw.double(), ew, rtol=1e-5, atol=1e-4)


def test_input_weight_grad_op_is_differentiable():
    # double backward (gradgradcheck of the fused op goes through it)
    x = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    gz = torch.randn(2, 4, 3, 2, 4, dtype=torch.float64, requires_grad=True)  # stride (1, 2, 1)
    w = torch.randn(4, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    for mask in ([True, True], [True, False], [False, True]):
        assert torch.autograd.gradcheck(
            lambda gz, x, w: torch.ops.videoconv._conv3d_input_weight_grad(
                gz, x, w, [1, 2, 1], [1, 1, 1], [1, 1, 1], 2, mask), (gz, x, w))


@needs_kernels
def test_fused_x3d_block_on_triton_equals_eager():
    from videoconv import models

    model = models.get_model("x3d_s").eval()
    block = model.blocks[1].res_blocks[0].to(DEVICE)  # depthwise 3x3x3, SE, silu, residual
    fused = videoconv.fuse(block, backend="triton")
    x = torch.randn(1, 24, 3, 8, 8, device=DEVICE).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        expected = block.double()(x.double())
        got = fused.float()(x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
