// Torch glue of the CUDA ops: the same schemas, argument checks, output layouts and semantics as
// the CPU ops in csrc/cpu/*.cpp, with the math in the launchers of launchers.h (csrc/cuda/*.cu).
// Here: parse the names, check the arguments (every message names the op and the argument, as
// on the CPU), make inputs contiguous, allocate outputs and scratch with torch's caching
// allocator, and launch on the current stream of the inputs' device. Compiled only when torch
// has CUDA (setup.py picks up csrc/cuda/*_binding.cpp).
//
// Host emulation (PBG_CUDA_HOST_EMULATION, a test build: tests/ops/test_cuda_host_emulation.py):
// this same glue and the same launchers, compiled as plain C++ against a CPU torch, run on host
// tensors (for_each_index() loops instead of launching) and register as the ops of a separate
// library, pbg_fast_cuda_emu, so the tests check the CUDA path's index logic, workspaces and
// glue against the CPU kernels and the reference on a machine without a GPU.
#if !defined(PBG_CUDA_HOST_EMULATION)
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>
#endif
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <tuple>
#include <utility>
#include <vector>

#include "../cpu/chunk_step_args.h"
#include "../cpu/dispatch.h"
#include "../cpu/op_args.h"
#include "../cpu/train_bucket_args.h"
#include "../kernels/counter_rng.h"
#include "../op_schemas.h"
#include "launchers.h"

