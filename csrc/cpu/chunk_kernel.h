// The fused chunk step's body (run_chunk: gathers, operator, scores, loss, backward) for every
// comparator x operator x loss, torch-free. Included by the per-comparator instantiation files
// (chunk_step_dot_cos.cpp, chunk_step_l2.cpp); chunk_step.cpp dispatches to them.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../kernels/comparators.h"
#include "../kernels/losses.h"
#include "../kernels/operators.h"
#include "blas.h"
#include "chunk_math.h"
#include "chunk_step.h"
#include "isa_dispatch.h"
#include "loss_rows.h"
#include "transpose.h"
#include "../kernels/tags.h"

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
__attribute__((always_inline)) inline ChunkStats run_chunk_body(
    const ChunkTables<T>& tb, const ChunkConfig<T>& cfg, const ChunkInput& in, const T* weight,
    const ChunkGrads<T>& out, ChunkWorkspace<T>& ws) {
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
      const Bf16ProductsScope fp32(false);  // the operators' products stay fp32
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
    transpose_block(isa_level(), P, P, S2, Nd, S1, Ns, false);
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
  // One side at a time: fp32 on the fused per-ISA kernel, fp64 the generic pass (loss_rows.h).
  std::fill(gpos, gpos + P, T(0));
  if (src_on)
    loss += loss_rows(L, isa_level(), P, Ns, S1, Ns, pos, weight, cfg.margin, src_nw, G1, Ns, gpos,
                      &stats.src_violators);
  if (dst_on)
    loss += loss_rows(L, isa_level(), P, Nd, S2, Nd, pos, weight, cfg.margin, dst_nw, G2, Nd, gpos,
                      &stats.dst_violators);
  stats.loss = loss;
  neg_grad_to_dot<C>(S1, G1, P * Ns);
  neg_grad_to_dot<C>(S2, G2, P * Nd);

  // 5. Backward through the score GEMMs. The negatives' GEMMs write their rows (beta = 0) first;
  // the rows they do not cover are zeroed; then the queries' GEMMs accumulate.
  if (share) {
    // H = G2[:, :P] + G1[:, :P]^T = dL/d<src_i, dst_j>, into G2's in-chunk block, and H^T into
    // G1's. Then each side's positive rows take one GEMM over [in-chunk | uniform] columns,
    // and each side's uniform rows one more: 4 calls.
    transpose_block(isa_level(), P, P, G1, Ns, G2, Nd, true);
    transpose_block(isa_level(), P, P, G2, Nd, G1, Ns, false);
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
    const Bf16ProductsScope fp32(false);  // the operators' products stay fp32
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

// fp32, the training path: one version per ISA (isa_dispatch.h). fp64 (tests): one.
#ifdef PBG_ISA_VERSIONS
template <Comparator C, Operator O, Loss L>
PBG_TARGET_V4 ChunkStats run_chunk_v4(const ChunkTables<float>& tb, const ChunkConfig<float>& cfg,
                                      const ChunkInput& in, const float* weight,
                                      const ChunkGrads<float>& out, ChunkWorkspace<float>& ws) {
  return run_chunk_body<C, O, L, float>(tb, cfg, in, weight, out, ws);
}
template <Comparator C, Operator O, Loss L>
PBG_TARGET_V3 ChunkStats run_chunk_v3(const ChunkTables<float>& tb, const ChunkConfig<float>& cfg,
                                      const ChunkInput& in, const float* weight,
                                      const ChunkGrads<float>& out, ChunkWorkspace<float>& ws) {
  return run_chunk_body<C, O, L, float>(tb, cfg, in, weight, out, ws);
}
#endif

template <Comparator C, Operator O, Loss L, typename T>
ChunkStats run_chunk(const ChunkTables<T>& tb, const ChunkConfig<T>& cfg, const ChunkInput& in,
                     const T* weight, const ChunkGrads<T>& out, ChunkWorkspace<T>& ws) {
#ifdef PBG_ISA_VERSIONS
  if constexpr (std::is_same_v<T, float>) {
    switch (isa_level()) {
      case GemmIsa::Avx512: return run_chunk_v4<C, O, L>(tb, cfg, in, weight, out, ws);
      case GemmIsa::Avx2: return run_chunk_v3<C, O, L>(tb, cfg, in, weight, out, ws);
      default: break;
    }
  }
#endif
  return run_chunk_body<C, O, L, T>(tb, cfg, in, weight, out, ws);
}

}  // namespace

// The chunk step for comparator C, every operator and loss: explicitly instantiated per
// comparator in chunk_step_dot_cos.cpp and chunk_step_l2.cpp, so that the two halves of the
// instantiations (with their ISA clones) compile on two cores.
template <Comparator C, typename T>
ChunkStats chunk_step_cmp(Operator op, Loss loss, const ChunkTables<T>& tables,
                          const ChunkConfig<T>& cfg, const ChunkInput& in, const T* weight,
                          const ChunkGrads<T>& out, ChunkWorkspace<T>& ws) {
  return dispatch_operator(op, [&](auto o) {
    return dispatch_loss(loss, [&](auto l) {
      return run_chunk<C, decltype(o)::value, decltype(l)::value, T>(tables, cfg, in, weight,
                                                                     out, ws);
    });
  });
}

#define PBG_INSTANTIATE_CHUNK_STEP(C, T)                                                     \
  template ChunkStats chunk_step_cmp<C, T>(Operator, Loss, const ChunkTables<T>&,           \
                                           const ChunkConfig<T>&, const ChunkInput&, const T*, \
                                           const ChunkGrads<T>&, ChunkWorkspace<T>&);

}  // namespace cpu
}  // namespace pbg
