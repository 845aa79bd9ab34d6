"""Conv3d -> training-mode BatchNorm3d [+ residual] -> activation on the fused path.

What eager PyTorch runs as ``act(bn(conv(x)) [+ residual])`` with ``bn.training`` set, here in
three steps:

1. ``videoconv::conv3d_bn_stats``: the convolution ``z`` and, from its epilogue, the float64
   per-channel batch mean and (biased) variance of ``z`` (videoconv/ops/conv3d_bn_stats.py);
2. the running statistics are updated from them exactly as ``nn.BatchNorm3d`` does (momentum,
   or the cumulative average when ``momentum is None``; unbiased variance; the conv bias, which
   the normalisation cancels, still shifts the running mean), a per-channel computation;
3. ``y = act(z * scale + shift [+ residual])`` with ``scale = gamma / sqrt(var + eps)`` and
   ``shift = beta - mean * scale``: one light element-wise step (ATen's inference-mode batch
   norm handed the batch statistics, then the residual add and the activation in place, in
   eager mode; under ``torch.compile`` inductor fuses it with its neighbours). It could move
   into the next convolution's prologue; it does not yet.

The backward is written by hand (:class:`_BatchNormActTrain`) instead of letting autograd
differentiate the element-wise ops and the statistics separately: it is BatchNorm's analytic
training backward, which needs only two per-channel sums (``sum(du)`` and ``sum(du * x_hat)``)
and one element-wise pass, and computes the gradient with respect to ``z`` in float32 (for
16-bit inputs) rounding it *once* — summing a separately rounded ``du * scale`` and the
statistics' terms would lose the result to cancellation whenever BN's output gradient is
dominated by its per-channel mean. It runs as ATen's ``native_batch_norm_backward`` (the kernel
eager BatchNorm's backward runs) on the saved batch statistics. ``d z`` then goes through the
stats op's autograd to ``videoconv::_conv3d_input_weight_grad`` (the backend's conv gradients).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends
from ..backends.reference import opmath_dtype
from ._validation import (_check_channel_vector, _check_residual, as_triple,
                          canonical_activation)

__all__ = ["conv3d_bn_act_train"]

_IntOrTriple = Union[int, Sequence[int]]


def _act_(u: Tensor, activation: str) -> Tensor:
    """In-place activation of a fresh tensor."""
    if activation == "relu":
        return u.relu_()
    if activation == "silu":
        return F.silu(u, inplace=True)
    return u


class _BatchNormActTrain(torch.autograd.Function):
    """``act((z - mean) / sqrt(var + eps) * gamma + beta [+ residual])`` where ``mean``/``var``
    are the batch statistics *of z* (float64, from ``conv3d_bn_stats``).

    Forward: given the statistics, training-mode BatchNorm's output is an affine map per
    channel, which ATen's inference-mode batch norm computes in one vectorised pass (in float32
    for 16-bit ``z``, rounded once, in ``z``'s layout) when handed them as its "running"
    statistics; then ``+ residual`` and the activation, in place, exactly the eager sequence of
    roundings. Under ``torch.compile`` these decompose into element-wise ops that inductor fuses.

    Backward: BatchNorm's analytic training backward, ``dz = gamma * rstd * (du - mean(du) -
    x_hat * mean(du * x_hat))`` with the two per-channel sums ``sum(du)`` and
    ``sum(du * x_hat)`` (which are also ``d beta`` and ``d gamma``), given the saved batch mean and
    ``rstd``: that is ATen's ``native_batch_norm_backward`` with ``train=True``, the same
    vectorised kernel eager BatchNorm's backward runs (one read of ``du`` and ``z`` for the
    sums, one pass for ``dz``, ``du - mean(du)`` formed before the scaling so that a nearly
    constant ``du`` does not cancel). ``du`` is the activation's derivative (``threshold_backward``
    / ``silu_backward``, as eager).

    ``mean`` and ``var`` are passed detached: that backward is the derivative with respect to
    ``z`` of the whole training-mode BatchNorm, their dependence on ``z`` included (as for
    ``F.batch_norm``, whose only tensor input is ``z``), so this function is only correct for
    statistics of ``z`` itself; it is private to :func:`conv3d_bn_act_train`. The conv bias is an
    input only to receive its gradient, which is exactly zero: the batch mean absorbs it, so the
    output does not depend on it (eager autograd returns rounding noise around zero there).
    """

    @staticmethod
    def forward(ctx, z, mean, var, conv_bias, gamma, beta, residual, eps, activation):
        acc = opmath_dtype(z.dtype)
        # The statistics and BN's affine parameters in the accumulation dtype (ATen's mixed-type
        # batch norm: 16-bit z with float32 statistics and parameters).
        mean_a, var_a = mean.to(acc), var.to(acc)
        rstd_a = torch.rsqrt(var + eps).to(acc)  # from float64, rounded once
        w = None if gamma is None else gamma.detach().to(acc)
        b = None if beta is None else beta.detach().to(acc)
        u = F.batch_norm(z, mean_a, var_a, w, b, False, 0.0, eps)
        if residual is not None:
            u = u.add_(residual)
        if activation == "silu":
            y = F.silu(u)   # eager saves silu's input; so does this
        else:
            y = _act_(u, activation)
        y = y.contiguous(memory_format=backends.output_memory_format(z))
        ctx.activation, ctx.eps = activation, eps
        ctx.has = (conv_bias is not None, gamma is not None, beta is not None,
                   residual is not None)
        ctx.save_for_backward(z, mean_a, rstd_a, w,
                              u if activation == "silu" else None,   # silu'(u)
                              y if activation == "relu" else None)   # relu: u > 0 iff y > 0
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        z, mean_a, rstd_a, w, u, y = ctx.saved_tensors
        has_bias, has_gamma, has_beta, has_res = ctx.has
        need = ctx.needs_input_grad
        if ctx.activation == "relu":
            du = torch.ops.aten.threshold_backward(grad_y, y, 0)
        elif ctx.activation == "silu":
            du = torch.ops.aten.silu_backward(grad_y, u)
        else:
            du = grad_y
        grad_z = grad_bias = grad_gamma = grad_beta = grad_res = None
        mask = [need[0], has_gamma and need[4], has_beta and need[5]]
        if any(mask):
            grad_z, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
                du, z, w, None, None, mean_a, rstd_a, True, ctx.eps, mask)
            if grad_z is not None:
                grad_z = grad_z.contiguous(memory_format=backends.output_memory_format(z))
        if has_bias and need[3]:
            grad_bias = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
        if has_res and need[6]:
            grad_res = du
        # autograd casts each gradient to its input's dtype (float32 grad_gamma -> bfloat16 ...)
        return grad_z, None, None, grad_bias, grad_gamma, grad_beta, grad_res, None, None


def _batch_norm_act_train(
    z: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    activation: str,
    residual: Optional[Tensor] = None,
    conv_bias: Optional[Tensor] = None,
) -> Tensor:
    """``act(batch_norm_train(z) [+ residual])`` given ``mean``/``var``, the float64 batch
    statistics of ``z`` itself (as ``conv3d_bn_stats`` returns them). Differentiable with respect
    to ``z`` (the statistics' dependence on ``z`` included), ``weight``, ``bias``, ``residual``
    and ``conv_bias`` (zero gradient: see :class:`_BatchNormActTrain`)."""
    return _BatchNormActTrain.apply(z, mean.detach(), var.detach(), conv_bias, weight, bias,
                                    residual, float(eps), activation)


def conv3d_bn_act_train(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    num_batches_tracked: Optional[Tensor] = None,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    stride: _IntOrTriple = 1,
    padding: _IntOrTriple = 0,
    dilation: _IntOrTriple = 1,
    groups: int = 1,
    activation: str = "relu",
    residual: Optional[Tensor] = None,
) -> Tensor:
    r"""``act(batch_norm(conv3d(x, w, bias), training=True) [+ residual])`` on the fused path.

    The same function (and side effects) as eager ``nn.Conv3d`` -> ``nn.BatchNorm3d`` (in training
    mode) -> ``+ residual`` -> ``nn.ReLU``/``nn.SiLU``/nothing:

    * normalises with the batch mean and biased variance of the convolution's output;
    * if ``running_mean``/``running_var`` are given, updates them in place like
      ``nn.BatchNorm3d``: ``running = (1 - f) * running + f * batch`` with the *unbiased* batch
      variance and ``f = momentum``, or ``f = 1 / num_batches_tracked`` (a cumulative average)
      when ``momentum is None``; ``num_batches_tracked`` (if given) is incremented first. The
      conv ``bias`` is part of the batch mean that enters the running mean (it cancels in the
      normalisation). Pass no running statistics for ``track_running_stats=False``;
    * raises ``ValueError`` like ``F.batch_norm`` when there is one value per channel.

    Args:
        input, weight, bias, stride, padding, dilation, groups: the convolution (``bias`` may
            be None).
        bn_weight, bn_bias: BatchNorm's ``gamma``/``beta`` (None without affine).
        running_mean, running_var, num_batches_tracked, momentum, eps: BatchNorm's state and
            hyper-parameters.
        activation: ``"relu"``, ``"silu"``/``"swish"`` or ``"identity"``.
        residual: added after the BatchNorm, before the activation.

    Gradients flow to ``input``, ``weight``, ``bias``, ``bn_weight``, ``bn_bias`` and
    ``residual``. The convolution and its statistics run on the selected backend
    (:func:`videoconv.ops.conv3d_bn_stats`); a forced backend runs the conv gradients too.
    """
    op = "videoconv.conv3d_bn_act_train"
    activation = canonical_activation(activation, op)
    z, mean, var = torch.ops.videoconv.conv3d_bn_stats.default(
        input, weight, list(as_triple(stride, "stride", op)),
        list(as_triple(padding, "padding", op)), list(as_triple(dilation, "dilation", op)),
        groups)
    channels = z.shape[1]
    for name, v in (("bias", bias), ("bn_weight", bn_weight), ("bn_bias", bn_bias),
                    ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            _check_channel_vector(op, name, v, channels, "output channel")
    _check_residual(op, residual, z.shape)
    count = z.numel() // channels
    if count == 1:  # F.batch_norm's check, same message
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{z.shape}")
    if running_mean is not None and running_var is not None:
        _update_running_stats(running_mean, running_var, num_batches_tracked, momentum, mean, var,
                              bias, count)
    elif num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if count == 0:  # empty batch: as eager, an empty output (and no running-stat update)
        y = z.to(opmath_dtype(z.dtype)) * 1.0
        if residual is not None:
            y = y + residual
        return _act_(y, activation).to(z.dtype)
    return _batch_norm_act_train(z, mean, var, bn_weight, bn_bias, eps, activation, residual,
                                 conv_bias=bias)


def _update_running_stats(running_mean: Tensor, running_var: Tensor,
                          num_batches_tracked: Optional[Tensor], momentum: Optional[float],
                          mean: Tensor, var: Tensor, bias: Optional[Tensor], count: int) -> None:
    """``nn.BatchNorm3d``'s running-statistics update (``_BatchNorm.forward`` and
    ``native_batch_norm``), computed in float64 and rounded once into the buffers."""
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        if count == 0:
            return  # eager leaves the running statistics of an empty batch alone
        if momentum is not None:
            factor = float(momentum)
        elif num_batches_tracked is not None:
            factor = num_batches_tracked.to(torch.float64).reciprocal()  # a tensor: traceable
        else:
            factor = 0.0  # what F.batch_norm receives from nn.BatchNorm in that case
        batch_mean = mean if bias is None else mean + bias.detach().to(torch.float64)
        unbiased = var * count / (count - 1) if count > 1 else var
        running_mean.copy_(running_mean.to(torch.float64) * (1 - factor) + batch_mean * factor)
        running_var.copy_(running_var.to(torch.float64) * (1 - factor) + unbiased * factor)
