// chunk_step's argument checks and plan (chunk_step_args.h), for every backend.
#include "chunk_step_args.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/constant_pad_nd.h>

#include <string>
#include <utility>

#include "dispatch.h"

namespace pbg {
namespace {

constexpr const char* kOp = "chunk_step";

void check_on(const at::Tensor& t, c10::DeviceType device, const char* arg) {
  pbg::check_on(t, device, kOp, arg);
}
void check_float_on(const at::Tensor& t, c10::DeviceType device, const char* arg) {
  pbg::check_float_on(t, device, kOp, arg);
}
void check_index_on(const at::Tensor& t, c10::DeviceType device, const char* arg) {
  pbg::check_index_on(t, device, kOp, arg);
}

}  // namespace

ChunkStepPlan check_chunk_step(PBG_CHUNK_STEP_PARAMS, c10::DeviceType device) {
  ChunkStepPlan p;
  const Comparator cmp = parse_comparator(std::string(comparator), kOp);
  const Operator op = parse_operator(std::string(op_name), kOp);
  const Loss loss = parse_loss(std::string(loss_name), kOp);
  const NegMode src_mode = parse_neg_mode(std::string(src_mode_name), kOp, "src_mode");
  const NegMode dst_mode = parse_neg_mode(std::string(dst_mode_name), kOp, "dst_mode");

  check_float_on(src_emb, device, "src_emb");
  check_float_on(dst_emb, device, "dst_emb");
  check_same_dtype(dst_emb, src_emb, kOp, "dst_emb", "src_emb");
  check_same_dtype(op_params, src_emb, kOp, "op_params", "src_emb");
  check_on(op_params, device, "op_params");
  TORCH_CHECK_VALUE(src_emb.dim() == 2 && dst_emb.dim() == 2, kOp,
                    ": src_emb and dst_emb must be 2-D [rows, dim], got ", src_emb.sizes(), " and ",
                    dst_emb.sizes());
  const int64_t D = src_emb.size(1);
  TORCH_CHECK_VALUE(dst_emb.size(1) == D, kOp, ": dst_emb has dim ", dst_emb.size(1),
                    ", src_emb has ", D);
  TORCH_CHECK_VALUE(src_emb.stride(1) == 1 && dst_emb.stride(1) == 1, kOp,
                    ": src_emb and dst_emb rows must be contiguous");
  for (auto [t, name] : {std::pair{&src_idx, "src_idx"}, {&dst_idx, "dst_idx"}, {&rel, "rel"},
                         {&src_uniform, "src_uniform"}, {&dst_uniform, "dst_uniform"}})
    check_index_on(*t, device, name);
  TORCH_CHECK_VALUE(src_idx.dim() == 1 && dst_idx.dim() == 1 && rel.dim() == 1, kOp,
                    ": src_idx, dst_idx and rel must be 1-D");
  const int64_t B = src_idx.size(0);
  TORCH_CHECK_VALUE(dst_idx.size(0) == B && rel.size(0) == B, kOp,
                    ": src_idx, dst_idx and rel must have the same length, got ", B, ", ",
                    dst_idx.size(0), ", ", rel.size(0));
  TORCH_CHECK_VALUE(chunk_size > 0, kOp, ": chunk_size must be positive, got ", chunk_size);
  const int64_t C = (B + chunk_size - 1) / chunk_size;
  TORCH_CHECK_VALUE(src_uniform.dim() == 2 && src_uniform.size(0) == C, kOp,
                    ": src_uniform must be [num_chunks=", C, ", U], got ", src_uniform.sizes());
  TORCH_CHECK_VALUE(dst_uniform.dim() == 2 && dst_uniform.size(0) == C, kOp,
                    ": dst_uniform must be [num_chunks=", C, ", U], got ", dst_uniform.sizes());
  TORCH_CHECK_VALUE(src_mode != NegMode::Skip || src_uniform.size(1) == 0, kOp,
                    ": src_uniform must be empty when src_mode is 'skip'");
  TORCH_CHECK_VALUE(dst_mode != NegMode::Skip || dst_uniform.size(1) == 0, kOp,
                    ": dst_uniform must be empty when dst_mode is 'skip'");
  TORCH_CHECK_VALUE(src_mode != NegMode::All || src_uniform.size(1) == 0, kOp,
                    ": src_uniform must be empty when src_mode is 'all'");
  TORCH_CHECK_VALUE(dst_mode != NegMode::All || dst_uniform.size(1) == 0, kOp,
                    ": dst_uniform must be empty when dst_mode is 'all'");
  TORCH_CHECK_VALUE(dst_mode != NegMode::All || op == Operator::None, kOp,
                    ": dst_mode 'all' needs operator 'none' (the operator acts on the dst side; "
                    "with dynamic relations every direction takes its negatives on the src side)");
  const int64_t K = operator_num_params(op, D);
  TORCH_CHECK_VALUE(op != Operator::ComplexDiagonal || D % 2 == 0, kOp,
                    ": complex_diagonal needs an even dim, got ", D);
  TORCH_CHECK_VALUE(op_params.dim() == 2 && op_params.size(1) == K, kOp, ": op_params must be [R, ",
                    K, "] for operator '", std::string(op_name), "' at dim ", D, ", got ",
                    op_params.sizes());
  const int64_t R = op_params.size(0);
  p.src_i = src_idx.contiguous();
  p.dst_i = dst_idx.contiguous();
  p.rel_i = rel.contiguous();
  p.su = src_uniform.contiguous();
  p.du = dst_uniform.contiguous();
  p.params = op_params.contiguous();
  const at::Tensor &src_i = p.src_i, &dst_i = p.dst_i, &rel_i = p.rel_i, &su = p.su, &du = p.du;
  // Index bounds, checked once here so the kernel can gather blindly.
  auto check_bounds = [&](const at::Tensor& t, int64_t n, const char* name) {
    if (t.numel() == 0) return;
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    TORCH_CHECK_INDEX(lo >= 0 && hi < n, kOp, ": ", name, " out of range [0, ", n, "): min ", lo,
                      ", max ", hi);
  };
  check_bounds(src_i, src_emb.size(0), "src_idx");
  check_bounds(dst_i, dst_emb.size(0), "dst_idx");
  check_bounds(su, src_emb.size(0), "src_uniform");
  check_bounds(du, dst_emb.size(0), "dst_uniform");
  check_bounds(rel_i, R, "rel");
  if (B > 0 && op != Operator::None && du.size(1) > 0) {
    auto rel_pad = at::constant_pad_nd(rel_i, {0, C * chunk_size - B}, -1).view({C, chunk_size});
    auto first = rel_pad.select(1, 0).unsqueeze(1);
    TORCH_CHECK_VALUE(((rel_pad == first) | (rel_pad == -1)).all().item<bool>(), kOp,
                      ": dst uniform negatives need one relation per chunk, but a chunk mixes "
                      "relations");
  }
  at::Tensor& w = p.weight;
  if (weight.has_value() && weight->defined()) {
    w = weight->contiguous();
    check_on(w, device, "weight");
    check_same_dtype(w, src_emb, kOp, "weight", "src_emb");
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == B, kOp, ": weight must be [", B, "], got ",
                      w.sizes());
  }

  auto global_arg = [&](const c10::optional<at::Tensor>& g, const char* name) {
    if (!g.has_value() || !g->defined()) return at::Tensor();
    check_on(*g, device, name);
    check_same_dtype(*g, src_emb, kOp, name, "src_emb");
    TORCH_CHECK_VALUE(g->dim() == 1 && g->size(0) == D, kOp, ": ", name, " must be [", D,
                      "], got ", g->sizes());
    return g->contiguous();
  };
  p.src_global = global_arg(src_global, "src_global");
  p.dst_global = global_arg(dst_global, "dst_global");
  p.precision = parse_precision(std::string(precision), kOp, src_emb.scalar_type());
  p.cmp = cmp;
  p.op = op;
  p.loss = loss;
  p.src_mode = src_mode;
  p.dst_mode = dst_mode;
  p.D = D;
  p.B = B;
  p.C = C;
  p.K = K;
  p.R = R;
  return p;
}

}  // namespace pbg