namespace pbg {
namespace {

#if defined(PBG_CUDA_HOST_EMULATION)
// Host memory stands in for the device: the "CUDA" tensors are CPU tensors.
constexpr auto kDevice = c10::DeviceType::CPU;
bool on_device(const at::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
cudaStream_t current_stream() { return nullptr; }
const char* error_string(cudaError_t) { return "(host emulation)"; }
#else
constexpr auto kDevice = c10::DeviceType::CUDA;
bool on_device(const at::Tensor& t) { return t.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
const char* error_string(cudaError_t err) { return cudaGetErrorString(err); }
#endif

void check_cuda(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(on_device(t), op, ": ", arg, " must be a CUDA tensor, got ", t.device());
}

// t is a CUDA tensor on ref's device (the kernels dereference every pointer on that device).
void check_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg,
                  const char* ref_arg) {
  check_cuda(t, op, arg);
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " must be on the device of ", ref_arg,
              " (", ref.device(), "), got ", t.device());
}

// Values of t in [0, n); one device sync, as the CPU ops check bounds once up front so the
// kernels can index blindly.
void check_bounds(const at::Tensor& t, int64_t n, const char* op, const char* name) {
  if (t.numel() == 0) return;
  const auto min_max = at::aminmax(t);
  const int64_t lo = std::get<0>(min_max).item<int64_t>();
  const int64_t hi = std::get<1>(min_max).item<int64_t>();
  TORCH_CHECK_INDEX(lo >= 0 && hi < n, op, ": ", name, " out of range [0, ", n, "): min ", lo,
                    ", max ", hi);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", error_string(err));
}

// ---- the chunk step's products (launchers.h: Gemm, GemmRunner) ----------------------------

#if defined(PBG_CUDA_HOST_EMULATION)
// The Gemm contract read independently of cuBLAS: each operand a strided view of the buffer
// (column-major, batch stride), BF16 inputs read as bfloat16, TF32 inputs rounded to a 10-bit
// mantissa (as tensor cores read them), the product in T.
template <typename T>
cudaError_t run_gemm(void*, const cuda::Gemm<T>& g, Precision precision, cudaStream_t) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  // op(X) [rows, cols]; X is stored [rows, cols], or [cols, rows] when trans.
  auto operand = [&](const void* p, bool trans, int64_t rows, int64_t cols, int64_t ld,
                     int64_t stride) {
    const int64_t r = trans ? cols : rows, c = trans ? rows : cols;
    at::Tensor x = at::from_blob(const_cast<void*>(p), {g.batch, r, c}, {stride, 1, ld},
                                 at::TensorOptions().dtype(precision == Precision::BF16
                                                               ? at::kBFloat16
                                                               : dtype));
    x = x.to(dtype).contiguous();
    if (precision == Precision::TF32) {  // round to nearest at the 13 dropped mantissa bits
      x = (x.view(at::kInt) + 0x1000).bitwise_and(~0x1fff).view(dtype);
    }
    return trans ? x.transpose(1, 2) : x;
  };
  const at::Tensor A = operand(g.a, g.trans_a, g.m, g.k, g.lda, g.stride_a);
  const at::Tensor B = operand(g.b, g.trans_b, g.k, g.n, g.ldb, g.stride_b);
  at::Tensor C = at::from_blob(g.c, {g.batch, g.m, g.n}, {g.stride_c, 1, g.ldc},
                               at::TensorOptions().dtype(dtype));
  const at::Tensor product = at::bmm(A, B);
  if (g.beta == T(0)) {
    C.copy_(product);  // C is not read: it may hold anything
  } else {
    C.mul_(g.beta).add_(product);
  }
  return cudaSuccess;
}
#else
// cuBLAS on the current stream's handle. FP32 runs with the default math mode (no TF32, whatever
// torch's allow_tf32 set on the shared handle), TF32 through the compute type, BF16 with
// bfloat16 inputs; all accumulate and write in T.
template <typename T>
cudaError_t run_gemm(void*, const cuda::Gemm<T>& g, Precision precision, cudaStream_t stream) {
  constexpr bool f64 = std::is_same_v<T, double>;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  TORCH_CHECK(g.m <= kMax && g.n <= kMax && g.k <= kMax && g.lda <= kMax && g.ldb <= kMax &&
                  g.ldc <= kMax && g.batch <= kMax,
              "chunk_step: a product is too large for cuBLAS's int sizes: m ", g.m, ", n ", g.n,
              ", k ", g.k, ", batch ", g.batch, " (use a smaller batch_size)");
  // The handle comes bound to the current stream (the launchers' `stream`) with torch's
  // workspace; cublasSetStream here would reset that workspace to cuBLAS's default pool.
  TORCH_CHECK(stream == current_stream(), "chunk_step: products on a stream other than the "
              "current one");
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  cublasMath_t math;
  TORCH_CUDABLAS_CHECK(cublasGetMathMode(handle, &math));
  TORCH_CUDABLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  const cudaDataType in_type =
      precision == Precision::BF16 ? CUDA_R_16BF : f64 ? CUDA_R_64F : CUDA_R_32F;
  const cudaDataType out_type = f64 ? CUDA_R_64F : CUDA_R_32F;
  const cublasComputeType_t compute = f64 ? CUBLAS_COMPUTE_64F
                                      : precision == Precision::TF32
                                          ? CUBLAS_COMPUTE_32F_FAST_TF32
                                          : CUBLAS_COMPUTE_32F;
  const T alpha = 1, beta = g.beta;
  const cublasStatus_t status = cublasGemmStridedBatchedEx(
      handle, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      int(g.m), int(g.n), int(g.k), &alpha, g.a, in_type, int(g.lda), g.stride_a, g.b, in_type,
      int(g.ldb), g.stride_b, &beta, g.c, out_type, int(g.ldc), g.stride_c, int(g.batch),
      compute, CUBLAS_GEMM_DEFAULT);
  TORCH_CUDABLAS_CHECK(cublasSetMathMode(handle, math));
  TORCH_CUDABLAS_CHECK(status);
  return cudaSuccess;
}
#endif

template <typename T>
cuda::GemmRunner<T> gemm_runner() {
  return cuda::GemmRunner<T>{nullptr, &run_gemm<T>};
}

// ---- chunked_neg_scores -------------------------------------------------------------------

constexpr const char* kScoresOp = "chunked_neg_scores";
constexpr const char* kScoresBackwardOp = "chunked_neg_scores_backward";

ScoresShapes check_scores_inputs(const at::Tensor& lhs_pos, const at::Tensor& rhs_pos,
                                 const at::Tensor& lhs_neg, const at::Tensor& rhs_neg,
                                 const char* op) {
  const ScoresShapes s = check_scores_args(lhs_pos, rhs_pos, lhs_neg, rhs_neg, op, kDevice);
  for (auto [t, name] : {std::pair{&rhs_pos, "rhs_pos"}, {&lhs_neg, "lhs_neg"},
                         {&rhs_neg, "rhs_neg"}})
    check_device(*t, lhs_pos, op, name, "lhs_pos");
  return s;
}

template <typename T>
cuda::ChunkedScoresInputs<T> scores_inputs(Comparator cmp, const at::Tensor& lp,
                                           const at::Tensor& rp, const at::Tensor& ln,
                                           const at::Tensor& rn, const ScoresShapes& s) {
  return {cmp, lp.data_ptr<T>(), rp.data_ptr<T>(), ln.data_ptr<T>(), rn.data_ptr<T>(),
          s.C, s.P, s.L, s.R, s.D};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chunked_neg_scores_cuda(
    const at::Tensor& lhs_pos, const at::Tensor& rhs_pos, const at::Tensor& lhs_neg,
    const at::Tensor& rhs_neg, c10::string_view comparator) {
  const Comparator cmp = parse_comparator(std::string(comparator), kScoresOp);
  const ScoresShapes s = check_scores_inputs(lhs_pos, rhs_pos, lhs_neg, rhs_neg, kScoresOp);
  const DeviceGuard device_guard(lhs_pos.device());
  auto lp = lhs_pos.contiguous(), rp = rhs_pos.contiguous();
  auto ln = lhs_neg.contiguous(), rn = rhs_neg.contiguous();
  auto pos = at::empty({s.C, s.P}, lp.options());
  auto lneg = at::empty({s.C, s.P, s.L}, lp.options());
  auto rneg = at::empty({s.C, s.P, s.R}, lp.options());
  auto workspace = at::empty(
      {cuda::chunked_neg_scores_workspace_size(s.C, s.P, s.L, s.R, s.D, false)}, lp.options());
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), kScoresOp, [&] {
    using T = scalar_t;
    check_launch(cuda::chunked_neg_scores_forward<T>(
                     scores_inputs<T>(cmp, lp, rp, ln, rn, s), workspace.data_ptr<T>(),
                     pos.data_ptr<T>(), lneg.data_ptr<T>(), rneg.data_ptr<T>(), current_stream()),
                 kScoresOp);
  });
  return {pos, lneg, rneg};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chunked_neg_scores_backward_cuda(
    const at::Tensor& grad_pos, const at::Tensor& grad_lhs_neg, const at::Tensor& grad_rhs_neg,
    const at::Tensor& lhs_pos, const at::Tensor& rhs_pos, const at::Tensor& lhs_neg,
    const at::Tensor& rhs_neg, c10::string_view comparator) {
  constexpr const char* kOp = kScoresBackwardOp;
  const Comparator cmp = parse_comparator(std::string(comparator), kOp);
  const ScoresShapes s = check_scores_inputs(lhs_pos, rhs_pos, lhs_neg, rhs_neg, kOp);
  check_device(grad_pos, lhs_pos, kOp, "grad_pos", "lhs_pos");
  check_device(grad_lhs_neg, lhs_pos, kOp, "grad_lhs_neg", "lhs_pos");
  check_device(grad_rhs_neg, lhs_pos, kOp, "grad_rhs_neg", "lhs_pos");
  TORCH_CHECK_VALUE(grad_pos.sizes() == at::IntArrayRef({s.C, s.P}), kOp,
                    ": grad_pos must be [", s.C, ", ", s.P, "], got ", grad_pos.sizes());
  TORCH_CHECK_VALUE(grad_lhs_neg.sizes() == at::IntArrayRef({s.C, s.P, s.L}), kOp,
                    ": grad_lhs_neg has the wrong shape ", grad_lhs_neg.sizes());
  TORCH_CHECK_VALUE(grad_rhs_neg.sizes() == at::IntArrayRef({s.C, s.P, s.R}), kOp,
                    ": grad_rhs_neg has the wrong shape ", grad_rhs_neg.sizes());
  const DeviceGuard device_guard(lhs_pos.device());
  auto lp = lhs_pos.contiguous(), rp = rhs_pos.contiguous();
  auto ln = lhs_neg.contiguous(), rn = rhs_neg.contiguous();
  auto gp = grad_pos.to(lp.scalar_type()).contiguous();
  auto gl = grad_lhs_neg.to(lp.scalar_type()).contiguous();
  auto gr = grad_rhs_neg.to(lp.scalar_type()).contiguous();
  // Every element of the four gradients is written by the kernels.
  auto g_lp = at::empty_like(lp), g_rp = at::empty_like(rp);
  auto g_ln = at::empty_like(ln), g_rn = at::empty_like(rn);
  auto workspace = at::empty(
      {cuda::chunked_neg_scores_workspace_size(s.C, s.P, s.L, s.R, s.D, true)}, lp.options());
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), kOp, [&] {
    using T = scalar_t;
    check_launch(cuda::chunked_neg_scores_backward<T>(
                     scores_inputs<T>(cmp, lp, rp, ln, rn, s), gp.data_ptr<T>(),
                     gl.data_ptr<T>(), gr.data_ptr<T>(), workspace.data_ptr<T>(),
                     g_lp.data_ptr<T>(), g_rp.data_ptr<T>(), g_ln.data_ptr<T>(),
                     g_rn.data_ptr<T>(), current_stream()),
                 kOp);
  });
  return {g_lp, g_rp, g_ln, g_rn};
}

