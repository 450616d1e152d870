// CPU `train_bucket_`: trains one bucket (the edges between one lhs and one rhs partition) in
// place. `workers` std::threads take batches of a shuffled edge order from a shared counter and
// update the shared embedding tables HOGWILD-style: no locks on rows. Per batch: chunks of
// `chunk_size` edges, uniform negatives per chunk and side, the fused chunk step (both
// directions with dynamic relations), row-wise Adagrad on every touched row (gradients of a row
// summed over the batch first, as PBG coalesces its sparse gradient; each row stepped once no
// later chunk of the batch reads it), then element-wise Adagrad on the relation parameters and
// global embeddings. Python never sees a batch.
// Randomness is counter-based (kernels/counter_rng.h): the shuffle and each batch's negatives
// are functions of (seed, batch, index) alone, the same as in the CUDA op and the Python
// reference. With workers = 1 the result is a deterministic function of the seed; with more,
// only the HOGWILD interleaving of the updates varies.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "../kernels/adagrad.h"
#include "../kernels/comparators.h"
#include "../kernels/counter_rng.h"
#include "blas.h"
#include "chunk_step.h"
#include "dispatch.h"
#include "isa_dispatch.h"
#include "train_bucket_args.h"

namespace pbg {
namespace cpu {
namespace {

constexpr const char* kOp = "train_bucket_";

// Sums the gradient rows of one table over a batch (open addressing on the row id) and applies
// one row-Adagrad step per distinct row, right after the last chunk that uses it (plan). Dense
// mode (a table whose every row is a negative: all_negs) sums into a table-sized buffer instead
// and steps every row at the batch's end.
//
// The chunk step writes its gradient rows into one chunk's scratch (the worker's, reused by
// every chunk): a row that no later chunk uses is stepped straight from there; only a row that
// recurs in a later chunk (a few dozen per batch of 1000 power-law edges) keeps its sum in a
// row of `pool`. So the batch's gradients are not a batch-sized buffer streaming through the
// caches (1.6 MB per batch at d = 100, written once, read once) but a hot chunk-sized one.
template <typename T>
struct RowCoalescer {
  int64_t dim = 0;
  int64_t dense_rows = -1;     // >= 0: dense mode over this many rows
  std::vector<int64_t> table;  // slot -> index into rows, -1 empty
  std::vector<int64_t> rows;
  // Sparse mode: each distinct row's summed gradient (set by accumulate_step): the scratch row
  // of its first occurrence when its last chunk is that one, else a row of `pool`.
  std::vector<T*> sum_of;
  std::vector<T> pool;
  int64_t pool_used = 0;
  std::vector<T> sums;  // dense mode
  mutable std::vector<T> scales;  // apply's per-row step sizes
  void reset_dense(int64_t n, int64_t d) {
    dim = d;
    dense_rows = n;
    sums.assign(n * d, T(0));
  }
  void add_dense(const T* g) {  // g: [dense_rows, dim]
    for (int64_t k = 0; k < dense_rows * dim; ++k) sums[k] += g[k];
  }
  void reset(int64_t max_rows, int64_t d) {
    dim = d;
    dense_rows = -1;
    int64_t cap = 16;
    while (cap < 2 * max_rows) cap <<= 1;
    table.assign(cap, -1);
    rows.clear();
    sum_of.clear();
    pool_used = 0;
    occ.clear();
    first.clear();
    occ_end.clear();
    last.clear();
  }
  bool dense() const { return dense_rows >= 0; }
  // Dense mode: a gradient row of table row `row` into its sum.
  void add(int64_t row, const T* g) { axpy(g, sums.data() + row * dim); }
  // Sparse mode: the slot of `row`, new if the batch has not seen it yet.
  int64_t find(int64_t row) {
    const uint64_t mask = table.size() - 1;
    uint64_t h = (static_cast<uint64_t>(row) * 0x9e3779b97f4a7c15ULL) >> 20;
    while (true) {
      int64_t& slot = table[h & mask];
      if (slot < 0) {
        slot = static_cast<int64_t>(rows.size());
        rows.push_back(row);
        sum_of.push_back(nullptr);
        return slot;
      }
      if (rows[slot] == row) return slot;
      ++h;
    }
  }

