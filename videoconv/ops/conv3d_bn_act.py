"""``videoconv::conv3d_bn_act``: Conv3d + per-channel scale/shift (folded BN) + residual + activation.

The schema is declared in csrc/ops.cpp (mirrored in schemas.py). Here, for that op:

* the Python entry point :func:`conv3d_bn_act` (ints or triples, activation aliases);
* the device kernel for ``cpu`` and ``cuda``: validate, pick a backend
  (:func:`videoconv.backends.select_backend`), run it;
* the fake kernel: validate, return an empty tensor of the output size in the input's layout;
* autograd: gradients for input, weight, scale, shift and residual, written with torch ops
  (recomputing the convolution when it is needed) so that it can be traced.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends
from ..backends.reference import opmath_dtype
from ._direct import NO_PREPARED_CALL, DirectPlan, OpPreparedCalls, dispatcher_unobservable
from ._validation import as_triple, canonical_activation, check_conv3d_bn_act

__all__ = ["conv3d_bn_act"]

_OP = "videoconv::conv3d_bn_act"
_IntOrTriple = Union[int, Sequence[int]]


def conv3d_bn_act(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    stride: _IntOrTriple = (1, 1, 1),
    padding: _IntOrTriple = (0, 0, 0),
    dilation: _IntOrTriple = (1, 1, 1),
    groups: int = 1,
    activation: str = "relu",
    residual: Optional[Tensor] = None,
) -> Tensor:
    r"""Fused 3D convolution, per-channel affine (folded BatchNorm), residual and activation.

    Computes

    .. math::
        y = \mathrm{act}\big(\mathrm{conv3d}(x, w) \cdot \mathrm{scale}_c + \mathrm{shift}_c
            \;[+\; \mathrm{residual}]\big)

    where :math:`c` is the output channel. This is what an eval-mode ``nn.Conv3d`` (without
    bias) followed by ``nn.BatchNorm3d``, an optional residual addition and ``ReLU``/``SiLU``
    computes, with the BatchNorm folded into ``scale = gamma / sqrt(running_var + eps)`` and
    ``shift = beta - running_mean * scale`` (a convolution bias folds into ``shift`` as
    ``shift + bias * scale``).

    Args:
        input (Tensor[N, C_in, D, H, W]): the input, in NCDHW or channels_last_3d layout.
        weight (Tensor[C_out, C_in / groups, kT, kH, kW]): the convolution weight.
        scale (Tensor[C_out]): per-output-channel multiplier applied to the convolution.
        shift (Tensor[C_out]): per-output-channel offset added after ``scale``.
        stride (int or Tuple[int, int, int]): stride of the convolution (D, H, W). Default: 1.
        padding (int or Tuple[int, int, int]): zero padding on both sides of each of D, H, W.
            Default: 0.
        dilation (int or Tuple[int, int, int]): spacing between kernel elements. Default: 1.
        groups (int): number of blocked connections from input to output channels;
            ``groups == C_in == C_out`` is a depthwise convolution. Default: 1.
        activation (str): ``"relu"``, ``"silu"`` (alias ``"swish"``) or ``"identity"``.
            Default: ``"relu"``.
        residual (Tensor[N, C_out, D_out, H_out, W_out], optional): added before the activation
            (ResNet blocks add the shortcut before their last ReLU). Default: None.

    Returns:
        Tensor[N, C_out, D_out, H_out, W_out]: the output, in the layout of ``input``
        (channels_last_3d in, channels_last_3d out; NCDHW in, NCDHW out), where
        ``D_out = (D + 2 * padding[0] - dilation[0] * (kT - 1) - 1) // stride[0] + 1``, and
        likewise for H and W.

    All tensors must share one floating dtype (float16, bfloat16, float32 or float64) and one
    device. float16/bfloat16 convolutions run as eager ``F.conv3d`` does in that dtype; the
    epilogue is computed in float32 and rounded once. An empty batch (``N == 0``) gives an
    empty output of the right size. Invalid arguments raise ``RuntimeError``/``ValueError``
    naming the problem (see ``videoconv/ops/_validation.py``).

    Non-finite inputs (NaN, inf) are the one place where the fused backends and the eager chain
    may differ, as cuDNN's and oneDNN's fused epilogues do: on the ``cpu`` backend a ReLU run as
    oneDNN's post-op turns NaN into 0 (ATen's ``relu`` keeps NaN), and the Winograd route spreads
    a non-finite input value over every output of the tiles that read it (its transforms add up
    whole tiles, where 0 * inf is NaN). The ``reference`` backend propagates them as eager does.
    Finite inputs are not affected.

    The implementation is chosen per call among :data:`videoconv.backends.PRIORITY`; force
    one with ``videoconv.backends.use(name)`` or the ``VIDEOCONV_BACKEND`` environment variable.
    The op is ``torch.ops.videoconv.conv3d_bn_act``; it supports autograd (all tensor inputs),
    ``torch.compile`` and ``torch.export``.

    Example::

        >>> import torch, videoconv
        >>> x = torch.randn(2, 16, 8, 56, 56)
        >>> w = torch.randn(32, 16, 3, 3, 3)
        >>> y = videoconv.ops.conv3d_bn_act(x, w, torch.ones(32), torch.zeros(32), padding=1)
        >>> y.shape
        torch.Size([2, 32, 8, 56, 56])
    """
    op = "videoconv.conv3d_bn_act"
    return torch.ops.videoconv.conv3d_bn_act.default(
        input,
        weight,
        scale,
        shift,
        list(as_triple(stride, "stride", op)),
        list(as_triple(padding, "padding", op)),
        list(as_triple(dilation, "dilation", op)),
        groups,
        canonical_activation(activation, op),
        residual,
    )


# ----------------------------------------------------------------------------------------------
# kernels


def _inputs(input, weight, scale, shift, stride, padding, dilation, groups, activation, residual):
    return dict(
        input=input, weight=weight, scale=scale, shift=shift, stride=tuple(stride),
        padding=tuple(padding), dilation=tuple(dilation), groups=groups,
        activation=canonical_activation(activation, "videoconv.conv3d_bn_act"), residual=residual,
    )


#: The kernel's prepared calls, per weight (see videoconv/ops/_direct.py, OpPreparedCalls).
PREPARED_CALLS = OpPreparedCalls()


@torch.library.register_kernel(_OP, ("cpu", "cuda"))
def _conv3d_bn_act_kernel(input, weight, scale, shift, stride, padding, dilation, groups,
                          activation, residual):
    args = (tuple(stride), tuple(padding), tuple(dilation), groups, activation)
    call, key = PREPARED_CALLS.find((weight,), (scale, shift), (input, residual), args)
    if call is not None and call is not NO_PREPARED_CALL:
        return call(input, residual)
    out_shape = check_conv3d_bn_act(input, weight, scale, shift, stride, padding, dilation,
                                    groups, activation, residual)
    inputs = _inputs(input, weight, scale, shift, stride, padding, dilation, groups, activation,
                     residual)
    backend = backends.select_backend("conv3d_bn_act", **inputs)
    if input.shape[0] == 0:
        return backends.empty_output(input, out_shape)
    if key is not None:
        call = backend.prepare_conv3d_bn_act(**inputs)
        PREPARED_CALLS.keep(key, (weight,), (scale, shift), call)
        if call is not None:
            return call(input, residual)
    return backend.conv3d_bn_act(**inputs)


def call_from_module(plan: Optional[DirectPlan], input, weight, scale, shift, stride, padding,
                     dilation, groups, activation, residual) -> Tensor:
    """``torch.ops.videoconv.conv3d_bn_act`` for the fused modules (op-form arguments: int lists,
    a canonical activation), or, when nothing could tell the difference, the same backend call
    without the dispatcher's ~45 µs (``plan``; see videoconv/ops/_direct.py)."""
    if plan is not None and dispatcher_unobservable(input, weight, scale, shift, residual):
        inputs = _inputs(input, weight, scale, shift, stride, padding, dilation, groups,
                         activation, residual)
        out = plan.run(
            "conv3d_bn_act",
            lambda: check_conv3d_bn_act(input, weight, scale, shift, stride, padding, dilation,
                                        groups, activation, residual),
            (input, weight, scale, shift, residual),
            (inputs["stride"], inputs["padding"], inputs["dilation"], groups, activation),
            inputs)
        if out is not None:
            return out
    return torch.ops.videoconv.conv3d_bn_act.default(
        input, weight, scale, shift, stride, padding, dilation, groups, activation, residual)