// ---- losses -------------------------------------------------------------------------------

struct LossArgs {
  at::Tensor pos, neg, weight;
  int64_t N, M;
};

LossArgs check_loss_inputs(const at::Tensor& pos, const at::Tensor& neg,
                           const c10::optional<at::Tensor>& weight, const char* op) {
  const LossShapes sh = check_loss_args(pos, neg, weight, op, kDevice);
  check_device(neg, pos, op, "neg", "pos");
  LossArgs a{pos.contiguous(), neg.contiguous(), at::Tensor(), sh.N, sh.M};
  if (weight.has_value() && weight->defined()) {
    check_device(*weight, pos, op, "weight", "pos");
    a.weight = weight->contiguous();
  }
  return a;
}

// Fills grad_pos [N] and grad_neg [N, M] (for grad = 1); returns the per-row losses [N] (double).
at::Tensor run_loss(Loss loss, const LossArgs& a, double margin, at::Tensor& grad_pos,
                    at::Tensor& grad_neg, const char* op) {
  auto row_loss = at::empty({a.N}, a.pos.options().dtype(at::kDouble));
  // (The dispatch name must be a constant expression; the dtype was checked already.)
  AT_DISPATCH_FLOATING_TYPES(a.pos.scalar_type(), "loss", [&] {
    using T = scalar_t;
    const T* w = a.weight.defined() ? a.weight.data_ptr<T>() : nullptr;
    check_launch(cuda::loss_rows<T>(loss, a.pos.data_ptr<T>(), a.neg.data_ptr<T>(), w, a.N, a.M,
                                    static_cast<T>(margin), grad_pos.data_ptr<T>(),
                                    grad_neg.data_ptr<T>(), row_loss.data_ptr<double>(),
                                    current_stream()),
                 op);
  });
  return row_loss;
}

at::Tensor loss_forward_cuda(const at::Tensor& pos, const at::Tensor& neg,
                             const c10::optional<at::Tensor>& weight, c10::string_view loss_name,
                             double margin) {
  constexpr const char* kOp = "loss_forward";
  const Loss loss = parse_loss(std::string(loss_name), kOp);
  auto a = check_loss_inputs(pos, neg, weight, kOp);
  const DeviceGuard device_guard(pos.device());
  // The kernel computes the gradients anyway (one pass); here they are scratch.
  auto grad_pos = at::empty_like(a.pos), grad_neg = at::empty_like(a.neg);
  // Summed in double, then cast, as the CPU op: a 0-dim tensor of pos's dtype.
  return run_loss(loss, a, margin, grad_pos, grad_neg, kOp).sum().to(a.pos.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> loss_backward_cuda(const at::Tensor& grad,
                                                      const at::Tensor& pos,
                                                      const at::Tensor& neg,
                                                      const c10::optional<at::Tensor>& weight,
                                                      c10::string_view loss_name,
                                                      double margin) {
  constexpr const char* kOp = "loss_backward";
  const Loss loss = parse_loss(std::string(loss_name), kOp);
  auto a = check_loss_inputs(pos, neg, weight, kOp);
  TORCH_CHECK_VALUE(grad.numel() == 1, kOp, ": grad must be a scalar, got ", grad.sizes());
  const DeviceGuard device_guard(pos.device());
  auto grad_pos = at::empty_like(a.pos), grad_neg = at::empty_like(a.neg);
  run_loss(loss, a, margin, grad_pos, grad_neg, kOp);
  auto g = grad.to(a.pos.scalar_type());
  return {grad_pos * g, grad_neg * g};
}

// ---- relation operators -------------------------------------------------------------------

void check_operator_inputs(const at::Tensor& x, const at::Tensor& params, const at::Tensor& rel,
                           Operator op, const char* opname) {
  check_operator_args(x, params, rel, op, opname, kDevice);
  check_device(params, x, opname, "op_params", "x");
  check_device(rel, x, opname, "rel", "x");
  check_bounds(rel, params.size(0), opname, "rel");
}

at::Tensor operator_forward_cuda(const at::Tensor& x, const at::Tensor& op_params,
                                 const at::Tensor& rel, c10::string_view op_name) {
  constexpr const char* kOp = "operator_forward";
  const Operator op = parse_operator(std::string(op_name), kOp);
  check_operator_inputs(x, op_params, rel, op, kOp);
  const DeviceGuard device_guard(x.device());
  auto xc = x.contiguous(), pc = op_params.contiguous(), rc = rel.contiguous();
  auto y = at::empty_like(xc);
  const int64_t N = xc.size(0), D = xc.size(1), K = pc.size(1);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), kOp, [&] {
    using T = scalar_t;
    check_launch(cuda::operator_forward<T>(op, xc.data_ptr<T>(), pc.data_ptr<T>(), K,
                                           rc.data_ptr<int64_t>(), N, D, y.data_ptr<T>(),
                                           current_stream()),
                 kOp);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> operator_backward_cuda(const at::Tensor& grad_out,
                                                          const at::Tensor& x,
                                                          const at::Tensor& op_params,
                                                          const at::Tensor& rel,
                                                          c10::string_view op_name) {
  constexpr const char* kOp = "operator_backward";
  const Operator op = parse_operator(std::string(op_name), kOp);
  check_operator_inputs(x, op_params, rel, op, kOp);
  check_device(grad_out, x, kOp, "grad_out", "x");
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), kOp, ": grad_out must match x ", x.sizes(),
                    ", got ", grad_out.sizes());
  const DeviceGuard device_guard(x.device());
  auto xc = x.contiguous(), pc = op_params.contiguous(), rc = rel.contiguous();
  auto gy = grad_out.to(xc.scalar_type()).contiguous();
  const int64_t N = xc.size(0), D = xc.size(1), R = pc.size(0), K = pc.size(1);
  auto gx = at::empty_like(xc);
  auto gp = at::zeros({R, K}, xc.options());  // accumulated into by the kernels
  const int64_t scratch_rows = cuda::operator_backward_scratch_rows(N, K);
  auto scratch = at::empty({scratch_rows * K}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), kOp, [&] {
    using T = scalar_t;
    check_launch(cuda::operator_backward<T>(op, xc.data_ptr<T>(), pc.data_ptr<T>(), K,
                                            rc.data_ptr<int64_t>(), N, D, gy.data_ptr<T>(),
                                            gx.data_ptr<T>(), gp.data_ptr<T>(),
                                            scratch.data_ptr<T>(), scratch_rows,
                                            current_stream()),
                 kOp);
  });
  return {gx, gp};
}

