// CUDA `chunked_neg_scores` and its backward: PBG's comparator over chunked positives and
// negatives, with "prepare" folded in. Inputs lhs_pos a, rhs_pos b [C, P, D], lhs_neg ln
// [C, L, D], rhs_neg rn [C, R, D]; scores pos [C, P] = s(a_p, b_p), lneg [C, P, L] =
// s(b_p, ln_l), rneg [C, P, R] = s(a_p, rn_r) (every comparator is symmetric).
//
// Same decomposition as the CPU op (csrc/cpu/chunked_neg_scores.cpp): prepared copies of the
// inputs and their aux values (1/|x| for cos, |x|^2 for the distances) in the workspace, positive
// scores from the difference, negative scores from <q, n> and the norms. One thread per output
// element; the backward computes each gradient element as a gather (no atomics):
//   G = dL/d<q, n> (from dL/ds and s),  dL/dn_j = sum_p G_pj q_p - (sum_p G_pj) n_j [distances],
//   dL/dq_p = sum_j G_pj n_j - (sum_j G_pj) q_p [distances] + the positive pair's term.
#include "../kernels/comparators.h"
#include "comparator_rows.cuh"
#include "device_common.cuh"
#include "launchers.h"

namespace pbg {
namespace cuda {
namespace {

using detail::for_each_index;

// Workspace (elements of T): prepared a, b, ln, rn; their aux values; backward adds
// G_l [C, P, L], G_r [C, P, R] (dL/d<q, n>) and the positive pairs' coefficients [C, P].
template <typename T>
struct Workspace {
  T *a, *b, *ln, *rn, *aux_a, *aux_b, *aux_ln, *aux_rn, *g_l, *g_r, *pos_coef;
  int64_t total;
};

template <typename T>
Workspace<T> carve(T* base, int64_t C, int64_t P, int64_t L, int64_t R, int64_t D,
                   bool backward) {
  Workspace<T> w{};
  int64_t off = 0;
  auto take = [&](int64_t n) {
    T* p = base ? base + off : nullptr;
    off += n;
    return p;
  };
  w.a = take(C * P * D);
  w.b = take(C * P * D);
  w.ln = take(C * L * D);
  w.rn = take(C * R * D);
  w.aux_a = take(C * P);
  w.aux_b = take(C * P);
  w.aux_ln = take(C * L);
  w.aux_rn = take(C * R);
  if (backward) {
    w.g_l = take(C * P * L);
    w.g_r = take(C * P * R);
    w.pos_coef = take(C * P);
  }
  w.total = off;
  return w;
}

// pos[cp] = s(a_cp, b_cp), over C*P.
template <Comparator Cm, typename T>
struct PosScores {
  const T *a, *b;
  int64_t d;
  T* pos;
  PBG_HD void operator()(int64_t i) const { pos[i] = pos_score<Cm>(a + i * d, b + i * d, d); }
};

// Score of query row (c, p) of q [C, P, D] with negative row (c, j) of nr [C, N, D], element
// i = (c * P + p) * N + j.
template <Comparator Cm, typename T>
PBG_HD T chunk_neg_score(const T* q, const T* aux_q, const T* nr, const T* aux_n, int64_t P,
                         int64_t N, int64_t d, int64_t i) {
  const int64_t cp = i / N, j = i - cp * N, c = cp / P;
  const int64_t nj = c * N + j;
  return score_from_dot<Cm>(dot(q + cp * d, nr + nj * d, d), aux_q[cp], aux_n[nj]);
}

// S [C, P, N] = scores of each chunk's queries against its negatives.
template <Comparator Cm, typename T>
struct NegScores {
  const T *q, *aux_q, *nr, *aux_n;
  int64_t P, N, d;
  T* S;
  PBG_HD void operator()(int64_t i) const {
    S[i] = chunk_neg_score<Cm>(q, aux_q, nr, aux_n, P, N, d, i);
  }
};

// G [C, P, N] = dL/d<q, n> from dL/ds (the score is recomputed only where it matters).
template <Comparator Cm, typename T>
struct NegGradToDot {
  const T *q, *aux_q, *nr, *aux_n;
  int64_t P, N, d;
  const T* grad_score;
  T* G;
  PBG_HD void operator()(int64_t i) const {
    const T s = ComparatorTraits<Cm>::uses_norms
                    ? chunk_neg_score<Cm>(q, aux_q, nr, aux_n, P, N, d, i)
                    : T(0);
    G[i] = grad_dot_from_grad_score<Cm>(s, grad_score[i]);
  }
};

// coef[cp]: distances: dL/da = coef (a - b); dot, cos: dL/da = coef b (coef = dL/dpos).
template <Comparator Cm, typename T>
struct PosCoef {
  const T *a, *b;
  int64_t d;
  const T* grad_pos;
  T* coef;
  PBG_HD void operator()(int64_t i) const {
    if (ComparatorTraits<Cm>::uses_norms) {
      coef[i] = pos_diff_coef<Cm>(pos_score<Cm>(a + i * d, b + i * d, d), grad_pos[i]);
    } else {
      coef[i] = grad_pos[i];
    }
  }
};

// gn [C, N, D] = dL/d(prepared negative rows), element i = (c * N + j) * D + k.
template <Comparator Cm, typename T>
struct NegRowGrad {
  const T* q;   // [C, P, D] the queries
  const T* nr;  // [C, N, D] the negatives
  const T* G;   // [C, P, N]
  int64_t P, N, d;
  T* gn;
  PBG_HD void operator()(int64_t i) const {
    const int64_t row = i / d, k = i - row * d, c = row / N, j = row - c * N;
    T acc = 0, colsum = 0;
    for (int64_t p = 0; p < P; ++p) {
      const T g = G[(c * P + p) * N + j];
      acc += g * q[(c * P + p) * d + k];
      colsum += g;
    }
    if (ComparatorTraits<Cm>::uses_norms) acc -= colsum * nr[row * d + k];
    gn[i] = acc;
  }
};

// gq [C, P, D] = dL/d(prepared query rows) from their negatives and their positive pair,
// element i = (c * P + p) * D + k. `other`: the pair's other side.
template <Comparator Cm, typename T>
struct QueryRowGrad {
  const T* q;      // [C, P, D]
  const T* other;  // [C, P, D]
  const T* nr;     // [C, N, D]
  const T* G;      // [C, P, N]
  const T* pos_coef;  // [C, P]
  int64_t P, N, d;
  T* gq;
  PBG_HD void operator()(int64_t i) const {
    const int64_t cp = i / d, k = i - cp * d, c = cp / P;
    T acc = 0, rowsum = 0;
    for (int64_t j = 0; j < N; ++j) {
      const T g = G[cp * N + j];
      acc += g * nr[(c * N + j) * d + k];
      rowsum += g;
    }
    const T self = q[i], oth = other[i];
    if (ComparatorTraits<Cm>::uses_norms) {
      acc -= rowsum * self;
      // dL/da = coef (a - b) and dL/db = -coef (a - b) = coef (b - a): coef (self - other).
      acc += pos_coef[cp] * (self - oth);
    } else {
      acc += pos_coef[cp] * oth;
    }
    gq[i] = acc;
  }
};

template <Comparator Cm, typename T>
cudaError_t prepare_all(const ChunkedScoresInputs<T>& in, const Workspace<T>& w,
                        cudaStream_t stream) {
  const int64_t C = in.num_chunks, P = in.num_pos, D = in.dim;
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows<Cm>(in.lhs_pos, D, C * P, D, w.a, w.aux_a, stream));
  PBG_CUDA_RETURN_IF_ERROR(detail::prepare_rows<Cm>(in.rhs_pos, D, C * P, D, w.b, w.aux_b, stream));
  PBG_CUDA_RETURN_IF_ERROR(
      detail::prepare_rows<Cm>(in.lhs_neg, D, C * in.num_lhs_neg, D, w.ln, w.aux_ln, stream));
  return detail::prepare_rows<Cm>(in.rhs_neg, D, C * in.num_rhs_neg, D, w.rn, w.aux_rn, stream);
}

}  // namespace

int64_t chunked_neg_scores_workspace_size(int64_t C, int64_t P, int64_t L, int64_t R, int64_t D,
                                          bool backward) {
  return carve<float>(nullptr, C, P, L, R, D, backward).total;
}

template <typename T>
cudaError_t chunked_neg_scores_forward(const ChunkedScoresInputs<T>& in, T* workspace, T* pos,
                                       T* lhs_neg_scores, T* rhs_neg_scores, cudaStream_t stream) {
  const int64_t C = in.num_chunks, P = in.num_pos, L = in.num_lhs_neg, R = in.num_rhs_neg;
  const int64_t D = in.dim;
  const Workspace<T> w = carve(workspace, C, P, L, R, D, false);
  return detail::dispatch_comparator(in.comparator, [&](auto ctag) {
    constexpr Comparator Cm = decltype(ctag)::value;
    PBG_CUDA_RETURN_IF_ERROR(prepare_all<Cm>(in, w, stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(C * P, PosScores<Cm, T>{w.a, w.b, D, pos}, stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        C * P * L, NegScores<Cm, T>{w.b, w.aux_b, w.ln, w.aux_ln, P, L, D, lhs_neg_scores},
        stream));
    return for_each_index(
        C * P * R, NegScores<Cm, T>{w.a, w.aux_a, w.rn, w.aux_rn, P, R, D, rhs_neg_scores},
        stream);
  });
}

template <typename T>
cudaError_t chunked_neg_scores_backward(const ChunkedScoresInputs<T>& in, const T* grad_pos,
                                        const T* grad_lhs_neg, const T* grad_rhs_neg,
                                        T* workspace, T* grad_lhs_pos, T* grad_rhs_pos,
                                        T* grad_lhs_neg_rows, T* grad_rhs_neg_rows,
                                        cudaStream_t stream) {
  const int64_t C = in.num_chunks, P = in.num_pos, L = in.num_lhs_neg, R = in.num_rhs_neg;
  const int64_t D = in.dim;
  const Workspace<T> w = carve(workspace, C, P, L, R, D, true);
  return detail::dispatch_comparator(in.comparator, [&](auto ctag) {
    constexpr Comparator Cm = decltype(ctag)::value;
    PBG_CUDA_RETURN_IF_ERROR(prepare_all<Cm>(in, w, stream));
    // dL/d<q, n> of both score matrices, and the positive pairs' coefficients.
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        C * P * L,
        NegGradToDot<Cm, T>{w.b, w.aux_b, w.ln, w.aux_ln, P, L, D, grad_lhs_neg, w.g_l}, stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        C * P * R,
        NegGradToDot<Cm, T>{w.a, w.aux_a, w.rn, w.aux_rn, P, R, D, grad_rhs_neg, w.g_r}, stream));
    PBG_CUDA_RETURN_IF_ERROR(
        for_each_index(C * P, PosCoef<Cm, T>{w.a, w.b, D, grad_pos, w.pos_coef}, stream));
    // Gradients of the prepared rows: lhs_neg rows were scored against rhs_pos (b), rhs_neg
    // rows against lhs_pos (a); a is the query of the rhs negatives, b of the lhs negatives.
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        C * L * D, NegRowGrad<Cm, T>{w.b, w.ln, w.g_l, P, L, D, grad_lhs_neg_rows}, stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        C * R * D, NegRowGrad<Cm, T>{w.a, w.rn, w.g_r, P, R, D, grad_rhs_neg_rows}, stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        C * P * D, QueryRowGrad<Cm, T>{w.a, w.b, w.rn, w.g_r, w.pos_coef, P, R, D, grad_lhs_pos},
        stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        C * P * D, QueryRowGrad<Cm, T>{w.b, w.a, w.ln, w.g_l, w.pos_coef, P, L, D, grad_rhs_pos},
        stream));
    // Back through "prepare" (cos only).
    PBG_CUDA_RETURN_IF_ERROR(
        detail::prepare_rows_backward<Cm>(w.a, w.aux_a, grad_lhs_pos, C * P, D, stream));
    PBG_CUDA_RETURN_IF_ERROR(
        detail::prepare_rows_backward<Cm>(w.b, w.aux_b, grad_rhs_pos, C * P, D, stream));
    PBG_CUDA_RETURN_IF_ERROR(
        detail::prepare_rows_backward<Cm>(w.ln, w.aux_ln, grad_lhs_neg_rows, C * L, D, stream));
    return detail::prepare_rows_backward<Cm>(w.rn, w.aux_rn, grad_rhs_neg_rows, C * R, D, stream);
  });
}

#define PBG_INSTANTIATE(T)                                                                     \
  template cudaError_t chunked_neg_scores_forward<T>(const ChunkedScoresInputs<T>&, T*, T*, T*, \
                                                     T*, cudaStream_t);                        \
  template cudaError_t chunked_neg_scores_backward<T>(const ChunkedScoresInputs<T>&, const T*,  \
                                                      const T*, const T*, T*, T*, T*, T*, T*,  \
                                                      cudaStream_t);
PBG_INSTANTIATE(float)
PBG_INSTANTIATE(double)
#undef PBG_INSTANTIATE

}  // namespace cuda
}  // namespace pbg
