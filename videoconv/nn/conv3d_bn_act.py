"""``videoconv.nn.Conv3dBNAct``: Conv3d -> BatchNorm3d [+ residual] -> activation, fused."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torch import Tensor

from .. import backends
from ..ops._direct import tensor_signature
from ..ops.conv3d_bn_act import call_from_module as call_conv3d_bn_act
from ..ops.conv3d_bn_act import prepare_from_module as prepare_conv3d_bn_act
from ._common import (FusedModuleBase, _bn_eps, _fold_sources_of, _sources_key, activation_name,
                      hooks_reason)
from .folding import fold_conv_bn

__all__ = ["Conv3dBNAct", "check_conv3d_for_fusion", "check_bn_for_fusion"]

_IntOrTriple = Union[int, Sequence[int]]


def check_conv3d_for_fusion(conv, what: str = "conv") -> None:
    """ValueError unless ``conv`` is an ``nn.Conv3d`` the fused op can run."""
    if not isinstance(conv, nn.Conv3d):
        raise ValueError(f"videoconv.nn: {what} must be an nn.Conv3d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"videoconv.nn: {what} has padding_mode={conv.padding_mode!r}; only "
                         "'zeros' can be fused")
    if isinstance(conv.padding, str):
        raise ValueError(f"videoconv.nn: {what} has padding={conv.padding!r}; give the padding "
                         "explicitly to fuse it")
    if hooks_reason(conv) is not None:
        raise ValueError(f"videoconv.nn: {what} {hooks_reason(conv)}")


def check_bn_for_fusion(bn, channels: int, what: str = "bn", conv: str = "conv") -> None:
    """ValueError unless ``bn`` is a foldable ``nn.BatchNorm3d`` with ``channels`` features."""
    if bn is None:
        return
    if not isinstance(bn, nn.BatchNorm3d):
        raise ValueError(f"videoconv.nn: {what} must be an nn.BatchNorm3d or None, got "
                         f"{type(bn).__name__}")
    if bn.num_features != channels:
        raise ValueError(
            f"videoconv.nn: {what} has num_features={bn.num_features} but {conv} has "
            f"out_channels={channels}; they must match"
        )
    if hooks_reason(bn) is not None:
        raise ValueError(f"videoconv.nn: {what} {hooks_reason(bn)}")
    # track_running_stats=False is accepted: such a BatchNorm normalises with batch statistics
    # in eval mode too, which the modules run on the training path (never folded).


class Conv3dBNAct(FusedModuleBase):
    r"""``act(bn(conv3d(x)) [+ residual])`` as one module; eval mode runs one fused op.

    The original ``nn.Conv3d`` and ``nn.BatchNorm3d`` are kept as submodules (default names
    ``conv`` and ``bn``; :meth:`from_modules` takes other names, e.g. ``{"conv": "0", "bn": "1"}``
    to stand in for ``nn.Sequential(conv, bn, act)`` with the same ``state_dict`` keys), so the
    parameters, running statistics, ``state_dict`` and optimiser state are those of the unfused
    chain.

    * **eval** (``module.eval()``): :func:`videoconv.ops.conv3d_bn_act` with the BatchNorm (and
      conv bias) folded into a per-channel ``scale``/``shift`` (:mod:`videoconv.nn.folding`),
      cached until a parameter or buffer changes (see :meth:`folded`).
    * **train**: BatchNorm's training semantics on the fused path
      (:func:`videoconv.ops.conv3d_bn_act_train`): ``videoconv.ops.conv3d_bn_stats`` computes
      the convolution and, in its epilogue, the per-channel batch mean/variance (deterministic,
      float64 merge); the running statistics are updated exactly as ``nn.BatchNorm3d`` does
      (``momentum``, or the cumulative average when ``momentum=None``; unbiased running
      variance; ``num_batches_tracked``; none with ``track_running_stats=False``); then
      ``act(z * scale + shift [+ residual])`` is one element-wise step, and the backward is
      BatchNorm's analytic one. Equal to the eager chain within rounding (not bit-identical:
      the statistics are summed in another order). A BatchNorm with
      ``track_running_stats=False`` uses batch statistics in eval mode too, as
      ``nn.BatchNorm3d`` does. Without a BatchNorm, training runs the fused op (scale 1,
      shift = bias), which has autograd.
    * **hooks** added to ``conv`` or ``bn`` after the module was built (:meth:`from_modules`
      refuses modules that already have some): both modes then call ``conv`` and ``bn``
      themselves, as the unfused chain does, so that the hooks run and see what they would
      have seen; at eager speed, until the hooks are removed.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            ``nn.Conv3d`` (``padding_mode`` zeros).
        activation (str): ``"relu"``, ``"silu"`` (``"swish"``) or ``"identity"``.
        eps, momentum, affine, track_running_stats: as ``nn.BatchNorm3d``.
        batch_norm (bool): False for a conv(+bias) -> activation unit without BatchNorm.
        device, dtype: factory kwargs.

    ``forward(x, residual=None)``; ``residual`` is added before the activation, inside the fused
    op when it is of the output's size, dtype and device, else (a tensor that broadcasts, or
    of another dtype: what eager's ``+`` in a model ``fuse()`` converted accepts) after it, as
    ``+`` adds it, with the activation after that. Bad inputs raise the op's errors.
    ``module.backend`` (a backend name or None) forces the backend of the op.
    """

    _roles = ("conv", "bn")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrTriple,
        stride: _IntOrTriple = 1,
        padding: _IntOrTriple = 0,
        dilation: _IntOrTriple = 1,
        groups: int = 1,
        bias: bool = False,
        activation: str = "relu",
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        batch_norm: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, **kw)
        bn = (nn.BatchNorm3d(out_channels, eps, momentum, affine, track_running_stats, **kw)
              if batch_norm else None)
        self._setup(conv, bn, activation_name(activation), None)

    def _setup(self, conv, bn, activation: str, names) -> None:
        check_conv3d_for_fusion(conv)
        check_bn_for_fusion(bn, conv.out_channels)
        self.activation = activation
        self._init_slots({"conv": conv, "bn": bn}, names)

    @classmethod
    def from_modules(
        cls,
        conv: nn.Conv3d,
        bn: Optional[nn.BatchNorm3d] = None,
        act: Union[nn.Module, str, None] = None,
        *,
        names: Optional[Dict[str, str]] = None,
        backend: Optional[str] = None,
    ) -> "Conv3dBNAct":
        """Fuse existing modules; the result shares (does not copy) their parameters/buffers.

        ``act``: ``nn.ReLU``, ``nn.SiLU``, ``nn.Identity``/None, or an activation name.
        ``names``: where to register ``conv``/``bn`` inside the module (dotted paths allowed).
        ``backend``: force this backend for the op (``videoconv.backends.use``).
        ValueError if the conv/BN channels do not match or the modules cannot be fused.
        """
        self = cls.__new__(cls)
        FusedModuleBase.__init__(self)
        self._setup(conv, bn, activation_name(act), names)
        self.backend = backend
        self.train(conv.training if bn is None else bn.training)
        return self

    @property
    def conv(self) -> nn.Conv3d:
        return self._get("conv")

    @property
    def bn(self) -> Optional[nn.BatchNorm3d]:
        return self._get("bn")

    def _fold_sources(self):
        return _fold_sources_of(self.conv, self.bn)

    def _fold(self) -> Tuple[Tensor, Tensor]:
        return fold_conv_bn(self.conv, self.bn)

    def _fold_constants(self) -> tuple:
        return (_bn_eps(self.bn),)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        conv, bn = self.conv, self.bn
        if self._hooked((conv, bn)):
            return self._unfused(x, residual, ((conv, bn),))
        if self._batch_stats(bn):
            # BatchNorm training semantics (batch statistics, running-stat update) on the fused
            # path: conv + statistics in one op, then one element-wise step.
            self._forget_fold()
            args = self._conv_args(conv)
            if self._residual_apart(x, residual, ((conv, args),)):
                return self._add_apart(self._conv_bn_train(x, conv, bn, None, args, "identity"),
                                       residual)
            return self._conv_bn_train(x, conv, bn, residual, args)
        if self.backend is None:  # the common case, without a context manager per call
            return self._eval_forward(x, residual, conv, bn)
        with self._backend_context():
            return self._eval_forward(x, residual, conv, bn)

    def _eval_forward(self, x: Tensor, residual: Optional[Tensor], conv: nn.Conv3d,
                      bn: Optional[nn.BatchNorm3d]) -> Tensor:
        # The call prepared by the backend for this input signature and these parameter
        # versions, when its guard holds (FusedModuleBase._eval_fast_path); else the op.
        out, keep = self._eval_fast_path(x, residual, (conv, bn))
        if out is not None:
            return out
        scale, shift = self.folded()
        stride, padding, dilation = self._conv_args(conv)
        if self._residual_apart(x, residual, ((conv, (stride, padding, dilation)),)):
            # (Never prepared: the fast path above only holds calls whose residual fitted.)
            return self._add_apart(call_conv3d_bn_act(
                self._direct_plan(), x, conv.weight, scale, shift, stride, padding, dilation,
                conv.groups, "identity", None), residual)
        out = call_conv3d_bn_act(self._direct_plan(), x, conv.weight, scale, shift, stride,
                                 padding, dilation, conv.groups, self.activation, residual)
        if keep is not None and x.shape[0] > 0:
            self._keep_prepared(keep, prepare_conv3d_bn_act(
                x, conv.weight, scale, shift, stride, padding, dilation, conv.groups,
                self.activation, residual))
        return out

    def _prepared_guard(self, x: Tensor, residual: Optional[Tensor], modules: tuple,
                        sources: Tuple[Optional[Tensor], ...], key: Optional[tuple] = None):
        """What a prepared call depends on: the input signature, the backend choice, and every
        parameter the fold and the packed weight come from (``sources``: identity, storage,
        version, the fold cache's key, or ``key`` when a stamp says it is unchanged; and BN's
        eps). None when a parameter has no version counter (inference tensors)."""
        conv, bn = modules
        if key is None:
            key, versioned = _sources_key(sources)
            if not versioned:
                return None
        return (tensor_signature(x), tensor_signature(residual), backends.forced_backend(),
                tuple(backends.PRIORITY), key, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.padding_mode, self.activation, _bn_eps(bn))

    def extra_repr(self) -> str:
        s = f"activation={self.activation!r}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s
