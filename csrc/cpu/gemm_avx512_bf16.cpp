// The chunk step's GEMM with bfloat16 inputs and fp32 accumulation (precision 'bf16' on the
// CPU), for AVX-512 with the BF16 extension (Cooper Lake, Sapphire Rapids, Zen 4 and later),
// compiled for that ISA whatever the build's -march and chosen at run time (blas.cpp) only on a
// CPU that reports it. VDPBF16PS multiplies 16 pairs of bf16 by 16 pairs and adds both products
// of each pair to an fp32 lane: twice the products of an fp32 FMA per instruction.
//
// C[m,n] = alpha * op(A)[m,k] op(B)[k,n] + beta * C, row-major, any strides. The inputs are
// rounded to bfloat16 (nearest even, as the CUDA path and torch's .bfloat16() round:
// kernels/bfloat16.h) while they are packed, k padded to even with a zero:
//   * op(A) -> rows of kp = ceil(k/2) pairs, each pair (A[i,2p], A[i,2p+1]) one 32-bit word,
//     broadcast to all lanes;
//   * op(B) -> panels of NR = 32 columns (the last one 16 wide when that covers it): for pair p
//     and column j the word (B[2p,j], B[2p+1,j]), so one zmm holds 16 columns' pairs.
// The micro-kernel keeps a 12 x 32 tile of C in 24 zmm accumulators over the whole k, as the
// fp32 kernel does (gemm_kernel.h).
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PBG_HAVE_AVX512_BF16_GEMM 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,fma,avx2")
// GCC 12 (-march=znver3, say) warns from inside avx512fintrin.h that the masked unpacks' undefined
// pass-through "may be used uninitialized": a false positive of the header, not of this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace {

constexpr int kL = 16;   // fp32 lanes (= bf16 pairs) per zmm
constexpr int kMR = 12;  // rows of a tile

// Packing converts 32 floats per instruction (VCVTNE2PS2BF16, round to nearest even); a word
// holds a pair of consecutive k: (bf16 of the even k) | (bf16 of the odd k) << 16.

__mmask16 first(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1u);
}

// Words i < 16: (lo[i], hi[i]) for i < count, zero after; hi null: zeros (an odd k's padding).
inline __m512i pairs16(const float* lo, const float* hi, int64_t count) {
  const __mmask16 m = first(count);
  const __m512 l = _mm512_maskz_loadu_ps(m, lo);
  const __m512 h = hi ? _mm512_maskz_loadu_ps(m, hi) : _mm512_setzero_ps();
  // [bf16(l0) .. bf16(l15) | bf16(h0) .. bf16(h15)], interleaved to (l_i, h_i) per word.
  const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(h, l);
  const __m512i interleave = _mm512_set_epi16(
      31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
      23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, packed);
}

// k contiguous floats -> ceil(k/2) words (the pairs are consecutive elements).
inline void row_words(const float* x, int64_t k, uint32_t* out) {
  int64_t p = 0;
  for (; p + 32 <= k; p += 32)
    _mm512_storeu_si512(out + p / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + p + 16),
                                                                   _mm512_loadu_ps(x + p)));
  if (p < k) {
    const int64_t rest = k - p;
    const __m512 lo = _mm512_maskz_loadu_ps(first(rest), x + p);
    const __m512 hi = _mm512_maskz_loadu_ps(first(rest - 16), x + p + 16);
    _mm512_mask_storeu_epi32(out + p / 2, first((rest + 1) / 2),
                             (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// r[q] = column q of the 16 x 16 matrix of words whose row i is r[i] (a register transpose).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Each 128-bit lane of r[4g + j] now holds one column's words from rows 4g..4g+3: two rounds
  // of 128-bit lane shuffles gather each column's four lanes into one register.
  for (int g = 0; g < 2; ++g)
    for (int j = 0; j < 4; ++j) {
      t[8 * g + j] = _mm512_shuffle_i32x4(r[8 * g + j], r[8 * g + 4 + j], 0x88);
      t[8 * g + 4 + j] = _mm512_shuffle_i32x4(r[8 * g + j], r[8 * g + 4 + j], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xDD);
  }
}

inline void store_cols(float* p, __m512 v, int64_t cols, float alpha, float beta) {
  const __mmask16 m = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1u);
  v = _mm512_mul_ps(v, _mm512_set1_ps(alpha));
  if (beta != 0.f) v = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, p), v);
  _mm512_mask_storeu_ps(p, m, v);
}

// Rows a[0 .. MR) (kp words each, row stride kp) against one panel of NV vectors.
template <int MR, int NV>
inline void tile(int64_t kp, const uint32_t* a, const uint32_t* panel, float* c, int64_t ldc,
                 int64_t cols, float alpha, float beta) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    __m512bh b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      b[v] = (__m512bh)_mm512_loadu_si512(panel + (p * NV + v) * kL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(a[i * kp + p]));
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, b[v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const int64_t left = cols - v * kL;
      if (left <= 0) break;
      store_cols(c + i * ldc + v * kL, acc[i][v], left < kL ? left : kL, alpha, beta);
    }
  }
}

