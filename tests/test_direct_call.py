"""The fused modules' eval fast path (videoconv/ops/_direct.py): the chosen backend is called
without the dispatcher only when nothing could tell, gives the op's exact result, and re-checks
the input whenever its signature changes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from videoconv import backends
from videoconv.backends import CpuBackend, ReferenceBackend
from videoconv.nn import Conv2Plus1dBNAct, Conv3dBNAct

CL = torch.channels_last_3d


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return module.eval()


@pytest.fixture(params=["stamp", "python"])
def guard_check(request, monkeypatch):
    """Runs a test with each way the fast path sees unchanged parameters: the C stamp
    (csrc/parameter_stamp.cpp, the default with the extension) and the Python key it stands in
    for (``_sources_key``, without the extension)."""
    from videoconv.nn import _common

    if request.param == "python":
        monkeypatch.setattr(_common, "parameter_stamp", lambda specs: None)
    elif _common._make_stamp is None:
        pytest.skip("the videoconv._C extension is not loaded")
    return request.param


def _uses(m, guard_check):
    """Whether ``m``'s prepared call is guarded the way ``guard_check`` says."""
    return (m.__dict__["_prepared"][3] is not None) == (guard_check == "stamp")


def _conv_module(activation="relu", groups=1):
    return _randomise(Conv3dBNAct(8, 8, 3, padding=1, groups=groups, activation=activation))


def _unit_module():
    return _randomise(Conv2Plus1dBNAct(6, 10, 8, kernel_size=3, stride=(1, 2, 2), padding=1))


def _float64_chain(module: Conv3dBNAct, x, residual=None):
    """The unfused eval chain in float64: conv -> BN -> (+ residual) -> act."""
    conv, bn = copy.deepcopy(module.conv).double(), copy.deepcopy(module.bn).double().eval()
    y = bn(conv(x.double()))
    if residual is not None:
        y = y + residual.double()
    return {"relu": torch.relu, "silu": nn.functional.silu, "identity": lambda t: t}[
        module.activation](y)


def _float64_unit(module: Conv2Plus1dBNAct, x, residual=None):
    """The unfused eval (2+1)D unit in float64: conv1 -> bn1 -> act -> conv2 -> bn2
    (-> + residual) -> act, in the module's order (conv1 is the temporal conv when
    ``temporal_first``)."""
    c1, b1 = copy.deepcopy(module.conv1).double(), copy.deepcopy(module.bn1).double().eval()
    c2, b2 = copy.deepcopy(module.conv2).double(), copy.deepcopy(module.bn2).double().eval()
    act = {"relu": torch.relu, "silu": nn.functional.silu, "identity": lambda t: t}[
        module.activation]
    y = b2(c2(act(b1(c1(x.double())))))
    if residual is not None:
        y = y + residual.double()
    return act(y)


def _unit_op_result(module: Conv2Plus1dBNAct, x, residual=None):
    s1, t1, s2, t2 = module.folded()
    return torch.ops.videoconv.conv2plus1d_bn_act.default(
        x, module.conv1.weight, s1, t1, module.conv2.weight, s2, t2, list(module.stride),
        list(module.padding), module.activation, module.temporal_first, residual)


def _op_result(module: Conv3dBNAct, x, residual=None):
    scale, shift = module.folded()
    c = module.conv
    return torch.ops.videoconv.conv3d_bn_act.default(
        x, c.weight, scale, shift, list(c.stride), list(c.padding), list(c.dilation), c.groups,
        module.activation, residual)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("activation,groups,with_residual", [
    ("relu", 1, False), ("silu", 8, False), ("relu", 1, True), ("identity", 2, True)])
