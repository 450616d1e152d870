// Relation operators over many rows on the device, shared by operators.cu and chunk_step.cu.
// Row r uses the parameters of relation rel_of(r) (a functor, so chunk_step can give its uniform
// dst negatives the relation of their chunk's first edge without materialising it).
//
// The parameter gradient: operator_backward_row() (csrc/kernels/operators.h) accumulates dL/dp
// with a plain `+=`, which races when rows of one relation run in parallel. So each row writes its
// dL/dp into a private zeroed scratch slot of K elements, and a second kernel adds the slots into
// grad_params[rel] atomically. The slots are reused in passes of scratch_rows rows, which bounds
// the scratch for linear/affine (K = D*D).
#pragma once

#include "../kernels/operators.h"
#include "device_common.cuh"

namespace pbg {
namespace cuda {
namespace detail {

// rel [N]: relation of row r.
struct PerRowRelation {
  const int64_t* rel;
  PBG_HD int64_t operator()(int64_t r) const { return rel[r]; }
};

// y_r = op(x_r) for rows r of x [N, D] -> y [N, D].
template <Operator O, typename T, typename RelOf>
struct OperatorForwardRows {
  const T* x;
  const T* params;  // [R, K]
  int64_t num_params;
  RelOf rel_of;
  int64_t d;
  T* y;
  PBG_HD void operator()(int64_t r) const {
    operator_forward_row<O>(x + r * d, params + rel_of(r) * num_params, y + r * d, d);
  }
};

// Row first_row + t: gx_r = dL/dx_r; its dL/dp goes to slots [t, K] (zeroed first).
template <Operator O, typename T, typename RelOf>
struct OperatorBackwardRows {
  const T* x;
  const T* params;
  int64_t num_params;
  RelOf rel_of;
  int64_t d;
  const T* gy;
  T* gx;
  T* slots;
  int64_t first_row;
  PBG_HD void operator()(int64_t t) const {
    const int64_t r = first_row + t;
    T* slot = slots + t * num_params;
    for (int64_t k = 0; k < num_params; ++k) slot[k] = T(0);
    operator_backward_row<O>(x + r * d, params + rel_of(r) * num_params, gy + r * d, gx + r * d,
                             slot, d);
  }
};

// grad_params[rel_of(first_row + t), k] += slots[t, k], element i = t * K + k.
template <typename T, typename RelOf>
struct AddSlotsToParamGrads {
  const T* slots;
  int64_t num_params;
  RelOf rel_of;
  int64_t first_row;
  T* grad_params;
  PBG_HD void operator()(int64_t i) const {
    const int64_t t = i / num_params, k = i - t * num_params;
    add_to(grad_params + rel_of(first_row + t) * num_params + k, slots[i]);
  }
};

template <Operator O, typename T, typename RelOf>
cudaError_t operator_forward_rows(const T* x, const T* params, int64_t num_params, RelOf rel_of,
                                  int64_t n, int64_t d, T* y, cudaStream_t stream) {
  return for_each_index(n, OperatorForwardRows<O, T, RelOf>{x, params, num_params, rel_of, d, y},
                        stream);
}

// gx [n, d] overwritten; grad_params [R, K] accumulated. scratch: [scratch_rows, K].
template <Operator O, typename T, typename RelOf>
cudaError_t operator_backward_rows(const T* x, const T* params, int64_t num_params, RelOf rel_of,
                                   int64_t n, int64_t d, const T* gy, T* gx, T* grad_params,
                                   T* scratch, int64_t scratch_rows, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (num_params == 0) {  // no parameters (operator none): gx only, in one pass
    return for_each_index(
        n, OperatorBackwardRows<O, T, RelOf>{x, params, 0, rel_of, d, gy, gx, scratch, 0}, stream);
  }
  if (scratch_rows <= 0 || scratch == nullptr) return cudaErrorInvalidValue;
  for (int64_t first = 0; first < n; first += scratch_rows) {
    const int64_t rows = min_i64(scratch_rows, n - first);
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        rows,
        OperatorBackwardRows<O, T, RelOf>{x, params, num_params, rel_of, d, gy, gx, scratch, first},
        stream));
    PBG_CUDA_RETURN_IF_ERROR(for_each_index(
        rows * num_params,
        AddSlotsToParamGrads<T, RelOf>{scratch, num_params, rel_of, first, grad_params}, stream));
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace cuda
}  // namespace pbg
