// Building blocks of the chunked score matrix on the CPU, shared by the `chunked_neg_scores`
// op and the fused chunk step: prepare, positive scores, negative score GEMMs and their
// backward. All matrices are row-major with row length d; every comparator is symmetric
// (s(a, b) = s(b, a)), so S[i, j] = s(q_i, n_j) serves both sides.
#pragma once

#include <cstdint>

#include "../kernels/comparators.h"
#include "blas.h"

namespace pbg {
namespace cpu {

template <typename T>
inline void axpy_row(T a, const T* x, T* y, int64_t d) {
  for (int64_t k = 0; k < d; ++k) y[k] += a * x[k];
}

// cos: normalise in place, aux = 1/|x|.  l2, squared_l2: aux = |x|^2.  dot: nothing.
template <Comparator C, typename T>
void prepare_rows(T* x, int64_t n, int64_t d, T* aux) {
  if (ComparatorTraits<C>::prepare_normalizes) {
    for (int64_t r = 0; r < n; ++r) aux[r] = normalize_row(x + r * d, d);
  } else if (ComparatorTraits<C>::uses_norms) {
    for (int64_t r = 0; r < n; ++r) aux[r] = squared_norm(x + r * d, d);
  }
}

// g = dL/d(prepared x) on entry, dL/dx on exit.
template <Comparator C, typename T>
void prepare_rows_backward(const T* x, const T* aux, T* g, int64_t n, int64_t d) {
  if (ComparatorTraits<C>::prepare_normalizes)
    for (int64_t r = 0; r < n; ++r) normalize_row_backward(x + r * d, aux[r], g + r * d, d);
}

template <Comparator C, typename T>
void pos_scores(const T* a, const T* b, int64_t p, int64_t d, T* pos) {
  for (int64_t i = 0; i < p; ++i) pos[i] = pos_score<C>(a + i * d, b + i * d, d);
}

// ga += dL/da, gb += dL/db for pos[i] = s(a_i, b_i).
template <Comparator C, typename T>
void pos_scores_backward(const T* a, const T* b, const T* pos, const T* gpos, int64_t p,
                         int64_t d, T* ga, T* gb) {
  for (int64_t i = 0; i < p; ++i) {
    const T* ai = a + i * d;
    const T* bi = b + i * d;
    if (ComparatorTraits<C>::uses_norms) {
      const T coef = pos_diff_coef<C>(pos[i], gpos[i]);
      T* gai = ga + i * d;
      T* gbi = gb + i * d;
      for (int64_t k = 0; k < d; ++k) {
        const T t = coef * (ai[k] - bi[k]);
        gai[k] += t;
        gbi[k] -= t;
      }
    } else {
      axpy_row(gpos[i], bi, ga + i * d, d);
      axpy_row(gpos[i], ai, gb + i * d, d);
    }
  }
}

// S [p, n] = s(q_i, n_j): one GEMM, then the norm terms for the distance comparators.
template <Comparator C, typename T>
void neg_scores(const T* q, const T* aux_q, int64_t p, const T* nr, const T* aux_n, int64_t n,
                int64_t d, T* S) {
  if (p == 0 || n == 0) return;
  gemm(Trans::N, Trans::T, p, n, d, T(1), q, d, nr, d, T(0), S, n);
  if (ComparatorTraits<C>::uses_norms)
    for (int64_t i = 0; i < p; ++i)
      for (int64_t j = 0; j < n; ++j) S[i * n + j] = score_from_dot<C>(S[i * n + j], aux_q[i], aux_n[j]);
}

// G = dL/dS on entry, dL/d<q_i, n_j> on exit (S: the scores).
template <Comparator C, typename T>
void neg_grad_to_dot(const T* S, T* G, int64_t count) {
  if (ComparatorTraits<C>::uses_norms)
    for (int64_t k = 0; k < count; ++k) G[k] = grad_dot_from_grad_score<C>(S[k], G[k]);
}

// gn = beta * gn + dL/dn, from G = dL/d<q, n> [p, n].
template <Comparator C, typename T>
void neg_backward_to_neg(const T* q, int64_t p, const T* nr, int64_t n, int64_t d, const T* G,
                         T* gn, T beta) {
  if (n == 0) return;
  gemm(Trans::T, Trans::N, n, d, p, T(1), G, n, q, d, beta, gn, d);
  if (ComparatorTraits<C>::uses_norms) {
    for (int64_t j = 0; j < n; ++j) {
      T c = 0;
      for (int64_t i = 0; i < p; ++i) c += G[i * n + j];
      axpy_row(-c, nr + j * d, gn + j * d, d);
    }
  }
}

// gq += dL/dq, from G = dL/d<q, n> [p, n].
template <Comparator C, typename T>
void neg_backward_to_query(const T* q, int64_t p, const T* nr, int64_t n, int64_t d, const T* G,
                           T* gq) {
  if (n == 0 || p == 0) return;
  gemm(Trans::N, Trans::N, p, d, n, T(1), G, n, nr, d, T(1), gq, d);
  if (ComparatorTraits<C>::uses_norms) {
    for (int64_t i = 0; i < p; ++i) {
      T r = 0;
      PBG_SIMD_REDUCE(+ : r)
      for (int64_t j = 0; j < n; ++j) r += G[i * n + j];
      axpy_row(-r, q + i * d, gq + i * d, d);
    }
  }
}

}  // namespace cpu
}  // namespace pbg
