// The loss pass over a block of score rows on the CPU, fp32: the chunk step's (and the loss
// op's), on our per-ISA kernels (loss_kernel.h: AVX2, AVX-512) or the generic loss_row
// (kernels/losses.h, the portable C++ every backend shares).
#pragma once

#include <cstdint>

#include "../kernels/common.h"
#include "blas.h"

namespace pbg {
namespace cpu {

// For rows i < rows of S (stride lds) with positives pos[i] and weights (null: all 1):
// G[i, :n] = dL/dS[i, :n] (stride ldg; G may be S when ldg == lds), gpos[i] += dL/dpos[i], and *violators +=
// #{j: S[i, j] > pos[i]}. Returns the sum of the rows' weighted losses: PBG's `loss`, with
// ranking's `margin` and logistic's `neg_weight` (1 / the negatives PBG counts), as loss_row.
// `isa`: Avx2 / Avx512 run our kernel for that ISA (one the CPU lacks runs the best it has
// below it), Blas the generic loss_row. NaN scores give a NaN loss and NaN gradients with
// logistic and softmax; ranking's hinge reads a NaN as inactive (as loss_row does).
double loss_rows(Loss loss, GemmIsa isa, int64_t rows, int64_t n, const float* S, int64_t lds,
                 const float* pos, const float* weight, float margin, float neg_weight, float* G,
                 int64_t ldg, float* gpos, int64_t* violators);

}  // namespace cpu
}  // namespace pbg
