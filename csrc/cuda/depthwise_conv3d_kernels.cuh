// Depthwise Conv3d (groups == C_in == C_out) + scale/shift + residual + activation on CUDA, with
// its backward (grad_input and grad_weight from the gradient of the convolution output):
// the kernels and the host-side preparation of their launches. The torch op glue is in
// depthwise_conv3d_bn_act.cu; this header is also compiled as host C++ by the CPU emulation
// test (tests/test_cuda_emulation.py), which runs these kernels and preparations on the CPU.
//
// Why hand-written: a depthwise convolution does taps multiply-adds per loaded element (27 for
// X3D/CSN's 3x3x3), far too few for a GEMM formulation to pay off; it is bound by memory
// traffic, so the kernels are about reading every input element from DRAM once, in 128-bit
// accesses, and doing all taps from shared memory.
//
// Layout: NDHWC (channels_last_3d). A block owns a channel slice of vec x cvecs channels
// (64 for 16-bit data: a full 128-byte line per pixel; 32 for float32) and a spatial tile.
// Channel vectors are 8 x fp16/bf16 or 4 x float32 per access when C is a multiple of that, else
// the scalar instantiation (vec = 1) runs. All arithmetic is float32, rounded once on store.
//
// Forward (depthwise_fwd_kernel): the block walks `depths_per_block` output depths of one
// (n, spatial tile, channel slice). Shared memory holds a ring of the (kT-1)*dilT+1 input depth
// slices of the temporal window, each with its spatial halo; moving to the next output depth
// loads only the stride_t new slices, so every input element is read from DRAM once per block
// (plus the halo rows/columns shared with the neighbouring tiles). Weights ([taps][channels]) and
// scale/shift sit in shared memory as float32. Epilogue: act(acc * scale + shift [+ residual]).
//
// Backward, grad_input (depthwise_dgrad_kernel): a gather, no atomics. A block owns one input
// depth and a spatial tile; it stages the grad_conv positions that reach that tile (the
// transposed halo: at most ((kT-1)*dil)/stride + 1 depths, similarly in H and W) and sums the
// taps whose output position exists (stride divisibility checked per tap).
//
// Backward, grad_weight (depthwise_wgrad_kernel + depthwise_wgrad_reduce_kernel): deterministic.
// Each block owns a channel slice and a fixed chunk of output tiles; each thread owns up to 4
// (tap, channel vector) pairs and accumulates sum(grad_conv * input) over its chunk from shared
// memory tiles. Partial sums go to a float32 workspace [chunks][C][taps]; a second kernel adds
// the chunks in order. No float atomics, so results are bitwise reproducible run to run on a
// given device (the chunking depends on its SM count).
//
// Tile sizes come from conv_plan.h (plan_depthwise_forward_tiling /
// plan_depthwise_backward_tiling); offsets into the tensors are 64-bit.

#pragma once

#include <array>
#include <vector>

#include "device_common.cuh"
#include "host_common.h"

