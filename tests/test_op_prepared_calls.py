"""The operators' own cache of prepared calls (videoconv/ops/_direct.py, OpPreparedCalls): what
``torch.compile``'s and ``torch.export``'s graphs and direct ``videoconv.ops`` callers get. A
repeated call with the same weight, the same scale/shift values and the same signature runs the
kept call; anything that changes the answer (weight values or storage, scale/shift values, the
input's signature, the conv arguments, the forced backend, the cpu backend's route switches)
takes the full path again, and every result equals float64."""

from __future__ import annotations

import copy
import gc
import importlib

import pytest
import torch
import torch.nn.functional as F

import videoconv
from videoconv import backends
from videoconv.ops import conv2plus1d_bn_act, conv3d_bn_act

CL = torch.channels_last_3d

# The modules that hold the two kernels' caches (videoconv.ops exports the functions under the
# modules' names).
_conv_ops = importlib.import_module("videoconv.ops.conv3d_bn_act")
_unit_ops = importlib.import_module("videoconv.ops.conv2plus1d_bn_act")


def _expected(x, w, scale, shift, padding, residual=None, activation="relu"):
    y = F.conv3d(x.double(), w.double(), padding=padding)
    y = y * scale.double().view(1, -1, 1, 1, 1) + shift.double().view(1, -1, 1, 1, 1)
    if residual is not None:
        y = y + residual.double()
    return torch.relu(y) if activation == "relu" else y


def _args(seed=0, c_in=8, c_out=12, size=(4, 9, 9), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, *size, generator=g).to(dtype).contiguous(memory_format=CL)
    w = (0.2 * torch.randn(c_out, c_in, 3, 3, 3, generator=g)).to(dtype)
    scale = (torch.rand(c_out, generator=g) + 0.5).to(dtype)
    shift = (0.1 * torch.randn(c_out, generator=g)).to(dtype)
    return x, w, scale, shift


def _close(y, expected, dtype=torch.float32):
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.double(), expected, atol=tol * expected.abs().max().item(),
                               rtol=tol)


def _hits():
    return _conv_ops.PREPARED_CALLS.hits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_a_repeated_call_runs_the_kept_call_and_equals_float64(dtype):
    x, w, scale, shift = _args(dtype=dtype)
    with torch.inference_mode():
        first = conv3d_bn_act(x, w, scale, shift, padding=1)
        hits = _hits()
        # new scale/shift tensors with the same values, as a compiled graph passes them
        second = conv3d_bn_act(x, w, scale.clone(), shift.clone(), padding=1)
    assert _hits() == hits + 1
    assert torch.equal(first, second)
    assert second.is_contiguous(memory_format=CL)
    _close(second, _expected(x, w, scale, shift, 1), dtype)


@pytest.mark.parametrize("change", ["weight_in_place", "weight_data", "scale_values",
                                    "shift_values", "input_size", "input_layout", "padding",
                                    "activation", "residual", "forced_backend"])
def test_anything_that_changes_the_answer_is_seen(change):
    x, w, scale, shift = _args(seed=1)
    padding, activation, residual = 1, "relu", None
    with torch.no_grad():
        conv3d_bn_act(x, w, scale, shift, padding=padding)
        conv3d_bn_act(x, w, scale, shift, padding=padding)  # kept and hit
        hits = _hits()
        if change == "weight_in_place":
            w.mul_(-1.5)
        elif change == "weight_data":
            w.data = w * 2.0  # new storage, same version counter
        elif change == "scale_values":
            scale = scale * 3.0
        elif change == "shift_values":
            shift = shift - 1.0
        elif change == "input_size":
            x = x[:, :, :3].contiguous(memory_format=CL)
        elif change == "input_layout":
            x = x.contiguous()
        elif change == "padding":
            padding = 0
        elif change == "activation":
            activation = "identity"
        elif change == "residual":
            residual = torch.randn(2, 12, 4, 9, 9).contiguous(memory_format=CL)
        if change == "forced_backend":
            with backends.use("reference"):
                y = conv3d_bn_act(x, w, scale, shift, padding=padding, activation=activation,
                                  residual=residual)
        else:
            y = conv3d_bn_act(x, w, scale, shift, padding=padding, activation=activation,
                              residual=residual)
    assert _hits() == hits  # a miss: the full path ran
    _close(y, _expected(x, w, scale, shift, padding, residual, activation))


def test_bad_input_is_still_refused_after_a_kept_call():
    x, w, scale, shift = _args(seed=2)
    with torch.no_grad():
        conv3d_bn_act(x, w, scale, shift, padding=1)
        conv3d_bn_act(x, w, scale, shift, padding=1)
        with pytest.raises(RuntimeError, match="channel"):
            conv3d_bn_act(x[:, :5], w, scale, shift, padding=1)
        with pytest.raises(RuntimeError, match="scale"):
            conv3d_bn_act(x, w, scale[:5], shift, padding=1)


