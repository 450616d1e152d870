// PBG's row-wise Adagrad step for one row whose gradient has already been summed over
// duplicates (torchbiggraph/row_adagrad.py). Torch-free.
//   state += mean_d(g^2);  w -= lr * g / (sqrt(state) + eps)
#pragma once

#include <math.h>

#include "common.h"

namespace pbg {

// The step in two halves, so a caller with many rows can run all the state updates first (small
// random accesses that overlap well) and then all the row updates:
//   scale = row_adagrad_state(state, g, ...);  row_adagrad_apply(w, g, d, scale);
template <typename T>
PBG_HD T row_adagrad_state(T* state, const T* g, int64_t d, T lr, T eps) {
  T s = 0;
  PBG_SIMD_REDUCE(+ : s)  // vector partial sums: no d-long chain of dependent adds
  for (int64_t k = 0; k < d; ++k) s += g[k] * g[k];
  const T st = *state + (d > 0 ? s / T(d) : T(0));
  *state = st;
  return lr / (sqrt(st) + eps);
}

template <typename T>
PBG_HD void row_adagrad_apply(T* w, const T* g, int64_t d, T scale) {
  for (int64_t k = 0; k < d; ++k) w[k] -= scale * g[k];
}

template <typename T>
PBG_HD void row_adagrad_step(T* w, T* state, const T* g, int64_t d, T lr, T eps) {
  row_adagrad_apply(w, g, d, row_adagrad_state(state, g, d, lr, eps));
}

}  // namespace pbg
