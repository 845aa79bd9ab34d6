// The fused (2+1)D kernel of videoconv::_conv2plus1d_bn_act_cuda and the host-side preparation
// of its launch (the op glue is conv2plus1d_bn_act.cu; the CPU emulation test compiles this
// header as host C++ and runs it). A whole (2+1)D unit in one kernel,
//   y = act(conv2(act(conv1(x) * scale1 + shift1)) * scale2 + shift2 [+ residual]),
// conv1 = (1, kH, kW) and conv2 = (kT, 1, 1) (spatial first), or the reverse (temporal first).
//
// The point of the kernel is that the intermediate never goes to DRAM: a block computes the
// intermediate activations its output tile needs (the tile plus conv2's halo: the temporal halo
// for spatial-first, the spatial halo for temporal-first) into shared memory and runs conv2 from
// there. The kernel itself is generic in both convolutions' kernel/stride/padding (no dilation,
// no groups), so one code path serves both orders.
//
// Structure of a block (tile_z x tile_p x tile_q output positions, cout_tile output channels;
// 256 threads):
//   for each chunk of cmid_chunk intermediate channels:
//     phase A: h[mid positions][chunk] = conv1 over C_in, staged through shared memory in
//              cin_chunk slices of the input halo tile and of w1; each thread owns 4 positions x
//              4 channels in registers. Epilogue 1: act(h * scale1 + shift1), rounded to the
//              input dtype exactly as the eager chain stores its intermediate, and zero outside
//              the intermediate tensor (conv2's zero padding).
//     phase B: acc[out positions][cout_tile] += conv2 over the chunk, from shared memory; each
//              thread owns 4 positions x 8 output channels in registers for the whole kernel.
//   Epilogue 2: act(acc * scale2 + shift2 [+ residual]) -> output dtype.
// Arbitrary C_mid/C_in/C_out: chunk tails are masked (zero weights), so any width works,
// including torchvision's 230/460/921.
//
// Performance, honestly: both phases are CUDA-core FP32 FMAs (no tensor cores), with a 2:1
// FMA-to-shared-load ratio in the inner loops. Expect a fraction of the tensor-core convolutions'
// throughput: it wins when the unit is memory bound (small channel counts, large spatial
// extent, where writing and re-reading the intermediate dominates) and loses to cuDNN/CUTLASS on
// wide late layers. The first convolution is also recomputed for the halo and once per
// output-channel tile; conv_plan.h reports that factor (mid_recompute_x1000) so the backend can
// prefer two conv3d_bn_act launches when it is large. Tile sizes come from conv_plan.h's cost
// model (plan_two_conv_tiling), which keeps shared memory under 48 KiB.

#pragma once

#include <vector>

#include "device_common.cuh"
#include "host_common.h"

namespace videoconv {
namespace cuda {
namespace plus1d {

constexpr int kThreads = cuda_plan::kDirectThreads;
constexpr int kAM = int(cuda_plan::kPlusA_M), kAN = int(cuda_plan::kPlusA_N);
constexpr int kBM = int(cuda_plan::kPlusB_M), kBN = int(cuda_plan::kPlusB_N);

struct PlusParams {
  const void* x;          // NDHWC [N, D, H, W, C_in]
  const float* w1;        // [C_mid][C_in][taps1]
  const float* scale1;
  const float* shift1;
  const float* w2;        // [C_out][C_mid][taps2]
  const float* scale2;
  const float* shift2;
  const void* residual;   // nullptr or NDHWC like y
  void* y;                // NDHWC [N, Z, P, Q, C_out]
  int n, cin, d, h, w, cmid, cout;
  int md, mh, mw;         // intermediate size
  int z, p, q;            // output size
  int k1[3], s1[3], p1[3], k2[3], s2[3], p2[3];
  int tile_z, tile_p, tile_q, cout_tile;
  int mid_z, mid_p, mid_q, x_z, x_p, x_q;
  int cmid_chunk, cin_chunk;
  int tiles_z, tiles_p, tiles_q, cout_tiles;
  int activation;
};

// Two blocks per SM (<= 128 registers, <= 48 KiB shared memory each): 16 warps to hide the
// shared-memory latency of the FMA loops.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2) conv2plus1d_kernel(const PlusParams prm) {
  VIDEOCONV_DYNAMIC_SMEM(float, smem);
  const int taps1 = prm.k1[0] * prm.k1[1] * prm.k1[2];
  const int taps2 = prm.k2[0] * prm.k2[1] * prm.k2[2];
  const int x_pos = prm.x_z * prm.x_p * prm.x_q;
  const int mid_pos = prm.mid_z * prm.mid_p * prm.mid_q;
  const int m_pos = prm.tile_z * prm.tile_p * prm.tile_q;
  float* xs = smem;                                       // [x_pos][cin_chunk]
  float* w1s = xs + x_pos * prm.cin_chunk;                // [cmid_chunk][cin_chunk][taps1]
  float* hs = w1s + prm.cmid_chunk * prm.cin_chunk * taps1;  // [mid_pos][cmid_chunk]
  float* w2s = hs + mid_pos * prm.cmid_chunk;             // [cout_tile][cmid_chunk][taps2]
  const T* x = static_cast<const T*>(prm.x);
  const T* res = static_cast<const T*>(prm.residual);
  T* y = static_cast<T*>(prm.y);