namespace videoconv {
namespace cuda {
namespace depthwise {

constexpr int kThreads = cuda_plan::kDirectThreads;
constexpr int kMaxWeightItems = int(cuda_plan::kDepthwiseWeightItems);

struct ConvDims {
  int n, c, d, h, w;        // input
  int z, p, q;              // output
  int kt, kh, kw;           // kernel
  int st, sh, sw, pt, ph, pw, dt, dh, dw;
};

inline ConvDims dims_of(const cuda_plan::ConvGeometry& g) {
  ConvDims s;
  s.n = int(g.n); s.c = int(g.c); s.d = int(g.d); s.h = int(g.h); s.w = int(g.w);
  s.z = int(g.z); s.p = int(g.p); s.q = int(g.q);
  s.kt = int(g.t); s.kh = int(g.r); s.kw = int(g.s);
  s.st = int(g.stride[0]); s.sh = int(g.stride[1]); s.sw = int(g.stride[2]);
  s.pt = int(g.pad[0]); s.ph = int(g.pad[1]); s.pw = int(g.pad[2]);
  s.dt = int(g.dil[0]); s.dh = int(g.dil[1]); s.dw = int(g.dil[2]);
  return s;
}

__device__ __forceinline__ int64_t ndhwc_offset(const ConvDims& s, int n, int d, int h, int w,
                                                int c, int depth, int height, int width) {
  return (((int64_t(n) * depth + d) * height + h) * int64_t(width) + w) * s.c + c;
}

// Loads V channels at `src` (or zeros when !valid) into shared memory.
template <typename T, int V>
__device__ __forceinline__ void copy_vec(T* dst, const T* src, bool valid) {
  Vec<T, V> v;
  if (valid) {
    v = *reinterpret_cast<const Vec<T, V>*>(src);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) v.v[i] = from_float<T>(0.f);
  }
  *reinterpret_cast<Vec<T, V>*>(dst) = v;
}

// ---------------------------------------------------------------------------------------------
// forward

struct FwdParams {
  ConvDims s;
  const void* x;
  const float* w;         // [taps][C] float32
  const float* scale;
  const float* shift;
  const void* residual;   // nullptr or NDHWC like y
  void* y;
  int activation;
  int cvecs, tile_p, tile_q, in_h, in_w, ring, z_per_block;
  int tiles_p, tiles_q, ctiles, zchunks;
};

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) depthwise_fwd_kernel(const FwdParams prm) {
  VIDEOCONV_DYNAMIC_SMEM(unsigned char, smem_raw);
  const ConvDims& s = prm.s;
  const int ch = prm.cvecs * V;  // channels of this block's slice (may run past C: masked)
  const int taps = s.kt * s.kh * s.kw;
  float* w_s = reinterpret_cast<float*>(smem_raw);
  float* scale_s = w_s + taps * ch;
  float* shift_s = scale_s + ch;
  T* x_s = reinterpret_cast<T*>(shift_s + ch);  // [ring][in_h][in_w][ch]
  const T* x = static_cast<const T*>(prm.x);
  const T* res = static_cast<const T*>(prm.residual);
  T* y = static_cast<T*>(prm.y);

  // 1-D grid (no 65535 limit): q tile fastest so neighbouring blocks share halo rows in L2.
  // 32-bit index arithmetic: 64-bit division is a called subroutine (stack traffic).
  unsigned b = blockIdx.x;
  const int tq = int(b % prm.tiles_q); b /= prm.tiles_q;
  const int tp = int(b % prm.tiles_p); b /= prm.tiles_p;
  const int ct = int(b % prm.ctiles); b /= prm.ctiles;
  const int zc = int(b % prm.zchunks); b /= prm.zchunks;
  const int n = int(b);
  const int c0 = ct * ch, p0 = tp * prm.tile_p, q0 = tq * prm.tile_q;
  const int z0 = zc * prm.z_per_block;
  const int z1 = min(s.z, z0 + prm.z_per_block);

  for (int i = threadIdx.x; i < taps * ch; i += kThreads) {
    const int c = c0 + i % ch;
    w_s[i] = c < s.c ? prm.w[int64_t(i / ch) * s.c + c] : 0.f;
  }
  for (int i = threadIdx.x; i < ch; i += kThreads) {
    scale_s[i] = c0 + i < s.c ? prm.scale[c0 + i] : 0.f;
    shift_s[i] = c0 + i < s.c ? prm.shift[c0 + i] : 0.f;
  }

  const int slice_items = prm.in_h * prm.in_w * prm.cvecs;
  const int h_origin = p0 * s.sh - s.ph, w_origin = q0 * s.sw - s.pw;
  int next = z0 * s.st - s.pt;  // first input depth not yet in the ring
  const int out_items = prm.tile_p * prm.tile_q * prm.cvecs;

  for (int zo = z0; zo < z1; ++zo) {
    const int lo = zo * s.st - s.pt;
    const int hi = lo + prm.ring;
    VIDEOCONV_SYNC();  // the previous depth's reads of the slots being replaced are done
    for (int d = max(next, lo); d < hi; ++d) {
      T* slot = x_s + int64_t((d + s.pt) % prm.ring) * prm.in_h * prm.in_w * ch;
      const bool d_in = d >= 0 && d < s.d;
      for (int i = threadIdx.x; i < slice_items; i += kThreads) {
        const int cv = i % prm.cvecs;
        const int iw = (i / prm.cvecs) % prm.in_w;
        const int ih = i / (prm.cvecs * prm.in_w);
        const int h = h_origin + ih, w = w_origin + iw, c = c0 + cv * V;
        const bool valid = d_in && h >= 0 && h < s.h && w >= 0 && w < s.w && c < s.c;
        const int64_t src = valid ? ndhwc_offset(s, n, d, h, w, c, s.d, s.h, s.w) : 0;
        copy_vec<T, V>(slot + (ih * prm.in_w + iw) * ch + cv * V, x + src, valid);
      }
    }
    next = hi;
    VIDEOCONV_SYNC();

    for (int i = threadIdx.x; i < out_items; i += kThreads) {
      const int cv = i % prm.cvecs;
      const int oq = (i / prm.cvecs) % prm.tile_q;
      const int op = i / (prm.cvecs * prm.tile_q);
      const int p = p0 + op, q = q0 + oq, c = c0 + cv * V;
      if (p >= s.p || q >= s.q || c >= s.c) continue;
      float acc[V];
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] = 0.f;
      for (int t = 0; t < s.kt; ++t) {
        const T* slot = x_s + int64_t((lo + t * s.dt + s.pt) % prm.ring) * prm.in_h * prm.in_w * ch;
        for (int r = 0; r < s.kh; ++r) {
          const T* row = slot + ((op * s.sh + r * s.dh) * prm.in_w + oq * s.sw) * ch + cv * V;
          const float* wrow = w_s + ((t * s.kh + r) * s.kw) * ch + cv * V;
          for (int u = 0; u < s.kw; ++u) {
            float xv[V];
            load_vec<T, V>(row + u * s.dw * ch, xv);
#pragma unroll
            for (int j = 0; j < V; ++j) acc[j] = fmaf(xv[j], wrow[u * ch + j], acc[j]);
          }
        }
      }
      const int64_t out = ndhwc_offset(s, n, zo, p, q, c, s.z, s.p, s.q);
      float rv[V];
      if (res != nullptr) {
        load_vec<T, V>(res + out, rv);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) rv[j] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        acc[j] = apply_activation(acc[j] * scale_s[cv * V + j] + shift_s[cv * V + j] + rv[j],
                                  prm.activation);
      }
      store_vec<T, V>(y + out, acc);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// backward: grad_input

struct DgradParams {
  ConvDims s;
  const void* dz;   // grad of the convolution output, NDHWC [N, Z, P, Q, C]
  const float* w;   // [taps][C] float32
  void* dx;         // NDHWC [N, D, H, W, C]
  int cvecs, tile_h, tile_w, halo_z, halo_p, halo_q;
  int tiles_h, tiles_w, ctiles;
};

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) depthwise_dgrad_kernel(const DgradParams prm) {
  VIDEOCONV_DYNAMIC_SMEM(unsigned char, smem_raw);
  const ConvDims& s = prm.s;
  const int ch = prm.cvecs * V;
  const int taps = s.kt * s.kh * s.kw;
  float* w_s = reinterpret_cast<float*>(smem_raw);
  T* dz_s = reinterpret_cast<T*>(w_s + taps * ch);  // [halo_z][halo_p][halo_q][ch]
  const T* dz = static_cast<const T*>(prm.dz);
  T* dx = static_cast<T*>(prm.dx);

  unsigned b = blockIdx.x;
  const int tw = int(b % prm.tiles_w); b /= prm.tiles_w;
  const int th = int(b % prm.tiles_h); b /= prm.tiles_h;
  const int ct = int(b % prm.ctiles); b /= prm.ctiles;
  const int d = int(b % s.d); b /= s.d;
  const int n = int(b);
  const int c0 = ct * ch, h0 = th * prm.tile_h, w0 = tw * prm.tile_w;

  for (int i = threadIdx.x; i < taps * ch; i += kThreads) {
    const int c = c0 + i % ch;
    w_s[i] = c < s.c ? prm.w[int64_t(i / ch) * s.c + c] : 0.f;
  }
  // The output positions whose receptive field reaches this tile (ceil of the lowest).
  const int z_lo = floor_div(d + s.pt - (s.kt - 1) * s.dt + s.st - 1, s.st);
  const int p_lo = floor_div(h0 + s.ph - (s.kh - 1) * s.dh + s.sh - 1, s.sh);
  const int q_lo = floor_div(w0 + s.pw - (s.kw - 1) * s.dw + s.sw - 1, s.sw);
  const int halo_items = prm.halo_z * prm.halo_p * prm.halo_q * prm.cvecs;
  for (int i = threadIdx.x; i < halo_items; i += kThreads) {
    const int cv = i % prm.cvecs;
    int rest = i / prm.cvecs;
    const int lq = rest % prm.halo_q; rest /= prm.halo_q;
    const int lp = rest % prm.halo_p;
    const int lz = rest / prm.halo_p;
    const int z = z_lo + lz, p = p_lo + lp, q = q_lo + lq, c = c0 + cv * V;
    const bool valid = z >= 0 && z < s.z && p >= 0 && p < s.p && q >= 0 && q < s.q && c < s.c;
    const int64_t src = valid ? ndhwc_offset(s, n, z, p, q, c, s.z, s.p, s.q) : 0;
    copy_vec<T, V>(dz_s + int64_t(i) * V, dz + src, valid);
  }
  VIDEOCONV_SYNC();

  const int items = prm.tile_h * prm.tile_w * prm.cvecs;
  for (int i = threadIdx.x; i < items; i += kThreads) {
    const int cv = i % prm.cvecs;
    const int iw = (i / prm.cvecs) % prm.tile_w;
    const int ih = i / (prm.cvecs * prm.tile_w);
    const int h = h0 + ih, w = w0 + iw, c = c0 + cv * V;
    if (h >= s.h || w >= s.w || c >= s.c) continue;
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.f;
    for (int t = 0; t < s.kt; ++t) {
      const int zn = d + s.pt - t * s.dt;
      if (zn < 0 || zn % s.st != 0) continue;
      const int lz = zn / s.st - z_lo;  // in [0, halo_z): out-of-range depths are zeros
      for (int r = 0; r < s.kh; ++r) {
        const int pn = h + s.ph - r * s.dh;
        if (pn < 0 || pn % s.sh != 0) continue;
        const int lp = pn / s.sh - p_lo;
        for (int u = 0; u < s.kw; ++u) {
          const int qn = w + s.pw - u * s.dw;
          if (qn < 0 || qn % s.sw != 0) continue;
          const int lq = qn / s.sw - q_lo;
          float gv[V];
          load_vec<T, V>(dz_s + (((lz * prm.halo_p + lp) * prm.halo_q + lq) * prm.cvecs + cv) * V, gv);
          const float* wt = w_s + ((t * s.kh + r) * s.kw + u) * ch + cv * V;
#pragma unroll
          for (int j = 0; j < V; ++j) acc[j] = fmaf(gv[j], wt[j], acc[j]);
        }
      }
    }
    store_vec<T, V>(dx + ndhwc_offset(s, n, d, h, w, c, s.d, s.h, s.w), acc);
  }
}

// ---------------------------------------------------------------------------------------------
// backward: grad_weight (two deterministic stages)

struct WgradParams {
  ConvDims s;
  const void* dz;    // NDHWC [N, Z, P, Q, C]
  const void* x;     // NDHWC [N, D, H, W, C]
  float* partial;    // [chunks][C][taps]
  int cvecs, tile_p, tile_q, in_h, in_w;
  int tiles_p, tiles_q, ctiles, chunks;
  int tiles, tiles_per_chunk;  // output tiles (N * Z * tiles_p * tiles_q), checked < 2^31
};

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) depthwise_wgrad_kernel(const WgradParams prm) {
  VIDEOCONV_DYNAMIC_SMEM(unsigned char, smem_raw);
  const ConvDims& s = prm.s;
  const int ch = prm.cvecs * V;
  const int taps = s.kt * s.kh * s.kw;
  T* x_s = reinterpret_cast<T*>(smem_raw);                       // [kt][in_h][in_w][ch]
  T* dz_s = x_s + int64_t(s.kt) * prm.in_h * prm.in_w * ch;      // [tile_p][tile_q][ch]
  const T* x = static_cast<const T*>(prm.x);
  const T* dz = static_cast<const T*>(prm.dz);

  const int ct = int(blockIdx.x % prm.ctiles);
  const int chunk = int(blockIdx.x / prm.ctiles);
  const int c0 = ct * ch;
  const int tile_begin = chunk * prm.tiles_per_chunk;
  const int tile_end = min(prm.tiles, tile_begin + prm.tiles_per_chunk);
  const int items = taps * prm.cvecs;

  float acc[kMaxWeightItems][V];
#pragma unroll
  for (int k = 0; k < kMaxWeightItems; ++k) {
#pragma unroll
    for (int j = 0; j < V; ++j) acc[k][j] = 0.f;
  }

  const int x_items = s.kt * prm.in_h * prm.in_w * prm.cvecs;
  const int dz_items = prm.tile_p * prm.tile_q * prm.cvecs;
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    unsigned rest = unsigned(tile);
    const int tq = int(rest % prm.tiles_q); rest /= prm.tiles_q;
    const int tp = int(rest % prm.tiles_p); rest /= prm.tiles_p;
    const int zo = int(rest % s.z);
    const int n = int(rest / s.z);
    const int p0 = tp * prm.tile_p, q0 = tq * prm.tile_q;
    VIDEOCONV_SYNC();  // the previous tile's reads are done
    for (int i = threadIdx.x; i < x_items; i += kThreads) {
      const int cv = i % prm.cvecs;
      int r = i / prm.cvecs;
      const int iw = r % prm.in_w; r /= prm.in_w;
      const int ih = r % prm.in_h;
      const int t = r / prm.in_h;
      const int d = zo * s.st - s.pt + t * s.dt;
      const int h = p0 * s.sh - s.ph + ih, w = q0 * s.sw - s.pw + iw, c = c0 + cv * V;
      const bool valid = d >= 0 && d < s.d && h >= 0 && h < s.h && w >= 0 && w < s.w && c < s.c;
      const int64_t src = valid ? ndhwc_offset(s, n, d, h, w, c, s.d, s.h, s.w) : 0;
      copy_vec<T, V>(x_s + int64_t(i) * V, x + src, valid);
    }
    for (int i = threadIdx.x; i < dz_items; i += kThreads) {
      const int cv = i % prm.cvecs;
      const int oq = (i / prm.cvecs) % prm.tile_q;
      const int op = i / (prm.cvecs * prm.tile_q);
      const int p = p0 + op, q = q0 + oq, c = c0 + cv * V;
      const bool valid = p < s.p && q < s.q && c < s.c;  // zeros outside: they add nothing
      const int64_t src = valid ? ndhwc_offset(s, n, zo, p, q, c, s.z, s.p, s.q) : 0;
      copy_vec<T, V>(dz_s + int64_t(i) * V, dz + src, valid);
    }
    VIDEOCONV_SYNC();
#pragma unroll
    for (int k = 0; k < kMaxWeightItems; ++k) {
      const int item = threadIdx.x + k * kThreads;
      if (item >= items) break;
      const int cv = item % prm.cvecs;
      const int tap = item / prm.cvecs;
      const int u = tap % s.kw, r = (tap / s.kw) % s.kh, t = tap / (s.kw * s.kh);
      for (int op = 0; op < prm.tile_p; ++op) {
        const T* xrow = x_s + ((int64_t(t) * prm.in_h + op * s.sh + r * s.dh) * prm.in_w + u * s.dw) * ch + cv * V;
        const T* grow = dz_s + int64_t(op) * prm.tile_q * ch + cv * V;
        for (int oq = 0; oq < prm.tile_q; ++oq) {
          float xv[V], gv[V];
          load_vec<T, V>(xrow + oq * s.sw * ch, xv);
          load_vec<T, V>(grow + oq * ch, gv);
#pragma unroll
          for (int j = 0; j < V; ++j) acc[k][j] = fmaf(xv[j], gv[j], acc[k][j]);
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxWeightItems; ++k) {
    const int item = threadIdx.x + k * kThreads;
    if (item >= items) break;
    const int cv = item % prm.cvecs;
    const int tap = item / prm.cvecs;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int c = c0 + cv * V + j;
      if (c < s.c) prm.partial[(int64_t(chunk) * s.c + c) * taps + tap] = acc[k][j];
    }
  }
}

// Sums the chunks' partial sums in chunk order (fixed: deterministic) into grad_weight.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_wgrad_reduce_kernel(const float* partial, T* grad_weight, int64_t elems, int chunks) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= elems) return;
  float sum = 0.f;
  for (int k = 0; k < chunks; ++k) sum += partial[int64_t(k) * elems + i];
  grad_weight[i] = from_float<T>(sum);
}