  // Stepping each row right after the last chunk that uses it (sparse mode), while its row is
  // still in cache from that chunk's gather, instead of all at the batch's end: the batch's
  // occurrences are planned up front, step by step (a step: one direction's chunk), in the
  // order the chunk's gradient rows are summed (g: where the chunk writes that gradient row,
  // valid from the chunk's end until the next chunk of its direction). Exact: no later chunk of
  // the batch reads a stepped row, and each row's gradient is the same sum, in the same order,
  // as if every row were stepped at the batch's end (one worker: bit for bit; bench: 1.09x the
  // bucket op with one worker on a Zen 3, 1.11x with two).
  struct Occurrence {
    int64_t slot;
    T* g;
  };
  std::vector<Occurrence> occ;
  std::vector<int64_t> occ_end;  // occurrences of step s: [occ_end[s - 1], occ_end[s])
  std::vector<int64_t> first;    // per slot, the first step using it
  std::vector<int64_t> last;     // per slot, the last step using it
  std::vector<int64_t> due;      // slots by last step
  std::vector<int64_t> due_end;  // slots due after step s: [due_end[s - 1], due_end[s])
  std::vector<int64_t> due_at;   // plan_done's scratch, kept across batches
  void plan(int64_t row, T* g) {
    const int64_t slot = find(row);
    const int64_t step = static_cast<int64_t>(occ_end.size());
    if (slot == static_cast<int64_t>(last.size())) {
      first.push_back(step);
      last.push_back(step);
    }
    last[slot] = step;
    occ.push_back({slot, g});
  }
  void plan_end_step() { occ_end.push_back(static_cast<int64_t>(occ.size())); }
  void plan_done() {  // slots sorted by last step (counting sort); the pool sized
    int64_t recurring = 0;
    for (size_t slot = 0; slot < last.size(); ++slot) recurring += first[slot] != last[slot];
    if (static_cast<int64_t>(pool.size()) < recurring * dim) pool.resize(recurring * dim);
    const size_t steps = occ_end.size();
    due_end.assign(steps, 0);
    for (int64_t l : last) ++due_end[l];
    for (size_t s = 1; s < steps; ++s) due_end[s] += due_end[s - 1];
    due.resize(last.size());
    due_at.assign(steps, 0);
    for (size_t s = 1; s < steps; ++s) due_at[s] = due_end[s - 1];
    for (size_t slot = 0; slot < last.size(); ++slot) due[due_at[last[slot]]++] = slot;
  }
  // After step s's chunk wrote its gradient rows: each into its row's sum. A row's first
  // occurrence starts the sum: in place when the row is due after this step, else copied into a
  // pool row that later occurrences add into (the same additions, in the same order, as summing
  // into the first occurrence's row).
  void accumulate_step(int64_t s) {
    for (int64_t k = s ? occ_end[s - 1] : 0; k < occ_end[s]; ++k) {
      const int64_t slot = occ[k].slot;
      T*& sum = sum_of[slot];
      if (sum != nullptr) {
        axpy(occ[k].g, sum);
      } else if (last[slot] == s) {
        sum = occ[k].g;
      } else {
        sum = pool.data() + pool_used * dim;
        ++pool_used;
        std::copy(occ[k].g, occ[k].g + dim, sum);
      }
    }
  }
  // The states of the rows due after step s: prefetched before its chunk runs.
  void prefetch_due_states(int64_t s, const T* state) const {
    for (int64_t k = s ? due_end[s - 1] : 0; k < due_end[s]; ++k)
      __builtin_prefetch(state + rows[due[k]], 1);
  }
  void axpy(const T* g, T* s) const {
    for (int64_t k = 0; k < dim; ++k) s[k] += g[k];
  }
  // Row Adagrad: dense mode, every row (s unused); sparse mode, the rows due after step s (see
  // plan). For fp32, one version per ISA (isa_dispatch.h).
  void apply(T* emb, T* state, T lr, T eps, int64_t s = 0) const {
#ifdef PBG_ISA_VERSIONS
    if constexpr (std::is_same_v<T, float>) {
      switch (isa_level()) {
        case GemmIsa::Avx512: return apply_v4(emb, state, lr, eps, s);
        case GemmIsa::Avx2: return apply_v3(emb, state, lr, eps, s);
        default: break;
      }
    }
#endif
    apply_body(emb, state, lr, eps, s);
  }
#ifdef PBG_ISA_VERSIONS
  PBG_TARGET_V4 void apply_v4(T* emb, T* state, T lr, T eps, int64_t s) const {
    apply_body(emb, state, lr, eps, s);
  }
  PBG_TARGET_V3 void apply_v3(T* emb, T* state, T lr, T eps, int64_t s) const {
    apply_body(emb, state, lr, eps, s);
  }
#endif
  __attribute__((always_inline)) inline void apply_body(T* emb, T* state, T lr, T eps,
                                                        int64_t s) const {
    if (dense_rows >= 0) {
      for (int64_t r = 0; r < dense_rows; ++r)
        row_adagrad_step(emb + r * dim, state + r, sums.data() + r * dim, dim, lr, eps);
      return;
    }
    const int64_t begin = s ? due_end[s - 1] : 0;
    const int64_t* slots = due.data() + begin;
    const size_t n = static_cast<size_t>(due_end[s] - begin);
    // The rows are random accesses into big tables. Two passes: every row's state first (one
    // line each, prefetched far ahead, so many misses overlap; after a step, prefetched before
    // its chunk), then the rows themselves (prefetched a few rows ahead, see gather_rows), last
    // first.
    scales.resize(n);
    constexpr size_t state_ahead = 32, row_ahead = 8;
    for (size_t i = 0; i < std::min(state_ahead, n); ++i)
      __builtin_prefetch(state + rows[slots[i]], 1);
    for (size_t i = 0; i < n; ++i) {
      if (i + state_ahead < n) __builtin_prefetch(state + rows[slots[i + state_ahead]], 1);
      scales[i] = row_adagrad_state(state + rows[slots[i]], sum_of[slots[i]], dim, lr, eps);
    }
    auto prefetch = [&](size_t i) {
      const char* p = reinterpret_cast<const char*>(emb + rows[slots[i]] * dim);
      for (int64_t b = 0; b < dim * int64_t(sizeof(T)); b += 64) __builtin_prefetch(p + b, 1);
    };
    for (size_t i = n; i-- > 0 && i + row_ahead >= n;) prefetch(i);
    for (size_t i = n; i-- > 0;) {
      if (i >= row_ahead) prefetch(i - row_ahead);
      row_adagrad_apply(emb + rows[slots[i]] * dim, sum_of[slots[i]], dim, scales[i]);
    }
  }
};

// Element-wise Adagrad (torch.optim.Adagrad, as PBG uses for relation parameters and global
// embeddings): state += g^2; p -= lr * g / (sqrt(state) + eps).
template <typename T>
void dense_adagrad(T* p, T* state, const T* g, int64_t n, T lr, T eps) {
  for (int64_t k = 0; k < n; ++k) {
    state[k] += g[k] * g[k];
    p[k] -= lr * g[k] / (std::sqrt(state[k]) + eps);
  }
}

template <typename T>
struct Shared {
  // tables
  T *lhs_emb, *lhs_state, *rhs_emb, *rhs_state;
  int64_t n_lhs, n_rhs, dim;
  bool same_table;  // lhs and rhs are the same tensor (same type and partition)
  T *rhs_op, *rhs_op_state, *lhs_op, *lhs_op_state;
  int64_t num_rels, num_params;
  T *lhs_glob, *lhs_glob_state, *rhs_glob, *rhs_glob_state;  // null when global_emb is off
  // edges
  const int64_t *lhs, *rhs, *rel;
  const T* weight;
  const int32_t* perm32;  // the shuffled edge order: 32-bit when it fits (half the memory)
  const int64_t* perm64;
  int64_t num_edges;
  // config
  int64_t batch_size, chunk_size;
  int64_t num_uniform_lhs, num_uniform_rhs;  // 0 on a disabled side (PBG's Negatives.NONE)
  NegMode lhs_mode, rhs_mode;  // All: every row of the side's table (all_negs)
  bool dynamic;
  Comparator cmp;
  Operator op;
  Loss loss;
  T margin, lr, relation_lr, relation_weight, reg_coef;
  T max_norm;  // > 0: PBG's max_norm (rows renormalised in place when looked up)
  bool bf16_products;  // precision 'bf16' (ChunkConfig)
};

// PBG's max_norm (torch.embedding_renorm_, as F.embedding(max_norm=...) does on lookup): a row
// whose norm exceeds max_norm is scaled in place to max_norm / (norm + 1e-7) of itself.
template <typename T>
inline void renorm_row(T* w, int64_t d, T max_norm) {
  const T norm = std::sqrt(squared_norm(w, d));
  if (norm > max_norm) {
    const T scale = max_norm / (norm + T(1e-7));
    for (int64_t k = 0; k < d; ++k) w[k] *= scale;
  }
}

// all_negs: one table as every chunk's negatives. Prepared once per batch (global vector and the
// comparator's prepare), with dL/d(prepared rows) collected over the batch's chunks and, at the
// end, taken back through the prepare into the table's dense coalescer.
template <typename T>
struct AllTable {
  const T* emb;
  int64_t rows;
  const T* global;       // or null
  int64_t global_slot;   // offset of this table's global gradient in the worker's g_glob
  RowCoalescer<T>* sink;
  std::vector<T> buf, aux, grad;
  const T* prepared = nullptr;

