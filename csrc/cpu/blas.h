// Row-major GEMM for the CPU kernels: C[M,N] = alpha * op(A) op(B) + beta * C.
//
// fp32 products of the chunk step's sizes run on our register-blocked kernels (gemm_kernel.h),
// compiled for AVX2+FMA and for AVX-512 in every build and chosen once at load from what the
// CPU reports (PBG_FAST_ISA=blas|avx2 forces a lower one). Everything else (fp64, big products,
// non-x86 CPUs) calls the Fortran BLAS that the torch wheel links into libtorch_cpu (MKL on x86-64:
// ~12 us for a 50x100x100 sgemm on one core here, with its own run-time ISA dispatch). The
// symbols are weak, so where a torch build does not export them we fall back to a portable
// loop nest, and build_info() says which one is in use.
#pragma once

#include <cstdint>

namespace pbg {
namespace cpu {

enum class Trans : char { N = 'N', T = 'T' };

// Which fp32 GEMM kernel runs: torch's BLAS, or ours for an ISA. Ordered: a lower one runs
// on any CPU that runs a higher one.
enum class GemmIsa : int { Blas = 0, Avx2 = 1, Avx512 = 2 };
GemmIsa best_gemm_isa();  // the best this CPU (and this build) runs
// The ISA level our code runs at, chosen at load: the best, or lower by PBG_FAST_ISA (blas:
// the x86-64 baseline, and torch's BLAS for the GEMMs). Also the level of the element-wise
// work's versions (isa_dispatch.h).
GemmIsa isa_level();
// The fp32 GEMM kernel chosen at load: ours at isa_level(), or torch's BLAS where that level
// is blas or PBG_FAST_GEMM=blas (the element-wise work keeps its level).
GemmIsa gemm_isa();
const char* gemm_isa_name(GemmIsa isa);
bool parse_gemm_isa(const char* name, GemmIsa* out);  // false on an unknown name

// fp32 GEMM on a given kernel (tests and benchmarks compare them; one the CPU lacks runs the
// best it has below it).
void gemm_with(GemmIsa isa, Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc);

// bf16 products (the chunk step's precision 'bf16' on the CPU): inputs rounded to bfloat16,
// fp32 accumulation, on AVX-512 BF16 (gemm_avx512_bf16.cpp). Available where the CPU has
// AVX512-BF16 and the ISA level is avx512 (PBG_FAST_ISA=avx2 or blas turns it off).
bool have_bf16_gemm();
// Requires have_bf16_gemm() (aborts otherwise: callers check it with the op's arguments).
void gemm_bf16(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// While one is alive in a thread, that thread's fp32 gemm() runs gemm_bf16 (or, with bf16 ==
// false, fp32 again): the chunk step sets it around its score and gradient products under
// precision 'bf16' and clears it around the operators' products. Scopes nest.
class Bf16ProductsScope {
 public:
  explicit Bf16ProductsScope(bool bf16);
  ~Bf16ProductsScope();
  Bf16ProductsScope(const Bf16ProductsScope&) = delete;
  Bf16ProductsScope& operator=(const Bf16ProductsScope&) = delete;

 private:
  bool saved_;
};

// True when an optimised BLAS (sgemm_/dgemm_) was found at load time.
bool have_blas();
// Name of the GEMM provider, for build_info().
const char* blas_name();

void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// A register-only FMA loop of `iters` rounds x 10 vectors on `isa` (avx2 or avx512; the CPU
// must have it): returns the lanes per vector (the flops are lanes * 2 * 10 * iters).
double fma_peak_loop(GemmIsa isa, int64_t iters);

// Makes BLAS single-threaded in the calling thread (HOGWILD workers and parallel_for bodies
// must not fan out again). Cheap; safe to call repeatedly.
void blas_single_thread_in_this_thread();

}  // namespace cpu
}  // namespace pbg
