// CUDA fused chunk step over a whole batch: the same math as csrc/cpu/chunk_step.cpp (read that
// first), as a sequence of kernels over all chunks at once, each a grid-stride loop with one
// thread per row, per edge or per output element, and every intermediate in the workspace:
//   1. gather src rows -> SN [NS, D] and dst rows -> DNraw [ND, D];
//      NS = B + C*Us (rows: the B positives, then chunk c's uniform negatives at B + c*Us + u),
//      ND = B + C*Ud likewise: the layout of src_grad / dst_grad;
//   2. the operator on the dst rows -> DN (uniform dst rows use their chunk's first relation);
//   3. prepare both sides for the comparator (aux_s [NS], aux_d [ND]);
//   4. positive scores pos [B]; negative scores per side, S1 [B, Ws] (edge e's dst row against
//      its chunk's src negatives) and S2 [B, Wd] (edge e's src row against the dst negatives),
//      with each edge's own entity masked under batch_uniform;
//   5. per edge: violators, loss_row() per enabled side (S -> G = dL/ds), then dL/d<q, n>;
//   6. per output element, the gradient of each prepared row as a gather over G (no atomics):
//      as a negative of its chunk, as a query against the other side's negatives, and as one
//      side of its positive pair;
//   7. back through "prepare", then through the operator (parameter gradient: see
//      operator_rows.cuh);
//   8. global embeddings (added to every row of their side at the gather): their gradient is
//      the column sum of that side's row gradients;
//   9. N3 (reg_coef): per edge on its src and dst rows as stored (into the edge's own gradient
//      rows) and on its relation's parameters (atomically: edges share relations).
// Chunk c holds edges [c*cs, c*cs + P_c), P_c = min(cs, B - c*cs). Negatives j of a side of
// chunk c: under batch_uniform j < P_c are the chunk's positives (rows c*cs + j) and the rest
// its uniform rows; under uniform only the uniform rows. Rows of S1/S2 are padded to the widest
// chunk (Ws = [batch] min(cs, B) + Us); columns past a chunk's count are never read.
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
  int64_t num_uniform;  // U
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
  // Row (in that side's row layout) of negative j of chunk c.
  PBG_HD int64_t neg_row(const Side& s, int64_t c, int64_t j) const {
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
  T* op_scratch;  // [op_scratch_rows, K]
  int64_t op_scratch_rows;
  int64_t total;  // elements of T
};

template <typename T>
Geometry geometry_of(const ChunkStepArgs<T>& a) {
  const int64_t B = a.num_edges, cs = a.chunk_size;
  const int64_t max_pos = min_i64(cs, B);
  auto side = [&](NegMode mode, int64_t U) {
    Side s{mode != NegMode::Skip, mode == NegMode::BatchUniform, U, 0};
    s.width = s.on ? (s.batch ? max_pos : 0) + U : 0;
    return s;
  };
  return Geometry{B, cs, side(a.src_mode, a.num_src_uniform), side(a.dst_mode, a.num_dst_uniform)};
}

template <typename T>
Buffers<T> carve(const ChunkStepArgs<T>& a, const Geometry& g, T* base) {
  const int64_t B = a.num_edges, D = a.dim, K = a.num_params;
  const int64_t C = a.chunk_size > 0 ? (B + a.chunk_size - 1) / a.chunk_size : 0;
  const int64_t NS = B + C * a.num_src_uniform, ND = B + C * a.num_dst_uniform;
  const bool has_op = a.op != Operator::None;
  Buffers<T> b{};
  int64_t off = 0;
  auto take = [&](int64_t n) {
    T* p = base ? base + off : nullptr;
    off += n;
    return p;
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
  b.op_scratch_rows = has_op ? operator_backward_scratch_rows(ND, K) : 0;
  b.op_scratch = take(b.op_scratch_rows * K);
  b.total = off;
  return b;
}

// out [rows, D]: row r < B is table row idx[r], row r >= B is table row uniform[r - B]
// (uniform [C, U] flattened), plus the side's global embedding if any. Element i = r * D + k.
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
    const int64_t row = r < num_edges ? idx[r] : uniform[r - num_edges];
    out[i] = table[row * stride + k] + (global ? global[k] : T(0));
  }
};

