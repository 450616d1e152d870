// CUDA `operator_forward` / `operator_backward` launchers: relation operators row by row, row i
// with the parameters of relation rel[i] (x [N, D], op_params [R, K], rel [N]). The math is
// csrc/kernels/operators.h; the row machinery is operator_rows.cuh.
#include "launchers.h"
#include "operator_rows.cuh"

namespace pbg {
namespace cuda {

template <typename T>
cudaError_t operator_forward(Operator op, const T* x, const T* op_params, int64_t num_params,
                             const int64_t* rel, int64_t N, int64_t D, T* y, cudaStream_t stream) {
  return detail::dispatch_operator(op, [&](auto otag) {
    return detail::operator_forward_rows<decltype(otag)::value>(
        x, op_params, num_params, detail::PerRowRelation{rel}, N, D, y, stream);
  });
}

template <typename T>
cudaError_t operator_backward(Operator op, const T* x, const T* op_params, int64_t num_params,
                              const int64_t* rel, int64_t N, int64_t D, const T* grad_y,
                              T* grad_x, T* grad_params, T* scratch, int64_t scratch_rows,
                              cudaStream_t stream) {
  return detail::dispatch_operator(op, [&](auto otag) {
    return detail::operator_backward_rows<decltype(otag)::value>(
        x, op_params, num_params, detail::PerRowRelation{rel}, N, D, grad_y, grad_x, grad_params,
        scratch, scratch_rows, stream);
  });
}

#define PBG_INSTANTIATE(T)                                                                     \
  template cudaError_t operator_forward<T>(Operator, const T*, const T*, int64_t,              \
                                           const int64_t*, int64_t, int64_t, T*, cudaStream_t); \
  template cudaError_t operator_backward<T>(Operator, const T*, const T*, int64_t,             \
                                            const int64_t*, int64_t, int64_t, const T*, T*, T*, \
                                            T*, int64_t, cudaStream_t);
PBG_INSTANTIATE(float)
PBG_INSTANTIATE(double)
#undef PBG_INSTANTIATE

}  // namespace cuda
}  // namespace pbg
