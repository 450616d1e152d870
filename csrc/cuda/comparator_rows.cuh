// Row-wise pieces of the comparators on the device, shared by chunked_neg_scores.cu and
// chunk_step.cu: "prepare" (PBG's comparator.prepare plus the aux value the scores need) and its
// backward. One thread per row, calling the shared math of csrc/kernels/comparators.h.
#pragma once

#include "../kernels/comparators.h"
#include "device_common.cuh"

namespace pbg {
namespace cuda {
namespace detail {

// out [n, d] = prepared copy of x [n, d] (row stride x_stride; out may be x itself), and
// aux [n]: cos: rows scaled to unit norm, aux = 1/|x|; l2, squared_l2: aux = |x|^2;
// dot: a plain copy, aux untouched.
template <Comparator C, typename T>
struct PrepareRows {
  const T* x;
  int64_t x_stride;
  T* out;
  T* aux;
  int64_t d;
  PBG_HD void operator()(int64_t r) const {
    const T* xr = x + r * x_stride;
    T* yr = out + r * d;
    if (yr != xr)
      for (int64_t k = 0; k < d; ++k) yr[k] = xr[k];
    if (ComparatorTraits<C>::prepare_normalizes) {
      aux[r] = normalize_row(yr, d);
    } else if (ComparatorTraits<C>::uses_norms) {
      aux[r] = squared_norm(yr, d);
    }
  }
};

// g [n, d]: dL/d(prepared row) on entry, dL/d(row) on exit. y [n, d]: the prepared rows, aux:
// their 1/|x|. Only cos changes anything, so launch it for cos only.
template <typename T>
struct NormalizeRowsBackward {
  const T* y;
  const T* aux;
  T* g;
  int64_t d;
  PBG_HD void operator()(int64_t r) const {
    normalize_row_backward(y + r * d, aux[r], g + r * d, d);
  }
};

template <Comparator C, typename T>
cudaError_t prepare_rows(const T* x, int64_t x_stride, int64_t n, int64_t d, T* out, T* aux,
                         cudaStream_t stream) {
  return for_each_index(n, PrepareRows<C, T>{x, x_stride, out, aux, d}, stream);
}

template <Comparator C, typename T>
cudaError_t prepare_rows_backward(const T* y, const T* aux, T* g, int64_t n, int64_t d,
                                  cudaStream_t stream) {
  if (!ComparatorTraits<C>::prepare_normalizes) return cudaSuccess;
  return for_each_index(n, NormalizeRowsBackward<T>{y, aux, g, d}, stream);
}

}  // namespace detail
}  // namespace cuda
}  // namespace pbg