// out[k] = sum_r grad[r, k] (rows in order: the CPU kernel's order of the sum).
template <typename T>
struct ColumnSums {
  const T* grad;
  int64_t rows, d;
  T* out;
  PBG_HD void operator()(int64_t k) const {
    T acc = 0;
    for (int64_t r = 0; r < rows; ++r) acc += grad[r * d + k];
    out[k] = acc;
  }
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

// S [B, side.width]: S[e, j] = s(query row e, negative j of e's chunk), query rows q (the other
// side's), negative rows nr (this side's). Element i = e * width + j.
template <Comparator Cm, typename T>
struct NegScores {
  Geometry g;
  Side side;
  const T *q, *aux_q, *nr, *aux_n;
  int64_t d;
  T* S;
  PBG_HD void operator()(int64_t i) const {
    const int64_t e = i / side.width, j = i - e * side.width;
    const int64_t c = g.chunk_of(e);
    if (j >= g.num_neg(side, c)) return;
    if (side.batch && j == e - c * g.chunk_size) {  // the edge's own entity, as PBG masks it
      S[i] = T(kMaskedScore);
      return;
    }
    const int64_t n = g.neg_row(side, c, j);
    S[i] = score_from_dot<Cm>(dot(q + e * d, nr + n * d, d), aux_q[e], aux_n[n]);
  }
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

// Gradient of this side's prepared rows X [rows, D] (the side `self`), element i = r * D + k:
//   as negative j of its chunk:   sum_p G_self[p, j] Y_p - (sum_p G_self[p, j]) X_r  [distances]
//   as query (r < B) against the other side's negatives:
//                                 sum_j G_other[r, j] Yneg_j - (sum_j G_other[r, j]) X_r
//   as one side of its positive pair (r < B).
// G_self [B, self.width] scores the other side's positives against this side's negatives;
// G_other [B, other.width] this side's positives against the other side's negatives.
template <Comparator Cm, typename T>
struct RowGrad {
  Geometry g;
  Side self, other;
  const T* X;  // this side's prepared rows
  const T* Y;  // the other side's prepared rows
  const T *G_self, *G_other;
  const T *pos, *gpos;
  int64_t d;
  T* out;
  // This side's negative column j of chunk c: sum over the chunk's queries.
  PBG_HD T as_negative(int64_t c, int64_t j, int64_t k, T x) const {
    const int64_t e0 = c * g.chunk_size, P = g.num_pos(c);
    T acc = 0, colsum = 0;
    for (int64_t p = 0; p < P; ++p) {
      const T gv = G_self[(e0 + p) * self.width + j];
      acc += gv * Y[(e0 + p) * d + k];
      colsum += gv;
    }
    if (ComparatorTraits<Cm>::uses_norms) acc -= colsum * x;
    return acc;
  }
  PBG_HD void operator()(int64_t i) const {
    const int64_t r = i / d, k = i - r * d;
    const T x = X[i];
    T acc = 0;
    if (r < g.num_edges) {
      const int64_t e = r, c = g.chunk_of(e);
      if (self.on && self.batch) acc += as_negative(c, e - c * g.chunk_size, k, x);
      if (other.on) {
        const int64_t n = g.num_neg(other, c);
        const T* gr = G_other + e * other.width;
        T q = 0, rowsum = 0;
        for (int64_t j = 0; j < n; ++j) {
          q += gr[j] * Y[g.neg_row(other, c, j) * d + k];
          rowsum += gr[j];
        }
        if (ComparatorTraits<Cm>::uses_norms) q -= rowsum * x;
        acc += q;
      }
      const T y = Y[i];
      if (ComparatorTraits<Cm>::uses_norms) {
        // dL/dsrc = coef (src - dst), dL/ddst = coef (dst - src): coef (self - other).
        acc += pos_diff_coef<Cm>(pos[e], gpos[e]) * (x - y);
      } else {
        acc += gpos[e] * y;
      }
    } else if (self.on) {
      const int64_t t = r - g.num_edges;
      const int64_t c = t / self.num_uniform, u = t - c * self.num_uniform;
      acc += as_negative(c, g.first_uniform(self, c) + u, k, x);
    }
    out[i] = acc;
  }
};

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
    if (num_params > 0) {
      const T* x = op_params + rel[e] * num_params;
      const int64_t n = pairs ? num_params / 2 : num_params;
      T total = 0;
      for (int64_t k = 0; k < n; ++k) {
        const T m = pairs ? sqrt(x[k] * x[k] + x[n + k] * x[n + k]) : (x[k] > T(0) ? x[k] : -x[k]);
        total += m * m * m;
      }
      reg += coef * total;
    }
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
    T m;
    if (pairs) {
      const int64_t h = num_params / 2, partner = k < h ? k + h : k - h;
      m = sqrt(x[k] * x[k] + x[partner] * x[partner]);
    } else {
      m = x[k] > T(0) ? x[k] : -x[k];
    }
    detail::add_to(op_param_grad + rel[e] * num_params + k, T(3) * coef * m * x[k]);
  }
};

