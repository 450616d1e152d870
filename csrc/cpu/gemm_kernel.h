// The register-blocked fp32 GEMM behind the chunk step's products, written once for any SIMD
// width. Included only by the per-ISA translation units (kernels_avx2.cpp, kernels_avx512.cpp),
// after they set the target ISA with `#pragma GCC target`, inside an anonymous namespace:
// every function here is compiled for that ISA and has internal linkage, so no inline function
// of one ISA can stand in for another's at link time. It includes nothing but <immintrin.h> (done
// by the includer) and uses no library function.
//
// C[m,n] = alpha * op(A)[m,k] op(B)[k,n] + beta * C, row-major, any strides (unaligned rows,
// odd sizes, k = 0, m or n = 0).
//   * k runs in equal blocks of at most kKBlock (one block at the chunk step's k); per block,
//     op(B) is cut into panels of NR = 2 vectors (the last panel of width <= one vector uses a
//     one-vector kernel, or, at most half a vector wide with op(A) read by rows, dot products
//     along k). A full panel of an untransposed B is read in place (its rows are B's rows, at
//     stride ldb); otherwise the panel is packed, zero-padded, contiguous in k. `work` holds
//     k * 2 vectors of floats.
//   * op(A) is read in place: MR rows broadcast one element at a time, from A[i*lda + p]
//     (N) or A[p*lda + i] (T, consecutive).
//   * The micro-kernel keeps an MR x NV-vector tile of C in registers over the whole k
//     (k is the embedding dimension or a chunk: small), then writes alpha * acc + beta * C
//     with partial stores on the last panel's columns (store_cols).
//
// V (the ISA: simd_avx2.h, simd_avx512.h) provides vec, L (lanes), MR, zero(), load(p),
// bcast(x), fma(a, b, c), store_cols(p, v, cols, alpha, beta) (cols <= L; beta == 0 never reads
// p), load_cols(p, n) (lanes >= n read as 0, their memory untouched), reduce_add(v).

