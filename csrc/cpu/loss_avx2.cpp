// The chunk step's loss rows (loss_kernel.h) for AVX2 + FMA, compiled for that ISA whatever
// the build's -march: chosen at run time (loss_rows.cpp) only on a CPU that reports it.
#include <math.h>

#include <cstdint>

#include "../kernels/losses.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
// The same pinned code generation as gemm_avx2.cpp: generic tuning, no -fwrapv.
#pragma GCC target("avx2,fma,tune=generic")
#pragma GCC optimize("no-wrapv")
#include <immintrin.h>

namespace {

#include "simd_avx2.h"
#include "loss_kernel.h"

}  // namespace

namespace pbg {
namespace cpu {

double loss_rows_avx2(Loss loss, int64_t rows, int64_t n, const float* S, int64_t lds,
                      const float* pos, const float* weight, float margin, float neg_weight,
                      float* G, int64_t ldg, float* gpos, int64_t* violators) {
  return loss_rows_impl<Avx2>(loss, rows, n, S, lds, pos, weight, margin, neg_weight, G, ldg,
                            gpos, violators);
}

}  // namespace cpu
}  // namespace pbg

#pragma GCC pop_options
#endif
