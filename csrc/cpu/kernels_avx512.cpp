// The chunk step's hand-vectorised kernels for AVX-512 (F + VL + DQ + BW; Skylake-SP, Ice
// Lake, Zen 4 and later): the GEMM (gemm_kernel.h: 12 x 32 tiles, 24 zmm accumulators, 2 for
// B, 1 broadcast), the loss pass (loss_kernel.h) and the in-chunk transposes
// (transpose_kernel.h), compiled for that ISA whatever the build's -march, over simd_avx512.h;
// chosen at run time (blas.cpp, loss_rows.cpp, transpose.cpp) only on a CPU that reports it.
#include <math.h>

#include <cstdint>

#include "../kernels/losses.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,fma,avx2")
#include <immintrin.h>

namespace {

#include "simd_avx512.h"
#include "gemm_kernel.h"
#include "loss_kernel.h"
#include "transpose_kernel.h"

}  // namespace

namespace pbg {
namespace cpu {

void gemm_avx512(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                 float* work) {
  gemm_impl<Avx512>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, work);
}

float fma_peak_avx512(int64_t iters) { return fma_peak_impl<Avx512>(iters); }

double loss_rows_avx512(Loss loss, int64_t rows, int64_t n, const float* S, int64_t lds,
                        const float* pos, const float* weight, float margin, float neg_weight,
                        float* G, int64_t ldg, float* gpos, int64_t* violators) {
  return loss_rows_impl<Avx512>(loss, rows, n, S, lds, pos, weight, margin, neg_weight, G, ldg,
                            gpos, violators);
}

void transpose_block_avx512(int64_t rows, int64_t cols, const float* src, int64_t lds,
                            float* dst, int64_t ldd, bool add) {
  transpose_block_impl(rows, cols, src, lds, dst, ldd, add);
}

}  // namespace cpu
}  // namespace pbg

#pragma GCC pop_options
#endif
