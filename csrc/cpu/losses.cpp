// CPU `loss_forward` / `loss_backward`: PBG's loss functions over pos [N] and neg [N, M].
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <vector>

#include "../kernels/losses.h"
#include "dispatch.h"
#include "op_args.h"

namespace pbg {
namespace {

struct LossArgs {
  at::Tensor pos, neg, weight;
  int64_t N, M;
};

LossArgs check(const at::Tensor& pos, const at::Tensor& neg, const c10::optional<at::Tensor>& weight,
               const char* op) {
  const LossShapes sh = check_loss_args(pos, neg, weight, op, c10::DeviceType::CPU);
  LossArgs a{pos.contiguous(), neg.contiguous(), at::Tensor(), sh.N, sh.M};
  if (weight.has_value() && weight->defined()) a.weight = weight->contiguous();
  return a;
}

// Runs loss_row over all rows; returns the loss and fills grad_pos / grad_neg.
template <typename T>
double run(Loss loss, const LossArgs& a, double margin, T* gpos, T* gneg) {
  const T* pos = a.pos.data_ptr<T>();
  const T* neg = a.neg.data_ptr<T>();
  const T* w = a.weight.defined() ? a.weight.data_ptr<T>() : nullptr;
  const T nw = a.M > 0 ? T(1) / T(a.M) : T(0);
  std::vector<double> row_loss(a.N);
  dispatch_loss(loss, [&](auto ltag) {
    at::parallel_for(0, a.N, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        T* g = gneg + i * a.M;
        for (int64_t j = 0; j < a.M; ++j) g[j] = neg[i * a.M + j];
        gpos[i] = 0;
        row_loss[i] = loss_row<decltype(ltag)::value, T, FastMath>(pos[i], g, a.M, w ? w[i] : T(1),
                                                      static_cast<T>(margin), nw, &gpos[i]);
      }
    });
    return 0;
  });
  double total = 0;
  for (double v : row_loss) total += v;
  return total;
}

at::Tensor loss_forward_cpu(const at::Tensor& pos, const at::Tensor& neg,
                            const c10::optional<at::Tensor>& weight, c10::string_view loss_name,
                            double margin) {
  const Loss loss = parse_loss(std::string(loss_name), "loss_forward");
  auto a = check(pos, neg, weight, "loss_forward");
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(a.pos.scalar_type(), "loss_forward", [&] {
    std::vector<scalar_t> gpos(a.N), gneg(a.N * a.M);
    out = at::scalar_tensor(run<scalar_t>(loss, a, margin, gpos.data(), gneg.data()),
                            a.pos.options());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pos,
                                                     const at::Tensor& neg,
                                                     const c10::optional<at::Tensor>& weight,
                                                     c10::string_view loss_name, double margin) {
  const Loss loss = parse_loss(std::string(loss_name), "loss_backward");
  auto a = check(pos, neg, weight, "loss_backward");
  TORCH_CHECK_VALUE(grad.numel() == 1, "loss_backward: grad must be a scalar, got ", grad.sizes());
  auto gpos = at::empty_like(a.pos), gneg = at::empty_like(a.neg);
  AT_DISPATCH_FLOATING_TYPES(a.pos.scalar_type(), "loss_backward", [&] {
    run<scalar_t>(loss, a, margin, gpos.data_ptr<scalar_t>(), gneg.data_ptr<scalar_t>());
  });
  auto g = grad.to(a.pos.scalar_type());
  return {gpos * g, gneg * g};
}

}  // namespace

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) {
  m.impl("loss_forward", &loss_forward_cpu);
  m.impl("loss_backward", &loss_backward_cpu);
}

}  // namespace pbg
