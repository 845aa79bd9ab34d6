"""Depthwise Conv3d + per-channel scale/shift (folded BN) + residual + activation, in Triton.

Forward, input gradient and weight gradient of a depthwise 3D convolution
(``groups == C_in``, weight ``(C_in * M, 1, kT, kH, kW)``; ``M``, the channel multiplier, is
usually 1), as used by X3D, CSN (ir-CSN / ip-CSN) and MViT's pooling.

Why a direct kernel and not a GEMM
    A depthwise convolution does ``kT*kH*kW`` multiply-adds per output element and reads one
    input element per tap: as a GEMM it would be ``C`` independent GEMMs of width 1, which no
    tensor core can use. The work is bound by memory bandwidth, so the kernels are plain
    gathers that read every input once from DRAM (the taps of neighbouring output positions
    hit L1/L2) and write every output once.

Tiling
    A program owns a tile of ``BLOCK_P`` output positions (the flattened ``n, d, h, w``) by
    ``BLOCK_C`` channels and accumulates the taps in float32 registers, tap by tap: for each
    tap it loads a ``BLOCK_P x BLOCK_C`` input tile (zero where the tap falls in the padding)
    and the tap's ``BLOCK_C`` weights. The weight is passed transposed to ``(taps, C)`` (a
    copy of ``C * taps`` elements per call), so that a tap's weights are contiguous too. The
    layout is passed to the kernels as strides, and decides the shape of the tile:

    * channels_last_3d (channels innermost, the fast layout): ``BLOCK_C`` of 32..128 channels.
      A position's channels are contiguous, and the launcher proves them aligned (``VEC``,
      below), so a thread loads 16-byte vectors (8 bf16/fp16, 4 fp32 channels) of one or two
      positions per tap: one vector load of input and one of weight per tap and position.
    * NCDHW (supported for correctness first, slower): ``BLOCK_C == 1`` and a long run of
      positions, so that a warp reads consecutive ``w`` of one channel plane (coalesced where
      the stride along W is 1, but not vectorised).

    Kernels of at most 16 taps (5x1x1, 3x1x1, 1x3x3) are unrolled completely; larger ones
    (3x3x3) loop over the temporal taps and unroll the ``kH*kW`` taps inside. Fully unrolled,
    the compiler hoists all 27 taps' loads of a 3x3x3 kernel and runs out of registers (it
    spilled kilobytes); with the loop a thread keeps at most 9 taps' loads in flight, which
    is plenty with 4-8 warps per program.

Epilogue (forward)
    ``act(z * scale + shift [+ residual])`` on the float32 accumulator, rounded once to the
    output dtype and stored once: the convolution output ``z`` never exists in memory. (Eager
    PyTorch rounds ``z`` to float16/bfloat16 before the BatchNorm; here it is not rounded, so
    the result is slightly closer to the float64 reference.)

Backward (given ``grad_z``, the gradient with respect to the convolution output ``z``; the
op's autograd applies the epilogue's derivative with torch ops)
    * ``grad_input`` is a transposed depthwise convolution, computed directly: for each input
      position and tap, the output position that used it is ``o = (i + pad - k*dil) / stride``
      when that division is exact and ``o`` is in range; otherwise the tap contributes nothing.
      With stride 1 (specialised by Triton as a constant) the divisibility test folds away.
      Each element sums its taps in a fixed order, so the result is deterministic.
    * ``grad_weight[c, tap] = sum over (n, d', h', w') of grad_z * input patch``: a reduction
      over ``N*D'*H'*W'`` per channel and tap, done in two deterministic stages (no atomics):
      stage 1 gives each program one tap, a block of channels and a fixed chunk of positions,
      accumulates ``grad_z * x`` in a float32 tile and reduces it to a float32 partial per
      channel; stage 2 sums the partials of the chunks in order and casts to the weight dtype.
      The programs of one chunk and channel block for the different taps are launched next to
      each other (tap is the fastest grid axis), so they read the same ``grad_z``/``x`` lines
      from L2 rather than DRAM. The tile size and the chunking depend only on the shape and
      layout (this kernel is deliberately *not* autotuned: the summation order follows the
      tile, and a timing-based choice would make the bits of ``grad_weight`` change between
      runs).

Accumulation is float32 for every input dtype; float64 is refused (the reference backend's
job). Position indices are 32-bit (more than 2**31 - 1 positions are refused), memory offsets
64-bit.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, AotVariant, activation_code, apply_activation, environment_reasons

__all__ = [
    "depthwise_conv3d_bn_act",
    "depthwise_conv3d_backward",
    "not_supported_reasons",
    "aot_variants",
]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ----------------------------------------------------------------------------------------------
# configurations

# (BLOCK_P, BLOCK_C, num_warps). channels_last: with 16-byte vectors (8 bf16 / 4 fp32 channels
# per thread) each of these gives a thread one or two positions, so the per-position index
# math is not replicated and a tap costs one vector load; NCDHW: one channel plane per
# program, one or two positions per thread, consecutive positions across the warp.
_CL_TILES = [(16, 64, 4), (32, 64, 4), (32, 64, 8), (8, 128, 4), (64, 32, 8)]
_NC_TILES = [(128, 1, 4), (256, 1, 4), (512, 1, 8)]
# The interpreter runs programs one after the other, at a cost per operation nearly
# independent of the tile: one config per layout, with few programs but still small enough
# that the tiny test shapes have partial tiles along P and C (the NCDHW one has BLOCK_C > 1 to
# keep the program count down; which way the tile runs only matters for speed on a GPU).
_INTERPRET_CL_TILES = [(32, 16, 4)]
_INTERPRET_NC_TILES = [(128, 4, 4)]


def _configs(tiles) -> List[triton.Config]:
    # num_stages is irrelevant (no pipelined loop); 1 keeps shared memory at zero.
    return [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w, num_stages=1)
            for p, c, w in tiles]


_CL_CONFIGS = _configs(_INTERPRET_CL_TILES if INTERPRET else _CL_TILES)
_NC_CONFIGS = _configs(_INTERPRET_NC_TILES if INTERPRET else _NC_TILES)


def _prune_by_layout(configs, named_args, **kwargs):
    """The channels_last configs for channels_last tensors, the NCDHW ones otherwise."""
    channels_last = {**named_args, **kwargs}["CHANNELS_LAST"]
    keep = _CL_CONFIGS if channels_last else _NC_CONFIGS
    return [c for c in configs if any(c is k for k in keep)]


_AUTOTUNE = dict(
    configs=_CL_CONFIGS + _NC_CONFIGS,
    key=["CV", "P", "KT", "KH", "KW", "MULT", "CHANNELS_LAST", "VEC"],
    prune_configs_by={"early_config_prune": _prune_by_layout},
    cache_results=True,  # on disk, keyed by shape, dtypes and target GPU (see conv3d_bn_act.py)
)

#: Kernels with at most this many taps are unrolled completely. Larger ones (3x3x3) loop over
#: the temporal taps and unroll kH*kW inside: fully unrolled, the compiler hoists the loads
#: of all 27 taps and runs out of registers.
_MAX_UNROLLED_TAPS = 16

# The weight-gradient tile: fixed per layout (see the module docstring: determinism).
_WGRAD_TILE_CL = (32, 16, 4) if INTERPRET else (64, 32, 4)
_WGRAD_TILE_NC = (128, 4, 4) if INTERPRET else (512, 1, 4)
# Stage 1 aims at about this many programs (a few waves on a 132-SM H100); in the interpreter
# fewer, longer programs are faster and exercise the multi-tile chunk loop.
_WGRAD_TARGET_PROGRAMS = 64 if INTERPRET else 2048
_REDUCE_BLOCK = 256


# ----------------------------------------------------------------------------------------------
# kernels
#
# Vectorisation. In channels_last, a tile's row (one position, BLOCK_C channels) is contiguous,
# and Triton can load it with 16-byte vectors if it can prove alignment. Triton's own
# specialisation only knows "divisible by 16", which X3D's channel counts (54, 108, 216) fail;
# so the launcher computes VEC, the largest vector width (in elements, up to 16 bytes) that
# divides the channel count, every non-channel stride and every base address, and the kernels
# (a) receive the channel count as ``CV = C // VEC`` (so ``c < CV * VEC`` is a mask constant
# over groups of VEC channels) and (b) state the alignment of their pointer tiles with
# ``tl.multiple_of``. The hint has to be applied where the pointer tile is built (a hint on a
# value passed into a helper is lost), hence the load/store helpers below.


@triton.jit
def _load_tile(base, offsets, mask, VEC: tl.constexpr):
    """Load a [rows, channels] tile whose rows start VEC-element aligned."""
    ptrs = base + offsets
    if VEC > 1:
        ptrs = tl.multiple_of(ptrs, [1, VEC * (base.dtype.element_ty.primitive_bitwidth // 8)])
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store_tile(base, offsets, value, mask, VEC: tl.constexpr):
    ptrs = base + offsets
    if VEC > 1:
        ptrs = tl.multiple_of(ptrs, [1, VEC * (base.dtype.element_ty.primitive_bitwidth // 8)])
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _load_channels(base, offsets, mask, VEC: tl.constexpr):
    """Load a vector of channels (weight row, scale, shift) that starts VEC-element aligned."""
    ptrs = base + offsets
    if VEC > 1:
        ptrs = tl.multiple_of(ptrs, [VEC * (base.dtype.element_ty.primitive_bitwidth // 8)])
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _split_position(p, DO, HO, WO):
    """Flattened position -> (n, d, h, w) of a (N, DO, HO, WO) grid."""
    w = p % WO
    t = p // WO
    h = t % HO
    t = t // HO
    d = t % DO
    n = t // DO
    return n, d, h, w


@triton.jit
def _fwd_plane(acc, x_ptr, x_row, x_col, pc_mask, m_d, ih0, iw0, H, W, sxh, sxw, dil_h, dil_w,
               wt_ptr, tap0, c, c_mask, C, KH: tl.constexpr, KW: tl.constexpr,
               VEC: tl.constexpr):
    """Accumulate the KH*KW taps of one temporal offset (``tap0`` = its first tap)."""
    for kh in tl.static_range(KH):
        ih = ih0 + kh * dil_h
        m_dh = m_d & (ih >= 0) & (ih < H)
        row_dh = x_row + ih.to(tl.int64) * sxh
        for kw in tl.static_range(KW):
            iw = iw0 + kw * dil_w
            m = m_dh & (iw >= 0) & (iw < W)
            xv = _load_tile(x_ptr, (row_dh + iw.to(tl.int64) * sxw)[:, None] + x_col,
                            pc_mask & m[:, None], VEC)
            wv = _load_channels(wt_ptr, (tap0 + kh * KW + kw) * C + c, c_mask, VEC)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    return acc


@triton.jit
def _dw_conv3d_bn_act_fwd_kernel(
    x_ptr, wt_ptr, scale_ptr, shift_ptr, res_ptr, y_ptr,
    CV, D, H, W, DO, HO, WO, P,
    sxn, sxc, sxd, sxh, sxw,
    srn, src, srd, srh, srw,
    syn, syc, syd, syh, syw,
    str_d, str_h, str_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, MULT: tl.constexpr,
    ACT: tl.constexpr, HAS_RES: tl.constexpr, UNROLL: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y[n, c, od, oh, ow] = act(sum_taps x[n, c // MULT, ...] * wt[tap, c] * scale + shift
    [+ res]); wt is the weight as (taps, C) so a tap's channels are contiguous."""
    tl.static_assert(BLOCK_C % VEC == 0)
    C = CV * VEC  # output channels
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = p < P
    c_mask = c < C
    pc_mask = p_mask[:, None] & c_mask[None, :]
    n, od, oh, ow = _split_position(p, DO, HO, WO)
    if MULT == 1:
        ci = c
    else:
        ci = c // MULT  # input channel of a depthwise conv with a channel multiplier
    x_col = ci.to(tl.int64)[None, :] * sxc
    x_n = n.to(tl.int64) * sxn
    id0 = od * str_d - pad_d
    ih0 = oh * str_h - pad_h
    iw0 = ow * str_w - pad_w
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if UNROLL:
        for kt in tl.static_range(KT):
            idd = id0 + kt * dil_d
            m_d = p_mask & (idd >= 0) & (idd < D)
            acc = _fwd_plane(acc, x_ptr, x_n + idd.to(tl.int64) * sxd, x_col, pc_mask, m_d, ih0,
                             iw0, H, W, sxh, sxw, dil_h, dil_w, wt_ptr, kt * (KH * KW), c,
                             c_mask, C, KH, KW, VEC)
    else:
        for kt in range(KT):
            idd = id0 + kt * dil_d
            m_d = p_mask & (idd >= 0) & (idd < D)
            acc = _fwd_plane(acc, x_ptr, x_n + idd.to(tl.int64) * sxd, x_col, pc_mask, m_d, ih0,
                             iw0, H, W, sxh, sxw, dil_h, dil_w, wt_ptr, kt * (KH * KW), c,
                             c_mask, C, KH, KW, VEC)

    scale = _load_channels(scale_ptr, c, c_mask, VEC).to(tl.float32)
    shift = _load_channels(shift_ptr, c, c_mask, VEC).to(tl.float32)
    u = acc * scale[None, :] + shift[None, :]
    n64 = n.to(tl.int64)
    od64 = od.to(tl.int64)
    oh64 = oh.to(tl.int64)
    ow64 = ow.to(tl.int64)
    c64 = c.to(tl.int64)[None, :]
    if HAS_RES:
        r_off = (n64 * srn + od64 * srd + oh64 * srh + ow64 * srw)[:, None] + c64 * src
        u += _load_tile(res_ptr, r_off, pc_mask, VEC).to(tl.float32)
    u = apply_activation(u, ACT)
    y_off = (n64 * syn + od64 * syd + oh64 * syh + ow64 * syw)[:, None] + c64 * syc
    _store_tile(y_ptr, y_off, u, pc_mask, VEC)


