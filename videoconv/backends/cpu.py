"""The ``cpu`` backend: oneDNN's fused pointwise convolution with a prepacked, BN-folded weight.

``conv3d_bn_act`` runs as one ``torch.ops.mkldnn._convolution_pointwise`` call: the per-channel
``scale`` is folded into the weight (in float64, rounded once to the input dtype), ``shift``
becomes the convolution bias, and the activation is a oneDNN post-op ("relu", "swish", "none").
A residual uses the binary "add" post-op (``_convolution_pointwise.binary``), after which oneDNN
accepts only relu or no activation; residual + silu therefore runs the conv + bias + residual in
oneDNN and the silu in ATen (float32 for bfloat16, rounded once).

The folded weight is reordered into oneDNN's blocked layout once and cached (see
:class:`_PackCache`): repacking on every call would cost about as much as the gain. Tiny 1x1x1
convolutions (Squeeze-and-Excitation on a pooled input, heads; :func:`_is_small_gemm`) skip
oneDNN, whose per-call cost (~30 µs) is most of their time: they run through the 1x1x1 kernel
below where it is available, else as one small ATen GEMM on the cached folded matrix, with the
same arithmetic.

``conv3d_bn_stats`` (training-mode BatchNorm, see videoconv/ops/conv3d_bn_stats.py) runs the
same oneDNN convolution with an identity epilogue (the BN's scale/shift are not known before the
statistics are; the weight is passed as it is, not prepacked: it changes every training step),
then one pass over the output that reduces it per channel:
``videoconv::_channel_stats_cpu`` (csrc/cpu/conv3d_bn_stats.cpp). That separate pass *is* the
epilogue on the CPU: oneDNN's post-ops are element-wise (eltwise, binary, sum), it has no
reduction post-op, and ``_convolution_pointwise`` exposes no hook into its JIT kernels' output
tiles. The pass reads the output once (eager BatchNorm reads it twice for mean and variance before
normalising), in fixed-size blocks that stay in cache while each is centred (see the C++ file).

Convolutions with a (kt, 3, 3) kernel, stride 1 and no groups (the spatial convs of R(2+1)D, the
3x3x3 convs of R3D/I3D) run instead through Winograd's F(4x4, 3x3) in the spatial dimensions
(bfloat16: F(7x7, 3x3) where it does fewer products, :func:`_winograd_tile`):
``videoconv::_conv3d_winograd_cpu`` (csrc/cpu/conv3d_winograd.cpp), with the folded weight
transformed once per weight (:func:`_winograd_weight`, float64, cached like a packed weight) and
the shift, residual and activation applied in the kernel's output transform. It does 4x fewer
multiplies; oneDNN's direct kernels already run near the FMA peak there, so this is the only
way left to be faster. The products are float32 (also for bfloat16 tensors; see the C++ file
for why). Which layers qualify is :func:`_use_winograd`; ``VIDEOCONV_CPU_WINOGRAD=0`` (read at
import) turns it off, e.g. to compare with oneDNN or to get oneDNN's rounding exactly;
``VIDEOCONV_CPU_WINOGRAD_7X7=0`` keeps bfloat16 on F(4x4).

1x1x1 convolutions (X3D's and CSN's expansions and projections, the ResNet shortcuts) run, where
measured faster, through ``videoconv::_conv3d_pointwise_cpu`` (csrc/cpu/conv3d_pointwise.cpp):
one GEMM over the output positions with the epilogue on its accumulators, without oneDNN's
~30-60 µs of per-call set-up, which is a third of such a layer's time inside X3D-S. Two variants
(:func:`_pointwise_variant`): on CPUs with AVX-512 and AVX512-BF16, the same AVX512-BF16 /
AVX-512 instructions as oneDNN's kernel; on other x86-64 CPUs with AVX2 and FMA, float32 FMAs for
both dtypes (bfloat16 tensors read and written as bfloat16, without the widened oneDNN route's
float32 copies of the input and output; route "pointwise-f32", a float32 packed weight holding the
weight rounded to bfloat16). The weight is packed once (:func:`_pointwise_weight`, cached). Which
layers qualify is :func:`_use_pointwise`, with limits measured per variant;
``VIDEOCONV_CPU_POINTWISE=0`` (read at import) turns it off.

Temporal convolutions, a (kt, 1, 1) kernel with spatial stride 1 (R(2+1)D's second conv,
SlowFast's temporal bottlenecks), run on oneDNN as the 2-D (kt, 1) convolution they are over a
(D, H*W) image (:func:`_use_temporal_2d`): a channels_last_3d (N, C, D, H, W) tensor *is* a
channels_last (N, C, D, H*W) one, so the input, the residual and the output are views, and the
arithmetic is the same (one convolution, float32 accumulation, the same epilogue; on the shapes
measured the results were bit-identical). oneDNN blocks one long row a little better than H x W
tiles: ``benchmarks/temporal_2d_ab.py`` on the project's AMD EPYC Zen 5 gave 1.07x on
R(2+1)D-18's 144 -> 64 convs at 16x56x56 in bfloat16, 0.98-1.09x on its other temporal convs,
and 1.03x on the whole model in float32 (level in bfloat16). Spatial (1, kh, kw) convs viewed as
2-D over N*D images gained nothing there (0.84-1.03x, an ad-hoc measurement), so they stay 3-D.

float32 and bfloat16 only (float16 convolutions fail on CPUs without AVX512-FP16/AMX-FP16; float64
is the reference backend's job). The output has the input's memory format, as in every backend.

bfloat16 on CPUs where oneDNN has no bfloat16 convolution (it needs AVX512-BW/VL/DQ or
AVX-NE-CONVERT; e.g. AMD Zen 3 and older, most AVX2-only CPUs): ``_convolution_pointwise``
and ``_reorder_convolution_weight`` refuse bfloat16 there, and eager's own bfloat16 convolution
falls back to ATen's slow reference loops (10-20x slower than float32 on the same CPU). The
oneDNN route then computes in float32 (:func:`onednn_bf16_supported`): the folded weight is rounded once
to bfloat16, as the bfloat16 path rounds it, and held as float32; the input and residual are
widened exactly; the epilogue runs on float32 accumulators and the result is rounded once to
bfloat16. That is the bfloat16 path's arithmetic without its intermediate rounding of the
accumulator, so it is at least as accurate. The Winograd kernel computes in float32 anyway, so
there it gets float32's size limits.
"""

from __future__ import annotations

import math
import os
import threading
import types
import warnings
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import Backend, output_memory_format

__all__ = ["CpuBackend", "RepackingWarning", "pack_cache"]

_ONEDNN_ACT = {"relu": "relu", "silu": "swish", "identity": "none"}


def _mkldnn_ops_reason() -> Optional[str]:
    try:
        mk = torch.ops.mkldnn
        mk._convolution_pointwise.default
        mk._convolution_pointwise.binary
        mk._reorder_convolution_weight.default
    except (AttributeError, RuntimeError):
        return ("torch.ops.mkldnn._convolution_pointwise / _reorder_convolution_weight are not "
                "available in this torch build")
    return None


# Asked on every call; the CPU does not change within a process.
_onednn_bf16_native: Optional[bool] = None


