// Every op schema of pbg_fast, in one place: the library (csrc/ops.cpp) defines them, and the
// host emulation of the CUDA backend (tests/ops/test_cuda_host_emulation.py) defines the same
// ones under its own namespace. Shapes and semantics are documented in pbg_fast/ops.py.
#pragma once

namespace pbg {

inline constexpr const char* kOpSchemas[] = {
    "chunked_neg_scores(Tensor lhs_pos, Tensor rhs_pos, Tensor lhs_neg, Tensor rhs_neg, "
        "str comparator) -> (Tensor, Tensor, Tensor)",
    "chunked_neg_scores_backward(Tensor grad_pos, Tensor grad_lhs_neg, Tensor grad_rhs_neg, "
        "Tensor lhs_pos, Tensor rhs_pos, Tensor lhs_neg, Tensor rhs_neg, str comparator) "
        "-> (Tensor, Tensor, Tensor, Tensor)",
    "loss_forward(Tensor pos, Tensor neg, Tensor? weight, str loss, float margin) -> Tensor",
    "loss_backward(Tensor grad, Tensor pos, Tensor neg, Tensor? weight, str loss, float margin) "
        "-> (Tensor, Tensor)",
    "operator_forward(Tensor x, Tensor op_params, Tensor rel, str operator) -> Tensor",
    "operator_backward(Tensor grad_out, Tensor x, Tensor op_params, Tensor rel, str operator) "
        "-> (Tensor, Tensor)",
    "row_adagrad_(Tensor(a!) weight, Tensor(b!) state, Tensor indices, Tensor grad, float lr, "
        "float eps) -> ()",
    "gemm_(Tensor(a!) c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, "
        "float beta, str isa, int reps=1) -> ()",
    "fma_peak(str isa, int iters) -> float",
    "loss_rows_(Tensor(a!) grad, Tensor(b!) grad_pos, Tensor scores, Tensor pos, "
        "Tensor? weight, str loss, float margin, str isa, int reps=1) -> (float, int)",
    "chunk_step(Tensor src_emb, Tensor dst_emb, Tensor src_idx, Tensor dst_idx, Tensor rel, "
        "Tensor op_params, Tensor src_uniform, Tensor dst_uniform, Tensor? weight, Tensor? src_global, "
        "Tensor? dst_global, int chunk_size, str src_mode, str dst_mode, str comparator, "
        "str operator, str loss, float margin, float reg_coef=0.0, str precision=\"fp32\") "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "train_bucket_(Tensor(a!) lhs_emb, Tensor(b!) lhs_state, Tensor(c!) rhs_emb, "
        "Tensor(d!) rhs_state, Tensor(e!) rhs_op_params, Tensor(f!) rhs_op_state, "
        "Tensor(g!) lhs_op_params, Tensor(h!) lhs_op_state, Tensor(i!) lhs_global, "
        "Tensor(j!) lhs_global_state, Tensor(k!) rhs_global, Tensor(l!) rhs_global_state, "
        "Tensor lhs, Tensor rhs, Tensor rel, Tensor? weight, int batch_size, int num_batch_negs, "
        "int num_uniform_negs, bool disable_lhs_negs, bool disable_rhs_negs, bool dynamic, "
        "str comparator, str operator, str loss, float margin, float relation_weight, float lr, "
        "float relation_lr, int workers, int seed, float reg_coef=0.0, bool all_negs=False, "
        "float max_norm=0.0, str precision=\"fp32\") -> Tensor",
};

}  // namespace pbg
