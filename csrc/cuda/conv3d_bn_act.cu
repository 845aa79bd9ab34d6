// videoconv::_conv3d_bn_act_cuda: y = act(conv3d(x, w) * scale + shift [+ residual]) on CUDA.
//
// Algorithm. The convolution is CUTLASS 2.x's implicit GEMM over NDHWC (Conv3dFprop,
// ImplicitGemmMultistage mainloop with the optimized activation/filter iterators): GEMM
// M = N*Z*P*Q output positions, N = C_out, K = T*R*S*C_in, operands streamed global -> shared
// memory with cp.async in a 3-4 stage pipeline and multiplied on Sm80 tensor cores (16-bit
// inputs: fp16/bf16 mma with fp32 accumulation; float32: TF32 mma with fp32 accumulation, as
// cuDNN does when torch allows TF32). Only the epilogue is ours.
//
// Epilogue. CUTLASS's stock epilogues take a scalar alpha, one broadcast vector and one source
// tensor; this op needs two per-channel vectors (scale, shift) *and* a residual tensor. So the
// kernel below is CUTLASS's ImplicitGemmConvolution with its epilogue replaced by an
// EpilogueWithVisitor (the mechanism of CUTLASS's GEMM+softmax example): accumulators go through
// shared memory exactly as in the stock epilogue, and our visitor sees each thread's 128-bit
// fragment with its (row, column) coordinates, computes act(acc * scale[c] + shift[c] + res) in
// float32 and rounds once to the output dtype, loading the residual and storing the output as
// one 128-bit access per fragment. The output rows are NDHWC positions, so the output is a
// row-major matrix with leading dimension C_out (ld = total C_out for grouped launches).
//
// Alignment. CUTLASS 2.x's Conv3d iterators only issue 128-bit accesses, so C_in must be a
// multiple of 8 (16-bit) or 4 (float32). For groups == 1 other C_in are zero-padded on the host
// (input and weight; one extra copy of the input, e.g. the RGB stem C_in = 3 -> 8); grouped
// problems with misaligned channels per group are refused with a reason. C_out is free: the
// visitor stores 128-bit vectors when C_out is a multiple of the vector width and falls back to
// guarded scalar loads/stores otherwise (torchvision's R(2+1)D widths 230/460/921).
//
// Grouped convolution (groups > 1, not depthwise) runs as one launch per group on channel
// slices: the activation iterator honours the full NDHWC strides, so a group's input is a
// pointer offset with the full-C strides; weights of a group are contiguous. Depthwise
// convolutions go to the direct kernels of depthwise_conv3d_bn_act.cu.
//
// Instantiations: per dtype (fp16, bf16, fp32/tf32) a "wide" 128x128 and a "narrow" 128x64
// output tile (C_out <= 64); conv_plan.h picks one and lists everything it checks.

#include <torch/library.h>

#include "common.cuh"

#include "cutlass/conv/conv3d_problem_size.h"
#include "cutlass/conv/kernel/default_conv3d_fprop.h"
#include "cutlass/cutlass.h"
#include "cutlass/device_kernel.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/epilogue/threadblock/epilogue_with_visitor.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"
#include "cutlass/layout/tensor.h"
#include "cutlass/numeric_conversion.h"

namespace videoconv {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// the epilogue visitor: act(acc * scale + shift [+ residual]) -> output dtype

template <typename OutputTileIterator_, typename ElementAccumulator_>
class BnActVisitor {
 public:
  using OutputTileIterator = OutputTileIterator_;
  using ElementAccumulator = ElementAccumulator_;
  using ElementOutput = typename OutputTileIterator::Element;
  using ThreadMap = typename OutputTileIterator::ThreadMap;

  static int const kIterations = OutputTileIterator::kIterations;
  static int const kElementsPerAccess = OutputTileIterator::kElementsPerAccess;

  using AccumulatorFragment = cutlass::Array<ElementAccumulator, kElementsPerAccess>;
  using OutputVector = cutlass::AlignedArray<ElementOutput, kElementsPerAccess>;

