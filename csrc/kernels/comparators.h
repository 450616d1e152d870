// Comparator math shared by the CPU and CUDA kernels (torch-free).
//
// Scores are computed from dot products (one GEMM per chunk and side) plus, for the distance
// comparators, squared norms:
//   dot:        s = <a, b>
//   cos:        s = <a/|a|, b/|b|>           (vectors normalised once, in "prepare")
//   squared_l2: s = -max(|a|^2 + |b|^2 - 2<a,b>, 0)
//   l2:         s = -sqrt(max(|a|^2 + |b|^2 - 2<a,b>, 1e-30))
// Backward turns dL/ds into G = dL/d<a,b>; the norm terms then add -a * sum_j G_ij to a.
#pragma once

#include <math.h>

#include "common.h"

namespace pbg {

template <typename T>
PBG_HD T dot(const T* a, const T* b, int64_t d) {
  T s = 0;
  PBG_SIMD_REDUCE(+ : s)  // vector partial sums: no d-long chain of dependent adds
  for (int64_t k = 0; k < d; ++k) s += a[k] * b[k];
  return s;
}

template <typename T>
PBG_HD T squared_norm(const T* a, int64_t d) {
  return dot(a, a, d);
}

template <typename T>
PBG_HD T squared_dist(const T* a, const T* b, int64_t d) {
  T s = 0;
  PBG_SIMD_REDUCE(+ : s)
  for (int64_t k = 0; k < d; ++k) {
    const T t = a[k] - b[k];
    s += t * t;
  }
  return s;
}

// Comparator traits. `prepare_normalizes`: vectors are scaled to unit norm before scoring.
// `uses_norms`: the score needs |a|^2 and |b|^2 besides <a, b>.
template <Comparator C>
struct ComparatorTraits {
  static constexpr bool prepare_normalizes = (C == Comparator::Cos);
  static constexpr bool uses_norms = (C == Comparator::L2 || C == Comparator::SquaredL2);
};

// Score of a pair from its dot product and squared norms (norms ignored by dot/cos).
template <Comparator C, typename T>
PBG_HD T score_from_dot(T dot_ab, T sq_a, T sq_b) {
  if (C == Comparator::Dot || C == Comparator::Cos) return dot_ab;
  const T d2 = sq_a + sq_b - T(2) * dot_ab;
  if (C == Comparator::SquaredL2) return -(d2 > T(0) ? d2 : T(0));
  const T eps = T(kL2MinSquaredDist);
  return -sqrt(d2 > eps ? d2 : eps);
}

// Score of a positive pair computed from the difference (more accurate than the expansion;
// PBG does the same for positives).
template <Comparator C, typename T>
PBG_HD T pos_score(const T* a, const T* b, int64_t d) {
  if (C == Comparator::Dot || C == Comparator::Cos) return dot(a, b, d);
  const T d2 = squared_dist(a, b, d);
  if (C == Comparator::SquaredL2) return -d2;
  const T eps = T(kL2MinSquaredDist);
  return -sqrt(d2 > eps ? d2 : eps);
}

// dL/d<a,b> from dL/ds and the score s itself.
template <Comparator C, typename T>
PBG_HD T grad_dot_from_grad_score(T score, T grad_score) {
  if (C == Comparator::Dot || C == Comparator::Cos) return grad_score;
  if (C == Comparator::SquaredL2) return T(2) * grad_score;  // s = -d2, d2 = .. - 2<a,b>
  // l2: s = -sqrt(d2), ds/dd2 = 0.5 / s, dd2/d<a,b> = -2  =>  ds/d<a,b> = -1 / s.
  // Zero where the clamp is active (as torch's clamp_min backward).
  const T s2 = score * score;
  if (s2 <= T(kL2MinSquaredDist)) return T(0);
  return -grad_score / score;
}

// For a positive pair scored from the difference: dL/da = coef * (a - b), dL/db = -coef*(a - b).
template <Comparator C, typename T>
PBG_HD T pos_diff_coef(T score, T grad_score) {
  // s = -d2: ds/da = -2(a-b).  s = -sqrt(d2): ds/da = -(a-b)/sqrt(d2) = (a-b)/s.
  if (C == Comparator::SquaredL2) return T(-2) * grad_score;
  const T s2 = score * score;
  if (s2 <= T(kL2MinSquaredDist)) return T(0);
  return grad_score / score;
}

// In-place x <- x / |x|; returns 1/|x| for the backward pass. A zero vector stays zero
// (PBG would produce NaN there; we keep the row finite and its gradient zero).
template <typename T>
PBG_HD T normalize_row(T* x, int64_t d) {
  const T n2 = squared_norm(x, d);
  const T inv = n2 > T(0) ? T(1) / sqrt(n2) : T(0);
  for (int64_t k = 0; k < d; ++k) x[k] *= inv;
  return inv;
}

// Backward of y = x/|x| given y (unit) and dL/dy in g: g <- (g - y <y, g>) / |x|.
template <typename T>
PBG_HD void normalize_row_backward(const T* y, T inv_norm, T* g, int64_t d) {
  const T yg = dot(y, g, d);
  for (int64_t k = 0; k < d; ++k) g[k] = (g[k] - y[k] * yg) * inv_norm;
}

// N3's m_k of a row of d: |x_k|, or with complex pairs the modulus of the pair that holds k
// (x_k and its partner k +- d/2).
template <typename T>
PBG_HD T n3_modulus(const T* x, int64_t k, int64_t d, bool complex_pairs) {
  if (!complex_pairs) return x[k] > T(0) ? x[k] : -x[k];
  const int64_t h = d / 2, partner = k < h ? k + h : k - h;
  return sqrt(x[k] * x[k] + x[partner] * x[partner]);
}

// N3's penalty alone (no gradient): coef * sum of m^3, each complex pair counted once.
template <typename T>
PBG_HD T n3_penalty(const T* x, int64_t d, T coef, bool complex_pairs) {
  const int64_t n = complex_pairs ? d / 2 : d;
  T total = 0;
  for (int64_t k = 0; k < n; ++k) {
    const T m = n3_modulus(x, k, d, complex_pairs);
    total += m * m * m;
  }
  return coef * total;
}

// N3 regularizer (Lacroix et al. 2018, as PBG's "N3"): coef * sum_k m_k^3 over a row, where m_k
// is the modulus of the complex pair (x_k, x_{k+D/2}) when `complex_pairs`, else |x_k|. Adds
// its gradient (3 coef m_k x) to g and returns the penalty.
template <typename T>
PBG_HD T n3_row(const T* x, T* g, int64_t d, T coef, bool complex_pairs) {
  T total = 0;
  if (complex_pairs) {
    const int64_t h = d / 2;
    PBG_SIMD_REDUCE(+ : total)
    for (int64_t k = 0; k < h; ++k) {
      const T m = sqrt(x[k] * x[k] + x[h + k] * x[h + k]);
      total += m * m * m;
      g[k] += T(3) * coef * m * x[k];
      g[h + k] += T(3) * coef * m * x[h + k];
    }
  } else {
    PBG_SIMD_REDUCE(+ : total)
    for (int64_t k = 0; k < d; ++k) {
      const T m = x[k] > T(0) ? x[k] : -x[k];
      total += m * m * m;
      g[k] += T(3) * coef * m * x[k];
    }
  }
  return coef * total;
}

}  // namespace pbg
