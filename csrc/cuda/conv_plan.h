// Host-side planning of videoconv's CUDA kernels: which kernel runs a problem, with which tile
// configuration, and why it cannot run. Plain C++17, no CUDA dependency.
//
// Every decision that does not need a GPU lives here, so that it is
//
// * shared by the launchers in csrc/cuda/*.cu (they call the same functions, so what the plan
//   reports is what runs), and
// * compiled into the CPU extension too (csrc/cpu/cuda_plan.cpp exposes it as the private op
//   videoconv::_cuda_plan), so it is unit-tested without a GPU (tests/test_cuda_plan.py) and the
//   CUDA backend can ask "can you run this?" before touching the device.
//
// Sizes are int64 everywhere; anything a kernel indexes with 32-bit integers is checked here and
// refused with a reason instead of overflowing.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace videoconv {
namespace cuda_plan {

// ---------------------------------------------------------------------------------------------
// dtypes

enum class DType { kFloat16, kBFloat16, kFloat32, kFloat64, kUnknown };

inline DType parse_dtype(const std::string& name) {
  std::string n = name;
  const std::string prefix = "torch.";
  if (n.compare(0, prefix.size(), prefix) == 0) n = n.substr(prefix.size());
  if (n == "float16" || n == "half") return DType::kFloat16;
  if (n == "bfloat16") return DType::kBFloat16;
  if (n == "float32" || n == "float") return DType::kFloat32;
  if (n == "float64" || n == "double") return DType::kFloat64;
  return DType::kUnknown;
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    default: return "unknown";
  }
}

inline int64_t dtype_bytes(DType d) {
  switch (d) {
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    default: return 0;
  }
}

