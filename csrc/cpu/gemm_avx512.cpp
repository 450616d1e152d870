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

struct Avx512 {
  using vec = __m512;
  static constexpr int L = 16;
  static constexpr int MR = 12;
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec bcast(float x) { return _mm512_set1_ps(x); }
  static inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline vec load_cols(const float* p, int64_t n) {  // lanes >= n read as 0
    return _mm512_maskz_loadu_ps(n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u), p);
  }
  // Lanes i, i + 4, i + 8, i + 12 summed. (GCC 12 warns falsely on the 512-to-256 cast.)
  static inline __m128 fold4(vec v) {
    const __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }
  static inline void store_cols(float* p, vec v, int64_t cols, float alpha, float beta) {
    const __mmask16 m = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1u);
    v = _mm512_mul_ps(v, _mm512_set1_ps(alpha));
    if (beta != 0.f) v = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, p), v);
    _mm512_mask_storeu_ps(p, m, v);
  }
};

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
