// The contract of chunk_step, shared by the CPU op (chunk_step.cpp) and the CUDA binding
// (csrc/cuda/ops_binding.cpp): every argument check (each message names the op and the
// argument, the bounds of every index included) and the contiguous inputs, written once.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "../kernels/common.h"

// The op's parameters, in the schema's order (csrc/op_schemas.h).
#define PBG_CHUNK_STEP_PARAMS                                                                   \
    const at::Tensor& src_emb, const at::Tensor& dst_emb, const at::Tensor& src_idx,            \
    const at::Tensor& dst_idx, const at::Tensor& rel, const at::Tensor& op_params,              \
    const at::Tensor& src_uniform, const at::Tensor& dst_uniform,                               \
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& src_global,       \
    const c10::optional<at::Tensor>& dst_global, int64_t chunk_size, c10::string_view src_mode_name, \
    c10::string_view dst_mode_name, c10::string_view comparator, c10::string_view op_name,      \
    c10::string_view loss_name, double margin, double reg_coef, c10::string_view precision

#define PBG_CHUNK_STEP_ARGS                                                                     \
      src_emb, dst_emb, src_idx, dst_idx, rel, op_params, src_uniform, dst_uniform, weight,     \
      src_global, dst_global, chunk_size, src_mode_name, dst_mode_name, comparator, op_name,    \
      loss_name, margin, reg_coef, precision

namespace pbg {

struct ChunkStepPlan {
  Comparator cmp;
  Operator op;
  Loss loss;
  Precision precision;  // of the products (CUDA; fp32 on the CPU)
  NegMode src_mode, dst_mode;
  int64_t D, B, C, K, R;  // dim, edges, chunks, operator parameters per relation, relations
  // Contiguous inputs (weight and the globals undefined when not given).
  at::Tensor src_i, dst_i, rel_i, su, du, params, weight, src_global, dst_global;
};

// Checks chunk_step's arguments for a run on `device` (every tensor there); raises with a
// message naming the argument, or returns the plan. Reads the index bounds (one host sync).
ChunkStepPlan check_chunk_step(PBG_CHUNK_STEP_PARAMS, c10::DeviceType device);

}  // namespace pbg