// ---- row-wise Adagrad ---------------------------------------------------------------------

void row_adagrad_cuda(at::Tensor& weight, at::Tensor& state, const at::Tensor& indices,
                      const at::Tensor& grad, double lr, double eps) {
  constexpr const char* kOp = "row_adagrad_";
  check_row_adagrad_args(weight, state, indices, grad, kDevice);
  check_device(state, weight, kOp, "state", "weight");
  check_device(grad, weight, kOp, "grad", "weight");
  check_device(indices, weight, kOp, "indices", "weight");
  const int64_t N = weight.size(0), D = weight.size(1), K = indices.size(0);
  if (K == 0) return;
  const DeviceGuard device_guard(weight.device());
  auto idx = indices.contiguous();
  auto g = grad.contiguous();
  check_bounds(idx, N, kOp, "indices");
  // Group equal indices: a stable sort keeps each row's gradients in their original order, so
  // they are summed in the same order as on the CPU. segment_start [S + 1] bounds the groups.
  auto sorted = idx.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor sorted_idx = std::get<0>(sorted), order = std::get<1>(sorted);
  const at::Tensor counts = std::get<2>(
      at::unique_consecutive(sorted_idx, /*return_inverse=*/false, /*return_counts=*/true));
  const int64_t S = counts.size(0);
  auto segment_start = at::zeros({S + 1}, idx.options());
  segment_start.narrow(0, 1, S).copy_(counts.cumsum(0));
  auto summed = at::empty({S, D}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), kOp, [&] {
    using T = scalar_t;
    check_launch(cuda::row_adagrad<T>(weight.data_ptr<T>(), state.data_ptr<T>(), D,
                                      g.data_ptr<T>(), sorted_idx.data_ptr<int64_t>(),
                                      order.data_ptr<int64_t>(),
                                      segment_start.data_ptr<int64_t>(), S, summed.data_ptr<T>(),
                                      static_cast<T>(lr), static_cast<T>(eps), current_stream()),
                 kOp);
  });
}

// ---- the fused chunk step -----------------------------------------------------------------