// ---------------------------------------------------------------------------------------------
// host side: from the op's arguments to a launch (shared by the CUDA op and the CPU emulation)

// Depthwise weights [C, 1, kT, kH, kW] as float32 [taps][C]: the kernels stage a channel slice
// of every tap with coalesced loads.
inline at::Tensor taps_by_channel(const at::Tensor& weight, int64_t c, int64_t taps) {
  return weight.reshape({c, taps}).t().to(at::kFloat).contiguous();
}

inline cuda_plan::ConvGeometry geometry(const char* op, const at::Tensor& input,
                                        const at::Tensor& weight, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  cuda_plan::ConvGeometry g;
  TORCH_CHECK(input.dim() == 5, op, ": expected a 5-D input, got ", input.sizes());
  const auto problems = cuda_plan::make_geometry(sizes_of(input), sizes_of(weight), to_vec(stride),
                                                 to_vec(padding), to_vec(dilation), input.size(1), &g);
  TORCH_CHECK(problems.empty(), op, ": ", problems.empty() ? "" : problems.front());
  return g;
}

// A prepared launch: kernel parameters, grid, shared memory, the vector width that selects the
// instantiation, and the tensors the parameters point into (kept alive until the launch).
template <typename Params>
struct Launch {
  Params params;
  int64_t blocks = 0;
  int64_t smem = 0;
  int vec = 1;
  std::vector<at::Tensor> keep;
};

