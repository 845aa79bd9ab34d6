"""``videoconv::channel_mean`` and ``videoconv::scale_act``: the element-wise ends of
Squeeze-and-Excitation (X3D's SE blocks and the Swish after them).

* :func:`channel_mean` — ``mean(input, dims=(D, H, W))`` of size (N, C, 1, 1, 1), what
  ``nn.AdaptiveAvgPool3d(1)`` computes;
* :func:`scale_act` — ``act(input * scale)`` with ``scale`` of size (N, C, 1, 1, 1): the SE
  block's rescaling and the activation after it in one pass.

:func:`videoconv.fuse` puts them in place of an SE block's global pool and of its
``x * sigmoid(...)`` followed by ReLU/SiLU (see ``_Fuser._rewrite_squeeze_excitation``).

These are memory passes, not convolutions, so they are not in the backend list: on the CPU,
float32 and bfloat16 inputs that are contiguous or channels_last_3d run the C++ kernels of
csrc/cpu/squeeze_excitation.cpp (one pass each, float32 arithmetic, one rounding). Everything
else (other dtypes, other devices, strided views, a build without the extension, or the
``reference`` backend forced, which is the oracle) runs the same arithmetic with ATen ops:
float32 for 16-bit inputs, rounded once. Each op has a fake kernel and autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from ..backends.reference import opmath_dtype
from ._direct import dispatcher_unobservable
from ._validation import canonical_activation, check_channel_mean, check_scale_act

__all__ = ["channel_mean", "scale_act", "fused_channel_mean", "fused_scale_act"]

_MEAN_OP = "videoconv::channel_mean"
_SCALE_OP = "videoconv::scale_act"
_SPATIAL = (2, 3, 4)


def channel_mean(input: Tensor) -> Tensor:
    r"""Mean of each channel of each sample over D, H and W: ``nn.AdaptiveAvgPool3d(1)``.

    Args:
        input (Tensor[N, C, D, H, W]): NCDHW or channels_last_3d, any floating dtype.

    Returns:
        Tensor[N, C, 1, 1, 1]: in the input's dtype (accumulated in float32 for 16-bit inputs,
        rounded once). The op is ``torch.ops.videoconv.channel_mean``.

    Example::

        >>> import torch, videoconv
        >>> x = torch.ones(2, 3, 4, 5, 5)
        >>> videoconv.ops.channel_mean(x).shape
        torch.Size([2, 3, 1, 1, 1])
    """
    return torch.ops.videoconv.channel_mean.default(input)


def scale_act(input: Tensor, scale: Tensor, activation: str = "identity") -> Tensor:
    r"""``act(input * scale)`` with one scale per sample and channel, in one pass.

    .. math::
        y_{n,c,d,h,w} = \mathrm{act}(x_{n,c,d,h,w} \cdot s_{n,c})

    Squeeze-and-Excitation's rescaling (``scale = sigmoid(...)`` of the pooled input) together
    with the activation that follows it (X3D: Swish).

    Args:
        input (Tensor[N, C, D, H, W]): NCDHW or channels_last_3d.
        scale (Tensor[N, C, 1, 1, 1]): same dtype and device as ``input``.
        activation (str): ``"relu"``, ``"silu"`` (alias ``"swish"``) or ``"identity"``.

    Returns:
        Tensor[N, C, D, H, W]: in the layout of ``input``; computed in float32 for 16-bit
        inputs and rounded once. The op is ``torch.ops.videoconv.scale_act``; it supports
        autograd (input and scale), ``torch.compile`` and ``torch.export``.

    Example::

        >>> import torch, videoconv
        >>> x = torch.randn(2, 3, 4, 5, 5)
        >>> s = torch.rand(2, 3, 1, 1, 1)
        >>> torch.allclose(videoconv.ops.scale_act(x, s, "relu"), torch.relu(x * s))
        True
    """
    activation = canonical_activation(activation, "videoconv.scale_act")
    return torch.ops.videoconv.scale_act.default(input, scale, activation)


# ----------------------------------------------------------------------------------------------
# what videoconv.fuse puts in a model's graph


def fused_channel_mean(input: Tensor) -> Tensor:
    """:func:`channel_mean` as a fused graph calls it: straight to the C++ kernel when nothing
    could tell the difference, else through the operator.

    A call through ``torch.ops.videoconv.*`` costs ~45 µs of Python before any arithmetic (see
    videoconv/ops/_direct.py); X3D-S makes 30 of these calls per forward, and the pool of a
    late block is ~10 µs of work. So, as the fused modules do, the call goes directly to the
    same kernel the operator would run when :func:`~videoconv.ops._direct.dispatcher_unobservable`
    (no autograd recording, tracing, compiling, mode or profiler) and the input is one the
    kernel takes; anything else (including bad input, for the operator's error) takes the op."""
    if (dispatcher_unobservable(input) and input.dim() == 5 and input.numel() > 0
            and _cpu_kernel(input)):
        return torch.ops.videoconv._channel_mean_cpu.default(input)
    return torch.ops.videoconv.channel_mean.default(input)


def fused_scale_act(input: Tensor, scale: Tensor, activation: str) -> Tensor:
    """:func:`scale_act` as a fused graph calls it (``activation`` canonical): directly to the
    C++ kernel under the same conditions as :func:`fused_channel_mean`, else the operator."""
    if (dispatcher_unobservable(input, scale) and input.dim() == 5 and input.numel() > 0
            and scale.dtype == input.dtype and scale.device == input.device
            and scale.shape == (input.shape[0], input.shape[1], 1, 1, 1)
            and _cpu_kernel(input)):
        return torch.ops.videoconv._scale_act_cpu.default(input, scale, activation)
    return torch.ops.videoconv.scale_act.default(input, scale, activation)


# ----------------------------------------------------------------------------------------------
# kernels


def _cpu_kernel(input: Tensor) -> bool:
    """Whether the C++ kernels take ``input``: see the module docstring."""
    return (input.device.type == "cpu" and input.dtype in (torch.float32, torch.bfloat16)
            and (input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last_3d))
            and backends.forced_backend() != "reference" and _has_kernels())