  // Output-channel tile fastest: neighbouring blocks read the same input tile (L2 hits).
  unsigned b = blockIdx.x;  // 32-bit: 64-bit division is a called subroutine
  const int ct = int(b % prm.cout_tiles); b /= prm.cout_tiles;
  const int tq = int(b % prm.tiles_q); b /= prm.tiles_q;
  const int tp = int(b % prm.tiles_p); b /= prm.tiles_p;
  const int tz = int(b % prm.tiles_z); b /= prm.tiles_z;
  const int n = int(b);
  const int k0 = ct * prm.cout_tile;
  const int o0[3] = {tz * prm.tile_z, tp * prm.tile_p, tq * prm.tile_q};
  const int m0[3] = {o0[0] * prm.s2[0] - prm.p2[0], o0[1] * prm.s2[1] - prm.p2[1],
                     o0[2] * prm.s2[2] - prm.p2[2]};
  const int x0[3] = {m0[0] * prm.s1[0] - prm.p1[0], m0[1] * prm.s1[1] - prm.p1[1],
                     m0[2] * prm.s1[2] - prm.p1[2]};
  const int tid = threadIdx.x;

  // Phase A role: 4 intermediate positions x 4 intermediate channels.
  const int a_groups_n = prm.cmid_chunk / kAN;
  const int a_groups = ((mid_pos + kAM - 1) / kAM) * a_groups_n;
  const bool a_active = tid < a_groups;
  const int a_pg = a_active ? tid / a_groups_n : 0;
  const int a_ng = a_active ? tid % a_groups_n : 0;
  int a_base[kAM];  // offset of the position's conv1 window origin in the staged input tile
#pragma unroll
  for (int i = 0; i < kAM; ++i) {
    const int mp = min(a_pg * kAM + i, mid_pos - 1);
    const int mz = mp / (prm.mid_p * prm.mid_q), my = (mp / prm.mid_q) % prm.mid_p, mx = mp % prm.mid_q;
    a_base[i] = ((mz * prm.s1[0]) * prm.x_p + my * prm.s1[1]) * prm.x_q + mx * prm.s1[2];
  }

  // Phase B role: 4 output positions x 8 output channels, accumulated over all of C_mid.
  const int b_groups_n = prm.cout_tile / kBN;
  const int b_groups = ((m_pos + kBM - 1) / kBM) * b_groups_n;
  const bool b_active = tid < b_groups;
  const int b_pg = b_active ? tid / b_groups_n : 0;
  const int b_ng = b_active ? tid % b_groups_n : 0;
  int b_base[kBM];
#pragma unroll
  for (int i = 0; i < kBM; ++i) {
    const int mp = min(b_pg * kBM + i, m_pos - 1);
    const int oz = mp / (prm.tile_p * prm.tile_q), oy = (mp / prm.tile_q) % prm.tile_p, ox = mp % prm.tile_q;
    b_base[i] = ((oz * prm.s2[0]) * prm.mid_p + oy * prm.s2[1]) * prm.mid_q + ox * prm.s2[2];
  }
  float acc_b[kBM][kBN];
#pragma unroll
  for (int i = 0; i < kBM; ++i) {
#pragma unroll
    for (int j = 0; j < kBN; ++j) acc_b[i][j] = 0.f;
  }

