"""Triton ``conv3d_bn_stats``: the implicit-GEMM convolution of ``conv3d_bn_act`` with an
epilogue that stores ``z`` and reduces the tile it holds in registers to per-channel batch
statistics (training-mode BatchNorm; the op's contract is in videoconv/ops/conv3d_bn_stats.py).

Mainloop
    ``_implicit_gemm_tile`` of videoconv/triton/conv3d_bn_act.py, inlined: same K walks, same
    gathers, same float32 accumulation, every ``groups`` (depthwise included: this kernel is
    the GEMM with ``C_out/g`` columns per group; the direct depthwise kernel has no statistics
    epilogue yet, see "Not done" below).

Epilogue
    1. ``z`` is rounded to the output dtype and stored (the same two store layouts as
       ``conv3d_bn_act``: vectorised row-major for aligned channels_last_3d, transposed with
       lanes along the positions otherwise). The statistics are taken from the *rounded* values,
       so that they describe exactly the tensor the BatchNorm then normalises (the reference
       computes them from its stored output too).
    2. Per channel of the tile (``BLOCK_N`` columns, ``n_t <= BLOCK_M`` valid rows): the tile
       sum in float32, giving the approximate tile mean ``m``; then ``D = sum(z - m)`` and
       ``Q = sum((z - m)^2)`` in float32, from registers. The tile's sum ``n_t m + D`` and
       centred sum of squares ``Q - D^2 / n_t`` (the corrected two-pass algorithm: exact even
       when the float32 first-pass mean is off by an ulp of a large mean) are formed in float64
       (the small correction ``D^2 / n_t`` in float32) and stored to a ``[M tiles, C_out]``
       float64 buffer. Centring inside the tile is what
       avoids the cancellation of ``E[z^2] - E[z]^2`` when ``|mean| >> std``.
    3. The launcher merges the tiles with torch ops in float64 (Chan et al.)::

           mean = sum_t S_t / M,   M2 = sum_t M2_t + sum_t n_t (S_t / n_t - mean)^2

       No atomics: every (tile, channel) partial has one writer, and the merge is a plain
       reduction over a fixed axis, so the result is bitwise reproducible.

Determinism and configuration
    The partials follow the tile height ``BLOCK_M`` (and ``z`` itself the ``BLOCK_K`` of the
    reduction), so this kernel is deliberately *not* autotuned: a timing-based choice could
    change the bits between processes or machines. The configuration is a function of the shape
    (:func:`_pick_config`: the first of ``conv3d_bn_act``'s GPU configurations its pruning keeps,
    largest tiles first).

Not done
    The direct depthwise kernel (videoconv/triton/depthwise_conv3d_bn_act.py) has no statistics
    epilogue; depthwise layers take this GEMM with one column per group (correct, and the
    depthwise *backward* still runs the direct kernels through ``_conv3d_input_weight_grad``).
    Normalisation + activation run as a separate light element-wise step
    (videoconv/ops/conv3d_bn_act_train.py), not yet in the next convolution's prologue.

Under ``TRITON_INTERPRET=1`` (CPU tensors) it runs with ``conv3d_bn_act``'s single interpreter
configuration; bfloat16 dot operands are upcast there only (triton-lang/triton#11584).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, AotVariant
from .conv3d_bn_act import (_MIN_EPILOGUE_VEC, _config_table, _implicit_gemm_tile, _pick,
                            _input_precision, _output_size, _prune_configs, _row_offsets, _triple,
                            channel_vector, pack_weight, use_flat_k)
from .conv3d_bn_act import not_supported_reasons as _conv_reasons

__all__ = ["conv3d_bn_stats", "not_supported_reasons", "aot_variants"]


@triton.jit(do_not_specialize=["stride_xc", "stride_oc"])
def _conv3d_bn_stats_kernel(
    x_ptr, w_ptr, out_ptr, psum_ptr, pm2_ptr,
    M, C_IN_G, C_OUT_G, C_OUT, W_N,
    D, H, W, D_OUT, H_OUT, W_OUT,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_on, stride_oc, stride_od, stride_oh, stride_ow,
    STRIDE_D, STRIDE_H, STRIDE_W,
    PAD_D, PAD_H, PAD_W,
    DIL_D, DIL_H, DIL_W,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    FLAT_K: tl.constexpr,
    X_VEC: tl.constexpr,
    OUT_VEC: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_N]`` tile of ``z`` (group ``program_id(1)``), stored, plus its
    per-channel float64 partials ``(sum, centred sum of squares)`` at row ``pid_m`` of
    ``psum``/``pm2`` (``[cdiv(M, BLOCK_M), C_OUT]``)."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    num_n = tl.cdiv(C_OUT_G, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    OUT_BYTES: tl.constexpr = out_ptr.dtype.element_ty.primitive_bitwidth // 8

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _implicit_gemm_tile(
        x_ptr, w_ptr, offs_m, offs_n, g, M, C_IN_G, W_N, D, H, W, D_OUT, H_OUT, W_OUT,
        stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
        STRIDE_D, STRIDE_H, STRIDE_W, PAD_D, PAD_H, PAD_W, DIL_D, DIL_H, DIL_W,
        KD, KH, KW, FLAT_K, X_VEC, INPUT_PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_K)

    # 1. z, rounded once to the output dtype and stored.
    z = acc.to(out_ptr.dtype.element_ty)
    o_rows = _row_offsets(offs_m, D_OUT, H_OUT, W_OUT, stride_on, stride_od, stride_oh,
                          stride_ow)
    if OUT_VEC > 1:
        C_OUT_V = (C_OUT_G // OUT_VEC) * OUT_VEC
        co = g * C_OUT_V + offs_n
        mask = (offs_m < M)[:, None] & (offs_n < C_OUT_V)[None, :]
        o_ptrs = tl.multiple_of(out_ptr + (o_rows[:, None] + co[None, :]),
                                [1, OUT_VEC * OUT_BYTES])
        tl.store(o_ptrs, z, mask=mask)
    else:
        co = g * C_OUT_G + offs_n
        mask = (offs_n < C_OUT_G)[:, None] & (offs_m < M)[None, :]
        o_offs = (co.to(tl.int64) * stride_oc)[:, None] + o_rows[None, :]
        tl.store(out_ptr + o_offs, tl.trans(z), mask=mask)

    # 2. Statistics of the stored values, per channel of the tile (corrected two-pass).
    # The centre m need not be exact (the correction D makes the result independent of it), so
    # it takes a reciprocal, not a division per column; likewise the correction D^2 / n, a tiny
    # term, is formed in float32. No per-element divisions (a float64 one is a subroutine call
    # with a local frame in PTX).
    row_ok = (offs_m < M)[:, None]
    n_rows = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M)
    inv_n = 1.0 / n_rows.to(tl.float32)
    zf = tl.where(row_ok, z.to(tl.float32), 0.0)
    m = tl.sum(zf, axis=0) * inv_n
    d = tl.where(row_ok, zf - m[None, :], 0.0)
    dsum = tl.sum(d, axis=0)
    q = tl.sum(d * d, axis=0)
    correction = dsum * dsum * inv_n
    tile_sum = n_rows.to(tl.float64) * m.to(tl.float64) + dsum.to(tl.float64)
    tile_m2 = tl.maximum(q.to(tl.float64) - correction.to(tl.float64), 0.0)
    p_offs = pid_m.to(tl.int64) * C_OUT + g * C_OUT_G + offs_n
    mask_n = offs_n < C_OUT_G
    tl.store(psum_ptr + p_offs, tile_sum, mask=mask_n)
    tl.store(pm2_ptr + p_offs, tile_m2, mask=mask_n)


# ----------------------------------------------------------------------------------------------
# launcher


def _pick_config(m: int, c_out_g: int, out_vec: int) -> Tuple[int, int, int, int, int]:
    """The configuration for this shape: a pure function of it (see "Determinism" above)."""
    table = _config_table()
    if INTERPRET:
        return table[0]
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w,
                             num_stages=st) for bm, bn, bk, w, st in table]
    kept = _prune_configs(configs, {"C_OUT_G": c_out_g, "M": m}, OUT_VEC=out_vec)
    c = kept[0]
    return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
            c.num_stages)


def merge_tile_stats(psum: torch.Tensor, pm2: torch.Tensor, m: int, block_m: int
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(mean, biased var)`` per channel from the ``[tiles, C]`` partials of tiles of
    ``block_m`` rows (the last one partial), merged in tile order (Chan et al.)."""
    tiles = psum.shape[0]
    counts = (m - torch.arange(tiles, device=psum.device, dtype=torch.float64) * block_m
              ).clamp_(max=block_m).unsqueeze(1)
    mean = psum.sum(0) / m
    m2 = pm2.sum(0) + (counts * (psum / counts - mean).square()).sum(0)
    return mean, m2 / m