template <Comparator Cm, Operator O, Loss L, typename T>
cudaError_t run(const ChunkStepArgs<T>& a, const Geometry& g, const Buffers<T>& b,
                cudaStream_t stream) {
  const int64_t B = a.num_edges, D = a.dim, K = a.num_params, cs = a.chunk_size;
  const int64_t C = (B + cs - 1) / cs;
  const int64_t Us = a.num_src_uniform, Ud = a.num_dst_uniform;
  const int64_t NS = B + C * Us, ND = B + C * Ud;
  constexpr bool has_op = O != Operator::None;
  const ChunkRelation rel_of{a.rel, B, cs, Ud};

  // 1-3. Rows, operator, prepare.
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      NS * D,
      GatherRows<T>{a.src_emb, a.src_stride, a.src_idx, a.src_uniform, B, D, a.src_global, b.SN},
      stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      ND * D,
      GatherRows<T>{a.dst_emb, a.dst_stride, a.dst_idx, a.dst_uniform, B, D, a.dst_global,
                    b.DNraw},
      stream));
  if (has_op)
    PBG_CUDA_RETURN_IF_ERROR(
        detail::operator_forward_rows<O>(b.DNraw, a.op_params, K, rel_of, ND, D, b.DN, stream));
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows<Cm>(b.SN, D, NS, D, b.SN, b.aux_s, stream));
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows<Cm>(b.DN, D, ND, D, b.DN, b.aux_d, stream));

  // 4. Scores. S1: dst positives (queries) against src negatives; S2: src against dst.
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(B, PosScores<Cm, T>{b.SN, b.DN, D, b.pos}, stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      B * g.src.width,
      NegScores<Cm, T>{g, g.src, b.DN, b.aux_d, b.SN, b.aux_s, D, b.S1}, stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      B * g.dst.width,
      NegScores<Cm, T>{g, g.dst, b.SN, b.aux_s, b.DN, b.aux_d, D, b.S2}, stream));

  // 5. Loss; PBG's logistic normalises by the nominal chunk size (padding included) + U.
  const int64_t src_count = (g.src.batch ? cs : 0) + Us;
  const int64_t dst_count = (g.dst.batch ? cs : 0) + Ud;
  const T src_nw = src_count > 0 ? T(1) / T(src_count) : T(0);
  const T dst_nw = dst_count > 0 ? T(1) / T(dst_count) : T(0);
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      B,
      EdgeLoss<Cm, L, T>{g, b.pos, a.weight, a.margin, src_nw, dst_nw, b.S1, b.S2, b.G1, b.G2,
                         b.gpos, a.edge_loss, a.edge_violators},
      stream));

  // 6. Row gradients: src rows straight into src_grad, dst rows into gDN.
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      NS * D,
      RowGrad<Cm, T>{g, g.src, g.dst, b.SN, b.DN, b.G1, b.G2, b.pos, b.gpos, D, a.src_grad},
      stream));
  PBG_CUDA_RETURN_IF_ERROR(for_each_index(
      ND * D, RowGrad<Cm, T>{g, g.dst, g.src, b.DN, b.SN, b.G2, b.G1, b.pos, b.gpos, D, b.gDN},
      stream));

  // 7. Back through "prepare" and the operator.
  PBG_CUDA_RETURN_IF_ERROR(
      detail::prepare_rows_backward<Cm>(b.SN, b.aux_s, a.src_grad, NS, D, stream));
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows_backward<Cm>(b.DN, b.aux_d, b.gDN, ND, D, stream));
  if (has_op)
    PBG_CUDA_RETURN_IF_ERROR(detail::operator_backward_rows<O>(
        b.DNraw, a.op_params, K, rel_of, ND, D, b.gDN, a.dst_grad, a.op_param_grad,
        b.op_scratch, b.op_scratch_rows, stream));

  // 8. Global embeddings.
  if (a.src_global)
    PBG_CUDA_RETURN_IF_ERROR(
        for_each_index(D, ColumnSums<T>{a.src_grad, NS, D, a.src_global_grad}, stream));
  if (a.dst_global)
    PBG_CUDA_RETURN_IF_ERROR(
        for_each_index(D, ColumnSums<T>{a.dst_grad, ND, D, a.dst_global_grad}, stream));

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
