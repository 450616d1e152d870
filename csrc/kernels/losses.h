// Loss functions over one positive score and its row of negative scores, with PBG 1.0's
// semantics (torchbiggraph/losses.py), forward and backward in one pass. Torch-free.
//   ranking:  sum_j w * relu(margin - pos + neg_j)                   (0 if no negatives)
//   logistic: w * softplus(-pos) + w / num_neg * sum_j softplus(neg_j)
//   softmax:  w * (logaddexp(pos, logsumexp_j neg_j) - pos)           (0 if no negatives)
// Masked negatives hold kMaskedScore (-1e9): zero loss, zero gradient in every loss.
// `M` supplies exp / log1p (see fastmath.h); the loops over j are written to vectorise.
#pragma once

#include <math.h>

#include "common.h"
#include "fastmath.h"

namespace pbg {

// softplus(x) = log(1 + exp(x)) and sigmoid(x), from one exp of -|x| (stable everywhere).
template <typename M, typename T>
PBG_HD void softplus_sigmoid(T x, T* softplus, T* sigmoid) {
  const T ax = x > T(0) ? x : -x;
  const T e = M::exp(-ax);
  *softplus = (x > T(0) ? x : T(0)) + M::log1p_unit(e);
  const T inv = T(1) / (T(1) + e);
  *sigmoid = x >= T(0) ? inv : e * inv;
}

// Loss of one row. `neg` holds n scores on entry and dL/dneg on exit; dL/dpos is added to
// *grad_pos. `neg_weight` is logistic's 1/num_neg (PBG counts masked and padding columns).
// Returns the row's loss (already multiplied by `weight`).
template <Loss L, typename T, typename M = StdMath>
PBG_HD T loss_row(T pos, T* neg, int64_t n, T weight, T margin, T neg_weight, T* grad_pos) {
  if (L == Loss::Ranking) {
    T loss = 0, count = 0;
    const T shift = margin - pos;
    PBG_SIMD_REDUCE(+ : loss, count)
    for (int64_t j = 0; j < n; ++j) {
      const T v = shift + neg[j];
      const bool active = v > T(0);
      loss += active ? v : T(0);
      count += active ? T(1) : T(0);
      neg[j] = active ? weight : T(0);
    }
    *grad_pos -= weight * count;
    return weight * loss;
  } else if (L == Loss::Logistic) {
    T sp_pos, sig_neg_pos;
    softplus_sigmoid<M>(-pos, &sp_pos, &sig_neg_pos);
    *grad_pos += -weight * sig_neg_pos;
    T nloss = 0;
    const T wn = weight * neg_weight;
    PBG_SIMD_REDUCE(+ : nloss)
    for (int64_t j = 0; j < n; ++j) {
      T sp, sig;
      softplus_sigmoid<M>(neg[j], &sp, &sig);
      nloss += sp;
      neg[j] = wn * sig;
    }
    return weight * sp_pos + wn * nloss;
  } else {  // Softmax
    if (n == 0) return T(0);
    T m = neg[0];
    PBG_SIMD_REDUCE(max : m)
    for (int64_t j = 1; j < n; ++j) m = neg[j] > m ? neg[j] : m;
    // t = logaddexp(pos, logsumexp(neg)) = hi + log(exp(pos - hi) + sum_j exp(neg_j - hi)).
    const T hi = pos > m ? pos : m;
    T s = 0;
    PBG_SIMD_REDUCE(+ : s)
    for (int64_t j = 0; j < n; ++j) {
      const T e = M::exp(neg[j] - hi);
      neg[j] = e;
      s += e;
    }
    const T ep = M::exp(pos - hi);
    const T total = s + ep;
    const T t = hi + log(total);
    const T scale = weight / total;
    PBG_SIMD
    for (int64_t j = 0; j < n; ++j) neg[j] *= scale;
    *grad_pos += weight * (ep / total - T(1));
    return weight * (t - pos);
  }
}

}  // namespace pbg