def conv3d_bn_stats(input, weight, stride, padding, dilation, groups,
                    config: Optional[Tuple[int, int, int, int, int]] = None):
    """``(out, mean, var)`` as ``videoconv.ops.conv3d_bn_stats`` (arguments already validated;
    see :func:`not_supported_reasons`). ``config`` (``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps,
    num_stages)``) overrides the shape's configuration (tests: several tile heights)."""
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
    out_vec = channel_vector(out, c_out_g, _MIN_EPILOGUE_VEC)
    bm, bn, bk, warps, stages = config or _pick_config(m, c_out_g, out_vec)
    tiles_m = triton.cdiv(m, bm)
    psum = torch.empty(tiles_m, c_out, dtype=torch.float64, device=input.device)
    pm2 = torch.empty_like(psum)
    w_packed = pack_weight(weight, groups)
    grid = (tiles_m * triton.cdiv(c_out_g, bn), groups)
    with torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext():
        _conv3d_bn_stats_kernel[grid](
            input, w_packed, out, psum, pm2,
            m, c_in_g, c_out_g, c_out, w_packed.shape[2],
            *input.shape[2:], d_out, h_out, w_out,
            *input.stride(), *out.stride(),
            *stride, *padding, *dilation,
            KD=weight.shape[2], KH=weight.shape[3], KW=weight.shape[4],
            FLAT_K=use_flat_k(c_in_g, bk),
            X_VEC=channel_vector(input, c_in_g),
            OUT_VEC=out_vec,
            INPUT_PRECISION=_input_precision(input.dtype),
            UPCAST_DOT=INTERPRET and input.dtype == torch.bfloat16,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
        )
    mean, var = merge_tile_stats(psum, pm2, m, bm)
    return out, mean, var


