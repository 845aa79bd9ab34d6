"""Would bfloat16 products make the Winograd kernel faster, and at what accuracy?
(csrc/cpu/conv3d_winograd.cpp computes its products in float32, also for bfloat16 tensors; this
script is the evidence for keeping it so, and for giving F(7x7, 3x3) to bfloat16 only.)

    python benchmarks/winograd_bf16.py [--no-rate] [--channels 64 144] [--size 56]

1. Accuracy (no timing). One 3x3 spatial convolution (C_in -> C_out at size x size, padding 1,
   ReLU'd normal input and Kaiming weights, both exactly bfloat16) computed in float64 by
   Winograd's F(4x4, 3x3) (the kernel's), F(2x2, 3x3) and F(4x2, 3x3), with the transformed input
   V = B^T d B and/or the transformed weight U = G g G^T rounded to bfloat16 (the operands a
   bfloat16 GEMM would read), the products and sums exact. Errors against the exact convolution,
   next to a bfloat16 direct convolution's (oneDNN's arithmetic: exact products, float32 sums,
   one rounding of the output). "max" is relative to the largest output, "mean" to the mean
   absolute output. Then the kernel's own arithmetic: F(4x4, 3x3) and F(7x7, 3x3) with the
   transforms, products and sums in float32 (as the kernel, in another order of summation), U
   computed in float64 and rounded to float32 once (as the cpu backend), the output unrounded:
   the error float32 tensors would see (bfloat16 ones add their output rounding to it).

2. Rate (unless --no-rate). ATen's ``cpublas::brgemm`` (oneDNN's micro-kernel, what the Winograd
   kernel calls) in float32 and in bfloat16 (VNNI B operand) on the kernel's GEMM shapes:
   36 planes of (64 tiles x C_in) @ (C_in x C_out), on every thread, GFLOP/s in all. Built with
   ``torch.utils.cpp_extension.load_inline`` (about 20 s the first time).

What it means: a GEMM in bfloat16 is worth having only if its rate gain beats the extra work of
the algorithm accurate enough for it. F(4x4) does 36 products per 16 outputs (2.25 per output),
F(2x2) 16 per 4 (4 per output). See benchmarks/results/README.md for the figures on the
project's machines.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from videoconv.backends.cpu import _WINOGRAD_G, _WINOGRAD_G7

F64 = torch.float64

# Lavin & Gray's matrices: F(4, 3) and F(2, 3), each (B^T, G, A^T). F(4, 3)'s G is the one the
# cpu backend transforms the kernel's weights with; B^T and A^T are the kernel's transforms
# (input_transform6 / output_transform6 in csrc/cpu/conv3d_winograd.cpp).
_F4 = (
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
     [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    _WINOGRAD_G,
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
)
# F(7x7, 3x3): the kernel's WinogradTile<7> (B^T, A^T) and the cpu backend's _WINOGRAD_G7.
_F7 = (
    [[4, -1, -21, 21 / 4, 21, -21 / 4, -4, 1, 0], [0, -4, -3, 18, 51 / 4, -33 / 4, -3, 1, 0],
     [0, 4, -5, -16, 85 / 4, -1 / 4, -5, 1, 0], [0, -2, -1 / 2, 41 / 4, 5 / 2, -37 / 4, -2, 1, 0],
     [0, 2, -3 / 2, -39 / 4, 15 / 2, 27 / 4, -6, 1, 0], [0, -8, -14, 14, 35 / 2, -7, -7 / 2, 1, 0],
     [0, 8, -18, -6, 45 / 2, -3, -9 / 2, 1, 0], [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1, 0],
     [0, 4, -1, -21, 21 / 4, 21, -21 / 4, -4, 1]],
    _WINOGRAD_G7,
    [[1, 1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 4, 0],
     [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 16, 0], [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 64, 0],
     [0, 1, 1, 16, 16, 1 / 16, 1 / 16, 256, 0], [0, 1, -1, 32, -32, 1 / 32, -1 / 32, 1024, 0],
     [0, 1, 1, 64, 64, 1 / 64, 1 / 64, 4096, 1]],
)
_F2 = (
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
    [[1, 1, 1, 0], [0, 1, -1, -1]],
)


def _mats(spec):
    return tuple(torch.tensor(m, dtype=F64) for m in spec)


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(F64)


def winograd(xp, w, rows_spec, cols_spec, round_v: bool, round_u: bool,
             arithmetic: torch.dtype = F64) -> torch.Tensor:
    """Valid 3x3 convolution of the padded (C, H, W) ``xp`` with (C_out, C, 3, 3) ``w`` by
    Winograd with ``rows_spec`` along H and ``cols_spec`` along W, in float64, V and/or U rounded
    to bfloat16; or, with ``arithmetic=torch.float32``, U rounded to float32 and everything after
    it computed in float32 (returned as float64)."""
    (bt_h, g_h, at_h), (bt_w, g_w, at_w) = _mats(rows_spec), _mats(cols_spec)
    m_h, m_w = at_h.shape[0], at_w.shape[0]
    a_h, a_w = bt_h.shape[0], bt_w.shape[0]
    _, h, wd = xp.shape
    tiles_h, tiles_w = (h - 2) // m_h, (wd - 2) // m_w
    u = torch.einsum("ia,ocab,jb->ocij", g_h, w, g_w)
    if arithmetic != F64:
        u, xp = u.to(arithmetic), xp.to(arithmetic)
        bt_h, at_h, bt_w, at_w = (m.to(arithmetic) for m in (bt_h, at_h, bt_w, at_w))
    patches = xp.unfold(1, a_h, m_h).unfold(2, a_w, m_w)[:, :tiles_h, :tiles_w]
    v = torch.einsum("ia,ctuab,jb->ctuij", bt_h, patches, bt_w)
    u = _bf16(u) if round_u else u
    v = _bf16(v) if round_v else v
    m = torch.einsum("ctuij,ocij->otuij", v, u)
    y = torch.einsum("pi,otuij,qj->otupq", at_h, m, at_w)
    return y.permute(0, 1, 3, 2, 4).reshape(w.shape[0], tiles_h * m_h, tiles_w * m_w).to(F64)


def accuracy(c_in: int, c_out: int, size: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = _bf16(torch.relu(torch.randn(c_in, size, size, generator=g, dtype=F64)))
    w = _bf16(torch.randn(c_out, c_in, 3, 3, generator=g, dtype=F64) * (2 / (c_in * 9)) ** 0.5)
    xp = F.pad(x, (1, 1, 1, 1))
    exact = F.conv2d(xp[None], w)[0]

    def err(y):
        e = (y - exact).abs()
        return f"max {e.max() / exact.abs().max():.2e}  mean {e.mean() / exact.abs().mean():.2e}"

    direct = F.conv2d(xp[None].float(), w.float())[0].to(torch.bfloat16).to(F64)
    print(f"{c_in} -> {c_out} 3x3 at {size}x{size}, errors against the exact convolution")
    print(f"  {'bfloat16 direct (float32 sums, output rounded)':52s} {err(direct)}")
    for name, rows, cols in (("F(4x4, 3x3)", _F4, _F4), ("F(4x2, 3x3)", _F4, _F2),
                             ("F(2x2, 3x3)", _F2, _F2)):
        for round_v, round_u, what in ((False, False, "operands unrounded"),
                                       (True, True, "V and U in bfloat16")):
            y = _bf16(winograd(xp, w, rows, cols, round_v, round_u))
            print(f"  {name + ', ' + what + ', output rounded':52s} {err(y)}")
    direct32 = F.conv2d(xp[None].float(), w.float())[0].to(F64)
    print(f"  {'float32 direct (float32 sums, output unrounded)':52s} {err(direct32)}")
    for m, spec in ((4, _F4), (7, _F7)):
        if size % m:  # winograd() computes whole tiles only
            print(f"  F({m}x{m}, 3x3): skipped, {size} is not a multiple of {m}")
            continue
        y = winograd(xp, w, spec, spec, False, False, arithmetic=torch.float32)
        print(f"  {f'F({m}x{m}, 3x3), float32 arithmetic, output unrounded':52s} {err(y)}")


_RATE_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <chrono>
#include <vector>

// 36 planes of (M x K) @ (K x N), accumulating, reps times, on every thread; GFLOP/s in all.
double brgemm_rate(int64_t M, int64_t N, int64_t K, int64_t reps, bool bf16) {
  const int64_t threads = at::get_num_threads();
  std::vector<double> secs(threads, 0.0);
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      std::vector<float> C(36 * M * N, 0.f);
      std::vector<float> Af(bf16 ? 0 : 36 * M * K, 0.5f), Bf(bf16 ? 0 : 36 * K * N, 0.5f);
      std::vector<at::BFloat16> Ah(bf16 ? 36 * M * K : 0, 0.5f), Bh(bf16 ? 36 * K * N : 0, 0.5f);
      const auto start = std::chrono::steady_clock::now();
      for (int64_t r = 0; r < reps; r++) {
        for (int64_t p = 0; p < 36; p++) {
          if (bf16) {
            at::native::cpublas::brgemm(M, N, K, K, N, N, r > 0, Ah.data() + p * M * K,
                                        Bh.data() + p * K * N, C.data() + p * M * N, true);
          } else {
            at::native::cpublas::brgemm(M, N, K, K, N, N, r > 0, Af.data() + p * M * K,
                                        Bf.data() + p * K * N, C.data() + p * M * N, false);
          }
        }
      }
      secs[t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      at::native::cpublas::brgemm_release(bf16);
    }
  });
  double slowest = 0;
  for (double s : secs) slowest = std::max(slowest, s);
  return 2.0 * 36 * M * N * K * reps * threads / slowest / 1e9;
}
"""