  for (int cm0 = 0; cm0 < prm.cmid; cm0 += prm.cmid_chunk) {
    VIDEOCONV_SYNC();  // the previous chunk's phase B is done with hs and w2s
    const int w2_items = prm.cout_tile * prm.cmid_chunk * taps2;
    for (int i = tid; i < w2_items; i += kThreads) {
      const int tap = i % taps2;
      const int cm = (i / taps2) % prm.cmid_chunk;
      const int k = i / (taps2 * prm.cmid_chunk);
      const bool valid = k0 + k < prm.cout && cm0 + cm < prm.cmid;
      w2s[i] = valid ? prm.w2[(int64_t(k0 + k) * prm.cmid + cm0 + cm) * taps2 + tap] : 0.f;
    }

    // ---- phase A: the intermediate chunk over the halo tile
    float acc_a[kAM][kAN];
#pragma unroll
    for (int i = 0; i < kAM; ++i) {
#pragma unroll
      for (int j = 0; j < kAN; ++j) acc_a[i][j] = 0.f;
    }
    for (int ci0 = 0; ci0 < prm.cin; ci0 += prm.cin_chunk) {
      const int x_items = x_pos * prm.cin_chunk;
      for (int i = tid; i < x_items; i += kThreads) {
        const int ci = i % prm.cin_chunk;
        const int pos = i / prm.cin_chunk;
        const int lx = pos % prm.x_q, ly = (pos / prm.x_q) % prm.x_p, lz = pos / (prm.x_q * prm.x_p);
        const int gz = x0[0] + lz, gy = x0[1] + ly, gx = x0[2] + lx, c = ci0 + ci;
        const bool valid = gz >= 0 && gz < prm.d && gy >= 0 && gy < prm.h && gx >= 0 && gx < prm.w &&
                           c < prm.cin;
        xs[i] = valid ? to_float(x[(((int64_t(n) * prm.d + gz) * prm.h + gy) * prm.w + gx) * prm.cin + c])
                      : 0.f;
      }
      const int w1_items = prm.cmid_chunk * prm.cin_chunk * taps1;
      for (int i = tid; i < w1_items; i += kThreads) {
        const int tap = i % taps1;
        const int ci = (i / taps1) % prm.cin_chunk;
        const int cm = i / (taps1 * prm.cin_chunk);
        const bool valid = cm0 + cm < prm.cmid && ci0 + ci < prm.cin;
        w1s[i] = valid ? prm.w1[(int64_t(cm0 + cm) * prm.cin + ci0 + ci) * taps1 + tap] : 0.f;
      }
      VIDEOCONV_SYNC();
      if (a_active) {
        const int cis = min(prm.cin_chunk, prm.cin - ci0);
        for (int ci = 0; ci < cis; ++ci) {
          for (int t = 0; t < prm.k1[0]; ++t) {
            for (int r = 0; r < prm.k1[1]; ++r) {
              for (int u = 0; u < prm.k1[2]; ++u) {
                const int off = (t * prm.x_p + r) * prm.x_q + u;
                const int tap = (t * prm.k1[1] + r) * prm.k1[2] + u;
                float av[kAM], bv[kAN];
#pragma unroll
                for (int i = 0; i < kAM; ++i) av[i] = xs[(a_base[i] + off) * prm.cin_chunk + ci];
#pragma unroll
                for (int j = 0; j < kAN; ++j) {
                  bv[j] = w1s[((a_ng * kAN + j) * prm.cin_chunk + ci) * taps1 + tap];
                }
#pragma unroll
                for (int i = 0; i < kAM; ++i) {
#pragma unroll
                  for (int j = 0; j < kAN; ++j) acc_a[i][j] = fmaf(av[i], bv[j], acc_a[i][j]);
                }
              }
            }
          }
        }
      }
      VIDEOCONV_SYNC();  // before the next slice overwrites xs / w1s
    }
    // Epilogue 1: act(h * scale1 + shift1), rounded to T like the eager intermediate; zero outside
    // the intermediate tensor (conv2's padding) and for channels past C_mid.
    if (a_active) {
#pragma unroll
      for (int i = 0; i < kAM; ++i) {
        const int mp = a_pg * kAM + i;
        if (mp >= mid_pos) continue;
        // Inside the intermediate tensor? (Recomputed here rather than kept in registers.)
        const int gz = m0[0] + mp / (prm.mid_p * prm.mid_q);
        const int gy = m0[1] + (mp / prm.mid_q) % prm.mid_p;
        const int gx = m0[2] + mp % prm.mid_q;
        const bool inside = gz >= 0 && gz < prm.md && gy >= 0 && gy < prm.mh && gx >= 0 && gx < prm.mw;
#pragma unroll
        for (int j = 0; j < kAN; ++j) {
          const int cm = cm0 + a_ng * kAN + j;
          float v = 0.f;
          if (inside && cm < prm.cmid) {
            v = apply_activation(acc_a[i][j] * prm.scale1[cm] + prm.shift1[cm], prm.activation);
            v = to_float(from_float<T>(v));
          }
          hs[mp * prm.cmid_chunk + a_ng * kAN + j] = v;
        }
      }
    }
    VIDEOCONV_SYNC();

    // ---- phase B: conv2 over this chunk of intermediate channels
    if (b_active) {
      const int cms = min(prm.cmid_chunk, prm.cmid - cm0);
      for (int cm = 0; cm < cms; ++cm) {
        for (int t = 0; t < prm.k2[0]; ++t) {
          for (int r = 0; r < prm.k2[1]; ++r) {
            for (int u = 0; u < prm.k2[2]; ++u) {
              const int off = (t * prm.mid_p + r) * prm.mid_q + u;
              const int tap = (t * prm.k2[1] + r) * prm.k2[2] + u;
              float av[kBM], bv[kBN];
#pragma unroll
              for (int i = 0; i < kBM; ++i) av[i] = hs[(b_base[i] + off) * prm.cmid_chunk + cm];
#pragma unroll
              for (int j = 0; j < kBN; ++j) {
                bv[j] = w2s[((b_ng * kBN + j) * prm.cmid_chunk + cm) * taps2 + tap];
              }
#pragma unroll
              for (int i = 0; i < kBM; ++i) {
#pragma unroll
                for (int j = 0; j < kBN; ++j) acc_b[i][j] = fmaf(av[i], bv[j], acc_b[i][j]);
              }
            }
          }
        }
      }
    }
  }