def not_supported_reasons(input, weight, stride, padding, dilation, groups, **_) -> List[str]:
    """Why this kernel cannot run these inputs (empty if it can): the GEMM kernel's limits."""
    return _conv_reasons(input, weight, stride, padding, dilation, groups)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile variants


def _aot_variant(tag: str, dtype: str, cfg, kernel, channels_last: bool, x_vec: int,
                 out_vec: int, flat_k: bool, precision: str = "ieee") -> AotVariant:
    sig: Dict[str, str] = {}
    for name in ("x_ptr", "w_ptr", "out_ptr"):
        sig[name] = f"*{dtype}"
    sig["psum_ptr"] = sig["pm2_ptr"] = "*fp64"
    for name in ("M", "C_IN_G", "C_OUT_G", "C_OUT", "W_N", "D", "H", "W", "D_OUT", "H_OUT",
                 "W_OUT"):
        sig[name] = "i32"
    consts: Dict[str, Any] = {}
    for t in ("x", "o"):
        for dim in "ncdhw":
            name = f"stride_{t}{dim}"
            if dim == "w" and not channels_last:  # Triton specialises a unit W stride (NCDHW)
                consts[name] = 1
            else:
                sig[name] = "i32"
    for name in ("STRIDE_D", "STRIDE_H", "STRIDE_W", "PAD_D", "PAD_H", "PAD_W",
                 "DIL_D", "DIL_H", "DIL_W"):
        sig[name] = "i32"
    bm, bn, bk, warps, stages = cfg
    consts.update(KD=kernel[0], KH=kernel[1], KW=kernel[2], FLAT_K=flat_k, X_VEC=x_vec,
                  OUT_VEC=out_vec, INPUT_PRECISION=precision, UPCAST_DOT=False,
                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return AotVariant(
        name=f"conv3d_bn_stats[{tag},{dtype},{bm}x{bn}x{bk},w{warps},s{stages}]",
        fn=_conv3d_bn_stats_kernel, signature=sig, constexprs=consts,
        num_warps=warps, num_stages=stages,
    )


def aot_variants() -> List[AotVariant]:
    """What a GPU runs in training: the largest tiles for bfloat16 channels_last_3d 3x3x3
    (vectorised in and out), a tall narrow tile, NCDHW float16 (transposed store), the flat K walk
    of the RGB stem, and float32 with TF32."""
    return [
        _aot_variant("k333,cl,v8", "bf16", _pick(128, 128, 32), (3, 3, 3), True, 8, 8, False),
        _aot_variant("k333,cl,v8", "bf16", _pick(256, 64, 32), (3, 3, 3), True, 8, 8, False),
        _aot_variant("k311,cl,v8", "bf16", _pick(128, 16, 32), (3, 1, 1), True, 8, 8, False),
        _aot_variant("k333,ncdhw", "fp16", _pick(64, 64, 32), (3, 3, 3), False, 1, 1, False),
        _aot_variant("k377,cl,stem,flat", "bf16", _pick(128, 64, 32), (3, 7, 7), True, 1, 8,
                     True),
        _aot_variant("k133,cl,v4,tf32", "fp32", _pick(128, 64, 32), (1, 3, 3), True, 4, 4, False,
                     "tf32"),
    ]
