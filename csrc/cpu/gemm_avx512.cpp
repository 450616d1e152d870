// The chunk-step GEMM for AVX-512 (F + VL + DQ + BW; Skylake-SP, Ice Lake, Zen 4 and later),
// compiled for that ISA whatever the build's -march: chosen at run time (blas.cpp) only on a
// CPU that reports it. 12 x 32 tiles: 24 zmm accumulators, 2 for B, 1 broadcast.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PBG_HAVE_AVX512_GEMM 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,fma,avx2")
#include <immintrin.h>

namespace {

#include "simd_avx512.h"
#include "gemm_kernel.h"

}  // namespace

namespace pbg {
namespace cpu {

void gemm_avx512(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                 float* work) {
  gemm_impl<Avx512>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, work);
}

float fma_peak_avx512(int64_t iters) { return fma_peak_impl<Avx512>(iters); }

}  // namespace cpu
}  // namespace pbg

#pragma GCC pop_options
#endif
