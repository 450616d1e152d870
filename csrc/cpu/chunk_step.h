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
};

template <typename T>
struct ChunkConfig {
  NegMode src_mode;
  NegMode dst_mode;
  int64_t chunk_size;  // nominal chunk size: logistic normalises by chunk_size + U as PBG does
  T margin;
  // N3 regularisation of the positives' rows (as stored) and their relation's parameters.
  T reg_coef = 0;
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

}  // namespace cpu
}  // namespace pbg
