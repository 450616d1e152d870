// The fused chunk step on the CPU: one chunk of positives, its negatives, the score matrices,
// the loss, and the gradient of every row it touched. Single-threaded by design: the ops call it
// from at::parallel_for bodies and the bucket op from its HOGWILD workers.
#pragma once

#include <cstdint>
#include <vector>

#include "../kernels/common.h"

namespace pbg {
namespace cpu {

template <typename T>
struct ChunkTables {
  const T* src_emb;  // [src_rows, dim], row stride src_stride
  int64_t src_stride;
  const T* dst_emb;  // [dst_rows, dim], row stride dst_stride
  int64_t dst_stride;
  const T* op_params;  // [num_rels, num_params] contiguous (may be null when num_params == 0)
  int64_t num_params;
  int64_t dim;
  // PBG's global_emb: a vector added to every row of a side before the operator (or null).
  const T* src_global = nullptr;  // [dim]
  const T* dst_global = nullptr;  // [dim]
  // NegMode::All: the side's whole table, already through the global vector and the
  // comparator's prepare (rows contiguous, [n_all, dim]), with the prepare's aux per row.
  const T* src_all = nullptr;
  const T* src_all_aux = nullptr;
  int64_t n_src_all = 0;
  const T* dst_all = nullptr;  // the dst side's operator must be None
  const T* dst_all_aux = nullptr;
  int64_t n_dst_all = 0;
};

// Raises unless the CPU kernels run `p`: fp32 always; bf16 where have_bf16_gemm() (blas.h);
// tf32 never (a tensor-core format). Every message names `op`.
void check_cpu_precision(Precision p, const char* op);

template <typename T>
struct ChunkConfig {
  NegMode src_mode;
  NegMode dst_mode;
  int64_t chunk_size;  // nominal chunk size: logistic normalises by chunk_size + U as PBG does
  T margin;
  // N3 regularisation of the positives' rows (as stored) and their relation's parameters.
  T reg_coef = 0;
  // precision 'bf16': the score and gradient products on bfloat16 inputs (blas.h: gemm_bf16;
  // the operators' products stay fp32). The caller checked have_bf16_gemm().
  bool bf16_products = false;
};

// One chunk: P positives and the U uniform negatives of each side.
struct ChunkInput {
  const int64_t* src_idx;  // [P]
  const int64_t* dst_idx;  // [P]
  const int64_t* rel;      // [P] or null (relation 0 for all)
  int64_t num_pos;         // P
  const int64_t* src_uniform;  // [Us]
  int64_t num_src_uniform;
  const int64_t* dst_uniform;  // [Ud]; transformed with relation rel[0]
  int64_t num_dst_uniform;
};

template <typename T>
struct ChunkGrads {
  T* src_pos;  // [P, dim]   dL/d(src row) for each positive
  T* src_uni;  // [Us, dim]
  T* dst_pos;  // [P, dim]
  T* dst_uni;  // [Ud, dim]
  T* op_params;  // [num_rels, num_params], accumulated (+=)
  T* src_global = nullptr;  // [dim], accumulated (+=) when tables.src_global is set
  T* dst_global = nullptr;  // [dim], accumulated (+=) when tables.dst_global is set
  // NegMode::All: dL/d(prepared row) of every table row, accumulated (+=), [n_all, dim].
  T* src_all = nullptr;
  T* dst_all = nullptr;
};

struct ChunkStats {
  double loss = 0;
  int64_t src_violators = 0;  // negatives scoring above their positive
  int64_t dst_violators = 0;
};

// Scratch buffers reused across chunks by one thread.
template <typename T>
struct ChunkWorkspace {
  std::vector<T> buf;
};

// Runs one chunk. weight: [P] or null. Dispatches on (comparator, operator, loss) once.
template <typename T>
ChunkStats chunk_step_one(Comparator cmp, Operator op, Loss loss, const ChunkTables<T>& tables,
                          const ChunkConfig<T>& cfg, const ChunkInput& in, const T* weight,
                          const ChunkGrads<T>& out, ChunkWorkspace<T>& ws);

// chunk_step_one for one comparator (chunk_kernel.h; instantiated in chunk_step_dot_cos.cpp and
// chunk_step_l2.cpp).
template <Comparator C, typename T>
ChunkStats chunk_step_cmp(Operator op, Loss loss, const ChunkTables<T>& tables,
                          const ChunkConfig<T>& cfg, const ChunkInput& in, const T* weight,
                          const ChunkGrads<T>& out, ChunkWorkspace<T>& ws);

// NegMode::All support: a side's whole table as the chunk step wants it, prepared once per
// batch. Returns the prepared rows ([n, dim], contiguous): `emb` itself when nothing changes
// it (dot, no global vector, contiguous rows), else a copy in `buf`; aux (cos: 1/|x|, l2: |x|^2)
// goes to `aux`.
template <typename T>
const T* prepare_all_table(Comparator cmp, const T* emb, int64_t stride, int64_t n, int64_t dim,
                           const T* global, std::vector<T>& buf, std::vector<T>& aux);

// The backward of prepare_all_table: g = dL/d(prepared rows) on entry, dL/d(rows) on exit;
// g_global (or null) += the column sums of the result.
template <typename T>
void prepare_all_table_backward(Comparator cmp, const T* prepared, const T* aux, T* g, int64_t n,
                                int64_t dim, T* g_global);

}  // namespace cpu
}  // namespace pbg
