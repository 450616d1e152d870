#include "transpose.h"

namespace pbg {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PBG_HAVE_OWN_TRANSPOSE 1
// kernels_avx2.cpp, kernels_avx512.cpp
void transpose_block_avx2(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst,
                          int64_t ldd, bool add);
void transpose_block_avx512(int64_t rows, int64_t cols, const float* src, int64_t lds,
                            float* dst, int64_t ldd, bool add);
#endif

void transpose_block(GemmIsa isa, int64_t rows, int64_t cols, const float* src, int64_t lds,
                     float* dst, int64_t ldd, bool add) {
  const GemmIsa best = best_gemm_isa();
  if (static_cast<int>(isa) > static_cast<int>(best)) isa = best;
#ifdef PBG_HAVE_OWN_TRANSPOSE
  if (isa == GemmIsa::Avx512) return transpose_block_avx512(rows, cols, src, lds, dst, ldd, add);
  if (isa == GemmIsa::Avx2) return transpose_block_avx2(rows, cols, src, lds, dst, ldd, add);
#endif
  transpose_block_generic(rows, cols, src, lds, dst, ldd, add);
}

}  // namespace cpu
}  // namespace pbg