// Elements per 128-bit access: the vector width of every kernel's global loads and stores, and
// the channel alignment CUTLASS 2.x's Conv3d iterators require (they only issue 128-bit accesses).
inline int64_t vector_elems(DType d) { return dtype_bytes(d) ? 16 / dtype_bytes(d) : 1; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ---------------------------------------------------------------------------------------------
// limits shared by the launchers

constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();
// Shared memory a block may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize);
// the direct kernels stay under it so two or more blocks fit on an SM.
constexpr int64_t kDefaultSmemBytes = 48 * 1024;
constexpr int kDirectThreads = 256;  // block size of every hand-written kernel

// ---------------------------------------------------------------------------------------------
// a plan: what runs, its parameters, and why it cannot run

struct Plan {
  std::string kernel = "none";          // which kernel family runs the problem
  std::vector<std::string> reasons;     // why it cannot run; empty when it can
  std::vector<std::pair<std::string, int64_t>> fields;  // its parameters, in a stable order

  bool ok() const { return reasons.empty(); }

  void set(const std::string& key, int64_t value) {
    for (auto& kv : fields) {
      if (kv.first == key) {
        kv.second = value;
        return;
      }
    }
    fields.emplace_back(key, value);
  }

  int64_t get(const std::string& key, int64_t fallback = -1) const {
    for (const auto& kv : fields) {
      if (kv.first == key) return kv.second;
    }
    return fallback;
  }

  // "kernel=<name>\n<key>=<value>\n...reason=<text>\n...": one item a line, parsed by
  // videoconv/backends/cuda_plan.py.
  std::string to_string() const {
    std::ostringstream out;
    out << "kernel=" << kernel << "\n";
    for (const auto& kv : fields) out << kv.first << "=" << kv.second << "\n";
    for (const auto& r : reasons) out << "reason=" << r << "\n";
    return out.str();
  }

  // One line for error messages: "reason; reason; ...".
  std::string reasons_text() const {
    std::string text;
    for (const auto& r : reasons) {
      if (!text.empty()) text += "; ";
      text += r;
    }
    return text;
  }
};

// ---------------------------------------------------------------------------------------------
// convolution geometry

struct ConvGeometry {
  int64_t n = 0, c = 0, d = 0, h = 0, w = 0;     // input, semantic NCDHW sizes
  int64_t k = 0, cg = 0, t = 0, r = 0, s = 0;    // weight [K, C/groups, T, R, S]
  int64_t stride[3] = {1, 1, 1};
  int64_t pad[3] = {0, 0, 0};
  int64_t dil[3] = {1, 1, 1};
  int64_t groups = 1;
  int64_t z = 0, p = 0, q = 0;                   // output depth, height, width

  int64_t taps() const { return t * r * s; }
  int64_t input_elems() const { return n * c * d * h * w; }
  int64_t output_elems() const { return n * k * z * p * q; }
  int64_t weight_elems() const { return k * cg * t * r * s; }
  bool depthwise() const { return groups > 1 && groups == c && cg == 1; }
};

inline std::string join_sizes(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Fills `g` from the operator's arguments; returns the problems found (empty if none). The
// operators validate their inputs before a backend sees them; this repeats the checks that the
// kernels' index arithmetic relies on, so a direct call of a private op cannot go out of bounds.
inline std::vector<std::string> make_geometry(const std::vector<int64_t>& input_size,
                                              const std::vector<int64_t>& weight_size,
                                              const std::vector<int64_t>& stride,
                                              const std::vector<int64_t>& padding,
                                              const std::vector<int64_t>& dilation,
                                              int64_t groups, ConvGeometry* g) {
  std::vector<std::string> reasons;
  if (input_size.size() != 5) {
    reasons.push_back("expected a 5-D input size (N, C, D, H, W), got " + join_sizes(input_size));
  }
  if (weight_size.size() != 5) {
    reasons.push_back("expected a 5-D weight size (K, C/groups, T, R, S), got " +
                      join_sizes(weight_size));
  }
  if (stride.size() != 3 || padding.size() != 3 || dilation.size() != 3) {
    reasons.push_back("stride, padding and dilation must have 3 values each");
  }
  if (!reasons.empty()) return reasons;
  for (int i = 0; i < 3; ++i) {
    if (stride[i] < 1 || dilation[i] < 1 || padding[i] < 0) {
      reasons.push_back("stride and dilation must be positive and padding non-negative, got stride " +
                        join_sizes(stride) + ", padding " + join_sizes(padding) + ", dilation " +
                        join_sizes(dilation));
      return reasons;
    }
  }
  for (int64_t v : input_size) {
    if (v < 1) {
      reasons.push_back("input size must be positive in every dimension, got " +
                        join_sizes(input_size));
      return reasons;
    }
  }
  for (int64_t v : weight_size) {
    if (v < 1) {
      reasons.push_back("weight size must be positive in every dimension, got " +
                        join_sizes(weight_size));
      return reasons;
    }
  }
  g->n = input_size[0]; g->c = input_size[1]; g->d = input_size[2]; g->h = input_size[3];
  g->w = input_size[4];
  g->k = weight_size[0]; g->cg = weight_size[1]; g->t = weight_size[2]; g->r = weight_size[3];
  g->s = weight_size[4];
  g->groups = groups;
  for (int i = 0; i < 3; ++i) {
    g->stride[i] = stride[i];
    g->pad[i] = padding[i];
    g->dil[i] = dilation[i];
  }
  if (groups < 1 || g->k % groups != 0 || g->c != g->cg * groups) {
    reasons.push_back("groups=" + std::to_string(groups) + " does not match input channels " +
                      std::to_string(g->c) + " and weight size " + join_sizes(weight_size));
    return reasons;
  }
  const int64_t in_sz[3] = {g->d, g->h, g->w};
  const int64_t ker[3] = {g->t, g->r, g->s};
  int64_t out[3];
  for (int i = 0; i < 3; ++i) {
    const int64_t span = g->dil[i] * (ker[i] - 1) + 1;
    const int64_t padded = in_sz[i] + 2 * g->pad[i];
    if (padded < span) {
      reasons.push_back("kernel (with dilation) is larger than the padded input in dimension " +
                        std::to_string(i + 2));
      return reasons;
    }
    out[i] = (padded - span) / g->stride[i] + 1;
  }
  g->z = out[0]; g->p = out[1]; g->q = out[2];
  return reasons;
}

inline void add_common_fields(Plan* plan, const ConvGeometry& g) {
  plan->set("out_d", g.z);
  plan->set("out_h", g.p);
  plan->set("out_w", g.q);
}

inline void check_device(Plan* plan, int64_t sm) {
  if (sm > 0 && sm < 80) {
    plan->reasons.push_back("needs compute capability 8.0 or newer (sm_80 tensor-op and cp.async "
                            "kernels), this GPU is " + std::to_string(sm / 10) + "." +
                            std::to_string(sm % 10));
  }
}

inline void check_dtype(Plan* plan, DType dtype) {
  if (dtype == DType::kFloat64) {
    plan->reasons.push_back("dtype float64 has no CUDA kernel here (the kernels take float16, "
                            "bfloat16 and float32; the reference backend computes float64)");
  } else if (dtype == DType::kUnknown) {
    plan->reasons.push_back("unsupported dtype (the CUDA kernels take float16, bfloat16, float32)");
  }
}

// ---------------------------------------------------------------------------------------------
// CUTLASS implicit GEMM (dense and grouped conv3d_bn_act)

// The instantiated CUTLASS configurations (csrc/cuda/conv3d_bn_act.cu instantiates exactly
// these, per dtype). Kept to two per dtype so the compile check stays fast:
//   * "wide"   128x128 output tile: the default, best reuse when C_out > 64;
//   * "narrow" 128x64 output tile: C_out <= 64 (stems, early layers, 1x1x1 projections),
//     where a 128-wide tile would compute half zeros.
struct CutlassConfig {
  const char* name;
  int tile_m, tile_n, tile_k;
  int warp_m, warp_n, warp_k;
  int inst_m, inst_n, inst_k;
  int stages;
};

inline CutlassConfig cutlass_config(DType dtype, bool narrow) {
  if (dtype == DType::kFloat32) {  // TF32 tensor cores: k = 8 per instruction
    return narrow ? CutlassConfig{"tf32_128x64x16_4stage", 128, 64, 16, 64, 32, 16, 16, 8, 8, 4}
                  : CutlassConfig{"tf32_128x128x16_4stage", 128, 128, 16, 64, 32, 16, 16, 8, 8, 4};
  }
  return narrow ? CutlassConfig{"f16_128x64x32_4stage", 128, 64, 32, 64, 32, 32, 16, 8, 16, 4}
                : CutlassConfig{"f16_128x128x32_3stage", 128, 128, 32, 64, 64, 32, 16, 8, 16, 3};
}

inline int64_t cutlass_mainloop_smem(const CutlassConfig& cfg, DType dtype) {
  return int64_t(cfg.stages) * (cfg.tile_m * cfg.tile_k + cfg.tile_k * cfg.tile_n) *
         dtype_bytes(dtype);
}

// The direct depthwise kernels' tiling (forward).
struct DepthwiseTiling {
  int64_t vec = 1;          // channels per vector access (8 x 16-bit, 4 x float32, or 1)
  int64_t cvecs = 1;        // channel vectors per block: the block covers vec * cvecs channels
  int64_t tile_p = 1, tile_q = 1;  // output rows / columns per block
  int64_t ring = 1;         // input depth slices held in shared memory (the temporal window)
  int64_t in_h = 1, in_w = 1;      // input halo tile (rows, columns) of one slice
  int64_t z_per_block = 1;  // output depths a block walks through, sliding its window
  int64_t smem_bytes = 0;
};

inline int64_t depthwise_channels(const DepthwiseTiling& t) { return t.vec * t.cvecs; }

// Extent of the input needed for `tile` outputs along one dimension.
inline int64_t halo_extent(int64_t tile, int64_t stride, int64_t kernel, int64_t dilation) {
  return (tile - 1) * stride + (kernel - 1) * dilation + 1;
}

// Output tile along a dimension of size `n`: about `target`, split evenly so that the last tile
// is not mostly empty (P = 10 gives two tiles of 5, not 8 + 2).
inline int64_t even_tile(int64_t n, int64_t target) {
  return ceil_div(n, ceil_div(n, target));
}

// Shared memory of the forward kernel: weights [taps][channels] and scale/shift as float32,
// then the ring of input slices [ring][in_h][in_w][channels] in the input dtype.
inline int64_t depthwise_forward_smem(const DepthwiseTiling& t, int64_t taps, int64_t esize) {
  const int64_t ch = depthwise_channels(t);
  return (taps + 2) * ch * 4 + t.ring * t.in_h * t.in_w * ch * esize;
}

inline DepthwiseTiling plan_depthwise_forward_tiling(const ConvGeometry& g, DType dtype,
                                                     int64_t num_sms) {
  DepthwiseTiling t;
  const int64_t esize = dtype_bytes(dtype);
  t.vec = (g.c % vector_elems(dtype) == 0) ? vector_elems(dtype) : 1;
  const int64_t channel_vectors = ceil_div(g.c, t.vec);
  // A block covers 64 channels of 16-bit data (128 bytes per pixel: one full cache line) or 32
  // float32 channels, fewer when the tensor has fewer.
  const int64_t want_channels = (esize == 2 ? 64 : 32);
  t.cvecs = std::max<int64_t>(1, std::min(channel_vectors, want_channels / t.vec));
  t.ring = (g.t - 1) * g.dil[0] + 1;
  const int64_t taps = g.taps();
  int64_t target_p = 8, target_q = 8;
  for (int attempt = 0; attempt < 16; ++attempt) {
    t.tile_p = even_tile(g.p, target_p);
    t.tile_q = even_tile(g.q, target_q);
    t.in_h = halo_extent(t.tile_p, g.stride[1], g.r, g.dil[1]);
    t.in_w = halo_extent(t.tile_q, g.stride[2], g.s, g.dil[2]);
    t.smem_bytes = depthwise_forward_smem(t, taps, esize);
    if (t.smem_bytes <= kDefaultSmemBytes) break;
    // Shrink what costs most: the spatial tile first, then the channels per block.
    if (target_q > 1 && target_q >= target_p) {
      target_q = std::max<int64_t>(1, target_q / 2);
    } else if (target_p > 1) {
      target_p = std::max<int64_t>(1, target_p / 2);
    } else if (t.cvecs > 1) {
      t.cvecs = std::max<int64_t>(1, t.cvecs / 2);
    } else {
      break;
    }
  }
  // Depths per block: enough blocks to fill the GPU twice over, and within that as many depths
  // as possible, since each block reloads its (ring - stride) halo slices once at its start.
  const int64_t xy_blocks = ceil_div(channel_vectors, t.cvecs) * ceil_div(g.p, t.tile_p) *
                            ceil_div(g.q, t.tile_q);
  const int64_t want_blocks = 2 * std::max<int64_t>(num_sms, 1);
  const int64_t z_chunks = std::min(g.z, std::max<int64_t>(1, ceil_div(want_blocks, xy_blocks * g.n)));
  t.z_per_block = ceil_div(g.z, z_chunks);
  return t;
}

// The direct depthwise backward kernels' tiling.
struct DepthwiseBackwardTiling {
  int64_t vec = 1, cvecs = 1;
  // grad_input: one input depth and tile_h x tile_w input pixels per block; the grad_conv
  // halo it reads is halo_z x halo_p x halo_q output positions.
  int64_t tile_h = 1, tile_w = 1, halo_z = 1, halo_p = 1, halo_q = 1, dx_smem_bytes = 0;
  // grad_weight: blocks own (tap, channel vector) pairs; each walks a chunk of output tiles
  // (1 x tile_p x tile_q positions) and writes partial sums, reduced in a fixed order.
  int64_t wcvecs = 1, tile_p = 1, tile_q = 1, in_h = 1, in_w = 1, chunks = 1, dw_smem_bytes = 0;
  int64_t items_per_thread = 1;
};

constexpr int64_t kDepthwiseWeightItems = 4;  // (tap, channel vector) pairs per thread, at most

inline DepthwiseBackwardTiling plan_depthwise_backward_tiling(const ConvGeometry& g, DType dtype,
                                                              int64_t num_sms) {
  DepthwiseBackwardTiling t;
  const int64_t esize = dtype_bytes(dtype);
  t.vec = (g.c % vector_elems(dtype) == 0) ? vector_elems(dtype) : 1;
  const int64_t channel_vectors = ceil_div(g.c, t.vec);
  const int64_t want_channels = (esize == 2 ? 64 : 32);
  t.cvecs = std::max<int64_t>(1, std::min(channel_vectors, want_channels / t.vec));
  const int64_t taps = g.taps();
  // grad_input tiling
  int64_t target_h = 8, target_w = 8;
  for (int attempt = 0; attempt < 16; ++attempt) {
    t.tile_h = even_tile(g.h, target_h);
    t.tile_w = even_tile(g.w, target_w);
    t.halo_z = ((g.t - 1) * g.dil[0]) / g.stride[0] + 1;
    t.halo_p = (t.tile_h - 1 + (g.r - 1) * g.dil[1]) / g.stride[1] + 1;
    t.halo_q = (t.tile_w - 1 + (g.s - 1) * g.dil[2]) / g.stride[2] + 1;
    const int64_t ch = t.vec * t.cvecs;
    t.dx_smem_bytes = t.halo_z * t.halo_p * t.halo_q * ch * esize + taps * ch * 4;
    if (t.dx_smem_bytes <= kDefaultSmemBytes) break;
    if (target_w > 1 && target_w >= target_h) {
      target_w /= 2;
    } else if (target_h > 1) {
      target_h /= 2;
    } else if (t.cvecs > 1) {
      t.cvecs /= 2;
    } else {
      break;
    }
  }
  // grad_weight tiling: every (tap, channel vector) pair of the block gets a thread slot.
  t.wcvecs = std::max<int64_t>(1, std::min(channel_vectors,
                                           (kDirectThreads * kDepthwiseWeightItems) / taps));
  t.wcvecs = std::min(t.wcvecs, want_channels / t.vec > 0 ? want_channels / t.vec : 1);
  t.wcvecs = std::max<int64_t>(1, t.wcvecs);
  t.items_per_thread = ceil_div(taps * t.wcvecs, kDirectThreads);
  int64_t target_p = 8, target_q = 8;
  for (int attempt = 0; attempt < 16; ++attempt) {
    t.tile_p = even_tile(g.p, target_p);
    t.tile_q = even_tile(g.q, target_q);
    t.in_h = halo_extent(t.tile_p, g.stride[1], g.r, g.dil[1]);
    t.in_w = halo_extent(t.tile_q, g.stride[2], g.s, g.dil[2]);
    const int64_t ch = t.vec * t.wcvecs;
    t.dw_smem_bytes = (g.t * t.in_h * t.in_w + t.tile_p * t.tile_q) * ch * esize;
    if (t.dw_smem_bytes <= kDefaultSmemBytes) break;
    if (target_q > 1 && target_q >= target_p) {
      target_q /= 2;
    } else if (target_p > 1) {
      target_p /= 2;
    } else if (t.wcvecs > 1) {
      t.wcvecs /= 2;
      t.items_per_thread = ceil_div(taps * t.wcvecs, kDirectThreads);
    } else {
      break;
    }
  }
  const int64_t tiles = g.n * g.z * ceil_div(g.p, t.tile_p) * ceil_div(g.q, t.tile_q);
  const int64_t cblocks = ceil_div(channel_vectors, t.wcvecs);
  const int64_t want_blocks = 2 * std::max<int64_t>(num_sms, 1);
  t.chunks = std::min(tiles, std::max<int64_t>(1, ceil_div(want_blocks, cblocks)));
  return t;
}

inline void depthwise_common_checks(Plan* plan, const ConvGeometry& g) {
  if (g.k != g.c) {
    plan->reasons.push_back("depthwise with a channel multiplier (C_out = " + std::to_string(g.k) +
                            " = " + std::to_string(g.k / g.c) + " x C_in) is not implemented");
  }
  if (g.taps() > kDirectThreads * kDepthwiseWeightItems) {
    plan->reasons.push_back("depthwise kernel with " + std::to_string(g.taps()) +
                            " taps is larger than the direct kernels handle (" +
                            std::to_string(kDirectThreads * kDepthwiseWeightItems) + ")");
  }
  if (g.n * g.z > kMaxInt32 || g.n * g.d > kMaxInt32) {
    plan->reasons.push_back("N x depth exceeds 2^31 (grid dimension)");
  }
}

inline void plan_depthwise_forward(Plan* plan, const ConvGeometry& g, DType dtype,
                                   int64_t num_sms) {
  plan->kernel = "depthwise_direct";
  depthwise_common_checks(plan, g);
  if (!plan->ok()) return;
  const DepthwiseTiling t = plan_depthwise_forward_tiling(g, dtype, num_sms);
  if (t.smem_bytes > kDefaultSmemBytes) {
    plan->reasons.push_back("depthwise kernel and dilation too large: the smallest input tile needs " +
                            std::to_string(t.smem_bytes) + " bytes of shared memory (limit " +
                            std::to_string(kDefaultSmemBytes) + ")");
    return;
  }
  plan->set("vector_width", t.vec);
  plan->set("channels_per_block", depthwise_channels(t));
  plan->set("tile_h", t.tile_p);
  plan->set("tile_w", t.tile_q);
  plan->set("ring_slices", t.ring);
  plan->set("depths_per_block", t.z_per_block);
  plan->set("smem_bytes", t.smem_bytes);
  plan->set("grid_x", ceil_div(ceil_div(g.c, t.vec), t.cvecs) * ceil_div(g.p, t.tile_p) *
                          ceil_div(g.q, t.tile_q));
  plan->set("grid_y", g.n * ceil_div(g.z, t.z_per_block));
}

// The plan of conv3d_bn_act (dense, grouped or depthwise).
//   sm: compute capability x 10 of the device (0: unknown, checks skipped);
//   num_sms: its multiprocessor count (sizes the depthwise grid; 0 is read as 132, an H100).
inline Plan plan_conv3d(const ConvGeometry& g, DType dtype, bool has_residual, bool allow_tf32,
                        int64_t sm, int64_t num_sms) {
  (void)has_residual;  // every kernel fuses the residual; kept for the plan's signature
  Plan plan;
  if (num_sms <= 0) num_sms = 132;
  check_dtype(&plan, dtype);
  check_device(&plan, sm);
  add_common_fields(&plan, g);
  if (!plan.ok()) return plan;

  if (g.depthwise()) {
    plan_depthwise_forward(&plan, g, dtype, num_sms);
    return plan;
  }

  plan.kernel = "cutlass_implicit_gemm";
  const CutlassConfig cfg = cutlass_config(dtype, /*narrow=*/g.k / g.groups <= 64);
  const int64_t align = vector_elems(dtype);
  if (dtype == DType::kFloat32 && !allow_tf32) {
    plan.reasons.push_back("float32 with TF32 disabled (torch.backends.cudnn.allow_tf32 is False): "
                           "the CUTLASS kernels compute float32 convolutions in TF32");
  }
  if (g.t > 32 || g.r > 32 || g.s > 32) {
    plan.reasons.push_back("kernel size above 32 in some dimension (CUTLASS's optimized Conv3d "
                           "iterator keeps one mask bit per filter position)");
  }
  int64_t padded_c = g.cg;
  if (g.cg % align != 0) {
    if (g.groups == 1) {
      // CUTLASS 2.x's Conv3d iterators only issue 128-bit accesses; zero-padding the channels
      // (input and weight) costs one copy of the input and keeps the tensor-core path.
      padded_c = round_up(g.cg, align);
    } else {
      plan.reasons.push_back("grouped convolution with " + std::to_string(g.cg) +
                             " channels per group, not a multiple of " + std::to_string(align) +
                             " (CUTLASS's Conv3d iterators need 128-bit channel alignment)");
    }
  }
  const int64_t esize = dtype_bytes(dtype);
  const int64_t in_bytes = g.n * g.d * g.h * g.w * std::max(padded_c * g.groups, g.c) * esize;
  const int64_t out_bytes = g.output_elems() * esize;
  const int64_t w_bytes = g.k * g.taps() * padded_c * esize;
  if (in_bytes >= (int64_t(1) << 31) || out_bytes >= (int64_t(1) << 31) ||
      w_bytes >= (int64_t(1) << 31)) {
    plan.reasons.push_back("a tensor of 2 GiB or more (CUTLASS 2.x convolutions use 32-bit strides); "
                           "split the batch");
  }
  const int64_t gemm_m = g.n * g.z * g.p * g.q;
  const int64_t gemm_n = g.k / g.groups;
  const int64_t gemm_k = g.taps() * padded_c;
  const int64_t grid_m = ceil_div(gemm_m, cfg.tile_m);
  const int64_t grid_n = ceil_div(gemm_n, cfg.tile_n);
  if (grid_n > 65535) plan.reasons.push_back("too many output channels for the grid's y dimension");
  if (grid_m > kMaxInt32) plan.reasons.push_back("too many output positions for the grid");
  plan.set("config_" + std::string(cfg.name), 1);
  plan.set("tile_m", cfg.tile_m);
  plan.set("tile_n", cfg.tile_n);
  plan.set("tile_k", cfg.tile_k);
  plan.set("stages", cfg.stages);
  plan.set("narrow_tile", cfg.tile_n == 64 ? 1 : 0);
  plan.set("alignment", align);
  plan.set("padded_c", padded_c);
  plan.set("pads_input", padded_c != g.cg ? 1 : 0);
  // The epilogue stores 128-bit vectors when the row stride allows it, else scalars (any C_out).
  plan.set("vector_epilogue", (gemm_n % align == 0 && g.k % align == 0) ? 1 : 0);
  plan.set("launches", g.groups);
  plan.set("gemm_m", gemm_m);
  plan.set("gemm_n", gemm_n);
  plan.set("gemm_k", gemm_k);
  plan.set("grid_m", grid_m);
  plan.set("grid_n", grid_n);
  plan.set("smem_mainloop_bytes", cutlass_mainloop_smem(cfg, dtype));
  plan.set("tf32", dtype == DType::kFloat32 ? 1 : 0);
  return plan;
}

inline Plan plan_depthwise_backward(const ConvGeometry& g, DType dtype, int64_t sm,
                                    int64_t num_sms) {
  Plan plan;
  if (num_sms <= 0) num_sms = 132;
  check_dtype(&plan, dtype);
  check_device(&plan, sm);
  add_common_fields(&plan, g);
  if (!plan.ok()) return plan;
  plan.kernel = "depthwise_direct_backward";
  if (!g.depthwise()) {
    plan.reasons.push_back("not a depthwise convolution (groups must equal the input channels)");
    return plan;
  }
  depthwise_common_checks(&plan, g);
  if (!plan.ok()) return plan;
  const DepthwiseBackwardTiling t = plan_depthwise_backward_tiling(g, dtype, num_sms);
  if (t.dx_smem_bytes > kDefaultSmemBytes || t.dw_smem_bytes > kDefaultSmemBytes) {
    plan.reasons.push_back("depthwise kernel and dilation too large for the backward kernels' "
                           "shared-memory tiles");
    return plan;
  }
  plan.set("vector_width", t.vec);
  plan.set("dx_channels_per_block", t.vec * t.cvecs);
  plan.set("dx_tile_h", t.tile_h);
  plan.set("dx_tile_w", t.tile_w);
  plan.set("dx_smem_bytes", t.dx_smem_bytes);
  plan.set("dw_channels_per_block", t.vec * t.wcvecs);
  plan.set("dw_tile_h", t.tile_p);
  plan.set("dw_tile_w", t.tile_q);
  plan.set("dw_items_per_thread", t.items_per_thread);
  plan.set("dw_chunks", t.chunks);
  plan.set("dw_smem_bytes", t.dw_smem_bytes);
  plan.set("dw_workspace_bytes", t.chunks * g.c * g.taps() * 4);
  plan.set("deterministic", 1);
  return plan;
}

// ---------------------------------------------------------------------------------------------
// (2+1)D unit in one kernel

// Geometry of conv1 -> act -> conv2 (either order; each conv has its own kernel, stride and
// padding, no dilation, no groups).
struct TwoConvGeometry {
  int64_t n = 0, cin = 0, d = 0, h = 0, w = 0;
  int64_t cmid = 0, cout = 0;
  int64_t k1[3] = {1, 1, 1}, s1[3] = {1, 1, 1}, p1[3] = {0, 0, 0};
  int64_t k2[3] = {1, 1, 1}, s2[3] = {1, 1, 1}, p2[3] = {0, 0, 0};
  int64_t mid[3] = {0, 0, 0};  // intermediate D, H, W
  int64_t out[3] = {0, 0, 0};  // output D, H, W
  int64_t taps1() const { return k1[0] * k1[1] * k1[2]; }
  int64_t taps2() const { return k2[0] * k2[1] * k2[2]; }
};

inline std::vector<std::string> make_two_conv_geometry(const std::vector<int64_t>& input_size,
                                                       const std::vector<int64_t>& w1_size,
                                                       const std::vector<int64_t>& w2_size,
                                                       const std::vector<int64_t>& stride,
                                                       const std::vector<int64_t>& padding,
                                                       bool temporal_first, TwoConvGeometry* g) {
  std::vector<std::string> reasons;
  if (input_size.size() != 5 || w1_size.size() != 5 || w2_size.size() != 5) {
    reasons.push_back("expected 5-D input, w1 and w2 sizes, got " + join_sizes(input_size) + ", " +
                      join_sizes(w1_size) + ", " + join_sizes(w2_size));
    return reasons;
  }
  if (stride.size() != 3 || padding.size() != 3) {
    reasons.push_back("stride and padding must have 3 values each");
    return reasons;
  }
  for (int i = 0; i < 3; ++i) {
    if (stride[i] < 1 || padding[i] < 0) {
      reasons.push_back("stride must be positive and padding non-negative");
      return reasons;
    }
  }
  for (const auto* v : {&input_size, &w1_size, &w2_size}) {
    for (int64_t x : *v) {
      if (x < 1) {
        reasons.push_back("sizes must be positive, got " + join_sizes(*v));
        return reasons;
      }
    }
  }
  g->n = input_size[0]; g->cin = input_size[1]; g->d = input_size[2]; g->h = input_size[3];
  g->w = input_size[4];
  g->cmid = w1_size[0];
  g->cout = w2_size[0];
  if (w1_size[1] != g->cin) {
    reasons.push_back("w1 expects " + std::to_string(w1_size[1]) + " input channels, the input has " +
                      std::to_string(g->cin));
  }
  if (w2_size[1] != g->cmid) {
    reasons.push_back("w2 expects " + std::to_string(w2_size[1]) + " input channels, w1 makes " +
                      std::to_string(g->cmid));
  }
  if (!reasons.empty()) return reasons;
  // The (2+1)D split of stride/padding (videoconv.backends.reference.split_2plus1d).
  const int64_t spatial_s[3] = {1, stride[1], stride[2]}, spatial_p[3] = {0, padding[1], padding[2]};
  const int64_t temporal_s[3] = {stride[0], 1, 1}, temporal_p[3] = {padding[0], 0, 0};
  const int64_t* first_s = temporal_first ? temporal_s : spatial_s;
  const int64_t* first_p = temporal_first ? temporal_p : spatial_p;
  const int64_t* second_s = temporal_first ? spatial_s : temporal_s;
  const int64_t* second_p = temporal_first ? spatial_p : temporal_p;
  const int64_t in_sz[3] = {g->d, g->h, g->w};
  for (int i = 0; i < 3; ++i) {
    g->k1[i] = w1_size[2 + i];
    g->k2[i] = w2_size[2 + i];
    g->s1[i] = first_s[i];
    g->p1[i] = first_p[i];
    g->s2[i] = second_s[i];
    g->p2[i] = second_p[i];
    const int64_t padded1 = in_sz[i] + 2 * g->p1[i];
    if (padded1 < g->k1[i]) {
      reasons.push_back("w1's kernel is larger than the padded input in dimension " +
                        std::to_string(i + 2));
      return reasons;
    }
    g->mid[i] = (padded1 - g->k1[i]) / g->s1[i] + 1;
    const int64_t padded2 = g->mid[i] + 2 * g->p2[i];
    if (padded2 < g->k2[i]) {
      reasons.push_back("w2's kernel is larger than the padded intermediate in dimension " +
                        std::to_string(i + 2));
      return reasons;
    }
    g->out[i] = (padded2 - g->k2[i]) / g->s2[i] + 1;
  }
  return reasons;
}

// Tiling of the fused (2+1)D kernel. A block computes tile_z x tile_p x tile_q output positions
// for cout_tile output channels. It walks the intermediate channels in chunks of cmid_chunk:
// phase A computes the intermediate chunk over its halo (mid_z x mid_p x mid_q positions) from
// the input (staged in cin_chunk slices) into shared memory, rounded to the dtype as the eager
// chain stores it; phase B accumulates the second convolution from it into registers.
struct TwoConvTiling {
  int64_t tile_z = 1, tile_p = 1, tile_q = 1, cout_tile = 8;
  int64_t mid_z = 1, mid_p = 1, mid_q = 1;  // intermediate halo tile
  int64_t x_z = 1, x_p = 1, x_q = 1;        // input halo tile
  int64_t cmid_chunk = 4, cin_chunk = 4;
  int64_t smem_floats = 0;
  double cost = 0;                          // modelled time (arbitrary units), for the choice
};

// Micro-tiles of the kernel's threads (csrc/cuda/conv2plus1d_bn_act.cu uses the same numbers):
// phase A: 4 intermediate positions x 4 intermediate channels per thread;
// phase B: 4 output positions x 8 output channels per thread.
constexpr int64_t kPlusA_M = 4, kPlusA_N = 4, kPlusB_M = 4, kPlusB_N = 8;

inline int64_t two_conv_smem_floats(const TwoConvGeometry& g, const TwoConvTiling& t) {
  const int64_t mid_pos = t.mid_z * t.mid_p * t.mid_q;
  const int64_t x_pos = t.x_z * t.x_p * t.x_q;
  return x_pos * t.cin_chunk + t.cmid_chunk * t.cin_chunk * g.taps1() + mid_pos * t.cmid_chunk +
         t.cout_tile * t.cmid_chunk * g.taps2();
}

// Tile sizes to try along a dimension of size n: the candidates, clipped to n, each split
// evenly (even_tile), without duplicates.
inline std::vector<int64_t> tile_candidates(int64_t n, std::initializer_list<int64_t> wanted) {
  std::vector<int64_t> out;
  for (int64_t c : wanted) {
    const int64_t t = even_tile(n, std::min(c, n));
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  }
  return out;
}

inline bool plan_two_conv_tiling(const TwoConvGeometry& g, int64_t num_sms, TwoConvTiling* best) {
  bool found = false;
  const int64_t smem_limit = kDefaultSmemBytes / 4;
  const int64_t cout8 = round_up(g.cout, kPlusB_N);
  std::vector<int64_t> couts;
  for (int64_t c : {8, 16, 32, 64, 128, 256}) {
    if (c < cout8) couts.push_back(c);
  }
  if (cout8 <= 256) couts.push_back(cout8);
  const std::vector<int64_t> zs = tile_candidates(g.out[0], {1, 2, 4, 8, 16});
  const std::vector<int64_t> ps = tile_candidates(g.out[1], {1, 2, 4, 8});
  const std::vector<int64_t> qs = tile_candidates(g.out[2], {1, 2, 4, 8, 16});
  for (int64_t cout_tile : couts) {
    for (int64_t tz : zs) {
      for (int64_t tp : ps) {
        for (int64_t tq : qs) {
          TwoConvTiling t;
          t.tile_z = tz;
          t.tile_p = tp;
          t.tile_q = tq;
          t.cout_tile = cout_tile;
          const int64_t m = t.tile_z * t.tile_p * t.tile_q;
          if (ceil_div(m, kPlusB_M) * (cout_tile / kPlusB_N) > kDirectThreads) continue;
          t.mid_z = (t.tile_z - 1) * g.s2[0] + g.k2[0];
          t.mid_p = (t.tile_p - 1) * g.s2[1] + g.k2[1];
          t.mid_q = (t.tile_q - 1) * g.s2[2] + g.k2[2];
          t.x_z = (t.mid_z - 1) * g.s1[0] + g.k1[0];
          t.x_p = (t.mid_p - 1) * g.s1[1] + g.k1[1];
          t.x_q = (t.mid_q - 1) * g.s1[2] + g.k1[2];
          const int64_t mid_pos = t.mid_z * t.mid_p * t.mid_q;
          const int64_t pos_groups = ceil_div(mid_pos, kPlusA_M);
          if (pos_groups > kDirectThreads) continue;
          const int64_t max_chunk = kPlusA_N * (kDirectThreads / pos_groups);
          if (max_chunk < kPlusA_N) continue;
          bool fits = false;
          for (int64_t cm = std::min(max_chunk, round_up(g.cmid, kPlusA_N)); cm >= kPlusA_N;
               cm -= kPlusA_N) {
            for (int64_t cin_chunk : {16, 8, 4}) {
              t.cmid_chunk = cm;
              t.cin_chunk = std::min(cin_chunk, round_up(g.cin, 4));
              t.smem_floats = two_conv_smem_floats(g, t);
              if (t.smem_floats <= smem_limit) {
                fits = true;
                break;
              }
            }
            if (fits) break;
          }
          if (!fits) continue;
          // Model: each block's time is its multiply-adds (including the intermediate it
          // recomputes over its halo and for every output-channel tile) over the threads it keeps
          // busy; blocks run in waves of 2 per SM.
          const double tiles = double(g.n) * ceil_div(g.out[0], t.tile_z) *
                               ceil_div(g.out[1], t.tile_p) * ceil_div(g.out[2], t.tile_q) *
                               ceil_div(g.cout, cout_tile);
          const double cmid_pad = double(round_up(g.cmid, t.cmid_chunk));
          const double mac_a = double(pos_groups * kPlusA_M) * cmid_pad * double(g.cin) * g.taps1();
          const double mac_b = double(round_up(m, kPlusB_M)) * cout_tile * cmid_pad * g.taps2();
          const double busy_a = std::min<double>(kDirectThreads, pos_groups * (t.cmid_chunk / kPlusA_N));
          const double busy_b = std::min<double>(kDirectThreads, ceil_div(m, kPlusB_M) * (cout_tile / kPlusB_N));
          const double per_block = mac_a / busy_a + mac_b / busy_b;
          const double waves = std::ceil(tiles / (2.0 * std::max<int64_t>(num_sms, 1)));
          t.cost = waves * per_block;
          if (!found || t.cost < best->cost) {
            *best = t;
            found = true;
          }
        }
      }
    }
  }
  return found;
}

inline Plan plan_conv2plus1d(const TwoConvGeometry& g, DType dtype, int64_t sm, int64_t num_sms) {
  Plan plan;
  if (num_sms <= 0) num_sms = 132;
  check_dtype(&plan, dtype);
  check_device(&plan, sm);
  plan.set("out_d", g.out[0]);
  plan.set("out_h", g.out[1]);
  plan.set("out_w", g.out[2]);
  if (!plan.ok()) return plan;
  plan.kernel = "conv2plus1d_fused";
  if (g.n * ceil_div(g.out[0], 1) > kMaxInt32) plan.reasons.push_back("N x depth exceeds 2^31");
  TwoConvTiling t;
  if (!plan_two_conv_tiling(g, num_sms, &t)) {
    plan.reasons.push_back("no tile of the fused (2+1)D kernel fits in shared memory for kernels " +
                           join_sizes({g.k1[0], g.k1[1], g.k1[2]}) + " and " +
                           join_sizes({g.k2[0], g.k2[1], g.k2[2]}) +
                           " (the intermediate halo is too large)");
    return plan;
  }
  const int64_t tiles = g.n * ceil_div(g.out[0], t.tile_z) * ceil_div(g.out[1], t.tile_p) *
                        ceil_div(g.out[2], t.tile_q);
  plan.set("tile_d", t.tile_z);
  plan.set("tile_h", t.tile_p);
  plan.set("tile_w", t.tile_q);
  plan.set("cout_tile", t.cout_tile);
  plan.set("cout_tiles", ceil_div(g.cout, t.cout_tile));
  plan.set("mid_tile_positions", t.mid_z * t.mid_p * t.mid_q);
  plan.set("cmid_chunk", t.cmid_chunk);
  plan.set("cin_chunk", t.cin_chunk);
  plan.set("smem_bytes", t.smem_floats * 4);
  plan.set("grid_x", tiles);
  plan.set("grid_y", ceil_div(g.cout, t.cout_tile));
  // How many times the first convolution is computed per intermediate value (x1000): its halo
  // overlap between neighbouring tiles times the number of output-channel tiles.
  const double mid_total = double(g.n) * g.mid[0] * g.mid[1] * g.mid[2];
  const double mid_computed = double(tiles) * t.mid_z * t.mid_p * t.mid_q * ceil_div(g.cout, t.cout_tile);
  plan.set("mid_recompute_x1000", int64_t(1000.0 * mid_computed / std::max(mid_total, 1.0)));
  plan.set("cuda_core_fma", 1);
  return plan;
}

// ---------------------------------------------------------------------------------------------
// entry point of the private op videoconv::_cuda_plan

inline Plan plan_from_op(const std::string& op, const std::vector<int64_t>& input_size,
                         const std::vector<int64_t>& weight_size,
                         const std::vector<int64_t>& weight2_size,
                         const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                         const std::vector<int64_t>& dilation, int64_t groups,
                         const std::string& dtype_name_, bool residual, bool temporal_first,
                         bool allow_tf32, int64_t sm, int64_t num_sms) {
  const DType dtype = parse_dtype(dtype_name_);
  if (op == "conv3d_bn_act" || op == "depthwise_backward") {
    ConvGeometry g;
    auto problems = make_geometry(input_size, weight_size, stride, padding, dilation, groups, &g);
    if (!problems.empty()) {
      Plan plan;
      plan.reasons = problems;
      return plan;
    }
    return op == "conv3d_bn_act" ? plan_conv3d(g, dtype, residual, allow_tf32, sm, num_sms)
                                 : plan_depthwise_backward(g, dtype, sm, num_sms);
  }
  if (op == "conv2plus1d_bn_act") {
    TwoConvGeometry g;
    auto problems = make_two_conv_geometry(input_size, weight_size, weight2_size, stride, padding,
                                           temporal_first, &g);
    if (!problems.empty()) {
      Plan plan;
      plan.reasons = problems;
      return plan;
    }
    return plan_conv2plus1d(g, dtype, sm, num_sms);
  }
  Plan plan;
  plan.reasons.push_back("unknown operator '" + op +
                         "' (expected conv3d_bn_act, depthwise_backward or conv2plus1d_bn_act)");
  return plan;
}

}  // namespace cuda_plan
}  // namespace videoconv