def test_direct_path_equals_the_op_and_float64(layout, activation, groups, with_residual):
    m = _conv_module(activation, groups)
    x = torch.randn(2, 8, 4, 6, 6).contiguous(memory_format=layout)
    r = torch.randn(2, 8, 4, 6, 6).contiguous(memory_format=layout) if with_residual else None
    with torch.no_grad():
        first = m(x, r)  # validates, chooses the backend
        direct = m(x, r)
        via_op = _op_result(m, x, r)
    assert m._direct.hits == 1  # the second call went around the dispatcher
    assert direct.is_contiguous(memory_format=layout)
    assert torch.equal(direct, via_op) and torch.equal(first, via_op)
    torch.testing.assert_close(direct.double(), _float64_chain(m, x, r), rtol=1e-4, atol=1e-4)


def test_direct_path_for_the_2plus1d_unit():
    m = _unit_module()
    x = torch.randn(1, 6, 5, 8, 8).contiguous(memory_format=CL)
    with torch.no_grad():
        m(x)
        direct = m(x)
        s1, t1, s2, t2 = m.folded()
        via_op = torch.ops.videoconv.conv2plus1d_bn_act.default(
            x, m.conv1.weight, s1, t1, m.conv2.weight, s2, t2, list(m.stride),
            list(m.padding), m.activation, m.temporal_first, None)
        expected = _float64_unit(m, x)
    assert m._direct.hits == 1
    assert torch.equal(direct, via_op)
    torch.testing.assert_close(direct.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,temporal_first,activation,with_residual", [
    # channels, kernel, stride, padding, input (T, H, W)
    ((6, 10, 8, 3, (1, 2, 2), 1, (5, 8, 8)), False, "relu", False),
    ((8, 12, 8, 3, 1, 1, (4, 6, 7)), False, "silu", True),
    ((5, 9, 7, (3, 3, 3), (2, 1, 1), (1, 1, 1), (6, 5, 5)), True, "identity", True),
    ((4, 6, 6, (3, 1, 1), 1, (1, 0, 0), (3, 4, 4)), False, "relu", True),  # 1x1 spatial conv
    # channels_last_3d: the Winograd kernel in the spatial stage (bfloat16 from 64 channels and
    # 128 tiles), then oneDNN's temporal conv as a 2-D one; contiguous: oneDNN twice.
    ((64, 64, 16, 3, 1, 1, (2, 28, 28)), False, "relu", True),
])
def test_prepared_unit_equals_the_op_and_float64(layout, dtype, shape, temporal_first,
                                                 activation, with_residual):
    """The (2+1)D unit's prepared call (CpuBackend.prepare_conv2plus1d_bn_act: both stages
    packed once, the second prepared from the first call's intermediate) gives the op's exact
    result, in the input's layout, on every later call, for each route of the first stage."""
    c_in, c_mid, c_out, kernel, stride, padding, size = shape
    m = _randomise(Conv2Plus1dBNAct(c_in, c_mid, c_out, kernel_size=kernel, stride=stride,
                                    padding=padding, activation=activation,
                                    temporal_first=temporal_first)).to(dtype)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, c_in, *size, generator=g).to(dtype).contiguous(memory_format=layout)
    r = None
    with torch.no_grad():
        if with_residual:
            out_shape = m(x).shape
            r = torch.randn(out_shape, generator=g).to(dtype).contiguous(memory_format=layout)
        m(x, r)
        assert m.__dict__["_prepared"][1] is not None
        hits = m._direct.hits
        prepared = [m(x, r), m(x, r)]
        via_op = _unit_op_result(m, x, r)
    assert m._direct.hits == hits + 2
    for y in prepared:
        assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
        assert torch.equal(y, via_op)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(prepared[0].double(), _float64_unit(m, x, r), rtol=tol, atol=tol)