template <class V, int MR_, int NV>
inline void micro_tile(int64_t k, const float* a, int64_t a_row, int64_t a_col,
                       const float* panel, int64_t ldp, float* c, int64_t ldc, int64_t cols,
                       float alpha, float beta) {
  constexpr int L = V::L;
  typename V::vec acc[MR_][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR_; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  for (int64_t p = 0; p < k; ++p) {
    typename V::vec b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = V::load(panel + p * ldp + v * L);
    const float* ap = a + p * a_col;
#pragma GCC unroll 16
    for (int i = 0; i < MR_; ++i) {
      const typename V::vec ai = V::bcast(ap[i * a_row]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, b[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR_; ++i) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const int64_t left = cols - v * L;
      if (left <= 0) break;
      V::store_cols(c + i * ldc + v * L, acc[i][v], left < L ? left : L, alpha, beta);
    }
  }
}

// Rows [0, m) of one panel: full MR tiles, then the rest. A remainder r < MR is not left as one
// short tile (r rows hold r x NV accumulator chains: too few to cover the FMA latency, e.g. 2
// x 2 at m = 50 on AVX2): the last full tile and the remainder are split into two tiles of
// nearly equal height (4 + 4 there).
template <class V, int NV>
inline void panel_rows(int64_t m, int64_t k, const float* a, int64_t a_row, int64_t a_col,
                       const float* panel, int64_t ldp, float* c, int64_t ldc, int64_t cols,
                       float alpha, float beta) {
  // A one-vector panel holds half the accumulators per row: twice the rows (at most 16) keep
  // as many FMA chains in flight as the full tile.
  constexpr int MR = NV == 1 ? (2 * V::MR < 16 ? 2 * V::MR : 16) : V::MR;
  auto tile = [&](int64_t i0, int64_t h) {
    const float* ai = a + i0 * a_row;
    float* ci = c + i0 * ldc;
    // One instantiation per height, so the tile stays in registers.
    switch (h) {
#define PBG_TILE(R)                                                                         \
  case R:                                                                                   \
    if constexpr (R <= MR)                                                                  \
      micro_tile<V, R, NV>(k, ai, a_row, a_col, panel, ldp, ci, ldc, cols, alpha, beta);    \
    break;
      PBG_TILE(1) PBG_TILE(2) PBG_TILE(3) PBG_TILE(4) PBG_TILE(5) PBG_TILE(6) PBG_TILE(7)
      PBG_TILE(8) PBG_TILE(9) PBG_TILE(10) PBG_TILE(11) PBG_TILE(12) PBG_TILE(13)
      PBG_TILE(14) PBG_TILE(15) PBG_TILE(16)
#undef PBG_TILE
      default:
        break;
    }
  };
  const int64_t r = m % MR;
  const int64_t full_end = r != 0 && m > MR ? m - MR - r : m - r;
  int64_t i = 0;
  for (; i + MR <= full_end; i += MR)
    micro_tile<V, MR, NV>(k, a + i * a_row, a_row, a_col, panel, ldp, c + i * ldc, ldc, cols,
                          alpha, beta);
  const int64_t rest = m - i;  // 0, r, or MR + r
  if (rest > MR) {
    const int64_t h = (rest + 1) / 2;
    tile(i, h);
    tile(i + h, rest - h);
  } else if (rest > 0) {
    tile(i, rest);
  }
}

// A narrow last panel (at most L/2 columns: n = 100 leaves 4 on AVX2) with op(A) read by rows:
// each C element is a dot product over k of an A row and a B' row (bt: the panel's columns as
// rows, stride ldbt), vectorised along k and summed across lanes at the end. Computing those
// columns as a one-vector panel instead would spend a whole vector's FMAs per row and k step
// on at most half a vector of useful lanes. R rows at a time, so that R x COLS independent
// chains cover the FMA latency.
template <class V, int COLS, int R>
inline void narrow_dot_rows(int64_t i0, int64_t k, const float* a, int64_t lda, const float* bt,
                            int64_t ldbt, float* c, int64_t ldc, float alpha, float beta) {
  constexpr int L = V::L;
  typename V::vec acc[R][COLS];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < COLS; ++j) acc[r][j] = V::zero();
  const float* ar = a + i0 * lda;
  int64_t p = 0;
  for (; p + L <= k; p += L) {
    typename V::vec bv[COLS];
#pragma GCC unroll 8
    for (int j = 0; j < COLS; ++j) bv[j] = V::load(bt + j * ldbt + p);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const typename V::vec av = V::load(ar + r * lda + p);
#pragma GCC unroll 8
      for (int j = 0; j < COLS; ++j) acc[r][j] = V::fma(av, bv[j], acc[r][j]);
    }
  }
  if (p < k) {
    typename V::vec bv[COLS];
#pragma GCC unroll 8
    for (int j = 0; j < COLS; ++j) bv[j] = V::load_cols(bt + j * ldbt + p, k - p);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const typename V::vec av = V::load_cols(ar + r * lda + p, k - p);
#pragma GCC unroll 8
      for (int j = 0; j < COLS; ++j) acc[r][j] = V::fma(av, bv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* cr = c + (i0 + r) * ldc;
#pragma GCC unroll 8
    for (int j = 0; j < COLS; ++j) {
      const float v = alpha * V::reduce_add(acc[r][j]);
      cr[j] = beta == 0.f ? v : v + beta * cr[j];
    }
  }
}

template <class V, int COLS>
inline void narrow_dots(int64_t m, int64_t k, const float* a, int64_t lda, const float* bt,
                        int64_t ldbt, float* c, int64_t ldc, float alpha, float beta) {
  // R x COLS accumulators, COLS B vectors and one A vector within the 16 AVX2 registers.
  constexpr int R = COLS <= 2 ? 4 : 2;
  int64_t i = 0;
  for (; i + R <= m; i += R)
    narrow_dot_rows<V, COLS, R>(i, k, a, lda, bt, ldbt, c, ldc, alpha, beta);
  for (; i < m; ++i) narrow_dot_rows<V, COLS, 1>(i, k, a, lda, bt, ldbt, c, ldc, alpha, beta);
}

// dst[q * ldd + r] = src[r * lds + q] for an 8 x 8 block (AVX2: both targets have it).
inline void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * lds), r1 = _mm256_loadu_ps(src + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// Packs op(B)[0:k, j0:j0+cols] into panel[p * NR + jj], zero-padding columns >= cols.
template <int NR>
inline void pack_panel(bool tb, int64_t k, const float* b, int64_t ldb, int64_t j0,
                       int64_t cols, float* panel) {
  if (!tb) {  // op(B)[p, j] = B[p * ldb + j]: row p's slice
    for (int64_t p = 0; p < k; ++p) {
      const float* src = b + p * ldb + j0;
      float* dst = panel + p * NR;
      int64_t jj = 0;
      for (; jj < cols; ++jj) dst[jj] = src[jj];
      for (; jj < NR; ++jj) dst[jj] = 0.f;
    }
  } else {  // op(B)[p, j] = B[j * ldb + p]: column j of the panel is row j of B
    for (int64_t p = 0; p < k; ++p)
      for (int64_t jj = cols; jj < NR; ++jj) panel[p * NR + jj] = 0.f;
    const int64_t k8 = k & ~int64_t(7);
    int64_t jj = 0;
    for (; jj + 8 <= cols; jj += 8) {  // 8 x 8 blocks, transposed in registers
      const float* src = b + (j0 + jj) * ldb;
      for (int64_t p = 0; p < k8; p += 8) transpose8(src + p, ldb, panel + p * NR + jj, NR);
      for (int64_t q = 0; q < 8; ++q)
        for (int64_t p = k8; p < k; ++p) panel[p * NR + jj + q] = src[q * ldb + p];
    }
    for (; jj < cols; ++jj) {
      const float* src = b + (j0 + jj) * ldb;
      for (int64_t p = 0; p < k; ++p) panel[p * NR + jj] = src[p];
    }
  }
}

// Measured on a Zen 3 (bench_ops.py, the linear operator's 100 x 100 x 1000 weight gradient):
// 66% of the FMA peak unblocked, 74-75% at 128 or 256.
constexpr int64_t kKBlock = 128;

template <class V>
inline void gemm_impl(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc, float* work) {
  constexpr int L = V::L;
  constexpr int NR = 2 * L;
  static_assert(L / 2 <= 8, "narrow_dots is instantiated for at most 8 columns");
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta * C
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  const int64_t a_row = ta ? 1 : lda, a_col = ta ? lda : 1;
  // k in equal blocks of at most kKBlock: a block's B panel and the A lines a tile reads stay
  // in L1 (at k = 1000 the panel alone is 64 KiB on AVX2). Later blocks accumulate into C
  // (beta = 1). The chunk step's k (the dimension, or a chunk's rows) is mostly one block.
  const int64_t blocks = (k + kKBlock - 1) / kKBlock, kblk = (k + blocks - 1) / blocks;
  for (int64_t p0 = 0; p0 < k; p0 += kblk) {
    const int64_t kb = k - p0 < kblk ? k - p0 : kblk;
    const float* ab = a + p0 * a_col;
    const float* bb = tb ? b + p0 : b + p0 * ldb;
    const float beta_b = p0 == 0 ? beta : 1.f;
    for (int64_t j0 = 0; j0 < n; j0 += NR) {
      const int64_t cols = n - j0 < NR ? n - j0 : NR;
      // A full panel of an untransposed B: its rows are B's rows, read in place at stride ldb.
      const bool in_place = !tb && (cols == NR || cols == L);
      const float* panel = in_place ? bb + j0 : work;
      if (cols > L) {
        if (!in_place) pack_panel<NR>(tb, kb, bb, ldb, j0, cols, work);
        panel_rows<V, 2>(m, kb, ab, a_row, a_col, panel, in_place ? ldb : NR, c + j0, ldc, cols,
                         alpha, beta_b);
      } else if (!ta && cols <= L / 2) {  // a few columns: dot products
        const float* bt = bb + j0 * ldb;  // op(B)^T's rows: B's rows when tb
        int64_t ldbt = ldb;
        if (!tb) {  // op(B)[p, j] = B[p * ldb + j]: gather the columns as rows
          for (int64_t jj = 0; jj < cols; ++jj)
            for (int64_t p = 0; p < kb; ++p) work[jj * kb + p] = bb[p * ldb + j0 + jj];
          bt = work;
          ldbt = kb;
        }
        switch (cols) {
#define PBG_NARROW(N)                                                                      \
  case N:                                                                                  \
    narrow_dots<V, N>(m, kb, ab, lda, bt, ldbt, c + j0, ldc, alpha, beta_b);              \
    break;
          PBG_NARROW(1) PBG_NARROW(2) PBG_NARROW(3) PBG_NARROW(4) PBG_NARROW(5) PBG_NARROW(6)
          PBG_NARROW(7) PBG_NARROW(8)
#undef PBG_NARROW
          default:
            break;
        }
      } else {  // the last, narrow panel: one vector wide
        if (!in_place) pack_panel<L>(tb, kb, bb, ldb, j0, cols, work);
        panel_rows<V, 1>(m, kb, ab, a_row, a_col, panel, in_place ? ldb : L, c + j0, ldc, cols,
                         alpha, beta_b);
      }
    }
  }
}

// The single-core fp32 peak, measured: 10 independent FMA chains (enough to cover the FMA
// latency on every x86 core we know) over `iters` rounds. Returns a value that depends on
// every lane, so that nothing is optimised away. Flops: iters * 10 * L * 2.
template <class V>
inline float fma_peak_impl(int64_t iters) {
  typename V::vec acc[10];
  const typename V::vec x = V::bcast(0.999999f), y = V::bcast(1e-7f);
  for (int j = 0; j < 10; ++j) acc[j] = V::zero();
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 10
    for (int j = 0; j < 10; ++j) acc[j] = V::fma(acc[j], x, y);
  }
  float out[V::L], total = 0.f;
  for (int j = 0; j < 10; ++j) {
    V::store_cols(out, acc[j], V::L, 1.f, 0.f);
    for (int l = 0; l < V::L; ++l) total += out[l];
  }
  return total;
}
