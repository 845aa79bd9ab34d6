"""``videoconv::conv3d_bn_stats``: a 3D convolution that also returns its per-channel batch
statistics: what a training-mode BatchNorm after it needs.

Why an op of its own
--------------------
Training-mode BatchNorm normalises the convolution's output ``z`` with the statistics of the
current batch, so the fused eval-mode op (scale/shift known before the convolution runs) cannot
serve it: the scale/shift are only known once all of ``z`` exists. The expensive part of BN's
forward is reading ``z`` back to reduce it; this op does that reduction where ``z`` is produced
(the Triton kernel's epilogue reduces the output tile it holds in registers; the CPU backend
reduces right after oneDNN's convolution, see videoconv/backends/cpu.py) and returns

* ``out``: ``conv3d(input, weight)`` in the input's dtype and memory format (no bias: a conv
  bias shifts the batch mean by the same amount and cancels in the normalisation; the caller
  adds it to the running mean, see :mod:`videoconv.ops.conv3d_bn_act_train`);
* ``mean``, ``var``: float64 ``[C_out]``, the mean and the *biased* variance of ``out`` over
  ``N, D, H, W`` — of the values as returned, i.e. after rounding to the input dtype, so that
  they describe exactly the tensor that gets normalised.

Numerics (the contract every backend meets)
-------------------------------------------
``sum(z)`` and ``sum(z^2)`` in float32 would lose the variance to cancellation as soon as
``|mean| >> std`` (``var = E[z^2] - E[z]^2``: with mean 1e4 and std 1 both terms are 1e8 and
float32 keeps 7 digits). Shifting by a per-channel constant (BN's running mean) only helps once
that constant is close to the batch mean, which it is not in the first steps (it starts at 0).
Instead every backend cuts the reduction into tiles of at most a few thousand values per
channel and, per tile and channel, takes the tile's own sum and its *centred* sum of squares
``M2_t = sum((z - mean_t)^2)`` (the tile is in registers or in cache, so centring it costs no
memory traffic), accumulating in float32 (float64 for float64 inputs). The tiles are then merged
in a fixed order in float64 with Chan et al.'s pairwise formula::

    mean = sum_t S_t / n,      M2 = sum_t M2_t + sum_t n_t * (S_t / n_t - mean)^2

whose terms are all non-negative: no cancellation, whatever the mean. The tiling depends only
on the shape (never on thread counts or autotuning), and no atomics are used, so the result is
bitwise reproducible run to run. The ``reference`` backend computes the same quantities in
float64 directly (``torch.var_mean``).

Autograd is complete (gradients flowing into ``out``, ``mean`` and ``var`` all reach ``input``
and ``weight`` through ``videoconv::_conv3d_input_weight_grad``); the training chain
(:mod:`videoconv.ops.conv3d_bn_act_train`) only ever sends a gradient through ``out``, which
skips the statistics' terms entirely.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import backends
from ..backends.reference import opmath_dtype
from ._validation import as_triple, check_conv3d_bn_stats

__all__ = ["conv3d_bn_stats"]

_OP = "videoconv::conv3d_bn_stats"
_IntOrTriple = Union[int, Sequence[int]]


def conv3d_bn_stats(
    input: Tensor,
    weight: Tensor,
    stride: _IntOrTriple = (1, 1, 1),
    padding: _IntOrTriple = (0, 0, 0),
    dilation: _IntOrTriple = (1, 1, 1),
    groups: int = 1,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""3D convolution plus the per-channel batch statistics of its output.

    Returns ``(out, mean, var)``:

    * ``out`` (Tensor[N, C_out, D_out, H_out, W_out]): ``conv3d(input, weight)`` (no bias), in
      the input's dtype and layout (NCDHW in, NCDHW out; channels_last_3d in, channels_last_3d
      out);
    * ``mean`` (float64 Tensor[C_out]): :math:`\frac{1}{n}\sum_{n,d,h,w} out`;
    * ``var`` (float64 Tensor[C_out]): the biased variance
      :math:`\frac{1}{n}\sum (out - mean)^2`, ``n = N * D_out * H_out * W_out``.

    The statistics are those of ``out`` as returned (after rounding to 16 bits for float16 /
    bfloat16 inputs), reduced per tile in float32 with centred sums of squares and merged in a
    fixed order in float64: deterministic, and accurate when ``|mean| >> std`` (see the module
    docstring). An empty batch gives NaN statistics.

    Arguments as :func:`videoconv.ops.conv3d_bn_act` (``stride``, ``padding``, ``dilation``:
    an int or 3 ints; ``groups`` incl. depthwise). Supports autograd (through all three
    outputs), ``torch.compile`` and ``torch.export``; the backend is chosen per call like the
    other ops (:mod:`videoconv.backends`).
    """
    op = "videoconv.conv3d_bn_stats"
    return torch.ops.videoconv.conv3d_bn_stats.default(
        input,
        weight,
        list(as_triple(stride, "stride", op)),
        list(as_triple(padding, "padding", op)),
        list(as_triple(dilation, "dilation", op)),
        groups,
    )


