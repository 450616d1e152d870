// The contract of train_bucket_, shared by the CPU op (train_bucket.cpp) and the CUDA binding
// (csrc/cuda/ops_binding.cpp): every argument check (each message names the op and the
// argument) and what follows from the arguments, written once.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "../kernels/common.h"

// The op's parameters, in the schema's order (csrc/op_schemas.h): every backend's kernel is
// `at::Tensor train_bucket_<backend>(PBG_TRAIN_BUCKET_PARAMS)` and passes them on to
// check_train_bucket(PBG_TRAIN_BUCKET_ARGS, device).
#define PBG_TRAIN_BUCKET_PARAMS                                                                 \
    at::Tensor& lhs_emb, at::Tensor& lhs_state, at::Tensor& rhs_emb, at::Tensor& rhs_state,     \
    at::Tensor& rhs_op_params, at::Tensor& rhs_op_state, at::Tensor& lhs_op_params,             \
    at::Tensor& lhs_op_state, at::Tensor& lhs_global, at::Tensor& lhs_global_state,             \
    at::Tensor& rhs_global, at::Tensor& rhs_global_state, const at::Tensor& lhs,                \
    const at::Tensor& rhs, const at::Tensor& rel, const c10::optional<at::Tensor>& weight,      \
    int64_t batch_size, int64_t num_batch_negs, int64_t num_uniform_negs, bool disable_lhs_negs, \
    bool disable_rhs_negs, bool dynamic, c10::string_view comparator, c10::string_view op_name, \
    c10::string_view loss_name, double margin, double relation_weight, double lr,               \
    double relation_lr, int64_t workers, int64_t seed, double reg_coef, bool all_negs,          \
    double max_norm, c10::string_view precision

#define PBG_TRAIN_BUCKET_ARGS                                                                   \
      lhs_emb, lhs_state, rhs_emb, rhs_state, rhs_op_params, rhs_op_state, lhs_op_params,       \
      lhs_op_state, lhs_global, lhs_global_state, rhs_global, rhs_global_state, lhs, rhs, rel,  \
      weight, batch_size, num_batch_negs, num_uniform_negs, disable_lhs_negs, disable_rhs_negs, \
      dynamic, comparator, op_name, loss_name, margin, relation_weight, lr, relation_lr, workers, \
      seed, reg_coef, all_negs, max_norm, precision

namespace pbg {

struct TrainBucketPlan {
  Comparator cmp;
  Operator op;
  Loss loss;
  Precision precision;  // of the chunk step's products (CUDA; fp32 on the CPU)
  int64_t D, K, R, E;
  bool glob;            // global embeddings given
  NegMode base;         // the negatives' mode of an enabled side
  int64_t chunk;        // edges per chunk
  int64_t num_uniform;  // uniform negatives per chunk of an enabled side
  at::Tensor weight;    // contiguous, or undefined
};

// Checks train_bucket_'s arguments (the op's own, in its order) for a run on `device` (every
// tensor must be there): raises with a message naming the argument, or returns the plan. Reads
// the index bounds (one host sync).
TrainBucketPlan check_train_bucket(PBG_TRAIN_BUCKET_PARAMS, c10::DeviceType device);

}  // namespace pbg
