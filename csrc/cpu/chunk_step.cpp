// CPU fused chunk step (see chunk_step.h) and the `chunk_step` op over a whole batch.
#include "chunk_step.h"

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstring>

#include "../kernels/comparators.h"
#include "../kernels/losses.h"
#include "../kernels/operators.h"
#include "blas.h"
#include "chunk_math.h"
#include "dispatch.h"

namespace pbg {
namespace cpu {
namespace {

// Rows of big tables are random accesses (DRAM or L3): prefetch a few rows ahead so the misses
// overlap instead of queueing behind each memcpy.
template <typename T>
inline void prefetch_row(const T* row, int64_t d) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < d * int64_t(sizeof(T)); b += 64) __builtin_prefetch(p + b);
}

constexpr int64_t kPrefetchAhead = 6;

template <typename T>
inline void gather_rows(const T* table, int64_t stride, const int64_t* idx, int64_t n, int64_t d,
                        T* out) {
  for (int64_t r = 0; r < std::min(n, kPrefetchAhead); ++r) prefetch_row(table + idx[r] * stride, d);
  for (int64_t r = 0; r < n; ++r) {
    if (r + kPrefetchAhead < n) prefetch_row(table + idx[r + kPrefetchAhead] * stride, d);
    std::memcpy(out + r * d, table + idx[r] * stride, d * sizeof(T));
  }
}

template <Comparator C, Operator O, Loss L, typename T>
ChunkStats run_chunk(const ChunkTables<T>& tb, const ChunkConfig<T>& cfg, const ChunkInput& in,
                     const T* weight, const ChunkGrads<T>& out, ChunkWorkspace<T>& ws) {
  ChunkStats stats;
  const int64_t P = in.num_pos, D = tb.dim, K = tb.num_params;
  if (P == 0) return stats;
  const bool src_on = cfg.src_mode != NegMode::Skip, dst_on = cfg.dst_mode != NegMode::Skip;
  const bool src_batch = cfg.src_mode == NegMode::BatchUniform;
  const bool dst_batch = cfg.dst_mode == NegMode::BatchUniform;
  // All: the negatives are the side's whole (prepared) table, not rows gathered here.
  const bool src_all = cfg.src_mode == NegMode::All, dst_all = cfg.dst_mode == NegMode::All;
  const int64_t Us = src_all ? 0 : in.num_src_uniform, Ud = dst_all ? 0 : in.num_dst_uniform;
  const int64_t RS = P + Us, RD = P + Ud;  // rows held per side
  // Negatives of each side are a contiguous range of that side's rows (or its whole table).
  const int64_t sn_off = src_batch ? 0 : P, dn_off = dst_batch ? 0 : P;
  const int64_t Ns = !src_on ? 0 : src_all ? tb.n_src_all : RS - sn_off;
  const int64_t Nd = !dst_on ? 0 : dst_all ? tb.n_dst_all : RD - dn_off;
  constexpr bool has_op = O != Operator::None;

  // Workspace layout.
  const size_t need = size_t(RS * D) * 2 + size_t(RD * D) * (has_op ? 3 : 2) + size_t(P * Ns) * 2 +
                      size_t(P * Nd) * 2 + size_t(RS + RD) + size_t(2 * P);
  if (ws.buf.size() < need) ws.buf.resize(need);
  T* p = ws.buf.data();
  auto take = [&p](size_t n) { T* r = p; p += n; return r; };
  T* SN = take(RS * D);                      // src rows (prepared)
  // dL/d prepared src rows: straight into the output when its rows are contiguous (the bucket
  // op lays each chunk's gradient rows out that way), else a buffer copied out at the end.
  const bool src_inplace = Us == 0 || out.src_uni == out.src_pos + P * D;
  T* gSN_buf = take(RS * D);
  T* gSN = src_inplace ? out.src_pos : gSN_buf;
  T* DNraw = take(RD * D);                   // dst rows as stored
  T* DN = has_op ? take(RD * D) : DNraw;     // dst rows after the operator (prepared)
  const bool dst_inplace = !has_op && (Ud == 0 || out.dst_uni == out.dst_pos + P * D);
  T* gDN_buf = take(RD * D);
  T* gDN = dst_inplace ? out.dst_pos : gDN_buf;  // dL/d prepared dst rows
  T* S1 = take(P * Ns);                      // src-negative scores [P, Ns]: s(src_neg_j, dst_p)
  T* G1 = take(P * Ns);
  T* S2 = take(P * Nd);                      // dst-negative scores [P, Nd]: s(src_p, dst_neg_j)
  T* G2 = take(P * Nd);
  T* aux_s = take(RS);                       // cos: 1/|x|; l2: |x|^2
  T* aux_d = take(RD);
  T* pos = take(P);
  T* gpos = take(P);

  // 1. Gather rows, apply the operator to the dst side.
  gather_rows(tb.src_emb, tb.src_stride, in.src_idx, P, D, SN);
  gather_rows(tb.src_emb, tb.src_stride, in.src_uniform, Us, D, SN + P * D);
  gather_rows(tb.dst_emb, tb.dst_stride, in.dst_idx, P, D, DNraw);
  gather_rows(tb.dst_emb, tb.dst_stride, in.dst_uniform, Ud, D, DNraw + P * D);
  if (tb.src_global)
    for (int64_t r = 0; r < RS; ++r) axpy_row(T(1), tb.src_global, SN + r * D, D);
  if (tb.dst_global)
    for (int64_t r = 0; r < RD; ++r) axpy_row(T(1), tb.dst_global, DNraw + r * D, D);
  auto rel_of = [&](int64_t r) -> int64_t { return in.rel ? in.rel[r < P ? r : 0] : 0; };
  bool one_rel = true;
  if (in.rel)
    for (int64_t r = 1; r < P && one_rel; ++r) one_rel = in.rel[r] == in.rel[0];
  if (has_op) {
    if ((O == Operator::Linear || O == Operator::Affine) && one_rel) {
      // DN = DNraw M^T (+ t): one GEMM for the whole chunk.
      const T* M = tb.op_params + rel_of(0) * K;
      gemm(Trans::N, Trans::T, RD, D, D, T(1), DNraw, D, M, D, T(0), DN, D);
      if (O == Operator::Affine)
        for (int64_t r = 0; r < RD; ++r) axpy_row(T(1), M + D * D, DN + r * D, D);
    } else {
      for (int64_t r = 0; r < RD; ++r)
        operator_forward_row<O>(DNraw + r * D, tb.op_params + rel_of(r) * K, DN + r * D, D);
    }
  }

  // 2. Prepare for the comparator.
  prepare_rows<C>(SN, RS, D, aux_s);
  prepare_rows<C>(DN, RD, D, aux_d);

  // 3. Scores: positives, then one GEMM per side for the negatives.
  // S1[i, j] = s(dst_i, src_neg_j) and S2[i, j] = s(src_i, dst_neg_j).
  const T* s_neg = src_all ? tb.src_all : SN + sn_off * D;
  const T* s_neg_aux = src_all ? tb.src_all_aux : aux_s + sn_off;
  const T* d_neg = dst_all ? tb.dst_all : DN + dn_off * D;
  const T* d_neg_aux = dst_all ? tb.dst_all_aux : aux_d + dn_off;
  pos_scores<C>(SN, DN, P, D, pos);
  // Both sides in-chunk (static relations): the in-chunk blocks of the two score matrices are
  // transposes of each other (S1[i, j] = s(dst_i, src_j) = S2[j, i]), so one P x P GEMM serves
  // both, and in the backward their gradients combine into one matrix: 9 P x P x D GEMM units
  // per chunk instead of 12 (U = P). Dot and cos only: the distance comparators' norm terms
  // keep the general path.
  const bool share = !ComparatorTraits<C>::uses_norms && src_batch && dst_batch;
  if (share) {
    // S2 whole (its rows: the dst rows [positives | uniform] are contiguous), then S1's
    // in-chunk block by transposition and its uniform block.
    gemm(Trans::N, Trans::T, P, Nd, D, T(1), SN, D, DN, D, T(0), S2, Nd);
    for (int64_t i = 0; i < P; ++i)
      for (int64_t j = 0; j < P; ++j) S1[i * Ns + j] = S2[j * Nd + i];
    if (Us > 0) gemm(Trans::N, Trans::T, P, Us, D, T(1), DN, D, SN + P * D, D, T(0), S1 + P, Ns);
  } else {
    neg_scores<C>(DN, aux_d, P, s_neg, s_neg_aux, Ns, D, S1);
    neg_scores<C>(SN, aux_s, P, d_neg, d_neg_aux, Nd, D, S2);
  }
  // The negative that is the edge's own entity is masked, as PBG does.
  if (src_on && src_batch)
    for (int64_t i = 0; i < P; ++i) S1[i * Ns + i] = T(kMaskedScore);
  if (dst_on && dst_batch)
    for (int64_t i = 0; i < P; ++i) S2[i * Nd + i] = T(kMaskedScore);
  if (src_all)
    for (int64_t i = 0; i < P; ++i) S1[i * Ns + in.src_idx[i]] = T(kMaskedScore);
  if (dst_all)
    for (int64_t i = 0; i < P; ++i) S2[i * Nd + in.dst_idx[i]] = T(kMaskedScore);

  // 4. Loss and dL/dscore, row by row.
  const int64_t src_count = src_all ? Ns : (src_batch ? cfg.chunk_size : 0) + Us;
  const int64_t dst_count = dst_all ? Nd : (dst_batch ? cfg.chunk_size : 0) + Ud;
  const T src_nw = src_count > 0 ? T(1) / T(src_count) : T(0);
  const T dst_nw = dst_count > 0 ? T(1) / T(dst_count) : T(0);
  double loss = 0;
  for (int64_t i = 0; i < P; ++i) {
    const T w = weight ? weight[i] : T(1);
    gpos[i] = 0;
    if (src_on) {
      const T* s = S1 + i * Ns;
      for (int64_t j = 0; j < Ns; ++j) stats.src_violators += s[j] > pos[i];
      std::memcpy(G1 + i * Ns, s, Ns * sizeof(T));
      loss += loss_row<L, T, FastMath>(pos[i], G1 + i * Ns, Ns, w, cfg.margin, src_nw, &gpos[i]);
    }
    if (dst_on) {
      const T* s = S2 + i * Nd;
      for (int64_t j = 0; j < Nd; ++j) stats.dst_violators += s[j] > pos[i];
      std::memcpy(G2 + i * Nd, s, Nd * sizeof(T));
      loss += loss_row<L, T, FastMath>(pos[i], G2 + i * Nd, Nd, w, cfg.margin, dst_nw, &gpos[i]);
    }
  }
  stats.loss = loss;
  neg_grad_to_dot<C>(S1, G1, P * Ns);
  neg_grad_to_dot<C>(S2, G2, P * Nd);

  // 5. Backward through the score GEMMs. The negatives' GEMMs write their rows (beta = 0) first;
  // the rows they do not cover are zeroed; then the queries' GEMMs accumulate.
  if (share) {
    // H = G2[:, :P] + G1[:, :P]^T = dL/d<src_i, dst_j>, into G2's in-chunk block, and H^T into
    // G1's. Then each side's positive rows take one GEMM over [in-chunk | uniform] columns,
    // and each side's uniform rows one more: 4 calls.
    for (int64_t i = 0; i < P; ++i)
      for (int64_t j = 0; j < P; ++j) G2[i * Nd + j] += G1[j * Ns + i];
    for (int64_t i = 0; i < P; ++i)
      for (int64_t j = 0; j < P; ++j) G1[i * Ns + j] = G2[j * Nd + i];
    gemm(Trans::N, Trans::N, P, D, Nd, T(1), G2, Nd, DN, D, T(0), gSN, D);
    gemm(Trans::N, Trans::N, P, D, Ns, T(1), G1, Ns, SN, D, T(0), gDN, D);
    // The uniform rows: src ones are scored against the dst queries (S1's right block), dst
    // ones against the src queries (S2's right block).
    if (Us > 0) gemm(Trans::T, Trans::N, Us, D, P, T(1), G1 + P, Ns, DN, D, T(0), gSN + P * D, D);
    if (Ud > 0) gemm(Trans::T, Trans::N, Ud, D, P, T(1), G2 + P, Nd, SN, D, T(0), gDN + P * D, D);
  } else {
    // One side's negatives: their gradient rows (beta = 0; with 'all', accumulated into the
    // caller's table-sized buffer), and the side's other rows zeroed.
    auto negatives_backward = [&](bool all, const T* queries, const T* negs, int64_t N,
                                  const T* G, T* g_rows, int64_t off, int64_t rows, T* g_all) {
      if (N > 0) neg_backward_to_neg<C>(queries, P, negs, N, D, G, all ? g_all : g_rows + off * D,
                                        T(all ? 1 : 0));
      std::fill(g_rows, g_rows + (N > 0 && !all ? off : rows) * D, T(0));
    };
    negatives_backward(src_all, DN, s_neg, Ns, G1, gSN, sn_off, RS, out.src_all);
    negatives_backward(dst_all, SN, d_neg, Nd, G2, gDN, dn_off, RD, out.dst_all);
    neg_backward_to_query<C>(DN, P, s_neg, Ns, D, G1, gDN);
    neg_backward_to_query<C>(SN, P, d_neg, Nd, D, G2, gSN);
  }
  pos_scores_backward<C>(SN, DN, pos, gpos, P, D, gSN, gDN);

  // 6. Back through "prepare" and the operator, into the outputs.
  prepare_rows_backward<C>(SN, aux_s, gSN, RS, D);
  prepare_rows_backward<C>(DN, aux_d, gDN, RD, D);
  if (out.src_global)
    for (int64_t r = 0; r < RS; ++r) axpy_row(T(1), gSN + r * D, out.src_global, D);
  if (!src_inplace) {
    std::memcpy(out.src_pos, gSN, P * D * sizeof(T));
    if (Us > 0) std::memcpy(out.src_uni, gSN + P * D, Us * D * sizeof(T));
  }
  auto dst_out = [&](int64_t r) { return r < P ? out.dst_pos + r * D : out.dst_uni + (r - P) * D; };
  if (!has_op) {
    if (!dst_inplace) {
      std::memcpy(out.dst_pos, gDN, P * D * sizeof(T));
      if (Ud > 0) std::memcpy(out.dst_uni, gDN + P * D, Ud * D * sizeof(T));
    }
  } else if ((O == Operator::Linear || O == Operator::Affine) && one_rel) {
    const int64_t rel0 = rel_of(0);
    const T* M = tb.op_params + rel0 * K;
    T* gM = out.op_params + rel0 * K;
    // dL/dDNraw = gDN M ; dL/dM += gDN^T DNraw ; dL/dt += colsum(gDN).
    gemm(Trans::N, Trans::N, P, D, D, T(1), gDN, D, M, D, T(0), out.dst_pos, D);
    if (Ud > 0) gemm(Trans::N, Trans::N, Ud, D, D, T(1), gDN + P * D, D, M, D, T(0), out.dst_uni, D);
    gemm(Trans::T, Trans::N, D, D, RD, T(1), gDN, D, DNraw, D, T(1), gM, D);
    if (O == Operator::Affine)
      for (int64_t r = 0; r < RD; ++r) axpy_row(T(1), gDN + r * D, gM + D * D, D);
  } else {
    for (int64_t r = 0; r < RD; ++r) {
      const int64_t rr = rel_of(r);
      operator_backward_row<O>(DNraw + r * D, tb.op_params + rr * K, gDN + r * D, dst_out(r),
                               out.op_params + rr * K, D);
    }
  }
  if (out.dst_global) {
    for (int64_t r = 0; r < RD; ++r) axpy_row(T(1), dst_out(r), out.dst_global, D);
  }
  if (cfg.reg_coef != T(0)) {
    // N3 on each positive's src and dst rows as stored, and on its relation's parameters.
    constexpr bool pairs = O == Operator::ComplexDiagonal;
    double reg = 0;
    for (int64_t i = 0; i < P; ++i) {
      reg += n3_row(tb.src_emb + in.src_idx[i] * tb.src_stride, out.src_pos + i * D, D,
                    cfg.reg_coef, pairs);
      reg += n3_row(tb.dst_emb + in.dst_idx[i] * tb.dst_stride, out.dst_pos + i * D, D,
                    cfg.reg_coef, pairs);
      if (K > 0) {
        const int64_t rr = rel_of(i);
        reg += n3_row(tb.op_params + rr * K, out.op_params + rr * K, K, cfg.reg_coef, pairs);
      }
    }
    stats.loss += reg;
  }
  return stats;
}

}  // namespace

template <typename T>
ChunkStats chunk_step_one(Comparator cmp, Operator op, Loss loss, const ChunkTables<T>& tables,
                          const ChunkConfig<T>& cfg, const ChunkInput& in, const T* weight,
                          const ChunkGrads<T>& out, ChunkWorkspace<T>& ws) {
  return dispatch_comparator(cmp, [&](auto c) {
    return dispatch_operator(op, [&](auto o) {
      return dispatch_loss(loss, [&](auto l) {
        return run_chunk<decltype(c)::value, decltype(o)::value, decltype(l)::value, T>(
            tables, cfg, in, weight, out, ws);
      });
    });
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
