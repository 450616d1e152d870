// The AVX2 + FMA vector type the per-ISA kernels (gemm_kernel.h, loss_kernel.h) are written
// over. Included only by the AVX2 translation units, inside their anonymous namespace, after
// their `#pragma GCC target("avx2,fma,...")` and <immintrin.h>: its functions are compiled for
// that ISA and have internal linkage. simd_avx512.h is the same interface for AVX-512.
//
// The interface: vec, L (lanes), MR (the GEMM tile's rows); zero(), load(p), bcast(x),
// fma(a, b, c) = a * b + c, add, sub, mul, div, max, min, abs, pick_gt(x, y, a, b) (x > y ? a :
// b, per lane); load_cols(p, n) (lanes >= n read as 0, their memory untouched),
// load_cols_or(p, n, fill) (lanes >= n are `fill`), store_cols(p, v, cols, alpha, beta)
// (p[l] = alpha * v[l] + beta * p[l] for l < cols; beta == 0 never reads p); reduce_add(v),
// reduce_max(v) (over the lanes), count_gt(a, b) (lanes with a > b), pow2(n) (2^n for
// integer-valued lanes n in [-126, 127]), zero_where_lt(v, x, lo) (v, 0 where x < lo).
#pragma once

struct Avx2 {
  using vec = __m256;
  static constexpr int L = 8;
  static constexpr int MR = 6;
  static inline vec zero() { return _mm256_setzero_ps(); }
  static inline vec load(const float* p) { return _mm256_loadu_ps(p); }
  static inline vec bcast(float x) { return _mm256_set1_ps(x); }
  static inline vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static inline vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  static inline vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
  static inline vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
  static inline vec abs(vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
  static inline vec pick_gt(vec x, vec y, vec a, vec b) {  // x > y ? a : b, per lane
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, y, _CMP_GT_OQ));
  }
  static inline __m256i first(int64_t n) {  // lanes [0, n) set
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline vec load_cols(const float* p, int64_t n) { return _mm256_maskload_ps(p, first(n)); }
  static inline vec load_cols_or(const float* p, int64_t n, vec fill) {
    const __m256i m = first(n);
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static inline __m128 fold4(vec v) {  // lanes i and i + 4 summed
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  }
  static inline float reduce_add(vec v) {
    __m128 x = fold4(v);
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static inline float reduce_max(vec v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
  }
  static inline int count_gt(vec a, vec b) {
    return __builtin_popcount(unsigned(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ))));
  }
  static inline vec pow2(vec n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static inline vec zero_where_lt(vec v, vec x, vec lo) {
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), v);
  }
  static inline void store_cols(float* p, vec v, int64_t cols, float alpha, float beta) {
    v = _mm256_mul_ps(v, _mm256_set1_ps(alpha));
    if (cols >= 8) {
      if (beta != 0.f) v = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(p), v);
      _mm256_storeu_ps(p, v);
      return;
    }
    if (beta != 0.f) v = _mm256_fmadd_ps(_mm256_set1_ps(beta), load_cols(p, cols), v);
    store_first(p, v, cols);
  }
  // Lanes [0, cols) of v to p, 0 < cols < 8, as a 4-, a 2- and a 1-lane store, not as
  // VMASKMOVPS: AMD cores run its store form as a long microcoded sequence (its load form is
  // cheap). Zen 3, one core, against the masked store in the same process: the loss kernel's
  // rows of 100 ranking 1.19x, softmax 1.07x; the GEMM's one-vector panels of 4 columns 1.10x.
  static inline void store_first(float* p, vec v, int64_t cols) {
    __m128 x = _mm256_castps256_ps128(v);
    if (cols >= 4) {
      _mm_storeu_ps(p, x);
      x = _mm256_extractf128_ps(v, 1);
      p += 4;
      cols -= 4;
    }
    if (cols >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), x);
      x = _mm_movehl_ps(x, x);
      p += 2;
      cols -= 2;
    }
    if (cols >= 1) _mm_store_ss(p, x);
  }
};