struct ForwardLaunch : Launch<FwdParams> {
  at::Tensor y;  // NDHWC output
};

inline ForwardLaunch prepare_forward(const char* op, const at::Tensor& input,
                                     const at::Tensor& weight, const at::Tensor& scale,
                                     const at::Tensor& shift, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     c10::string_view activation,
                                     const std::optional<at::Tensor>& residual, int sm,
                                     int num_sms) {
  const cuda_plan::ConvGeometry g = geometry(op, input, weight, stride, padding, dilation);
  const cuda_plan::DType dtype = plan_dtype(input.scalar_type());
  cuda_plan::Plan plan;
  plan.kernel = "depthwise_direct";
  cuda_plan::check_dtype(&plan, dtype);
  cuda_plan::check_device(&plan, sm);
  if (plan.ok()) cuda_plan::plan_depthwise_forward(&plan, g, dtype, num_sms);
  TORCH_CHECK(plan.ok(), op, " cannot run this problem: ", plan.reasons_text());
  const std::vector<int64_t> out_size = {g.n, g.k, g.z, g.p, g.q};
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes().vec() == out_size, op, ": residual must have the output's size ",
                at::IntArrayRef(out_size), ", got ", residual->sizes());
  }
  const cuda_plan::DepthwiseTiling t = cuda_plan::plan_depthwise_forward_tiling(g, dtype, num_sms);

  ForwardLaunch l;
  const at::Tensor x = aligned_ndhwc(input);
  const at::Tensor w = taps_by_channel(weight, g.c, g.taps());
  const at::Tensor scale_f = channel_vector(scale, g.k, "scale");
  const at::Tensor shift_f = channel_vector(shift, g.k, "shift");
  at::Tensor res;
  if (residual.has_value()) res = aligned_ndhwc(*residual);
  l.y = empty_ndhwc(input, out_size);
  l.keep = {x, w, scale_f, shift_f, res};

  FwdParams& prm = l.params;
  prm.s = dims_of(g);
  prm.x = x.data_ptr();
  prm.w = w.data_ptr<float>();
  prm.scale = scale_f.data_ptr<float>();
  prm.shift = shift_f.data_ptr<float>();
  prm.residual = res.defined() ? res.data_ptr() : nullptr;
  prm.y = l.y.data_ptr();
  prm.activation = parse_activation(std::string(activation));
  prm.cvecs = int(t.cvecs);
  prm.tile_p = int(t.tile_p);
  prm.tile_q = int(t.tile_q);
  prm.in_h = int(t.in_h);
  prm.in_w = int(t.in_w);
  prm.ring = int(t.ring);
  prm.z_per_block = int(t.z_per_block);
  prm.tiles_p = int(cuda_plan::ceil_div(g.p, t.tile_p));
  prm.tiles_q = int(cuda_plan::ceil_div(g.q, t.tile_q));
  prm.ctiles = int(cuda_plan::ceil_div(cuda_plan::ceil_div(g.c, t.vec), t.cvecs));
  prm.zchunks = int(cuda_plan::ceil_div(g.z, t.z_per_block));
  l.blocks = int64_t(prm.tiles_p) * prm.tiles_q * prm.ctiles * prm.zchunks * g.n;
  l.smem = cuda_plan::depthwise_forward_smem(t, g.taps(), input.element_size());
  l.vec = int(t.vec);
  TORCH_CHECK(l.blocks > 0 && l.blocks <= cuda_plan::kMaxInt32, op, ": grid of ", l.blocks, " blocks");
  return l;
}

