// The small ops' argument checks (op_args.h), for every backend.
#include "op_args.h"

#include <utility>

#include "../kernels/operators.h"
#include "dispatch.h"

namespace pbg {

ScoresShapes check_scores_args(const at::Tensor& lhs_pos, const at::Tensor& rhs_pos,
                               const at::Tensor& lhs_neg, const at::Tensor& rhs_neg,
                               const char* op, c10::DeviceType device) {
  check_float_on(lhs_pos, device, op, "lhs_pos");
  for (auto [t, name] : {std::pair{&rhs_pos, "rhs_pos"}, {&lhs_neg, "lhs_neg"},
                         {&rhs_neg, "rhs_neg"}}) {
    check_on(*t, device, op, name);
    check_same_dtype(*t, lhs_pos, op, name, "lhs_pos");
    TORCH_CHECK_VALUE(t->dim() == 3, op, ": ", name, " must be 3-D [C, n, D], got ", t->sizes());
  }
  TORCH_CHECK_VALUE(lhs_pos.dim() == 3, op, ": lhs_pos must be 3-D [C, P, D], got ",
                    lhs_pos.sizes());
  const int64_t C = lhs_pos.size(0), P = lhs_pos.size(1), D = lhs_pos.size(2);
  TORCH_CHECK_VALUE(rhs_pos.sizes() == lhs_pos.sizes(), op, ": rhs_pos must match lhs_pos ",
                    lhs_pos.sizes(), ", got ", rhs_pos.sizes());
  TORCH_CHECK_VALUE(lhs_neg.size(0) == C && lhs_neg.size(2) == D, op, ": lhs_neg must be [", C,
                    ", L, ", D, "], got ", lhs_neg.sizes());
  TORCH_CHECK_VALUE(rhs_neg.size(0) == C && rhs_neg.size(2) == D, op, ": rhs_neg must be [", C,
                    ", R, ", D, "], got ", rhs_neg.sizes());
  return {C, P, lhs_neg.size(1), rhs_neg.size(1), D};
}

LossShapes check_loss_args(const at::Tensor& pos, const at::Tensor& neg,
                           const c10::optional<at::Tensor>& weight, const char* op,
                           c10::DeviceType device) {
  check_float_on(pos, device, op, "pos");
  check_on(neg, device, op, "neg");
  check_same_dtype(neg, pos, op, "neg", "pos");
  TORCH_CHECK_VALUE(pos.dim() == 1, op, ": pos must be 1-D [N], got ", pos.sizes());
  const int64_t N = pos.size(0);
  TORCH_CHECK_VALUE(neg.dim() == 2 && neg.size(0) == N, op, ": neg must be [", N, ", M], got ",
                    neg.sizes());
  if (weight.has_value() && weight->defined()) {
    check_on(*weight, device, op, "weight");
    check_same_dtype(*weight, pos, op, "weight", "pos");
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == N, op, ": weight must be [", N,
                      "], got ", weight->sizes());
  }
  return {N, neg.size(1)};
}

void check_operator_args(const at::Tensor& x, const at::Tensor& params, const at::Tensor& rel,
                         Operator op, const char* opname, c10::DeviceType device) {
  check_float_on(x, device, opname, "x");
  check_on(params, device, opname, "op_params");
  check_same_dtype(params, x, opname, "op_params", "x");
  check_index_on(rel, device, opname, "rel");
  TORCH_CHECK_VALUE(x.dim() == 2, opname, ": x must be 2-D [N, D], got ", x.sizes());
  const int64_t D = x.size(1);
  TORCH_CHECK_VALUE(op != Operator::ComplexDiagonal || D % 2 == 0, opname,
                    ": complex_diagonal needs an even dim, got ", D);
  const int64_t K = operator_num_params(op, D);
  TORCH_CHECK_VALUE(params.dim() == 2 && params.size(1) == K, opname, ": op_params must be [R, ",
                    K, "], got ", params.sizes());
  TORCH_CHECK_VALUE(rel.dim() == 1 && rel.size(0) == x.size(0), opname, ": rel must be [",
                    x.size(0), "], got ", rel.sizes());
}

void check_row_adagrad_args(const at::Tensor& weight, const at::Tensor& state,
                            const at::Tensor& indices, const at::Tensor& grad,
                            c10::DeviceType device) {
  constexpr const char* kOp = "row_adagrad_";
  check_float_on(weight, device, kOp, "weight");
  check_on(state, device, kOp, "state");
  check_on(grad, device, kOp, "grad");
  check_index_on(indices, device, kOp, "indices");
  check_same_dtype(state, weight, kOp, "state", "weight");
  check_same_dtype(grad, weight, kOp, "grad", "weight");
  TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": weight must be 2-D [N, D], got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.is_contiguous() && state.is_contiguous(), kOp,
                    ": weight and state must be contiguous (they are updated in place)");
  const int64_t N = weight.size(0), D = weight.size(1);
  TORCH_CHECK_VALUE(state.dim() == 1 && state.size(0) == N, kOp, ": state must be [", N,
                    "], got ", state.sizes());
  TORCH_CHECK_VALUE(indices.dim() == 1, kOp, ": indices must be 1-D, got ", indices.sizes());
  const int64_t K = indices.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == K && grad.size(1) == D, kOp,
                    ": grad must be [", K, ", ", D, "], got ", grad.sizes());
}

}  // namespace pbg
