// CPU fused chunk step (see chunk_step.h) and the `chunk_step` op over a whole batch.
#include "chunk_step.h"

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

template <typename T>
ChunkStats chunk_step_one(Comparator cmp, Operator op, Loss loss, const ChunkTables<T>& tables,
                          const ChunkConfig<T>& cfg, const ChunkInput& in, const T* weight,
                          const ChunkGrads<T>& out, ChunkWorkspace<T>& ws) {
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
chunk_step_cpu(
    const at::Tensor& src_emb, const at::Tensor& dst_emb, const at::Tensor& src_idx,
    const at::Tensor& dst_idx, const at::Tensor& rel, const at::Tensor& op_params,
    const at::Tensor& src_uniform, const at::Tensor& dst_uniform,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& src_global,
    const c10::optional<at::Tensor>& dst_global, int64_t chunk_size, c10::string_view src_mode_name,
    c10::string_view dst_mode_name, c10::string_view comparator, c10::string_view op_name,
    c10::string_view loss_name, double margin, double reg_coef) {
  const Comparator cmp = parse_comparator(std::string(comparator), kOp);
  const Operator op = parse_operator(std::string(op_name), kOp);
  const Loss loss = parse_loss(std::string(loss_name), kOp);
  const NegMode src_mode = parse_neg_mode(std::string(src_mode_name), kOp, "src_mode");
  const NegMode dst_mode = parse_neg_mode(std::string(dst_mode_name), kOp, "dst_mode");

  check_float_matrix(src_emb, kOp, "src_emb");
  check_float_matrix(dst_emb, kOp, "dst_emb");
  check_same_dtype(dst_emb, src_emb, kOp, "dst_emb", "src_emb");
  check_same_dtype(op_params, src_emb, kOp, "op_params", "src_emb");
  check_cpu(op_params, kOp, "op_params");
  TORCH_CHECK_VALUE(src_emb.dim() == 2 && dst_emb.dim() == 2, kOp,
                    ": src_emb and dst_emb must be 2-D [rows, dim], got ", src_emb.sizes(), " and ",
                    dst_emb.sizes());
  const int64_t D = src_emb.size(1);
  TORCH_CHECK_VALUE(dst_emb.size(1) == D, kOp, ": dst_emb has dim ", dst_emb.size(1),
                    ", src_emb has ", D);
  TORCH_CHECK_VALUE(src_emb.stride(1) == 1 && dst_emb.stride(1) == 1, kOp,
                    ": src_emb and dst_emb rows must be contiguous");
  for (auto [t, name] : {std::pair{&src_idx, "src_idx"}, {&dst_idx, "dst_idx"}, {&rel, "rel"},
                         {&src_uniform, "src_uniform"}, {&dst_uniform, "dst_uniform"}})
    check_index(*t, kOp, name);
  TORCH_CHECK_VALUE(src_idx.dim() == 1 && dst_idx.dim() == 1 && rel.dim() == 1, kOp,
                    ": src_idx, dst_idx and rel must be 1-D");
  const int64_t B = src_idx.size(0);
  TORCH_CHECK_VALUE(dst_idx.size(0) == B && rel.size(0) == B, kOp,
                    ": src_idx, dst_idx and rel must have the same length, got ", B, ", ",
                    dst_idx.size(0), ", ", rel.size(0));
  TORCH_CHECK_VALUE(chunk_size > 0, kOp, ": chunk_size must be positive, got ", chunk_size);
  const int64_t C = (B + chunk_size - 1) / chunk_size;
  TORCH_CHECK_VALUE(src_uniform.dim() == 2 && src_uniform.size(0) == C, kOp,
                    ": src_uniform must be [num_chunks=", C, ", U], got ", src_uniform.sizes());
  TORCH_CHECK_VALUE(dst_uniform.dim() == 2 && dst_uniform.size(0) == C, kOp,
                    ": dst_uniform must be [num_chunks=", C, ", U], got ", dst_uniform.sizes());
  TORCH_CHECK_VALUE(src_mode != NegMode::Skip || src_uniform.size(1) == 0, kOp,
                    ": src_uniform must be empty when src_mode is 'skip'");
  TORCH_CHECK_VALUE(dst_mode != NegMode::Skip || dst_uniform.size(1) == 0, kOp,
                    ": dst_uniform must be empty when dst_mode is 'skip'");
  TORCH_CHECK_VALUE(src_mode != NegMode::All || src_uniform.size(1) == 0, kOp,
                    ": src_uniform must be empty when src_mode is 'all'");
  TORCH_CHECK_VALUE(dst_mode != NegMode::All || dst_uniform.size(1) == 0, kOp,
                    ": dst_uniform must be empty when dst_mode is 'all'");
  TORCH_CHECK_VALUE(dst_mode != NegMode::All || op == Operator::None, kOp,
                    ": dst_mode 'all' needs operator 'none' (the operator acts on the dst side; "
                    "with dynamic relations every direction takes its negatives on the src side)");
  const int64_t K = operator_num_params(op, D);
  TORCH_CHECK_VALUE(op != Operator::ComplexDiagonal || D % 2 == 0, kOp,
                    ": complex_diagonal needs an even dim, got ", D);
  TORCH_CHECK_VALUE(op_params.dim() == 2 && op_params.size(1) == K, kOp, ": op_params must be [R, ",
                    K, "] for operator '", std::string(op_name), "' at dim ", D, ", got ",
                    op_params.sizes());
  const int64_t R = op_params.size(0);
  auto src_i = src_idx.contiguous(), dst_i = dst_idx.contiguous(), rel_i = rel.contiguous();
  auto su = src_uniform.contiguous(), du = dst_uniform.contiguous();
  auto params = op_params.contiguous();
  // Index bounds, checked once here so the kernel can gather blindly.
  auto check_bounds = [&](const at::Tensor& t, int64_t n, const char* name) {
    if (t.numel() == 0) return;
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    TORCH_CHECK_INDEX(lo >= 0 && hi < n, kOp, ": ", name, " out of range [0, ", n, "): min ", lo,
                      ", max ", hi);
  };
  check_bounds(src_i, src_emb.size(0), "src_idx");
  check_bounds(dst_i, dst_emb.size(0), "dst_idx");
  check_bounds(su, src_emb.size(0), "src_uniform");
  check_bounds(du, dst_emb.size(0), "dst_uniform");
  check_bounds(rel_i, R, "rel");
  if (B > 0 && op != Operator::None && du.size(1) > 0) {
    auto rel_pad = at::constant_pad_nd(rel_i, {0, C * chunk_size - B}, -1).view({C, chunk_size});
    auto first = rel_pad.select(1, 0).unsqueeze(1);
    TORCH_CHECK_VALUE(((rel_pad == first) | (rel_pad == -1)).all().item<bool>(), kOp,
                      ": dst uniform negatives need one relation per chunk, but a chunk mixes "
                      "relations");
  }
  at::Tensor w;
  if (weight.has_value() && weight->defined()) {
    w = weight->contiguous();
    check_cpu(w, kOp, "weight");
    check_same_dtype(w, src_emb, kOp, "weight", "src_emb");
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == B, kOp, ": weight must be [", B, "], got ",
                      w.sizes());
  }

  auto global_arg = [&](const c10::optional<at::Tensor>& g, const char* name) {
    if (!g.has_value() || !g->defined()) return at::Tensor();
    check_cpu(*g, kOp, name);
    check_same_dtype(*g, src_emb, kOp, name, "src_emb");
    TORCH_CHECK_VALUE(g->dim() == 1 && g->size(0) == D, kOp, ": ", name, " must be [", D,
                      "], got ", g->sizes());
    return g->contiguous();
  };
  const at::Tensor sglob = global_arg(src_global, "src_global");
  const at::Tensor dglob = global_arg(dst_global, "dst_global");
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
                            static_cast<T>(reg_coef)};
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