def test_prepared_unit_follows_parameters_and_unit_arguments(guard_check):
    """What the unit's prepared call depends on is in its guard: in-place updates and ``.data =``
    of either stage's parameters, either BatchNorm's eps, the unit's padding and activation, the
    residual, and a forced backend. Each change is checked against float64."""
    m = _unit_module()
    x = torch.randn(1, 6, 5, 8, 8).contiguous(memory_format=CL)

    def check(residual=None):
        y = m(x, residual)
        torch.testing.assert_close(y.double(), _float64_unit(m, x, residual), rtol=1e-4,
                                   atol=1e-4)
        return y

    with torch.no_grad():
        m(x)
        before = check()
        assert m._direct.hits == 1 and m.__dict__["_prepared"][1] is not None
        assert _uses(m, guard_check)
        m.bn2.running_mean.add_(0.5)  # in place: the version counter
        after = check()
        assert not torch.equal(before, after)
        m.conv1.weight.data = torch.randn_like(m.conv1.weight)  # same Parameter, new storage
        check()
        m.conv2.weight.mul_(-1.0)
        check()
        m.bn1.eps = 0.5
        check()
        m.activation = "silu"
        check()
        m.conv2.padding = (0, 0, 0)  # the temporal conv no longer pads: 3 output frames
        assert m.padding == (0, 1, 1)
        assert tuple(check().shape) == (1, 8, 3, 4, 4)
        r = torch.randn(1, 8, 3, 4, 4)
        check(r)
        check(r.contiguous(memory_format=CL))
        hits = m._direct.hits
        with backends.use("reference"):
            check()
            check()
    assert m._direct.hits == hits + 1  # the reference backend has no prepared call


def test_inference_mode_takes_the_direct_path():
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    with torch.inference_mode():
        m(x)
        y = m(x)
    assert m._direct.hits == 1
    torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)


def test_autograd_takes_the_op():
    # Eval mode with grad enabled and parameters that require grad: autograd must record the
    # op, so the fast path is not taken and gradients flow.
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5, requires_grad=True)
    m(x)
    y = m(x)
    assert m._direct.hits == 0
    assert y.grad_fn is not None
    y.sum().backward()
    assert x.grad is not None and m.conv.weight.grad is not None


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_dispatch_modes_see_the_op():
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    with torch.no_grad():
        m(x)
        m(x)
        hits = m._direct.hits
        with _OpLog() as log:
            y = m(x)
    assert m._direct.hits == hits  # not taken inside the mode
    assert "videoconv.conv3d_bn_act.default" in log.ops
    torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)


def test_profiler_sees_the_op():
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    with torch.no_grad():
        m(x)
        m(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            m(x)
    assert any(e.name == "videoconv::conv3d_bn_act" for e in prof.events())


def test_fake_tensors_take_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    m = _conv_module()
    with torch.no_grad():
        m(torch.randn(1, 8, 3, 5, 5))
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            y = m(mode.from_tensor(torch.randn(2, 8, 3, 5, 5).contiguous(memory_format=CL)))
    assert tuple(y.shape) == (2, 8, 3, 5, 5)
    assert y.is_contiguous(memory_format=CL)


def test_compile_traces_the_op():
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    with torch.no_grad():
        m(x)
        y = torch.compile(m, backend=backend, fullgraph=True)(x)
    assert "videoconv.conv3d_bn_act.default" in seen
    torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)


