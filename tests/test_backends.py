"""Backend registry and selection: available(), use(), VIDEOCONV_BACKEND, reasons, no silent fallback."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from videoconv import backends
from videoconv.backends import Backend, NotSupportedError, ReferenceBackend
from videoconv.ops import conv2plus1d_bn_act, conv3d_bn_act


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("VIDEOCONV_BACKEND", raising=False)
    yield


@pytest.fixture(autouse=True)
def _reference_only_registry(monkeypatch):
    """These tests exercise the registry with test backends: start from reference alone, whatever
    real backends (cpu, ...) this install registers; they are restored afterwards."""
    monkeypatch.setattr(backends, "PRIORITY", [ReferenceBackend])
    yield


def _conv_inputs(groups=1, dtype=torch.float32):
    x = torch.randn(1, 4, 4, 6, 6, dtype=dtype)
    w = torch.randn(4, 4 // groups, 3, 3, 3, dtype=dtype) / 6
    return x, w, torch.ones(4, dtype=dtype), torch.zeros(4, dtype=dtype)


def _plus1d_inputs():
    x = torch.randn(1, 4, 4, 6, 6)
    return (x, torch.randn(5, 4, 1, 3, 3), torch.ones(5), torch.zeros(5),
            torch.randn(4, 5, 3, 1, 1), torch.ones(4), torch.zeros(4))


class _Recording:
    """Mixin: runs the reference math and records that this backend ran."""

    calls: list = []

    @classmethod
    def conv3d_bn_act(cls, **inputs):
        cls.calls.append("conv3d_bn_act")
        return ReferenceBackend.conv3d_bn_act(**inputs)

    @classmethod
    def conv2plus1d_bn_act(cls, **inputs):
        cls.calls.append("conv2plus1d_bn_act")
        return ReferenceBackend.conv2plus1d_bn_act(**inputs)


class CudaOnlyNoGroups(_Recording, Backend):
    """Like a GPU kernel with limits: cuda only, float16/bfloat16 only, no groups."""

    name = "test_cuda_only"
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    supports_groups = False
    description = "test backend"
    calls: list = []

    @classmethod
    def not_supported_reasons(cls, op_name, **inputs):
        reasons = super().not_supported_reasons(op_name, **inputs)
        weight = inputs.get("weight")
        if weight is not None and weight.shape[2] > 5:
            reasons.append(f"temporal kernel {weight.shape[2]} > 5")
        return reasons


class NotInstalled(_Recording, Backend):
    name = "test_not_installed"
    devices = frozenset({"cpu", "cuda"})
    description = "test backend whose library is missing"
    calls: list = []

    @classmethod
    def environment_reasons(cls):
        return ["libfoo is not installed"]


class CpuConvOnly(_Recording, Backend):
    """Can run: cpu, conv3d_bn_act only, relu/identity only."""

    name = "test_cpu_conv"
    devices = frozenset({"cpu"})
    ops = frozenset({"conv3d_bn_act"})
    activations = frozenset({"relu", "identity"})
    description = "test backend that can run"
    calls: list = []


@pytest.fixture
def registered():
    """Register the test backends ahead of reference for one test, then remove them."""
    added = []

    def add(*classes):
        for cls in classes:
            cls.calls.clear()
            backends.register_backend(cls)
            added.append(cls)

    yield add
    for cls in added:
        backends.unregister_backend(cls.name)
    assert backends.names()[-1] == "reference"


def test_reference_is_always_available():
    assert backends.available()["reference"] == []
    assert backends.names()[-1] == "reference"
    assert backends.get_backend("reference") is ReferenceBackend
    assert ReferenceBackend.not_supported_reasons("conv3d_bn_act", input=torch.randn(1, 2, 3, 4, 5)) == []


def test_automatic_selection_is_reference_on_cpu():
    x, w, s, b = _conv_inputs()
    assert backends.select_backend("conv3d_bn_act", input=x, weight=w, groups=1, activation="relu") is ReferenceBackend


def test_use_forces_reference_and_nests():
    assert backends.forced_backend() is None
    with backends.use("reference"):
        assert backends.forced_backend() == "reference"
        x, w, s, b = _conv_inputs()
        y = conv3d_bn_act(x, w, s, b, padding=1)
        assert y.shape == (1, 4, 4, 6, 6)
        with backends.use("reference"):
            assert backends.forced_backend() == "reference"
        assert backends.forced_backend() == "reference"
    assert backends.forced_backend() is None


def test_use_is_thread_local():
    seen = []
    with backends.use("reference"):
        thread = threading.Thread(target=lambda: seen.append(backends.forced_backend()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown videoconv backend 'nope'; known backends: .*reference"):
        with backends.use("nope"):
            pass


def test_environment_variable_forces_a_backend(monkeypatch, registered):
    registered(CpuConvOnly)
    x, w, s, b = _conv_inputs()
    monkeypatch.setenv("VIDEOCONV_BACKEND", "reference")
    assert backends.forced_backend() == "reference"
    conv3d_bn_act(x, w, s, b)
    assert CpuConvOnly.calls == []  # forced reference, although test_cpu_conv comes first
    monkeypatch.setenv("VIDEOCONV_BACKEND", "test_cpu_conv")
    conv3d_bn_act(x, w, s, b)
    assert CpuConvOnly.calls == ["conv3d_bn_act"]
    # use() wins over the environment
    with backends.use("reference"):
        conv3d_bn_act(x, w, s, b)
    assert CpuConvOnly.calls == ["conv3d_bn_act"]


def test_environment_variable_is_read_on_every_call():
    """Set, changed and removed at run time through os.environ (forced_backend's fast path
    reads CPython's encoded environment dict)."""
    assert "VIDEOCONV_BACKEND" not in os.environ and backends.forced_backend() is None
    try:
        os.environ["VIDEOCONV_BACKEND"] = " reference "
        assert backends.forced_backend() == "reference"
        os.environ["VIDEOCONV_BACKEND"] = ""
        assert backends.forced_backend() is None
        os.environ["VIDEOCONV_BACKEND"] = "reference"
        del os.environ["VIDEOCONV_BACKEND"]
        assert backends.forced_backend() is None
    finally:
        os.environ.pop("VIDEOCONV_BACKEND", None)


def test_environment_variable_unknown_backend(monkeypatch):
    monkeypatch.setenv("VIDEOCONV_BACKEND", "bogus")
    x, w, s, b = _conv_inputs()
    with pytest.raises(ValueError, match="unknown videoconv backend 'bogus'"):
        conv3d_bn_act(x, w, s, b)


def test_environment_variable_backend_that_cannot_run(monkeypatch, registered):
    registered(CudaOnlyNoGroups)
    monkeypatch.setenv("VIDEOCONV_BACKEND", "test_cuda_only")
    x, w, s, b = _conv_inputs()
    with pytest.raises(NotSupportedError, match="forced by VIDEOCONV_BACKEND=test_cuda_only.*device cpu is not supported"):
        conv3d_bn_act(x, w, s, b)


def test_forced_backend_that_cannot_run_lists_its_reasons(registered):
    registered(CudaOnlyNoGroups)
    x, w, s, b = _conv_inputs(groups=2)
    w = torch.randn(4, 2, 7, 3, 3)
    with backends.use("test_cuda_only"):
        with pytest.raises(NotSupportedError) as info:
            conv3d_bn_act(x.contiguous(memory_format=torch.channels_last_3d), w, s, b, padding=3, groups=2)
    message = str(info.value)
    assert "'test_cuda_only' (forced by use()) cannot run conv3d_bn_act on a cpu float32 input of size [1, 4, 4, 6, 6] (channels_last_3d)" in message
    for reason in ["device cpu is not supported (supports cuda)",
                   "dtype float32 is not supported (supports bfloat16, float16)",
                   "groups=2 is not supported", "temporal kernel 7 > 5"]:
        assert reason in message
    assert CudaOnlyNoGroups.calls == []  # never ran, and no fallback to reference either
    assert isinstance(info.value, RuntimeError)


def test_automatic_selection_skips_backends_that_cannot_run(registered):
    registered(NotInstalled, CudaOnlyNoGroups)
    assert backends.available()["test_not_installed"] == ["libfoo is not installed"]
    assert backends.available()["test_cuda_only"] == []
    x, w, s, b = _conv_inputs()
    reasons = backends.not_supported_reasons("conv3d_bn_act", input=x, weight=w, groups=1, activation="relu")
    assert reasons["test_not_installed"] == ["libfoo is not installed"]
    assert "device cpu is not supported (supports cuda)" in reasons["test_cuda_only"]
    assert reasons["reference"] == []
    with backends.use("reference"):
        expected = conv3d_bn_act(x, w, s, b)
    torch.testing.assert_close(conv3d_bn_act(x, w, s, b), expected, atol=0, rtol=0)
    assert NotInstalled.calls == [] and CudaOnlyNoGroups.calls == []


def test_automatic_selection_takes_first_backend_that_can_run(registered):
    registered(CpuConvOnly)
    assert backends.names() == ["test_cpu_conv", "reference"]
    x, w, s, b = _conv_inputs()
    conv3d_bn_act(x, w, s, b)
    assert CpuConvOnly.calls == ["conv3d_bn_act"]
    # an activation it lacks, an operator it lacks: reference runs instead
    conv3d_bn_act(x, w, s, b, activation="silu")
    conv2plus1d_bn_act(*_plus1d_inputs(), padding=1)
    assert CpuConvOnly.calls == ["conv3d_bn_act"]
    reasons = CpuConvOnly.not_supported_reasons("conv2plus1d_bn_act", input=x, activation="silu")
    assert reasons == ["operator conv2plus1d_bn_act is not implemented", "activation 'silu' is not supported"]


def test_autograd_and_backend_choice(registered):
    """The backward does not depend on which backend ran the forward."""
    registered(CpuConvOnly)
    x, w, s, b = _conv_inputs()
    x.requires_grad_()
    conv3d_bn_act(x, w, s, b).sum().backward()
    grad_fast = x.grad.clone()
    x.grad = None
    with backends.use("reference"):
        conv3d_bn_act(x, w, s, b).sum().backward()
    torch.testing.assert_close(x.grad, grad_fast, atol=0, rtol=0)


def test_no_backend_can_run_lists_every_backend(monkeypatch, registered):
    registered(NotInstalled, CudaOnlyNoGroups)
    # Simulate an install where reference cannot run either (it never refuses in practice).
    monkeypatch.setattr(ReferenceBackend, "devices", frozenset({"cuda"}))
    x, w, s, b = _conv_inputs()
    with pytest.raises(NotSupportedError) as info:
        conv2plus1d_bn_act(*_plus1d_inputs(), padding=1)
    message = str(info.value)
    assert message.startswith("no videoconv backend can run conv2plus1d_bn_act on a cpu float32 input")
    assert "test_not_installed: libfoo is not installed" in message
    assert "test_cuda_only: device cpu is not supported (supports cuda); dtype float32 is not supported" in message
    assert "reference: device cpu is not supported (supports cuda)" in message


def test_registry_errors():
    with pytest.raises(ValueError, match="registered twice"):
        backends.register_backend(ReferenceBackend)
    with pytest.raises(ValueError, match="cannot be unregistered"):
        backends.unregister_backend("reference")


def test_base_backend_does_not_implement_ops():
    class Empty(Backend):
        name = "empty"

    with pytest.raises(NotImplementedError, match="does not implement conv3d_bn_act"):
        Empty.conv3d_bn_act(input=None, weight=None, scale=None, shift=None, stride=None, padding=None,
                            dilation=None, groups=1, activation="relu", residual=None)


def test_output_memory_format_rule():
    x = torch.randn(2, 3, 4, 5, 6)
    assert backends.output_memory_format(x) == torch.contiguous_format
    assert backends.output_memory_format(x.contiguous(memory_format=torch.channels_last_3d)) == torch.channels_last_3d
    assert backends.output_memory_format(x.transpose(3, 4)) == torch.contiguous_format  # arbitrary strides
    y = backends.empty_output(x.contiguous(memory_format=torch.channels_last_3d), (2, 8, 4, 5, 6))
    assert y.is_contiguous(memory_format=torch.channels_last_3d) and y.dtype == x.dtype
    # non-dense views take the layout their strides are ordered like (ATen's suggest_memory_format)
    cl = torch.randn(2, 3, 8, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    assert backends.output_memory_format(cl[:, :, ::4]) == torch.channels_last_3d  # SlowFast's slow path
    assert backends.output_memory_format(cl[:, :2]) == torch.channels_last_3d
    assert backends.output_memory_format(torch.randn(2, 3, 8, 5, 6)[:, :, ::4]) == torch.contiguous_format
    assert backends.output_memory_format(cl[:, :1]) == torch.contiguous_format  # one channel
