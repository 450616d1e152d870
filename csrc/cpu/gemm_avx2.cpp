// The chunk-step GEMM for AVX2 + FMA (Haswell, Zen 1-3 and later), compiled for that ISA
// whatever the build's -march: chosen at run time (blas.cpp) only on a CPU that reports it.
// 6 x 16 tiles: 12 ymm accumulators, 2 for B, 1 broadcast.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PBG_HAVE_AVX2_GEMM 1
#pragma GCC push_options
// The kernel's code is pinned here, whatever the build's flags: generic tuning and no -fwrapv
// (Python's CFLAGS carry it). GCC 12 allocates the 15 live ymm registers of the 6 x 16 tile
// differently under -march=znver3's tuning or -fwrapv: it re-loads a B vector from L1 six
// times per k step, or spills an accumulator through the stack. Measured on a Zen 3 (one
// core, benchmarks/bench_ops.py's shapes): 62-71 GFLOP/s with the build's flags, 74-77 with
// these.
#pragma GCC target("avx2,fma,tune=generic")
#pragma GCC optimize("no-wrapv")
#include <immintrin.h>

namespace {

#include "simd_avx2.h"
#include "gemm_kernel.h"

}  // namespace

namespace pbg {
namespace cpu {

void gemm_avx2(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
               float* work) {
  gemm_impl<Avx2>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, work);
}

float fma_peak_avx2(int64_t iters) { return fma_peak_impl<Avx2>(iters); }

}  // namespace cpu
}  // namespace pbg

#pragma GCC pop_options
#endif
