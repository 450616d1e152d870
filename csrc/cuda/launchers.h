// Launchers of the CUDA kernels: raw device pointers, sizes and a stream in, no torch. The torch
// glue (argument checks, allocation, the current stream) lives in ops_binding.cpp; the kernels
// in csrc/cuda/*.cu. Every launcher is explicitly instantiated for float and double, enqueues
// its kernels on `stream` and returns the first launch error (cudaSuccess otherwise); it never
// synchronises. All matrices are row-major and contiguous unless a stride says otherwise.
// Scratch buffers are passed in (the binding allocates them with torch's caching allocator);
// the *_workspace_size() functions give their size in elements of T.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../kernels/common.h"

namespace pbg {
namespace cuda {

// ---- chunked_neg_scores -------------------------------------------------------------------

// The four inputs of chunked_neg_scores: lhs_pos, rhs_pos [C, P, D], lhs_neg [C, L, D],
// rhs_neg [C, R, D].
template <typename T>
struct ChunkedScoresInputs {
  Comparator comparator;
  const T* lhs_pos;
  const T* rhs_pos;
  const T* lhs_neg;
  const T* rhs_neg;
  int64_t num_chunks;  // C
  int64_t num_pos;     // P
  int64_t num_lhs_neg;  // L
  int64_t num_rhs_neg;  // R
  int64_t dim;          // D
};

// Elements of T needed by the forward (backward = false) or the backward pass.
int64_t chunked_neg_scores_workspace_size(int64_t C, int64_t P, int64_t L, int64_t R, int64_t D,
                                          bool backward);

// pos [C, P], lhs_neg_scores [C, P, L], rhs_neg_scores [C, P, R].
template <typename T>
cudaError_t chunked_neg_scores_forward(const ChunkedScoresInputs<T>& in, T* workspace, T* pos,
                                       T* lhs_neg_scores, T* rhs_neg_scores, cudaStream_t stream);

// grad_pos [C, P], grad_lhs_neg [C, P, L], grad_rhs_neg [C, P, R] in; the gradients of the four
// inputs out (same shapes as the inputs, fully overwritten).
template <typename T>
cudaError_t chunked_neg_scores_backward(const ChunkedScoresInputs<T>& in, const T* grad_pos,
                                        const T* grad_lhs_neg, const T* grad_rhs_neg,
                                        T* workspace, T* grad_lhs_pos, T* grad_rhs_pos,
                                        T* grad_lhs_neg_rows, T* grad_rhs_neg_rows,
                                        cudaStream_t stream);

// ---- losses -------------------------------------------------------------------------------

// Per row i of pos [N] / neg [N, M]: grad_neg[i] = dL_i/dneg[i], grad_pos[i] = dL_i/dpos[i],
// row_loss[i] = L_i (double, so the binding's sum matches the CPU's double accumulation).
// weight: [N] or null (all ones). grad_neg may not alias neg.
template <typename T>
cudaError_t loss_rows(Loss loss, const T* pos, const T* neg, const T* weight, int64_t N,
                      int64_t M, T margin, T* grad_pos, T* grad_neg, double* row_loss,
                      cudaStream_t stream);

// ---- relation operators -------------------------------------------------------------------

// y [N, D] = op(x [N, D]) row by row, row i with op_params [R, K] row rel[i].
template <typename T>
cudaError_t operator_forward(Operator op, const T* x, const T* op_params, int64_t num_params,
                             const int64_t* rel, int64_t N, int64_t D, T* y, cudaStream_t stream);

// Rows of the backward scratch buffer (each K elements) operator_backward() works with: it
// processes the rows in passes of this many, so the scratch stays under ~2^24 elements.
inline int64_t operator_backward_scratch_rows(int64_t rows, int64_t num_params) {
  if (num_params <= 0 || rows <= 0) return 0;
  const int64_t budget = int64_t(1) << 24;
  const int64_t fit = budget / num_params > 0 ? budget / num_params : 1;
  return rows < fit ? rows : fit;
}

// grad_x [N, D] = dL/dx (overwritten); grad_params [R, K] += dL/dop_params (the caller zeroes
// it first). scratch: [scratch_rows, K] with scratch_rows = operator_backward_scratch_rows(N, K)
// (may be null when K == 0).
template <typename T>
cudaError_t operator_backward(Operator op, const T* x, const T* op_params, int64_t num_params,
                              const int64_t* rel, int64_t N, int64_t D, const T* grad_y,
                              T* grad_x, T* grad_params, T* scratch, int64_t scratch_rows,
                              cudaStream_t stream);

// ---- row-wise Adagrad ---------------------------------------------------------------------

// The touched rows grouped into S segments of equal index (the binding sorts the indices):
// segment s covers positions [segment_start[s], segment_start[s+1]) of `order`, and
// order[q] is a row of grad [K, D]; every position of segment s names weight row
// sorted_indices[segment_start[s]]. Sums each segment's gradients into summed_grad [S, D] in
// `order` order, then applies one Adagrad step per segment (row_adagrad_step):
// state [N] and weight [N, D] updated in place.
template <typename T>
cudaError_t row_adagrad(T* weight, T* state, int64_t D, const T* grad,
                        const int64_t* sorted_indices, const int64_t* order,
                        const int64_t* segment_start, int64_t num_segments, T* summed_grad, T lr,
                        T eps, cudaStream_t stream);

// ---- the fused chunk step -----------------------------------------------------------------

// One strided-batched product in cuBLAS's own (column-major) terms: for i < batch,
//   C_i = op(A_i) op(B_i) + beta C_i,   op(X) = X^T when trans_*, op(A_i) [m, k], op(B_i) [k, n],
// A_i = a + i * stride_a (elements), element (r, c) of a stored matrix at r + c * ld.
// a and b hold T, or bfloat16 bits (uint16_t, kernels/bfloat16.h) under Precision::BF16; c is T.
template <typename T>
struct Gemm {
  bool trans_a, trans_b;
  int64_t m, n, k;
  const void* a;
  int64_t lda, stride_a;
  const void* b;
  int64_t ldb, stride_b;
  T beta;
  T* c;
  int64_t ldc, stride_c;
  int64_t batch;
};

// Who runs the products: the binding supplies cuBLAS on the current stream's handle
// (cublasGemmStridedBatchedEx; TF32 through its compute type), the host emulation an
// independent host implementation of the same contract. Errors surface as exceptions from the
// binding, or as the cudaError_t returned.
template <typename T>
struct GemmRunner {
  void* ctx;
  cudaError_t (*run)(void* ctx, const Gemm<T>& g, Precision precision, cudaStream_t stream);
};

// Everything chunk_step needs; see pbg_fast/ops.py:chunk_step for the contract. B edges in
// C = ceil(B / chunk_size) chunks; rows of src_grad follow cat(src_idx, src_uniform.flatten()),
// or cat(src_idx, arange(src_rows)) under NegMode::All; rows of dst_grad likewise.
template <typename T>
struct ChunkStepArgs {
  // Tables (read only).
  const T* src_emb;  // [src_rows, D], row stride src_stride
  int64_t src_stride;
  const T* dst_emb;  // [dst_rows, D], row stride dst_stride
  int64_t dst_stride;
  int64_t src_rows, dst_rows;  // the tables' rows (every one a negative under NegMode::All)
  const T* op_params;  // [R, K] contiguous
  int64_t num_params;  // K
  int64_t dim;         // D
  // Batch.
  const int64_t* src_idx;  // [B]
  const int64_t* dst_idx;  // [B]
  const int64_t* rel;      // [B]
  int64_t single_relation;  // >= 0: every edge (and chunk) has this relation; -1: unknown
  int64_t num_edges;       // B
  int64_t chunk_size;
  const int64_t* src_uniform;  // [C, Us]
  int64_t num_src_uniform;     // Us
  const int64_t* dst_uniform;  // [C, Ud]
  int64_t num_dst_uniform;     // Ud
  const T* weight;             // [B] or null
  const T* src_global;         // [D] or null: added to every src row (PBG's global_emb)
  const T* dst_global;         // [D] or null: added to every dst row, before the operator
  // Configuration.
  NegMode src_mode;
  NegMode dst_mode;
  Comparator comparator;
  Operator op;
  Loss loss;
  T margin;
  T reg_coef;  // N3 on the positives' rows (as stored) and their relations' parameters; 0: off
  // The score and gradient products (every [rows x D] . [D x rows] of the step) run on `gemm`
  // with inputs of this precision (TF32/BF16: float tables only); the rest stays in T.
  Precision precision;
  GemmRunner<T> gemm;
  // Outputs.
  T* src_grad;              // [B + C*Us, D] ([B + src_rows, D] under All), overwritten
  T* dst_grad;              // [B + C*Ud, D] likewise, overwritten
  T* op_param_grad;         // [R, K], accumulated into (the caller zeroes it)
  T* src_global_grad;       // [D], overwritten (when src_global is set)
  T* dst_global_grad;       // [D], overwritten (when dst_global is set)
  double* edge_loss;        // [B]: loss terms of edge i, both sides
  int64_t* edge_violators;  // [B, 2]: per edge, negatives scoring above the positive, per side
  T* workspace;             // [chunk_step_workspace_size(args)]
};

template <typename T>
int64_t chunk_step_workspace_size(const ChunkStepArgs<T>& args);

// ---- train_bucket_ (train_bucket.cu) ----------------------------------------------------------

// Batch edges: for i < n, edge e = Shuffle(seed, num_edges)(first + i) (counter_rng.h) gives
// lhs_b[i] = lhs[e], rhs_b[i] = rhs[e], rel_b[i] = rel[e] (0 if rel is null) and
// w_b[i] = relation_weight * weight[e] (weight null: 1).
template <typename T>
cudaError_t batch_edges(uint64_t seed, int64_t num_edges, int64_t first, int64_t n,
                        const int64_t* lhs, const int64_t* rhs, const int64_t* rel,
                        const T* weight, T relation_weight, int64_t* lhs_b, int64_t* rhs_b,
                        int64_t* rel_b, T* w_b, cudaStream_t stream);

// out[k] = below(draw(stream_key(seed, purpose, batch), k), n) for k < count.
cudaError_t uniform_draws(uint64_t seed, uint64_t purpose, int64_t batch, int64_t count,
                          int64_t n, int64_t* out, cudaStream_t stream);

// max_norm on each distinct row named in sorted [M] (sorted ascending): scaled to max_norm if
// longer, once.
template <typename T>
cudaError_t renorm_sorted_rows(T* emb, int64_t D, const int64_t* sorted, int64_t M, T max_norm,
                               cudaStream_t stream);

// Row-wise Adagrad on the distinct rows of sorted [M] (a stable sort of the rows' indices;
// order [M] maps a sorted position to its row of grad [M, D]): each row steps once with the
// sum of its gradient rows, in their original order. summed: [M, D] scratch.
template <typename T>
cudaError_t row_adagrad_sorted(T* weight, T* state, int64_t D, const T* grad,
                               const int64_t* sorted, const int64_t* order, int64_t M,
                               T* summed, T lr, T eps, cudaStream_t stream);

// Element-wise Adagrad on n parameters: state += g^2; p -= lr g / (sqrt(state) + eps).
template <typename T>
cudaError_t dense_adagrad(T* p, T* state, const T* g, int64_t n, T lr, T eps,
                          cudaStream_t stream);

template <typename T>
cudaError_t chunk_step(const ChunkStepArgs<T>& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace pbg
