// CPU `loss_forward` / `loss_backward`: PBG's loss functions over pos [N] and neg [N, M].
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <vector>

#include "dispatch.h"
#include "loss_rows.h"
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

// Runs the chunk step's loss pass (loss_rows.h) over all rows, one at a time; returns the
// loss and fills grad_pos / grad_neg.
template <typename T>
double run(Loss loss, const LossArgs& a, double margin, T* gpos, T* gneg) {
  const T* pos = a.pos.data_ptr<T>();
  const T* neg = a.neg.data_ptr<T>();
  const T* w = a.weight.defined() ? a.weight.data_ptr<T>() : nullptr;
  const T nw = a.M > 0 ? T(1) / T(a.M) : T(0);
  std::vector<double> row_loss(a.N);
  at::parallel_for(0, a.N, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      gpos[i] = 0;
      int64_t violators = 0;
      row_loss[i] = cpu::loss_rows(loss, cpu::isa_level(), 1, a.M, neg + i * a.M, a.M, pos + i,
                                   w ? w + i : nullptr, static_cast<T>(margin), nw,
                                   gneg + i * a.M, a.M, &gpos[i], &violators);
    }
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

// pbg_fast::loss_rows_: the fp32 loss pass (loss_rows.h) on a named kernel (blas: the generic
// loss_row), `reps` times, so that tests check each ISA's kernel against the reference and
// benchmarks time them against the generic code. grad [N, M] and grad_pos [N] are written;
// returns (the rows' summed loss, the violators: scores above their row's positive). Logistic's
// negatives are weighted 1 / M, as the loss op weights them.
std::tuple<double, int64_t> loss_rows_cpu(at::Tensor& grad, at::Tensor& grad_pos,
                                          const at::Tensor& scores, const at::Tensor& pos,
                                          const c10::optional<at::Tensor>& weight,
                                          c10::string_view loss_name, double margin,
                                          c10::string_view isa, int64_t reps) {
  constexpr const char* kOp = "loss_rows_";
  const Loss loss = parse_loss(std::string(loss_name), kOp);
  const LossShapes sh = check_loss_args(pos, scores, weight, kOp, c10::DeviceType::CPU);
  TORCH_CHECK_TYPE(pos.scalar_type() == at::kFloat, kOp, ": float32 only, got ",
                   pos.scalar_type());
  for (const at::Tensor* t : {&static_cast<const at::Tensor&>(grad),
                              &static_cast<const at::Tensor&>(grad_pos), &scores, &pos})
    TORCH_CHECK_VALUE(t->is_contiguous() && t->scalar_type() == at::kFloat, kOp,
                      ": grad, grad_pos, scores and pos must be contiguous float32");
  TORCH_CHECK_VALUE(grad.sizes() == scores.sizes() && grad_pos.sizes() == pos.sizes(), kOp,
                    ": grad must have the shape of scores, grad_pos that of pos");
  cpu::GemmIsa which;
  const std::string name(isa);
  TORCH_CHECK_VALUE(cpu::parse_gemm_isa(name.c_str(), &which), kOp, ": isa: unknown '", name,
                    "'; expected one of blas, avx2, avx512");
  TORCH_CHECK_VALUE(reps <= 1 || grad.data_ptr() != scores.data_ptr(), kOp,
                    ": reps > 1 with grad in place of scores would read the last repetition's "
                    "gradients as scores");
  const at::Tensor w = weight.has_value() && weight->defined() ? weight->contiguous() : at::Tensor();
  const float nw = sh.M > 0 ? 1.f / static_cast<float>(sh.M) : 0.f;
  double total = 0.0;
  int64_t violators = 0;
  for (int64_t r = 0; r < std::max<int64_t>(reps, 1); ++r) {
    grad_pos.zero_();
    violators = 0;
    total = cpu::loss_rows(loss, which, sh.N, sh.M, scores.data_ptr<float>(), sh.M,
                           pos.data_ptr<float>(), w.defined() ? w.data_ptr<float>() : nullptr,
                           static_cast<float>(margin), nw, grad.data_ptr<float>(), sh.M,
                           grad_pos.data_ptr<float>(), &violators);
  }
  return {total, violators};
}

}  // namespace

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) {
  m.impl("loss_forward", &loss_forward_cpu);
  m.impl("loss_backward", &loss_backward_cpu);
  m.impl("loss_rows_", &loss_rows_cpu);
}

}  // namespace pbg