def prepare_from_module(input, weight, scale, shift, stride, padding, dilation, groups,
                        activation, residual):
    """The backend's prepared call (``Backend.prepare_conv3d_bn_act``) for these arguments,
    which already ran once through :func:`call_from_module` (so they are valid), or None. Only
    when that call went around the dispatcher too (all tensors plain, nothing observing)."""
    if not dispatcher_unobservable(input, weight, scale, shift, residual):
        return None
    inputs = _inputs(input, weight, scale, shift, stride, padding, dilation, groups, activation,
                     residual)
    backend = backends.select_backend("conv3d_bn_act", **inputs)
    return backend.prepare_conv3d_bn_act(**inputs)


@torch.library.register_fake(_OP)
def _conv3d_bn_act_fake(input, weight, scale, shift, stride, padding, dilation, groups,
                        activation, residual):
    out_shape = check_conv3d_bn_act(input, weight, scale, shift, stride, padding, dilation,
                                    groups, activation, residual)
    return backends.empty_output(input, out_shape)


# ----------------------------------------------------------------------------------------------
# autograd


def _activation_backward(grad: Tensor, u: Optional[Tensor], y: Optional[Tensor],
                         activation: str) -> Tensor:
    """d act(u) / du * grad; relu may use the output ``y`` (u > 0 iff y > 0)."""
    if activation == "identity":
        return grad
    if activation == "relu":
        positive = (u if u is not None else y) > 0
        return torch.where(positive, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    if activation == "silu":
        s = torch.sigmoid(u)
        return grad * (s * (1 + u * (1 - s)))
    raise ValueError(f"unknown activation {activation!r}")


def conv_bn_act_backward(
    grad: Tensor,
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    activation: str,
    needs: Tuple[bool, bool, bool, bool, bool],
    output: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
):
    """Gradients (input, weight, scale, shift, residual) of ``act(conv(x, w) * scale + shift
    [+ residual])``; ``None`` where ``needs`` is False.

    ``output`` (the forward result) lets relu skip the recomputation of the convolution when
    ``scale`` needs no gradient; ``z`` is the convolution if the caller already has it. The
    epilogue's derivative is computed in float32 for 16-bit inputs.
    """
    need_x, need_w, need_scale, need_shift, need_res = needs
    dtype = input.dtype
    opmath = opmath_dtype(dtype)
    view = (1, -1, 1, 1, 1)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    use_output = activation == "relu" and output is not None and not need_scale
    if z is None and (need_scale or not (activation == "identity" or use_output)):
        z = F.conv3d(input, weight, None, stride, padding, dilation, groups)
    grad_f = grad.to(opmath)
    scale_f = scale.to(opmath).view(view)
    u = None
    if activation == "silu" or (activation == "relu" and not use_output):
        u = z.to(opmath) * scale_f + shift.to(opmath).view(view)
        if residual is not None:
            u = u + residual.to(opmath)
    du = _activation_backward(grad_f, u, output if use_output else None, activation)
    reduce_dims = [0, 2, 3, 4]
    grad_scale = (du * z.to(opmath)).sum(reduce_dims).to(scale.dtype) if need_scale else None
    grad_shift = du.sum(reduce_dims).to(shift.dtype) if need_shift else None
    grad_res = du.to(residual.dtype) if need_res and residual is not None else None
    grad_x = grad_w = None
    if need_x or need_w:
        dz = (du * scale_f).to(dtype)
        grad_x, grad_w = torch.ops.videoconv._conv3d_input_weight_grad.default(
            dz, input, weight, stride, padding, dilation, groups, [need_x, need_w])
        grad_x = grad_x if need_x else None
        grad_w = grad_w if need_w else None
    return grad_x, grad_w, grad_scale, grad_shift, grad_res


# ----------------------------------------------------------------------------------------------
# the convolution's input/weight gradients: their own op, so a backend can supply them

_GRAD_OP = "videoconv::_conv3d_input_weight_grad"


def _grad_backend(input, weight, stride, padding, dilation, groups):
    """The backend the forward pass would use for these inputs (None if none can)."""
    try:
        return backends.select_backend(
            "conv3d_bn_act", input=input, weight=weight, scale=None, shift=None,
            stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=groups,
            activation="identity", residual=None)
    except backends.NotSupportedError:
        return None


@torch.library.register_kernel(_GRAD_OP, ("cpu", "cuda"))
def _conv3d_input_weight_grad_kernel(grad_z, input, weight, stride, padding, dilation, groups,
                                     output_mask):
    need_x, need_w = output_mask
    grads = None
    backend = _grad_backend(input, weight, stride, padding, dilation, groups)
    custom = getattr(backend, "conv3d_input_weight_grad", None)
    if custom is not None:
        grads = custom(grad_z=grad_z, input=input, weight=weight, stride=tuple(stride),
                       padding=tuple(padding), dilation=tuple(dilation), groups=groups,
                       output_mask=(need_x, need_w))
    if grads is None:  # ATen's (cuDNN / oneDNN) gradient convolutions
        grads = torch.ops.aten.convolution_backward(
            grad_z, input, weight, None, list(stride), list(padding), list(dilation), False,
            [0, 0, 0], groups, [need_x, need_w, False])[:2]
    grad_x, grad_w = grads
    # the layouts the fake promises: each gradient in its tensor's layout; empty if not needed
    grad_x = (grad_x.contiguous(memory_format=backends.output_memory_format(input)) if need_x
              else input.new_empty(0))
    grad_w = (grad_w.contiguous(memory_format=backends.output_memory_format(weight)) if need_w
              else weight.new_empty(0))
    return grad_x, grad_w


def _grad_setup_context(ctx, inputs, output):
    grad_z, input, weight, stride, padding, dilation, groups, output_mask = inputs
    ctx.conv = (list(stride), list(padding), list(dilation), groups)
    ctx.save_for_backward(grad_z, input, weight)


def _grad_backward(ctx, ggx, ggw):
    # Double backward. grad_x = conv_transpose(grad_z, w) and grad_w = corr(x, grad_z) are
    # bilinear, so their adjoints are convolutions again: this op itself and F.conv3d.
    grad_z, input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    n = ctx.needs_input_grad
    has_ggx = ggx is not None and ggx.numel() > 0
    has_ggw = ggw is not None and ggw.numel() > 0
    d_grad_z = d_input = d_weight = None
    if n[0]:
        d_grad_z = torch.zeros_like(grad_z)
        if has_ggx:
            d_grad_z = d_grad_z + F.conv3d(ggx, weight, None, stride, padding, dilation, groups)
        if has_ggw:
            d_grad_z = d_grad_z + F.conv3d(input, ggw, None, stride, padding, dilation, groups)
    if n[1] and has_ggw:  # <corr(x, gz), ggw> = <x, conv_transpose(gz, ggw)>
        d_input = torch.ops.videoconv._conv3d_input_weight_grad.default(
            grad_z, input, ggw, stride, padding, dilation, groups, [True, False])[0]
    if n[2] and has_ggx:  # <conv_transpose(gz, w), ggx> = <w, corr(ggx, gz)>
        d_weight = torch.ops.videoconv._conv3d_input_weight_grad.default(
            grad_z, ggx, weight, stride, padding, dilation, groups, [False, True])[1]
    return d_grad_z, d_input, d_weight, None, None, None, None, None


@torch.library.register_fake(_GRAD_OP)
def _conv3d_input_weight_grad_fake(grad_z, input, weight, stride, padding, dilation, groups,
                                   output_mask):
    need_x, need_w = output_mask
    grad_x = backends.empty_output(input, input.shape) if need_x else input.new_empty(0)
    grad_w = backends.empty_output(weight, weight.shape) if need_w else weight.new_empty(0)
    return grad_x, grad_w


def _setup_context(ctx, inputs, output):
    (input, weight, scale, shift, stride, padding, dilation, groups, activation, residual) = inputs
    ctx.conv = (tuple(stride), tuple(padding), tuple(dilation), groups,
                canonical_activation(activation))
    ctx.has_residual = residual is not None
    # a backend forced for the forward (use(), a fused module's backend=) runs the backward too
    ctx.backend = backends.forced_backend()
    ctx.save_for_backward(input, weight, scale, shift, residual,
                          output if ctx.conv[-1] == "relu" else None)


def _backward_impl(ctx, grad):
    input, weight, scale, shift, residual, output = ctx.saved_tensors
    stride, padding, dilation, groups, activation = ctx.conv
    n = ctx.needs_input_grad
    gx, gw, gscale, gshift, gres = conv_bn_act_backward(
        grad, input, weight, scale, shift, residual, stride, padding, dilation, groups,
        activation, (n[0], n[1], n[2], n[3], n[9] and ctx.has_residual), output=output,
    )
    return gx, gw, gscale, gshift, None, None, None, None, None, gres


def _backward(ctx, grad):
    if ctx.backend is None:
        return _backward_impl(ctx, grad)
    with backends.use(ctx.backend):
        return _backward_impl(ctx, grad)


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


torch.library.register_autograd(_GRAD_OP, _grad_backward, setup_context=_grad_setup_context)
