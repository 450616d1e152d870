// CPU fused chunk step (see chunk_step.h) and the `chunk_step` op over a whole batch.
#include "chunk_step.h"
#include "chunk_step_args.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../kernels/comparators.h"
#include "chunk_math.h"
#include "dispatch.h"

namespace pbg {
namespace cpu {

void check_cpu_precision(Precision p, const char* op) {
  TORCH_CHECK_VALUE(p != Precision::TF32, op,
                    ": precision 'tf32' runs on CUDA only (tensor cores); use 'fp32', or 'bf16' "
                    "on a CPU with AVX512-BF16");
  TORCH_CHECK_VALUE(p != Precision::BF16 || cpu::have_bf16_gemm(), op,
                    ": precision 'bf16' needs a CPU with AVX512-BF16 (this one, or "
                    "PBG_FAST_ISA, runs ", cpu::gemm_isa_name(cpu::isa_level()),
                    " without it); use 'fp32'");
}

template <typename T>
ChunkStats chunk_step_one(Comparator cmp, Operator op, Loss loss, const ChunkTables<T>& tables,
                          const ChunkConfig<T>& cfg, const ChunkInput& in, const T* weight,
                          const ChunkGrads<T>& out, ChunkWorkspace<T>& ws) {
  const Bf16ProductsScope products(cfg.bf16_products);
  return dispatch_comparator(cmp, [&](auto c) {
    return chunk_step_cmp<decltype(c)::value, T>(op, loss, tables, cfg, in, weight, out, ws);
  });
}

template <typename T>
const T* prepare_all_table(Comparator cmp, const T* emb, int64_t stride, int64_t n, int64_t dim,
                           const T* global, std::vector<T>& buf, std::vector<T>& aux) {
  return dispatch_comparator(cmp, [&](auto c) -> const T* {
    constexpr Comparator Cc = decltype(c)::value;
    aux.resize(n);
    if (!global && !ComparatorTraits<Cc>::prepare_normalizes && stride == dim) {
      prepare_rows<Cc>(const_cast<T*>(emb), n, dim, aux.data());  // l2: reads the rows only
      return emb;
    }
    buf.resize(size_t(n) * dim);
    for (int64_t r = 0; r < n; ++r) {
      std::memcpy(buf.data() + r * dim, emb + r * stride, dim * sizeof(T));
      if (global) axpy_row(T(1), global, buf.data() + r * dim, dim);
    }
    prepare_rows<Cc>(buf.data(), n, dim, aux.data());
    return buf.data();
  });
}

template <typename T>
void prepare_all_table_backward(Comparator cmp, const T* prepared, const T* aux, T* g, int64_t n,
                                int64_t dim, T* g_global) {
  dispatch_comparator(cmp, [&](auto c) {
    prepare_rows_backward<decltype(c)::value>(prepared, aux, g, n, dim);
    return 0;
  });
  if (g_global)
    for (int64_t r = 0; r < n; ++r) axpy_row(T(1), g + r * dim, g_global, dim);
}

template const float* prepare_all_table<float>(Comparator, const float*, int64_t, int64_t,
                                               int64_t, const float*, std::vector<float>&,
                                               std::vector<float>&);
template const double* prepare_all_table<double>(Comparator, const double*, int64_t, int64_t,
                                                 int64_t, const double*, std::vector<double>&,
                                                 std::vector<double>&);
template void prepare_all_table_backward<float>(Comparator, const float*, const float*, float*,
                                                int64_t, int64_t, float*);
template void prepare_all_table_backward<double>(Comparator, const double*, const double*,
                                                 double*, int64_t, int64_t, double*);

template ChunkStats chunk_step_one<float>(Comparator, Operator, Loss, const ChunkTables<float>&,
                                          const ChunkConfig<float>&, const ChunkInput&,
                                          const float*, const ChunkGrads<float>&,
                                          ChunkWorkspace<float>&);
template ChunkStats chunk_step_one<double>(Comparator, Operator, Loss, const ChunkTables<double>&,
                                           const ChunkConfig<double>&, const ChunkInput&,
                                           const double*, const ChunkGrads<double>&,
                                           ChunkWorkspace<double>&);

}  // namespace cpu

namespace {

constexpr const char* kOp = "chunk_step";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
chunk_step_cpu(PBG_CHUNK_STEP_PARAMS) {
  const ChunkStepPlan plan = check_chunk_step(PBG_CHUNK_STEP_ARGS, c10::DeviceType::CPU);
  cpu::check_cpu_precision(plan.precision, "chunk_step");
  const Comparator cmp = plan.cmp;
  const Operator op = plan.op;
  const Loss loss = plan.loss;
  const NegMode src_mode = plan.src_mode, dst_mode = plan.dst_mode;
  const int64_t D = plan.D, B = plan.B, C = plan.C, K = plan.K, R = plan.R;
  const at::Tensor &src_i = plan.src_i, &dst_i = plan.dst_i, &rel_i = plan.rel_i;
  const at::Tensor &su = plan.su, &du = plan.du, &params = plan.params, &w = plan.weight;
  const at::Tensor &sglob = plan.src_global, &dglob = plan.dst_global;
  const int64_t Us = su.size(1), Ud = du.size(1);
  const bool src_all = src_mode == NegMode::All, dst_all = dst_mode == NegMode::All;
  const int64_t Ns_all = src_all ? src_emb.size(0) : 0, Nd_all = dst_all ? dst_emb.size(0) : 0;
  // With 'all', the rows after the positives' are the gradient of every table row.
  auto src_grad = at::empty({B + (src_all ? Ns_all : C * Us), D}, src_emb.options());
  auto dst_grad = at::empty({B + (dst_all ? Nd_all : C * Ud), D}, src_emb.options());
  auto chunk_loss = at::zeros({C}, src_emb.options().dtype(at::kDouble));
  auto violators = at::zeros({C, 2}, src_emb.options().dtype(at::kLong));
  const int64_t nthreads = at::get_num_threads();
  auto param_grad_t = at::zeros({nthreads, R, K}, src_emb.options());
  // Per-thread global-embedding gradients: [threads, 2, D] (src, dst).
  auto global_grad_t = at::zeros({nthreads, 2, D}, src_emb.options());
  // Per-thread table-sized gradients for the 'all' sides (summed afterwards).
  auto src_all_t = at::zeros({src_all ? nthreads : 0, Ns_all, D}, src_emb.options());
  auto dst_all_t = at::zeros({dst_all ? nthreads : 0, Nd_all, D}, src_emb.options());

  AT_DISPATCH_FLOATING_TYPES(src_emb.scalar_type(), kOp, [&] {
    using T = scalar_t;
    cpu::ChunkTables<T> tables{src_emb.data_ptr<T>(), src_emb.stride(0), dst_emb.data_ptr<T>(),
                               dst_emb.stride(0), params.data_ptr<T>(), K, D,
                               sglob.defined() ? sglob.data_ptr<T>() : nullptr,
                               dglob.defined() ? dglob.data_ptr<T>() : nullptr};
    cpu::ChunkConfig<T> cfg{src_mode, dst_mode, chunk_size, static_cast<T>(margin),
                            static_cast<T>(reg_coef), plan.precision == Precision::BF16};
    std::vector<T> s_buf, s_aux, d_buf, d_aux;
    if (src_all) {
      tables.src_all = cpu::prepare_all_table<T>(cmp, tables.src_emb, tables.src_stride, Ns_all,
                                                 D, tables.src_global, s_buf, s_aux);
      tables.src_all_aux = s_aux.data();
      tables.n_src_all = Ns_all;
    }
    if (dst_all) {
      tables.dst_all = cpu::prepare_all_table<T>(cmp, tables.dst_emb, tables.dst_stride, Nd_all,
                                                 D, tables.dst_global, d_buf, d_aux);
      tables.dst_all_aux = d_aux.data();
      tables.n_dst_all = Nd_all;
    }
    const int64_t* sidx = src_i.data_ptr<int64_t>();
    const int64_t* didx = dst_i.data_ptr<int64_t>();
    const int64_t* relp = rel_i.data_ptr<int64_t>();
    const int64_t* sup = su.data_ptr<int64_t>();
    const int64_t* dup = du.data_ptr<int64_t>();
    const T* wp = w.defined() ? w.data_ptr<T>() : nullptr;
    T* sg = src_grad.data_ptr<T>();
    T* dg = dst_grad.data_ptr<T>();
    double* lossp = chunk_loss.data_ptr<double>();
    int64_t* violp = violators.data_ptr<int64_t>();
    T* pg = param_grad_t.data_ptr<T>();
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      cpu::blas_single_thread_in_this_thread();
      cpu::ChunkWorkspace<T> ws;
      T* my_pg = pg + at::get_thread_num() * R * K;
      T* my_gg = global_grad_t.data_ptr<T>() + at::get_thread_num() * 2 * D;
      for (int64_t c = begin; c < end; ++c) {
        const int64_t b0 = c * chunk_size, P = std::min(chunk_size, B - b0);
        cpu::ChunkInput in{sidx + b0, didx + b0, relp + b0, P, sup + c * Us, Us, dup + c * Ud, Ud};
        cpu::ChunkGrads<T> out{sg + b0 * D, sg + (B + c * Us) * D, dg + b0 * D,
                               dg + (B + c * Ud) * D, my_pg,
                               sglob.defined() ? my_gg : nullptr,
                               dglob.defined() ? my_gg + D : nullptr,
                               src_all ? src_all_t[at::get_thread_num()].data_ptr<T>() : nullptr,
                               dst_all ? dst_all_t[at::get_thread_num()].data_ptr<T>() : nullptr};
        auto st = cpu::chunk_step_one<T>(cmp, op, loss, tables, cfg, in, wp ? wp + b0 : nullptr,
                                         out, ws);
        lossp[c] = st.loss;
        violp[2 * c] = st.src_violators;
        violp[2 * c + 1] = st.dst_violators;
      }
    });
    // The 'all' sides: sum the threads, then back through the prepare and the global vector.
    T* gg = global_grad_t.data_ptr<T>();  // thread 0's slots take the negatives' share
    if (src_all) {
      auto g = src_grad.narrow(0, B, Ns_all);
      g.copy_(src_all_t.sum(0));
      cpu::prepare_all_table_backward<T>(cmp, tables.src_all, tables.src_all_aux, g.data_ptr<T>(),
                                         Ns_all, D, sglob.defined() ? gg : nullptr);
    }
    if (dst_all) {
      auto g = dst_grad.narrow(0, B, Nd_all);
      g.copy_(dst_all_t.sum(0));
      cpu::prepare_all_table_backward<T>(cmp, tables.dst_all, tables.dst_all_aux, g.data_ptr<T>(),
                                         Nd_all, D, dglob.defined() ? gg + D : nullptr);
    }
  });
  // Summed in chunk order so the result does not depend on the thread count.
  auto total_loss = chunk_loss.sum().to(src_emb.scalar_type());
  auto global_grad = global_grad_t.sum(0);
  return {total_loss,
          src_grad,
          dst_grad,
          param_grad_t.sum(0),
          sglob.defined() ? global_grad[0].clone() : at::zeros({0}, src_emb.options()),
          dglob.defined() ? global_grad[1].clone() : at::zeros({0}, src_emb.options()),
          violators.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) { m.impl("chunk_step", &chunk_step_cpu); }

}  // namespace pbg