# ----------------------------------------------------------------------------------------------
# kernels


def _empty_stats(input: Tensor, channels: int) -> Tensor:
    return torch.empty(channels, dtype=torch.float64, device=input.device)


@torch.library.register_kernel(_OP, ("cpu", "cuda"))
def _conv3d_bn_stats_kernel(input, weight, stride, padding, dilation, groups):
    out_shape = check_conv3d_bn_stats(input, weight, stride, padding, dilation, groups)
    inputs = dict(input=input, weight=weight, stride=tuple(stride), padding=tuple(padding),
                  dilation=tuple(dilation), groups=groups)
    backend = backends.select_backend("conv3d_bn_stats", **inputs)
    if input.shape[0] == 0:  # statistics of no values: undefined
        nan = _empty_stats(input, out_shape[1]).fill_(float("nan"))
        return backends.empty_output(input, out_shape), nan, nan.clone()
    return backend.conv3d_bn_stats(**inputs)


@torch.library.register_fake(_OP)
def _conv3d_bn_stats_fake(input, weight, stride, padding, dilation, groups):
    out_shape = check_conv3d_bn_stats(input, weight, stride, padding, dilation, groups)
    return (backends.empty_output(input, out_shape), _empty_stats(input, out_shape[1]),
            _empty_stats(input, out_shape[1]))


# ----------------------------------------------------------------------------------------------
# autograd


def _setup_context(ctx, inputs, output):
    input, weight, stride, padding, dilation, groups = inputs
    out, mean, _ = output
    ctx.conv = (list(stride), list(padding), list(dilation), groups)
    # a backend forced for the forward (use(), a fused module's backend=) runs the backward too
    ctx.backend = backends.forced_backend()
    # Unused outputs (the training chain never differentiates mean/var: its BatchNorm backward
    # already contains their dependence on `out`) get None, not zero tensors that would cost two
    # passes over `out` below.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, weight, out, mean)


def _backward_impl(ctx, grad_out, grad_mean, grad_var):
    input, weight, out, mean = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_w) or (grad_out is None and grad_mean is None and grad_var is None):
        return None, None, None, None, None, None
    # d out = grad_out + grad_mean / n + grad_var * 2 (out - mean) / n, per channel; computed in
    # the input's opmath and rounded once (the (out - mean) form has no cancellation).
    opmath = opmath_dtype(out.dtype)
    view = (1, -1, 1, 1, 1)
    n = out.numel() // out.shape[1]  # values per channel (a SymInt under dynamic shapes)
    dz = None if grad_out is None else grad_out.to(opmath)
    if grad_mean is not None:
        term = (grad_mean / n).to(opmath).view(view)
        dz = term.expand(out.shape) if dz is None else dz + term
    if grad_var is not None:
        term = (out.to(opmath) - mean.to(opmath).view(view)) * (grad_var * 2.0 / n).to(
            opmath).view(view)
        dz = term if dz is None else dz + term
    dz = dz.to(out.dtype).contiguous(memory_format=backends.output_memory_format(out))
    grad_x, grad_w = torch.ops.videoconv._conv3d_input_weight_grad.default(
        dz, input, weight, stride, padding, dilation, groups, [need_x, need_w])
    return (grad_x if need_x else None), (grad_w if need_w else None), None, None, None, None


def _backward(ctx, grad_out, grad_mean, grad_var):
    if ctx.backend is None:
        return _backward_impl(ctx, grad_out, grad_mean, grad_var)
    with backends.use(ctx.backend):
        return _backward_impl(ctx, grad_out, grad_mean, grad_var)


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
