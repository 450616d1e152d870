// CPU `operator_forward` / `operator_backward`: relation operators applied row by row, each row
// with the parameters of its relation (rel [N] indexes op_params [R, K]).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../kernels/operators.h"
#include "dispatch.h"
#include "op_args.h"

namespace pbg {
namespace {

void check(const at::Tensor& x, const at::Tensor& params, const at::Tensor& rel, Operator op,
           const char* opname) {
  check_operator_args(x, params, rel, op, opname, c10::DeviceType::CPU);
  if (rel.numel() > 0) {
    const int64_t lo = rel.min().item<int64_t>(), hi = rel.max().item<int64_t>();
    TORCH_CHECK_INDEX(lo >= 0 && hi < params.size(0), opname, ": rel out of range [0, ",
                      params.size(0), "): min ", lo, ", max ", hi);
  }
}

at::Tensor forward_cpu(const at::Tensor& x, const at::Tensor& op_params, const at::Tensor& rel,
                       c10::string_view op_name) {
  const Operator op = parse_operator(std::string(op_name), "operator_forward");
  check(x, op_params, rel, op, "operator_forward");
  auto xc = x.contiguous(), pc = op_params.contiguous(), rc = rel.contiguous();
  auto y = at::empty_like(xc);
  const int64_t N = xc.size(0), D = xc.size(1), K = pc.size(1);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "operator_forward", [&] {
    using T = scalar_t;
    dispatch_operator(op, [&](auto otag) {
      at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          operator_forward_row<decltype(otag)::value>(xc.data_ptr<T>() + i * D,
                                                      pc.data_ptr<T>() + rc.data_ptr<int64_t>()[i] * K,
                                                      y.data_ptr<T>() + i * D, D);
      });
      return 0;
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                const at::Tensor& op_params, const at::Tensor& rel,
                                                c10::string_view op_name) {
  const Operator op = parse_operator(std::string(op_name), "operator_backward");
  check(x, op_params, rel, op, "operator_backward");
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "operator_backward: grad_out must match x ",
                    x.sizes(), ", got ", grad_out.sizes());
  auto xc = x.contiguous(), pc = op_params.contiguous(), rc = rel.contiguous();
  auto gy = grad_out.to(xc.scalar_type()).contiguous();
  const int64_t N = xc.size(0), D = xc.size(1), R = pc.size(0), K = pc.size(1);
  auto gx = at::empty_like(xc);
  // Per-thread parameter gradients, summed at the end.
  auto gp = at::zeros({at::get_num_threads(), R, K}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "operator_backward", [&] {
    using T = scalar_t;
    dispatch_operator(op, [&](auto otag) {
      at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
        T* my_gp = gp.data_ptr<T>() + at::get_thread_num() * R * K;
        for (int64_t i = b; i < e; ++i) {
          const int64_t r = rc.data_ptr<int64_t>()[i];
          operator_backward_row<decltype(otag)::value>(
              xc.data_ptr<T>() + i * D, pc.data_ptr<T>() + r * K, gy.data_ptr<T>() + i * D,
              gx.data_ptr<T>() + i * D, my_gp + r * K, D);
        }
      });
      return 0;
    });
  });
  return {gx, gp.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) {
  m.impl("operator_forward", &forward_cpu);
  m.impl("operator_backward", &backward_cpu);
}

}  // namespace pbg