_dw_conv3d_bn_act_fwd = triton.autotune(**_AUTOTUNE)(_dw_conv3d_bn_act_fwd_kernel)


@triton.jit
def _bwd_input_plane(acc, g_ptr, g_row, pc_mask, m_d, ih, iw, HO, WO, sgh, sgw, sgc,
                     str_h, str_w, pad_h, pad_w, dil_h, dil_w, wt_ptr, tap0, c, c_mask, C_out,
                     KH: tl.constexpr, KW: tl.constexpr, MULT: tl.constexpr, VEC: tl.constexpr):
    """Accumulate the KH*KW taps of one temporal offset of the transposed convolution."""
    for kh in tl.static_range(KH):
        th = ih + pad_h - kh * dil_h
        oh = th // str_h
        # th >= 0 first: whether the division of a negative number truncates or floors, the
        # tap is masked out.
        m_dh = m_d & (th >= 0) & (oh * str_h == th) & (oh < HO)
        row_dh = g_row + oh.to(tl.int64) * sgh
        for kw in tl.static_range(KW):
            tw = iw + pad_w - kw * dil_w
            ow = tw // str_w
            m = m_dh & (tw >= 0) & (ow * str_w == tw) & (ow < WO)
            row = (row_dh + ow.to(tl.int64) * sgw)[:, None]
            mask = pc_mask & m[:, None]
            tap = tap0 + kh * KW + kw
            for j in tl.static_range(MULT):
                co = c * MULT + j  # the output channels fed by input channel c
                gv = _load_tile(g_ptr, row + co.to(tl.int64)[None, :] * sgc, mask, VEC)
                wv = _load_channels(wt_ptr, tap * C_out + co, c_mask, VEC)
                acc += gv.to(tl.float32) * wv.to(tl.float32)[None, :]
    return acc