def test_a_new_signature_is_checked_again():
    m = _conv_module()
    with torch.no_grad():
        m(torch.randn(1, 8, 3, 5, 5))
        m(torch.randn(1, 8, 3, 5, 5))
        assert m._direct.hits == 1
        # Another size, another layout, another dtype: each is validated and chosen again.
        x2 = torch.randn(2, 8, 4, 6, 6)
        y2 = m(x2)
        torch.testing.assert_close(y2.double(), _float64_chain(m, x2), rtol=1e-4, atol=1e-4)
        m(x2.contiguous(memory_format=CL))
        assert m._direct.hits == 1
        # Bad input after fast calls raises the op's own errors.
        with pytest.raises(RuntimeError, match="channels"):
            m(torch.randn(1, 5, 3, 5, 5))
        with pytest.raises(RuntimeError, match="dtype"):
            m(torch.randn(1, 8, 3, 5, 5, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="Kernel size can.t be greater"):
            _randomise(Conv3dBNAct(8, 8, 3))(torch.randn(1, 8, 2, 5, 5))
        # An empty batch returns an empty result (through the op).
        empty = m(torch.randn(0, 8, 3, 5, 5))
        assert tuple(empty.shape) == (0, 8, 3, 5, 5)


def _spy_backends(monkeypatch, record):
    """Make every cpu/reference computation call ``record(backend name)``: their
    ``conv3d_bn_act`` and the calls their ``prepare_conv3d_bn_act`` returns."""
    for cls in (CpuBackend, ReferenceBackend):
        original = cls.__dict__["conv3d_bn_act"].__func__

        def spy(klass, _original=original, **inputs):
            record(klass.name)
            return _original(klass, **inputs)

        monkeypatch.setattr(cls, "conv3d_bn_act", classmethod(spy))
        original_prepare = cls.prepare_conv3d_bn_act.__func__

        def spy_prepare(klass, _original=original_prepare, **inputs):
            run = _original(klass, **inputs)
            if run is None:
                return None

            def recorded(x, residual):
                record(klass.name)
                return run(x, residual)
            return recorded

        monkeypatch.setattr(cls, "prepare_conv3d_bn_act", classmethod(spy_prepare))


def test_forced_backend_changes_the_choice(monkeypatch):
    calls = []
    _spy_backends(monkeypatch, calls.append)
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    with torch.no_grad():
        m(x)
        m(x)
        with backends.use("reference"):
            y = m(x)
            m(x)
        m(x)
    assert calls == ["cpu", "cpu", "reference", "reference", "cpu"]
    torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)
    # A module-level backend is honoured as well.
    forced = _conv_module()
    forced.backend = "reference"
    calls.clear()
    with torch.no_grad():
        forced(x)
        forced(x)
    assert calls == ["reference", "reference"] and forced._direct.hits == 1


def test_parameter_updates_are_seen(guard_check):
    # The plan caches only the backend choice; folded parameters are re-read on every call.
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    with torch.no_grad():
        m(x)
        m(x)
        m.bn.running_mean.add_(0.5)
        m.conv.weight.mul_(1.5)
        y = m(x)
    assert m._direct.hits == 2
    torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)


def test_copies_do_not_share_the_plan():
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    with torch.no_grad():
        m(x)
        m(x)
        for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            assert "_direct" not in other.__dict__
            torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)
            assert other._direct is not m._direct


def test_threads_with_different_forced_backends_keep_their_own(monkeypatch):
    import threading

    seen = {}
    _spy_backends(monkeypatch,
                  lambda name: seen.setdefault(threading.current_thread().name, set()).add(name))
    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    errors = []

    def work(forced):
        try:
            with torch.no_grad():
                for _ in range(200):
                    if forced:
                        with backends.use("reference"):
                            m(x)
                    else:
                        m(x)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f,), name=f"forced={f}") for f in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert seen == {"forced=True": {"reference"}, "forced=False": {"cpu"}}


def test_prepared_call_follows_replaced_parameters_and_conv_arguments(guard_check):
    m = _conv_module()
    x = torch.randn(1, 8, 3, 6, 6).contiguous(memory_format=CL)
    with torch.no_grad():
        m(x)
        m(x)
        assert "_prepared" in m.__dict__ and m._direct.hits == 1 and _uses(m, guard_check)
        # `.data =` keeps the Parameter object and its version: the storage changes.
        m.conv.weight.data = torch.randn_like(m.conv.weight)
        m.bn.running_var.data = torch.rand_like(m.bn.running_var) + 0.5
        y = m(x)
        torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)
        # Conv arguments changed on the module are seen too.
        m.conv.padding = (0, 0, 0)
        y = m(x)
        assert tuple(y.shape) == (1, 8, 1, 4, 4)
        torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)
        # A residual (or another layout of it) is part of the signature.
        r = torch.randn(1, 8, 1, 4, 4)
        y = m(x, r)
        torch.testing.assert_close(y.double(), _float64_chain(m, x, r), rtol=1e-4, atol=1e-4)
        y = m(x, r.contiguous(memory_format=CL))
        torch.testing.assert_close(y.double(), _float64_chain(m, x, r), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["conv3d", "unit"])
