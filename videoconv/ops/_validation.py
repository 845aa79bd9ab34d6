"""Input checks shared by videoconv's operators (real kernels and fake kernels alike).

Every check raises before anything runs, with a message that names the operator and the
problem, in the style of ``nn.Conv3d``: tensor problems (rank, channels, dtype, device, sizes)
raise ``RuntimeError``; bad argument values (stride, padding, dilation, groups, activation)
raise ``ValueError``; a non-tensor where a tensor is expected raises ``TypeError``.

The fake kernels call the same checks, so ``torch.compile``/``torch.export`` report the same
problems at trace time. The checks only compare sizes (which may be symbolic there), never data.
"""

from __future__ import annotations

import operator
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_ALIASES",
    "canonical_activation",
    "as_triple",
    "check_conv3d_bn_act",
    "check_conv2plus1d_bn_act",
    "check_conv3d_bn_stats",
    "check_channel_mean",
    "check_scale_act",
]

#: Activations the operators implement.
ACTIVATIONS = ("relu", "silu", "identity")
#: Other accepted spellings -> canonical name.
ACTIVATION_ALIASES = {"swish": "silu"}

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _size(shape) -> str:
    return str(list(shape))


def canonical_activation(activation, op: str = "videoconv") -> str:
    """``activation`` as one of :data:`ACTIVATIONS` (``"swish"`` -> ``"silu"``), else ValueError."""
    if isinstance(activation, str):
        name = ACTIVATION_ALIASES.get(activation.lower(), activation.lower())
        if name in ACTIVATIONS:
            return name
    raise ValueError(
        f"{op}: unknown activation {activation!r}; expected one of "
        "'relu', 'silu' (alias 'swish'), 'identity'"
    )


