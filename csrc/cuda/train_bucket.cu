// The pieces of CUDA train_bucket_ that are not the chunk step (chunk_step.cu) or plain torch
// ops: the batch's edges in the shuffled order, its uniform negatives, max_norm, the sorted
// row-Adagrad step and the element-wise Adagrad of the relation parameters and global
// embeddings. The binding (ops_binding.cpp: train_bucket_cuda) strings them together per batch
// on one stream, without a host round trip. Randomness is counter-based (kernels/counter_rng.h):
// the same shuffle and negatives as the CPU op and the Python reference, batch for batch.
//
// Rows touched several times in a batch (the same entity as a positive and a negative, or in
// several edges) get one update from the sum of their gradient rows, as on the CPU: the binding
// sorts the batch's row indices (stable), and the first position of each run of equal indices
// (a "head") sums that run's rows in their original order and steps the row. Distinct heads
// name distinct rows: no atomics, no races, and a deterministic result.
#include "../kernels/adagrad.h"
#include "../kernels/counter_rng.h"
#include "device_common.cuh"
#include "launchers.h"

namespace pbg {
namespace cuda {
namespace {

template <typename T>
struct BatchEdges {
  rng::Shuffle order;
  int64_t first;  // position of the batch's first edge in the shuffled order
  const int64_t *lhs, *rhs, *rel;  // rel may be null (one relation)
  const T* weight;                 // may be null
  T relation_weight;
  int64_t *lhs_b, *rhs_b, *rel_b;
  T* w_b;
  PBG_HD void operator()(int64_t i) const {
    const int64_t e = static_cast<int64_t>(order(static_cast<uint64_t>(first + i)));
    lhs_b[i] = lhs[e];
    rhs_b[i] = rhs[e];
    rel_b[i] = rel ? rel[e] : 0;
    w_b[i] = relation_weight * (weight ? weight[e] : T(1));
  }
};

struct UniformDraws {
  uint64_t key;
  int64_t n;
  int64_t* out;
  PBG_HD void operator()(int64_t k) const {
    out[k] = rng::below(rng::draw(key, static_cast<uint64_t>(k)), n);
  }
};

PBG_HD bool is_head(const int64_t* sorted, int64_t p) { return p == 0 || sorted[p] != sorted[p - 1]; }

template <typename T>
struct RenormHeads {
  T* emb;
  int64_t d;
  const int64_t* sorted;
  T max_norm;
  PBG_HD void operator()(int64_t p) const {
    if (!is_head(sorted, p)) return;
    T* w = emb + sorted[p] * d;
    T s = 0;
    for (int64_t k = 0; k < d; ++k) s += w[k] * w[k];
    const T norm = sqrt(s);
    if (norm > max_norm) {
      const T scale = max_norm / (norm + T(1e-7));
      for (int64_t k = 0; k < d; ++k) w[k] *= scale;
    }
  }
};

// Head p sums the gradient rows order[p..q) (q: the end of its run) into its own scratch row p
// of `summed` [M, D], then steps weight row sorted[p].
template <typename T>
struct AdagradHeads {
  T* weight;
  T* state;
  int64_t d;
  const T* grad;  // [M, D]
  const int64_t *sorted, *order;
  int64_t m;
  T* summed;  // [M, D] scratch
  T lr, eps;
  PBG_HD void operator()(int64_t p) const {
    if (!is_head(sorted, p)) return;
    T* acc = summed + p * d;
    const T* first = grad + order[p] * d;
    for (int64_t k = 0; k < d; ++k) acc[k] = first[k];
    for (int64_t q = p + 1; q < m && sorted[q] == sorted[p]; ++q) {
      const T* g = grad + order[q] * d;
      for (int64_t k = 0; k < d; ++k) acc[k] += g[k];
    }
    row_adagrad_step(weight + sorted[p] * d, state + sorted[p], acc, d, lr, eps);
  }
};

template <typename T>
struct DenseAdagrad {
  T *p, *state;
  const T* g;
  T lr, eps;
  PBG_HD void operator()(int64_t i) const {
    const T st = state[i] + g[i] * g[i];
    state[i] = st;
    p[i] -= lr * g[i] / (sqrt(st) + eps);
  }
};

}  // namespace

template <typename T>
cudaError_t batch_edges(uint64_t seed, int64_t num_edges, int64_t first, int64_t n,
                        const int64_t* lhs, const int64_t* rhs, const int64_t* rel,
                        const T* weight, T relation_weight, int64_t* lhs_b, int64_t* rhs_b,
                        int64_t* rel_b, T* w_b, cudaStream_t stream) {
  const rng::Shuffle order(seed, static_cast<uint64_t>(num_edges));
  return detail::for_each_index(n, BatchEdges<T>{order, first, lhs, rhs, rel, weight,
                                                 relation_weight, lhs_b, rhs_b, rel_b, w_b},
                                stream);
}

cudaError_t uniform_draws(uint64_t seed, uint64_t purpose, int64_t batch, int64_t count,
                          int64_t n, int64_t* out, cudaStream_t stream) {
  const uint64_t key = rng::stream_key(seed, purpose, static_cast<uint64_t>(batch));
  return detail::for_each_index(count, UniformDraws{key, n, out}, stream);
}

template <typename T>
cudaError_t renorm_sorted_rows(T* emb, int64_t D, const int64_t* sorted, int64_t M, T max_norm,
                               cudaStream_t stream) {
  return detail::for_each_index(M, RenormHeads<T>{emb, D, sorted, max_norm}, stream);
}

template <typename T>
cudaError_t row_adagrad_sorted(T* weight, T* state, int64_t D, const T* grad,
                               const int64_t* sorted, const int64_t* order, int64_t M,
                               T* summed, T lr, T eps, cudaStream_t stream) {
  return detail::for_each_index(
      M, AdagradHeads<T>{weight, state, D, grad, sorted, order, M, summed, lr, eps}, stream);
}

template <typename T>
cudaError_t dense_adagrad(T* p, T* state, const T* g, int64_t n, T lr, T eps,
                          cudaStream_t stream) {
  return detail::for_each_index(n, DenseAdagrad<T>{p, state, g, lr, eps}, stream);
}

#define PBG_INSTANTIATE(T)                                                                      \
  template cudaError_t batch_edges<T>(uint64_t, int64_t, int64_t, int64_t, const int64_t*,      \
                                      const int64_t*, const int64_t*, const T*, T, int64_t*,    \
                                      int64_t*, int64_t*, T*, cudaStream_t);                    \
  template cudaError_t renorm_sorted_rows<T>(T*, int64_t, const int64_t*, int64_t, T,           \
                                             cudaStream_t);                                     \
  template cudaError_t row_adagrad_sorted<T>(T*, T*, int64_t, const T*, const int64_t*,         \
                                             const int64_t*, int64_t, T*, T, T, cudaStream_t);  \
  template cudaError_t dense_adagrad<T>(T*, T*, const T*, int64_t, T, T, cudaStream_t);
PBG_INSTANTIATE(float)
PBG_INSTANTIATE(double)
#undef PBG_INSTANTIATE

}  // namespace cuda
}  // namespace pbg
