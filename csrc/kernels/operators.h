// Relation operators on one D-dim row, forward and backward, with PBG 1.0's semantics
// (torchbiggraph/model.py). Parameters are packed flat per relation, see
// operator_num_params(). Torch-free.
#pragma once

#include "common.h"

namespace pbg {

// y = op(x). y may not alias x for linear/affine.
template <Operator O, typename T>
PBG_HD void operator_forward_row(const T* x, const T* p, T* y, int64_t d) {
  if (O == Operator::None) {
    for (int64_t k = 0; k < d; ++k) y[k] = x[k];
  } else if (O == Operator::Translation) {
    for (int64_t k = 0; k < d; ++k) y[k] = x[k] + p[k];
  } else if (O == Operator::Diagonal) {
    for (int64_t k = 0; k < d; ++k) y[k] = x[k] * p[k];
  } else if (O == Operator::ComplexDiagonal) {
    const int64_t h = d / 2;
    for (int64_t k = 0; k < h; ++k) {
      const T xr = x[k], xi = x[h + k], pr = p[k], pi = p[h + k];
      y[k] = xr * pr - xi * pi;
      y[h + k] = xr * pi + xi * pr;
    }
  } else {  // Linear, Affine
    for (int64_t i = 0; i < d; ++i) {
      T s = O == Operator::Affine ? p[d * d + i] : T(0);
      const T* row = p + i * d;
      PBG_SIMD_REDUCE(+ : s)
      for (int64_t j = 0; j < d; ++j) s += row[j] * x[j];
      y[i] = s;
    }
  }
}

// Given dL/dy in gy: writes dL/dx to gx (overwrites) and adds dL/dp to gp.
template <Operator O, typename T>
PBG_HD void operator_backward_row(const T* x, const T* p, const T* gy, T* gx, T* gp, int64_t d) {
  if (O == Operator::None) {
    for (int64_t k = 0; k < d; ++k) gx[k] = gy[k];
  } else if (O == Operator::Translation) {
    for (int64_t k = 0; k < d; ++k) {
      gx[k] = gy[k];
      gp[k] += gy[k];
    }
  } else if (O == Operator::Diagonal) {
    for (int64_t k = 0; k < d; ++k) {
      gp[k] += gy[k] * x[k];
      gx[k] = gy[k] * p[k];
    }
  } else if (O == Operator::ComplexDiagonal) {
    const int64_t h = d / 2;
    for (int64_t k = 0; k < h; ++k) {
      const T xr = x[k], xi = x[h + k], pr = p[k], pi = p[h + k];
      const T gr = gy[k], gi = gy[h + k];
      gp[k] += gr * xr + gi * xi;
      gp[h + k] += -gr * xi + gi * xr;
      gx[k] = gr * pr + gi * pi;
      gx[h + k] = -gr * pi + gi * pr;
    }
  } else {  // Linear, Affine
    for (int64_t j = 0; j < d; ++j) gx[j] = T(0);
    for (int64_t i = 0; i < d; ++i) {
      const T g = gy[i];
      const T* row = p + i * d;
      T* grow = gp + i * d;
      for (int64_t j = 0; j < d; ++j) {
        gx[j] += row[j] * g;
        grow[j] += g * x[j];
      }
    }
    if (O == Operator::Affine) {
      for (int64_t i = 0; i < d; ++i) gp[d * d + i] += gy[i];
    }
  }
}

}  // namespace pbg
