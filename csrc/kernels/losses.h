// Loss functions over one positive score and its row of negative scores, with PBG 1.0's
// semantics (torchbiggraph/losses.py), forward and backward in one pass. Torch-free.
//   ranking:  sum_j w * relu(margin - pos + neg_j)                   (0 if no negatives)
//   logistic: w * softplus(-pos) + w / num_neg * sum_j softplus(neg_j)
//   softmax:  w * (logaddexp(pos, logsumexp_j neg_j) - pos)           (0 if no negatives)
// Masked negatives hold kMaskedScore (-1e9): zero loss, zero gradient in every loss.
#pragma once

#include <math.h>

#include "common.h"

namespace pbg {

template <typename T>
PBG_HD T softplus(T x) {
  // log(1 + exp(x)), stable for large |x|.
  return x > T(0) ? x + log1p(exp(-x)) : log1p(exp(x));
}

template <typename T>
PBG_HD T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + exp(-x));
  const T e = exp(x);
  return e / (T(1) + e);
}

// Loss of one row. `neg` holds n scores on entry and dL/dneg on exit; dL/dpos is added to
// *grad_pos. `neg_weight` is logistic's 1/num_neg (PBG counts masked and padding columns).
// Returns the row's loss (already multiplied by `weight`).
template <Loss L, typename T>
PBG_HD T loss_row(T pos, T* neg, int64_t n, T weight, T margin, T neg_weight, T* grad_pos) {
  if (L == Loss::Ranking) {
    T loss = 0, gpos = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T v = margin - pos + neg[j];
      if (v > T(0)) {
        loss += v;
        neg[j] = weight;
        gpos -= weight;
      } else {
        neg[j] = T(0);
      }
    }
    *grad_pos += gpos;
    return weight * loss;
  } else if (L == Loss::Logistic) {
    T loss = softplus(-pos);
    *grad_pos += -weight * sigmoid(-pos);
    T nloss = 0;
    const T wn = weight * neg_weight;
    for (int64_t j = 0; j < n; ++j) {
      nloss += softplus(neg[j]);
      neg[j] = wn * sigmoid(neg[j]);
    }
    return weight * loss + wn * nloss;
  } else {  // Softmax
    if (n == 0) return T(0);
    T m = neg[0];
    for (int64_t j = 1; j < n; ++j) m = neg[j] > m ? neg[j] : m;
    T s = 0;
    for (int64_t j = 0; j < n; ++j) s += exp(neg[j] - m);
    const T lse = m + log(s);
    // t = logaddexp(pos, lse)
    const T hi = pos > lse ? pos : lse;
    const T lo = pos > lse ? lse : pos;
    const T t = hi + log1p(exp(lo - hi));
    for (int64_t j = 0; j < n; ++j) neg[j] = weight * exp(neg[j] - t);
    *grad_pos += weight * (exp(pos - t) - T(1));
    return weight * (t - pos);
  }
}

}  // namespace pbg