def rate() -> None:
    from torch.utils.cpp_extension import load_inline

    ext = load_inline("videoconv_brgemm_rate", cpp_sources=[_RATE_SOURCE],
                      functions=["brgemm_rate"], extra_cflags=["-O3"], verbose=False)
    print(f"cpublas::brgemm, 36 planes, {torch.get_num_threads()} threads, GFLOP/s in all "
          f"(best of 3), torch {torch.__version__}")
    for m, n, k in ((64, 144, 64), (64, 288, 128), (64, 144, 144), (64, 64, 144)):
        rates = {}
        for name, bf16 in (("float32", False), ("bfloat16", True)):
            ext.brgemm_rate(m, n, k, 20, bf16)
            rates[name] = max(ext.brgemm_rate(m, n, k, 200, bf16) for _ in range(3))
        print(f"  M {m} N {n} K {k}: float32 {rates['float32']:6.0f}, bfloat16 "
              f"{rates['bfloat16']:6.0f} ({rates['bfloat16'] / rates['float32']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs=2, default=[64, 144])
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--no-rate", action="store_true", help="accuracy only (no C++ build)")
    args = parser.parse_args()
    accuracy(args.channels[0], args.channels[1], args.size)
    if not args.no_rate:
        rate()


if __name__ == "__main__":
    main()