  // Epilogue 2: act(acc * scale2 + shift2 [+ residual]) -> T.
  if (!b_active) return;
#pragma unroll
  for (int i = 0; i < kBM; ++i) {
    const int mp = b_pg * kBM + i;
    if (mp >= m_pos) continue;
    const int oz = o0[0] + mp / (prm.tile_p * prm.tile_q);
    const int oy = o0[1] + (mp / prm.tile_q) % prm.tile_p;
    const int ox = o0[2] + mp % prm.tile_q;
    if (oz >= prm.z || oy >= prm.p || ox >= prm.q) continue;
    const int64_t row = ((int64_t(n) * prm.z + oz) * prm.p + oy) * prm.q + ox;
#pragma unroll
    for (int j = 0; j < kBN; ++j) {
      const int k = k0 + b_ng * kBN + j;
      if (k >= prm.cout) continue;
      const int64_t at = row * prm.cout + k;
      float u = acc_b[i][j] * prm.scale2[k] + prm.shift2[k];
      if (res != nullptr) u += to_float(res[at]);
      y[at] = from_float<T>(apply_activation(u, prm.activation));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// host side: from the op's arguments to a launch (shared by the CUDA op and the CPU emulation)

struct Conv2Plus1dLaunch {
  PlusParams params;
  int64_t blocks = 0;
  int64_t smem = 0;
  at::Tensor y;                 // NDHWC output
  std::vector<at::Tensor> keep; // what the parameters point into
};

inline Conv2Plus1dLaunch prepare(const char* op, const at::Tensor& input, const at::Tensor& w1,
                                 const at::Tensor& scale1, const at::Tensor& shift1,
                                 const at::Tensor& w2, const at::Tensor& scale2,
                                 const at::Tensor& shift2, at::IntArrayRef stride,
                                 at::IntArrayRef padding, c10::string_view activation,
                                 bool temporal_first, const std::optional<at::Tensor>& residual,
                                 int sm, int num_sms) {
  Conv2Plus1dLaunch l;
  cuda_plan::TwoConvGeometry g;
  const auto problems = cuda_plan::make_two_conv_geometry(sizes_of(input), sizes_of(w1), sizes_of(w2),
                                                          to_vec(stride), to_vec(padding),
                                                          temporal_first, &g);
  TORCH_CHECK(problems.empty(), op, ": ", problems.empty() ? "" : problems.front());
  const cuda_plan::DType dtype = plan_dtype(input.scalar_type());
  const cuda_plan::Plan plan = cuda_plan::plan_conv2plus1d(g, dtype, sm, num_sms);
  TORCH_CHECK(plan.ok(), op, " cannot run this problem: ", plan.reasons_text());
  cuda_plan::TwoConvTiling t;
  TORCH_CHECK(cuda_plan::plan_two_conv_tiling(g, num_sms, &t), op, ": no tiling fits");
  const std::vector<int64_t> out_size = {g.n, g.cout, g.out[0], g.out[1], g.out[2]};
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes().vec() == out_size, op, ": residual must have the output's size ",
                at::IntArrayRef(out_size), ", got ", residual->sizes());
  }

  const at::Tensor x = aligned_ndhwc(input);
  const at::Tensor w1f = w1.to(at::kFloat).contiguous();  // [C_mid][C_in][taps1]
  const at::Tensor w2f = w2.to(at::kFloat).contiguous();  // [C_out][C_mid][taps2]
  const at::Tensor s1 = channel_vector(scale1, g.cmid, "scale1");
  const at::Tensor b1 = channel_vector(shift1, g.cmid, "shift1");
  const at::Tensor s2 = channel_vector(scale2, g.cout, "scale2");
  const at::Tensor b2 = channel_vector(shift2, g.cout, "shift2");
  at::Tensor res;
  if (residual.has_value()) res = aligned_ndhwc(*residual);
  l.y = empty_ndhwc(input, out_size);
  l.keep = {x, w1f, w2f, s1, b1, s2, b2, res};

  PlusParams& prm = l.params;
  prm.x = x.data_ptr();
  prm.w1 = w1f.data_ptr<float>();
  prm.scale1 = s1.data_ptr<float>();
  prm.shift1 = b1.data_ptr<float>();
  prm.w2 = w2f.data_ptr<float>();
  prm.scale2 = s2.data_ptr<float>();
  prm.shift2 = b2.data_ptr<float>();
  prm.residual = res.defined() ? res.data_ptr() : nullptr;
  prm.y = l.y.data_ptr();
  prm.n = int(g.n); prm.cin = int(g.cin); prm.d = int(g.d); prm.h = int(g.h); prm.w = int(g.w);
  prm.cmid = int(g.cmid); prm.cout = int(g.cout);
  prm.md = int(g.mid[0]); prm.mh = int(g.mid[1]); prm.mw = int(g.mid[2]);
  prm.z = int(g.out[0]); prm.p = int(g.out[1]); prm.q = int(g.out[2]);
  for (int i = 0; i < 3; ++i) {
    prm.k1[i] = int(g.k1[i]); prm.s1[i] = int(g.s1[i]); prm.p1[i] = int(g.p1[i]);
    prm.k2[i] = int(g.k2[i]); prm.s2[i] = int(g.s2[i]); prm.p2[i] = int(g.p2[i]);
  }
  prm.tile_z = int(t.tile_z); prm.tile_p = int(t.tile_p); prm.tile_q = int(t.tile_q);
  prm.cout_tile = int(t.cout_tile);
  prm.mid_z = int(t.mid_z); prm.mid_p = int(t.mid_p); prm.mid_q = int(t.mid_q);
  prm.x_z = int(t.x_z); prm.x_p = int(t.x_p); prm.x_q = int(t.x_q);
  prm.cmid_chunk = int(t.cmid_chunk);
  prm.cin_chunk = int(t.cin_chunk);
  prm.tiles_z = int(cuda_plan::ceil_div(g.out[0], t.tile_z));
  prm.tiles_p = int(cuda_plan::ceil_div(g.out[1], t.tile_p));
  prm.tiles_q = int(cuda_plan::ceil_div(g.out[2], t.tile_q));
  prm.cout_tiles = int(cuda_plan::ceil_div(g.cout, t.cout_tile));
  prm.activation = parse_activation(std::string(activation));
  l.blocks = g.n * int64_t(prm.tiles_z) * prm.tiles_p * prm.tiles_q * prm.cout_tiles;
  TORCH_CHECK(l.blocks > 0 && l.blocks <= cuda_plan::kMaxInt32, op, ": grid of ", l.blocks, " blocks");
  l.smem = t.smem_floats * int64_t(sizeof(float));
  return l;
}

}  // namespace plus1d
}  // namespace cuda
}  // namespace videoconv
