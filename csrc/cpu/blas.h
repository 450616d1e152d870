// Row-major GEMM for the CPU kernels: C[M,N] = alpha * op(A) op(B) + beta * C.
//
// It calls the Fortran BLAS that the torch wheel links into libtorch_cpu (MKL on x86-64:
// ~12 us for a 50x100x100 sgemm on one core here, with its own run-time ISA dispatch). The
// symbols are weak, so where a torch build does not export them we fall back to a portable
// loop nest, and build_info() says which one is in use.
#pragma once

#include <cstdint>

namespace pbg {
namespace cpu {

enum class Trans : char { N = 'N', T = 'T' };

// True when an optimised BLAS (sgemm_/dgemm_) was found at load time.
bool have_blas();
// Name of the GEMM provider, for build_info().
const char* blas_name();

void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// Makes BLAS single-threaded in the calling thread (HOGWILD workers and parallel_for bodies
// must not fan out again). Cheap; safe to call repeatedly.
void blas_single_thread_in_this_thread();

}  // namespace cpu
}  // namespace pbg
