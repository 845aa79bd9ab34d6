"""Triton ``conv3d_bn_act``: an implicit-GEMM 3D convolution with the folded BatchNorm, the
residual and the activation fused into its epilogue.

Algorithm
---------
The convolution is the matrix product ``Z[M, N] = A[M, K] @ B[K, N]`` per group, where

* ``M = N_batch * D_out * H_out * W_out`` are the output positions (rows),
* ``N = C_out / groups`` are the output channels of the group (columns),
* ``K = kT * kH * kW * C_in / groups`` is the reduction, ordered ``(kd, kh, kw, c)`` with the
  channel innermost (the inductor conv template's order over NDHWC, and CUTLASS's).

``A`` is never materialised ("implicit" GEMM): each ``[BLOCK_M, BLOCK_K]`` tile is gathered
straight from the input with its strides, the zero padding becoming a load mask. NCDHW inputs
go through the same code with their own strides: no transpose pass over the activation. The
weight *is* materialised, once per call, as ``(groups, K, W_N)`` (``C_out/g`` padded to a
multiple of 8, ``W_N``, so rows start 16-byte aligned): it is small next to the activations,
and that order makes every ``B`` tile ``BLOCK_K`` contiguous, vectorised rows.

The reduction runs as ONE flat loop (not nested loops over taps and channel blocks) so that
Triton's software pipeliner (``num_stages``) overlaps the loads of step ``i + 1`` with the
``tl.dot`` of step ``i`` across tap boundaries; a nested loop would only pipeline the innermost
channel loop, which has one or two steps for most layers. Two ways of walking K, picked per
call (``FLAT_K``):

* channel-blocked (``FLAT_K=False``): step ``i`` is tap ``i // n_cb``, channel block
  ``i % n_cb``; the tap's bounds check is one ``[BLOCK_M]`` mask and its address offset one
  scalar. A ``C_in/groups`` that is not a multiple of ``BLOCK_K`` (3, 230, 460, 921 in
  torchvision's r2plus1d) is handled by masking the channel tail.
* flat (``FLAT_K=True``): step ``i`` covers ``K`` indices ``[i*BLOCK_K, (i+1)*BLOCK_K)``, each
  decoded into ``(kd, kh, kw, c)``. Used when the channel tail would waste over a quarter of
  the tile: the RGB stem (``C_in = 3``), small grouped/depthwise convolutions. One tile then
  spans several taps, so no lane is idle.

The grid is ``(cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N), groups)`` with the N tile varying fastest:
programs launched together read the same ``A`` rows (an L2 hit for all but the first), and the
group axis makes grouped convolutions a grouped GEMM with per-group ``C_in/g`` and ``C_out/g``.

Numerics
--------
Operands are loaded in the input dtype and multiplied by ``tl.dot`` with float32 accumulation
(float16/bfloat16 tensor cores; TF32 for float32 only when ``torch.backends.cudnn.allow_tf32``
allows it, as eager ``nn.Conv3d`` does, else exact float32). The epilogue
``act(acc * scale + shift [+ residual])`` is computed on the float32 accumulator and rounded
once to the output dtype by the single store: unlike the eager chain, the convolution result is
never rounded to 16 bits before the BatchNorm, so 16-bit outputs are at least as accurate.

Tile layouts (what decides registers and coalescing)
------------------------------------------------------
Triton lays a loaded/stored tile out from what it can prove about its addresses; a thread then
holds ``elements / (lanes * warps)`` of it, and every distinct *row* a thread holds costs a
decoded output position and a 64-bit address. Hence two orientations, chosen per tensor by the
launcher (:func:`channel_vector`) and specialised at compile time:

* vectorised, row-major (``X_VEC`` / ``OUT_VEC`` / ``RES_VEC > 1``): channels_last_3d tensors
  whose channel runs provably start aligned (C/g, the strides and the base address multiples of
  the vector width). The kernel states the alignment with ``tl.multiple_of`` and loads/stores
  up to 16 bytes of consecutive channels per instruction (``cp.async`` for the mainloop);
  a warp covers several rows, so a thread holds few.
* element-wise, K/N-major (width 1): NCDHW tensors and unaligned channels_last ones (the RGB
  stem, C = 230, 921). The tile is built transposed, ``[BLOCK_K, BLOCK_M]`` /
  ``[BLOCK_N, BLOCK_M]``, so that lanes run along the output positions (the contiguous W
  direction of an NCDHW tensor) and each thread holds only ``BLOCK_M / 32`` rows. The channel
  strides are passed unspecialised for this: a provably unit channel stride would make Triton
  spread lanes along the channels of one row instead (dozens of rows per thread: spills).
  Element-wise epilogues are limited to 32 outputs per thread by the config pruning.

The flat K walk always gathers element-wise (a tile spans several taps). Through the reduction
each A row keeps two values live: its int64 base offset and a 32-bit mask of which ``kd``,
``kh``, ``kw`` land inside the input; the position is decoded again for the epilogue.

Indexing
--------
Position/channel indices are int32 (``M < 2**31`` is checked); every activation address is
int64, so tensors of more than ``2**31`` elements are fine.

The output has the input's layout (``videoconv.backends.output_memory_format``): NCDHW in,
NCDHW out; channels_last_3d in, channels_last_3d out. The store goes through the output's
strides and the residual load through the residual's (any layout works for the residual).

Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors with a single small configuration;
bfloat16 ``tl.dot`` operands are upcast to float32 there only (``UPCAST_DOT``), working around
the interpreter's bfloat16 dot (triton-lang/triton#11584).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, AotVariant, activation_code, apply_activation, environment_reasons

__all__ = ["conv3d_bn_act", "not_supported_reasons", "aot_variants"]

_INT32_MAX = 2**31 - 1
#: CUDA limit on gridDim.y (the group axis).
_MAX_GRID_Y = 65535

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for sm_80 / sm_90. Large square tiles for
# the wide layers, tall tiles (many output positions, few channels) for the narrow ones and for
# the early high-resolution layers, and BLOCK_N = 16 for small per-group widths (grouped
# convolutions, depthwise through this kernel). BLOCK_K = 32 keeps 3-4 stages of 16-bit tiles
# well inside sm_80's 163 KiB of shared memory; 64 halves the loop count when C_in is large.
_GPU_CONFIGS: Tuple[Tuple[int, int, int, int, int], ...] = (
    (128, 128, 32, 8, 3),
    (256, 64, 32, 8, 3),
    (128, 64, 32, 4, 4),
    (128, 64, 64, 8, 3),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 4, 3),
    (128, 32, 32, 4, 4),
    (128, 16, 32, 4, 3),
    (256, 16, 16, 4, 3),
)
# The interpreter executes one program at a time with numpy: one config, big enough that a tiny
# test shape takes a handful of programs, small enough that BLOCK_N/BLOCK_K tails get exercised
# by channel counts of 3..24.
_INTERPRET_CONFIG = (64, 16, 16, 4, 1)
#: Largest tile, in outputs per thread, for the element-wise (transposed) epilogue.
_MAX_SCALAR_OUTPUTS_PER_THREAD = 32
# A row-major epilogue tile puts BLOCK_N / OUT_VEC lanes (at most 32) on the channels of a row:
# with vectors of 4 or more no config leaves a thread more than 16 rows (each a 64-bit address
# and a decoded position); with 2, up to 32, where 255 registers were measured. Narrower
# outputs take the element-wise epilogue.
_MIN_EPILOGUE_VEC = 4


def _config_table() -> Tuple[Tuple[int, int, int, int, int], ...]:
    return (_INTERPRET_CONFIG,) if INTERPRET else _GPU_CONFIGS


def _configs() -> List[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in _config_table()
    ]


def _prune_configs(configs, named_args, **kwargs):
    """Drop the configs that cannot pay off for this call (at least one always survives):

    * tiles far wider than the problem: a BLOCK_N above the per-group width only adds masked
      columns, a BLOCK_M above M only masked rows;
    * with an element-wise (transposed) epilogue (``OUT_VEC == 1``: NCDHW or unaligned output),
      tiles of more than 32 outputs per thread: each output then has its own 64-bit address, and
      with a residual larger tiles spill (measured with ``ptxas -v``, sm_80 and sm_90).
    """
    n_cap = max(16, triton.next_power_of_2(int(named_args["C_OUT_G"])))
    m_cap = max(64, triton.next_power_of_2(int(named_args["M"])))
    scalar_epilogue = kwargs.get("OUT_VEC", 1) == 1

    def keep(c):
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if bn > n_cap or bm > m_cap:
            return False
        return not (scalar_epilogue and bm * bn > _MAX_SCALAR_OUTPUTS_PER_THREAD * 32 * c.num_warps)

    kept = [c for c in configs if keep(c)]
    if kept:
        return kept
    return [min(configs, key=lambda c: (c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_M"] / c.num_warps))]


def use_flat_k(c_in_g: int, block_k: int) -> bool:
    """Walk K flat (several taps per tile) when blocking by channel would leave more than a
    quarter of each ``[BLOCK_M, BLOCK_K]`` tile masked (C_in/groups = 3, 1, 20 with
    BLOCK_K = 32, ...)."""
    padded = triton.cdiv(c_in_g, block_k) * block_k
    return 4 * c_in_g < 3 * padded


@triton.jit
def _taps_ok(bits, kd, kh, kw, KD: tl.constexpr, KH: tl.constexpr):
    """Whether input row(s) with validity ``bits`` (see the kernel) are inside the input at tap
    ``(kd, kh, kw)``: three shifts and ands instead of six compares on three coordinates."""
    return ((bits >> kd) & (bits >> (KD + kh)) & (bits >> (KD + KH + kw)) & 1) != 0


@triton.jit
def _decode_rows(offs_m, D_OUT, H_OUT, W_OUT):
    ow = offs_m % W_OUT
    t = offs_m // W_OUT
    oh = t % H_OUT
    t = t // H_OUT
    return t // D_OUT, t % D_OUT, oh, ow


@triton.jit
def _row_offsets(offs_m, D_OUT, H_OUT, W_OUT, stride_n, stride_d, stride_h, stride_w):
    """int64 offset of output position ``offs_m`` (channel 0) in a tensor with these strides."""
    nb, od, oh, ow = _decode_rows(offs_m, D_OUT, H_OUT, W_OUT)
    return (nb.to(tl.int64) * stride_n + od.to(tl.int64) * stride_d
            + oh.to(tl.int64) * stride_h + ow.to(tl.int64) * stride_w)


@triton.jit
def _implicit_gemm_tile(
    x_ptr, w_ptr, offs_m, offs_n, g, M, C_IN_G, W_N,
    D, H, W, D_OUT, H_OUT, W_OUT,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    STRIDE_D, STRIDE_H, STRIDE_W,
    PAD_D, PAD_H, PAD_W,
    DIL_D, DIL_H, DIL_W,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    FLAT_K: tl.constexpr,
    X_VEC: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The mainloop: the float32 ``[BLOCK_M, BLOCK_N]`` accumulator of output rows ``offs_m``
    and columns ``offs_n`` (channels within group ``g``) of the implicit GEMM. Shared, inlined,
    by this kernel and the statistics kernel (videoconv/triton/conv3d_bn_stats.py), which differ
    only in their epilogues. See ``_conv3d_bn_act_fwd_kernel`` for ``X_VEC``/``FLAT_K``."""
    # Divisibility the launcher guarantees, restated so that the compiler can prove it (the
    # values are unchanged): C_in/g a multiple of X_VEC, the packed weight's rows a multiple of 8.
    C_IN_G = (C_IN_G // X_VEC) * X_VEC
    W_N = (W_N // 8) * 8
    X_BYTES: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth // 8
    offs_k = tl.arange(0, BLOCK_K)

    # Per output row only two values stay live through the reduction: the int64 offset of input
    # element (n, group's first channel, id0, ih0, iw0) (possibly "before" the tensor for padded
    # rows, which are masked), and ``bits``: whether each kd (bits 0..KD-1), kh (next KH bits)
    # and kw (next KW bits) lands inside the input for that row, 0 for rows past M.
    nb, od, oh, ow = _decode_rows(offs_m, D_OUT, H_OUT, W_OUT)
    id0 = od * STRIDE_D - PAD_D
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_rows = (nb.to(tl.int64) * stride_xn + (g * C_IN_G).to(tl.int64) * stride_xc
              + id0.to(tl.int64) * stride_xd + ih0.to(tl.int64) * stride_xh
              + iw0.to(tl.int64) * stride_xw)
    bits = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for i in tl.static_range(KD):
        p = id0 + i * DIL_D
        bits |= ((p >= 0) & (p < D)).to(tl.int32) << i
    for i in tl.static_range(KH):
        p = ih0 + i * DIL_H
        bits |= ((p >= 0) & (p < H)).to(tl.int32) << (KD + i)
    for i in tl.static_range(KW):
        p = iw0 + i * DIL_W
        bits |= ((p >= 0) & (p < W)).to(tl.int32) << (KD + KH + i)
    bits = tl.where(offs_m < M, bits, 0)

    K_TOTAL = KD * KH * KW * C_IN_G
    w_base = w_ptr + g.to(tl.int64) * K_TOTAL * W_N
    mask_wn = offs_n < W_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT_K:
        for k0 in range(0, K_TOTAL, BLOCK_K):
            k = k0 + offs_k
            mask_k = k < K_TOTAL
            c = k % C_IN_G
            tap = k // C_IN_G
            kw = tap % KW
            kh = (tap // KW) % KH
            kd = tap // (KW * KH)
            cols = (c.to(tl.int64) * stride_xc + (kd * DIL_D).to(tl.int64) * stride_xd
                    + (kh * DIL_H).to(tl.int64) * stride_xh + (kw * DIL_W).to(tl.int64) * stride_xw)
            ok = _taps_ok(bits[None, :], kd[:, None], kh[:, None], kw[:, None], KD, KH)
            a = tl.trans(tl.load(x_ptr + (cols[:, None] + x_rows[None, :]),
                                 mask=ok & mask_k[:, None], other=0.0))
            b_ptrs = tl.multiple_of(w_base + k[:, None] * W_N + offs_n[None, :], [1, 16])
            b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_wn[None, :], other=0.0)
            if UPCAST_DOT:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        n_cb = tl.cdiv(C_IN_G, BLOCK_K)
        for step in range(0, KD * KH * KW * n_cb):
            tap = step // n_cb
            c = (step - tap * n_cb) * BLOCK_K + offs_k
            kw = tap % KW
            kh = (tap // KW) % KH
            kd = tap // (KW * KH)
            mask_c = c < C_IN_G
            row_ok = _taps_ok(bits, kd, kh, kw, KD, KH)
            tap_off = ((kd * DIL_D).to(tl.int64) * stride_xd + (kh * DIL_H).to(tl.int64) * stride_xh
                       + (kw * DIL_W).to(tl.int64) * stride_xw)
            if X_VEC > 1:
                a_ptrs = x_ptr + (x_rows[:, None] + (tap_off + c)[None, :])
                a_ptrs = tl.multiple_of(a_ptrs, [1, X_VEC * X_BYTES])
                a = tl.load(a_ptrs, mask=row_ok[:, None] & mask_c[None, :], other=0.0)
            else:
                cols = tap_off + c.to(tl.int64) * stride_xc
                a = tl.trans(tl.load(x_ptr + (cols[:, None] + x_rows[None, :]),
                                     mask=mask_c[:, None] & row_ok[None, :], other=0.0))
            b_ptrs = tl.multiple_of(w_base + (tap * C_IN_G + c)[:, None] * W_N + offs_n[None, :],
                                    [1, 16])
            b = tl.load(b_ptrs, mask=mask_c[:, None] & mask_wn[None, :], other=0.0)
            if UPCAST_DOT:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


# Channel strides are not specialised to the constant 1 (see "Tile layouts" above): where the
# kernel relies on a unit channel stride (X_VEC/OUT_VEC/RES_VEC > 1) it uses the literal 1.
@triton.jit(do_not_specialize=["stride_xc", "stride_rc", "stride_oc"])
def _conv3d_bn_act_fwd_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr,
    M, C_IN_G, C_OUT_G, W_N,
    D, H, W, D_OUT, H_OUT, W_OUT,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_rn, stride_rc, stride_rd, stride_rh, stride_rw,
    stride_on, stride_oc, stride_od, stride_oh, stride_ow,
    STRIDE_D, STRIDE_H, STRIDE_W,
    PAD_D, PAD_H, PAD_W,
    DIL_D, DIL_H, DIL_W,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    FLAT_K: tl.constexpr,
    X_VEC: tl.constexpr,
    OUT_VEC: tl.constexpr,
    RES_VEC: tl.constexpr,
    RES_LIKE_OUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_N]`` output tile of group ``program_id(1)``.

    ``X_VEC > 1``: the input's channel stride is 1 and every channel run starts aligned to
    ``X_VEC`` elements, so A tiles are gathered row-major with ``X_VEC``-wide loads; else (and
    always in the flat walk) they are gathered K-major (transposed), lanes along the output
    positions. ``OUT_VEC`` / ``RES_VEC`` say the same of the output / residual for the epilogue;
    ``RES_LIKE_OUT``: the residual has the output's strides, so both share one set of offsets.
    The launcher checks every one of these promises.
    """
    pid = tl.program_id(0)
    g = tl.program_id(1)
    num_n = tl.cdiv(C_OUT_G, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n

    X_BYTES: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth // 8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _implicit_gemm_tile(
        x_ptr, w_ptr, offs_m, offs_n, g, M, C_IN_G, W_N, D, H, W, D_OUT, H_OUT, W_OUT,
        stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
        STRIDE_D, STRIDE_H, STRIDE_W, PAD_D, PAD_H, PAD_W, DIL_D, DIL_H, DIL_W,
        KD, KH, KW, FLAT_K, X_VEC, INPUT_PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_K)

    # Epilogue on the float32 accumulator; one rounding, in the store. Output positions are
    # decoded again here, in the store's layout, rather than kept live through the loop.
    co = g * C_OUT_G + offs_n
    mask_n = offs_n < C_OUT_G
    scale = tl.load(scale_ptr + co, mask=mask_n, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + co, mask=mask_n, other=0.0).to(tl.float32)
    u = acc * scale[None, :] + shift[None, :]
    o_rows = _row_offsets(offs_m, D_OUT, H_OUT, W_OUT, stride_on, stride_od, stride_oh,
                          stride_ow)
    if OUT_VEC > 1:
        # Row-major tile, OUT_VEC-wide stores along the (unit-stride) channels.
        C_OUT_V = (C_OUT_G // OUT_VEC) * OUT_VEC
        co = g * C_OUT_V + offs_n
        mask = (offs_m < M)[:, None] & (offs_n < C_OUT_V)[None, :]
        o_offs = o_rows[:, None] + co[None, :]
        if HAS_RESIDUAL:
            if RES_LIKE_OUT:
                r_ptrs = tl.multiple_of(res_ptr + o_offs, [1, OUT_VEC * X_BYTES])
                r = tl.load(r_ptrs, mask=mask, other=0.0)
            elif RES_VEC > 1:
                r_rows = _row_offsets(offs_m, D_OUT, H_OUT, W_OUT,
                                      stride_rn, stride_rd, stride_rh, stride_rw)
                r_ptrs = tl.multiple_of(res_ptr + (r_rows[:, None] + co[None, :]),
                                        [1, RES_VEC * X_BYTES])
                r = tl.load(r_ptrs, mask=mask, other=0.0)
            else:
                r_rows = _row_offsets(offs_m, D_OUT, H_OUT, W_OUT,
                                      stride_rn, stride_rd, stride_rh, stride_rw)
                r_ptrs = res_ptr + ((co.to(tl.int64) * stride_rc)[:, None] + r_rows[None, :])
                r = tl.trans(tl.load(r_ptrs, mask=tl.trans(mask), other=0.0))
            u = u + r.to(tl.float32)
        u = apply_activation(u, ACT)
        o_ptrs = tl.multiple_of(out_ptr + o_offs, [1, OUT_VEC * X_BYTES])
        tl.store(o_ptrs, u.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # Transposed tile: lanes along the output positions (the contiguous W direction of an
        # NCDHW output), few rows per thread.
        ut = tl.trans(u)
        mask = (offs_n < C_OUT_G)[:, None] & (offs_m < M)[None, :]
        o_offs = (co.to(tl.int64) * stride_oc)[:, None] + o_rows[None, :]
        if HAS_RESIDUAL:
            if RES_LIKE_OUT:
                r = tl.load(res_ptr + o_offs, mask=mask, other=0.0)
            else:
                r_rows = _row_offsets(offs_m, D_OUT, H_OUT, W_OUT,
                                      stride_rn, stride_rd, stride_rh, stride_rw)
                r = tl.load(res_ptr + ((co.to(tl.int64) * stride_rc)[:, None] + r_rows[None, :]),
                            mask=mask, other=0.0)
            ut = ut + r.to(tl.float32)
        ut = apply_activation(ut, ACT)
        tl.store(out_ptr + o_offs, ut.to(out_ptr.dtype.element_ty), mask=mask)


def _flat_k_heuristic(args: Dict[str, Any]) -> bool:
    return use_flat_k(int(args["C_IN_G"]), int(args["BLOCK_K"]))


# Autotuned per layer shape: the channel widths, the kernel, the stride, M (batch x resolution)
# and how tiles are gathered and stored (X_VEC, OUT_VEC); the autotuner adds the tensors' dtypes
# to the key.
_conv3d_bn_act_fwd = triton.autotune(
    configs=_configs(),
    key=["M", "C_IN_G", "C_OUT_G", "KD", "KH", "KW", "STRIDE_D", "STRIDE_H", "STRIDE_W",
         "X_VEC", "OUT_VEC"],
    prune_configs_by={"early_config_prune": _prune_configs},
    # Persist the winning config on disk (Triton's cache, keyed by this key, the dtypes and the
    # target GPU), so a layer is benchmarked once per machine, not once per process.
    cache_results=True,
)(triton.heuristics({"FLAT_K": _flat_k_heuristic})(_conv3d_bn_act_fwd_kernel))


# ----------------------------------------------------------------------------------------------
# launcher


def _triple(v: Sequence[int]) -> Tuple[int, int, int]:
    a, b, c = (int(x) for x in v)
    return a, b, c


def _output_size(input: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> List[int]:
    spatial = [
        (input.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1)
        // stride[i] + 1
        for i in range(3)
    ]
    return [input.shape[0], weight.shape[0]] + spatial


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not INTERPRET and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def pack_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``(C_out, C_in/g, kT, kH, kW)`` -> ``(g, kT*kH*kW*C_in/g, W_N)``: the GEMM's ``B`` per group,
    rows in the kernel's ``(kd, kh, kw, c)`` order, ``C_out/g`` columns zero-padded to a multiple
    of 8 (``W_N``) so that every row starts 16-byte aligned and loads vectorise."""
    c_out, c_in_g, kd, kh, kw = weight.shape
    c_out_g = c_out // groups
    k = kd * kh * kw * c_in_g
    w_n = triton.cdiv(c_out_g, 8) * 8
    packed = weight.new_zeros(groups, k, w_n)
    w = weight.reshape(groups, c_out_g, c_in_g, kd, kh, kw).permute(0, 3, 4, 5, 2, 1)
    packed[:, :, :c_out_g] = w.reshape(groups, k, c_out_g)
    return packed


def channel_vector(t: torch.Tensor, channels_per_group: int, min_vec: int = 2) -> int:
    """How many consecutive channels of ``t`` the kernel may move as one vector of at most 16
    bytes: ``v > 1`` needs unit channel stride, every other stride, the per-group channel count
    and the base address all multiples of ``v`` (so every run of a group's channels at one
    position starts aligned). 1 (also when the best ``v`` is below ``min_vec``) means "element by
    element, lanes along the output positions"."""
    if t.stride(1) != 1:
        return 1
    elem = t.element_size()
    for vec in (8, 4, 2):
        if vec * elem > 16 or vec < min_vec:
            continue
        if (channels_per_group % vec == 0
                and all(s % vec == 0 for i, s in enumerate(t.stride()) if i != 1)
                and t.data_ptr() % (vec * elem) == 0):
            return vec
    return 1


def conv3d_bn_act(input, weight, scale, shift, stride, padding, dilation, groups, activation,
                  residual):
    """``act(conv3d(input, weight) * scale + shift [+ residual])`` in one Triton kernel.

    Arguments as ``videoconv.ops.conv3d_bn_act`` (already validated; see
    :func:`not_supported_reasons` for what this kernel refuses). Returns a new tensor in the
    input's layout.
    """
    return _launch(input, weight, scale, shift, stride, padding, dilation, groups, activation,
                   residual)


def _launch(input, weight, scale, shift, stride, padding, dilation, groups, activation, residual,
            flat_k: Optional[bool] = None, config: Optional[Tuple[int, int, int, int, int]] = None):
    """The launcher. ``flat_k``/``config`` (``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps,
    num_stages)``) bypass the K-walk heuristic and the autotuner: tests use them to run both
    walks on the same shape, benchmarks to time one configuration."""
    from ..backends import output_memory_format

    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    out_size = _output_size(input, weight, stride, padding, dilation)
    out = torch.empty(out_size, dtype=input.dtype, device=input.device,
                      memory_format=output_memory_format(input))
    n, c_in = input.shape[:2]
    c_out = weight.shape[0]
    _, _, d_out, h_out, w_out = out_size
    m = n * d_out * h_out * w_out
    c_in_g, c_out_g = c_in // groups, c_out // groups

    w_packed = pack_weight(weight, groups)
    scale = scale.contiguous()
    shift = shift.contiguous()
    res = residual if residual is not None else out
    res_strides = residual.stride() if residual is not None else (0, 0, 0, 0, 0)
    args = (
        input, w_packed, scale, shift, res, out,
        m, c_in_g, c_out_g, w_packed.shape[2],
        *input.shape[2:], d_out, h_out, w_out,
        *input.stride(), *res_strides, *out.stride(),
        *stride, *padding, *dilation,
    )
    kwargs = dict(
        KD=weight.shape[2], KH=weight.shape[3], KW=weight.shape[4],
        ACT=activation_code(activation),
        HAS_RESIDUAL=residual is not None,
        X_VEC=channel_vector(input, c_in_g),
        OUT_VEC=channel_vector(out, c_out_g, _MIN_EPILOGUE_VEC),
        RES_VEC=(channel_vector(residual, c_out_g, _MIN_EPILOGUE_VEC)
                 if residual is not None else 1),
        RES_LIKE_OUT=residual is not None and residual.stride() == out.stride(),
        INPUT_PRECISION=_input_precision(input.dtype),
        UPCAST_DOT=INTERPRET and input.dtype == torch.bfloat16,
    )
    # Triton launches on the current CUDA device, not on the tensors' one.
    with torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext():
        if flat_k is None and config is None:
            def grid(meta):
                return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(c_out_g, meta["BLOCK_N"]),
                        groups)

            _conv3d_bn_act_fwd[grid](*args, **kwargs)
            return out
        bm, bn, bk, warps, stages = config if config is not None else _config_table()[0]
        grid = (triton.cdiv(m, bm) * triton.cdiv(c_out_g, bn), groups)
        _conv3d_bn_act_fwd_kernel[grid](
            *args, **kwargs, FLAT_K=use_flat_k(c_in_g, bk) if flat_k is None else flat_k,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
        )
    return out


def not_supported_reasons(input, weight, stride, padding, dilation, groups, **_) -> List[str]:
    """Why this kernel cannot run these inputs (empty if it can)."""
    reasons = list(environment_reasons())
    if isinstance(input, torch.Tensor):
        want = "cpu" if INTERPRET else "cuda"
        if input.device.type != want:
            how = "under TRITON_INTERPRET=1" if INTERPRET else "compiled"
            reasons.append(f"{how}, the Triton kernels take {want} tensors, got "
                           f"{input.device.type}")
        if input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            dtype = str(input.dtype).replace("torch.", "")
            reasons.append(f"dtype {dtype} is not supported by the Triton conv3d kernel "
                           "(float32, float16, bfloat16)")
        if input.dim() != 5 or not isinstance(weight, torch.Tensor) or weight.dim() != 5:
            reasons.append("input and weight must be 5-D")
            return reasons
        out_size = _output_size(input, weight, _triple(stride), _triple(padding), _triple(dilation))
        m = out_size[0] * out_size[2] * out_size[3] * out_size[4]
        if m > _INT32_MAX - 1024:
            reasons.append(f"N*D_out*H_out*W_out = {m} output positions do not fit the kernel's "
                           "int32 position index")
        c_out, c_in_g = weight.shape[:2]
        packed = c_in_g * weight.shape[2:].numel() * triton.cdiv(c_out // max(groups, 1), 8) * 8
        if packed > _INT32_MAX:
            reasons.append(f"a per-group weight of {packed} (padded) elements does not fit the "
                           "kernel's int32 weight index")
        if sum(weight.shape[2:]) > 31:
            reasons.append(f"kernel size {list(weight.shape[2:])}: kT + kH + kW must be at most 31 "
                           "(per-row tap validity is packed in 32 bits)")
    if groups > _MAX_GRID_Y:
        reasons.append(f"groups={groups} exceeds the CUDA grid limit of {_MAX_GRID_Y} on the "
                       "group axis")
    return reasons


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile variants


def _aot_variant(tag: str, dtype: str, cfg, kernel, channels_last: bool, x_vec: int,
                 out_vec: int, residual: bool, flat_k: bool, act: str,
                 precision: str = "ieee") -> AotVariant:
    sig: Dict[str, str] = {}
    for name in ("x_ptr", "w_ptr", "scale_ptr", "shift_ptr", "res_ptr", "out_ptr"):
        sig[name] = f"*{dtype}"
    for name in ("M", "C_IN_G", "C_OUT_G", "W_N", "D", "H", "W", "D_OUT", "H_OUT", "W_OUT"):
        sig[name] = "i32"
    # A W stride of 1 (NCDHW) is a constant at run time (Triton's specialisation of arguments
    # equal to 1; channel strides are excluded from it); mirror that so that the code compiled
    # here is the code that runs.
    consts: Dict[str, Any] = {}
    for t in ("x", "r", "o"):
        for dim in "ncdhw":
            name = f"stride_{t}{dim}"
            if dim == "w" and not channels_last and (t != "r" or residual):
                consts[name] = 1
            else:
                sig[name] = "i32"
    for name in ("STRIDE_D", "STRIDE_H", "STRIDE_W", "PAD_D", "PAD_H", "PAD_W",
                 "DIL_D", "DIL_H", "DIL_W"):
        sig[name] = "i32"
    bm, bn, bk, warps, stages = cfg
    consts.update(KD=kernel[0], KH=kernel[1], KW=kernel[2], ACT=activation_code(act),
                  HAS_RESIDUAL=residual, FLAT_K=flat_k, X_VEC=x_vec, OUT_VEC=out_vec,
                  RES_VEC=out_vec if residual else 1, RES_LIKE_OUT=residual,
                  INPUT_PRECISION=precision,
                  UPCAST_DOT=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return AotVariant(
        name=f"conv3d_bn_act[{tag},{dtype},{bm}x{bn}x{bk},w{warps},s{stages}]",
        fn=_conv3d_bn_act_fwd_kernel, signature=sig, constexprs=consts,
        num_warps=warps, num_stages=stages,
    )


def _pick(bm: int, bn: int, bk: int) -> Tuple[int, int, int, int, int]:
    return next(c for c in _GPU_CONFIGS if c[:3] == (bm, bn, bk))


def aot_variants() -> List[AotVariant]:
    """What a GPU runs. Every autotune config for the common case: bfloat16 channels_last_3d
    3x3x3 with a residual, channels a multiple of 8 (X_VEC = OUT_VEC = 8). Then the largest and
    a small config the pruning keeps for NCDHW (float16, residual: K-major gather, transposed
    epilogue), and one config each for the other code paths: channels a multiple of 2 only
    (torchvision r2plus1d's 230: X_VEC = 2, element-wise epilogue), unaligned channels (its
    921), the flat K walk (RGB stem, bfloat16; NCDHW, float16), float32 with TF32."""
    variants = [
        _aot_variant("k333,cl,v8,res,relu", "bf16", cfg, (3, 3, 3), True, 8, 8, True, False, "relu")
        for cfg in _GPU_CONFIGS
    ]
    variants += [
        _aot_variant("k333,ncdhw,res,relu", "fp16", cfg, (3, 3, 3), False, 1, 1, True, False,
                     "relu")
        for cfg in (_pick(128, 64, 64), _pick(64, 64, 32))
    ]
    variants += [
        _aot_variant("k133,cl,v2,res,relu", "bf16", _pick(64, 64, 32), (1, 3, 3), True, 2, 1,
                     True, False, "relu"),
        _aot_variant("k311,cl,v1,res,silu", "bf16", _pick(64, 64, 32), (3, 1, 1), True, 1, 1,
                     True, False, "silu"),
        _aot_variant("k177,cl,stem,flat", "bf16", _pick(128, 64, 32), (1, 7, 7), True, 1, 8,
                     False, True, "relu"),
        _aot_variant("k333,ncdhw,flat", "fp16", _pick(128, 16, 32), (3, 3, 3), False, 1, 1,
                     False, True, "identity"),
        _aot_variant("k133,cl,v4,tf32", "fp32", _pick(128, 64, 32), (1, 3, 3), True, 4, 4,
                     False, False, "relu", "tf32"),
    ]
    return variants