@triton.jit
def _dw_conv3d_bwd_input_kernel(
    g_ptr, wt_ptr, gx_ptr,
    CV, D, H, W, DO, HO, WO, P,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    str_d, str_h, str_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, MULT: tl.constexpr,
    UNROLL: tl.constexpr, CHANNELS_LAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_x[n, c, i] = sum over taps k with (i + pad - k*dil) / stride = o exact and in range
    of grad_z[n, c*MULT + j, o] * wt[k, c*MULT + j]. P counts input positions, C = CV * VEC
    input channels."""
    tl.static_assert(BLOCK_C % VEC == 0)
    C = CV * VEC
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = p < P
    c_mask = c < C
    pc_mask = p_mask[:, None] & c_mask[None, :]
    n, idd, ih, iw = _split_position(p, D, H, W)
    g_n = n.to(tl.int64) * sgn
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if UNROLL:
        for kt in tl.static_range(KT):
            td = idd + pad_d - kt * dil_d
            od = td // str_d
            m_d = p_mask & (td >= 0) & (od * str_d == td) & (od < DO)
            acc = _bwd_input_plane(acc, g_ptr, g_n + od.to(tl.int64) * sgd, pc_mask, m_d, ih, iw,
                                   HO, WO, sgh, sgw, sgc, str_h, str_w, pad_h, pad_w, dil_h,
                                   dil_w, wt_ptr, kt * (KH * KW), c, c_mask, C * MULT, KH, KW,
                                   MULT, VEC)
    else:
        for kt in range(KT):
            td = idd + pad_d - kt * dil_d
            od = td // str_d
            m_d = p_mask & (td >= 0) & (od * str_d == td) & (od < DO)
            acc = _bwd_input_plane(acc, g_ptr, g_n + od.to(tl.int64) * sgd, pc_mask, m_d, ih, iw,
                                   HO, WO, sgh, sgw, sgc, str_h, str_w, pad_h, pad_w, dil_h,
                                   dil_w, wt_ptr, kt * (KH * KW), c, c_mask, C * MULT, KH, KW,
                                   MULT, VEC)
    x_off = ((n.to(tl.int64) * sxn + idd.to(tl.int64) * sxd + ih.to(tl.int64) * sxh
              + iw.to(tl.int64) * sxw)[:, None] + c.to(tl.int64)[None, :] * sxc)
    _store_tile(gx_ptr, x_off, acc, pc_mask, VEC)


_dw_conv3d_bwd_input = triton.autotune(**_AUTOTUNE)(_dw_conv3d_bwd_input_kernel)


@triton.jit
def _dw_conv3d_bwd_weight_partial_kernel(
    g_ptr, x_ptr, part_ptr,
    CV, D, H, W, DO, HO, WO, P, TILES_PER_CHUNK,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    str_d, str_h, str_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, MULT: tl.constexpr,
    VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Stage 1: part[chunk, tap, c] = sum over the chunk's output positions of
    grad_z[.., c, o] * x[.., c // MULT, o * stride - pad + tap * dil] (C = CV * VEC output
    channels)."""
    tl.static_assert(BLOCK_C % VEC == 0)
    C = CV * VEC
    tap = tl.program_id(0)
    pid_c = tl.program_id(1)
    chunk = tl.program_id(2)
    kt = tap // (KH * KW)
    kh = (tap // KW) % KH
    kw = tap % KW
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    if MULT == 1:
        ci = c
    else:
        ci = c // MULT
    g_col = c.to(tl.int64)[None, :] * sgc
    x_col = ci.to(tl.int64)[None, :] * sxc
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(TILES_PER_CHUNK):
        p = (chunk * TILES_PER_CHUNK + i) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < P
        n, od, oh, ow = _split_position(p, DO, HO, WO)
        n64 = n.to(tl.int64)
        g_row = n64 * sgn + od.to(tl.int64) * sgd + oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw
        idd = od * str_d - pad_d + kt * dil_d
        ih = oh * str_h - pad_h + kh * dil_h
        iw = ow * str_w - pad_w + kw * dil_w
        m = p_mask & (idd >= 0) & (idd < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_row = (n64 * sxn + idd.to(tl.int64) * sxd + ih.to(tl.int64) * sxh
                 + iw.to(tl.int64) * sxw)
        gv = _load_tile(g_ptr, g_row[:, None] + g_col, p_mask[:, None] & c_mask[None, :], VEC)
        xv = _load_tile(x_ptr, x_row[:, None] + x_col, m[:, None] & c_mask[None, :], VEC)
        acc += gv.to(tl.float32) * xv.to(tl.float32)
    part = tl.sum(acc, axis=0)
    taps = KT * KH * KW
    tl.store(part_ptr + ((chunk * taps + tap).to(tl.int64) * C + c), part, mask=c_mask)


@triton.jit
def _dw_conv3d_bwd_weight_reduce_kernel(
    part_ptr, gw_ptr, C, NUM_CHUNKS,
    swc, swt, swh, sww,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr,
):
    """Stage 2: grad_weight[c, 0, kt, kh, kw] = sum of part[:, tap, c], chunk by chunk in
    order."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # tap * C + c
    total = KT * KH * KW * C
    mask = idx < total
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(NUM_CHUNKS):
        acc += tl.load(part_ptr + (k * total + idx), mask=mask, other=0.0)
    tap = idx // C
    c = idx % C
    kt = tap // (KH * KW)
    kh = (tap // KW) % KH
    kw = tap % KW
    off = c * swc + kt * swt + kh * swh + kw * sww
    tl.store(gw_ptr + off, acc.to(gw_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# launchers


def _triple(v) -> Tuple[int, int, int]:
    t = tuple(int(i) for i in v)
    if len(t) == 1:
        t = t * 3
    return t  # type: ignore[return-value]


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _is_channels_last(t: torch.Tensor) -> bool:
    from ..backends import output_memory_format

    return output_memory_format(t) == torch.channels_last_3d


def _geometry(input, weight, stride, padding, dilation):
    N, C_in, D, H, W = input.shape
    C_out, _, KT, KH, KW = weight.shape
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    DO = _out_size(D, KT, stride[0], padding[0], dilation[0])
    HO = _out_size(H, KH, stride[1], padding[1], dilation[1])
    WO = _out_size(W, KW, stride[2], padding[2], dilation[2])
    return (N, C_in, C_out, D, H, W, DO, HO, WO, KT, KH, KW), stride + padding + dilation


def _vector_width(tiles: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor],
                  channels: Sequence[int]) -> int:
    """The VEC of the kernels (see the comment above the kernels): the largest number of
    elements, at most 16 bytes, such that every 5-D ``tiles`` tensor has unit channel stride and
    its other strides are multiples of it, every tensor's address is aligned to it, and it
    divides every channel count. 1 (no vectors) for NCDHW."""
    if any(t.stride(1) != 1 for t in tiles):
        return 1
    vec = 16 // tiles[0].element_size()
    while vec > 1:
        if (all(ch % vec == 0 for ch in channels)
                and all(t.data_ptr() % (vec * t.element_size()) == 0
                        for t in list(tiles) + list(vectors))
                and all(s % vec == 0 for t in tiles for i, s in enumerate(t.stride()) if i != 1)):
            return vec
        vec //= 2
    return 1


def _taps_by_channel(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a contiguous (taps, C_out) matrix: a tap's channels are then one vector
    load in channels_last (a tiny copy, C_out * taps elements)."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def depthwise_conv3d_bn_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    activation: str,
    residual: Optional[torch.Tensor],
) -> torch.Tensor:
    """``act(depthwise_conv3d(input, weight) * scale + shift [+ residual])``.

    ``weight`` is ``(C_in * M, 1, kT, kH, kW)`` (``groups == C_in``, any integer channel
    multiplier ``M``). Inputs are validated by the operator (same dtype and device, residual of
    the output's size); the output is in :func:`videoconv.backends.output_memory_format` of
    ``input`` and in its dtype.
    """
    from ..backends import empty_output

    (N, C_in, C_out, D, H, W, DO, HO, WO, KT, KH, KW), conv = _geometry(
        input, weight, stride, padding, dilation)
    y = empty_output(input, (N, C_out, DO, HO, WO))
    P = N * DO * HO * WO
    if y.numel() == 0:
        return y
    mult = C_out // C_in
    wt = _taps_by_channel(weight)
    scale = scale.contiguous()
    shift = shift.contiguous()
    res = residual if residual is not None else y  # never read without HAS_RES
    channels_last = _is_channels_last(input)
    tiles = [input, y] + ([residual] if residual is not None else [])
    vec = (_vector_width(tiles, [wt, scale, shift], [C_in, C_out])
           if channels_last and mult == 1 else 1)

    def grid(meta):
        return (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(C_out, meta["BLOCK_C"]))

    _dw_conv3d_bn_act_fwd[grid](
        input, wt, scale, shift, res, y,
        C_out // vec, D, H, W, DO, HO, WO, P,
        *input.stride(), *res.stride(), *y.stride(), *conv,
        KT=KT, KH=KH, KW=KW, MULT=mult, ACT=activation_code(activation),
        HAS_RES=residual is not None, UNROLL=KT * KH * KW <= _MAX_UNROLLED_TAPS,
        CHANNELS_LAST=channels_last, VEC=vec,
    )
    return y


def _weight_grad_chunks(n_tiles: int, programs_per_chunk: int,
                        target: Optional[int] = None) -> Tuple[int, int]:
    """(number of chunks, tiles per chunk) of the weight-gradient reduction: a function of the
    shape only, so the summation order (hence the bits) never varies between runs."""
    target = _WGRAD_TARGET_PROGRAMS if target is None else target
    chunks = max(1, min(n_tiles, target // max(1, programs_per_chunk)))
    tiles_per_chunk = triton.cdiv(n_tiles, chunks)
    return triton.cdiv(n_tiles, tiles_per_chunk), tiles_per_chunk


def depthwise_conv3d_backward(
    grad_z: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    output_mask: Sequence[bool],
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(grad_input, grad_weight) of ``z = depthwise_conv3d(input, weight)`` given ``grad_z``.

    Each is ``None`` where ``output_mask`` (two bools) says it is not needed. ``grad_input`` is
    in ``input``'s layout (:func:`videoconv.backends.output_memory_format`) and dtype,
    ``grad_weight`` in ``weight``'s dtype and strides. ``grad_z`` may have any strides (it is
    fastest in ``input``'s layout). Both are deterministic: no atomics, and a summation order
    that depends on the shape only.
    """
    from ..backends import empty_output

    need_input, need_weight = bool(output_mask[0]), bool(output_mask[1])
    (N, C_in, C_out, D, H, W, DO, HO, WO, KT, KH, KW), conv = _geometry(
        input, weight, stride, padding, dilation)
    mult = C_out // C_in
    channels_last = _is_channels_last(input)
    taps = KT * KH * KW
    grad_input = grad_weight = None

    if need_input:
        grad_input = empty_output(input, input.shape)
        P_in = N * D * H * W
        if grad_input.numel():
            if grad_z.numel() == 0:  # an empty output used no input position
                grad_input.zero_()
            else:
                wt = _taps_by_channel(weight)
                vec = (_vector_width([grad_z, grad_input], [wt], [C_in])
                       if channels_last and mult == 1 else 1)

                def grid(meta):
                    return (triton.cdiv(P_in, meta["BLOCK_P"]),
                            triton.cdiv(C_in, meta["BLOCK_C"]))

                _dw_conv3d_bwd_input[grid](
                    grad_z, wt, grad_input,
                    C_in // vec, D, H, W, DO, HO, WO, P_in,
                    *grad_z.stride(), *grad_input.stride(), *conv,
                    KT=KT, KH=KH, KW=KW, MULT=mult, UNROLL=taps <= _MAX_UNROLLED_TAPS,
                    CHANNELS_LAST=channels_last, VEC=vec,
                )

    if need_weight:
        grad_weight = torch.empty_like(weight)
        P = N * DO * HO * WO
        if P == 0:
            grad_weight.zero_()
        else:
            block_p, block_c, warps = _WGRAD_TILE_CL if channels_last else _WGRAD_TILE_NC
            vec = (_vector_width([grad_z, input], [], [C_in, block_c])
                   if channels_last and mult == 1 else 1)
            c_blocks = triton.cdiv(C_out, block_c)
            chunks, tiles_per_chunk = _weight_grad_chunks(triton.cdiv(P, block_p),
                                                          taps * c_blocks)
            part = torch.empty((chunks, taps, C_out), dtype=torch.float32, device=input.device)
            _dw_conv3d_bwd_weight_partial_kernel[(taps, c_blocks, chunks)](
                grad_z, input, part,
                C_out // vec, D, H, W, DO, HO, WO, P, tiles_per_chunk,
                *grad_z.stride(), *input.stride(), *conv,
                KT=KT, KH=KH, KW=KW, MULT=mult, VEC=vec, BLOCK_P=block_p, BLOCK_C=block_c,
                num_warps=warps, num_stages=1,
            )
            gw_strides = (grad_weight.stride(0),) + tuple(grad_weight.stride()[2:])
            _dw_conv3d_bwd_weight_reduce_kernel[(triton.cdiv(taps * C_out, _REDUCE_BLOCK),)](
                part, grad_weight, C_out, chunks, *gw_strides,
                KT=KT, KH=KH, KW=KW, BLOCK=_REDUCE_BLOCK, num_warps=4, num_stages=1,
            )
    return grad_input, grad_weight


def not_supported_reasons(input, weight, stride, padding, dilation, groups, **_) -> List[str]:
    """Why these kernels cannot run this convolution (empty if they can).

    Any integer channel multiplier (``C_out = M * C_in``) is supported.
    """
    reasons = list(environment_reasons())
    if isinstance(input, torch.Tensor):
        if input.dtype not in _DTYPES:
            reasons.append(f"dtype {str(input.dtype).replace('torch.', '')} is not supported "
                           "(float32, float16, bfloat16)")
        if not INTERPRET and input.device.type != "cuda":
            reasons.append(f"device {input.device.type} is not supported (needs cuda, or "
                           "TRITON_INTERPRET=1 for CPU tensors)")
        if input.dim() == 5 and isinstance(weight, torch.Tensor) and weight.dim() == 5:
            c_in, c_out = input.shape[1], weight.shape[0]
            if groups != c_in or weight.shape[1] != 1:
                reasons.append(f"not a depthwise convolution (groups={groups}, {c_in} input "
                               "channels): only groups == input channels is supported")
            elif c_out % c_in != 0:
                reasons.append(f"{c_out} output channels are not a multiple of the {c_in} "
                               "input channels")
            else:
                (N, _, _, D, H, W, DO, HO, WO, _, _, _), _ = _geometry(
                    input, weight, stride, padding, dilation)
                if max(N * DO * HO * WO, N * D * H * W) >= 2 ** 31:
                    reasons.append("more than 2**31 - 1 positions (N*D*H*W)")
                if c_out > 65535:  # NCDHW programs own one channel: the grid's y-limit
                    reasons.append(f"{c_out} channels (at most 65535)")
    return reasons


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile variants


def _ints(names: str):
    return {name: "i32" for name in names.split()}


def _without(signature, names):
    return {k: v for k, v in signature.items() if k not in names}


_CONV_ARGS = " str_d str_h str_w pad_d pad_h pad_w dil_d dil_h dil_w"
_CL_UNIT = ("sxc", "syc", "src", "sgc")  # channel strides: 1 in channels_last
_NC_UNIT = ("sxw", "syw", "srw", "sgw")  # W strides: 1 in NCDHW


def _layout_specialisation(signature, channels_last):
    """Mirror Triton's run-time specialisation of unit strides into constants."""
    unit = [k for k in (_CL_UNIT if channels_last else _NC_UNIT) if k in signature]
    return _without(signature, unit), {k: 1 for k in unit}


def aot_variants() -> List[AotVariant]:
    """The kernels as a GPU runs them on the X3D block (3x3x3, stride (1,2,2), relu, residual):
    every autotune config of the forward and input-gradient kernels in bfloat16 channels_last
    with 16-byte vectors (VEC=8), the NCDHW configs in float32 (forward: all; input gradient:
    the first), the two fixed weight-gradient kernels and the reduction.
    """
    variants: List[AotVariant] = []
    fwd_sig = _ints("CV D H W DO HO WO P sxn sxc sxd sxh sxw srn src srd srh srw "
                    "syn syc syd syh syw" + _CONV_ARGS)
    bwd_sig = _ints("CV D H W DO HO WO P sgn sgc sgd sgh sgw sxn sxc sxd sxh sxw" + _CONV_ARGS)
    wgrad_sig = _ints("CV D H W DO HO WO P TILES_PER_CHUNK sgn sgc sgd sgh sgw "
                      "sxn sxc sxd sxh sxw" + _CONV_ARGS)
    geometry = {"KT": 3, "KH": 3, "KW": 3, "MULT": 1, "str_d": 1}
    unroll = 27 <= _MAX_UNROLLED_TAPS
    runs = ([(tile, "bf16", True, True) for tile in _CL_TILES]
            + [(tile, "fp32", False, i == 0) for i, tile in enumerate(_NC_TILES)])
    for (bp, bc, warps), dt, cl, with_bwd in runs:
        layout, vec = ("cl", 8) if cl else ("ncdhw", 1)
        tile = {"BLOCK_P": bp, "BLOCK_C": bc, "CHANNELS_LAST": cl, "VEC": vec, "UNROLL": unroll}
        suffix = f"{layout}_{dt}_3x3x3_p{bp}_c{bc}_w{warps}"
        sig, unit = _layout_specialisation(fwd_sig, cl)
        sig.update({k: f"*{dt}" for k in ("x_ptr", "wt_ptr", "scale_ptr", "shift_ptr", "res_ptr",
                                          "y_ptr")})
        variants.append(AotVariant(
            name=f"dw_conv3d_fwd_res_relu_{suffix}", fn=_dw_conv3d_bn_act_fwd_kernel,
            signature=sig, constexprs={**unit, **geometry, **tile, "ACT": 1, "HAS_RES": True},
            num_warps=warps, num_stages=1))
        if with_bwd:
            sig, unit = _layout_specialisation(bwd_sig, cl)
            sig.update({k: f"*{dt}" for k in ("g_ptr", "wt_ptr", "gx_ptr")})
            variants.append(AotVariant(
                name=f"dw_conv3d_bwd_input_{suffix}", fn=_dw_conv3d_bwd_input_kernel,
                signature=sig, constexprs={**unit, **geometry, **tile},
                num_warps=warps, num_stages=1))
    for (bp, bc, warps), dt, cl in ((_WGRAD_TILE_CL, "bf16", True),
                                    (_WGRAD_TILE_NC, "fp32", False)):
        layout, vec = ("cl", 8) if cl else ("ncdhw", 1)
        sig, unit = _layout_specialisation(wgrad_sig, cl)
        sig.update({"g_ptr": f"*{dt}", "x_ptr": f"*{dt}", "part_ptr": "*fp32"})
        variants.append(AotVariant(
            name=f"dw_conv3d_bwd_weight_partial_{layout}_{dt}_3x3x3_p{bp}_c{bc}_w{warps}",
            fn=_dw_conv3d_bwd_weight_partial_kernel, signature=sig,
            constexprs={**unit, **geometry, "VEC": vec, "BLOCK_P": bp, "BLOCK_C": bc},
            num_warps=warps, num_stages=1))
    variants.append(AotVariant(
        name="dw_conv3d_bwd_weight_reduce_bf16_3x3x3", fn=_dw_conv3d_bwd_weight_reduce_kernel,
        signature={"part_ptr": "*fp32", "gw_ptr": "*bf16", **_ints("C NUM_CHUNKS swc swt swh")},
        constexprs={"sww": 1, "KT": 3, "KH": 3, "KW": 3, "BLOCK": _REDUCE_BLOCK},
        num_warps=4, num_stages=1))
    return variants