  struct Params {
    ElementOutput* ptr_out = nullptr;
    ElementOutput const* ptr_residual = nullptr;  // nullptr: no residual
    float const* scale = nullptr;
    float const* shift = nullptr;
    int64_t ld_out = 0;       // row stride (elements) of the output and the residual
    int activation = kIdentity;
    bool vector_access = true;  // 128-bit loads/stores allowed (ld and column offset align)
    typename OutputTileIterator::Params iterator_params;
  };

  struct SharedStorage {};

 private:
  Params const& params_;
  cutlass::MatrixCoord extent_;
  // Only its coordinates are used (thread_start() follows the epilogue's steps); loads and
  // stores are issued directly per 128-bit fragment, so no step-sized fragments are held in
  // registers (the mainloop's accumulators already use most of them).
  OutputTileIterator iterator_;

 public:
  CUTLASS_DEVICE
  BnActVisitor(Params const& params, SharedStorage&, cutlass::MatrixCoord const& extent,
               int thread_idx, int, int, cutlass::MatrixCoord const& threadblock_offset)
      : params_(params),
        extent_(extent),
        iterator_(params.iterator_params, params.ptr_out, extent, thread_idx, threadblock_offset) {}

  CUTLASS_DEVICE void set_k_partition(int, int) {}
  CUTLASS_DEVICE void set_batch_index(int) {}
  CUTLASS_DEVICE void begin_epilogue() {}
  CUTLASS_DEVICE void begin_step(int) {}
  CUTLASS_DEVICE void begin_row(int) {}

  CUTLASS_DEVICE void visit(int, int, int, int frag_idx, AccumulatorFragment const& accum) {
    const cutlass::MatrixCoord coord =
        iterator_.thread_start() + ThreadMap::iteration_offset(frag_idx);
    const int column = coord.column();
    if (coord.row() >= extent_.row() || column >= extent_.column()) return;
    const int64_t offset = int64_t(coord.row()) * params_.ld_out + column;
    // A whole vector when the row stride allows it and the vector is inside the matrix (C_out is
    // then a multiple of the vector width, so a vector is either fully in or fully out).
    const bool whole = params_.vector_access;
    float u[kElementsPerAccess];
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kElementsPerAccess; ++i) {
      const bool in = whole || column + i < extent_.column();
      // scale/shift: C_out floats, read through the read-only cache (L1 hits after the first row)
      u[i] = in ? float(accum[i]) * __ldg(params_.scale + column + i) +
                      __ldg(params_.shift + column + i)
                : 0.f;
    }
    if (params_.ptr_residual != nullptr) {
      if (whole) {
        const OutputVector r = *reinterpret_cast<OutputVector const*>(params_.ptr_residual + offset);
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kElementsPerAccess; ++i) u[i] += float(r[i]);
      } else {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kElementsPerAccess; ++i) {
          if (column + i < extent_.column()) u[i] += float(params_.ptr_residual[offset + i]);
        }
      }
    }
    OutputVector out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kElementsPerAccess; ++i) {
      out[i] = ElementOutput(apply_activation(u[i], params_.activation));
    }
    if (whole) {
      *reinterpret_cast<OutputVector*>(params_.ptr_out + offset) = out;
    } else {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kElementsPerAccess; ++i) {
        if (column + i < extent_.column()) params_.ptr_out[offset + i] = out[i];
      }
    }
  }

  CUTLASS_DEVICE void end_row(int) {}
  CUTLASS_DEVICE void end_step(int) { ++iterator_; }
  CUTLASS_DEVICE void end_epilogue() {}
};

// ---------------------------------------------------------------------------------------------
// the kernel: CUTLASS's ImplicitGemmConvolution mainloop + the visitor epilogue

template <typename DefaultKernel_>
struct Conv3dBnActKernel {
  using DefaultKernel = DefaultKernel_;  // cutlass::conv::kernel::ImplicitGemmConvolution<...>
  using Mma = typename DefaultKernel::Mma;
  using ThreadblockSwizzle = typename DefaultKernel::ThreadblockSwizzle;
  using ElementA = typename DefaultKernel::ElementA;
  using ElementB = typename DefaultKernel::ElementB;
  using ElementC = typename DefaultKernel::ElementC;
  using Visitor = BnActVisitor<typename DefaultKernel::Epilogue::OutputTileIterator, float>;
  using Epilogue = typename cutlass::epilogue::threadblock::EpilogueWithVisitorFromExistingEpilogue<
      Visitor, typename DefaultKernel::Epilogue>::Epilogue;
  static int const kThreadCount = DefaultKernel::kThreadCount;