template <int NV>
void panel_rows(int64_t m, int64_t kp, const uint32_t* a, const uint32_t* panel, float* c,
                int64_t ldc, int64_t cols, float alpha, float beta) {
  int64_t i = 0;
  for (; i + kMR <= m; i += kMR)
    tile<kMR, NV>(kp, a + i * kp, panel, c + i * ldc, ldc, cols, alpha, beta);
  const uint32_t* ai = a + i * kp;
  float* ci = c + i * ldc;
  switch (m - i) {  // one instantiation per remainder height, so the tile stays in registers
#define PBG_TAIL(R) \
  case R: tile<R, NV>(kp, ai, panel, ci, ldc, cols, alpha, beta); break;
    PBG_TAIL(1) PBG_TAIL(2) PBG_TAIL(3) PBG_TAIL(4) PBG_TAIL(5) PBG_TAIL(6) PBG_TAIL(7)
    PBG_TAIL(8) PBG_TAIL(9) PBG_TAIL(10) PBG_TAIL(11)
#undef PBG_TAIL
    default: break;
  }
}

}  // namespace

namespace pbg {
namespace cpu {

// work_a: m * ceil(k/2) words; work_b: ceil(k/2) * 32 words.
void gemm_avx512_bf16(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc, uint32_t* work_a, uint32_t* work_b) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta * C
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  const int64_t kp = (k + 1) / 2;
  // op(A) -> work_a [m, kp].
  if (!ta) {  // row i of op(A) is row i of A
    for (int64_t i = 0; i < m; ++i) row_words(a + i * lda, k, work_a + i * kp);
  } else {  // op(A)[i, p] = A[p, i]: rows 2p and 2p+1 of A give pair p of 16 rows i at a time
    alignas(64) uint32_t w[kL];
    for (int64_t p = 0; p < kp; ++p)
      for (int64_t i0 = 0; i0 < m; i0 += kL) {
        const int64_t count = m - i0 < kL ? m - i0 : kL;
        _mm512_store_si512(w, pairs16(a + 2 * p * lda + i0,
                                      2 * p + 1 < k ? a + (2 * p + 1) * lda + i0 : nullptr,
                                      count));
        for (int64_t i = 0; i < count; ++i) work_a[(i0 + i) * kp + p] = w[i];
      }
  }
  // op(B) -> one panel at a time, [kp, nv * 16] words.
  thread_local std::vector<uint32_t> row_buf;  // tb: 16 rows of B as words, kp rounded up
  const int64_t row_words_needed = kL * ((kp + kL - 1) / kL * kL) + kL;
  if (tb && int64_t(row_buf.size()) < row_words_needed) row_buf.resize(row_words_needed);
  uint32_t* row = row_buf.data();
  for (int64_t j0 = 0; j0 < n; j0 += 2 * kL) {
    const int64_t cols = n - j0 < 2 * kL ? n - j0 : 2 * kL;
    const int nv = cols > kL ? 2 : 1, width = nv * kL;
    if (tb) {  // op(B)[p, j] = B[j, p]: column j of the panel is row j of B, as words
      // 16 rows of B as words (zero rows past cols, zero words past kp), then 16 x 16 blocks
      // transposed in registers into the panel's [p, 16 columns] rows.
      const int64_t kp16 = (kp + kL - 1) / kL * kL;
      for (int v = 0; v < nv; ++v) {
        for (int64_t r = 0; r < kL; ++r) {
          uint32_t* dst = row + r * kp16;
          const int64_t jj = v * kL + r;
          int64_t done = 0;
          if (jj < cols) {
            row_words(b + (j0 + jj) * ldb, k, dst);
            done = kp;
          }
          for (int64_t p = done; p < kp16; ++p) dst[p] = 0u;
        }
        for (int64_t p0 = 0; p0 < kp; p0 += kL) {
          __m512i blk[kL];
          for (int r = 0; r < kL; ++r) blk[r] = _mm512_loadu_si512(row + r * kp16 + p0);
          transpose16(blk);
          const int64_t np = kp - p0 < kL ? kp - p0 : kL;
          for (int64_t q = 0; q < np; ++q)
            _mm512_storeu_si512(work_b + (p0 + q) * width + v * kL, blk[q]);
        }
      }
    } else {  // rows 2p and 2p+1 of B give pair p of 16 columns at a time
      for (int64_t p = 0; p < kp; ++p)
        for (int v = 0; v < nv; ++v)
          _mm512_storeu_si512(work_b + p * width + v * kL,
                              pairs16(b + 2 * p * ldb + j0 + v * kL,
                                      2 * p + 1 < k ? b + (2 * p + 1) * ldb + j0 + v * kL : nullptr,
                                      cols - v * kL));
    }
    if (nv == 2)
      panel_rows<2>(m, kp, work_a, work_b, c + j0, ldc, cols, alpha, beta);
    else
      panel_rows<1>(m, kp, work_a, work_b, c + j0, ldc, cols, alpha, beta);
  }
}

}  // namespace cpu
}  // namespace pbg

#pragma GCC pop_options
#endif