  void prepare(Comparator cmp, int64_t d) {
    prepared = prepare_all_table<T>(cmp, emb, d, rows, d, global, buf, aux);
    grad.assign(rows * d, T(0));
  }
  void finish(Comparator cmp, int64_t d, T* g_glob) {
    prepare_all_table_backward<T>(cmp, prepared, aux.data(), grad.data(), rows, d,
                                  global ? g_glob + global_slot : nullptr);
    sink->add_dense(grad.data());
  }
};

struct WorkerStats {
  double loss = 0;
  int64_t lhs_viol = 0, rhs_viol = 0, count = 0;
};

template <typename T>
void worker_loop(const Shared<T>& sh, std::atomic<int64_t>& next_batch, uint64_t seed,
                 WorkerStats& st) {
  blas_single_thread_in_this_thread();
  const int64_t D = sh.dim, Bmax = sh.batch_size, cs = sh.chunk_size;
  const int64_t Cmax = (Bmax + cs - 1) / cs;
  const int64_t U = std::max(sh.num_uniform_lhs, sh.num_uniform_rhs);
  const int64_t R = sh.num_rels, K = sh.num_params;
  std::vector<int64_t> lhs_idx(Bmax), rhs_idx(Bmax), rel_idx(Bmax);
  std::vector<T> wts(Bmax);
  std::vector<int64_t> lhs_uni(Cmax * U), rhs_uni(Cmax * U);
  // One chunk's gradient rows per direction, [positives | uniform negatives], contiguous, so the
  // chunk step writes them in place; every chunk of the direction reuses them (RowCoalescer).
  std::vector<T> g_src_buf[2], g_dst_buf[2];
  for (int d = 0; d < (sh.dynamic ? 2 : 1); ++d) {
    g_src_buf[d].resize((cs + U) * D);
    g_dst_buf[d].resize((cs + U) * D);
  }
  std::vector<T> g_rhs_op(R * K), g_lhs_op(sh.dynamic ? R * K : 0);
  std::vector<T> g_glob(2 * D);
  std::vector<char> rel_touched(R, 0);
  std::vector<int64_t> touched_rels;
  RowCoalescer<T> co_lhs, co_rhs;
  ChunkWorkspace<T> ws;
  // all_negs: the tables whose every row is a side's negative (one, if both sides share it).
  const bool lhs_all = sh.lhs_mode == NegMode::All, rhs_all = sh.rhs_mode == NegMode::All;
  RowCoalescer<T>& co_rhs_table = sh.same_table ? co_lhs : co_rhs;
  AllTable<T> all_lhs{sh.lhs_emb, sh.n_lhs, sh.lhs_glob, 0, &co_lhs};
  AllTable<T> all_rhs{sh.rhs_emb, sh.n_rhs, sh.rhs_glob, D, &co_rhs_table};
  AllTable<T>* lhs_tab = lhs_all ? &all_lhs : nullptr;
  AllTable<T>* rhs_tab = !rhs_all ? nullptr : (sh.same_table && lhs_all) ? &all_lhs : &all_rhs;
  // A table that is some side's 'all' negatives takes its whole batch gradient densely.
  const bool lhs_dense = lhs_all || (sh.same_table && rhs_all);
  const bool rhs_dense = rhs_all || (sh.same_table && lhs_all);
  const int64_t num_batches = (sh.num_edges + Bmax - 1) / Bmax;
  const T eps = T(1e-10);

  while (true) {
    const int64_t b = next_batch.fetch_add(1);
    if (b >= num_batches) break;
    const int64_t e0 = b * Bmax, n = std::min(Bmax, sh.num_edges - e0);
    const int64_t C = (n + cs - 1) / cs;
    for (int64_t i = 0; i < n; ++i) {
      if (i + 16 < n) {  // the edge arrays are read in shuffled order: prefetch ahead
        const int64_t ea = sh.perm32 ? sh.perm32[e0 + i + 16] : sh.perm64[e0 + i + 16];
        __builtin_prefetch(sh.lhs + ea);
        __builtin_prefetch(sh.rhs + ea);
        if (sh.rel) __builtin_prefetch(sh.rel + ea);
      }
      const int64_t e = sh.perm32 ? sh.perm32[e0 + i] : sh.perm64[e0 + i];
      lhs_idx[i] = sh.lhs[e];
      rhs_idx[i] = sh.rhs[e];
      rel_idx[i] = sh.rel ? sh.rel[e] : 0;
      wts[i] = sh.relation_weight * (sh.weight ? sh.weight[e] : T(1));
    }
    const int64_t Ul = sh.num_uniform_lhs, Ur = sh.num_uniform_rhs;
    {  // batch b's negatives: chunk c's k-th of a side is that stream's draw c * U + k
      const uint64_t kl = rng::stream_key(seed, rng::kLhsNegatives, b);
      const uint64_t kr = rng::stream_key(seed, rng::kRhsNegatives, b);
      for (int64_t k = 0; k < C * Ul; ++k) lhs_uni[k] = rng::below(rng::draw(kl, k), sh.n_lhs);
      for (int64_t k = 0; k < C * Ur; ++k) rhs_uni[k] = rng::below(rng::draw(kr, k), sh.n_rhs);
    }
    if (sh.max_norm > 0) {  // every row this batch looks up, before the chunks read them
      // A dense table is looked up whole; otherwise the positives' and uniform rows.
      auto rn = [&](T* table, bool whole, int64_t rows, const int64_t* pos, const int64_t* uni,
                    int64_t nuni) {
        if (whole) {
          for (int64_t r = 0; r < rows; ++r) renorm_row(table + r * D, D, sh.max_norm);
          return;
        }
        for (int64_t i = 0; i < n; ++i) renorm_row(table + pos[i] * D, D, sh.max_norm);
        for (int64_t k = 0; k < nuni; ++k) renorm_row(table + uni[k] * D, D, sh.max_norm);
      };
      rn(sh.lhs_emb, lhs_dense, sh.n_lhs, lhs_idx.data(), lhs_uni.data(), C * Ul);
      if (!(sh.same_table && rhs_dense))  // a shared dense table was renormalised just above
        rn(sh.rhs_emb, rhs_dense, sh.n_rhs, rhs_idx.data(), rhs_uni.data(), C * Ur);
    }
    // Relations touched by this batch: their gradient slots are zeroed, then stepped.
    touched_rels.clear();
    for (int64_t i = 0; i < n; ++i)
      if (!rel_touched[rel_idx[i]]) {
        rel_touched[rel_idx[i]] = 1;
        touched_rels.push_back(rel_idx[i]);
      }
    for (int64_t r : touched_rels) {
      std::fill(g_rhs_op.begin() + r * K, g_rhs_op.begin() + (r + 1) * K, T(0));
      if (sh.dynamic) std::fill(g_lhs_op.begin() + r * K, g_lhs_op.begin() + (r + 1) * K, T(0));
    }
    std::fill(g_glob.begin(), g_glob.end(), T(0));
    const int64_t max_rows = 2 * (n + C * U);
    if (sh.same_table) {
      if (lhs_dense) co_lhs.reset_dense(sh.n_lhs, D); else co_lhs.reset(2 * max_rows, D);
    } else {
      if (lhs_dense) co_lhs.reset_dense(sh.n_lhs, D); else co_lhs.reset(max_rows, D);
      if (rhs_dense) co_rhs.reset_dense(sh.n_rhs, D); else co_rhs.reset(max_rows, D);
    }
    if (lhs_tab) lhs_tab->prepare(sh.cmp, D);
    if (rhs_tab && rhs_tab != lhs_tab) rhs_tab->prepare(sh.cmp, D);
    RowCoalescer<T>& to_lhs = co_lhs;
    RowCoalescer<T>& to_rhs = co_rhs_table;
    // The tables' distinct coalescers (one when both sides share a table), with their tables.
    struct Sink {
      RowCoalescer<T>* co;
      T *emb, *state;
    };
    Sink sinks[2] = {{&co_lhs, sh.lhs_emb, sh.lhs_state}, {&co_rhs, sh.rhs_emb, sh.rhs_state}};
    const int nsinks = sh.same_table ? 1 : 2;

    // One direction's view of the batch: src rows -> src table, dst rows -> dst table.
    struct Dir {
      const int64_t *sidx, *didx, *suni, *duni;
      int64_t Us, Ud;
      T *g_src, *g_dst;
      RowCoalescer<T> *to_src, *to_dst;
    };
    auto dir_of = [&](bool reversed) {
      Dir d;
      d.sidx = reversed ? rhs_idx.data() : lhs_idx.data();
      d.didx = reversed ? lhs_idx.data() : rhs_idx.data();
      d.suni = reversed ? rhs_uni.data() : lhs_uni.data();
      d.duni = reversed ? lhs_uni.data() : rhs_uni.data();
      d.Us = sh.dynamic ? (reversed ? Ur : Ul) : Ul;  // dynamic: each direction samples its src
      d.Ud = sh.dynamic ? 0 : Ur;
      d.g_src = g_src_buf[reversed].data();
      d.g_dst = g_dst_buf[reversed].data();
      d.to_src = reversed ? &to_rhs : &to_lhs;
      d.to_dst = reversed ? &to_lhs : &to_rhs;
      return d;
    };
    // Chunk c of a direction: its first edge, its edges, and its gradient rows ([P | Us] src
    // rows, [P | Ud] dst rows, contiguous in the direction's chunk scratch).
    struct Span {
      int64_t b0, P;
      T *gs, *gd;
    };
    auto span_of = [&](const Dir& d, int64_t c) {
      const int64_t b0 = c * cs;
      return Span{b0, std::min(cs, n - b0), d.g_src, d.g_dst};
    };
    // Chunk c's gradient rows in the order they are summed: src positives and uniforms, then
    // dst positives and uniforms; fn(coalescer, row, gradient row).
    auto chunk_rows = [&](const Dir& d, int64_t c, auto&& fn) {
      const auto [b0, P, gs, gd] = span_of(d, c);
      for (int64_t i = 0; i < P; ++i) fn(*d.to_src, d.sidx[b0 + i], gs + i * D);
      for (int64_t k = 0; k < d.Us; ++k) fn(*d.to_src, d.suni[c * d.Us + k], gs + (P + k) * D);
      for (int64_t i = 0; i < P; ++i) fn(*d.to_dst, d.didx[b0 + i], gd + i * D);
      for (int64_t k = 0; k < d.Ud; ++k) fn(*d.to_dst, d.duni[c * d.Ud + k], gd + (P + k) * D);
    };
    // Sparse tables step each row right after the last chunk using it (RowCoalescer::plan):
    // the steps are direction 0's chunks, then direction 1's.
    const int ndirs = sh.dynamic ? 2 : 1;
    for (int r = 0; r < ndirs; ++r) {
      const Dir d = dir_of(r == 1);
      for (int64_t c = 0; c < C; ++c) {
        chunk_rows(d, c, [](RowCoalescer<T>& co, int64_t row, T* g) {
          if (!co.dense()) co.plan(row, g);
        });
        for (int k = 0; k < nsinks; ++k)
          if (!sinks[k].co->dense()) sinks[k].co->plan_end_step();
      }
    }
    for (int k = 0; k < nsinks; ++k)
      if (!sinks[k].co->dense()) sinks[k].co->plan_done();

    // One direction over all chunks of the batch.
    auto direction = [&](bool reversed) {
      const Dir d = dir_of(reversed);
      const T* src_emb = reversed ? sh.rhs_emb : sh.lhs_emb;
      const T* dst_emb = reversed ? sh.lhs_emb : sh.rhs_emb;
      NegMode smode, dmode;
      if (sh.dynamic) {  // each direction samples its src side only
        smode = reversed ? sh.rhs_mode : sh.lhs_mode;
        dmode = NegMode::Skip;
      } else {
        smode = sh.lhs_mode;
        dmode = sh.rhs_mode;
      }
      T* op = reversed ? sh.lhs_op : sh.rhs_op;
      T* gop = reversed ? g_lhs_op.data() : g_rhs_op.data();
      const T* sglob = reversed ? sh.rhs_glob : sh.lhs_glob;
      const T* dglob = reversed ? sh.lhs_glob : sh.rhs_glob;
      T* g_sglob = sglob ? g_glob.data() + (reversed ? D : 0) : nullptr;
      T* g_dglob = dglob ? g_glob.data() + (reversed ? 0 : D) : nullptr;
      ChunkTables<T> tables{src_emb, D, dst_emb, D, op, K, D, sglob, dglob};
      T *g_src_all = nullptr, *g_dst_all = nullptr;
      auto set_all = [](AllTable<T>* tab, const T*& rows, const T*& aux, int64_t& count, T*& g) {
        rows = tab->prepared;
        aux = tab->aux.data();
        count = tab->rows;
        g = tab->grad.data();
      };
      if (smode == NegMode::All)
        set_all(reversed ? rhs_tab : lhs_tab, tables.src_all, tables.src_all_aux,
                tables.n_src_all, g_src_all);
      if (dmode == NegMode::All)
        set_all(reversed ? lhs_tab : rhs_tab, tables.dst_all, tables.dst_all_aux,
                tables.n_dst_all, g_dst_all);
      ChunkConfig<T> cfg{smode, dmode, cs, sh.margin, sh.reg_coef, sh.bf16_products};
      for (int64_t c = 0; c < C; ++c) {
        const int64_t step = (reversed ? C : 0) + c;
        for (int k = 0; k < nsinks; ++k)
          if (!sinks[k].co->dense()) sinks[k].co->prefetch_due_states(step, sinks[k].state);
        const auto [b0, P, gs, gd] = span_of(d, c);
        ChunkInput in{d.sidx + b0, d.didx + b0, rel_idx.data() + b0, P, d.suni + c * d.Us, d.Us,
                      d.duni + c * d.Ud, d.Ud};
        ChunkGrads<T> out{gs, gs + P * D, gd, gd + P * D, gop, g_sglob, g_dglob, g_src_all,
                          g_dst_all};
        const ChunkStats cst =
            chunk_step_one<T>(sh.cmp, sh.op, sh.loss, tables, cfg, in, wts.data() + b0, out, ws);
        st.loss += cst.loss;
        (reversed ? st.rhs_viol : st.lhs_viol) += cst.src_violators;
        (reversed ? st.lhs_viol : st.rhs_viol) += cst.dst_violators;
        // The chunk's gradient rows: into the dense tables' sums; for sparse tables, into their
        // rows' sums (accumulate_step), and the rows no later chunk uses, stepped (HOGWILD,
        // into the tables).
        chunk_rows(d, c, [](RowCoalescer<T>& co, int64_t row, T* g) {
          if (co.dense()) co.add(row, g);
        });
        for (int k = 0; k < nsinks; ++k) {
          if (sinks[k].co->dense()) continue;
          sinks[k].co->accumulate_step(step);
          sinks[k].co->apply(sinks[k].emb, sinks[k].state, sh.lr, eps, step);
        }
      }
    };
    direction(false);
    if (sh.dynamic) direction(true);
    // all_negs: the negatives' share, back through the prepare, into the tables' gradients.
    if (lhs_tab) lhs_tab->finish(sh.cmp, D, g_glob.data());
    if (rhs_tab && rhs_tab != lhs_tab) rhs_tab->finish(sh.cmp, D, g_glob.data());

    // Updates, HOGWILD: straight into the shared tables (the sparse ones' rows are done).
    for (int k = 0; k < nsinks; ++k)
      if (sinks[k].co->dense()) sinks[k].co->apply(sinks[k].emb, sinks[k].state, sh.lr, eps);
    for (int64_t r : touched_rels) {
      rel_touched[r] = 0;
      if (K == 0) continue;
      dense_adagrad(sh.rhs_op + r * K, sh.rhs_op_state + r * K, g_rhs_op.data() + r * K, K,
                    sh.relation_lr, eps);
      if (sh.dynamic)
        dense_adagrad(sh.lhs_op + r * K, sh.lhs_op_state + r * K, g_lhs_op.data() + r * K, K,
                      sh.relation_lr, eps);
    }
    if (sh.lhs_glob) {
      if (sh.same_table || sh.lhs_glob == sh.rhs_glob) {
        for (int64_t k = 0; k < D; ++k) g_glob[k] += g_glob[D + k];
        dense_adagrad(sh.lhs_glob, sh.lhs_glob_state, g_glob.data(), D, sh.relation_lr, eps);
      } else {
        dense_adagrad(sh.lhs_glob, sh.lhs_glob_state, g_glob.data(), D, sh.relation_lr, eps);
        dense_adagrad(sh.rhs_glob, sh.rhs_glob_state, g_glob.data() + D, D, sh.relation_lr, eps);
      }
    }
    st.count += n;
  }
}

at::Tensor train_bucket_cpu(PBG_TRAIN_BUCKET_PARAMS) {
  const auto t0 = std::chrono::steady_clock::now();
  const TrainBucketPlan plan = check_train_bucket(PBG_TRAIN_BUCKET_ARGS, c10::DeviceType::CPU);
  cpu::check_cpu_precision(plan.precision, "train_bucket_");
  const Comparator cmp = plan.cmp;
  const Operator op = plan.op;
  const Loss loss = plan.loss;
  const int64_t D = plan.D, K = plan.K, R = plan.R, E = plan.E;
  const bool glob = plan.glob;
  const NegMode base = plan.base;
  const int64_t chunk = plan.chunk, num_uniform = plan.num_uniform;
  const at::Tensor& w = plan.weight;
  auto lhs_i = lhs.contiguous(), rhs_i = rhs.contiguous(), rel_i = rel.contiguous();
  auto out = at::zeros({5}, lhs_emb.options().dtype(at::kDouble));
  if (E == 0) return out;

  // The shuffled edge order: position i holds edge Shuffle(seed)(i), materialised once so the
  // workers can prefetch the edges ahead.
  std::vector<int32_t> perm32;
  std::vector<int64_t> perm64;
  const rng::Shuffle order(static_cast<uint64_t>(seed), static_cast<uint64_t>(E));
  auto shuffle = [&](auto& perm) {
    using I = typename std::decay_t<decltype(perm)>::value_type;
    perm.resize(E);
    at::parallel_for(0, E, 1 << 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) perm[i] = static_cast<I>(order(static_cast<uint64_t>(i)));
    });
  };
  if (E <= INT32_MAX) shuffle(perm32); else shuffle(perm64);