  struct Params {
    typename DefaultKernel::Params mainloop;  // problem, grid, iterator parameters
    typename Visitor::Params epilogue;
  };

  union SharedStorage {
    typename Mma::SharedStorage main_loop;
    struct {
      typename Epilogue::SharedStorage epilogue;
      typename Visitor::SharedStorage visitor;
    } epilogue;
  };

  CUTLASS_DEVICE
  void operator()(Params const& params, SharedStorage& shared_storage) {
    auto const& p = params.mainloop;
    ThreadblockSwizzle threadblock_swizzle;
    const cutlass::gemm::GemmCoord tile = threadblock_swizzle.get_tile_offset(p.swizzle_log_tile);
    if (p.grid_tiled_shape.m() <= tile.m() || p.grid_tiled_shape.n() <= tile.n()) return;

    const int thread_idx = threadIdx.x;
    const int warp_idx = cutlass::canonical_warp_idx_sync();
    const int lane_idx = threadIdx.x % 32;

    typename Mma::IteratorA iterator_A(p.iterator_A, p.problem_size, p.ptr_A, thread_idx,
                                       cutlass::MatrixCoord(tile.m() * Mma::Shape::kM,
                                                            tile.k() * Mma::Shape::kK));
    typename Mma::IteratorB iterator_B(p.iterator_B, p.problem_size, p.ptr_B, thread_idx,
                                       cutlass::MatrixCoord(tile.k() * Mma::Shape::kK,
                                                            tile.n() * Mma::Shape::kN));
    Mma mma(shared_storage.main_loop, thread_idx, warp_idx, lane_idx);
    typename Mma::FragmentC accumulators;
    accumulators.clear();
    mma(p.gemm_k_iterations, accumulators, iterator_A, iterator_B, accumulators,
        p.gemm_k_iterations_per_channel);

    const cutlass::MatrixCoord threadblock_offset(tile.m() * Mma::Shape::kM,
                                                  tile.n() * Mma::Shape::kN);
    Visitor visitor(params.epilogue, shared_storage.epilogue.visitor,
                    cutlass::MatrixCoord(p.implicit_gemm_problem_size.m(),
                                         p.implicit_gemm_problem_size.n()),
                    thread_idx, warp_idx, lane_idx, threadblock_offset);
    Epilogue epilogue(shared_storage.epilogue.epilogue, thread_idx, warp_idx, lane_idx);
    epilogue(visitor, accumulators);
  }
};

// ---------------------------------------------------------------------------------------------
// configurations (the table of conv_plan.h's cutlass_config)

template <typename Element, bool Narrow>
struct Conv3dConfig;

// 16-bit: mma.sync m16n8k16, fp32 accumulation.
template <typename Element>
struct Conv3dConfig16 {
  using ThreadblockShape = cutlass::gemm::GemmShape<128, 128, 32>;
  using WarpShape = cutlass::gemm::GemmShape<64, 64, 32>;
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 16>;
  static int const kStages = 3;
};
template <typename Element>
struct Conv3dConfig16Narrow {
  using ThreadblockShape = cutlass::gemm::GemmShape<128, 64, 32>;
  using WarpShape = cutlass::gemm::GemmShape<64, 32, 32>;
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 16>;
  static int const kStages = 4;
};
template <>
struct Conv3dConfig<cutlass::half_t, false> : Conv3dConfig16<cutlass::half_t> {};
template <>
struct Conv3dConfig<cutlass::half_t, true> : Conv3dConfig16Narrow<cutlass::half_t> {};
template <>
struct Conv3dConfig<cutlass::bfloat16_t, false> : Conv3dConfig16<cutlass::bfloat16_t> {};
template <>
struct Conv3dConfig<cutlass::bfloat16_t, true> : Conv3dConfig16Narrow<cutlass::bfloat16_t> {};
// float32: TF32 mma.sync m16n8k8 (operands rounded to TF32 in the warp-level mma), fp32 accumulation.
// The wide TF32 tile uses 8 warps of 64x32: with 4 warps of 64x64 (128 accumulators per
// thread) the sm_90 build hits 255 registers and spills once the fused epilogue is added.
template <>
struct Conv3dConfig<float, false> {
  using ThreadblockShape = cutlass::gemm::GemmShape<128, 128, 16>;
  using WarpShape = cutlass::gemm::GemmShape<64, 32, 16>;
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 8>;
  static int const kStages = 4;
};
template <>
struct Conv3dConfig<float, true> {
  using ThreadblockShape = cutlass::gemm::GemmShape<128, 64, 16>;
  using WarpShape = cutlass::gemm::GemmShape<64, 32, 16>;
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 8>;
  static int const kStages = 4;
};

