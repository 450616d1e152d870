// CPU `row_adagrad_`: PBG's row-wise Adagrad, in place, on the rows named by `indices`.
//
// Gradients of repeated indices are summed first (as PBG coalesces its sparse gradient), so a
// row is updated once per call. Within a call, distinct rows are updated in parallel with no
// locks (they never overlap).
//
// Concurrent callers (HOGWILD): two threads that update the same row at the same time may
// interleave their read-modify-write of `state[i]` and `weight[i, :]`; an update can then be
// partly lost or use a slightly stale state. Nothing else goes wrong: no crash, no torn
// non-float state, every value stays a blend of valid updates. This is the asynchrony PBG's
// HOGWILD trainers accept, and with millions of rows collisions are rare.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../kernels/adagrad.h"
#include "dispatch.h"
#include "op_args.h"

namespace pbg {
namespace {

constexpr const char* kOp = "row_adagrad_";

void row_adagrad_cpu(at::Tensor& weight, at::Tensor& state, const at::Tensor& indices,
                     const at::Tensor& grad, double lr, double eps) {
  check_row_adagrad_args(weight, state, indices, grad, c10::DeviceType::CPU);
  const int64_t N = weight.size(0), D = weight.size(1), K = indices.size(0);
  if (K == 0) return;
  auto idx = indices.contiguous();
  auto g = grad.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const auto [lo, hi] = std::minmax_element(ip, ip + K);
  TORCH_CHECK_INDEX(*lo >= 0 && *hi < N, kOp, ": indices out of range [0, ", N, "): min ", *lo,
                    ", max ", *hi);
  // Group equal indices: a stable sort of positions by index.
  std::vector<int64_t> order(K);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [ip](int64_t a, int64_t b) { return ip[a] < ip[b]; });
  std::vector<int64_t> seg_start;
  seg_start.reserve(K + 1);
  for (int64_t k = 0; k < K; ++k)
    if (k == 0 || ip[order[k]] != ip[order[k - 1]]) seg_start.push_back(k);
  seg_start.push_back(K);
  const int64_t S = static_cast<int64_t>(seg_start.size()) - 1;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), kOp, [&] {
    using T = scalar_t;
    T* w = weight.data_ptr<T>();
    T* st = state.data_ptr<T>();
    const T* gp = g.data_ptr<T>();
    at::parallel_for(0, S, 64, [&](int64_t b, int64_t e) {
      std::vector<T> sum(D);
      for (int64_t s = b; s < e; ++s) {
        const int64_t first = seg_start[s], last = seg_start[s + 1];
        const T* g0 = gp + order[first] * D;
        std::copy(g0, g0 + D, sum.begin());
        for (int64_t k = first + 1; k < last; ++k) {
          const T* gk = gp + order[k] * D;
          for (int64_t d = 0; d < D; ++d) sum[d] += gk[d];
        }
        const int64_t row = ip[order[first]];
        row_adagrad_step(w + row * D, st + row, sum.data(), D, static_cast<T>(lr),
                         static_cast<T>(eps));
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) { m.impl("row_adagrad_", &row_adagrad_cpu); }

}  // namespace pbg
