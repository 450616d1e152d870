// CUDA fused chunk step over a whole batch: the same math as csrc/cpu/chunk_step.cpp (read that
// first), as a sequence of kernels over all chunks at once. The products (scores and their
// gradients, every [rows x D] . [D x rows] of the step) are strided-batched GEMMs over the
// chunks, run by args.gemm (cuBLAS from the binding; TF32/BF16 inputs selectable); everything
// else is a grid-stride loop with one thread per row, per edge or per element, and every
// intermediate lives in the workspace:
//   1. gather src rows -> SN [NS, D] and dst rows -> DNraw [ND, D];
//      NS = B + C*Us (rows: the B positives, then chunk c's uniform negatives at B + c*Us + u),
//      ND = B + C*Ud likewise: the layout of src_grad / dst_grad;
//   2. the operator on the dst rows -> DN (uniform dst rows use their chunk's first relation);
//   3. prepare both sides for the comparator (aux_s [NS], aux_d [ND]); under BF16, bfloat16
//      copies of SN and DN for the products;
//   4. positive scores pos [B]; negative scores per side, S1 [B, Ws] (edge e's dst row against
//      its chunk's src negatives) and S2 [B, Wd] (edge e's src row against the dst negatives):
//      per chunk, [P, D] . [D, P] against the chunk's positives and [P, D] . [D, U] against its
//      uniform rows (GEMMs), then each dot -> score, with each edge's own entity masked under
//      batch_uniform;
//   5. per edge: violators, loss_row() per enabled side (S -> G = dL/ds), then dL/d<q, n>;
//   6. row gradients: each row's own terms first (its positive pair; for distances the
//      -(sum of its G) x terms), then, per chunk, the GEMMs that add it as a query
//      (G_other . Y) and as a negative (G_self^T . Y), into src_grad and gDN;
//   7. back through "prepare", then through the operator (parameter gradient: see
//      operator_rows.cuh);
//   8. global embeddings (added to every row of their side at the gather): their gradient is
//      the column sum of that side's row gradients (a GEMV against ones, in T);
//   9. N3 (reg_coef): per edge on its src and dst rows as stored (into the edge's own gradient
//      rows) and on its relation's parameters (atomically: edges share relations).
// Chunk c holds edges [c*cs, c*cs + P_c), P_c = min(cs, B - c*cs): the full chunks are one
// batch of each GEMM, a short last chunk another. Negatives j of a side of chunk c: under
// batch_uniform j < P_c are the chunk's positives (rows c*cs + j) and the rest its uniform rows;
// under uniform only the uniform rows. Rows of S1/S2 are padded to the widest chunk
// (Ws = [batch] min(cs, B) + Us); columns past a chunk's count are never read.
// 'all' (PBG's all_negs) on a side: every row of its table is every chunk's negative (j = the
// table row, the edge's own row masked), so that side's rows after the positives' are the
// table's (NS = B + src_rows), its scores one [B, D] . [D, rows] GEMM and its negatives'
// gradient one [rows, B] . [B, D] GEMM, over the whole batch.
#include "../kernels/bfloat16.h"
#include "../kernels/comparators.h"
#include "../kernels/losses.h"
#include "comparator_rows.cuh"
#include "device_common.cuh"
#include "launchers.h"
#include "operator_rows.cuh"

namespace pbg {
namespace cuda {
namespace {

using detail::for_each_index;
using detail::min_i64;

// One side's negatives.
struct Side {
  bool on;              // mode != skip
  bool batch;           // mode == batch_uniform
  bool all;             // mode == all
  int64_t num_uniform;  // U; under all, the table's rows (every chunk's negatives)
  int64_t width;        // row length of this side's score matrix (0 when off)
};

struct Geometry {
  int64_t num_edges;   // B
  int64_t chunk_size;  // cs
  Side src, dst;