template <typename Element, bool Narrow>
struct Conv3dBnActOp {
  using Config = Conv3dConfig<Element, Narrow>;
  // Only the stock epilogue's shape matters (the visitor replaces its output operator): 128-bit
  // accesses of the output dtype.
  using StockOutputOp = cutlass::epilogue::thread::LinearCombination<
      Element, 128 / cutlass::sizeof_bits<Element>::value, float, float>;
  using DefaultKernel = typename cutlass::conv::kernel::DefaultConv3dFprop<
      Element, cutlass::layout::TensorNDHWC, Element, cutlass::layout::TensorNDHWC, Element,
      cutlass::layout::TensorNDHWC, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      typename Config::ThreadblockShape, typename Config::WarpShape,
      typename Config::InstructionShape, StockOutputOp,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<1>, Config::kStages,
      cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized>::Kernel;
  using Kernel = Conv3dBnActKernel<DefaultKernel>;
};

// One launch: a (group's) dense convolution over NDHWC views.
struct LaunchArgs {
  cutlass::conv::Conv3dProblemSize problem;
  const void* input;     // first channel of the group
  int64_t input_c_stride;  // channels of the full input row (pixel stride)
  const void* weight;    // the group's [K_g, T, R, S, C_g] block
  void* output;          // first output channel of the group
  const void* residual;  // nullptr or like output
  int64_t ld_out;        // total output channels (row stride of output and residual)
  const float* scale;
  const float* shift;
  int activation;
  bool vector_epilogue;
};

const char* status_text(cutlass::Status status) { return cutlass::cutlassGetStatusString(status); }

