// The AVX-512 (F + VL + DQ + BW) vector type the per-ISA kernels are written over: the
// interface of simd_avx2.h, 16 lanes, masks in k registers. Included only by the AVX-512
// translation units, inside their anonymous namespace, after their target pragma and
// <immintrin.h>.
#pragma once

struct Avx512 {
  using vec = __m512;
  static constexpr int L = 16;
  static constexpr int MR = 12;
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec bcast(float x) { return _mm512_set1_ps(x); }
  static inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  static inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  // max, min, reduce_max and pow2 through forms whose source operand is not
  // _mm512_undefined_*(), which GCC 12 reports as maybe-uninitialized.
  static inline vec max(vec a, vec b) { return _mm512_maskz_max_ps(__mmask16(0xFFFF), a, b); }
  static inline vec min(vec a, vec b) { return _mm512_maskz_min_ps(__mmask16(0xFFFF), a, b); }
  static inline vec div(vec a, vec b) { return _mm512_maskz_div_ps(__mmask16(0xFFFF), a, b); }
  static inline vec abs(vec a) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7FFFFFFF)));
  }
  static inline vec pick_gt(vec x, vec y, vec a, vec b) {  // x > y ? a : b, per lane
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_GT_OQ), b, a);
  }
  static inline __mmask16 first(int64_t n) {  // lanes [0, n) set
    return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
  }
  static inline vec load_cols(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(first(n), p); }
  static inline vec load_cols_or(const float* p, int64_t n, vec fill) {
    return _mm512_mask_loadu_ps(fill, first(n), p);
  }
  // Lanes i, i + 4, i + 8, i + 12 summed. (GCC 12 warns falsely on the 512-to-256 cast.)
  static inline __m128 fold4(vec v) {
    const __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }
  static inline float reduce_add(vec v) {
    __m128 x = fold4(v);
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static inline float reduce_max(vec v) {
    const __m256 h = _mm256_max_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
  }
  static inline int count_gt(vec a, vec b) {
    return __builtin_popcount(unsigned(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)));
  }
  static inline vec pow2(vec n) {
    const __mmask16 all = 0xFFFF;
    const __m512i e = _mm512_add_epi32(_mm512_maskz_cvttps_epi32(all, n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, e, 23));
  }
  static inline vec zero_where_lt(vec v, vec x, vec lo) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), v);
  }
  static inline void store_cols(float* p, vec v, int64_t cols, float alpha, float beta) {
    const __mmask16 m = first(cols);
    v = _mm512_mul_ps(v, _mm512_set1_ps(alpha));
    if (beta != 0.f) v = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, p), v);
    _mm512_mask_storeu_ps(p, m, v);
  }
};
