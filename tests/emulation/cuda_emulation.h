// CPU emulation of the CUDA execution model, just enough for videoconv's direct kernels
// (csrc/cuda/depthwise_conv3d_kernels.cuh, csrc/cuda/conv2plus1d_kernels.cuh): blocks run one
// after the other on 256 std::threads sharing a shared-memory buffer, with a std::barrier for
// __syncthreads(). No warp-level intrinsics are emulated (the direct kernels use none).
//
// What it verifies without a GPU: the kernels' index arithmetic (halos, rings, tails, strides,
// masks), their synchronisation structure (a missing barrier shows up as a race against
// poisoned shared memory), the epilogues, and the host-side preparation of each launch — the
// same code the CUDA ops run. What it cannot: timing, coalescing, registers, real 128-bit
// alignment faults.
//
// Include this header first: it defines VIDEOCONV_EMULATION and the macros the kernels use.

#pragma once

#define VIDEOCONV_EMULATION 1
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace videoconv_emu {

struct Index3 {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local Index3 thread_idx;
inline thread_local Index3 block_idx;
inline unsigned char* block_smem = nullptr;
inline std::barrier<>* block_barrier = nullptr;

inline void sync() { block_barrier->arrive_and_wait(); }

// Runs kernel(params) over `blocks` blocks of `threads` threads with `smem_bytes` of dynamic
// shared memory, poisoned (0xFF bytes: NaN for every float type) before each block so that a
// read of shared memory no thread wrote shows up in the results. The threads are created once
// per launch and walk the blocks in order; a second barrier separates the blocks (a kernel may
// return early, but only after its last __syncthreads, as the direct kernels do).
template <typename Params>
void run(void (*kernel)(Params), const Params& params, int64_t blocks, int64_t smem_bytes,
         int threads) {
  std::vector<unsigned char> raw(size_t(smem_bytes) + 64);
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t(63));
  std::memset(smem, 0xFF, size_t(smem_bytes));
  std::barrier<> in_block(threads);
  auto poison = [smem, smem_bytes]() noexcept { std::memset(smem, 0xFF, size_t(smem_bytes)); };
  std::barrier<decltype(poison)> between_blocks(threads, poison);
  block_barrier = &in_block;
  block_smem = smem;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      thread_idx.x = unsigned(t);
      for (int64_t b = 0; b < blocks; ++b) {
        block_idx.x = unsigned(b);
        kernel(params);
        between_blocks.arrive_and_wait();
      }
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace videoconv_emu

#define threadIdx (::videoconv_emu::thread_idx)
#define blockIdx (::videoconv_emu::block_idx)
#define VIDEOCONV_DYNAMIC_SMEM(type, name) \
  type* name = reinterpret_cast<type*>(::videoconv_emu::block_smem)
#define VIDEOCONV_SYNC() ::videoconv_emu::sync()

inline float __expf(float x) { return std::exp(x); }
using std::max;
using std::min;