def test_prepared_call_is_dropped_by_training_and_invalidation(which, guard_check):
    if which == "conv3d":
        m, x, float64 = _conv_module(), torch.randn(2, 8, 3, 5, 5), _float64_chain
    else:
        m, x, float64 = _unit_module(), torch.randn(2, 6, 5, 8, 8), _float64_unit
    with torch.no_grad():
        m(x)
        m(x)
        assert "_prepared" in m.__dict__
        m.invalidate_fold_cache()
        assert "_prepared" not in m.__dict__
        m(x)
        m.train()
        m(x)  # batch statistics; updates the running statistics
        assert "_prepared" not in m.__dict__
        m.eval()
        y = m(x)
        assert "_prepared" in m.__dict__
        y_prepared = m(x)
    torch.testing.assert_close(y.double(), float64(m, x), rtol=1e-4, atol=1e-4)
    assert torch.equal(y, y_prepared)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the cpu backend's RepackingWarning
def test_inference_tensor_parameters_are_never_prepared():
    with torch.inference_mode():
        m = _conv_module()  # parameters are inference tensors: no version counters
        x = torch.randn(1, 8, 3, 5, 5)
        m(x)
        m(x)
        assert m.__dict__.get("_prepared") is None
        torch.testing.assert_close(m(x).double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation,with_residual,size", [
    ("relu", False, (1, 1, 1)), ("identity", True, (1, 1, 1)), ("silu", True, (2, 2, 3))])
def test_prepared_small_gemm_equals_the_op_and_float64(layout, dtype, activation, with_residual,
                                                         size):
    """Squeeze-and-Excitation convs (1x1x1 on a pooled map) and small heads: the cpu backend's
    prepared call is a small GEMM bound to the input's shape (cpu._prepare_small_gemm); it must
    give the op's exact result, in the input's layout, for later calls too."""
    m = _randomise(Conv3dBNAct(24, 16, 1, activation=activation)).to(dtype)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 24, *size, generator=g).to(dtype).contiguous(memory_format=layout)
    r = None
    if with_residual:
        r = torch.randn(2, 16, *size, generator=g).to(dtype).contiguous(memory_format=layout)
    with torch.no_grad():
        m(x, r)
        assert "_prepared" in m.__dict__
        prepared = [m(x, r), m(x, r)]
        via_op = _op_result(m, x, r)
    assert m._direct.hits == 2
    for y in prepared:
        assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
        assert torch.equal(y, via_op)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(prepared[0].double(), _float64_chain(m, x, r), rtol=tol, atol=tol)


class _Scaled(nn.Module):
    """A weight parametrization (torch.nn.utils.parametrize): the conv's ``weight`` is then
    computed on each access and is not in its ``_parameters``."""

    def __init__(self):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(1.0))

    def forward(self, w):
        return w * self.factor


def test_parametrized_weight_is_read_through_getattr():
    """The guard reads parameters from the modules' dicts when they are there
    (``_common.module_tensor``); a parametrized weight is not, and must still be seen: changing
    the parametrization changes the output."""
    from torch.nn.utils import parametrize

    m = _conv_module()
    parametrize.register_parametrization(m.conv, "weight", _Scaled())
    x = torch.randn(1, 8, 3, 5, 5).contiguous(memory_format=CL)
    with torch.no_grad():
        m(x)
        first = m(x)
        torch.testing.assert_close(first.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)
        m.conv.parametrizations.weight[0].factor.fill_(-0.5)
        second = m(x)
    torch.testing.assert_close(second.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first, second)


def _copy_buffers_dict(conv, bn):
    bn._buffers = dict(bn._buffers)


def _move_a_buffer(conv, bn):
    mean = bn._buffers.pop("running_mean")
    bn.register_parameter("running_mean", nn.Parameter(mean, requires_grad=False))