def onednn_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 convolutions on this CPU (``mkldnn_bf16_device_check``:
    AVX512-BW/VL/DQ or AVX-NE-CONVERT). Where it does not, the oneDNN route computes bfloat16
    convolutions in float32 (see the module docstring)."""
    global _onednn_bf16_native
    if _onednn_bf16_native is None:
        try:
            _onednn_bf16_native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _onednn_bf16_native = False
    return _onednn_bf16_native


def _widened(dtype: torch.dtype) -> bool:
    """Whether oneDNN convolutions of ``dtype`` run in float32 here (bfloat16 without native
    oneDNN support)."""
    return dtype == torch.bfloat16 and not onednn_bf16_supported()


def _onednn_unsafe(key) -> bool:
    """Whether oneDNN's convolution through ``_convolution_pointwise`` may give wrong results
    for ``key``, with a prepacked weight (the eval routes) or, for some, with the plain weight
    too (the training path's ``conv3d_bn_stats``). Two kinds, found by grids of small
    convolutions against float64 on this project's Zen 5 (torch 2.13.0, oneDNN 3.12;
    tests/test_backend_cpu.py keeps a sample of each, ``test_onednn_degenerate_shapes`` and
    ``test_onednn_degenerate_shapes_in_training``):

    * bfloat16 with one input channel per group (a single-channel stem, a grouped or depthwise
      conv) on a single input frame (D == 1): ``_convolution_pointwise`` with a weight from
      ``_reorder_convolution_weight`` (``brg_conv_fwd:avx512_core_bf16``, forward_inference)
      returned garbage, off by the largest output or more, up to inf and NaN, different from
      run to run (uninitialised memory). E.g. one grayscale frame through a (3, 7, 7) stem, or
      X3D's depthwise convs on one frame. ``torch.compile`` with freezing runs the same
      prepacked call and gets the same wrong answer (0.77 off on a 1 -> 32 (3, 3, 3) conv of
      one frame); eager bfloat16 ``F.conv3d`` is wrong on some of them too, and so is the
      plain-weight call (depthwise with two outputs per group, channels_last_3d);
    * a single output column from a strided W (W_out == 1, stride_w > 1), float32 too (NaN
      with C_in == 1): pytorch/pytorch#169688 reports this class on AMX CPUs.

    They take the "aten-f32" route: ATen's ``F.conv3d`` in float32 on the folded weight (rounded
    to the dtype first, as on every route), the epilogue in float32 and one rounding, which was
    right on every failing case of the grids (eager float32 convolution does not use
    ``_convolution_pointwise``); in training, the same float32 convolution rounded to the dtype.
    These shapes are degenerate: nothing is lost by leaving oneDNN's fast kernels there."""
    (dtype, _, _, wshape), stride, padding, dilation, _, input_size = key
    w_out = (input_size[4] + 2 * padding[2] - dilation[2] * (wshape[4] - 1) - 1) // stride[2] + 1
    return ((dtype == torch.bfloat16 and wshape[1] == 1 and input_size[2] == 1)
            or (w_out == 1 and stride[2] > 1))


def _weight_grad_unsafe(dtype: torch.dtype, input_size, weight_shape, dilation) -> bool:
    """Whether ATen's bfloat16 CPU convolution backward may return a wrong weight gradient for
    this convolution: when the (dilated) kernel is longer than the input in some dimension, e.g.
    a (3, 3, 3) conv on 2 frames (R3D-18's and R(2+1)D-18's last stage at 16 frames), or a 3x3
    conv on a 1-pixel-wide map. oneDNN's ``jit_bf16:avx512_core_bf16`` backward-weights kernel
    then returned garbage (off by the whole gradient or more, up to inf and NaN, different from
    run to run), in both layouts, dense, grouped and depthwise; some such calls corrupted the
    heap (``double free or corruption``, a segfault) or never returned. Found with grids against
    float64 on the project's AMD EPYC Zen 4 (torch 2.13.0, oneDNN 3.12): 162 wrong weight
    gradients among 1206 random convolutions in this class and 0 among 790 outside it; in a
    small exhaustive grid, 942 among its 2758 in the class (channels_last_3d, C_in > 1) and 0
    among 1020 outside it. The input gradient was right on all of them, and float32 was right
    everywhere. Eager ``nn.Conv3d`` training in bfloat16 gets the same wrong gradients (the same
    ATen call). Such weight gradients are computed in float32 instead
    (:func:`input_weight_grad_unless_aten_is_wrong`, on the cpu and reference backends);
    ``tests/test_backend_cpu.py`` keeps a sample,
    ``test_bf16_weight_gradient_with_kernel_longer_than_input``."""
    return dtype == torch.bfloat16 and any(
        d * (k - 1) + 1 > n for n, k, d in zip(input_size[2:], weight_shape[2:], dilation))


def input_weight_grad_unless_aten_is_wrong(*, grad_z, input, weight, stride, padding, dilation,
                                           groups, output_mask):
    """(grad_input, grad_weight) of a CPU convolution, or ``None`` to use ATen's gradient
    convolutions (oneDNN): everywhere but where ATen's bfloat16 weight gradient is wrong
    (:func:`_weight_grad_unsafe`). There the weight gradient is computed in float32 on the exactly
    widened input and output gradient, rounded once (at least as accurate). The weight itself
    only gives the shape there, so it is not widened: a float32 copy of a 512 x 512 x 3 x 3 x 3
    weight is 28 MB per call. The input gradient stays on ATen's bfloat16 path: it was right on
    every case of the grids, and 3618 input-gradient-only calls of the failing class (three
    passes over the random grid's) neither crashed nor hung, where weight-gradient-only calls
    hung in the second pass. The cpu backend's gradient, and the reference backend's on CPU
    (the oracle must not be the one wrong: it calls the same ATen function)."""
    need_x, need_w = output_mask
    if not (need_w and _weight_grad_unsafe(input.dtype, input.shape, weight.shape, dilation)):
        return None
    args = (list(stride), list(padding), list(dilation), False, [0, 0, 0], groups)
    grad_x = None
    if need_x:
        grad_x = torch.ops.aten.convolution_backward(
            grad_z, input, weight, None, *args, [True, False, False])[0]
    shape_only = grad_z.new_empty(1, dtype=torch.float32).expand(weight.shape)
    grad_w = torch.ops.aten.convolution_backward(
        grad_z.float(), input.float(), shape_only, None, *args, [False, True, False])[1]
    return grad_x, grad_w.to(weight.dtype)


class _Entry:
    __slots__ = ("key", "version", "data_ptr", "storage", "scale", "shift", "packed", "bias",
                 "seen")

    def __init__(self, key, version, weight, scale, shift, packed, bias):
        self.key, self.version = key, version
        # The weight's storage, and a reference that keeps it alive so that its address cannot
        # be reused: ``module.to(torch.bfloat16).float()`` gives the same Parameter (same
        # version) a new storage through ``.data``, which can land at the old one's address.
        self.data_ptr, self.storage = weight.data_ptr(), weight.untyped_storage()
        self.scale, self.shift = scale, shift
        self.packed, self.bias = packed, bias
        self.seen = None


def _version(t: torch.Tensor) -> Optional[int]:
    """``t._version``, None for an inference tensor (which has none). Asked first rather than
    caught: reading an inference tensor's version raises, and the error is built with a C++
    backtrace, 8-18 µs a time. Under ``torch.compile`` with ``inference_mode`` every call's
    scale and shift are such tensors (computed by the compiled graph): two reads per call were
    ~4 ms of X3D-S's ~40 ms compiled bfloat16 forward."""
    return None if t.is_inference() else t._version


def _seen(scale: torch.Tensor, shift: torch.Tensor):
    # The scale/shift objects last validated, with their versions: the fused modules pass the
    # same cached tensors on every call, and then the value comparison can be skipped (it is
    # a measurable part of a small layer's time).
    return (scale, _version(scale), shift, _version(shift))


def _same_tensors(seen, scale: torch.Tensor, shift: torch.Tensor) -> bool:
    if seen is None or seen[0] is not scale or seen[2] is not shift:
        return False
    return seen[1] is not None and seen[1] == _version(scale) and seen[3] is not None and (
        seen[3] == _version(shift))


