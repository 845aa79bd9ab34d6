"""Output sizes of convolutions and pooling, with PyTorch's floor semantics."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

__all__ = ["conv_output_shape"]

IntOrTuple = Union[int, Sequence[int]]


def _expand(value: IntOrTuple, n: int, what: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{what} must be an int or {n} ints to match the input, got {value!r}")
    return value


def conv_output_shape(
    input_size: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
) -> Tuple[int, ...]:
    """Spatial/temporal output size of a convolution (or pooling) over ``input_size``.

    ``out = floor((in + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` per dimension, as
    ``nn.Conv3d`` computes it (``ceil_mode=True`` gives the pooling variant, where a window may
    not start in the right padding). ``input_size`` is the (T, H, W) part only, or any number of
    dimensions with matching tuples.

    >>> conv_output_shape((16, 112, 112), (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
    (16, 56, 56)

    Raises ``ValueError`` when the (dilated) kernel does not fit in the padded input.
    """
    input_size = tuple(input_size)
    n = len(input_size)
    if n == 0:
        raise ValueError("input_size must have at least one dimension")
    k = _expand(kernel_size, n, "kernel_size")
    s = _expand(stride, n, "stride")
    p = _expand(padding, n, "padding")
    d = _expand(dilation, n, "dilation")
    for name, values, low in (("kernel_size", k, 1), ("stride", s, 1), ("dilation", d, 1), ("padding", p, 0)):
        if any(v < low for v in values):
            raise ValueError(f"{name} must be >= {low}, got {values}")
    out = []
    for i in range(n):
        span = d[i] * (k[i] - 1) + 1  # extent of the dilated kernel
        room = input_size[i] + 2 * p[i] - span
        if room < 0:
            raise ValueError(
                f"dimension {i}: input of size {input_size[i]} (padded to "
                f"{input_size[i] + 2 * p[i]}) is smaller than the dilated kernel ({span})"
            )
        if ceil_mode:
            size = -(-room // s[i]) + 1
            # PyTorch: the last pooling window must start inside the input or left padding.
            if (size - 1) * s[i] >= input_size[i] + p[i]:
                size -= 1
        else:
            size = room // s[i] + 1
        out.append(size)
    return tuple(out)
