// The loss pass over a block of score rows on the CPU: the chunk step's (and the loss op's),
// in fp32 on our per-ISA kernels (loss_kernel.h: AVX2, AVX-512) or the generic loss_row
// (kernels/losses.h, the portable C++ every backend shares), in fp64 on the generic one.
#pragma once

#include <cstdint>
#include <cstring>

#include "../kernels/common.h"
#include "../kernels/losses.h"
#include "blas.h"

namespace pbg {
namespace cpu {

// For rows i < rows of S (stride lds) with positives pos[i] and weights (null: all 1):
// G[i, :n] = dL/dS[i, :n] (stride ldg; G may be S when ldg == lds), gpos[i] += dL/dpos[i], and
// *violators += #{j: S[i, j] > pos[i]}. Returns the sum of the rows' weighted losses: PBG's
// `loss`, with ranking's `margin` and logistic's `neg_weight` (1 / the negatives PBG counts),
// as loss_row. `isa`: Avx2 / Avx512 run our kernel for that ISA (one the CPU lacks runs the
// best it has below it), Blas the generic pass below. NaN scores give a NaN loss and NaN
// gradients with logistic and softmax; ranking's hinge reads a NaN as inactive (as loss_row
// does).
double loss_rows(Loss loss, GemmIsa isa, int64_t rows, int64_t n, const float* S, int64_t lds,
                 const float* pos, const float* weight, float margin, float neg_weight, float* G,
                 int64_t ldg, float* gpos, int64_t* violators);

// The generic pass, in any precision: the violators counted, the scores copied into G, then
// loss_row on each row. fp32's fallback, and every fp64 loss pass. Always inlined, so that it
// is compiled for the caller's ISA (isa_dispatch.h).
template <Loss L, typename T>
__attribute__((always_inline)) inline double generic_rows(int64_t rows, int64_t n, const T* S,
                                                          int64_t lds, const T* pos,
                                                          const T* weight, T margin,
                                                          T neg_weight, T* G, int64_t ldg,
                                                          T* gpos, int64_t* violators) {
  double loss = 0.0;
  int64_t viol = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const T* s = S + i * lds;
    T* g = G + i * ldg;
    for (int64_t j = 0; j < n; ++j) viol += s[j] > pos[i];
    if (g != s) std::memcpy(g, s, n * sizeof(T));
    loss += loss_row<L, T, FastMath>(pos[i], g, n, weight ? weight[i] : T(1), margin, neg_weight,
                                     &gpos[i]);
  }
  *violators += viol;
  return loss;
}

template <typename T>
__attribute__((always_inline)) inline double loss_rows_generic(
    Loss loss, int64_t rows, int64_t n, const T* S, int64_t lds, const T* pos, const T* weight,
    T margin, T neg_weight, T* G, int64_t ldg, T* gpos, int64_t* violators) {
  switch (loss) {
    case Loss::Ranking:
      return generic_rows<Loss::Ranking>(rows, n, S, lds, pos, weight, margin, neg_weight, G,
                                         ldg, gpos, violators);
    case Loss::Logistic:
      return generic_rows<Loss::Logistic>(rows, n, S, lds, pos, weight, margin, neg_weight, G,
                                          ldg, gpos, violators);
    default:
      return generic_rows<Loss::Softmax>(rows, n, S, lds, pos, weight, margin, neg_weight, G,
                                         ldg, gpos, violators);
  }
}

// fp64 (no per-ISA kernel): the generic pass, whatever `isa`.
__attribute__((always_inline)) inline double loss_rows(
    Loss loss, GemmIsa /*isa*/, int64_t rows, int64_t n, const double* S, int64_t lds,
    const double* pos, const double* weight, double margin, double neg_weight, double* G,
    int64_t ldg, double* gpos, int64_t* violators) {
  return loss_rows_generic(loss, rows, n, S, lds, pos, weight, margin, neg_weight, G, ldg, gpos,
                           violators);
}

}  // namespace cpu
}  // namespace pbg