class _PackCache:
    """Packed (folded, oneDNN-reordered) weights and folded biases, per weight tensor (for a
    small-GEMM convolution, :func:`_is_small_gemm`, the folded float32 matrix and bias instead;
    for a Winograd one, :func:`_use_winograd`, the transformed weight and a float32 shift).

    Keyed on the *identity* of the weight tensor (``id`` plus a weak reference, so an entry dies
    with its weight and a recycled ``id`` never matches), and validated on every lookup against

    * the weight's ``_version`` (bumped by any in-place change: optimizer step, ``copy_``, ...)
      and its storage's address (``.data =`` and ``Module.to()`` swap the storage and keep the
      version; the entry keeps the old storage alive, so its address is not reused meanwhile:
      until the weight's next lookup replaces the entry, or the weight dies),
    * the dtype, device, shape of the weight, the conv parameters and the input size/layout,
    * the *values* of ``scale`` and ``shift`` (kept as copies; ``C_out`` elements, so comparing
      them is cheap and works even when they are recomputed as fresh tensors on every call).

    Any mismatch re-folds and re-packs, replacing the entry (one entry per weight tensor).
    Weights that are inference tensors (no version counter) are never cached.
    """

    def __init__(self):
        self._entries: Dict[int, Tuple[weakref.ref, _Entry]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _drop(self, wid: int, ref: weakref.ref) -> None:
        with self._lock:
            current = self._entries.get(wid)
            if current is not None and current[0] is ref:
                del self._entries[wid]

    def get(self, weight, scale, shift, key) -> Tuple[torch.Tensor, torch.Tensor]:
        version = _version(weight)
        if version is None:  # inference tensor: no version counter, so no safe caching
            self.misses += 1
            _warn_repacking_inference_weight()
            return _pack(weight, scale, shift, key)
        wid = id(weight)
        with self._lock:
            found = self._entries.get(wid)
        if found is not None:
            ref, entry = found
            if (ref() is weight and entry.version == version and entry.key == key
                    and entry.data_ptr == weight.data_ptr()
                    and (_same_tensors(entry.seen, scale, shift)
                         or (torch.equal(entry.scale, scale) and torch.equal(entry.shift, shift)))):
                entry.seen = _seen(scale, shift)
                self.hits += 1
                return entry.packed, entry.bias
        self.misses += 1
        packed, bias = _pack(weight, scale, shift, key)
        entry = _Entry(key, version, weight, scale.detach().clone(), shift.detach().clone(), packed,
                       bias)
        entry.seen = _seen(scale, shift)
        ref = weakref.ref(weight, lambda r, wid=wid: self._drop(wid, r))
        with self._lock:
            self._entries[wid] = (ref, entry)
        return packed, bias


class RepackingWarning(UserWarning):
    """A weight the cpu backend must pack again on every call (see :class:`_PackCache`)."""


def _warn_repacking_inference_weight() -> None:
    # One warning per process under Python's default filter (always this line). Repacking is
    # correct but slow: 3.5x on the x3d_s bfloat16 forward (84 against 24 ms, 2-core Zen 5).
    warnings.warn(
        "videoconv cpu backend: a convolution weight is an inference tensor (created under "
        "torch.inference_mode), which has no version counter, so its folded and packed form "
        "cannot be cached safely and is rebuilt on every call (several times slower). Create the "
        "model outside inference_mode, or fuse it with videoconv.fuse(model) (inplace=False), "
        "which copies it into ordinary tensors; then run it under inference_mode.",
        RepackingWarning, stacklevel=3)


#: The process-wide cache of packed weights (``len(pack_cache)``, ``pack_cache.clear()``).
pack_cache = _PackCache()


#: Limits of the small-GEMM path (see _is_small_gemm): rows (N * D * H * W) and multiply-adds.
#: Past ~1e5 MACs oneDNN's faster inner kernel (and, in bfloat16, its half-size weight) wins back
#: its per-call cost: a 432 -> 2048 head on one row takes 113 µs there against 146 µs as a GEMM.
_SMALL_GEMM_ROWS = 64
_SMALL_GEMM_MACS = 1 << 17


def _is_small_gemm(key) -> bool:
    """A 1x1x1, stride-1, ungrouped convolution over at most ``_SMALL_GEMM_ROWS`` positions and
    ``_SMALL_GEMM_MACS`` multiply-adds.

    These are Squeeze-and-Excitation's convolutions on a globally pooled (N, C, 1, 1, 1) input
    and 1x1x1 heads: X3D has two per block. oneDNN's convolution primitive costs ~30 µs per call
    however small the problem, while the same product as ATen's ``linear`` (one small GEMM) takes
    a few µs; the arithmetic is the same (folded weight rounded once to the dtype, float32
    accumulation, bias and activation in float32, one rounding of the result)."""
    (_, _, _, wshape), stride, padding, _, groups, input_size = key
    rows = input_size[0] * input_size[2] * input_size[3] * input_size[4]
    return (tuple(wshape[2:]) == (1, 1, 1) and tuple(stride) == (1, 1, 1)
            and tuple(padding) == (0, 0, 0) and groups == 1 and rows <= _SMALL_GEMM_ROWS
            and rows * wshape[0] * wshape[1] <= _SMALL_GEMM_MACS)


#: Winograd F(4x4, 3x3) for eligible convolutions (see the module docstring); read at import.
WINOGRAD = os.environ.get("VIDEOCONV_CPU_WINOGRAD", "1") != "0"

#: Limits of the Winograd path (:func:`_use_winograd`), from timings on this project's 2-core
#: AMD EPYC (Zen 4, AVX-512 BF16, no AMX) against oneDNN's direct convolution, same process:
#:
#: * float32: faster on every r3d_18 / r2plus1d_18 layer shape tried, 1.5x (7x7 maps) to 2.9x;
#: * bfloat16: 1.35-1.46x with >= 392 output tiles (r2plus1d_18 / r3d_18 layer1 and layer2),
#:   0.86x on r3d_18's 256-channel 4x14x14 layer (64 tiles: too little work per byte of the
#:   28 MB transformed weight, which then comes from DRAM) and 0.78-0.80x on the 7x7 layers.
#:   oneDNN's bfloat16 kernels run at twice the float32 rate, so the margin is small: at least
#:   _WINOGRAD_MIN_TILES_BF16 tiles and 64 channels each way (32 -> 48 channels: 0.8-1.0x).
#: * the transformed weight is float32 and 36/9 the size of the kernel's spatial taps, i.e. 4x
#:   (float32) or 8x (bfloat16) the weight: at most _WINOGRAD_MAX_WEIGHT_BYTES per layer, which
#:   leaves r2plus1d_18's layer4 (85 MB per conv) to oneDNN.
_WINOGRAD_MIN_TILES_BF16 = 128
_WINOGRAD_MIN_CHANNELS_BF16 = 64
_WINOGRAD_MAX_WEIGHT_BYTES = 32 << 20
_WINOGRAD_LANES = 16  # the kernel's channel vector (csrc/cpu/conv3d_winograd.cpp)

#: F(7x7, 3x3) for bfloat16 (:func:`_winograd_tile`); read at import.
WINOGRAD_7X7 = os.environ.get("VIDEOCONV_CPU_WINOGRAD_7X7", "1") != "0"

#: When bfloat16 takes F(7x7, 3x3) rather than F(4x4) (:func:`_winograd_tile`). 7x7 tiles do 81
#: products per 49 outputs against 36 per 16, 27% fewer where both tile the map exactly (56, 28:
#: the maps of every ResNet-style video model are multiples of 7) and 44% fewer at 14 and 7. On
#: the project's Zen 5, in turns (`python benchmarks/winograd_ab.py`), F(7x7) was 1.16-1.18x
#: faster than F(4x4) on the 16x56x56 layers of r2plus1d_18 / r3d_18 (1.58-1.61x faster than
#: oneDNN's bfloat16 convolution) and 1.04-1.16x at 8x28x28 (1.29-1.57x), but 0.81x on r3d_18's
#: 4x14x14 layer (64 tiles of 4x4, 16 of 7x7, and a 64 MB transformed weight), 0.47-0.59x at
#: 2x7x7 (transformed weights of 154 MB and more, streamed from DRAM) and 0.86x on a 2x19x19
#: test shape with 18 tiles (fewer blocks than threads; a one-off script). So: at least
#: _WINOGRAD7_MIN_TILES tiles of 7x7, at most _WINOGRAD7_MAX_PRODUCTS of F(4x4)'s products, and
#: the transformed weight (81/36 of F(4x4)'s) within _WINOGRAD_MAX_WEIGHT_BYTES. Zen 4 and the
#: AVX2-only Zen 3 were not measured with F(7x7).
_WINOGRAD7_MIN_TILES = 128
_WINOGRAD7_MAX_PRODUCTS = 0.8


def _op_registered(name: str) -> bool:
    """Whether the videoconv._C extension registered ``torch.ops.videoconv.<name>``."""
    try:
        return hasattr(torch.ops.videoconv, name)
    except RuntimeError:
        return False


# Asked on every call; the extension is loaded (or not) once, at import, so the answers are kept.
_winograd_kernel: Optional[bool] = None


def _has_winograd_kernel() -> bool:
    global _winograd_kernel
    if _winograd_kernel is None:
        _winograd_kernel = _op_registered("_conv3d_winograd_cpu")
    return _winograd_kernel


def _winograd_tiles(key, tile: int = 4) -> int:
    """Output tiles (``tile`` x ``tile`` positions of one output frame) of the convolution
    ``key`` describes."""
    (_, _, _, wshape), _, padding, _, _, input_size = key
    n, _, d, h, w = input_size
    d_out = d + 2 * padding[0] - wshape[2] + 1
    h_out, w_out = h + 2 * padding[1] - 2, w + 2 * padding[2] - 2
    return (n * max(d_out, 0) * math.ceil(max(h_out, 0) / tile)
            * math.ceil(max(w_out, 0) / tile))


def _winograd_tile(key) -> int:
    """The output tile of a convolution that :func:`_use_winograd` takes: 7 (F(7x7, 3x3)) for
    bfloat16 within the limits above, else 4 (F(4x4, 3x3)). float32 always takes 4: F(7x7)'s
    float32 error, 10x F(4x4)'s on average and 60x at worst (2.6e-4 of the largest output;
    benchmarks/winograd_bf16.py), is well under bfloat16's rounding but not under float32's
    (csrc/cpu/conv3d_winograd.cpp, WinogradTile<7>)."""
    (dtype, _, _, wshape), *_ = key
    if not (WINOGRAD_7X7 and dtype == torch.bfloat16):
        return 4
    c_out, c_in, taps = wshape[0], wshape[1], wshape[2]
    tiles7 = _winograd_tiles(key, 7)
    if (4 * 81 * taps * c_in * _winograd_padded(c_out) > _WINOGRAD_MAX_WEIGHT_BYTES
            or tiles7 < _WINOGRAD7_MIN_TILES):
        return 4
    return 7 if 81 * tiles7 <= _WINOGRAD7_MAX_PRODUCTS * 36 * _winograd_tiles(key) else 4


def _use_winograd(key) -> bool:
    """Whether the convolution ``key`` describes runs through the Winograd kernel: a (kt, 3, 3)
    kernel, stride and dilation 1, no groups, spatial padding <= 2, channels_last_3d, C_in a
    multiple of 16 (C_out may be any: the kernel pads it), and the size limits above."""
    (dtype, _, fmt, wshape), stride, padding, dilation, groups, input_size = key
    if not (WINOGRAD and fmt == torch.channels_last_3d and tuple(wshape[3:]) == (3, 3)
            and tuple(stride) == (1, 1, 1) and tuple(dilation) == (1, 1, 1) and groups == 1
            and padding[1] <= 2 and padding[2] <= 2 and _has_winograd_kernel()):
        return False
    c_out, c_in, taps = wshape[0], wshape[1], wshape[2]
    if c_in % _WINOGRAD_LANES:
        return False
    if 4 * 36 * taps * c_in * _winograd_padded(c_out) > _WINOGRAD_MAX_WEIGHT_BYTES:
        return False
    tiles = _winograd_tiles(key)
    if dtype == torch.float32 or _widened(dtype):
        # Without native bfloat16, oneDNN's alternative runs at the float32 rate too.
        return tiles > 0
    return (dtype == torch.bfloat16 and tiles >= _WINOGRAD_MIN_TILES_BF16
            and min(c_in, c_out) >= _WINOGRAD_MIN_CHANNELS_BF16)


#: Temporal (kt, 1, 1) convolutions as 2-D convolutions (see the module docstring); read at import.
TEMPORAL_2D = os.environ.get("VIDEOCONV_CPU_TEMPORAL_2D", "1") != "0"


#: On that route, a residual is added by oneDNN's sum post-op into a copy of it rather than by the
#: binary add post-op (see ``_binary``); read at import, and by the prepared call on every call
#: (benchmarks/temporal_2d_ab.py --sum switches it in one process).
TEMPORAL_2D_SUM = os.environ.get("VIDEOCONV_CPU_TEMPORAL_2D_SUM", "1") != "0"


def _use_temporal_2d(key) -> bool:
    """Whether the convolution ``key`` describes runs on oneDNN as a 2-D (kt, 1) convolution over
    (D, H*W): a (kt, 1, 1) kernel with kt > 1, spatial stride and dilation 1, no spatial padding
    (a padded H or W would pad the flattened row instead), no groups (the only case measured),
    channels_last_3d, and a dtype oneDNN computes natively."""
    (dtype, _, fmt, wshape), stride, padding, dilation, groups, _ = key
    return (TEMPORAL_2D and fmt == torch.channels_last_3d and wshape[2] > 1
            and tuple(wshape[3:]) == (1, 1) and tuple(stride[1:]) == (1, 1)
            and tuple(padding[1:]) == (0, 0) and tuple(dilation[1:]) == (1, 1) and groups == 1
            and not _widened(dtype))


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    """A channels_last_3d (N, C, D, H, W) tensor as the channels_last (N, C, D, H*W) view of the
    same memory."""
    n, c, d, h, w = t.shape
    return t.permute(0, 2, 3, 4, 1).reshape(n, d, h * w, c).permute(0, 3, 1, 2)


#: The 1x1x1 kernel for eligible convolutions (see the module docstring); read at import.
POINTWISE = os.environ.get("VIDEOCONV_CPU_POINTWISE", "1") != "0"

#: Limits of the 1x1x1 kernel's AVX-512 variant (:func:`_use_pointwise`), from timings on this
#: project's 2-core AMD EPYC (Zen 4, AVX-512 BF16, no AMX) against oneDNN's brgconv_1x1, same
#: process, kernel call alone (inside a model the kernel also saves most of oneDNN's ~30-60 µs
#: set-up per call):
#:
#: * bfloat16: 1.10-1.24x on X3D-S's 1x1x1 convolutions with C_in >= 48 and R3D-18's 256 -> 512
#:   shortcut, 0.97-1.01x on the 64/128-channel stride-2 shortcuts of R3D-18 at 8x56x56 and
#:   8x28x28; 0.67x with C_in 24 (X3D-S's 24 -> 54 expansion on 13x80x80, a pass over 13 MB
#:   with 12 dot-product steps per output vector, where oneDNN streams better). Hence C_in >= 32,
#:   except for the tiny convolutions of _is_small_gemm (Squeeze-and-Excitation on a pooled
#:   map), where the kernel's ~3-5 µs call beats the small GEMM's 5-11 µs at any C_in.
#: * float32: 1.04-1.13x up to ~1600 output positions (X3D-S stages 3-4, R3D-18 layers 3-4),
#:   0.75-0.96x from ~3000 up (64 -> 128 stride 2 from 8x56x56, 48 -> 108 at 13x20x20), where
#:   the float32 FMA rate, not the call, bounds both. Hence at most _POINTWISE_MAX_ROWS_F32
#:   output positions in float32.
#: * bfloat16, strided, on another Zen 4 VM of the same family and model (the ninth session;
#:   `python benchmarks/pointwise_ab.py --models r3d_18 r2plus1d_18 x3d_s --dtypes bfloat16`):
#:   0.87-0.89x on the 64 -> 128 stride-2 shortcuts of R3D-18 / R(2+1)D-18 at their standard
#:   16x56x56 (803k output values, a strided read of a 6.4 MB input), where the run above had
#:   them level; 1.19-1.24x on the 128 -> 256 ones (200k) and 1.05-1.77x on X3D-S's stride-2
#:   projections (at most 125k). So strided convolutions with more than
#:   _POINTWISE_MAX_STRIDED_OUTPUT_BF16 output values go to oneDNN, which was at least level on
#:   both machines. (The same run had the kernel at 0.88-0.99x on X3D-S's stride-1 expansions of
#:   562k-1.1M output values, where the run above had it 1.10-1.24x faster: machines disagree
#:   there, and the rule leaves those to the kernel.)
_POINTWISE_MIN_CHANNELS = 32
_POINTWISE_MAX_ROWS_F32 = 2048
_POINTWISE_MAX_STRIDED_OUTPUT_BF16 = 500_000

#: Limits of the AVX2 variant (CPUs without AVX512-BF16), from ``benchmarks/pointwise_ab.py`` on
#: the project's 2-core AMD EPYC Zen 3 (AVX2, no AVX-512) against oneDNN's AVX2 1x1 kernel through
#: ``_convolution_pointwise``, same process, in turns (oneDNN / kernel, medians of two runs):
#:
#: * float32: 1.04-1.6x with up to ~300k output values (X3D-S from stage 3 on, the stride-2
#:   projections, R3D-18's and R(2+1)D-18's 128 -> 256 and 256 -> 512 shortcuts), where oneDNN's
#:   set-up is a large part of the call; 0.67-0.90x from ~500k up (X3D-S's stride-1 layers at
#:   13x40x40 and 13x80x80, 48 -> 108 at 13x20x20), where writing the output bounds both and
#:   oneDNN's kernel writes it faster. Hence at most _POINTWISE_AVX2_MAX_OUTPUT_F32 values.
#: * bfloat16: oneDNN has no bfloat16 convolution on such CPUs; its route widens the input to a
#:   float32 copy and rounds the output from another. The kernel reads and writes bfloat16:
#:   1.2-2.0x on projections, small expansions and the stride-2 shortcuts (1.85-1.94x on the
#:   64 -> 128 ones at 16x56x56, whose widened copy is of the whole input, of which the
#:   convolution reads an eighth), ~1.0 on 24 -> 54 at 13x80x80, but 0.79-0.95x on stride-1
#:   expansions (C_out >= 2 C_in) with >= 500k output values (24 -> 54 and 24 -> 108 at
#:   13x40x40, 48 -> 216 at 13x20x20, 96 -> 432 at 13x10x10), output-bound as in float32.
#:   Hence not those (_POINTWISE_AVX2_EXPANSION_OUTPUT_BF16).
#:
#: Those bfloat16 figures are against the widened route. CPUs with AVX-512 but not AVX512-BF16
#: (Skylake-X, Ice Lake) also run this variant, and there oneDNN has a bfloat16 convolution of
#: its own, which this kernel was not measured against (no such machine here): oneDNN keeps
#: those layers unless _POINTWISE_AVX2_BF16_NATIVE_ONEDNN says otherwise.
_POINTWISE_AVX2_MAX_OUTPUT_F32 = 300_000
_POINTWISE_AVX2_EXPANSION_OUTPUT_BF16 = 500_000
_POINTWISE_AVX2_BF16_NATIVE_ONEDNN = False
_POINTWISE_LANES = 16  # the kernel's channel vector (csrc/cpu/conv3d_pointwise.cpp)
_POINTWISE_BLOCK = 64  # the kernel's column block: four vectors

_pointwise_kernel: Optional[bool] = None


def _has_pointwise_kernel() -> bool:
    """Whether the extension has the 1x1x1 kernel and this CPU can run one of its variants
    (AVX-512 + BF16, or AVX2 + FMA)."""
    global _pointwise_kernel
    if _pointwise_kernel is None:
        _pointwise_kernel = (_op_registered("_conv3d_pointwise_cpu")
                             and bool(torch.ops.videoconv._conv3d_pointwise_cpu_supported()))
    return _pointwise_kernel


def _pointwise_variant() -> str:
    """The 1x1x1 kernel this CPU runs: "avx512_bf16", "avx2" or "" (none; see
    csrc/cpu/conv3d_pointwise.cpp). Asked each time a call is prepared, not cached:
    ``torch.ops.videoconv._cpu_vector_lanes(8)`` makes an AVX-512 CPU run the AVX2 one (tests)."""
    if not _has_pointwise_kernel():
        return ""
    return str(torch.ops.videoconv._conv3d_pointwise_cpu_variant())


def _use_pointwise(key) -> bool:
    """Whether the convolution ``key`` describes runs through the 1x1x1 kernel
    (``videoconv::_conv3d_pointwise_cpu``): a 1x1x1 kernel, no padding, no groups, any stride,
    channels_last_3d (or one position per sample, which is both layouts), float32 or bfloat16,
    and the limits above for the variant this CPU runs. The tiny ones :func:`_is_small_gemm`
    describes (Squeeze-and-Excitation on a pooled map) take it at any C_in: its ~3-5 µs call
    beats the small GEMM's 5-11 µs."""
    (dtype, _, fmt, wshape), stride, padding, _, groups, input_size = key
    point = tuple(input_size[2:]) == (1, 1, 1)
    if not (POINTWISE and (fmt == torch.channels_last_3d or point)
            and dtype in (torch.float32, torch.bfloat16)
            and tuple(wshape[2:]) == (1, 1, 1) and tuple(padding) == (0, 0, 0) and groups == 1):
        return False
    variant = _pointwise_variant()
    c_out, c_in = wshape[0], wshape[1]
    n, _, d, h, w = input_size
    rows = n * math.prod(-(-size // s) for size, s in zip((d, h, w), stride))
    if variant == "avx2":
        if _is_small_gemm(key):
            return True
        if dtype == torch.bfloat16:
            if not (_widened(dtype) or _POINTWISE_AVX2_BF16_NATIVE_ONEDNN):
                return False
            expansion = c_out >= 2 * c_in and tuple(stride) == (1, 1, 1)
            return not (expansion and rows * c_out >= _POINTWISE_AVX2_EXPANSION_OUTPUT_BF16)
        return rows * c_out <= _POINTWISE_AVX2_MAX_OUTPUT_F32
    if variant != "avx512_bf16" or not (c_in >= _POINTWISE_MIN_CHANNELS or _is_small_gemm(key)):
        return False
    if dtype == torch.bfloat16:
        strided = tuple(stride) != (1, 1, 1)
        return not (strided and rows * c_out > _POINTWISE_MAX_STRIDED_OUTPUT_BF16)
    return rows <= _POINTWISE_MAX_ROWS_F32


def _pointwise_route(dtype: torch.dtype) -> str:
    """The pack-cache route of a convolution that takes the 1x1x1 kernel: "pointwise" (the packed
    weight in the tensors' dtype) or "pointwise-f32" (bfloat16 tensors computed in float32 by the
    AVX2 kernel: a float32 packed weight holding the weight rounded to bfloat16)."""
    if dtype == torch.bfloat16 and _pointwise_variant() != "avx512_bf16":
        return "pointwise-f32"
    return "pointwise"


def _pointwise_weight(folded: torch.Tensor, dtype: torch.dtype,
                      widened: bool = False) -> torch.Tensor:
    """The 1x1x1 kernel's packed weight from the folded float64 (C_out, C_in, 1, 1, 1) weight,
    rounded once to ``dtype``: one flat tensor of column blocks of 64 output channels (the last
    one narrower), each block [K step][block width] (float32: a step is one input channel) or
    [K step][block width][2] (bfloat16: a step is a pair of input channels, the operand layout of
    vdpbf16ps). C_out is zero-padded to a multiple of 16, an odd C_in by one zero channel.
    ``widened``: the float32 layout holding the values rounded to ``dtype`` (the AVX2 kernel's
    weight for bfloat16 tensors)."""
    c_out, c_in = folded.shape[:2]
    w = folded.reshape(c_out, c_in)
    padded = -(-c_out // _POINTWISE_LANES) * _POINTWISE_LANES
    pair = dtype == torch.bfloat16 and not widened
    w = F.pad(w, (0, c_in % 2 if pair else 0, 0, padded - c_out))
    blocks = []
    for c0 in range(0, padded, _POINTWISE_BLOCK):
        b = w[c0:c0 + _POINTWISE_BLOCK]
        b = b.reshape(b.shape[0], -1, 2).permute(1, 0, 2) if pair else b.t()
        b = b.to(dtype)
        blocks.append((b.float() if widened else b).reshape(-1))
    return torch.cat(blocks).contiguous()


# G of F(4x4, 3x3) (Lavin & Gray 2016), exact in float64: U = G g G^T per 3x3 slice.
_WINOGRAD_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)


# G of F(7x7, 3x3): the Cook-Toom construction at the points 0, 1, -1, 2, -2, 1/2, -1/2, 4 and
# infinity, 1/f_j in G (the kernel's B^T and A^T are in csrc/cpu/conv3d_winograd.cpp,
# WinogradTile<7>).
_WINOGRAD_G7 = (
    (1 / 4, 0.0, 0.0),
    (2 / 27, 2 / 27, 2 / 27),
    (2 / 45, -2 / 45, 2 / 45),
    (-1 / 180, -1 / 90, -1 / 45),
    (-1 / 540, 1 / 270, -1 / 135),
    (-64 / 315, -32 / 315, -16 / 315),
    (-64 / 405, 32 / 405, -16 / 405),
    (1 / 11340, 1 / 2835, 4 / 2835),
    (0.0, 0.0, 1.0),
)


def _winograd_padded(c_out: int) -> int:
    """C_out rounded up to the kernel's channel vector: the width of ``U``'s last dimension."""
    return -(-c_out // _WINOGRAD_LANES) * _WINOGRAD_LANES


def _winograd_weight(folded: torch.Tensor, tile: int = 4) -> torch.Tensor:
    """The kernel's transformed weight ``U`` (kt, 36 (tile 4) or 81 (tile 7), C_in, C_out rounded
    up to a multiple of 16), float32, from the folded float64 weight (C_out, C_in, kt, 3, 3): one
    rounding, after the transform. The padding columns are zeros; the kernel computes them and
    does not store them."""
    g = torch.tensor({4: _WINOGRAD_G, 7: _WINOGRAD_G7}[tile], dtype=torch.float64,
                     device=folded.device)
    u = torch.einsum("ik,octkl,jl->tijco", g, folded, g)
    taps, c_in, c_out = folded.shape[2], folded.shape[1], folded.shape[0]
    u = torch.nn.functional.pad(u, (0, _winograd_padded(c_out) - c_out))
    return u.reshape(taps, g.shape[0] ** 2, c_in, -1).float().contiguous()


def _owned(shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous ``dtype`` copy of ``shift`` that nothing else refers to, for the pack cache.
    Never ``shift`` itself (which ``.to(dtype).contiguous()`` returns when it already is one):
    the entry outlives the call, and a caller's shift may be memory its owner reuses.
    ``torch.compile``'s graphs pass the folded shift in a buffer of the graph's own, which its
    later kernels overwrite without bumping a version counter: the cached bias then changed
    under the entry, and a later call with an equal shift (a hit) added garbage (seen: a
    compiled fused model 1.6 off after a weight update, and the eager model after the compiled
    one had run)."""
    return shift.detach().to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def _pack(weight, scale, shift, cache_key):
    # cache_key = (key, route): the route ("winograd" (F(4x4)), "winograd-7x7", "pointwise",
    # "pointwise-f32" (the AVX2 1x1x1 kernel computing a bfloat16 convolution in float32),
    # "onednn", "onednn-2d" (a temporal convolution as a 2-D one, _use_temporal_2d) or
    # "onednn-f32" (oneDNN computing a bfloat16 convolution in float32) or "aten-f32" (ATen's
    # convolution in float32, _onednn_unsafe)) is part of what the
    # cache compares, so that a weight packed for one kernel is never handed to another after
    # WINOGRAD, WINOGRAD_7X7, POINTWISE, a limit or the vector width (_cpu_vector_lanes) is
    # changed at run time.
    key, route = cache_key
    _, stride, padding, dilation, groups, input_size = key
    dtype = weight.dtype
    with torch.no_grad():
        w = weight.detach().double() * scale.detach().double().view(-1, 1, 1, 1, 1)
        bias = _owned(shift, dtype)
        if route == "onednn" and _is_small_gemm(key):  # a (C_out, C_in) float32 matrix
            return w.to(dtype).reshape(w.shape[0], w.shape[1]).float().contiguous(), bias.float()
        if route in ("winograd", "winograd-7x7"):  # the transformed weight and a float32 shift
            # From the float64 folded weight, with no rounding to the dtype first: oneDNN needs
            # the weight in the input's dtype, this kernel does not.
            return (_winograd_weight(w, 7 if route == "winograd-7x7" else 4),
                    _owned(shift, torch.float32))
        if route in ("pointwise", "pointwise-f32"):  # the packed weight and a float32 shift
            return (_pointwise_weight(w, dtype, widened=route == "pointwise-f32"),
                    _owned(shift, torch.float32))
        w = w.to(dtype)
        if route == "onednn-2d":  # the (kt, 1) weight of the (D, H*W) view, prepacked
            n, c, d, h, wd = input_size
            w2d = w[..., 0].contiguous(memory_format=torch.channels_last)
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w2d, [padding[0], 0], [stride[0], 1], [dilation[0], 1], groups, [n, c, d, h * wd])
            return packed, bias
        if route == "aten-f32":  # a plain float32 weight holding the weight rounded to dtype
            return w.to(dtype).float().contiguous(), _owned(shift, torch.float32)
        if route == "onednn-f32":  # rounded to bfloat16 as above, computed in float32
            w, bias = w.float(), _owned(shift, torch.float32)
        w = w.contiguous(memory_format=torch.channels_last_3d)
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            w, list(padding), list(stride), list(dilation), groups, list(input_size))
    return packed, bias


def _prepare_small_gemm(w2d, bias, activation, input_size, dtype, final):
    """The call ``(x, residual) -> act(x @ w2d.T + bias [+ residual])`` over the rows (positions)
    of inputs of size ``input_size``, computed in float32 and rounded once to ``dtype``; the
    result is channels_last_3d-strided, as oneDNN's output is, then put in layout ``final``
    (False: left as it is; an (N, C, 1, 1, 1) result is in every layout).

    Everything that depends only on the shape is decided here: these calls are ~10 µs, so the
    permutes, reshapes and dtype checks a general version repeats would be a third of that.
    ``w2d.t()`` is a view that BLAS reads transposed (no copy)."""
    n, c, d, h, w = input_size
    wt = w2d.t()
    # (N, C, 1, 1, 1), the Squeeze-and-Excitation case, is both contiguous and channels_last_3d:
    # a plain (N, C) matrix either way.
    point = d == h == w == 1
    to_float = dtype != torch.float32

    def rows_of(t):
        return t.reshape(n, -1) if point else t.permute(0, 2, 3, 4, 1).reshape(n * d * h * w, -1)

    def run(x, residual):
        rows = rows_of(x)
        y = torch.addmm(bias, rows.float() if to_float else rows, wt)
        if residual is not None:
            y += rows_of(residual)
        if activation == "relu":
            y.relu_()
        elif activation == "silu":
            F.silu(y, inplace=True)
        if to_float:
            y = y.to(dtype)
        if point:
            return y.view(n, -1, 1, 1, 1)  # every layout at once
        y = y.view(n, d, h, w, -1).permute(0, 4, 1, 2, 3)  # channels_last_3d
        return y if final is False else y.contiguous(memory_format=final)
    return run


def _conv(x, weight, scale, shift, stride, padding, dilation, groups, activation, residual,
          out_format=None):
    """``act(conv(x, w) * scale + shift [+ residual])`` via oneDNN (or, for tiny 1x1x1 convs,
    one small GEMM: :func:`_is_small_gemm`); output in ``out_format`` (default: ``x``'s layout,
    :func:`output_memory_format`)."""
    fmt = output_memory_format(x)
    x = x.contiguous(memory_format=fmt)
    run = _prepare(weight, scale, shift, stride, padding, dilation, groups, activation, fmt,
                   tuple(x.shape), out_format)
    return run(x, residual)


def _prepare(weight, scale, shift, stride, padding, dilation, groups, activation, fmt, input_size,
             out_format=None):
    """The call ``(x, residual) -> output`` for inputs of size ``input_size`` already in layout
    ``fmt``, with the folded weight packed (or found in :data:`pack_cache`) now: everything that
    does not depend on the input's values is decided here, once."""
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    key = ((weight.dtype, weight.device, fmt, tuple(weight.shape)), tuple(stride), tuple(padding),
           tuple(dilation), groups, tuple(input_size))
    route = (("winograd-7x7" if _winograd_tile(key) == 7 else "winograd") if _use_winograd(key)
             else _pointwise_route(weight.dtype) if _use_pointwise(key)
             else "aten-f32" if _onednn_unsafe(key) and not _is_small_gemm(key)
             else "onednn-f32" if _widened(weight.dtype) and not _is_small_gemm(key)
             else "onednn-2d" if _use_temporal_2d(key)
             else "onednn")
    packed, bias = pack_cache.get(weight, scale, shift, (key, route))
    final = fmt if out_format is None else out_format
    mk = torch.ops.mkldnn

    def finish(y):
        return y if final is False else y.contiguous(memory_format=final)

    if route == "onednn" and _is_small_gemm(key):  # the cache holds a float32 matrix then
        return _prepare_small_gemm(packed, bias, activation, input_size, weight.dtype, final)

    if route in ("pointwise", "pointwise-f32", "winograd", "winograd-7x7"):
        # videoconv's own kernels: the packed weight, a float32 shift and the one convolution
        # argument each takes (the 1x1x1 kernel's stride, Winograd's padding), channels_last_3d
        if route.startswith("pointwise"):
            kernel, geometry = torch.ops.videoconv._conv3d_pointwise_cpu.default, stride
        else:
            kernel, geometry = torch.ops.videoconv._conv3d_winograd_cpu.default, padding

        def conv_kernel(x, residual):
            if residual is not None:
                residual = residual.contiguous(memory_format=torch.channels_last_3d)
            return finish(kernel(x, packed, bias, geometry, activation, residual))

        def conv_kernel_cl(x, residual):
            # The kernels write channels_last_3d: nothing to convert (a tiny SE conv's whole
            # budget is ~10 µs; the no-op contiguous() and the extra call were ~0.5 µs of it).
            if residual is not None:
                residual = residual.contiguous(memory_format=torch.channels_last_3d)
            return kernel(x, packed, bias, geometry, activation, residual)
        return conv_kernel_cl if final is False or final == torch.channels_last_3d else conv_kernel

    unary = _ONEDNN_ACT[activation]

    if route == "onednn-2d":
        pad2, stride2, dil2 = [padding[0], 0], [stride[0], 1], [dilation[0], 1]
        n, _, _, h, w = input_size
        c_out = weight.shape[0]

        def conv_2d(x, residual):
            # x is channels_last_3d here (the prepared path's contract), so these are views.
            x2 = _as_2d(x)
            if residual is not None:
                r3 = residual.contiguous(memory_format=torch.channels_last_3d)
                sum_into = TEMPORAL_2D_SUM
                if sum_into and r3 is residual:  # the sum post-op writes it: not the caller's
                    r3 = r3.clone()
                y = _binary(mk, x2, _as_2d(r3), packed, bias, pad2, stride2, dil2, groups,
                            activation, sum_into_residual=sum_into)
            else:
                y = mk._convolution_pointwise(x2, packed, bias, pad2, stride2, dil2, groups,
                                              unary, [], "")
            # oneDNN writes the input's layout, channels_last: the channels_last_3d output
            y = y.permute(0, 2, 3, 1).reshape(n, y.shape[2], h, w, c_out).permute(0, 4, 1, 2, 3)
            return finish(y)
        return conv_2d

    if route == "aten-f32":
        dtype = weight.dtype

        def conv_aten(x, residual):
            # Exact widening in, float32 convolution and epilogue, one rounding out.
            y = F.conv3d(x.float(), packed, bias, stride, padding, dilation, groups)
            if residual is not None:
                y += residual.float()
            if activation == "relu":
                y.relu_()
            elif activation == "silu":
                F.silu(y, inplace=True)
            return finish(y.to(dtype))
        return conv_aten

    if route == "onednn-f32":
        dtype = weight.dtype

        def conv_widened(x, residual):
            # Exact widening in, one rounding out; oneDNN keeps the input's layout.
            x = x.float()
            if residual is not None:
                y = _binary(mk, x, residual.float(), packed, bias, padding, stride, dilation,
                            groups, activation)
            else:
                y = mk._convolution_pointwise(x, packed, bias, padding, stride, dilation, groups,
                                              unary, [], "")
            return finish(y.to(dtype))
        return conv_widened

    def conv(x, residual):
        if residual is not None:
            return finish(_binary(mk, x, residual, packed, bias, padding, stride, dilation, groups,
                                  activation))
        return finish(mk._convolution_pointwise(x, packed, bias, padding, stride, dilation, groups,
                                                unary, [], ""))
    return conv


def _binary(mk, x, residual, packed, bias, padding, stride, dilation, groups, activation,
            sum_into_residual=False):
    # For grouped bfloat16 convolutions torch computes the binary post-op with ATen's
    # add_relu, which has no bfloat16 kernel: add in oneDNN, relu after (relu commutes with
    # the rounding to bfloat16, so the result is the same).
    relu_after = activation == "relu" and groups != 1 and x.dtype == torch.bfloat16
    unary = "relu" if activation == "relu" and not relu_after else None
    if sum_into_residual:
        # oneDNN's sum post-op, which accumulates the convolution into its destination: here
        # ``residual`` itself, which the caller owns (a copy of the user's tensor); the same
        # single rounding as the binary add post-op. Used on the temporal convs over the (D, H*W)
        # view (route onednn-2d), where it was faster on the largest map: on Zen 5, R(2+1)D-18's
        # 144 -> 64 (3, 1, 1) at 16x56x56 in bfloat16, 1.05-1.25x in three runs, the copy
        # included (benchmarks/temporal_2d_ab.py --sum); within the noise on the smaller maps.
        y = mk._convolution_pointwise_.binary(residual, x, packed, bias, padding, stride,
                                              dilation, groups, "add", 1.0, unary, [], "")
    else:
        y = mk._convolution_pointwise.binary(x, residual, packed, bias, padding, stride,
                                             dilation, groups, "add", None, unary, [], "")
    if relu_after:
        y = y.relu_()
    elif activation == "silu":
        if y.dtype == torch.float32:
            y = F.silu(y, inplace=True)
        else:
            y = F.silu(y.float()).to(y.dtype)
    return y


_stats_kernel: Optional[bool] = None


#: What the routes depend on besides a call's arguments: the switches and limits above (every
#: module-level name in capitals, found below) and the functions that tests and the A/B scripts
#: replace at run time. :func:`_route_settings` reads them, as part of the operators' guard on
#: the prepared calls they keep (``CpuBackend.prepared_call_settings``,
#: videoconv/ops/_direct.py, OpPreparedCalls): a switch flipped at run time is then seen there,
#: as the pack cache sees it through the route in its key.
_ROUTE_FUNCTIONS = ("_widened", "_onednn_unsafe", "_is_small_gemm", "_use_winograd",
                    "_winograd_tile", "_use_temporal_2d", "_use_pointwise", "_pointwise_route",
                    "_prepare", "_pack", "_conv")


def _route_settings() -> tuple:
    """The values of the names in :data:`_ROUTE_SETTINGS` now, whether oneDNN computes bfloat16
    natively (through :func:`onednn_bf16_supported`, not its cache, which is filled during the
    first call: a key read before it would never match one read after) and the 1x1x1 kernel's
    variant (which the vector width the tests force chooses, in C++)."""
    names = globals()
    return tuple([names[n] for n in _ROUTE_SETTINGS]) + (onednn_bf16_supported(),
                                                          _pointwise_variant())


def _has_stats_kernel() -> bool:
    global _stats_kernel
    if _stats_kernel is None:
        _stats_kernel = _op_registered("_channel_stats_cpu")
    return _stats_kernel


class CpuBackend(Backend):
    name = "cpu"
    devices = frozenset({"cpu"})
    description = ("oneDNN fused pointwise conv (torch.ops.mkldnn._convolution_pointwise) with a "
                   "prepacked BN-folded weight; float32/bfloat16")
    dtypes = frozenset({torch.float32, torch.bfloat16})

    @classmethod
    def environment_reasons(cls) -> List[str]:
        # Asked on every call (operator dispatch); the answer cannot change within a process.
        if cls._environment is None:
            cls._environment = cls._environment_reasons()
        return list(cls._environment)

    _environment: Optional[List[str]] = None

    @classmethod
    def _environment_reasons(cls) -> List[str]:
        reasons = []
        if not torch.backends.mkldnn.is_available():
            reasons.append("oneDNN (mkldnn) is not available in this torch build")
        missing = _mkldnn_ops_reason()
        if missing:
            reasons.append(missing)
        return reasons

    @classmethod
    def not_supported_reasons(cls, op_name: str, **inputs: Any) -> List[str]:
        reasons = super().not_supported_reasons(op_name, **inputs)
        x = inputs.get("input")
        if isinstance(x, torch.Tensor) and x.dim() != 5:
            reasons.append(f"input must be 5-D (got {x.dim()}-D)")
        if op_name == "conv3d_bn_stats" and not _has_stats_kernel():
            reasons.append("the statistics pass videoconv::_channel_stats_cpu is missing (the "
                           "videoconv._C extension is not loaded)")
        return reasons

    @classmethod
    def conv3d_bn_act(cls, *, input, weight, scale, shift, stride, padding, dilation, groups,
                      activation, residual):
        return _conv(input, weight, scale, shift, stride, padding, dilation, groups, activation,
                     residual)

    @classmethod
    def prepared_call_settings(cls) -> tuple:
        return _route_settings()

    @classmethod
    def prepare_conv3d_bn_act(cls, *, input, weight, scale, shift, stride, padding, dilation,
                              groups, activation, residual):
        fmt = output_memory_format(input)
        if not input.is_contiguous(memory_format=fmt):
            return None  # every call would copy the input first: nothing to save
        # The caller guards the call with the input's signature (strides included), so later
        # inputs are in ``fmt`` too and go in as they are.
        return _prepare(weight, scale, shift, stride, padding, dilation, groups, activation, fmt,
                        tuple(input.shape))

    @classmethod
    def conv3d_bn_stats(cls, *, input, weight, stride, padding, dilation, groups):
        # The same oneDNN primitive with an identity epilogue ("none", no bias), given the
        # weight as it is: in training the weight changes every step, so the eval path's
        # fold-and-prepack cache would re-fold and re-pack on every call (three extra copies of
        # the weight) and keep a stale packed copy of every weight alive. oneDNN reorders the
        # plain weight internally, as eager's convolution does.
        fmt = output_memory_format(input)
        x = input.contiguous(memory_format=fmt)
        w = weight
        key = ((x.dtype, x.device, fmt, tuple(w.shape)), tuple(stride), tuple(padding),
               tuple(dilation), groups, tuple(x.shape))
        if _onednn_unsafe(key):  # float32 products in ATen, rounded once (see _onednn_unsafe)
            z = F.conv3d(x.float(), w.float(), None, stride, padding, dilation, groups)
        else:
            if _widened(x.dtype):  # float32 products, rounded once to bfloat16 as eager stores z
                x, w = x.float(), weight.float()
            z = torch.ops.mkldnn._convolution_pointwise(
                x, w, None, list(padding), list(stride), list(dilation), groups, "none", [], "")
        z = z.to(input.dtype).contiguous(memory_format=fmt)
        mean, var = torch.ops.videoconv._channel_stats_cpu(z)
        return z, mean, var

    @classmethod
    def conv3d_input_weight_grad(cls, *, grad_z, input, weight, stride, padding, dilation, groups,
                                 output_mask):
        """(grad_input, grad_weight), or ``None`` to use ATen's gradient convolutions (oneDNN):
        :func:`input_weight_grad_unless_aten_is_wrong`."""
        return input_weight_grad_unless_aten_is_wrong(
            grad_z=grad_z, input=input, weight=weight, stride=stride, padding=padding,
            dilation=dilation, groups=groups, output_mask=output_mask)

    @classmethod
    def conv2plus1d_bn_act(cls, *, input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                           activation, temporal_first, residual):
        from .reference import split_2plus1d

        s1, p1, s2, p2 = split_2plus1d(stride, padding, temporal_first)
        ones = (1, 1, 1)
        # The intermediate is rounded to the input dtype, as the eager chain stores it; it stays
        # in the layout oneDNN produced (channels_last_3d), only the output is in the input's.
        h = _conv(input, w1, scale1, shift1, s1, p1, ones, 1, activation, None, out_format=False)
        return _conv(h, w2, scale2, shift2, s2, p2, ones, 1, activation, residual,
                     out_format=output_memory_format(input))

    @classmethod
    def prepare_conv2plus1d_bn_act(cls, *, input, w1, scale1, shift1, w2, scale2, shift2, stride,
                                   padding, activation, temporal_first, residual):
        from .reference import split_2plus1d

        fmt = output_memory_format(input)
        if not input.is_contiguous(memory_format=fmt):
            return None  # every call would copy the input first: nothing to save
        s1, p1, s2, p2 = split_2plus1d(stride, padding, temporal_first)
        ones = (1, 1, 1)
        first = _prepare(w1, scale1, shift1, s1, p1, ones, 1, activation, fmt, tuple(input.shape),
                         out_format=False)
        # The second stage is prepared on the first call, from the intermediate itself: its
        # layout is whatever the first stage's route produces (oneDNN follows its input, the
        # Winograd and 1x1x1 kernels write channels_last_3d), the same for every input of this
        # signature, and conv2plus1d_bn_act above reads it the same way. One list, replaced
        # whole, so that threads sharing the call never see half of it.
        second: List[Any] = []

        def run(x, residual):
            h = first(x, None)
            stage = second[0] if second else None
            if stage is None:
                h_fmt = output_memory_format(h)
                stage = (h_fmt, h.is_contiguous(memory_format=h_fmt),
                         _prepare(w2, scale2, shift2, s2, p2, ones, 1, activation, h_fmt,
                                  tuple(h.shape), out_format=fmt))
                second[:] = [stage]
            h_fmt, in_layout, call = stage
            return call(h if in_layout else h.contiguous(memory_format=h_fmt), residual)
        return run


# Every capitalised module-level setting (WINOGRAD, _POINTWISE_MAX_ROWS_F32, ...), found rather
# than listed so that a new one cannot be left out; the activation map is not a switch (and not
# hashable).
_ROUTE_SETTINGS = tuple(sorted(
    name for name, value in list(globals().items())
    if name.lstrip("_")[:1].isupper() and name.lstrip("_").replace("_", "").isalnum()
    and name.lstrip("_").upper() == name.lstrip("_")
    and name not in ("_ONEDNN_ACT", "_ROUTE_FUNCTIONS", "_ROUTE_SETTINGS")
    and not isinstance(value, (type, types.ModuleType)))) + _ROUTE_FUNCTIONS