_PARAMETER_CHANGES = {
    "nothing": lambda conv, bn: None,
    "requires_grad off": lambda conv, bn: conv.weight.requires_grad_(False),  # not in the key
    "conv weight in place": lambda conv, bn: conv.weight.mul_(2),
    "conv bias in place": lambda conv, bn: conv.bias.add_(1),
    "bn weight in place": lambda conv, bn: bn.weight.add_(1),
    "running_var in place": lambda conv, bn: bn.running_var.mul_(2),
    "num_batches_tracked": lambda conv, bn: bn.num_batches_tracked.add_(1),
    "weight .data": lambda conv, bn: setattr(conv.weight, "data", torch.randn_like(conv.weight)),
    "new bias parameter": lambda conv, bn: setattr(conv, "bias", nn.Parameter(conv.bias + 0)),
    "bias removed": lambda conv, bn: setattr(conv, "bias", None),
    "running_mean replaced": lambda conv, bn: setattr(bn, "running_mean",
                                                      torch.zeros_like(bn.running_mean)),
    "dtype round trip": lambda conv, bn: conv.to(torch.bfloat16).float(),
    "buffers dict copied": _copy_buffers_dict,  # the same tensors in a new dict: no change
    "buffer made a parameter": _move_a_buffer,  # a new Parameter object
}


@pytest.mark.parametrize("change", list(_PARAMETER_CHANGES))
def test_parameter_stamp_holds_only_while_the_key_is_unchanged(change):
    """The C stamp stands in for the Python key (``_sources_key`` of ``_fold_sources_of``): it
    must fail on every change the key sees, and hold when nothing the key reads changed."""
    from videoconv.nn._common import (_fold_sources_of, _fold_specs_of, _key_referents,
                                      _sources_key, parameter_stamp, stamp_holds)

    conv, bn = nn.Conv3d(4, 6, 3), nn.BatchNorm3d(6)
    stamp = parameter_stamp(_fold_specs_of(conv, bn))
    if stamp is None:
        pytest.skip("the videoconv._C extension is not loaded")
    sources = _fold_sources_of(conv, bn)
    key, kept = _sources_key(sources)[0], _key_referents(sources)  # kept alive, as modules do
    assert stamp_holds(stamp, (conv, bn))
    with torch.no_grad():
        _PARAMETER_CHANGES[change](conv, bn)
    same_key = _sources_key(_fold_sources_of(conv, bn))[0] == key
    holds = stamp_holds(stamp, (conv, bn))
    unchanged = ("nothing", "requires_grad off", "buffers dict copied")
    assert holds == same_key == (change in unchanged)
    # Other modules in the roles never match.
    assert not stamp_holds(stamp, (nn.Conv3d(4, 6, 3), bn)) and not stamp_holds(stamp, (conv,))
    del kept


def test_parameter_stamp_is_none_where_the_python_check_must_run():
    """No stamp for a weight computed on access (a parametrization: a new tensor each time) or
    for inference tensors (no version counter); a BatchNorm-less chain gets one."""
    from torch.nn.utils import parametrize

    from videoconv.nn._common import _fold_specs_of, parameter_stamp, stamp_holds

    conv = nn.Conv3d(4, 6, 3)
    stamp = parameter_stamp(_fold_specs_of(conv, None))
    if stamp is None:
        pytest.skip("the videoconv._C extension is not loaded")
    assert stamp_holds(stamp, (conv, None)) and not stamp_holds(stamp, (conv, nn.BatchNorm3d(6)))
    parametrize.register_parametrization(conv, "weight", _Scaled())
    assert parameter_stamp(_fold_specs_of(conv, None)) is None
    with torch.inference_mode():
        frozen = nn.Conv3d(4, 6, 3)
    assert parameter_stamp(_fold_specs_of(frozen, None)) is None


