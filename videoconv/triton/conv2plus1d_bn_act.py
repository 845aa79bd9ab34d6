"""Triton ``conv2plus1d_bn_act``: a whole (2+1)D unit in ONE kernel, the intermediate kept on chip.

The unit (see ``videoconv.backends.reference.conv2plus1d_bn_act``, the oracle)::

    h = act(conv1(x, w1) * scale1 + shift1)          (rounded to the input dtype, as eager does)
    y = act(conv2(h, w2) * scale2 + shift2 [+ residual])

spatial first (R(2+1)D): ``w1`` is ``(C_mid, C_in, 1, kH, kW)`` with stride ``(1, sH, sW)`` and
padding ``(0, pH, pW)``; ``w2`` is ``(C_out, C_mid, kT, 1, 1)`` with ``(sT, 1, 1)``/``(pT, 0, 0)``.
Temporal first swaps them: ``w1`` ``(C_mid, C_in, kT, 1, 1)``, ``w2`` ``(C_out, C_mid, 1, kH, kW)``.

Both convolutions are implicit GEMMs on ``tl.dot`` with float32 accumulation. ``h`` never goes
to global memory: a program computes the tile of ``h`` it needs, applies scale1/shift1/act in
registers, rounds it to the input dtype and feeds it straight into the second ``tl.dot``.

The halo, and why the tile rolls along one axis
-----------------------------------------------
Every position of ``h`` is read by several outputs of the second convolution: ``kT / sT``
output frames (spatial first) or ``kH*kW / (sH*sW)`` output pixels (temporal first). The
straightforward fusion — a program owns a block of output positions and, for each tap of the
second convolution, recomputes the ``h`` rows that tap reads — computes every ``h`` position
once per reader: ``kT/sT``-fold first-convolution work along time (3x for kT = 3, the first
convolution being the larger half of an R(2+1)D unit), ``kH*kW``-fold along space for temporal
first. Triton has no way to shift or slice a register tile, so "compute the halo once, then read
it kT times at different offsets" cannot be written as such.

Instead each program owns a block of rows **and a chunk of ``T_CHUNK`` consecutive outputs along
the second convolution's rolled axis** (time for spatial first, W for temporal first) and walks
that axis once, one ``h`` slice ("frame" ``f``) at a time:

* spatial first: rows are output pixels ``(n, ho, wo)``; frame ``f`` is ``h[:, :, f, ho, wo]``,
  a ``[BLOCK_S, C_mid]`` slab computed by the first conv (``K = kH*kW*C_in``);
* temporal first: rows are ``(n, do, ho)``; frame ``f`` is the W column ``h[:, :, do, hh, f]``
  for each of the ``kH`` row taps ``hh = ho*sH - pH + i`` (``K = kT*C_in``); the ``kH`` taps are
  still recomputed (``kH/sH``-fold), the ``kW`` taps are rolled.

Frame ``f`` contributes, through tap ``f + p - o*s``, to at most ``ceil(k/s)`` outputs ``o`` of
the chunk at once (the outputs "in flight"). The program keeps ``NSLOT = next_pow2(ceil(k/s))``
accumulators side by side as the columns of ONE ``[BLOCK_S, NSLOT*BLOCK_N]`` float32 tile; output
``o`` lives in slot ``o % NSLOT``. The second conv for frame ``f`` is then a single ordinary
GEMM ``h_f[BLOCK_S, C_mid] @ W2_f[C_mid, NSLOT*BLOCK_N]`` whose ``B`` tile is gathered from
``w2`` with the tap of each slot's output (zero where a slot has no output using ``f``). When
``f`` is the last frame an output reads (``f = o*s - p + k - 1``), its slot is summed out,
goes through the epilogue (scale2, shift2, residual, act), is stored (the one store of the
unit), and is zeroed for output ``o + NSLOT``; ``NSLOT*s >= k`` guarantees that output has not
started yet. Frames in the padding or read by no output (``s > k``) skip both GEMMs.

Cost of this tiling, per program of ``T = T_CHUNK`` outputs along the rolled axis:

* first conv: ``(T-1)*s + k`` frames for ``T*s`` frames' worth of output, a recomputation
  factor of ``1 + (k - s)/(T*s)`` (1.25 for kT = 3, T = 8) instead of ``k/s`` (3);
* second conv: ``NSLOT`` slots per frame where ``ceil(k/s)`` are useful: 4/3 for k = 3,
  8/5 for k = 5, none for k = 1 and k = 2, times the same halo factor;
* the first conv is also recomputed once per output-channel block: ``ceil(C_out/BLOCK_N)``
  programs share the same rows, and ``BLOCK_N <= 64`` (the ``[BLOCK_S, NSLOT*BLOCK_N]``
  accumulator lives through the whole program beside the first conv's). Units with
  ``C_out <= 64`` pay nothing; ``C_out = 128/256/512`` (R(2+1)D-18's later stages) pay 2/4/8x
  first-conv work. Fusion saves the intermediate's round trip through memory, which dominates
  for narrow, high-resolution units; for the wide late ones the unfused pair of implicit GEMMs
  does fewer FLOPs, and a backend may prefer it there (:func:`first_conv_recompute` gives the
  factor).

``T_CHUNK`` is chosen per call (:func:`_chunk`): as long as possible (less halo) while the grid
still has a couple of programs per SM; a whole clip per program when there is enough
parallelism in rows and channels.

Numerics
--------
Operands in the input dtype, float32 accumulation (TF32 for float32 only when
``torch.backends.cudnn.allow_tf32`` allows it, as eager ``nn.Conv3d``). The first epilogue runs
on the float32 accumulator and ``h`` is rounded to the input dtype before the second ``tl.dot``
— that is the eager chain's rounding of its intermediate tensor (the eager chain also rounds the
first convolution's raw output before its BatchNorm; this kernel does not, so it is at least
as accurate there). The second epilogue is float32, rounded once by the store. Under
``TRITON_INTERPRET=1`` bfloat16 dot operands are upcast to float32 after that rounding
(``UPCAST_DOT``, working around triton-lang/triton#11584); compiled kernels use the bf16
tensor cores.

Layouts, alignment and indexing
-------------------------------
Input through its strides (channels_last_3d: a ``[BLOCK_S, BLOCK_K]`` ``A`` tile row is
``BLOCK_K`` contiguous channels; NCDHW works unchanged, with gathers), output in
``videoconv.backends.output_memory_format(input)`` through its strides, residual in any layout.
Weights are repacked per call as ``(taps*C, C_next)`` with the next layer's channels contiguous
and zero padded to a multiple of 64 columns, so weight tiles are aligned and need no column
mask whatever C_mid is (230, 460, 921). Where the launcher has checked that a tensor is
channels_last_3d with 16-multiple channels and strides (``X_ALIGNED``/``OUT_ALIGNED``/
``RES_ALIGNED``), the kernel states the alignment of its channel runs (``tl.multiple_of``,
``tl.max_contiguous``, ``tl.max_constancy`` on the masks): Triton would infer the same from its
run-time specialisation of 16-divisible arguments, but an ahead-of-time compile
(``videoconv.triton.aot``) has none, and without the hints it would report the scalar-load code
(about 250 registers and spills) instead of the vectorised code that runs (150-190).
Position indices are int32, addresses int64.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, AotVariant, activation_code, apply_activation, environment_reasons

__all__ = ["conv2plus1d_bn_act", "not_supported_reasons", "aot_variants"]

_INT32_MAX = 2**31 - 1
#: Largest number of in-flight output slots (``next_pow2(ceil(k/s))`` of the rolled axis).
_MAX_SLOTS = 8

# (BLOCK_S, BLOCK_C, BLOCK_MID, BLOCK_K, num_warps, num_stages) for sm_80 / sm_90.
# BLOCK_C = NSLOT * BLOCK_N columns of the second GEMM (kT = 3: 4 slots, so 256 columns are 64
# output channels). Registers bound the tiles: the [BLOCK_S, BLOCK_C] float32 accumulator lives
# through the whole program beside the [BLOCK_S, BLOCK_MID] one of the first conv, so the big
# tiles take 8 warps; every config compiles to 150-235 registers without spilling (aligned
# channels_last_3d, see the AOT test). 64-column configs serve kT = 1 (one slot, BLOCK_N = 64);
# 32-row tiles the late, low-resolution stages where rows are few.
_GPU_CONFIGS: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (64, 128, 32, 32, 8, 3),
    (64, 256, 32, 32, 8, 3),
    (128, 128, 32, 32, 8, 3),
    (64, 64, 32, 32, 4, 3),
    (128, 64, 64, 32, 8, 3),
    (32, 128, 64, 64, 4, 2),
)
#: Largest output-channel tile per slot (BLOCK_C // NSLOT): wider epilogue tiles only add live
#: registers to a kernel that already holds two accumulators.
_MAX_BLOCK_N = 64
#: The packed weights' rows are padded to this many columns: a multiple of every BLOCK_MID and
#: of every BLOCK_N, so weight tiles need no column mask.
_PAD_COLUMNS = 64
# The interpreter: one small config whose C_mid/C_in/C_out tails are exercised by widths of 5-40.
_INTERPRET_CONFIG = (64, 32, 16, 16, 4, 1)


def _configs_table() -> Tuple[Tuple[int, int, int, int, int, int], ...]:
    return (_INTERPRET_CONFIG,) if INTERPRET else _GPU_CONFIGS


def _configs() -> List[triton.Config]:
    return [
        triton.Config({"BLOCK_S": bs, "BLOCK_C": bc, "BLOCK_MID": bm, "BLOCK_K": bk},
                      num_warps=w, num_stages=s)
        for bs, bc, bm, bk, w, s in _configs_table()
    ]


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles far wider than the problem (masked columns/rows are wasted MMA work), and for
    inputs without aligned channel runs (NCDHW, C_in not a multiple of 16), whose gathers are
    scalar loads, the tiles larger than 64x128 (they spill); at least one config survives."""
    args = {**named_args, **kwargs}  # the autotuner passes positional and keyword args apart
    nslot = int(args["NSLOT"])
    n_cap = max(16, triton.next_power_of_2(int(args["C_OUT"])))
    s_cap = max(64, triton.next_power_of_2(int(args["P"])))
    area_cap = 1 << 30 if args.get("X_ALIGNED", True) else 64 * 128
    kept = [c for c in configs
            if c.kwargs["BLOCK_C"] // nslot <= min(n_cap, _MAX_BLOCK_N)
            and c.kwargs["BLOCK_S"] <= s_cap
            and c.kwargs["BLOCK_S"] * c.kwargs["BLOCK_C"] <= area_cap]
    if kept:
        return kept
    fits = [c for c in configs if c.kwargs["BLOCK_C"] // nslot <= _MAX_BLOCK_N]
    return [min(fits, key=lambda c: (c.kwargs["BLOCK_C"], c.kwargs["BLOCK_S"]))]


@triton.jit
def _first_conv_tile(
    x_ptr, w1_ptr, x_rows, h_ok, d0, hq, h0, w0, m0,
    C_IN, D, H, W, W1_ROW,
    stride_xc, stride_xd, stride_xh, stride_xw,
    TEMPORAL_FIRST: tl.constexpr, TAPS1: tl.constexpr, KW1: tl.constexpr, FLAT_K: tl.constexpr,
    X_ALIGNED: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_MID: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``[BLOCK_S, BLOCK_MID]`` float32 tile of the first convolution (before its epilogue) for
    middle channels ``m0 + [0, BLOCK_MID)``: one flat loop over K so that the pipeliner overlaps
    loads across taps. ``x_rows`` already holds the batch and rolled-axis offsets of each row."""
    offs_k = tl.arange(0, BLOCK_K)
    mids = m0 + tl.arange(0, BLOCK_MID)
    acc1 = tl.zeros((BLOCK_S, BLOCK_MID), dtype=tl.float32)
    if FLAT_K:
        # K walked flat over (tap, channel): several taps per tile when C_in is narrow (the RGB
        # stem, C_in = 3), so the tile is not 90% masked channel tail.
        K1 = TAPS1 * C_IN
        for k0 in range(0, K1, BLOCK_K):
            k = k0 + offs_k
            mask_k = k < K1
            tap = k // C_IN
            c = k - tap * C_IN
            if TEMPORAL_FIRST:
                dd = d0[:, None] + tap[None, :]
                a_ok = h_ok[:, None] & mask_k[None, :] & (dd >= 0) & (dd < D)
                a_off = ((x_rows + hq.to(tl.int64) * stride_xh)[:, None]
                         + dd.to(tl.int64) * stride_xd)
            else:
                hh = h0[:, None] + (tap // KW1)[None, :]
                ww = w0[:, None] + (tap % KW1)[None, :]
                a_ok = (h_ok[:, None] & mask_k[None, :]
                        & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W))
                a_off = x_rows[:, None] + hh.to(tl.int64) * stride_xh + ww.to(tl.int64) * stride_xw
            a = tl.load(x_ptr + (a_off + (c.to(tl.int64) * stride_xc)[None, :]), mask=a_ok,
                        other=0.0)
            b_ptrs = w1_ptr + k[:, None] * W1_ROW + mids[None, :]
            b_ptrs = tl.max_contiguous(tl.multiple_of(b_ptrs, (1, 16)), (1, BLOCK_MID))
            b = tl.load(b_ptrs, mask=mask_k[:, None], other=0.0)
            if UPCAST_DOT:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc1 = tl.dot(a, b, acc1, input_precision=INPUT_PRECISION)
    else:
        # Channel-blocked: step i is tap i // n_cb, channel block i % n_cb; the tap's bounds are
        # one [BLOCK_S] mask and its offset one vector.
        n_cb = tl.cdiv(C_IN, BLOCK_K)
        for step in range(0, TAPS1 * n_cb):
            tap = step // n_cb
            c = (step - tap * n_cb) * BLOCK_K + offs_k
            mask_c = c < C_IN
            if TEMPORAL_FIRST:
                dd = d0 + tap
                a_ok = h_ok & (dd >= 0) & (dd < D)
                a_rows = x_rows + dd.to(tl.int64) * stride_xd + hq.to(tl.int64) * stride_xh
            else:
                hh = h0 + tap // KW1
                ww = w0 + tap % KW1
                a_ok = h_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                a_rows = x_rows + hh.to(tl.int64) * stride_xh + ww.to(tl.int64) * stride_xw
            a_ptrs = x_ptr + (a_rows[:, None] + (c.to(tl.int64) * stride_xc)[None, :])
            a_mask = a_ok[:, None] & mask_c[None, :]
            if X_ALIGNED:  # channels_last_3d, C_in and strides multiples of 16
                a_ptrs = tl.max_contiguous(tl.multiple_of(a_ptrs, (1, 16)), (1, BLOCK_K))
                a_mask = tl.max_constancy(a_mask, (1, 16))
            a = tl.load(a_ptrs, mask=a_mask, other=0.0)
            # W1_ROW is a multiple of every BLOCK_MID (zero padded): no column mask needed.
            b_ptrs = w1_ptr + (tap * C_IN + c)[:, None] * W1_ROW + mids[None, :]
            b_ptrs = tl.max_contiguous(tl.multiple_of(b_ptrs, (1, 16)), (1, BLOCK_MID))
            b = tl.load(b_ptrs, mask=mask_c[:, None], other=0.0)
            if UPCAST_DOT:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc1 = tl.dot(a, b, acc1, input_precision=INPUT_PRECISION)
    return acc1


@triton.jit
def _conv2plus1d_bn_act_fwd_kernel(
    x_ptr, w1_ptr, scale1_ptr, shift1_ptr, w2_ptr, scale2_ptr, shift2_ptr, res_ptr, out_ptr,
    C_IN, D, H, W, C_MID, C_OUT, W1_ROW, W2_ROW,
    P, R1, R2, L_IN, L_OUT, T_CHUNK,
    STRIDE_D, STRIDE_H, STRIDE_W, PAD_D, PAD_H, PAD_W,
    STRIDE_R, PAD_R,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_rn, stride_rc, stride_r1, stride_r2, stride_rl,
    stride_on, stride_oc, stride_o1, stride_o2, stride_ol,
    TEMPORAL_FIRST: tl.constexpr,
    TAPS1: tl.constexpr, KW1: tl.constexpr, KQ: tl.constexpr, KR: tl.constexpr,
    NSLOT: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    FLAT_K: tl.constexpr,
    X_ALIGNED: tl.constexpr, OUT_ALIGNED: tl.constexpr, RES_ALIGNED: tl.constexpr,
    ELEMENT_BYTES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_MID: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Rows (P = N*R1*R2) are the output positions without the rolled axis: (n, ho, wo) spatial
    # first, (n, do, ho) temporal first. The rolled axis (L_OUT outputs, KR taps, STRIDE_R,
    # PAD_R; h has L_IN slices along it) is time spatial first, W temporal first. The first
    # conv has TAPS1 taps (KW1 of them along W, spatial first); the second conv's KQ row taps
    # (kH, temporal first only) are recomputed. Packed weights: w1 (TAPS1*C_IN, W1_ROW),
    # w2 (KQ*KR*C_MID, W2_ROW), rows zero padded to a multiple of 64 (aligned, unmasked columns).
    BLOCK_N: tl.constexpr = BLOCK_C // NSLOT
    # C_out is a multiple of 16 where the output/residual are "aligned": mask runs of 16 columns.
    RUN_N: tl.constexpr = BLOCK_N if BLOCK_N < 16 else 16
    pid = tl.program_id(0)
    num_n = tl.cdiv(C_OUT, BLOCK_N)
    num_s = tl.cdiv(P, BLOCK_S)
    pid_n = pid % num_n  # channel blocks fastest: programs running together share x rows in L2
    pid_s = (pid // num_n) % num_s
    pid_t = pid // (num_n * num_s)

    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    row_ok = rows < P
    r2 = rows % R2
    r1 = (rows // R2) % R1
    nb = rows // (R2 * R1)
    if TEMPORAL_FIRST:
        d0 = r1 * STRIDE_D - PAD_D  # first input frame of the temporal first conv
        h0 = r2 * STRIDE_H - PAD_H  # h row read by the second conv's first row tap
        w0 = h0  # unused
    else:
        d0 = r1  # unused
        h0 = r1 * STRIDE_H - PAD_H
        w0 = r2 * STRIDE_W - PAD_W

    # Columns of the second GEMM: slot-major, BLOCK_N output channels per slot.
    cols = tl.arange(0, BLOCK_C)
    col_slot = cols // BLOCK_N
    col_co = pid_n * BLOCK_N + cols % BLOCK_N
    offs_mid = tl.arange(0, BLOCK_MID)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT
    scale2 = tl.load(scale2_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    shift2 = tl.load(shift2_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    co64 = offs_n.to(tl.int64)
    nb64 = nb.to(tl.int64)
    r1_64 = r1.to(tl.int64)
    r2_64 = r2.to(tl.int64)
    out_rows = nb64 * stride_on + r1_64 * stride_o1 + r2_64 * stride_o2
    res_rows = nb64 * stride_rn + r1_64 * stride_r1 + r2_64 * stride_r2
    mask_out = row_ok[:, None] & mask_n[None, :]

    o_first = pid_t * T_CHUNK
    o_end = tl.minimum(o_first + T_CHUNK, L_OUT)
    f_first = o_first * STRIDE_R - PAD_R
    f_end = (o_end - 1) * STRIDE_R - PAD_R + KR

    acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    for f in range(f_first, f_end):
        # Newest output reading frame f (f + PAD_R >= 0 for every f of the loop), clipped to the
        # chunk; the newest in-flight output reads f through its smallest tap.
        o_new = (f + PAD_R) // STRIDE_R
        o_last = tl.minimum(o_new, o_end - 1)
        used = (f >= 0) & (f < L_IN) & (o_last >= o_first) & (f + PAD_R - o_last * STRIDE_R < KR)
        if used:
            # Output held by each slot: the one in flight that is congruent to it mod NSLOT.
            col_o = o_new - ((o_new - col_slot) & (NSLOT - 1))
            col_tap = f + PAD_R - col_o * STRIDE_R
            # W2_ROW is a multiple of every BLOCK_N (zero padded): no channel mask needed, so the
            # mask is constant over each slot's BLOCK_N columns.
            col_ok = (col_tap < KR) & (col_o >= o_first) & (col_o < o_end)
            w2_cols = col_tap * (C_MID * W2_ROW) + col_co
            if TEMPORAL_FIRST:
                x_rows = nb64 * stride_xn + tl.cast(f, tl.int64) * stride_xw
            else:
                x_rows = nb64 * stride_xn + tl.cast(f, tl.int64) * stride_xd
            for m0 in range(0, C_MID, BLOCK_MID):
                mids = m0 + offs_mid
                mask_mid = mids < C_MID
                scale1 = tl.load(scale1_ptr + mids, mask=mask_mid, other=0.0).to(tl.float32)
                shift1 = tl.load(shift1_ptr + mids, mask=mask_mid, other=0.0).to(tl.float32)
                for q in range(KQ):
                    hq = h0 + q
                    if TEMPORAL_FIRST:
                        # h rows above/below the frame are the second conv's zero padding.
                        h_ok = row_ok & (hq >= 0) & (hq < H)
                    else:
                        h_ok = row_ok
                    acc1 = _first_conv_tile(
                        x_ptr, w1_ptr, x_rows, h_ok, d0, hq, h0, w0, m0,
                        C_IN, D, H, W, W1_ROW, stride_xc, stride_xd, stride_xh, stride_xw,
                        TEMPORAL_FIRST, TAPS1, KW1, FLAT_K, X_ALIGNED, INPUT_PRECISION, UPCAST_DOT,
                        BLOCK_S, BLOCK_MID, BLOCK_K)
                    hmid = apply_activation(acc1 * scale1[None, :] + shift1[None, :], ACT)
                    if TEMPORAL_FIRST:
                        hmid = tl.where(h_ok[:, None], hmid, 0.0)
                    # The eager chain stores h in the input dtype: round it the same way.
                    hmid = hmid.to(x_ptr.dtype.element_ty)
                    w2_ptrs = (w2_ptr + q * (KR * C_MID * W2_ROW) + mids[:, None] * W2_ROW
                               + w2_cols[None, :])
                    w2_mask = mask_mid[:, None] & col_ok[None, :]
                    if BLOCK_N * ELEMENT_BYTES >= 16:  # packed: each slot's run is aligned
                        w2_ptrs = tl.max_contiguous(tl.multiple_of(w2_ptrs, (1, 16)), (1, BLOCK_N))
                        if NSLOT > 1:  # (one slot: the column mask is a splat already)
                            w2_mask = tl.max_constancy(w2_mask, (1, BLOCK_N))
                    w2 = tl.load(w2_ptrs, mask=w2_mask, other=0.0)
                    if UPCAST_DOT:
                        hmid = hmid.to(tl.float32)
                        w2 = w2.to(tl.float32)
                    acc = tl.dot(hmid, w2, acc, input_precision=INPUT_PRECISION)
        # The output whose last tap reads frame f is complete: epilogue, store, free its slot.
        e = f + PAD_R - (KR - 1)
        o_done = tl.maximum(e, 0) // STRIDE_R
        done = (e >= 0) & (o_done * STRIDE_R == e) & (o_done >= o_first) & (o_done < o_end)
        if done:
            if NSLOT == 1:
                z = acc
                acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
            else:
                sel = (col_slot == (o_done & (NSLOT - 1)))[None, :]
                z = tl.sum(tl.reshape(tl.where(sel, acc, 0.0), (BLOCK_S, NSLOT, BLOCK_N)), axis=1)
                acc = tl.where(sel, 0.0, acc)
            u = z * scale2[None, :] + shift2[None, :]
            o64 = o_done.to(tl.int64)
            if HAS_RESIDUAL:
                r_ptrs = res_ptr + (res_rows[:, None] + o64 * stride_rl
                                    + (co64 * stride_rc)[None, :])
                r_mask = mask_out
                if RES_ALIGNED and BLOCK_N * ELEMENT_BYTES >= 16:
                    r_ptrs = tl.max_contiguous(tl.multiple_of(r_ptrs, (1, 16)), (1, BLOCK_N))
                    r_mask = tl.max_constancy(r_mask, (1, RUN_N))
                r = tl.load(r_ptrs, mask=r_mask, other=0.0)
                u = u + r.to(tl.float32)
            u = apply_activation(u, ACT)
            o_ptrs = out_ptr + (out_rows[:, None] + o64 * stride_ol + (co64 * stride_oc)[None, :])
            o_mask = mask_out
            if OUT_ALIGNED and BLOCK_N * ELEMENT_BYTES >= 16:
                o_ptrs = tl.max_contiguous(tl.multiple_of(o_ptrs, (1, 16)), (1, BLOCK_N))
                o_mask = tl.max_constancy(o_mask, (1, RUN_N))
            tl.store(o_ptrs, u.to(out_ptr.dtype.element_ty), mask=o_mask)


def use_flat_k(c_in: int, block_k: int) -> bool:
    """Walk the first conv's K flat (several taps per tile) when blocking by channel would leave
    more than a quarter of each ``[BLOCK_S, BLOCK_K]`` tile masked (C_in = 3, 20, ...)."""
    padded = triton.cdiv(c_in, block_k) * block_k
    return 4 * c_in < 3 * padded


def _flat_k_heuristic(args: Dict[str, Any]) -> bool:
    return use_flat_k(int(args["C_IN"]), int(args["BLOCK_K"]))


# Autotuned per unit shape; the autotuner adds the tensors' dtypes to the key.
_conv2plus1d_bn_act_fwd = triton.autotune(
    configs=_configs(),
    key=["C_IN", "C_MID", "C_OUT", "P", "L_OUT", "T_CHUNK", "TEMPORAL_FIRST", "TAPS1", "KQ",
         "KR", "NSLOT", "stride_xc"],
    prune_configs_by={"early_config_prune": _prune_configs},
    cache_results=True,  # on disk, keyed by shape, dtypes and target GPU (see conv3d_bn_act.py)
)(triton.heuristics({"FLAT_K": _flat_k_heuristic})(_conv2plus1d_bn_act_fwd_kernel))


# ----------------------------------------------------------------------------------------------
# launcher


def _triple(v: Sequence[int]) -> Tuple[int, int, int]:
    a, b, c = (int(x) for x in v)
    return a, b, c


def _geometry(input_shape, w1_shape, w2_shape, stride, padding, temporal_first) -> Dict[str, int]:
    """Sizes of the unit and how the kernel sees them (rows, rolled axis, taps)."""
    n, _, d, h, w = (int(s) for s in input_shape)
    st, sh, sw = stride
    pt, ph, pw = padding
    if temporal_first:
        kt, kh, kw = int(w1_shape[2]), int(w2_shape[3]), int(w2_shape[4])
    else:
        kt, kh, kw = int(w2_shape[2]), int(w1_shape[3]), int(w1_shape[4])
    d_out = (d + 2 * pt - kt) // st + 1
    h_out = (h + 2 * ph - kh) // sh + 1
    w_out = (w + 2 * pw - kw) // sw + 1
    if temporal_first:
        g = dict(R1=d_out, R2=h_out, L_IN=w, L_OUT=w_out, KR=kw, STRIDE_R=sw, PAD_R=pw,
                 TAPS1=kt, KW1=1, KQ=kh)
    else:
        g = dict(R1=h_out, R2=w_out, L_IN=d, L_OUT=d_out, KR=kt, STRIDE_R=st, PAD_R=pt,
                 TAPS1=kh * kw, KW1=kw, KQ=1)
    g.update(N=n, D_OUT=d_out, H_OUT=h_out, W_OUT=w_out, P=n * g["R1"] * g["R2"],
             NSLOT=triton.next_power_of_2(triton.cdiv(g["KR"], g["STRIDE_R"])))
    return g


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not INTERPRET and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _chunk(geom: Dict[str, int], c_out: int, device: torch.device) -> int:
    """Outputs per program along the rolled axis: the whole axis (no halo recomputation at all)
    unless rows x channel blocks leave the GPU short of programs; then split it into as few
    chunks as give about two programs per SM, never below 4 outputs per chunk (below that the
    halo, ``(k - s)/(T*s)`` extra first-conv work, grows quickly)."""
    l_out = geom["L_OUT"]
    base = triton.cdiv(geom["P"], 64) * triton.cdiv(c_out, 64)  # programs for a nominal tile
    want = 2 * _sm_count(device)
    n_chunks = max(1, min(triton.cdiv(want, base), triton.cdiv(l_out, 4)))
    return triton.cdiv(l_out, n_chunks)


def channels_aligned(t: torch.Tensor) -> bool:
    """Channels contiguous (channels_last_3d) and every pixel starting 16-element aligned: the
    condition under which the kernel states the alignment of its channel runs (what Triton's
    run-time specialisation would also infer from pointer and strides)."""
    strides = t.stride()
    return (strides[1] == 1 and t.shape[1] % 16 == 0 and t.data_ptr() % 16 == 0
            and all(s % 16 == 0 for i, s in enumerate(strides) if i != 1 and t.shape[i] > 1))


def first_conv_recompute(input, w1, w2, stride, padding, temporal_first, chunk=None,
                         block_n: int = _MAX_BLOCK_N) -> float:
    """How many times the kernel computes each position of the intermediate, on average (1.0 =
    no recomputation): the halo at chunk edges along the rolled axis, the ``kH`` row taps of
    temporal-first units, and one pass per output-channel block. A backend can compare it with
    the unfused pair of convolutions (which computes the first conv once)."""
    geom = _geometry(input.shape, w1.shape, w2.shape, _triple(stride), _triple(padding),
                     bool(temporal_first))
    l_in, l_out, k, s, p = (geom[key] for key in ("L_IN", "L_OUT", "KR", "STRIDE_R", "PAD_R"))
    t = chunk if chunk is not None else _chunk(geom, w2.shape[0], input.device)
    t = max(1, min(int(t), l_out))

    def frames(o_first: int, o_end: int) -> int:  # h slices read by outputs [o_first, o_end)
        lo, hi = max(o_first * s - p, 0), min((o_end - 1) * s - p + k, l_in)
        return max(0, hi - lo)

    computed = sum(frames(o, min(o + t, l_out)) for o in range(0, l_out, t))
    halo = computed / max(1, frames(0, l_out))
    row_taps = geom["KQ"] / (_triple(stride)[1] if temporal_first else 1)
    return halo * max(1.0, row_taps) * triton.cdiv(w2.shape[0], block_n)


def pack_weight(weight: torch.Tensor, pad: int = _PAD_COLUMNS) -> torch.Tensor:
    """``(C_next, C, kT, kH, kW)`` -> ``(kT*kH*kW*C, C_next rounded up to pad)``, contiguous: a
    GEMM's ``B``, rows in (tap, channel) order, the next layer's channels contiguous and zero
    padded to a multiple of every tile width, so that each row starts aligned and a ``B`` tile
    needs no column mask (vector loads for C_mid = 230, 921...)."""
    c_next, c, kd, kh, kw = weight.shape
    packed = weight.new_zeros(kd * kh * kw * c, triton.cdiv(c_next, pad) * pad)
    packed[:, :c_next] = weight.permute(2, 3, 4, 1, 0).reshape(kd * kh * kw * c, c_next)
    return packed


def conv2plus1d_bn_act(input, w1, scale1, shift1, w2, scale2, shift2, stride, padding, activation,
                       temporal_first, residual):
    """A whole (2+1)D unit (conv, scale/shift, act, conv, scale/shift [+ residual], act) in one
    Triton kernel; the intermediate never leaves the chip.

    Arguments as ``videoconv.ops.conv2plus1d_bn_act`` (already validated; see
    :func:`not_supported_reasons` for what this kernel refuses). Returns a new tensor in the
    input's layout.
    """
    return _launch(input, w1, scale1, shift1, w2, scale2, shift2, stride, padding, activation,
                   temporal_first, residual)


def _launch(input, w1, scale1, shift1, w2, scale2, shift2, stride, padding, activation,
            temporal_first, residual, chunk: Optional[int] = None,
            config: Optional[Tuple[int, int, int, int, int, int]] = None,
            flat_k: Optional[bool] = None):
    """The launcher. ``chunk`` (outputs per program along the rolled axis), ``config``
    (``(BLOCK_S, BLOCK_C, BLOCK_MID, BLOCK_K, num_warps, num_stages)``) and ``flat_k`` bypass the
    heuristics and the autotuner: tests use them to cross chunk boundaries and to run both K
    walks, benchmarks to time one config."""
    from ..backends import output_memory_format

    stride, padding = _triple(stride), _triple(padding)
    temporal_first = bool(temporal_first)
    geom = _geometry(input.shape, w1.shape, w2.shape, stride, padding, temporal_first)
    c_in, c_mid, c_out = input.shape[1], w1.shape[0], w2.shape[0]
    out = torch.empty((geom["N"], c_out, geom["D_OUT"], geom["H_OUT"], geom["W_OUT"]),
                      dtype=input.dtype, device=input.device,
                      memory_format=output_memory_format(input))
    t_chunk = int(chunk) if chunk is not None else _chunk(geom, c_out, input.device)
    t_chunk = max(1, min(t_chunk, geom["L_OUT"]))
    n_chunks = triton.cdiv(geom["L_OUT"], t_chunk)

    def kernel_order(t: torch.Tensor) -> Tuple[int, ...]:
        # (n, c, row1, row2, rolled) strides in the kernel's row decomposition.
        sn, sc, sd, sh, sw = t.stride()
        return (sn, sc, sd, sh, sw) if temporal_first else (sn, sc, sh, sw, sd)

    res = residual if residual is not None else out
    res_strides = kernel_order(residual) if residual is not None else (0, 0, 0, 0, 0)
    nslot = geom["NSLOT"]
    w1_packed, w2_packed = pack_weight(w1), pack_weight(w2)
    args = (
        input, w1_packed, scale1.contiguous(), shift1.contiguous(),
        w2_packed, scale2.contiguous(), shift2.contiguous(), res, out,
        c_in, *input.shape[2:], c_mid, c_out, w1_packed.shape[1], w2_packed.shape[1],
        geom["P"], geom["R1"], geom["R2"], geom["L_IN"], geom["L_OUT"], t_chunk,
        *stride, *padding, geom["STRIDE_R"], geom["PAD_R"],
        *input.stride(), *res_strides, *kernel_order(out),
    )
    kwargs = dict(
        TEMPORAL_FIRST=temporal_first, TAPS1=geom["TAPS1"], KW1=geom["KW1"], KQ=geom["KQ"],
        KR=geom["KR"], NSLOT=nslot, ACT=activation_code(activation),
        HAS_RESIDUAL=residual is not None,
        X_ALIGNED=channels_aligned(input), OUT_ALIGNED=channels_aligned(out),
        RES_ALIGNED=residual is not None and channels_aligned(residual),
        ELEMENT_BYTES=input.element_size(),
        INPUT_PRECISION=_input_precision(input.dtype),
        UPCAST_DOT=INTERPRET and input.dtype == torch.bfloat16,
    )

    def programs(block_s: int, block_c: int) -> int:
        return triton.cdiv(c_out, block_c // nslot) * triton.cdiv(geom["P"], block_s) * n_chunks

    if config is None and flat_k is None:
        _conv2plus1d_bn_act_fwd[lambda meta: (programs(meta["BLOCK_S"], meta["BLOCK_C"]),)](
            *args, **kwargs)
        return out
    bs, bc, bm, bk, warps, stages = config if config is not None else _configs_table()[0]
    if bm > _PAD_COLUMNS or bc // nslot > _MAX_BLOCK_N or bc < nslot:
        raise ValueError(f"config {config} does not fit the weight padding ({_PAD_COLUMNS}) or "
                         f"{nslot} slots")
    _conv2plus1d_bn_act_fwd_kernel[(programs(bs, bc),)](
        *args, **kwargs, FLAT_K=use_flat_k(c_in, bk) if flat_k is None else flat_k,
        BLOCK_S=bs, BLOCK_C=bc, BLOCK_MID=bm, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    return out


def not_supported_reasons(input, w1, w2, stride, padding, temporal_first, **_) -> List[str]:
    """Why this kernel cannot run these inputs (empty if it can)."""
    reasons = list(environment_reasons())
    if not all(isinstance(t, torch.Tensor) for t in (input, w1, w2)):
        return reasons + ["input, w1 and w2 must be tensors"]
    want = "cpu" if INTERPRET else "cuda"
    if input.device.type != want:
        how = "under TRITON_INTERPRET=1" if INTERPRET else "compiled"
        reasons.append(f"{how}, the Triton kernels take {want} tensors, got {input.device.type}")
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        reasons.append(f"dtype {str(input.dtype).replace('torch.', '')} is not supported by the "
                       "Triton (2+1)D kernel (float32, float16, bfloat16)")
    if input.dim() != 5 or w1.dim() != 5 or w2.dim() != 5:
        return reasons + ["input, w1 and w2 must be 5-D"]
    geom = _geometry(input.shape, w1.shape, w2.shape, _triple(stride), _triple(padding),
                     bool(temporal_first))
    if geom["NSLOT"] > _MAX_SLOTS:
        axis = "W" if temporal_first else "temporal"
        reasons.append(
            f"the second convolution's {axis} kernel {geom['KR']} with stride {geom['STRIDE_R']} "
            f"keeps {triton.cdiv(geom['KR'], geom['STRIDE_R'])} outputs in flight; the kernel "
            f"holds at most {_MAX_SLOTS}")
    if geom["P"] * max(1, geom["L_OUT"]) > _INT32_MAX - 1024:
        reasons.append("the output has too many positions for the kernel's int32 position index")
    if any(w.numel() // w.shape[0] * triton.cdiv(w.shape[0], _PAD_COLUMNS) * _PAD_COLUMNS
           > _INT32_MAX for w in (w1, w2)):
        reasons.append("a packed weight does not fit the kernel's int32 indexing")
    return reasons


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile variants


def _aot_signature(dtype: str, channels_last: bool, has_residual: bool,
                   temporal_first: bool) -> Tuple[Dict[str, str], Dict[str, Any]]:
    sig: Dict[str, str] = {}
    for name in ("x_ptr", "w1_ptr", "scale1_ptr", "shift1_ptr", "w2_ptr", "scale2_ptr",
                 "shift2_ptr", "res_ptr", "out_ptr"):
        sig[name] = f"*{dtype}"
    for name in ("C_IN", "D", "H", "W", "C_MID", "C_OUT", "W1_ROW", "W2_ROW", "P", "R1", "R2",
                 "L_IN", "L_OUT",
                 "T_CHUNK", "STRIDE_D", "STRIDE_H", "STRIDE_W", "PAD_D", "PAD_H", "PAD_W",
                 "STRIDE_R", "PAD_R"):
        sig[name] = "i32"
    # Unit strides become constants at run time (Triton's specialisation); mirror that so the
    # compiled code is the one that runs. Input: channel stride 1 (channels_last_3d) or W
    # stride 1 (NCDHW); output/residual in kernel order (n, c, r1, r2, rolled).
    consts: Dict[str, Any] = {}
    x_unit = "stride_xc" if channels_last else "stride_xw"
    if channels_last:
        o_unit = "c"
    else:
        o_unit = "l" if temporal_first else "2"
    for name in ("stride_xn", "stride_xc", "stride_xd", "stride_xh", "stride_xw"):
        if name == x_unit:
            consts[name] = 1
        else:
            sig[name] = "i32"
    for t in ("r", "o"):
        for dim in ("n", "c", "1", "2", "l"):
            name = f"stride_{t}{dim}"
            if dim == o_unit and (t == "o" or has_residual):
                consts[name] = 1
            else:
                sig[name] = "i32"
    return sig, consts


def aot_variants() -> List[AotVariant]:
    """What a GPU runs: every autotune config for the R(2+1)D unit (bfloat16 channels_last_3d,
    spatial first, kT = 3: 4 slots, residual, relu); then one config each for temporal first
    (channels_last_3d bfloat16 and NCDHW float16), float32 TF32 with kT = 5 (8 slots), kT = 1
    with temporal stride 2 (1 slot, float16) and the RGB stem (C_in = 3: unaligned input, flat
    K walk, 7x7)."""
    variants: List[AotVariant] = []

    def add(tag, dtype, cfg, temporal_first, kernel, stride_r, channels_last, residual, act,
            precision="ieee", flat_k=False, x_aligned=None):
        bs, bc, bm, bk, warps, stages = cfg
        kt, kh, kw = kernel
        sig, consts = _aot_signature(dtype, channels_last, residual, temporal_first)
        if temporal_first:
            taps1, kw1, kq, kr = kt, 1, kh, kw
        else:
            taps1, kw1, kq, kr = kh * kw, kw, 1, kt
        consts.update(
            TEMPORAL_FIRST=temporal_first, TAPS1=taps1, KW1=kw1, KQ=kq, KR=kr,
            NSLOT=triton.next_power_of_2(triton.cdiv(kr, stride_r)),
            ACT=activation_code(act), HAS_RESIDUAL=residual, FLAT_K=flat_k,
            # channels_last_3d with 16-multiple widths is aligned (what the launcher checks);
            # NCDHW never states alignment.
            X_ALIGNED=channels_last if x_aligned is None else x_aligned,
            OUT_ALIGNED=channels_last, RES_ALIGNED=channels_last and residual,
            ELEMENT_BYTES={"fp32": 4, "fp16": 2, "bf16": 2}[dtype],
            INPUT_PRECISION=precision, UPCAST_DOT=False,
            BLOCK_S=bs, BLOCK_C=bc, BLOCK_MID=bm, BLOCK_K=bk,
        )
        variants.append(AotVariant(
            name=f"conv2plus1d_bn_act[{tag},{dtype},{bs}x{bc}x{bm}x{bk},w{warps},s{stages}]",
            fn=_conv2plus1d_bn_act_fwd_kernel, signature=sig, constexprs=consts,
            num_warps=warps, num_stages=stages,
        ))

    for cfg in _GPU_CONFIGS:
        add("sf,k3x3x3,cl,res,relu", "bf16", cfg, False, (3, 3, 3), 1, True, True, "relu")
    first, narrow = _GPU_CONFIGS[0], _GPU_CONFIGS[3]
    add("tf,k3x3x3,cl,res,relu", "bf16", first, True, (3, 3, 3), 1, True, True, "relu")
    add("tf,k3x3x3,ncdhw,silu", "fp16", first, True, (3, 3, 3), 1, False, False, "silu")
    add("sf,k5x3x3,cl,tf32", "fp32", first, False, (5, 3, 3), 1, True, False, "relu", "tf32")
    add("sf,k1x3x3,s2,cl,res", "fp16", narrow, False, (1, 3, 3), 2, True, True, "identity")
    add("sf,k3x7x7,cl,stem,flat", "bf16", first, False, (3, 7, 7), 1, True, False, "relu",
        flat_k=True, x_aligned=False)
    return variants
