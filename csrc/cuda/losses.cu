// CUDA loss launcher: one thread per row of pos [N] / neg [N, M], running loss_row() of
// csrc/kernels/losses.h (forward and backward in one pass, as on the CPU).
#include "../kernels/losses.h"
#include "device_common.cuh"
#include "launchers.h"

namespace pbg {
namespace cuda {
namespace {

template <Loss L, typename T>
struct LossRows {
  const T* pos;     // [N]
  const T* neg;     // [N, M]
  const T* weight;  // [N] or null
  int64_t m;
  T margin;
  T neg_weight;  // logistic's 1/M
  T* grad_pos;   // [N]
  T* grad_neg;   // [N, M]: the scores are copied here, loss_row() turns them into dL/dneg
  double* row_loss;  // [N]
  PBG_HD void operator()(int64_t i) const {
    T* g = grad_neg + i * m;
    const T* s = neg + i * m;
    for (int64_t j = 0; j < m; ++j) g[j] = s[j];
    T gpos = 0;
    const T w = weight ? weight[i] : T(1);
    row_loss[i] = static_cast<double>(loss_row<L>(pos[i], g, m, w, margin, neg_weight, &gpos));
    grad_pos[i] = gpos;
  }
};

}  // namespace

template <typename T>
cudaError_t loss_rows(Loss loss, const T* pos, const T* neg, const T* weight, int64_t N,
                      int64_t M, T margin, T* grad_pos, T* grad_neg, double* row_loss,
                      cudaStream_t stream) {
  const T neg_weight = M > 0 ? T(1) / T(M) : T(0);
  return detail::dispatch_loss(loss, [&](auto ltag) {
    return detail::for_each_index(
        N,
        LossRows<decltype(ltag)::value, T>{pos, neg, weight, M, margin, neg_weight, grad_pos,
                                           grad_neg, row_loss},
        stream);
  });
}

template cudaError_t loss_rows<float>(Loss, const float*, const float*, const float*, int64_t,
                                      int64_t, float, float*, float*, double*, cudaStream_t);
template cudaError_t loss_rows<double>(Loss, const double*, const double*, const double*, int64_t,
                                       int64_t, double, double*, double*, double*, cudaStream_t);

}  // namespace cuda
}  // namespace pbg