def test_a_prepared_module_in_a_reference_cycle_is_collected():
    """The stamp sits in the fused module's __dict__ inside a capsule, which the cycle collector
    does not see; it refers to modules and tensors only weakly, so a cycle through them (here a
    hook on the conv that refers back to the fused module) is still collected."""
    import gc
    import weakref

    m = _conv_module()
    x = torch.randn(1, 8, 3, 5, 5)
    with torch.no_grad():
        m(x)
        m(x)
    assert "_prepared" in m.__dict__
    m.conv.register_forward_hook(lambda mod, args, out, owner=m: None)  # conv -> m
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_caches_keep_the_tensors_of_their_keys_alive():
    """The fold cache's and the prepared call's keys hold tensor identities (id, data_ptr),
    which are unique only among live tensors. Both caches must keep those very tensors alive:
    otherwise a parametrized weight (a new tensor on every access) can be given a freed one's id
    and storage, match the stale key, and reuse the old fold (a wrong answer that the test above
    hit in some test orders)."""
    from torch.nn.utils import parametrize

    from videoconv.nn._common import _sources_key

    m = _conv_module()
    parametrize.register_parametrization(m.conv, "weight", _Scaled())
    x = torch.randn(1, 8, 3, 5, 5).contiguous(memory_format=CL)
    with torch.no_grad():
        m(x)
        m(x)

    def tensors(kept):
        return [None if r is None else r[0] for r in kept]

    key, _, kept = m._fold_cache
    assert _sources_key(tensors(kept))[0] == key[0]
    assert all(r is None or r[1].data_ptr() == r[0].untyped_storage().data_ptr() for r in kept)
    prepared = m.__dict__.get("_prepared")
    if prepared is not None:  # a backend with a prepared call (cpu)
        guard, _, kept = prepared[:3]
        assert _sources_key(tensors(kept))[0] == guard[4]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_dtype_round_trip_is_seen(dtype, guard_check):
    """``module.to(dtype).float()`` keeps each Parameter object and its version and swaps its
    storage through ``.data``; the last storage can be allocated where the first one was. The
    caches must still see new weights (rounded to ``dtype`` and back): before, the old fold and
    packed weight were reused (off by up to ~4e-3 here)."""
    # A weight of 442 KB (freed and allocated whole, at the same address in glibc's malloc), and
    # BatchNorm values that ``dtype`` holds exactly, so that only the weight changes.
    m = Conv3dBNAct(64, 64, 3, padding=1).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g) / 1728 ** 0.5)
        m.bn.weight.fill_(0.5)
        m.bn.bias.fill_(0.25)
    x = torch.randn(1, 64, 3, 6, 6).contiguous(memory_format=CL)
    with torch.no_grad():
        m(x)
        m(x)
        m.to(dtype).float()
        y = m(x)
    expected = _float64_chain(m, x)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


def test_changed_batch_norm_eps_is_seen(guard_check):
    """``bn.eps`` is a float, not a tensor: it is part of the fold cache's and the prepared
    call's keys (before, a changed eps kept the old fold: off by ~27 here). Both modules."""
    conv3d = _conv_module()
    unit = _unit_module()
    for m, x in ((conv3d, torch.randn(1, 8, 3, 5, 5)), (unit, torch.randn(1, 6, 4, 6, 6))):
        bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm3d)]
        with torch.no_grad():
            for bn in bns:
                bn.running_var.uniform_(0.001, 0.01)  # eps then matters
            m(x)
            m(x)
            for bn in bns:
                bn.eps = 0.1
            y = m(x)
        expected = _float64_chain(m, x) if m is conv3d else _float64_unit(m, x)
        torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


def test_parametrized_weight_changed_again_and_again(guard_check):
    """Many changes of a parametrization in a row, each checked against float64 (each computed
    weight is freed after its call; the next may be allocated where it was)."""
    from torch.nn.utils import parametrize

    m = _conv_module()
    parametrize.register_parametrization(m.conv, "weight", _Scaled())
    x = torch.randn(1, 8, 3, 5, 5).contiguous(memory_format=CL)
    factor = m.conv.parametrizations.weight[0].factor
    with torch.no_grad():
        for step in range(30):
            factor.fill_(1.0 + 0.25 * (step % 7) - 0.75 * (step % 2))
            y = m(x)
            torch.testing.assert_close(y.double(), _float64_chain(m, x), rtol=1e-4, atol=1e-4)
