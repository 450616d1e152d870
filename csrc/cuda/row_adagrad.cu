// CUDA row-wise Adagrad launcher. The binding has grouped equal indices into segments (a stable
// sort); here each segment's gradient rows are summed in their original order (as the CPU op
// does), then each touched row gets one row_adagrad_step() of csrc/kernels/adagrad.h. Distinct
// segments name distinct rows, so the second kernel needs no atomics.
#include "../kernels/adagrad.h"
#include "device_common.cuh"
#include "launchers.h"

namespace pbg {
namespace cuda {
namespace {

// summed [S, D]: element i = s * D + k is sum over q in segment s of grad[order[q], k].
template <typename T>
struct SumSegments {
  const T* grad;  // [K, D]
  const int64_t* order;
  const int64_t* segment_start;  // [S + 1]
  int64_t d;
  T* summed;
  PBG_HD void operator()(int64_t i) const {
    const int64_t s = i / d, k = i - s * d;
    const int64_t first = segment_start[s], last = segment_start[s + 1];
    T acc = grad[order[first] * d + k];
    for (int64_t q = first + 1; q < last; ++q) acc += grad[order[q] * d + k];
    summed[i] = acc;
  }
};

template <typename T>
struct StepSegments {
  T* weight;  // [N, D]
  T* state;   // [N]
  const int64_t* sorted_indices;
  const int64_t* segment_start;
  const T* summed;  // [S, D]
  int64_t d;
  T lr, eps;
  PBG_HD void operator()(int64_t s) const {
    const int64_t row = sorted_indices[segment_start[s]];
    row_adagrad_step(weight + row * d, state + row, summed + s * d, d, lr, eps);
  }
};

}  // namespace

template <typename T>
cudaError_t row_adagrad(T* weight, T* state, int64_t D, const T* grad,
                        const int64_t* sorted_indices, const int64_t* order,
                        const int64_t* segment_start, int64_t num_segments, T* summed_grad, T lr,
                        T eps, cudaStream_t stream) {
  PBG_CUDA_RETURN_IF_ERROR(detail::for_each_index(
      num_segments * D, SumSegments<T>{grad, order, segment_start, D, summed_grad}, stream));
  return detail::for_each_index(
      num_segments,
      StepSegments<T>{weight, state, sorted_indices, segment_start, summed_grad, D, lr, eps},
      stream);
}

template cudaError_t row_adagrad<float>(float*, float*, int64_t, const float*, const int64_t*,
                                        const int64_t*, const int64_t*, int64_t, float*, float,
                                        float, cudaStream_t);
template cudaError_t row_adagrad<double>(double*, double*, int64_t, const double*,
                                         const int64_t*, const int64_t*, const int64_t*, int64_t,
                                         double*, double, double, cudaStream_t);

}  // namespace cuda
}  // namespace pbg