struct BackwardLaunch {
  bool want_dx = false, want_dw = false;
  Launch<DgradParams> dx;
  Launch<WgradParams> dw;
  at::Tensor grad_input;    // NDHWC [N, C, D, H, W] when requested
  at::Tensor grad_weight;   // [C, 1, kT, kH, kW] when requested
  at::Tensor partial;       // float32 [chunks, C, taps] workspace of the weight gradient
  int64_t weight_elems = 0; // C * taps: the reduction's length
};

inline BackwardLaunch prepare_backward(const char* op, const at::Tensor& grad_conv,
                                       const at::Tensor& input, const at::Tensor& weight,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, std::array<bool, 2> output_mask,
                                       int sm, int num_sms) {
  const cuda_plan::ConvGeometry g = geometry(op, input, weight, stride, padding, dilation);
  const cuda_plan::DType dtype = plan_dtype(input.scalar_type());
  const cuda_plan::Plan plan = cuda_plan::plan_depthwise_backward(g, dtype, sm, num_sms);
  TORCH_CHECK(plan.ok(), op, " cannot run this problem: ", plan.reasons_text());
  const std::vector<int64_t> out_size = {g.n, g.k, g.z, g.p, g.q};
  TORCH_CHECK(grad_conv.sizes().vec() == out_size, op, ": grad_conv must have the convolution "
              "output's size ", at::IntArrayRef(out_size), ", got ", grad_conv.sizes());
  const cuda_plan::DepthwiseBackwardTiling t = cuda_plan::plan_depthwise_backward_tiling(g, dtype, num_sms);
  const at::Tensor dz = aligned_ndhwc(grad_conv);
  const ConvDims s = dims_of(g);
  BackwardLaunch l;
  l.want_dx = output_mask[0];
  l.want_dw = output_mask[1];

  if (l.want_dx) {
    const at::Tensor w = taps_by_channel(weight, g.c, g.taps());
    l.grad_input = empty_ndhwc(input, input.sizes());
    l.dx.keep = {dz, w};
    DgradParams& prm = l.dx.params;
    prm.s = s;
    prm.dz = dz.data_ptr();
    prm.w = w.data_ptr<float>();
    prm.dx = l.grad_input.data_ptr();
    prm.cvecs = int(t.cvecs);
    prm.tile_h = int(t.tile_h);
    prm.tile_w = int(t.tile_w);
    prm.halo_z = int(t.halo_z);
    prm.halo_p = int(t.halo_p);
    prm.halo_q = int(t.halo_q);
    prm.tiles_h = int(cuda_plan::ceil_div(g.h, t.tile_h));
    prm.tiles_w = int(cuda_plan::ceil_div(g.w, t.tile_w));
    prm.ctiles = int(cuda_plan::ceil_div(cuda_plan::ceil_div(g.c, t.vec), t.cvecs));
    l.dx.blocks = int64_t(prm.tiles_h) * prm.tiles_w * prm.ctiles * g.d * g.n;
    l.dx.smem = t.dx_smem_bytes;
    l.dx.vec = int(t.vec);
    TORCH_CHECK(l.dx.blocks <= cuda_plan::kMaxInt32, op, ": grid of ", l.dx.blocks, " blocks");
  }

  if (l.want_dw) {
    const at::Tensor x = aligned_ndhwc(input);
    WgradParams& prm = l.dw.params;
    prm.s = s;
    prm.cvecs = int(t.wcvecs);
    prm.tile_p = int(t.tile_p);
    prm.tile_q = int(t.tile_q);
    prm.in_h = int(t.in_h);
    prm.in_w = int(t.in_w);
    prm.tiles_p = int(cuda_plan::ceil_div(g.p, t.tile_p));
    prm.tiles_q = int(cuda_plan::ceil_div(g.q, t.tile_q));
    prm.ctiles = int(cuda_plan::ceil_div(cuda_plan::ceil_div(g.c, t.vec), t.wcvecs));
    const int64_t tiles = g.n * g.z * prm.tiles_p * prm.tiles_q;
    TORCH_CHECK(tiles <= cuda_plan::kMaxInt32, op, ": too many output tiles (", tiles, ")");
    prm.tiles = int(tiles);
    prm.tiles_per_chunk = int(cuda_plan::ceil_div(tiles, t.chunks));
    // Recomputed so that no chunk is empty: every (chunk, channel, tap) slot of the workspace is
    // written by exactly one thread.
    prm.chunks = int(cuda_plan::ceil_div(tiles, prm.tiles_per_chunk));
    l.partial = at::empty({prm.chunks, g.c, g.taps()}, input.options().dtype(at::kFloat));
    prm.dz = dz.data_ptr();
    prm.x = x.data_ptr();
    prm.partial = l.partial.data_ptr<float>();
    l.dw.keep = {dz, x};
    l.dw.blocks = int64_t(prm.ctiles) * prm.chunks;
    l.dw.smem = t.dw_smem_bytes;
    l.dw.vec = int(t.vec);
    l.grad_weight = at::empty(weight.sizes(), weight.options());
    l.weight_elems = g.c * g.taps();
  }
  return l;
}

}  // namespace depthwise
}  // namespace cuda
}  // namespace videoconv