def test_entries_die_with_their_weight_and_keep_nothing_else_alive():
    cache = _conv_ops.PREPARED_CALLS
    cache.clear()
    x, w, scale, shift = _args(seed=3)
    with torch.no_grad():
        conv3d_bn_act(x, w, scale, shift, padding=1)
    assert len(cache) == 1
    del w
    gc.collect()
    assert len(cache) == 0


def test_inference_tensor_weights_are_never_kept():
    cache = _conv_ops.PREPARED_CALLS
    cache.clear()
    with torch.inference_mode():
        x, w, scale, shift = _args(seed=4)
        hits = _hits()
        for _ in range(2):
            y = conv3d_bn_act(x, w, scale, shift, padding=1)
    assert len(cache) == 0 and _hits() == hits
    _close(y, _expected(x, w, scale, shift, 1))


def test_the_2plus1d_unit_follows_both_weights():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 5, 9, 9, generator=g).contiguous(memory_format=CL)
    w1 = 0.3 * torch.randn(10, 6, 1, 3, 3, generator=g)
    w2 = 0.3 * torch.randn(8, 10, 3, 1, 1, generator=g)
    s1, b1 = torch.rand(10, generator=g) + 0.5, 0.1 * torch.randn(10, generator=g)
    s2, b2 = torch.rand(8, generator=g) + 0.5, 0.1 * torch.randn(8, generator=g)

    def expected():
        mid = _expected(x, w1, s1, b1, (0, 1, 1))
        return _expected(mid, w2, s2, b2, (1, 0, 0))

    cache = _unit_ops.PREPARED_CALLS
    with torch.no_grad():
        conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, padding=1)
        hits = cache.hits
        y = conv2plus1d_bn_act(x, w1, s1.clone(), b1, w2, s2, b2.clone(), padding=1)
        assert cache.hits == hits + 1
        _close(y, expected())
        w2.mul_(-1.0)  # the second weight's version is in the key
        y = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, padding=1)
        assert cache.hits == hits + 1
        _close(y, expected())
        s2 = s2 * 2.0
        y = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, padding=1)
        assert cache.hits == hits + 1
        _close(y, expected())


def test_a_compiled_fused_model_follows_its_parameters():
    """``torch.compile(videoconv.fuse(model))`` calls the operators with the parameters and the
    scale/shift its graph recomputes: after in-place changes of a conv weight and of BatchNorm
    statistics, its output is still the eager model's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(4, 8, 3, padding=1, bias=False), torch.nn.BatchNorm3d(8),
        torch.nn.ReLU(), torch.nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1)),
        torch.nn.BatchNorm3d(8)).eval()
    fused = videoconv.fuse(model)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(1, 4, 4, 8, 8).contiguous(memory_format=CL)
    hits = _hits()
    for step in range(4):
        with torch.inference_mode():
            y = compiled(x)
        expected = copy.deepcopy(model).double()(x.double())
        _close(y, expected)
        with torch.no_grad():
            # fuse() copies the model: the same change in both (their state_dict keys agree)
            for m in (model, fused):
                tensors = m.state_dict(keep_vars=True)
                if step == 1:
                    tensors["0.weight"].mul_(0.5)
                if step == 2:
                    tensors["4.running_mean"].add_(0.25)
    assert _hits() > hits  # the unchanged steps ran the kept calls


def test_the_eager_model_after_the_compiled_one():
    """The cpu backend's pack cache kept the folded shift it was given, not a copy: from a
    compiled graph that is a buffer the graph reuses, so the eager model, finding the cached
    entry, added whatever the buffer held later (1.6 off on this model)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(4, 8, 3, padding=1, bias=False), torch.nn.BatchNorm3d(8),
        torch.nn.ReLU(), torch.nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1)),
        torch.nn.BatchNorm3d(8)).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.bias.uniform_(-0.5, 0.5)
    fused = videoconv.fuse(model)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(1, 4, 4, 8, 8).contiguous(memory_format=CL)
    expected = copy.deepcopy(model).double()(x.double())
    with torch.inference_mode():
        _close(compiled(x), expected)
        _close(fused(x), expected)
        _close(compiled(x), expected)


def _route_switches():
    from videoconv.backends import cpu

    return [n for n in cpu._ROUTE_SETTINGS if isinstance(getattr(cpu, n), (bool, int, float))]


@pytest.mark.parametrize("name", _route_switches())
def test_every_cpu_route_switch_is_part_of_the_guard(name, monkeypatch):
    """Flipping any of the cpu backend's capitalised settings at run time (as tests and the A/B
    scripts do) makes the next call take the full path, which re-decides the route."""
    from videoconv.backends import cpu

    x, w, scale, shift = _args(seed=6)
    with torch.no_grad():
        conv3d_bn_act(x, w, scale, shift, padding=1)
        value = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, (not value) if isinstance(value, bool) else value + 1)
        hits = _hits()
        y = conv3d_bn_act(x, w, scale, shift, padding=1)
    assert _hits() == hits
    _close(y, _expected(x, w, scale, shift, 1))