template <typename Element, bool Narrow>
void launch(const LaunchArgs& a, cudaStream_t stream) {
  using Op = Conv3dBnActOp<Element, Narrow>;
  using Kernel = typename Op::Kernel;
  using DefaultKernel = typename Op::DefaultKernel;
  using Mma = typename Kernel::Mma;

  // The checks of cutlass::conv::device::ImplicitGemmConvolution::can_implement that concern the
  // mainloop (the epilogue is ours and takes any C_out); conv_plan.h refused everything else.
  cutlass::Status status = Mma::IteratorA::can_implement(a.problem);
  TORCH_CHECK(status == cutlass::Status::kSuccess,
              "videoconv CUTLASS conv3d cannot run this problem (activation iterator): ",
              status_text(status), " (C per launch must be a multiple of the 128-bit vector, "
              "kernel sizes at most 32)");
  status = Mma::IteratorB::can_implement(a.problem);
  TORCH_CHECK(status == cutlass::Status::kSuccess,
              "videoconv CUTLASS conv3d cannot run this problem (filter iterator): ",
              status_text(status));

  const auto& pr = a.problem;
  const int64_t cs = a.input_c_stride;
  cutlass::layout::TensorNDHWC layout_a(cutlass::layout::TensorNDHWC::Stride(
      cutlass::make_Coord(int(cs), int(cs * pr.W), int(cs * pr.W * pr.H),
                          int(cs * pr.W * pr.H * pr.D))));
  auto layout_b = cutlass::layout::TensorNDHWC::packed(
      cutlass::Tensor5DCoord(pr.K, pr.T, pr.R, pr.S, pr.C));
  auto layout_c = cutlass::layout::TensorNDHWC::packed(
      cutlass::Tensor5DCoord(pr.N, pr.Z, pr.P, pr.Q, int(a.ld_out)));
  using RefA = typename DefaultKernel::TensorRefA;
  using RefB = typename DefaultKernel::TensorRefB;
  using RefC = typename DefaultKernel::TensorRefC;
  typename DefaultKernel::Arguments args(
      pr, RefA(static_cast<Element*>(const_cast<void*>(a.input)), layout_a),
      RefB(static_cast<Element*>(const_cast<void*>(a.weight)), layout_b),
      RefC(static_cast<Element*>(a.output), layout_c), RefC(static_cast<Element*>(a.output), layout_c),
      typename DefaultKernel::EpilogueOutputOp::Params(1.f, 0.f));

  typename Kernel::Params params;
  params.mainloop = typename DefaultKernel::Params(args);
  params.epilogue.ptr_out = static_cast<Element*>(a.output);
  params.epilogue.ptr_residual = static_cast<const Element*>(a.residual);
  params.epilogue.scale = a.scale;
  params.epilogue.shift = a.shift;
  params.epilogue.ld_out = a.ld_out;
  params.epilogue.activation = a.activation;
  params.epilogue.vector_access = a.vector_epilogue;
  params.epilogue.iterator_params =
      typename Kernel::Visitor::OutputTileIterator::Params(cutlass::layout::RowMajor(a.ld_out));

  typename Kernel::ThreadblockSwizzle swizzle;
  const dim3 grid = swizzle.get_grid_shape(params.mainloop.grid_tiled_shape);
  const dim3 block(Kernel::kThreadCount, 1, 1);
  const int smem = int(sizeof(typename Kernel::SharedStorage));
  if (smem >= (48 << 10)) {
    VIDEOCONV_CUDA_CHECK(cudaFuncSetAttribute(cutlass::Kernel<Kernel>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  cutlass::Kernel<Kernel><<<grid, block, smem, stream>>>(params);
  VIDEOCONV_CHECK_LAUNCH("the CUTLASS conv3d_bn_act kernel");
}

template <typename Element>
void launch_dtype(const LaunchArgs& a, bool narrow, cudaStream_t stream) {
  if (narrow) {
    launch<Element, true>(a, stream);
  } else {
    launch<Element, false>(a, stream);
  }
}

// ---------------------------------------------------------------------------------------------
// the op

at::Tensor conv3d_bn_act_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& scale, const at::Tensor& shift,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups,
                              c10::string_view activation,
                              const std::optional<at::Tensor>& residual, bool allow_tf32) {
  TORCH_CHECK(input.is_cuda(), "videoconv::_conv3d_bn_act_cuda: input must be a CUDA tensor");
  check_cuda_tensor(weight, "weight", input);
  check_cuda_tensor(scale, "scale", input);
  check_cuda_tensor(shift, "shift", input);
  if (residual.has_value()) check_cuda_tensor(*residual, "residual", input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DeviceInfo dev = device_info(input.get_device());
  const int act = parse_activation(std::string(activation));

  cuda_plan::ConvGeometry g;
  const auto problems = cuda_plan::make_geometry(sizes_of(input), sizes_of(weight), to_vec(stride),
                                                 to_vec(padding), to_vec(dilation), groups, &g);
  TORCH_CHECK(problems.empty(), "videoconv::_conv3d_bn_act_cuda: ", problems.front());
  const cuda_plan::Plan plan = cuda_plan::plan_conv3d(g, plan_dtype(input.scalar_type()),
                                                      residual.has_value(), allow_tf32, dev.sm,
                                                      dev.num_sms);
  TORCH_CHECK(plan.ok(), "videoconv::_conv3d_bn_act_cuda cannot run this problem: ",
              plan.reasons_text());
  if (plan.kernel == "depthwise_direct") {
    return depthwise_conv3d_bn_act_cuda(input, weight, scale, shift, stride, padding, dilation,
                                        activation, residual);
  }
  const std::vector<int64_t> out_size = {g.n, g.k, g.z, g.p, g.q};
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes().vec() == out_size, "videoconv::_conv3d_bn_act_cuda: residual must have the output's size ",
                at::IntArrayRef(out_size), ", got ", residual->sizes());
  }

  // Operands in NDHWC; zero-padded channels when C_in is not 128-bit aligned (groups == 1).
  const int64_t padded_c = plan.get("padded_c");
  at::Tensor x = aligned_ndhwc(input);
  at::Tensor w = aligned(weight.permute({0, 2, 3, 4, 1}).contiguous());  // [K, T, R, S, C_g]
  if (padded_c != g.cg) {
    at::Tensor xp = at::zeros({g.n, g.d, g.h, g.w, padded_c}, input.options());
    xp.narrow(4, 0, g.c).copy_(x.permute({0, 2, 3, 4, 1}));
    x = xp;  // NDHWC data; indexing below only uses the data pointer
    at::Tensor wp = at::zeros({g.k, g.t, g.r, g.s, padded_c}, weight.options());
    wp.narrow(4, 0, g.cg).copy_(w);
    w = wp;
  }
  const at::Tensor scale_f = channel_vector(scale, g.k, "scale");
  const at::Tensor shift_f = channel_vector(shift, g.k, "shift");
  at::Tensor res;
  if (residual.has_value()) res = aligned_ndhwc(*residual);
  at::Tensor y = empty_ndhwc(input, out_size);

  const int64_t cg = padded_c;                 // channels per group seen by the kernel
  const int64_t c_total = g.groups == 1 ? padded_c : g.c;
  const int64_t kg = g.k / g.groups;
  const bool narrow = plan.get("narrow_tile") == 1;
  const bool vector_epilogue = plan.get("vector_epilogue") == 1;
  const int64_t esize = input.element_size();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    LaunchArgs a;
    a.problem = cutlass::conv::Conv3dProblemSize(
        int(g.n), int(g.d), int(g.h), int(g.w), int(cg), int(kg), int(g.t), int(g.r), int(g.s),
        int(g.z), int(g.p), int(g.q), int(g.pad[0]), int(g.pad[1]), int(g.pad[2]),
        int(g.stride[0]), int(g.stride[1]), int(g.stride[2]), int(g.dil[0]), int(g.dil[1]),
        int(g.dil[2]), cutlass::conv::Mode::kCrossCorrelation);
    a.input = static_cast<const char*>(x.data_ptr()) + grp * cg * esize;
    a.input_c_stride = c_total;
    a.weight = static_cast<const char*>(w.data_ptr()) + grp * kg * g.taps() * cg * esize;
    a.output = static_cast<char*>(y.data_ptr()) + grp * kg * esize;
    a.residual = res.defined() ? static_cast<const char*>(res.data_ptr()) + grp * kg * esize : nullptr;
    a.ld_out = g.k;
    a.scale = scale_f.data_ptr<float>() + grp * kg;
    a.shift = shift_f.data_ptr<float>() + grp * kg;
    a.activation = act;
    a.vector_epilogue = vector_epilogue;
    switch (input.scalar_type()) {
      case at::kHalf: launch_dtype<cutlass::half_t>(a, narrow, stream); break;
      case at::kBFloat16: launch_dtype<cutlass::bfloat16_t>(a, narrow, stream); break;
      case at::kFloat: launch_dtype<float>(a, narrow, stream); break;
      default: TORCH_CHECK(false, "videoconv::_conv3d_bn_act_cuda: unsupported dtype ", input.scalar_type());
    }
  }
  return to_output_layout(y, input);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  // Private: the CUDA backend (videoconv/backends) calls it after checking
  // videoconv::_cuda_plan; the public op is videoconv::conv3d_bn_act.
  m.def(
      "_conv3d_bn_act_cuda(Tensor input, Tensor weight, Tensor scale, Tensor shift, int[3] stride, "
      "int[3] padding, int[3] dilation, int groups, str activation, Tensor? residual, "
      "bool allow_tf32) -> Tensor");
}

TORCH_LIBRARY_IMPL(videoconv, CUDA, m) {
  m.impl("_conv3d_bn_act_cuda", &cuda::conv3d_bn_act_cuda);
}

}  // namespace videoconv
