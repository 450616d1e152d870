// Argument checks of the small ops (chunked_neg_scores, losses, relation operators,
// row_adagrad_), shared by the CPU kernels and the CUDA binding: every message names the op and
// the argument; `device` is the device type the op runs on. Index bounds are checked by the
// callers (each reads them its own way). The whole-step ops have their own contracts:
// chunk_step_args.h, train_bucket_args.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Optional.h>

#include "../kernels/common.h"

namespace pbg {

struct ScoresShapes {
  int64_t C, P, L, R, D;
};
ScoresShapes check_scores_args(const at::Tensor& lhs_pos, const at::Tensor& rhs_pos,
                               const at::Tensor& lhs_neg, const at::Tensor& rhs_neg,
                               const char* op, c10::DeviceType device);

struct LossShapes {
  int64_t N, M;
};
LossShapes check_loss_args(const at::Tensor& pos, const at::Tensor& neg,
                           const c10::optional<at::Tensor>& weight, const char* op,
                           c10::DeviceType device);

void check_operator_args(const at::Tensor& x, const at::Tensor& params, const at::Tensor& rel,
                         Operator op, const char* opname, c10::DeviceType device);

void check_row_adagrad_args(const at::Tensor& weight, const at::Tensor& state,
                            const at::Tensor& indices, const at::Tensor& grad,
                            c10::DeviceType device);

}  // namespace pbg
