// dst[i, j] = src[j, i] (or +=) for a rows x cols block of row-major matrices: the chunk step's
// in-chunk score and gradient blocks (chunk_kernel.h: the two sides' P x P blocks are
// transposes of each other). fp32 runs in 8 x 8 register transposes on AVX2 / AVX-512
// (transpose_kernel.h, compiled in kernels_avx2.cpp / kernels_avx512.cpp), chosen like the
// GEMM; the generic loop below serves fp64 and the `blas` level.
#pragma once

#include <cstdint>

#include "blas.h"

namespace pbg {
namespace cpu {

template <typename T>
inline void transpose_block_generic(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst,
                                    int64_t ldd, bool add) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      dst[i * ldd + j] = add ? dst[i * ldd + j] + src[j * lds + i] : src[j * lds + i];
}

void transpose_block(GemmIsa isa, int64_t rows, int64_t cols, const float* src, int64_t lds,
                     float* dst, int64_t ldd, bool add);

inline void transpose_block(GemmIsa, int64_t rows, int64_t cols, const double* src, int64_t lds,
                            double* dst, int64_t ldd, bool add) {
  transpose_block_generic(rows, cols, src, lds, dst, ldd, add);
}

}  // namespace cpu
}  // namespace pbg