def as_triple(value, name: str, op: str = "videoconv") -> Tuple[int, int, int]:
    """An int or a sequence of 3 ints as a tuple of 3 ints (values are checked later)."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int or a sequence of 3 ints, got {value!r}")
    value = _as_int(value)
    if isinstance(value, int):
        return (value, value, value)
    if isinstance(value, str):
        raise TypeError(
            f"{op}: {name} must be an int or a sequence of 3 ints, got the string {value!r} "
            "(padding modes such as 'same' are not supported; give the padding explicitly)"
        )
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(
            f"{op}: {name} must be an int or a sequence of 3 ints, got {type(value).__name__}"
        ) from None
    items = tuple(_as_int(v) for v in items)
    if len(items) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{op}: {name} must be an int or a sequence of 3 ints, got {value!r}")
    return items  # type: ignore[return-value]


def _as_int(value):
    # Integer-likes (numpy integers: pytorchvideo builds its convs' strides from numpy arrays,
    # and nn.Conv3d accepts them) become ints; anything else is returned for the caller to judge.
    if isinstance(value, (int, bool, float, str)) or not hasattr(value, "__index__"):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def _check_triple(op: str, name: str, value: Sequence[int], minimum: int) -> Tuple[int, int, int]:
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be a sequence of 3 ints, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"{op}: {name} must have 3 values (D, H, W), got {list(items)}")
    if min(items) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}: {name} must be {what}, got {list(items)}")
    return items  # type: ignore[return-value]


def _check_tensors(op: str, tensors: Dict[str, Optional[torch.Tensor]]) -> None:
    """Types, floating dtype, one dtype and one device for every (non-None) tensor."""
    # Runs on every call: plain loops (no generators) keep it cheap for small layers.
    present = {}
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        present[name] = t
    first_name, first = next(iter(present.items()))
    if first.dtype not in _FLOAT_DTYPES:
        raise RuntimeError(
            f"{op}: expected a floating-point {first_name} (float16, bfloat16, float32 or "
            f"float64), got {_dt(first.dtype)}"
        )
    dtype, device = first.dtype, first.device
    same_dtype = same_device = True
    for t in present.values():
        same_dtype = same_dtype and t.dtype == dtype
        same_device = same_device and t.device == device
    if not same_dtype:
        got = ", ".join(f"{name} {_dt(t.dtype)}" for name, t in present.items())
        raise RuntimeError(f"{op}: expected all tensors to have the same dtype, got {got}")
    if not same_device:
        got = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise RuntimeError(f"{op}: expected all tensors to be on the same device, got {got}")


def _check_input(op: str, input: torch.Tensor) -> None:
    if input.dim() != 5:
        hint = " (unbatched inputs are not supported: add a batch dimension)" if input.dim() == 4 else ""
        raise RuntimeError(
            f"{op}: expected a 5-D input (N, C, D, H, W), got a {input.dim()}-D input of size "
            f"{_size(input.shape)}{hint}"
        )
    if 0 in input.shape[1:]:
        raise RuntimeError(
            f"{op}: expected the input's non-batch dimensions to be non-zero, got input of size "
            f"{_size(input.shape)}"
        )


def _check_weight(op: str, name: str, weight: torch.Tensor, layout: str) -> None:
    if weight.dim() != 5:
        raise RuntimeError(
            f"{op}: expected a 5-D {name} {layout}, got a {weight.dim()}-D {name} of size "
            f"{_size(weight.shape)}"
        )
    if 0 in weight.shape:
        raise RuntimeError(f"{op}: {name} must not be empty, got size {_size(weight.shape)}")


def _conv_output_shape(
    op: str,
    input_shape: Sequence[int],
    weight_name: str,
    weight_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    input_name: str = "input",
) -> List[int]:
    n, c_in = input_shape[0], input_shape[1]
    c_out = weight_shape[0]
    if c_out % groups != 0:
        raise RuntimeError(
            f"{op}: out_channels ({weight_name}.shape[0] = {c_out}) must be divisible by "
            f"groups={groups}"
        )
    if c_in != weight_shape[1] * groups:
        raise RuntimeError(
            f"{op}: Given groups={groups}, {weight_name} of size {_size(weight_shape)}, expected "
            f"{input_name}{_size(input_shape)} to have {weight_shape[1] * groups} channels, but "
            f"got {c_in} channels instead"
        )
    padded = [input_shape[2 + i] + 2 * padding[i] for i in range(3)]
    kernel = [dilation[i] * (weight_shape[2 + i] - 1) + 1 for i in range(3)]
    if any(padded[i] < kernel[i] for i in range(3)):
        raise RuntimeError(
            f"{op}: Calculated padded {input_name} size per channel: "
            f"({' x '.join(map(str, padded))}). Kernel size (with dilation "
            f"{list(dilation)}): ({' x '.join(map(str, kernel))}). Kernel size can't be greater "
            f"than actual input size"
        )
    spatial = [(padded[i] - kernel[i]) // stride[i] + 1 for i in range(3)]
    return [n, c_out] + spatial


def _check_channel_vector(op: str, name: str, v: torch.Tensor, channels: int, what: str) -> None:
    if v.dim() != 1 or v.shape[0] != channels:
        raise RuntimeError(
            f"{op}: {name} must be a 1-D tensor with one value per {what} ({channels}), got "
            f"size {_size(v.shape)}"
        )


def _check_residual(op: str, residual: Optional[torch.Tensor], out_shape: Sequence[int]) -> None:
    if residual is not None and list(residual.shape) != list(out_shape):
        raise RuntimeError(
            f"{op}: residual must have the size of the output {_size(out_shape)}, got "
            f"{_size(residual.shape)}"
        )


def check_conv3d_bn_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    activation: str,
    residual: Optional[torch.Tensor],
    op: str = "videoconv.conv3d_bn_act",
) -> List[int]:
    """Check the arguments of ``conv3d_bn_act``; return the output size."""
    _check_tensors(
        op, {"input": input, "weight": weight, "scale": scale, "shift": shift, "residual": residual}
    )
    _check_input(op, input)
    _check_weight(op, "weight", weight, "(C_out, C_in / groups, kT, kH, kW)")
    stride = _check_triple(op, "stride", stride, 1)
    padding = _check_triple(op, "padding", padding, 0)
    dilation = _check_triple(op, "dilation", dilation, 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive integer, got {groups!r}")
    canonical_activation(activation, op)
    out_shape = _conv_output_shape(
        op, input.shape, "weight", weight.shape, stride, padding, dilation, groups
    )
    _check_channel_vector(op, "scale", scale, weight.shape[0], "output channel")
    _check_channel_vector(op, "shift", shift, weight.shape[0], "output channel")
    _check_residual(op, residual, out_shape)
    return out_shape


def check_conv3d_bn_stats(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    op: str = "videoconv.conv3d_bn_stats",
) -> List[int]:
    """Check the arguments of ``conv3d_bn_stats``; return the output size."""
    _check_tensors(op, {"input": input, "weight": weight})
    _check_input(op, input)
    _check_weight(op, "weight", weight, "(C_out, C_in / groups, kT, kH, kW)")
    stride = _check_triple(op, "stride", stride, 1)
    padding = _check_triple(op, "padding", padding, 0)
    dilation = _check_triple(op, "dilation", dilation, 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive integer, got {groups!r}")
    return _conv_output_shape(
        op, input.shape, "weight", weight.shape, stride, padding, dilation, groups
    )


def check_conv2plus1d_bn_act(
    input: torch.Tensor,
    w1: torch.Tensor,
    scale1: torch.Tensor,
    shift1: torch.Tensor,
    w2: torch.Tensor,
    scale2: torch.Tensor,
    shift2: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    activation: str,
    temporal_first: bool,
    residual: Optional[torch.Tensor],
    op: str = "videoconv.conv2plus1d_bn_act",
) -> Tuple[List[int], List[int]]:
    """Check the arguments of ``conv2plus1d_bn_act``; return (intermediate size, output size)."""
    from ..backends.reference import split_2plus1d

    _check_tensors(
        op,
        {"input": input, "w1": w1, "scale1": scale1, "shift1": shift1, "w2": w2,
         "scale2": scale2, "shift2": shift2, "residual": residual},
    )
    _check_input(op, input)
    spatial_form, temporal_form = "(C_mid, C_in, 1, kH, kW)", "(C_mid, C_in, kT, 1, 1)"
    first_form, second_form = (
        (temporal_form, spatial_form.replace("C_mid, C_in", "C_out, C_mid"))
        if temporal_first
        else (spatial_form, temporal_form.replace("C_mid, C_in", "C_out, C_mid"))
    )
    _check_weight(op, "w1", w1, first_form)
    _check_weight(op, "w2", w2, second_form)
    order = "temporal_first=True" if temporal_first else "temporal_first=False (spatial first)"
    spatial_w, temporal_w = (w2, w1) if temporal_first else (w1, w2)
    if spatial_w.shape[2] != 1:
        name = "w2" if temporal_first else "w1"
        raise RuntimeError(
            f"{op}: with {order}, {name} must be a spatial kernel "
            f"{second_form if temporal_first else first_form}, got size {_size(spatial_w.shape)}"
        )
    if temporal_w.shape[3] != 1 or temporal_w.shape[4] != 1:
        name = "w1" if temporal_first else "w2"
        raise RuntimeError(
            f"{op}: with {order}, {name} must be a temporal kernel "
            f"{first_form if temporal_first else second_form}, got size {_size(temporal_w.shape)}"
        )
    stride = _check_triple(op, "stride", stride, 1)
    padding = _check_triple(op, "padding", padding, 0)
    canonical_activation(activation, op)
    s1, p1, s2, p2 = split_2plus1d(stride, padding, bool(temporal_first))
    ones = (1, 1, 1)
    mid_shape = _conv_output_shape(op, input.shape, "w1", w1.shape, s1, p1, ones, 1)
    _check_channel_vector(op, "scale1", scale1, w1.shape[0], "intermediate channel")
    _check_channel_vector(op, "shift1", shift1, w1.shape[0], "intermediate channel")
    out_shape = _conv_output_shape(
        op, mid_shape, "w2", w2.shape, s2, p2, ones, 1,
        input_name="intermediate (output of w1)",
    )
    _check_channel_vector(op, "scale2", scale2, w2.shape[0], "output channel")
    _check_channel_vector(op, "shift2", shift2, w2.shape[0], "output channel")
    _check_residual(op, residual, out_shape)
    return mid_shape, out_shape


def check_channel_mean(input: torch.Tensor) -> None:
    """Checks of ``videoconv.channel_mean``: a 5-D floating input with non-empty C, D, H, W."""
    op = "videoconv.channel_mean"
    _check_tensors(op, {"input": input})
    _check_input(op, input)


def check_scale_act(input: torch.Tensor, scale: torch.Tensor, activation: str) -> None:
    """Checks of ``videoconv.scale_act``: the input as for the convolutions, ``scale`` of size
    (N, C, 1, 1, 1) in the input's dtype and on its device, a known activation."""
    op = "videoconv.scale_act"
    _check_tensors(op, {"input": input, "scale": scale})
    _check_input(op, input)
    n, c = input.shape[0], input.shape[1]
    if scale.dim() != 5 or tuple(scale.shape) != (n, c, 1, 1, 1):
        raise RuntimeError(
            f"{op}: expected scale of size (N, C, 1, 1, 1) = {_size([n, c, 1, 1, 1])} for input "
            f"of size {_size(input.shape)}, got scale of size {_size(scale.shape)}"
        )
    canonical_activation(activation, op)
