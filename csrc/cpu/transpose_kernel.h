// dst[i, j] = src[j, i] (or +=) over a rows x cols block (transpose.h), in 8 x 8 blocks
// transposed in registers (gemm_kernel.h's transpose8), the ragged edges element by element.
// Included by the per-ISA translation units after gemm_kernel.h, inside their anonymous
// namespace.

// The 8 x 8 block at src (rows j.., columns i..) added, transposed, into dst (rows i..).
inline void transpose8_add(const float* src, int64_t lds, float* dst, int64_t ldd) {
  float t[64];
  transpose8(src, lds, t, 8);
  for (int q = 0; q < 8; ++q)
    _mm256_storeu_ps(dst + q * ldd,
                     _mm256_add_ps(_mm256_loadu_ps(dst + q * ldd), _mm256_loadu_ps(t + 8 * q)));
}

inline void transpose_block_impl(int64_t rows, int64_t cols, const float* src, int64_t lds,
                                 float* dst, int64_t ldd, bool add) {
  const int64_t r8 = rows & ~int64_t(7), c8 = cols & ~int64_t(7);
  for (int64_t i = 0; i < r8; i += 8)
    for (int64_t j = 0; j < c8; j += 8) {
      if (add) transpose8_add(src + j * lds + i, lds, dst + i * ldd + j, ldd);
      else transpose8(src + j * lds + i, lds, dst + i * ldd + j, ldd);
    }
  // The edges: transpose_block_generic's loop, written out here rather than called: an inline
  // function shared with the baseline build could be linked in this ISA's version and run on a
  // CPU without it (see gemm_kernel.h's header).
  auto one = [&](int64_t i, int64_t j) {
    dst[i * ldd + j] = add ? dst[i * ldd + j] + src[j * lds + i] : src[j * lds + i];
  };
  for (int64_t i = 0; i < r8; ++i)
    for (int64_t j = c8; j < cols; ++j) one(i, j);
  for (int64_t i = r8; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) one(i, j);
}