  const int64_t nworkers = std::min<int64_t>(workers, (E + batch_size - 1) / batch_size);
  std::vector<WorkerStats> stats(nworkers);
  AT_DISPATCH_FLOATING_TYPES(lhs_emb.scalar_type(), kOp, [&] {
    using T = scalar_t;
    auto ptr = [](at::Tensor& t) { return t.numel() ? t.data_ptr<T>() : nullptr; };
    Shared<T> sh{ptr(lhs_emb), ptr(lhs_state), ptr(rhs_emb), ptr(rhs_state), lhs_emb.size(0),
                 rhs_emb.size(0), D, lhs_emb.data_ptr() == rhs_emb.data_ptr(),
                 ptr(rhs_op_params), ptr(rhs_op_state), ptr(lhs_op_params), ptr(lhs_op_state), R,
                 K, glob ? ptr(lhs_global) : nullptr, glob ? ptr(lhs_global_state) : nullptr,
                 glob ? ptr(rhs_global) : nullptr, glob ? ptr(rhs_global_state) : nullptr,
                 lhs_i.data_ptr<int64_t>(), rhs_i.data_ptr<int64_t>(),
                 rel_i.numel() ? rel_i.data_ptr<int64_t>() : nullptr,
                 w.defined() ? w.data_ptr<T>() : nullptr, perm32.empty() ? nullptr : perm32.data(),
                 perm64.empty() ? nullptr : perm64.data(), E, batch_size, chunk,
                 disable_lhs_negs ? 0 : num_uniform, disable_rhs_negs ? 0 : num_uniform,
                 disable_lhs_negs ? NegMode::Uniform : base,
                 disable_rhs_negs ? NegMode::Uniform : base, dynamic, cmp, op, loss,
                 static_cast<T>(margin), static_cast<T>(lr), static_cast<T>(relation_lr),
                 static_cast<T>(relation_weight), static_cast<T>(reg_coef),
                 static_cast<T>(max_norm), plan.precision == Precision::BF16};
    std::atomic<int64_t> next_batch{0};
    std::vector<std::thread> threads;
    auto run = [&](int64_t w_id) {
      worker_loop<T>(sh, next_batch, static_cast<uint64_t>(seed), stats[w_id]);
    };
    for (int64_t t = 1; t < nworkers; ++t) threads.emplace_back(run, t);
    run(0);
    for (auto& th : threads) th.join();
  });
  double total_loss = 0;
  int64_t lv = 0, rv = 0, count = 0;
  for (const auto& s : stats) {
    total_loss += s.loss;
    lv += s.lhs_viol;
    rv += s.rhs_viol;
    count += s.count;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto acc = out.accessor<double, 1>();
  acc[0] = total_loss;
  acc[1] = static_cast<double>(lv);
  acc[2] = static_cast<double>(rv);
  acc[3] = static_cast<double>(count);
  acc[4] = secs;
  return out;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) { m.impl("train_bucket_", &cpu::train_bucket_cpu); }

}  // namespace pbg