  PBG_HD int64_t chunk_of(int64_t e) const { return e / chunk_size; }
  PBG_HD int64_t num_pos(int64_t c) const {
    return min_i64(chunk_size, num_edges - c * chunk_size);
  }
  // Batch negatives come first: the uniform negative u of chunk c is column first_uniform + u.
  PBG_HD int64_t first_uniform(const Side& s, int64_t c) const {
    return s.batch ? num_pos(c) : 0;
  }
  PBG_HD int64_t num_neg(const Side& s, int64_t c) const {
    return s.on ? first_uniform(s, c) + s.num_uniform : 0;
  }
  // Rows of that side's layout after the B positives'.
  PBG_HD int64_t extra_rows(const Side& s) const {
    const int64_t C = (num_edges + chunk_size - 1) / chunk_size;
    return s.all ? s.num_uniform : C * s.num_uniform;
  }
  // Row (in that side's row layout) of negative j of chunk c.
  PBG_HD int64_t neg_row(const Side& s, int64_t c, int64_t j) const {
    if (s.all) return num_edges + j;
    const int64_t nb = first_uniform(s, c);
    return j < nb ? c * chunk_size + j : num_edges + c * s.num_uniform + (j - nb);
  }
};

template <typename T>
struct Buffers {
  T* SN;     // [NS, D] src rows, prepared
  T* DNraw;  // [ND, D] dst rows as stored (== DN without an operator)
  T* DN;     // [ND, D] dst rows after the operator, prepared
  T* gDN;    // [ND, D] dL/d(dst rows after the operator) (== dst_grad without an operator)
  T* aux_s;  // [NS]
  T* aux_d;  // [ND]
  T* pos;    // [B]
  T* gpos;   // [B]
  T* S1;     // [B, Ws]
  T* G1;     // [B, Ws]
  T* S2;     // [B, Wd]
  T* G2;     // [B, Wd]
  T* coef_s;  // [NS] distances: each src row's sum of G (see RowCoef)
  T* coef_d;  // [ND]
  T* ones;    // [max(NS, ND)] of 1: the sums as GEMVs (column_sums, row_sums)
  T* op_scratch;  // [op_scratch_rows, K]
  int64_t op_scratch_rows;
  // BF16 products: bfloat16 copies of SN, DN, G1, G2 (null otherwise).
  uint16_t *SNh, *DNh, *G1h, *G2h;
  int64_t total;  // elements of T
};

template <typename T>
Geometry geometry_of(const ChunkStepArgs<T>& a) {
  const int64_t B = a.num_edges, cs = a.chunk_size;
  const int64_t max_pos = min_i64(cs, B);
  auto side = [&](NegMode mode, int64_t U, int64_t rows) {
    const bool all = mode == NegMode::All;
    Side s{mode != NegMode::Skip, mode == NegMode::BatchUniform, all, all ? rows : U, 0};
    s.width = s.on ? (s.batch ? max_pos : 0) + s.num_uniform : 0;
    return s;
  };
  return Geometry{B, cs, side(a.src_mode, a.num_src_uniform, a.src_rows),
                  side(a.dst_mode, a.num_dst_uniform, a.dst_rows)};
}

template <typename T>
Buffers<T> carve(const ChunkStepArgs<T>& a, const Geometry& g, T* base) {
  const int64_t B = a.num_edges, D = a.dim, K = a.num_params;
  const int64_t NS = B + g.extra_rows(g.src), ND = B + g.extra_rows(g.dst);
  const bool has_op = a.op != Operator::None;
  Buffers<T> b{};
  int64_t off = 0;
  auto take = [&](int64_t n) {  // 256-byte aligned for float (GEMM operands)
    off = (off + 63) / 64 * 64;
    T* p = base ? base + off : nullptr;
    off += n;
    return p;
  };
  const bool bf16 = a.precision == Precision::BF16;
  auto take_bf16 = [&](int64_t n) {
    if (!bf16) return static_cast<uint16_t*>(nullptr);
    return reinterpret_cast<uint16_t*>(
        take((n * int64_t(sizeof(uint16_t)) + int64_t(sizeof(T)) - 1) / int64_t(sizeof(T))));
  };
  b.SN = take(NS * D);
  b.DNraw = take(ND * D);
  b.DN = has_op ? take(ND * D) : b.DNraw;
  b.gDN = has_op ? take(ND * D) : a.dst_grad;
  b.aux_s = take(NS);
  b.aux_d = take(ND);
  b.pos = take(B);
  b.gpos = take(B);
  b.S1 = take(B * g.src.width);
  b.G1 = take(B * g.src.width);
  b.S2 = take(B * g.dst.width);
  b.G2 = take(B * g.dst.width);
  b.coef_s = take(NS);
  b.coef_d = take(ND);
  b.ones = take(NS > ND ? NS : ND);
  b.op_scratch_rows = has_op ? operator_backward_scratch_rows(ND, K) : 0;
  b.op_scratch = take(b.op_scratch_rows * K);
  b.SNh = take_bf16(NS * D);
  b.DNh = take_bf16(ND * D);
  b.G1h = take_bf16(B * g.src.width);
  b.G2h = take_bf16(B * g.dst.width);
  b.total = off;
  return b;
}

// out [rows, D]: row r < B is table row idx[r], row r >= B is table row uniform[r - B]
// (uniform [C, U] flattened; null under 'all': table row r - B), plus the side's global
// embedding if any. Element i = r * D + k.
template <typename T>
struct GatherRows {
  const T* table;
  int64_t stride;
  const int64_t* idx;
  const int64_t* uniform;
  int64_t num_edges;
  int64_t d;
  const T* global;  // [D] or null
  T* out;
  PBG_HD void operator()(int64_t i) const {
    const int64_t r = i / d, k = i - r * d;
    const int64_t row = r < num_edges ? idx[r] : uniform ? uniform[r - num_edges] : r - num_edges;
    out[i] = table[row * stride + k] + (global ? global[k] : T(0));
  }
};

template <typename T>
struct Fill {
  T value;
  T* out;
  PBG_HD void operator()(int64_t i) const { out[i] = value; }
};

// Relation of dst row r: its edge's, or for chunk c's uniform rows, that of edge c*cs.
struct ChunkRelation {
  const int64_t* rel;
  int64_t num_edges, chunk_size, num_uniform;
  PBG_HD int64_t operator()(int64_t r) const {
    if (r < num_edges) return rel[r];
    return rel[((r - num_edges) / num_uniform) * chunk_size];
  }
};

template <Comparator Cm, typename T>
struct PosScores {
  const T *SN, *DN;
  int64_t d;
  T* pos;
  PBG_HD void operator()(int64_t e) const { pos[e] = pos_score<Cm>(SN + e * d, DN + e * d, d); }
};

// S [B, side.width] holds the dots <query row e, negative j of e's chunk> (the GEMMs); turn
// each into its score, with the edge's own entity masked under batch_uniform. Element
// i = e * width + j; columns past the chunk's count stay as they are (never read).
template <Comparator Cm, typename T>
struct ScoreFromDot {
  Geometry g;
  Side side;
  const T *aux_q, *aux_n;
  const int64_t* own;  // [B] this side's positives' table rows (masked under 'all')
  T* S;
  PBG_HD void operator()(int64_t i) const {
    const int64_t e = i / side.width, j = i - e * side.width;
    const int64_t c = g.chunk_of(e);
    if (j >= g.num_neg(side, c)) return;
    // The edge's own entity, as PBG masks it.
    if ((side.batch && j == e - c * g.chunk_size) || (side.all && j == own[e])) {
      S[i] = T(kMaskedScore);
      return;
    }
    S[i] = score_from_dot<Cm>(S[i], aux_q[e], aux_n[g.neg_row(side, c, j)]);
  }
};

template <typename T>
struct ToBf16 {
  const T* in;
  uint16_t* out;
  PBG_HD void operator()(int64_t i) const { out[i] = bf16_bits(static_cast<float>(in[i])); }
};

// Loss terms of edge e, both sides: violators, loss_row() on a copy of the scores (-> dL/ds),
// then dL/ds -> dL/d<q, n>.
template <Comparator Cm, Loss L, typename T>
struct EdgeLoss {
  Geometry g;
  const T* pos;
  const T* weight;  // [B] or null
  T margin;
  T src_neg_weight, dst_neg_weight;  // logistic's 1/M, M = [batch] chunk_size + U
  const T *S1, *S2;
  T *G1, *G2;
  T* gpos;
  double* edge_loss;
  int64_t* edge_violators;  // [B, 2]
  PBG_HD T side_loss(const Side& side, const T* S, T* G, T neg_weight, int64_t e, T w,
                     int64_t* violators, T* grad_pos) const {
    const int64_t n = g.num_neg(side, g.chunk_of(e));
    const T* s = S + e * side.width;
    T* gr = G + e * side.width;
    int64_t count = 0;
    for (int64_t j = 0; j < n; ++j) {
      count += s[j] > pos[e];
      gr[j] = s[j];
    }
    *violators = count;
    const T loss = loss_row<L>(pos[e], gr, n, w, margin, neg_weight, grad_pos);
    if (ComparatorTraits<Cm>::uses_norms)
      for (int64_t j = 0; j < n; ++j) gr[j] = grad_dot_from_grad_score<Cm>(s[j], gr[j]);
    return loss;
  }
  PBG_HD void operator()(int64_t e) const {
    const T w = weight ? weight[e] : T(1);
    T grad_pos = 0;
    double loss = 0;
    edge_violators[2 * e] = 0;
    edge_violators[2 * e + 1] = 0;
    if (g.src.on)
      loss += side_loss(g.src, S1, G1, src_neg_weight, e, w, edge_violators + 2 * e, &grad_pos);
    if (g.dst.on)
      loss += side_loss(g.dst, S2, G2, dst_neg_weight, e, w, edge_violators + 2 * e + 1,
                        &grad_pos);
    gpos[e] = grad_pos;
    edge_loss[e] = loss;
  }
};

// The gradient of this side's prepared rows X [rows, D] (the side `self`; Y the other side's):
//   as negative j of its chunk:   sum_p G_self[p, j] Y_p - (sum_p G_self[p, j]) X_r  [distances]
//   as query (r < B) against the other side's negatives:
//                                 sum_j G_other[r, j] Yneg_j - (sum_j G_other[r, j]) X_r
//   as one side of its positive pair (r < B).
// G_self [B, self.width] scores the other side's positives against this side's negatives;
// G_other [B, other.width] this side's positives against the other side's negatives. The
// sums over Y are GEMMs (grad_products); RowCoef and RowInit write the rest first.

// Distances: coef[r] = the G sums that multiply X_r above (the row sum as a query, the column
// sum as a negative). Under 'all' those sums run over every table row or every edge: GEMVs
// (row_sums, column_sums) write them into coef first, and this adds the rest.
template <typename T>
struct RowCoef {
  Geometry g;
  Side self, other;
  const T *G_self, *G_other;
  T* coef;
  PBG_HD T column_sum(int64_t c, int64_t j) const {
    const int64_t e0 = c * g.chunk_size, P = g.num_pos(c);
    T acc = 0;
    for (int64_t p = 0; p < P; ++p) acc += G_self[(e0 + p) * self.width + j];
    return acc;
  }
  PBG_HD void operator()(int64_t r) const {
    T acc = 0;
    if (r < g.num_edges) {
      const int64_t c = g.chunk_of(r);
      if (other.all) acc = coef[r];  // the GEMV's row sum over the other table
      if (self.on && self.batch) acc += column_sum(c, r - c * g.chunk_size);
      if (other.on && !other.all) {
        const int64_t n = g.num_neg(other, c);
        const T* gr = G_other + r * other.width;
        for (int64_t j = 0; j < n; ++j) acc += gr[j];
      }
    } else if (self.all) {
      acc = coef[r];  // the GEMV's column sum over every edge
    } else if (self.on) {
      const int64_t t = r - g.num_edges;
      const int64_t c = t / self.num_uniform, u = t - c * self.num_uniform;
      acc += column_sum(c, g.first_uniform(self, c) + u);
    }
    coef[r] = acc;
  }
};

// out = the positive pair's term (r < B) - coef[r] X_r (distances); element i = r * D + k.
template <Comparator Cm, typename T>
struct RowInit {
  int64_t num_edges, d;
  const T *X, *Y, *coef, *pos, *gpos;
  T* out;
  PBG_HD void operator()(int64_t i) const {
    const int64_t r = i / d;
    const T x = X[i];
    T acc = 0;
    if (r < num_edges) {
      const T y = Y[i];
      // dL/dsrc = coef (src - dst), dL/ddst = coef (dst - src): coef (self - other).
      if (ComparatorTraits<Cm>::uses_norms) {
        acc = pos_diff_coef<Cm>(pos[r], gpos[r]) * (x - y);
      } else {
        acc = gpos[r] * y;
      }
    }
    if (ComparatorTraits<Cm>::uses_norms) acc -= coef[r] * x;
    out[i] = acc;
  }
};

// A product input: T, or bfloat16 bits under BF16.
struct Operand {
  const void* p;
  int64_t elem_size;
  const void* at(int64_t offset) const {
    return static_cast<const char*>(p) + offset * elem_size;
  }
};

// Row-major C [M, N] = op(A) op(B) + beta C for `batch` matrices (strides in elements), where
// op(A) [M, K] is A as stored, or A^T (stored [K, M]) when ta; likewise B. cuBLAS is
// column-major, where this is C^T = op(B)^T op(A)^T: a [N, M] product with the operands
// swapped, each buffer read with the same leading dimension.
// `precision` names the operands' type: the products' (args.precision), or FP32 (T operands)
// for the sums below.
template <typename T>
cudaError_t gemm_as(const ChunkStepArgs<T>& a, Precision precision, int64_t batch, int64_t M,
                    int64_t N, int64_t K, Operand A, int64_t a_off, bool ta, int64_t lda,
                    int64_t sa, Operand B, int64_t b_off, bool tb, int64_t ldb, int64_t sb,
                    T beta, T* C, int64_t ldc, int64_t sc, cudaStream_t stream) {
  if (batch <= 0 || M <= 0 || N <= 0 || (K <= 0 && beta == T(1))) return cudaSuccess;
  const Gemm<T> gemm{tb, ta, N, M, K, B.at(b_off), ldb, sb, A.at(a_off), lda, sa,
                     beta, C, ldc, sc, batch};
  return a.gemm.run(a.gemm.ctx, gemm, precision, stream);
}

template <typename T>
cudaError_t row_major_gemm(const ChunkStepArgs<T>& a, int64_t batch, int64_t M, int64_t N,
                           int64_t K, Operand A, int64_t a_off, bool ta, int64_t lda, int64_t sa,
                           Operand B, int64_t b_off, bool tb, int64_t ldb, int64_t sb, T beta,
                           T* C, int64_t ldc, int64_t sc, cudaStream_t stream) {
  return gemm_as<T>(a, a.precision, batch, M, N, K, A, a_off, ta, lda, sa, B, b_off, tb, ldb, sb,
                    beta, C, ldc, sc, stream);
}

// Long sums as GEMVs against `ones` on the runner, in T (not the products' precision): a
// thread per column or row summing thousands of elements would be serial work on a GPU.
// out[n] = sum_k X[k, n] for X [K, N] with row stride ldx.
// (beta = 1: added to out.)
template <typename T>
cudaError_t column_sums(const ChunkStepArgs<T>& a, const T* ones, const T* X, int64_t K,
                        int64_t N, int64_t ldx, T* out, cudaStream_t stream, T beta = T(0)) {
  const Operand one{ones, int64_t(sizeof(T))}, x{X, int64_t(sizeof(T))};
  return gemm_as<T>(a, Precision::FP32, 1, 1, N, K, one, 0, false, K > 1 ? K : 1, 0, x, 0, false,
                    ldx, 0, beta, out, N, 0, stream);
}

// out[r, k] += v[k] for rows r < n: the affine operator's translation.
template <typename T>
struct AddToRows {
  const T* v;
  int64_t d;
  T* out;
  PBG_HD void operator()(int64_t i) const { out[i] += v[i % d]; }
};

// out[m] = sum_k X[m, k] for X [M, K] with row stride ldx.
template <typename T>
cudaError_t row_sums(const ChunkStepArgs<T>& a, const T* ones, const T* X, int64_t M, int64_t K,
                     int64_t ldx, T* out, cudaStream_t stream) {
  const Operand one{ones, int64_t(sizeof(T))}, x{X, int64_t(sizeof(T))};
  return gemm_as<T>(a, Precision::FP32, 1, M, 1, K, x, 0, false, ldx, 0, one, 0, false, 1, 0,
                    T(0), out, 1, 0, stream);
}

// Chunks that share a shape: the full ones (first 0, P = cs), then a short last one.
struct ChunkGroup {
  int64_t first, count, P;
};

template <typename F>
cudaError_t for_each_group(const Geometry& g, F&& f) {
  const int64_t full = g.num_edges / g.chunk_size, rest = g.num_edges - full * g.chunk_size;
  if (full > 0) PBG_CUDA_RETURN_IF_ERROR(f(ChunkGroup{0, full, g.chunk_size}));
  if (rest > 0) PBG_CUDA_RETURN_IF_ERROR(f(ChunkGroup{full, 1, rest}));
  return cudaSuccess;
}

// Step 4's products for one side: S [B, side.width] = the dots of the other side's positives Q
// (queries) with this side's negatives X (rows as in the side's layout).
template <typename T>
cudaError_t score_products(const ChunkStepArgs<T>& a, const Geometry& g, const Side& side,
                           Operand Q, Operand X, T* S, cudaStream_t stream) {
  if (!side.on) return cudaSuccess;
  const int64_t D = a.dim, cs = g.chunk_size, W = side.width, U = side.num_uniform;
  if (side.all)  // [B, D] . [D, rows]: every table row, for the whole batch at once
    return row_major_gemm<T>(a, 1, g.num_edges, U, D, Q, 0, false, D, 0, X, g.num_edges * D, true,
                             D, 0, T(0), S, W, 0, stream);
  return for_each_group(g, [&](const ChunkGroup& grp) {
    const int64_t c0 = grp.first, P = grp.P;
    T* out = S + c0 * cs * W;
    if (side.batch)  // [P, D] . [D, P]: against the chunk's own positives
      PBG_CUDA_RETURN_IF_ERROR(row_major_gemm<T>(a, grp.count, P, P, D, Q, c0 * cs * D, false, D,
                                                 cs * D, X, c0 * cs * D, true, D, cs * D, T(0),
                                                 out, W, cs * W, stream));
    // [P, D] . [D, U]: against the chunk's uniform rows, after the batch columns.
    return row_major_gemm<T>(a, grp.count, P, U, D, Q, c0 * cs * D, false, D, cs * D, X,
                             (g.num_edges + c0 * U) * D, true, D, U * D, T(0),
                             out + (side.batch ? P : 0), W, cs * W, stream);
  });
}

// Step 6's products for one side's rows out [rows, D] (already holding RowInit's terms):
// + G_other . Y (as queries, r < B) and + G_self^T . Y (as negatives: batch and uniform rows).
template <typename T>
cudaError_t grad_products(const ChunkStepArgs<T>& a, const Geometry& g, const Side& self,
                          const Side& other, Operand G_self, Operand G_other, Operand Y, T* out,
                          cudaStream_t stream) {
  const int64_t D = a.dim, cs = g.chunk_size, B = g.num_edges;
  const int64_t Ws = self.width, Wo = other.width, Us = self.num_uniform, Uo = other.num_uniform;
  if (other.all)  // [B, rows] . [rows, D]: the queries against every row of the other table
    PBG_CUDA_RETURN_IF_ERROR(row_major_gemm<T>(a, 1, B, D, Uo, G_other, 0, false, Wo, 0, Y, B * D,
                                               false, D, 0, T(1), out, D, 0, stream));
  if (self.all)  // [rows, B] . [B, D]: every table row as every edge's negative
    PBG_CUDA_RETURN_IF_ERROR(row_major_gemm<T>(a, 1, Us, D, B, G_self, 0, true, Ws, 0, Y, 0,
                                               false, D, 0, T(1), out + B * D, D, 0, stream));
  return for_each_group(g, [&](const ChunkGroup& grp) {
    const int64_t c0 = grp.first, n = grp.count, P = grp.P;
    T* rows = out + c0 * cs * D;
    if (other.on && !other.all) {
      if (other.batch)  // [P, P] . [P, D]: the other side's batch negatives are its positives
        PBG_CUDA_RETURN_IF_ERROR(row_major_gemm<T>(a, n, P, D, P, G_other, c0 * cs * Wo, false,
                                                   Wo, cs * Wo, Y, c0 * cs * D, false, D, cs * D,
                                                   T(1), rows, D, cs * D, stream));
      PBG_CUDA_RETURN_IF_ERROR(row_major_gemm<T>(  // [P, Uo] . [Uo, D]
          a, n, P, D, Uo, G_other, c0 * cs * Wo + (other.batch ? P : 0), false, Wo, cs * Wo, Y,
          (B + c0 * Uo) * D, false, D, Uo * D, T(1), rows, D, cs * D, stream));
    }
    if (self.on && !self.all) {
      if (self.batch)  // [P, P]^T . [P, D]: as the chunk's batch negatives
        PBG_CUDA_RETURN_IF_ERROR(row_major_gemm<T>(a, n, P, D, P, G_self, c0 * cs * Ws, true, Ws,
                                                   cs * Ws, Y, c0 * cs * D, false, D, cs * D,
                                                   T(1), rows, D, cs * D, stream));
      PBG_CUDA_RETURN_IF_ERROR(row_major_gemm<T>(  // [P, Us]^T . [P, D]: the uniform rows
          a, n, Us, D, P, G_self, c0 * cs * Ws + (self.batch ? P : 0), true, Ws, cs * Ws, Y,
          c0 * cs * D, false, D, cs * D, T(1), out + (B + c0 * Us) * D, D, Us * D, stream));
    }
    return cudaSuccess;
  });
}

// N3 of edge e's rows as stored, and the penalty (no gradient) of its relation's parameters.
template <typename T>
struct N3Rows {
  const T* src_emb;
  int64_t src_stride;
  const T* dst_emb;
  int64_t dst_stride;
  const int64_t *src_idx, *dst_idx, *rel;
  const T* op_params;
  int64_t num_params, d;
  T coef;
  bool pairs;
  T *src_grad, *dst_grad;
  double* edge_loss;
  PBG_HD void operator()(int64_t e) const {
    double reg = n3_row(src_emb + src_idx[e] * src_stride, src_grad + e * d, d, coef, pairs);
    reg += n3_row(dst_emb + dst_idx[e] * dst_stride, dst_grad + e * d, d, coef, pairs);
    if (num_params > 0) reg += n3_penalty(op_params + rel[e] * num_params, num_params, coef, pairs);
    edge_loss[e] += reg;
  }
};

// The N3 gradient of edge e's relation parameters, element i = e * K + k, added atomically.
template <typename T>
struct N3Params {
  const int64_t* rel;
  const T* op_params;
  int64_t num_params;
  T coef;
  bool pairs;
  T* op_param_grad;
  PBG_HD void operator()(int64_t i) const {
    const int64_t e = i / num_params, k = i - e * num_params;
    const T* x = op_params + rel[e] * num_params;
    const T m = n3_modulus(x, k, num_params, pairs);
    detail::add_to(op_param_grad + rel[e] * num_params + k, T(3) * coef * m * x[k]);
  }
};

template <Comparator Cm, Operator O, Loss L, typename T>
cudaError_t run(const ChunkStepArgs<T>& a, const Geometry& g, const Buffers<T>& b,
                cudaStream_t stream) {
  const int64_t B = a.num_edges, D = a.dim, K = a.num_params, cs = a.chunk_size;
  const int64_t Ud = a.num_dst_uniform;
  const int64_t NS = B + g.extra_rows(g.src), ND = B + g.extra_rows(g.dst);
  constexpr bool has_op = O != Operator::None;
  const ChunkRelation rel_of{a.rel, B, cs, Ud};

  PBG_CUDA_RETURN_IF_ERROR(
      for_each_index(NS > ND ? NS : ND, Fill<T>{T(1), b.ones}, stream));

  // 1-3. Rows, operator, prepare.
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      NS * D,
      GatherRows<T>{a.src_emb, a.src_stride, a.src_idx, g.src.all ? nullptr : a.src_uniform, B, D,
                    a.src_global, b.SN},
      stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      ND * D,
      GatherRows<T>{a.dst_emb, a.dst_stride, a.dst_idx, g.dst.all ? nullptr : a.dst_uniform, B, D,
                    a.dst_global, b.DNraw},
      stream));
  // Linear / affine with one relation for the whole batch (a static relation's bucket): the
  // operator's products as GEMMs, in T, instead of a thread per row looping over D x D.
  constexpr bool matrix_op = O == Operator::Linear || O == Operator::Affine;
  const bool op_gemm = matrix_op && a.single_relation >= 0;
  const T* M = op_gemm ? a.op_params + a.single_relation * K : nullptr;
  const Operand Mo{M, int64_t(sizeof(T))}, raw{b.DNraw, int64_t(sizeof(T))};
  if (op_gemm) {  // DN = DNraw M^T (+ t)
    PBG_CUDA_RETURN_IF_ERROR(gemm_as<T>(a, Precision::FP32, 1, ND, D, D, raw, 0, false, D, 0, Mo,
                                        0, true, D, 0, T(0), b.DN, D, 0, stream));
    if (O == Operator::Affine)
      PBG_CUDA_RETURN_IF_ERROR(for_each_index(ND * D, AddToRows<T>{M + D * D, D, b.DN}, stream));
  } else if (has_op) {
    PBG_CUDA_RETURN_IF_ERROR(
        detail::operator_forward_rows<O>(b.DNraw, a.op_params, K, rel_of, ND, D, b.DN, stream));
  }
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows<Cm>(b.SN, D, NS, D, b.SN, b.aux_s, stream));
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows<Cm>(b.DN, D, ND, D, b.DN, b.aux_d, stream));
  const bool bf16 = a.precision == Precision::BF16;
  Operand sn{b.SN, int64_t(sizeof(T))}, dn{b.DN, int64_t(sizeof(T))};
  if (bf16) {
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(NS * D, ToBf16<T>{b.SN, b.SNh}, stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(ND * D, ToBf16<T>{b.DN, b.DNh}, stream));
    sn = Operand{b.SNh, int64_t(sizeof(uint16_t))};
    dn = Operand{b.DNh, int64_t(sizeof(uint16_t))};
  }

  // 4. Scores. S1: dst positives (queries) against src negatives; S2: src against dst.
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(B, PosScores<Cm, T>{b.SN, b.DN, D, b.pos}, stream));
  PBG_CUDA_RETURN_IF_ERROR(score_products<T>(a, g, g.src, dn, sn, b.S1, stream));
  PBG_CUDA_RETURN_IF_ERROR(score_products<T>(a, g, g.dst, sn, dn, b.S2, stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      B * g.src.width, ScoreFromDot<Cm, T>{g, g.src, b.aux_d, b.aux_s, a.src_idx, b.S1}, stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      B * g.dst.width, ScoreFromDot<Cm, T>{g, g.dst, b.aux_s, b.aux_d, a.dst_idx, b.S2}, stream));

  // 5. Loss; PBG's logistic normalises by the nominal chunk size (padding included) + U, or
  // by the table's rows under 'all'.
  const int64_t src_count = (g.src.batch ? cs : 0) + g.src.num_uniform;
  const int64_t dst_count = (g.dst.batch ? cs : 0) + g.dst.num_uniform;
  const T src_nw = src_count > 0 ? T(1) / T(src_count) : T(0);
  const T dst_nw = dst_count > 0 ? T(1) / T(dst_count) : T(0);
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      B,
      EdgeLoss<Cm, L, T>{g, b.pos, a.weight, a.margin, src_nw, dst_nw, b.S1, b.S2, b.G1, b.G2,
                         b.gpos, a.edge_loss, a.edge_violators},
      stream));

  // 6. Row gradients: src rows straight into src_grad, dst rows into gDN.
  if (ComparatorTraits<Cm>::uses_norms) {
    const int64_t Ws = g.src.width, Wd = g.dst.width;
    if (g.src.all) {  // src table rows as every edge's negative; dst queries against them
      PBG_CUDA_RETURN_IF_ERROR(
          column_sums<T>(a, b.ones, b.G1, B, g.src.num_uniform, Ws, b.coef_s + B, stream));
      PBG_CUDA_RETURN_IF_ERROR(row_sums<T>(a, b.ones, b.G1, B, Ws, Ws, b.coef_d, stream));
    }
    if (g.dst.all) {
      PBG_CUDA_RETURN_IF_ERROR(
          column_sums<T>(a, b.ones, b.G2, B, g.dst.num_uniform, Wd, b.coef_d + B, stream));
      PBG_CUDA_RETURN_IF_ERROR(row_sums<T>(a, b.ones, b.G2, B, Wd, Wd, b.coef_s, stream));
    }
    PBG_CUDA_RETURN_IF_ERROR(
        for_each_index(NS, RowCoef<T>{g, g.src, g.dst, b.G1, b.G2, b.coef_s}, stream));
    PBG_CUDA_RETURN_IF_ERROR(
        for_each_index(ND, RowCoef<T>{g, g.dst, g.src, b.G2, b.G1, b.coef_d}, stream));
  }
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      NS * D, RowInit<Cm, T>{B, D, b.SN, b.DN, b.coef_s, b.pos, b.gpos, a.src_grad}, stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      ND * D, RowInit<Cm, T>{B, D, b.DN, b.SN, b.coef_d, b.pos, b.gpos, b.gDN}, stream));
  Operand g1{b.G1, int64_t(sizeof(T))}, g2{b.G2, int64_t(sizeof(T))};
  if (bf16) {
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(B * g.src.width, ToBf16<T>{b.G1, b.G1h}, stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(B * g.dst.width, ToBf16<T>{b.G2, b.G2h}, stream));
    g1 = Operand{b.G1h, int64_t(sizeof(uint16_t))};
    g2 = Operand{b.G2h, int64_t(sizeof(uint16_t))};
  }
  PBG_CUDA_RETURN_IF_ERROR(grad_products<T>(a, g, g.src, g.dst, g1, g2, dn, a.src_grad, stream));
  PBG_CUDA_RETURN_IF_ERROR(grad_products<T>(a, g, g.dst, g.src, g2, g1, sn, b.gDN, stream));

  // 7. Back through "prepare" and the operator.
  PBG_CUDA_RETURN_IF_ERROR(
      detail::prepare_rows_backward<Cm>(b.SN, b.aux_s, a.src_grad, NS, D, stream));
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows_backward<Cm>(b.DN, b.aux_d, b.gDN, ND, D, stream));
  if (op_gemm) {  // dL/dDNraw = gDN M; dL/dM += gDN^T DNraw; dL/dt += colsum(gDN)
    const Operand gdn{b.gDN, int64_t(sizeof(T))};
    T* gM = a.op_param_grad + a.single_relation * K;
    PBG_CUDA_RETURN_IF_ERROR(gemm_as<T>(a, Precision::FP32, 1, ND, D, D, gdn, 0, false, D, 0, Mo,
                                        0, false, D, 0, T(0), a.dst_grad, D, 0, stream));
    PBG_CUDA_RETURN_IF_ERROR(gemm_as<T>(a, Precision::FP32, 1, D, D, ND, gdn, 0, true, D, 0, raw,
                                        0, false, D, 0, T(1), gM, D, 0, stream));
    if (O == Operator::Affine)
      PBG_CUDA_RETURN_IF_ERROR(
          column_sums<T>(a, b.ones, b.gDN, ND, D, D, gM + D * D, stream, T(1)));
  } else if (has_op) {
    PBG_CUDA_RETURN_IF_ERROR(detail::operator_backward_rows<O>(
        b.DNraw, a.op_params, K, rel_of, ND, D, b.gDN, a.dst_grad, a.op_param_grad,
        b.op_scratch, b.op_scratch_rows, stream));
  }

  // 8. Global embeddings.
  if (a.src_global)
    PBG_CUDA_RETURN_IF_ERROR(
        column_sums<T>(a, b.ones, a.src_grad, NS, D, D, a.src_global_grad, stream));
  if (a.dst_global)
    PBG_CUDA_RETURN_IF_ERROR(
        column_sums<T>(a, b.ones, a.dst_grad, ND, D, D, a.dst_global_grad, stream));

  // 9. N3.
  if (a.reg_coef != T(0)) {
    constexpr bool pairs = O == Operator::ComplexDiagonal;
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        B,
        N3Rows<T>{a.src_emb, a.src_stride, a.dst_emb, a.dst_stride, a.src_idx, a.dst_idx, a.rel,
                  a.op_params, K, D, a.reg_coef, pairs, a.src_grad, a.dst_grad, a.edge_loss},
        stream));
    if (K > 0)
      PBG_CUDA_RETURN_IF_ERROR(for_each_index(
          B * K, N3Params<T>{a.rel, a.op_params, K, a.reg_coef, pairs, a.op_param_grad}, stream));
  }
  return cudaSuccess;
}

}  // namespace

template <typename T>
int64_t chunk_step_workspace_size(const ChunkStepArgs<T>& args) {
  return carve<T>(args, geometry_of(args), nullptr).total;
}

template <typename T>
cudaError_t chunk_step(const ChunkStepArgs<T>& args, cudaStream_t stream) {
  if (args.chunk_size <= 0) return cudaErrorInvalidValue;
  if (args.num_edges == 0) return cudaSuccess;
  const Geometry g = geometry_of(args);
  const Buffers<T> b = carve<T>(args, g, args.workspace);
  return detail::dispatch_comparator(args.comparator, [&](auto ctag) {
    return detail::dispatch_operator(args.op, [&](auto otag) {
      return detail::dispatch_loss(args.loss, [&](auto ltag) {
        return run<decltype(ctag)::value, decltype(otag)::value, decltype(ltag)::value, T>(
            args, g, b, stream);
      });
    });
  });
}

template int64_t chunk_step_workspace_size<float>(const ChunkStepArgs<float>&);
template int64_t chunk_step_workspace_size<double>(const ChunkStepArgs<double>&);
template cudaError_t chunk_step<float>(const ChunkStepArgs<float>&, cudaStream_t);
template cudaError_t chunk_step<double>(const ChunkStepArgs<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace pbg
