// PBG's row-wise Adagrad step for one row whose gradient has already been summed over
// duplicates (torchbiggraph/row_adagrad.py). Torch-free.
//   state += mean_d(g^2);  w -= lr * g / (sqrt(state) + eps)
#pragma once

#include <math.h>

#include "common.h"

namespace pbg {

template <typename T>
PBG_HD void row_adagrad_step(T* w, T* state, const T* g, int64_t d, T lr, T eps) {
  T s = 0;
  PBG_SIMD_REDUCE(+ : s)  // vector partial sums: no d-long chain of dependent adds
  for (int64_t k = 0; k < d; ++k) s += g[k] * g[k];
  const T st = *state + (d > 0 ? s / T(d) : T(0));
  *state = st;
  const T scale = lr / (sqrt(st) + eps);
  for (int64_t k = 0; k < d; ++k) w[k] -= scale * g[k];
}

}  // namespace pbg