_kernels = None


def _has_kernels() -> bool:
    global _kernels
    if _kernels is None:
        try:
            _kernels = (hasattr(torch.ops.videoconv, "_channel_mean_cpu")
                        and hasattr(torch.ops.videoconv, "_scale_act_cpu"))
        except RuntimeError:
            _kernels = False
    return _kernels


def _act(u: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return torch.relu(u)
    if activation == "silu":
        return torch.nn.functional.silu(u)
    return u


@torch.library.register_kernel(_MEAN_OP, ("cpu", "cuda"))
def _channel_mean_kernel(input):
    check_channel_mean(input)
    if input.shape[0] > 0 and _cpu_kernel(input):
        return torch.ops.videoconv._channel_mean_cpu.default(input)
    out = input.to(opmath_dtype(input.dtype)).mean(_SPATIAL, keepdim=True)
    return out.to(input.dtype).contiguous()


@torch.library.register_fake(_MEAN_OP)
def _channel_mean_fake(input):
    check_channel_mean(input)
    return input.new_empty((input.shape[0], input.shape[1], 1, 1, 1))


@torch.library.register_kernel(_SCALE_OP, ("cpu", "cuda"))
def _scale_act_kernel(input, scale, activation):
    check_scale_act(input, scale, activation)
    activation = canonical_activation(activation)
    if input.shape[0] > 0 and _cpu_kernel(input):
        return torch.ops.videoconv._scale_act_cpu.default(input, scale, activation)
    opmath = opmath_dtype(input.dtype)
    out = _act(input.to(opmath) * scale.to(opmath), activation).to(input.dtype)
    return out.contiguous(memory_format=backends.output_memory_format(input))


@torch.library.register_fake(_SCALE_OP)
def _scale_act_fake(input, scale, activation):
    check_scale_act(input, scale, activation)
    return backends.empty_output(input, input.shape)


# ----------------------------------------------------------------------------------------------
# autograd


def _mean_setup_context(ctx, inputs, output):
    (input,) = inputs
    ctx.size = input.shape
    ctx.memory_format = backends.output_memory_format(input)


def _mean_backward(ctx, grad):
    n, c, d, h, w = ctx.size
    return (grad / (d * h * w)).expand(ctx.size).contiguous(memory_format=ctx.memory_format)


def _scale_setup_context(ctx, inputs, output):
    input, scale, activation = inputs
    ctx.activation = canonical_activation(activation)
    ctx.save_for_backward(input, scale)


def _scale_backward(ctx, grad):
    from .conv3d_bn_act import _activation_backward

    input, scale = ctx.saved_tensors
    opmath = opmath_dtype(input.dtype)
    x, s = input.to(opmath), scale.to(opmath)
    u = x * s if ctx.activation != "identity" else None
    du = _activation_backward(grad.to(opmath), u, None, ctx.activation)
    grad_input = grad_scale = None
    if ctx.needs_input_grad[0]:
        grad_input = (du * s).to(input.dtype).contiguous(
            memory_format=backends.output_memory_format(input))
    if ctx.needs_input_grad[1]:
        grad_scale = (du * x).sum(_SPATIAL, keepdim=True).to(scale.dtype)
    return grad_input, grad_scale, None


torch.library.register_autograd(_MEAN_OP, _mean_backward, setup_context=_mean_setup_context)
torch.library.register_autograd(_SCALE_OP, _scale_backward, setup_context=_scale_setup_context)