// The ChunkStepArgs fields chunk_step and train_bucket_ fill alike: tables, operator, model
// configuration and the products' runner. The batch, negatives, globals and outputs are the
// caller's.
template <typename T>
cuda::ChunkStepArgs<T> chunk_step_args(const at::Tensor& src_emb, const at::Tensor& dst_emb,
                                       const at::Tensor& op_params, Comparator cmp, Operator op,
                                       Loss loss, Precision precision, double margin,
                                       double reg_coef) {
  cuda::ChunkStepArgs<T> args{};
  args.single_relation = -1;  // the caller sets it when it knows
  args.src_emb = src_emb.data_ptr<T>();
  args.src_stride = src_emb.stride(0);
  args.dst_emb = dst_emb.data_ptr<T>();
  args.dst_stride = dst_emb.stride(0);
  args.src_rows = src_emb.size(0);
  args.dst_rows = dst_emb.size(0);
  args.op_params = op_params.data_ptr<T>();
  args.num_params = op_params.size(1);
  args.dim = src_emb.size(1);
  args.comparator = cmp;
  args.op = op;
  args.loss = loss;
  args.margin = static_cast<T>(margin);
  args.reg_coef = static_cast<T>(reg_coef);
  args.precision = precision;
  args.gemm = gemm_runner<T>();
  return args;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
chunk_step_cuda(PBG_CHUNK_STEP_PARAMS) {
  constexpr const char* kOp = "chunk_step";
  const ChunkStepPlan plan = check_chunk_step(PBG_CHUNK_STEP_ARGS, kDevice);
  // Every tensor on src_emb's GPU (the shared checks only ask for a CUDA tensor).
  for (auto [t, name] : {std::pair{&dst_emb, "dst_emb"}, {&op_params, "op_params"},
                         {&src_idx, "src_idx"}, {&dst_idx, "dst_idx"}, {&rel, "rel"},
                         {&src_uniform, "src_uniform"}, {&dst_uniform, "dst_uniform"}})
    check_device(*t, src_emb, kOp, name, "src_emb");
  for (auto [t, name] : {std::pair{&plan.weight, "weight"}, {&plan.src_global, "src_global"},
                         {&plan.dst_global, "dst_global"}})
    if (t->defined()) check_device(*t, src_emb, kOp, name, "src_emb");
  const Comparator cmp = plan.cmp;
  const Operator op = plan.op;
  const Loss loss = plan.loss;
  const NegMode src_mode = plan.src_mode, dst_mode = plan.dst_mode;
  const int64_t D = plan.D, B = plan.B, C = plan.C, K = plan.K, R = plan.R;
  const at::Tensor &src_i = plan.src_i, &dst_i = plan.dst_i, &rel_i = plan.rel_i;
  const at::Tensor &su = plan.su, &du = plan.du, &params = plan.params, &w = plan.weight;
  const at::Tensor globals[2] = {plan.src_global, plan.dst_global};
  const DeviceGuard device_guard(src_emb.device());

  const int64_t Us = su.size(1), Ud = du.size(1);
  // Every row of src_grad / dst_grad is written by the kernels; op_param_grad is accumulated.
  // Under 'all' a side's rows after the positives' are its table's.
  auto src_grad = at::empty(
      {B + (src_mode == NegMode::All ? src_emb.size(0) : C * Us), D}, src_emb.options());
  auto dst_grad = at::empty(
      {B + (dst_mode == NegMode::All ? dst_emb.size(0) : C * Ud), D}, src_emb.options());
  if (B == 0) {  // nothing is launched; under 'all' the table rows' gradient is zero
    src_grad.zero_();
    dst_grad.zero_();
  }
  auto param_grad = at::zeros({R, K}, src_emb.options());
  auto edge_loss = at::empty({B}, src_emb.options().dtype(at::kDouble));
  auto edge_violators = at::empty({B, 2}, src_emb.options().dtype(at::kLong));
  // As on the CPU: [D] for a side with a global embedding (zeros when the batch is empty), [0]
  // otherwise.
  auto src_global_grad = at::zeros({globals[0].defined() ? D : 0}, src_emb.options());
  auto dst_global_grad = at::zeros({globals[1].defined() ? D : 0}, src_emb.options());

  AT_DISPATCH_FLOATING_TYPES(src_emb.scalar_type(), kOp, [&] {
    using T = scalar_t;
    auto args = chunk_step_args<T>(src_emb, dst_emb, params, cmp, op, loss, plan.precision,
                                   margin, reg_coef);
    args.src_idx = src_i.data_ptr<int64_t>();
    args.dst_idx = dst_i.data_ptr<int64_t>();
    args.rel = rel_i.data_ptr<int64_t>();
    args.num_edges = B;
    args.chunk_size = chunk_size;
    args.src_uniform = su.data_ptr<int64_t>();
    args.num_src_uniform = Us;
    args.dst_uniform = du.data_ptr<int64_t>();
    args.num_dst_uniform = Ud;
    args.weight = w.defined() ? w.data_ptr<T>() : nullptr;
    args.src_global = globals[0].defined() ? globals[0].data_ptr<T>() : nullptr;
    args.dst_global = globals[1].defined() ? globals[1].data_ptr<T>() : nullptr;
    args.src_global_grad = src_global_grad.data_ptr<T>();
    args.dst_global_grad = dst_global_grad.data_ptr<T>();
    args.src_mode = src_mode;
    args.dst_mode = dst_mode;
    args.src_grad = src_grad.data_ptr<T>();
    args.dst_grad = dst_grad.data_ptr<T>();
    args.op_param_grad = param_grad.data_ptr<T>();
    args.edge_loss = edge_loss.data_ptr<double>();
    args.edge_violators = edge_violators.data_ptr<int64_t>();
    // Freed when this scope ends; safe, since the caching allocator only hands the block to
    // later work on the same stream.
    auto workspace = at::empty({cuda::chunk_step_workspace_size(args)}, src_emb.options());
    args.workspace = workspace.data_ptr<T>();
    check_launch(cuda::chunk_step<T>(args, current_stream()), kOp);
  });
  // Summed in double then cast, as the CPU op sums its per-chunk double losses.
  auto total_loss = edge_loss.sum().to(src_emb.scalar_type());
  return {total_loss, src_grad, dst_grad, param_grad, src_global_grad, dst_global_grad,
          edge_violators.sum(0)};
}


// ---- the whole bucket ---------------------------------------------------------------------

// train_bucket_ on the device: the contract (train_bucket_args.h) and the math of the CPU op
// (csrc/cpu/train_bucket.cpp), batch after batch on the current stream with no host round trip
// inside the loop (torch ops here are asynchronous: cat, sort, sums). Per batch: its edges in
// the counter-based shuffled order and its uniform negatives (train_bucket.cu), max_norm on the
// rows it looks up, the chunk step per direction (chunk_step.cu), then one row-Adagrad step per
// distinct touched row (sorted, summed: exact for repeated rows) and element-wise Adagrad on the
// relation parameters and global embeddings. Batches run one after another (no HOGWILD on the
// device: `workers` is ignored), so one seed gives one result, up to the order of atomic adds in
// the relation-parameter gradient.
at::Tensor train_bucket_cuda(PBG_TRAIN_BUCKET_PARAMS) {
  constexpr const char* kOp = "train_bucket_";
  const auto t0 = std::chrono::steady_clock::now();
  const TrainBucketPlan plan = check_train_bucket(PBG_TRAIN_BUCKET_ARGS, kDevice);
  // Every tensor on lhs_emb's GPU (the shared checks only ask for a CUDA tensor).
  for (auto [t, name] : {std::pair{&lhs_state, "lhs_state"}, {&rhs_emb, "rhs_emb"},
                         {&rhs_state, "rhs_state"}, {&rhs_op_params, "rhs_op_params"},
                         {&rhs_op_state, "rhs_op_state"}, {&lhs_op_params, "lhs_op_params"},
                         {&lhs_op_state, "lhs_op_state"}, {&lhs_global, "lhs_global"},
                         {&lhs_global_state, "lhs_global_state"}, {&rhs_global, "rhs_global"},
                         {&rhs_global_state, "rhs_global_state"}})
    check_device(*t, lhs_emb, kOp, name, "lhs_emb");
  for (auto [t, name] : {std::pair{&lhs, "lhs"}, {&rhs, "rhs"}, {&rel, "rel"}})
    check_device(*t, lhs_emb, kOp, name, "lhs_emb");
  if (plan.weight.defined()) check_device(plan.weight, lhs_emb, kOp, "weight", "lhs_emb");
  const DeviceGuard device_guard(lhs_emb.device());
  const int64_t D = plan.D, E = plan.E, cs = plan.chunk;
  auto stats = at::zeros({5}, lhs_emb.options().dtype(at::kDouble));
  if (E == 0) return stats;
  const bool same_table = lhs_emb.data_ptr() == rhs_emb.data_ptr();
  const bool same_glob = plan.glob && (same_table || lhs_global.data_ptr() == rhs_global.data_ptr());
  const NegMode lhs_mode = disable_lhs_negs ? NegMode::Uniform : plan.base;
  const NegMode rhs_mode = disable_rhs_negs ? NegMode::Uniform : plan.base;
  const int64_t Ul = disable_lhs_negs ? 0 : plan.num_uniform;
  const int64_t Ur = disable_rhs_negs ? 0 : plan.num_uniform;
  const auto idx_opts = lhs.options();
  auto lhs_i = lhs.contiguous(), rhs_i = rhs.contiguous(), rel_i = rel.contiguous();
  const int64_t Bmax = std::min(batch_size, E), Cmax = (Bmax + cs - 1) / cs;
  auto lhs_b = at::empty({Bmax}, idx_opts), rhs_b = at::empty({Bmax}, idx_opts);
  auto rel_b = at::empty({Bmax}, idx_opts), w_b = at::empty({Bmax}, lhs_emb.options());
  auto l_uni = at::empty({Cmax * Ul}, idx_opts), r_uni = at::empty({Cmax * Ur}, idx_opts);
  auto edge_loss = at::empty({Bmax}, lhs_emb.options().dtype(at::kDouble));
  auto edge_viol = at::empty({Bmax, 2}, idx_opts);
  auto loss_sum = at::zeros({}, lhs_emb.options().dtype(at::kDouble));
  auto viol_sum = at::zeros({2}, idx_opts);  // lhs, rhs
  const int64_t R = plan.R, K = plan.K;
  auto g_rhs_op = at::empty({R, K}, lhs_emb.options());
  auto g_lhs_op = at::empty({dynamic ? R : 0, K}, lhs_emb.options());
  // Global-embedding gradients [direction][lhs, rhs][D]: each direction sums its chunk steps'
  // (g_part: one step's [src, dst]) into its two rows; the step sums over directions.
  auto g_glob = at::empty({dynamic ? 2 : 1, 2, plan.glob ? D : 0}, lhs_emb.options());
  auto g_part = at::empty({2, plan.glob ? D : 0}, lhs_emb.options());
  // all_negs: the most score entries per side of one chunk step (PBG_FAST_CUDA_ALL_SCORES, read
  // per bucket, for tests; default 64M, 256 MB of fp32 scores).
  const char* all_scores_env = std::getenv("PBG_FAST_CUDA_ALL_SCORES");
  const int64_t all_scores =
      all_scores_env ? std::max<int64_t>(1, std::atoll(all_scores_env)) : int64_t(1) << 26;
  // all_negs: a table whose every row is some side's negative is "dense": every row is looked up
  // (max_norm) and gets a gradient row, so every row steps (a zero gradient leaves it as is).
  const bool lhs_all = lhs_mode == NegMode::All, rhs_all = rhs_mode == NegMode::All;
  const at::Tensor lhs_rows = lhs_all || (same_table && rhs_all)
                                  ? at::arange(lhs_emb.size(0), idx_opts) : at::Tensor();
  const at::Tensor rhs_rows = rhs_all || (same_table && lhs_all)
                                  ? at::arange(rhs_emb.size(0), idx_opts) : at::Tensor();
  const int64_t num_batches = (E + batch_size - 1) / batch_size;
  const uint64_t useed = static_cast<uint64_t>(seed);
  cudaStream_t stream = current_stream();

  AT_DISPATCH_FLOATING_TYPES(lhs_emb.scalar_type(), kOp, [&] {
    using T = scalar_t;
    const T eps = T(1e-10);
    for (int64_t b = 0; b < num_batches; ++b) {
      const int64_t n = std::min(batch_size, E - b * batch_size), C = (n + cs - 1) / cs;
      check_launch(cuda::batch_edges<T>(useed, E, b * batch_size, n, lhs_i.data_ptr<int64_t>(),
                                        rhs_i.data_ptr<int64_t>(),
                                        rel_i.numel() ? rel_i.data_ptr<int64_t>() : nullptr,
                                        plan.weight.defined() ? plan.weight.data_ptr<T>() : nullptr,
                                        static_cast<T>(relation_weight), lhs_b.data_ptr<int64_t>(),
                                        rhs_b.data_ptr<int64_t>(), rel_b.data_ptr<int64_t>(),
                                        w_b.data_ptr<T>(), stream),
                   kOp);
      check_launch(cuda::uniform_draws(useed, rng::kLhsNegatives, b, C * Ul, lhs_emb.size(0),
                                       l_uni.data_ptr<int64_t>(), stream), kOp);
      check_launch(cuda::uniform_draws(useed, rng::kRhsNegatives, b, C * Ur, rhs_emb.size(0),
                                       r_uni.data_ptr<int64_t>(), stream), kOp);
      const at::Tensor lb = lhs_b.narrow(0, 0, n), rb = rhs_b.narrow(0, 0, n);
      const at::Tensor relb = rel_b.narrow(0, 0, n), wb = w_b.narrow(0, 0, n);
      const at::Tensor lu = l_uni.narrow(0, 0, C * Ul), ru = r_uni.narrow(0, 0, C * Ur);
      if (max_norm > 0) {  // every row this batch looks up, each once
        // A dense table (all_negs) is looked up whole.
        auto renorm = [&](at::Tensor& table, const at::Tensor& rows, const at::Tensor& dense) {
          const at::Tensor sorted = dense.defined() ? dense : std::get<0>(rows.sort());
          check_launch(cuda::renorm_sorted_rows<T>(table.data_ptr<T>(), D,
                                                   sorted.data_ptr<int64_t>(), sorted.numel(),
                                                   static_cast<T>(max_norm), stream),
                       kOp);
        };
        if (same_table) {
          renorm(lhs_emb, at::cat({lb, lu, rb, ru}), lhs_rows);
        } else {
          renorm(lhs_emb, at::cat({lb, lu}), lhs_rows);
          renorm(rhs_emb, at::cat({rb, ru}), rhs_rows);
        }
      }
      g_rhs_op.zero_();
      g_lhs_op.zero_();
      // Gradient rows, and the table rows they belong to, per table (lhs, rhs).
      std::vector<at::Tensor> rows[2], grads[2];
      for (int rev = 0; rev < (dynamic ? 2 : 1); ++rev) {
        const at::Tensor& s_idx = rev ? rb : lb;
        const at::Tensor& d_idx = rev ? lb : rb;
        at::Tensor s_uni = rev ? ru : lu, d_uni = rev ? lu : ru;
        NegMode smode = lhs_mode, dmode = rhs_mode;
        if (dynamic) {
          smode = rev ? rhs_mode : lhs_mode;
          dmode = NegMode::Skip;
          d_uni = d_uni.narrow(0, 0, 0);
        }
        const int64_t Us = s_uni.numel() / std::max<int64_t>(C, 1);
        const int64_t Ud = d_uni.numel() / std::max<int64_t>(C, 1);
        const at::Tensor& s_emb = rev ? rhs_emb : lhs_emb;
        const at::Tensor& d_emb = rev ? lhs_emb : rhs_emb;
        const at::Tensor& params = rev ? lhs_op_params : rhs_op_params;
        const bool s_all = smode == NegMode::All, d_all = dmode == NegMode::All;
        const int64_t s_rows = s_emb.size(0), d_rows = d_emb.size(0);
        const int s_tab = rev ? 1 : 0, d_tab = rev ? 0 : 1;
        // all_negs scores every edge against every table row: the batch runs in sub-batches
        // with at most all_scores score entries per side, and the table rows' gradient is
        // summed over them (one row-Adagrad step per row either way). Under all_negs no side
        // has in-chunk or uniform negatives (U = 0), so a sub-batch need not hold whole chunks.
        const int64_t all_rows = std::max(s_all ? s_rows : 0, d_all ? d_rows : 0);
        TORCH_INTERNAL_ASSERT(all_rows == 0 || (Us == 0 && Ud == 0));
        const int64_t sub = all_rows == 0 ? n : std::max<int64_t>(1, all_scores / all_rows);
        at::Tensor s_table = s_all ? at::zeros({s_rows, D}, lhs_emb.options()) : at::Tensor();
        at::Tensor d_table = d_all ? at::zeros({d_rows, D}, lhs_emb.options()) : at::Tensor();
        if (plan.glob) g_glob[rev].zero_();
        for (int64_t off = 0; off < n; off += sub) {
          const int64_t nb = std::min(sub, n - off), Cb = (nb + cs - 1) / cs, c0 = off / cs;
          const at::Tensor sb = s_idx.narrow(0, off, nb), db = d_idx.narrow(0, off, nb);
          const at::Tensor sb_uni = s_uni.narrow(0, c0 * Us, Cb * Us);
          const at::Tensor db_uni = d_uni.narrow(0, c0 * Ud, Cb * Ud);
          // Under 'all' a side's rows after the positives' are its table's.
          auto src_grad = at::empty({nb + (s_all ? s_rows : Cb * Us), D}, lhs_emb.options());
          auto dst_grad = at::empty({nb + (d_all ? d_rows : Cb * Ud), D}, lhs_emb.options());
          auto args = chunk_step_args<T>(s_emb, d_emb, params, plan.cmp, plan.op, plan.loss,
                                         plan.precision, margin, reg_coef);
          args.src_idx = sb.data_ptr<int64_t>();
          args.dst_idx = db.data_ptr<int64_t>();
          args.rel = relb.data_ptr<int64_t>() + off;
          args.single_relation = rel_i.numel() == 0 ? 0 : -1;  // a static relation's bucket
          args.num_edges = nb;
          args.chunk_size = cs;
          args.src_uniform = sb_uni.data_ptr<int64_t>();
          args.num_src_uniform = Us;
          args.dst_uniform = db_uni.data_ptr<int64_t>();
          args.num_dst_uniform = Ud;
          args.weight = wb.data_ptr<T>() + off;
          if (plan.glob) {
            args.src_global = (rev ? rhs_global : lhs_global).data_ptr<T>();
            args.dst_global = (rev ? lhs_global : rhs_global).data_ptr<T>();
            args.src_global_grad = g_part[0].data_ptr<T>();
            args.dst_global_grad = g_part[1].data_ptr<T>();
          }
          args.src_mode = smode;
          args.dst_mode = dmode;
          args.src_grad = src_grad.data_ptr<T>();
          args.dst_grad = dst_grad.data_ptr<T>();
          args.op_param_grad = (rev ? g_lhs_op : g_rhs_op).data_ptr<T>();
          args.edge_loss = edge_loss.data_ptr<double>() + off;
          args.edge_violators = edge_viol.data_ptr<int64_t>() + 2 * off;
          auto workspace = at::empty({cuda::chunk_step_workspace_size(args)}, lhs_emb.options());
          args.workspace = workspace.data_ptr<T>();
          check_launch(cuda::chunk_step<T>(args, stream), kOp);
          if (plan.glob) {
            g_glob[rev][s_tab].add_(g_part[0]);
            g_glob[rev][d_tab].add_(g_part[1]);
          }
          rows[s_tab].push_back(sb);
          grads[s_tab].push_back(src_grad.narrow(0, 0, nb));
          if (s_all) {
            s_table.add_(src_grad.narrow(0, nb, s_rows));
          } else {
            rows[s_tab].push_back(sb_uni);
            grads[s_tab].push_back(src_grad.narrow(0, nb, Cb * Us));
          }
          rows[d_tab].push_back(db);
          grads[d_tab].push_back(dst_grad.narrow(0, 0, nb));
          if (d_all) {
            d_table.add_(dst_grad.narrow(0, nb, d_rows));
          } else {
            rows[d_tab].push_back(db_uni);
            grads[d_tab].push_back(dst_grad.narrow(0, nb, Cb * Ud));
          }
        }
        if (s_all) {
          rows[s_tab].push_back(rev ? rhs_rows : lhs_rows);
          grads[s_tab].push_back(s_table);
        }
        if (d_all) {
          rows[d_tab].push_back(rev ? lhs_rows : rhs_rows);
          grads[d_tab].push_back(d_table);
        }
        loss_sum.add_(edge_loss.narrow(0, 0, n).sum());
        auto v = edge_viol.narrow(0, 0, n).sum(0);  // (src side, dst side)
        viol_sum[s_tab].add_(v[0]);
        viol_sum[d_tab].add_(v[1]);
      }
      // Row Adagrad: one step per distinct row of each table, from the sum of its rows.
      auto step_rows = [&](at::Tensor& emb, at::Tensor& state, const std::vector<at::Tensor>& r,
                           const std::vector<at::Tensor>& g) {
        const at::Tensor keys = at::cat(r), grad = at::cat(g);
        auto sorted = keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
        const at::Tensor& sk = std::get<0>(sorted);
        const at::Tensor& order = std::get<1>(sorted);
        auto summed = at::empty_like(grad);
        check_launch(cuda::row_adagrad_sorted<T>(
                         emb.data_ptr<T>(), state.data_ptr<T>(), D, grad.data_ptr<T>(),
                         sk.data_ptr<int64_t>(), order.data_ptr<int64_t>(), keys.numel(),
                         summed.data_ptr<T>(), static_cast<T>(lr), eps, stream),
                     kOp);
      };
      if (same_table) {
        std::vector<at::Tensor> r = rows[0], g = grads[0];
        r.insert(r.end(), rows[1].begin(), rows[1].end());
        g.insert(g.end(), grads[1].begin(), grads[1].end());
        step_rows(lhs_emb, lhs_state, r, g);
      } else {
        step_rows(lhs_emb, lhs_state, rows[0], grads[0]);
        step_rows(rhs_emb, rhs_state, rows[1], grads[1]);
      }
      // Relation parameters (an untouched relation's zero gradient leaves it as it is).
      if (K > 0) {
        check_launch(cuda::dense_adagrad<T>(rhs_op_params.data_ptr<T>(), rhs_op_state.data_ptr<T>(),
                                            g_rhs_op.data_ptr<T>(), R * K,
                                            static_cast<T>(relation_lr), eps, stream),
                     kOp);
        if (dynamic)
          check_launch(cuda::dense_adagrad<T>(lhs_op_params.data_ptr<T>(),
                                              lhs_op_state.data_ptr<T>(), g_lhs_op.data_ptr<T>(),
                                              R * K, static_cast<T>(relation_lr), eps, stream),
                       kOp);
      }
      if (plan.glob) {
        const at::Tensor g = g_glob.sum(0);  // [lhs, rhs]
        auto step = [&](at::Tensor& p, at::Tensor& st, const at::Tensor& grad) {
          check_launch(cuda::dense_adagrad<T>(p.data_ptr<T>(), st.data_ptr<T>(),
                                              grad.data_ptr<T>(), D, static_cast<T>(relation_lr),
                                              eps, stream),
                       kOp);
        };
        if (same_glob) {
          step(lhs_global, lhs_global_state, g.sum(0));
        } else {
          step(lhs_global, lhs_global_state, g[0]);
          step(rhs_global, rhs_global_state, g[1]);
        }
      }
    }
  });
  // One sync per bucket: the stats.
  stats[0].copy_(loss_sum);
  stats.narrow(0, 1, 2).copy_(viol_sum);
  stats[3].fill_(static_cast<double>(E));
  auto out = stats.cpu();
  out[4].fill_(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return out.to(stats.device());
}

}  // namespace

#if defined(PBG_CUDA_HOST_EMULATION)
TORCH_LIBRARY(pbg_fast_cuda_emu, m) {
  for (const char* schema : kOpSchemas) m.def(schema);
}
TORCH_LIBRARY_IMPL(pbg_fast_cuda_emu, CPU, m) {
#else
TORCH_LIBRARY_IMPL(pbg_fast, CUDA, m) {
#endif
  m.impl("chunked_neg_scores", &chunked_neg_scores_cuda);
  m.impl("chunked_neg_scores_backward", &chunked_neg_scores_backward_cuda);
  m.impl("loss_forward", &loss_forward_cuda);
  m.impl("loss_backward", &loss_backward_cuda);
  m.impl("operator_forward", &operator_forward_cuda);
  m.impl("operator_backward", &operator_backward_cuda);
  m.impl("row_adagrad_", &row_adagrad_cuda);
  m.impl("chunk_step", &chunk_step_cuda);
  m.impl("train_bucket_", &train_bucket_cuda);
}

}  // namespace pbg
