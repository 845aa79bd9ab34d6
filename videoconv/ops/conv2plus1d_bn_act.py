"""``videoconv::conv2plus1d_bn_act``: a whole (2+1)D unit in one operator.

Spatial first (default): conv(1, kH, kW) -> scale1/shift1 -> act -> conv(kT, 1, 1) ->
scale2/shift2 [+ residual] -> act; ``temporal_first=True`` swaps the two convolutions.
Same structure as conv3d_bn_act.py: Python entry point, cpu/cuda kernel that picks a backend,
fake kernel, autograd (the backward recomputes the intermediate, as the fused kernel will).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends
from ..backends.reference import epilogue, split_2plus1d
from ._direct import NO_PREPARED_CALL, DirectPlan, OpPreparedCalls, dispatcher_unobservable
from ._validation import as_triple, canonical_activation, check_conv2plus1d_bn_act
from .conv3d_bn_act import conv_bn_act_backward

__all__ = ["conv2plus1d_bn_act"]

_OP = "videoconv::conv2plus1d_bn_act"
_IntOrTriple = Union[int, Sequence[int]]


def conv2plus1d_bn_act(
    input: Tensor,
    w1: Tensor,
    scale1: Tensor,
    shift1: Tensor,
    w2: Tensor,
    scale2: Tensor,
    shift2: Tensor,
    stride: _IntOrTriple = (1, 1, 1),
    padding: _IntOrTriple = (0, 0, 0),
    activation: str = "relu",
    temporal_first: bool = False,
    residual: Optional[Tensor] = None,
) -> Tensor:
    r"""A fused (2+1)D unit: a spatial and a temporal convolution, each with folded BN and act.

    Spatial first (``temporal_first=False``, R(2+1)D):

    .. math::
        h = \mathrm{act}(\mathrm{conv}_{1 \times k_H \times k_W}(x, w_1) \cdot \mathrm{scale1}
            + \mathrm{shift1}), \quad
        y = \mathrm{act}(\mathrm{conv}_{k_T \times 1 \times 1}(h, w_2) \cdot \mathrm{scale2}
            + \mathrm{shift2} \;[+\; \mathrm{residual}])

    The spatial convolution takes the spatial stride/padding ``(1, sH, sW)``/``(0, pH, pW)``,
    the temporal one ``(sT, 1, 1)``/``(pT, 0, 0)``. With ``temporal_first=True`` the temporal
    convolution comes first (``w1`` is ``(kT, 1, 1)``, ``w2`` is ``(1, kH, kW)``), e.g. for
    separable (S3D-style) blocks.

    Args:
        input (Tensor[N, C_in, D, H, W]): the input, NCDHW or channels_last_3d.
        w1 (Tensor[C_mid, C_in, 1, kH, kW]): first weight (``[C_mid, C_in, kT, 1, 1]`` when
            ``temporal_first``).
        scale1, shift1 (Tensor[C_mid]): folded BN of the first convolution.
        w2 (Tensor[C_out, C_mid, kT, 1, 1]): second weight (``[C_out, C_mid, 1, kH, kW]`` when
            ``temporal_first``).
        scale2, shift2 (Tensor[C_out]): folded BN of the second convolution.
        stride (int or Tuple[int, int, int]): ``(sT, sH, sW)`` of the unit. Default: 1.
        padding (int or Tuple[int, int, int]): ``(pT, pH, pW)`` of the unit. Default: 0.
        activation (str): ``"relu"``, ``"silu"`` (alias ``"swish"``) or ``"identity"``,
            applied after both convolutions. Default: ``"relu"``.
        temporal_first (bool): run the temporal convolution first. Default: False.
        residual (Tensor[N, C_out, D_out, H_out, W_out], optional): added before the last
            activation. Default: None.

    Returns:
        Tensor[N, C_out, D_out, H_out, W_out]: in the layout of ``input``.

    No groups or dilation (R(2+1)D units have neither). The intermediate ``h`` is rounded to the
    input dtype, as the eager module chain stores it. One dtype, one device for all tensors;
    invalid arguments raise ``RuntimeError``/``ValueError`` naming the problem. Backend choice,
    autograd, ``torch.compile`` and ``torch.export`` as for :func:`conv3d_bn_act`; the
    backward recomputes ``h`` instead of storing it.
    """
    op = "videoconv.conv2plus1d_bn_act"
    return torch.ops.videoconv.conv2plus1d_bn_act.default(
        input, w1, scale1, shift1, w2, scale2, shift2,
        list(as_triple(stride, "stride", op)),
        list(as_triple(padding, "padding", op)),
        canonical_activation(activation, op),
        bool(temporal_first),
        residual,
    )


#: The kernel's prepared calls, per first weight (see videoconv/ops/_direct.py,
#: OpPreparedCalls).
PREPARED_CALLS = OpPreparedCalls()


@torch.library.register_kernel(_OP, ("cpu", "cuda"))
def _conv2plus1d_bn_act_kernel(input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                               activation, temporal_first, residual):
    weights, values = (w1, w2), (scale1, shift1, scale2, shift2)
    args = (tuple(stride), tuple(padding), activation, bool(temporal_first))
    call, key = PREPARED_CALLS.find(weights, values, (input, residual), args)
    if call is not None and call is not NO_PREPARED_CALL:
        return call(input, residual)
    _, out_shape = check_conv2plus1d_bn_act(input, w1, scale1, shift1, w2, scale2, shift2,
                                            stride, padding, activation, temporal_first, residual)
    inputs = dict(
        input=input, w1=w1, scale1=scale1, shift1=shift1, w2=w2, scale2=scale2, shift2=shift2,
        stride=tuple(stride), padding=tuple(padding),
        activation=canonical_activation(activation), temporal_first=bool(temporal_first),
        residual=residual,
    )
    backend = backends.select_backend("conv2plus1d_bn_act", **inputs)
    if input.shape[0] == 0:
        return backends.empty_output(input, out_shape)
    if key is not None:
        call = backend.prepare_conv2plus1d_bn_act(**inputs)
        PREPARED_CALLS.keep(key, weights, values, call)
        if call is not None:
            return call(input, residual)
    return backend.conv2plus1d_bn_act(**inputs)


def call_from_module(plan: Optional[DirectPlan], input, w1, scale1, shift1, w2, scale2, shift2,
                     stride, padding, activation, temporal_first, residual) -> Tensor:
    """``torch.ops.videoconv.conv2plus1d_bn_act`` for the fused modules (op-form arguments), or,
    when nothing could tell the difference, the same backend call without the dispatcher
    (``plan``; see videoconv/ops/_direct.py)."""
    stride, padding = list(stride), list(padding)
    tensors = (input, w1, scale1, shift1, w2, scale2, shift2, residual)
    if plan is not None and dispatcher_unobservable(*tensors):
        inputs = dict(
            input=input, w1=w1, scale1=scale1, shift1=shift1, w2=w2, scale2=scale2,
            shift2=shift2, stride=tuple(stride), padding=tuple(padding), activation=activation,
            temporal_first=bool(temporal_first), residual=residual,
        )
        out = plan.run(
            "conv2plus1d_bn_act",
            lambda: check_conv2plus1d_bn_act(input, w1, scale1, shift1, w2, scale2, shift2,
                                             stride, padding, activation, temporal_first,
                                             residual),
            tensors, (inputs["stride"], inputs["padding"], activation, inputs["temporal_first"]),
            inputs)
        if out is not None:
            return out
    return torch.ops.videoconv.conv2plus1d_bn_act.default(
        input, w1, scale1, shift1, w2, scale2, shift2, stride, padding, activation,
        bool(temporal_first), residual)


def prepare_from_module(input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                        activation, temporal_first, residual):
    """The backend's prepared call (``Backend.prepare_conv2plus1d_bn_act``) for these arguments,
    which already ran once through :func:`call_from_module` (so they are valid), or None. Only
    when that call went around the dispatcher too (all tensors plain, nothing observing)."""
    if not dispatcher_unobservable(input, w1, scale1, shift1, w2, scale2, shift2, residual):
        return None
    inputs = dict(
        input=input, w1=w1, scale1=scale1, shift1=shift1, w2=w2, scale2=scale2, shift2=shift2,
        stride=tuple(stride), padding=tuple(padding), activation=activation,
        temporal_first=bool(temporal_first), residual=residual,
    )
    backend = backends.select_backend("conv2plus1d_bn_act", **inputs)
    return backend.prepare_conv2plus1d_bn_act(**inputs)


@torch.library.register_fake(_OP)
def _conv2plus1d_bn_act_fake(input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                             activation, temporal_first, residual):
    _, out_shape = check_conv2plus1d_bn_act(input, w1, scale1, shift1, w2, scale2, shift2,
                                            stride, padding, activation, temporal_first, residual)
    return backends.empty_output(input, out_shape)


def _setup_context(ctx, inputs, output):
    (input, w1, scale1, shift1, w2, scale2, shift2, stride, padding, activation, temporal_first,
     residual) = inputs
    ctx.conv = (tuple(stride), tuple(padding), canonical_activation(activation),
                bool(temporal_first))
    ctx.has_residual = residual is not None
    # a backend forced for the forward (use(), a fused module's backend=) runs the backward too
    ctx.backend = backends.forced_backend()
    ctx.save_for_backward(input, w1, scale1, shift1, w2, scale2, shift2, residual,
                          output if ctx.conv[2] == "relu" else None)


def _backward_impl(ctx, grad):
    input, w1, scale1, shift1, w2, scale2, shift2, residual, output = ctx.saved_tensors
    stride, padding, activation, temporal_first = ctx.conv
    n = ctx.needs_input_grad
    s1, p1, s2, p2 = split_2plus1d(stride, padding, temporal_first)
    ones = (1, 1, 1)
    need_first = any(n[0:4])
    # Recompute the intermediate exactly as the forward computed it (rounded to the input dtype).
    z1 = F.conv3d(input, w1, None, list(s1), list(p1))
    h = epilogue(z1, scale1, shift1, None, activation, input.dtype, inplace=False)
    gh, gw2, gscale2, gshift2, gres = conv_bn_act_backward(
        grad, h, w2, scale2, shift2, residual, s2, p2, ones, 1, activation,
        (need_first, n[4], n[5], n[6], n[11] and ctx.has_residual), output=output,
    )
    gx = gw1 = gscale1 = gshift1 = None
    if need_first:
        gx, gw1, gscale1, gshift1, _ = conv_bn_act_backward(
            gh, input, w1, scale1, shift1, None, s1, p1, ones, 1, activation,
            (n[0], n[1], n[2], n[3], False), output=h, z=z1,
        )
    return gx, gw1, gscale1, gshift1, gw2, gscale2, gshift2, None, None, None, None, gres


def _backward(ctx, grad):
    if ctx.backend is None:
        return _backward_impl(ctx, grad)
    with backends.use(ctx.backend):
        return _backward_impl(ctx, grad)


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
