// train_bucket_'s argument checks and plan (train_bucket_args.h), for every backend.
#include "train_bucket_args.h"

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>

#include "dispatch.h"

namespace pbg {
namespace {

constexpr const char* kOp = "train_bucket_";

void check_on(const at::Tensor& t, c10::DeviceType device, const char* arg) {
  pbg::check_on(t, device, kOp, arg);
}

void check_table(const at::Tensor& emb, const at::Tensor& state, c10::DeviceType device,
                 const char* emb_name, const char* state_name) {
  check_float_on(emb, device, kOp, emb_name);
  TORCH_CHECK_VALUE(emb.dim() == 2 && emb.is_contiguous(), kOp, ": ", emb_name,
                    " must be a contiguous [N, D] tensor, got ", emb.sizes());
  check_on(state, device, state_name);
  check_same_dtype(state, emb, kOp, state_name, emb_name);
  TORCH_CHECK_VALUE(state.dim() == 1 && state.size(0) == emb.size(0) && state.is_contiguous(),
                    kOp, ": ", state_name, " must be a contiguous [", emb.size(0), "], got ",
                    state.sizes());
}

}  // namespace

TrainBucketPlan check_train_bucket(PBG_TRAIN_BUCKET_PARAMS, c10::DeviceType device) {
  TrainBucketPlan plan;
  const Comparator cmp = parse_comparator(std::string(comparator), kOp);
  const Operator op = parse_operator(std::string(op_name), kOp);
  const Loss loss = parse_loss(std::string(loss_name), kOp);
  check_table(lhs_emb, lhs_state, device, "lhs_emb", "lhs_state");
  check_table(rhs_emb, rhs_state, device, "rhs_emb", "rhs_state");
  check_same_dtype(rhs_emb, lhs_emb, kOp, "rhs_emb", "lhs_emb");
  const int64_t D = lhs_emb.size(1);
  TORCH_CHECK_VALUE(rhs_emb.size(1) == D, kOp, ": rhs_emb has dim ", rhs_emb.size(1),
                    ", lhs_emb has ", D);
  TORCH_CHECK_VALUE(op != Operator::ComplexDiagonal || D % 2 == 0, kOp,
                    ": complex_diagonal needs an even dim, got ", D);
  const int64_t K = operator_num_params(op, D);
  for (auto [p, s, pn, sn] : {std::tuple{&rhs_op_params, &rhs_op_state, "rhs_op_params", "rhs_op_state"},
                             {&lhs_op_params, &lhs_op_state, "lhs_op_params", "lhs_op_state"}}) {
    check_on(*p, device, pn);
    check_same_dtype(*p, lhs_emb, kOp, pn, "lhs_emb");
    check_same_dtype(*s, lhs_emb, kOp, sn, "lhs_emb");
    TORCH_CHECK_VALUE(p->dim() == 2 && p->size(1) == K && p->is_contiguous(), kOp, ": ", pn,
                      " must be a contiguous [R, ", K, "], got ", p->sizes());
    TORCH_CHECK_VALUE(s->sizes() == p->sizes() && s->is_contiguous(), kOp, ": ", sn,
                      " must match ", pn);
  }
  const int64_t R = rhs_op_params.size(0);
  TORCH_CHECK_VALUE(!dynamic || lhs_op_params.size(0) == R, kOp,
                    ": with dynamic relations lhs_op_params must have ", R, " rows");
  const bool glob = lhs_global.numel() > 0;
  for (auto [g, s, gn] : {std::tuple{&lhs_global, &lhs_global_state, "lhs_global"},
                          {&rhs_global, &rhs_global_state, "rhs_global"}}) {
    check_on(*g, device, gn);
    check_same_dtype(*g, lhs_emb, kOp, gn, "lhs_emb");
    TORCH_CHECK_VALUE((glob ? (g->dim() == 1 && g->size(0) == D) : g->numel() == 0) &&
                          s->sizes() == g->sizes(),
                      kOp, ": ", gn, " and its state must both be [", D, "] (or both empty)");
  }
  for (auto [t, name] : {std::pair{&lhs, "lhs"}, {&rhs, "rhs"}, {&rel, "rel"}}) {
    check_index_on(*t, device, kOp, name);
  }
  const int64_t E = lhs.numel();
  TORCH_CHECK_VALUE(lhs.dim() == 1 && rhs.dim() == 1 && rhs.numel() == E &&
                        (rel.numel() == E || rel.numel() == 0),
                    kOp, ": lhs, rhs (and rel, unless empty) must be 1-D of one length");
  auto bounds = [&](const at::Tensor& t, int64_t n, const char* name) {
    if (t.numel() == 0) return;
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    TORCH_CHECK_INDEX(lo >= 0 && hi < n, kOp, ": ", name, " out of range [0, ", n, "): min ", lo,
                      ", max ", hi);
  };
  bounds(lhs, lhs_emb.size(0), "lhs");
  bounds(rhs, rhs_emb.size(0), "rhs");
  bounds(rel, R, "rel");
  TORCH_CHECK_VALUE(batch_size > 0, kOp, ": batch_size must be positive");
  TORCH_CHECK_VALUE(num_batch_negs >= 0 && num_uniform_negs >= 0, kOp,
                    ": negative counts must be non-negative");
  TORCH_CHECK_VALUE(all_negs || num_batch_negs > 0 || num_uniform_negs > 0, kOp,
                    ": num_batch_negs and num_uniform_negs cannot both be 0");
  TORCH_CHECK_VALUE(!all_negs || dynamic || disable_rhs_negs || op == Operator::None, kOp,
                    ": all_negs with static relations needs operator 'none' (the operator acts on "
                    "the rhs side); use dynamic relations");
  TORCH_CHECK_VALUE(!(disable_lhs_negs && disable_rhs_negs), kOp,
                    ": cannot disable negatives on both sides");
  TORCH_CHECK_VALUE(dynamic || R == 1 || rel.numel() > 0, kOp, ": rel needed with several relations");
  TORCH_CHECK_VALUE(workers >= 1, kOp, ": workers must be >= 1, got ", workers);
  TORCH_CHECK_VALUE(max_norm >= 0, kOp, ": max_norm must be >= 0 (0: off), got ", max_norm);
  at::Tensor& w = plan.weight;
  if (weight.has_value() && weight->defined()) {
    w = weight->contiguous();
    check_on(w, device, "weight");
    check_same_dtype(w, lhs_emb, kOp, "weight", "lhs_emb");
    TORCH_CHECK_VALUE(w.dim() == 1 && w.numel() == E, kOp, ": weight must be [", E, "]");
  }
  // PBG: num_batch_negs = 0 means uniform negatives only, in chunks of num_uniform_negs.
  // all_negs: every entity of the partition. The negatives do not depend on the chunk, so the
  // chunk is only a blocking choice: as many edges as keep a chunk's score matrix within 16M
  // entries (the score GEMMs against the whole table run ~1.6x faster at 400 rows than at 50).
  const NegMode base = all_negs ? NegMode::All
                       : num_batch_negs > 0 ? NegMode::BatchUniform : NegMode::Uniform;
  const int64_t all_chunk = std::clamp<int64_t>(
      (int64_t(1) << 24) / std::max<int64_t>(1, std::max(lhs_emb.size(0), rhs_emb.size(0))), 1,
      batch_size);
  const int64_t chunk = all_negs ? all_chunk : num_batch_negs > 0 ? num_batch_negs : num_uniform_negs;
  const int64_t num_uniform = all_negs ? 0 : num_uniform_negs;
  // A disabled side is PBG's Negatives.NONE: a loss term with no negatives ('uniform', U = 0).
  plan.precision = parse_precision(std::string(precision), kOp, lhs_emb.scalar_type());
  plan.cmp = cmp;
  plan.op = op;
  plan.loss = loss;
  plan.D = D;
  plan.K = K;
  plan.R = R;
  plan.E = E;
  plan.glob = glob;
  plan.base = base;
  plan.chunk = chunk;
  plan.num_uniform = num_uniform;
  return plan;
}

}  // namespace pbg
