"""``videoconv.nn.Conv2Plus1dBNAct``: a whole (2+1)D unit, fused."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torch import Tensor

from .. import backends, ops
from ..ops._direct import tensor_signature
from ..ops.conv2plus1d_bn_act import call_from_module as call_conv2plus1d_bn_act
from ..ops.conv2plus1d_bn_act import prepare_from_module as prepare_conv2plus1d_bn_act
from ._common import FusedModuleBase, _bn_eps, _fold_sources_of, _sources_key, activation_name
from .conv3d_bn_act import check_bn_for_fusion, check_conv3d_for_fusion
from .folding import fold_conv_bn

__all__ = ["Conv2Plus1dBNAct", "split_2plus1d_convs"]

_IntOrTriple = Union[int, Sequence[int]]


def _triple(v, name):
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(i) for i in v)
    if len(t) != 3:
        raise ValueError(f"videoconv.nn: {name} must be an int or a triple, got {v!r}")
    return t


def split_2plus1d_convs(conv1: nn.Conv3d, conv2: nn.Conv3d) -> Tuple[bool, Tuple[int, ...], Tuple[int, ...]]:
    """``(temporal_first, stride, padding)`` of the (2+1)D unit made of ``conv1`` then ``conv2``.

    One conv must be spatial (kernel ``(1, kH, kW)``, stride ``(1, sH, sW)``, padding
    ``(0, pH, pW)``), the other temporal (``(kT, 1, 1)``, ``(sT, 1, 1)``, ``(pT, 0, 0)``); no groups,
    no dilation, and ``conv2.in_channels == conv1.out_channels``. ValueError otherwise.
    """
    for name, c in (("conv1", conv1), ("conv2", conv2)):
        check_conv3d_for_fusion(c, name)
        if c.groups != 1 or tuple(c.dilation) != (1, 1, 1):
            raise ValueError(f"videoconv.nn: {name} of a (2+1)D unit must have groups=1 and "
                             f"dilation 1, got groups={c.groups}, dilation={tuple(c.dilation)}")
    if conv2.in_channels != conv1.out_channels:
        raise ValueError(f"videoconv.nn: conv1 has out_channels={conv1.out_channels} but conv2 has "
                         f"in_channels={conv2.in_channels}")

    def spatial(c):
        return (c.kernel_size[0] == 1 and c.stride[0] == 1 and c.padding[0] == 0)

    def temporal(c):
        return (tuple(c.kernel_size[1:]) == (1, 1) and tuple(c.stride[1:]) == (1, 1)
                and tuple(c.padding[1:]) == (0, 0))

    if spatial(conv1) and temporal(conv2):
        s, t, temporal_first = conv1, conv2, False
    elif temporal(conv1) and spatial(conv2):
        s, t, temporal_first = conv2, conv1, True
    else:
        raise ValueError(
            "videoconv.nn: a (2+1)D unit needs a spatial conv (kernel (1, kH, kW), stride "
            "(1, sH, sW), padding (0, pH, pW)) and a temporal conv (kernel (kT, 1, 1), stride "
            f"(sT, 1, 1), padding (pT, 0, 0)); got conv1 kernel {tuple(conv1.kernel_size)} stride "
            f"{tuple(conv1.stride)} padding {tuple(conv1.padding)}, conv2 kernel "
            f"{tuple(conv2.kernel_size)} stride {tuple(conv2.stride)} padding {tuple(conv2.padding)}"
        )
    stride = (t.stride[0], s.stride[1], s.stride[2])
    padding = (t.padding[0], s.padding[1], s.padding[2])
    return temporal_first, stride, padding


class Conv2Plus1dBNAct(FusedModuleBase):
    r"""A (2+1)D unit: ``conv1 -> bn1 -> act -> conv2 -> bn2 [+ residual] -> act``.

    Spatial first (R(2+1)D: ``conv1`` is ``(1, kH, kW)``, ``conv2`` is ``(kT, 1, 1)``) or
    ``temporal_first``. Eval mode runs :func:`videoconv.ops.conv2plus1d_bn_act` with both
    BatchNorms folded (cached as in :class:`Conv3dBNAct`); train mode runs each stage (conv ->
    BN -> act, the residual added in the second) on the fused training path of
    :class:`Conv3dBNAct` (:func:`videoconv.ops.conv3d_bn_act_train`: statistics from the
    convolution's epilogue, ``nn.BatchNorm3d``'s running-stat updates, analytic backward). The
    intermediate is materialised between the stages: its BatchNorm needs the statistics of the
    whole first convolution before the second can start. ``forward(x, residual=None)``: a
    residual that is not of the output's size, dtype and device is added as in
    :class:`Conv3dBNAct`, after the second stage, as eager's ``+`` adds it. Hooks added to the
    original modules after the unit was built make it call them, as :class:`Conv3dBNAct` does.

    The original modules are submodules (default names ``conv1``, ``bn1``, ``conv2``, ``bn2``;
    :meth:`from_modules` takes other, possibly dotted, names: ``fuse()`` uses ``"0.0"``,
    ``"0.1"``, ``"0.3"``, ``"1"`` for torchvision's ``Sequential(Conv2Plus1D, BN, ReLU)`` so the
    ``state_dict`` keys do not change).

    Args:
        in_channels, mid_channels, out_channels: widths (input, between the convs, output).
        kernel_size, stride, padding: of the 3D conv being factored, ``(kT, kH, kW)`` etc.
        activation: ``"relu"``, ``"silu"`` or ``"identity"`` (after both convs).
        temporal_first: temporal conv first.
        bias, eps, momentum: as ``nn.Conv3d``/``nn.BatchNorm3d``.
    """

    _roles = ("conv1", "bn1", "conv2", "bn2")

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_size: _IntOrTriple = 3,
        stride: _IntOrTriple = 1,
        padding: _IntOrTriple = 0,
        activation: str = "relu",
        temporal_first: bool = False,
        bias: bool = False,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        kt, kh, kw_ = _triple(kernel_size, "kernel_size")
        st, sh, sw = _triple(stride, "stride")
        pt, ph, pw = _triple(padding, "padding")
        spatial = dict(kernel_size=(1, kh, kw_), stride=(1, sh, sw), padding=(0, ph, pw))
        temporal = dict(kernel_size=(kt, 1, 1), stride=(st, 1, 1), padding=(pt, 0, 0))
        first, second = (temporal, spatial) if temporal_first else (spatial, temporal)
        conv1 = nn.Conv3d(in_channels, mid_channels, bias=bias, **first, **kw)
        conv2 = nn.Conv3d(mid_channels, out_channels, bias=bias, **second, **kw)
        bn1 = nn.BatchNorm3d(mid_channels, eps, momentum, **kw)
        bn2 = nn.BatchNorm3d(out_channels, eps, momentum, **kw)
        self._setup(conv1, bn1, conv2, bn2, activation_name(activation), None)

    def _setup(self, conv1, bn1, conv2, bn2, activation, names) -> None:
        split_2plus1d_convs(conv1, conv2)  # ValueError unless they make a (2+1)D unit
        check_bn_for_fusion(bn1, conv1.out_channels, "bn1", "conv1")
        check_bn_for_fusion(bn2, conv2.out_channels, "bn2", "conv2")
        self.activation = activation
        self._init_slots({"conv1": conv1, "bn1": bn1, "conv2": conv2, "bn2": bn2}, names)

    @classmethod
    def from_modules(
        cls,
        conv1: nn.Conv3d,
        bn1: Optional[nn.BatchNorm3d],
        act1: Union[nn.Module, str, None],
        conv2: nn.Conv3d,
        bn2: Optional[nn.BatchNorm3d],
        act2: Union[nn.Module, str, None],
        *,
        names: Optional[Dict[str, str]] = None,
        backend: Optional[str] = None,
    ) -> "Conv2Plus1dBNAct":
        """Fuse an existing (2+1)D unit; parameters are shared, not copied.

        ``act1`` and ``act2`` must be the same activation (the op applies one activation after
        both convolutions). ValueError for mismatched channels or convs that do not form a
        (2+1)D pair (see :func:`split_2plus1d_convs`).
        """
        a1, a2 = activation_name(act1, "act1"), activation_name(act2, "act2")
        if a1 != a2:
            raise ValueError(f"videoconv.nn: act1 ({a1}) and act2 ({a2}) of a (2+1)D unit must "
                             "be the same activation")
        self = cls.__new__(cls)
        FusedModuleBase.__init__(self)
        self._setup(conv1, bn1, conv2, bn2, a1, names)
        self.backend = backend
        self.train(conv1.training if bn1 is None else bn1.training)
        return self

    conv1 = property(lambda self: self._get("conv1"))
    bn1 = property(lambda self: self._get("bn1"))
    conv2 = property(lambda self: self._get("conv2"))
    bn2 = property(lambda self: self._get("bn2"))

    @property
    def temporal_first(self) -> bool:
        """Whether ``conv1`` is the temporal conv (read from the convs)."""
        return self._unit_args(self.conv1, self.conv2)[0]

    @property
    def stride(self) -> Tuple[int, int, int]:
        """``(sT, sH, sW)`` of the unit (read from the convs)."""
        return self._unit_args(self.conv1, self.conv2)[1]

    @property
    def padding(self) -> Tuple[int, int, int]:
        """``(pT, pH, pW)`` of the unit (read from the convs)."""
        return self._unit_args(self.conv1, self.conv2)[2]

    def _unit_args(self, conv1: nn.Conv3d, conv2: nn.Conv3d) -> Tuple[bool, Tuple[int, ...],
                                                                      Tuple[int, ...]]:
        """``(temporal_first, stride, padding)`` as the convs are now
        (:func:`split_2plus1d_convs`). Eval mode passes these to the op and train mode runs each
        conv with its own arguments; read from the convs, the two always agree (kept as copies
        made at construction, a conv's padding changed afterwards was seen in training and not
        in eval: a wrong answer). Checked again once per distinct value of the convs'
        arguments; a pair that no longer makes a unit, or a padding mode other than zeros,
        raises split_2plus1d_convs' ValueError."""
        key = (conv1.kernel_size, conv1.stride, conv1.padding, conv1.dilation, conv1.groups,
               conv1.padding_mode, conv2.kernel_size, conv2.stride, conv2.padding,
               conv2.dilation, conv2.groups, conv2.padding_mode, conv1.out_channels,
               conv2.in_channels)
        cached = self.__dict__.get("_unit_args_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        args = split_2plus1d_convs(conv1, conv2)
        self.__dict__["_unit_args_cache"] = (key, args)
        return args

    def _fold_sources(self):
        return _fold_sources_of(self.conv1, self.bn1) + _fold_sources_of(self.conv2, self.bn2)

    def _fold(self):
        return fold_conv_bn(self.conv1, self.bn1) + fold_conv_bn(self.conv2, self.bn2)

    def _fold_constants(self):
        return (_bn_eps(self.bn1), _bn_eps(self.bn2))

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        conv1, bn1, conv2, bn2 = self.conv1, self.bn1, self.conv2, self.bn2
        if self._hooked((conv1, bn1, conv2, bn2)):
            return self._unfused(x, residual, ((conv1, bn1), (conv2, bn2)))
        if self._batch_stats(bn1) or self._batch_stats(bn2):
            self._forget_fold()
            h = self._stage(x, conv1, bn1, None, "conv1")
            if self._residual_apart(x, residual, self._stages_args(conv1, conv2)):
                return self._add_apart(self._stage(h, conv2, bn2, None, "conv2", "identity"),
                                       residual)
            return self._stage(h, conv2, bn2, residual, "conv2")
        if self.backend is None:  # the common case, without a context manager per call
            return self._eval_forward(x, residual, conv1, bn1, conv2, bn2)
        with self._backend_context():
            return self._eval_forward(x, residual, conv1, bn1, conv2, bn2)

    def _eval_forward(self, x: Tensor, residual: Optional[Tensor], conv1: nn.Conv3d,
                      bn1: Optional[nn.BatchNorm3d], conv2: nn.Conv3d,
                      bn2: Optional[nn.BatchNorm3d]) -> Tensor:
        # As Conv3dBNAct._eval_forward; the prepared call looks both stages' packed weights up
        # once, not per call.
        out, keep = self._eval_fast_path(x, residual, (conv1, bn1, conv2, bn2))
        if out is not None:
            return out
        if self._residual_apart(x, residual, self._stages_args(conv1, conv2)):
            # The unit's op has one activation for both stages: here the stages run apart.
            h = self._stage(x, conv1, bn1, None, "conv1")
            return self._add_apart(self._stage(h, conv2, bn2, None, "conv2", "identity"),
                                   residual)
        scale1, shift1, scale2, shift2 = self.folded()
        temporal_first, stride, padding = self._unit_args(conv1, conv2)
        out = call_conv2plus1d_bn_act(
            self._direct_plan(), x, conv1.weight, scale1, shift1, conv2.weight, scale2, shift2,
            stride, padding, self.activation, temporal_first, residual)
        if keep is not None and x.shape[0] > 0:
            self._keep_prepared(keep, prepare_conv2plus1d_bn_act(
                x, conv1.weight, scale1, shift1, conv2.weight, scale2, shift2, stride, padding,
                self.activation, temporal_first, residual))
        return out

    def _prepared_guard(self, x: Tensor, residual: Optional[Tensor], modules: tuple,
                        sources: Tuple[Optional[Tensor], ...], key: Optional[tuple] = None):
        """What a prepared call depends on (as Conv3dBNAct._prepared_guard): the input
        signature, the backend choice, every parameter both folds and packed weights come from
        (or ``key``, when a stamp says they are unchanged), the unit's stride, padding,
        activation and order, and both BatchNorms' eps. None when a parameter has no version
        counter (inference tensors)."""
        conv1, _, conv2, _ = modules
        if key is None:
            key, versioned = _sources_key(sources)
            if not versioned:
                return None
        return (tensor_signature(x), tensor_signature(residual), backends.forced_backend(),
                tuple(backends.PRIORITY), key, self._unit_args(conv1, conv2), self.activation
                ) + self._fold_constants()

    def _stage(self, x: Tensor, conv: nn.Conv3d, bn: Optional[nn.BatchNorm3d],
               residual: Optional[Tensor], role: str, activation: Optional[str] = None) -> Tensor:
        """One conv -> BN -> act stage of the unit on its own: batch statistics on the fused
        training path, else the fused op with the fold (no BatchNorm, or a residual the unit's
        op cannot add).
        ``activation``: the unit's unless given."""
        args = self._conv_args(conv, role)
        activation = self.activation if activation is None else activation
        if self._batch_stats(bn):
            return self._conv_bn_train(x, conv, bn, residual, args, activation)
        scale, shift = fold_conv_bn(conv, bn)
        with self._backend_context():
            return ops.conv3d_bn_act(x, conv.weight, scale, shift, *args, conv.groups,
                                     activation, residual)

    def _stages_args(self, conv1: nn.Conv3d, conv2: nn.Conv3d) -> tuple:
        return ((conv1, self._conv_args(conv1, "conv1")), (conv2, self._conv_args(conv2, "conv2")))

    def extra_repr(self) -> str:
        s = (f"activation={self.activation!r}, temporal_first={self.temporal_first}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s
