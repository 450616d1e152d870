#include "blas.h"

#include <algorithm>

extern "C" {
// Fortran BLAS, column-major. Weak: null when the torch build does not export them.
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
// The C interface (mkl_set_num_threads_local without the capitals is the Fortran one: int*).
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace pbg {
namespace cpu {

bool have_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

const char* blas_name() {
  if (!have_blas()) return "portable";
  return MKL_Set_Num_Threads_Local != nullptr ? "mkl" : "blas";
}

void blas_single_thread_in_this_thread() {
  if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(1);
}

namespace {

template <typename T>
void portable_gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  // op(A)[i,p] and op(B)[p,j] in row-major storage.
  for (int64_t i = 0; i < m; ++i) {
    T* crow = c + i * ldc;
    if (beta == T(0)) {
      std::fill(crow, crow + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) crow[j] *= beta;
    }
    for (int64_t p = 0; p < k; ++p) {
      const T av = alpha * (ta == Trans::N ? a[i * lda + p] : a[p * lda + i]);
      if (tb == Trans::N) {
        const T* brow = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
      } else {
        for (int64_t j = 0; j < n; ++j) crow[j] += av * b[j * ldb + p];
      }
    }
  }
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix read
// column-major is its transpose: so the call swaps A and B and keeps the transpose flags.
template <typename T, typename F>
void call_fortran(F fn, Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                  int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char cta = static_cast<char>(ta), ctb = static_cast<char>(tb);
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(std::max<int64_t>(lda, 1));
  const int ildb = static_cast<int>(std::max<int64_t>(ldb, 1));
  const int ildc = static_cast<int>(std::max<int64_t>(ldc, 1));
  fn(&ctb, &cta, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
}

template <typename T>
bool degenerate(int64_t m, int64_t n, int64_t k, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return true;
  if (k == 0) {  // C = beta * C
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return true;
  }
  return false;
}

}  // namespace

void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (degenerate(m, n, k, beta, c, ldc)) return;
  if (sgemm_ != nullptr) {
    call_fortran(sgemm_, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    portable_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (degenerate(m, n, k, beta, c, ldc)) return;
  if (dgemm_ != nullptr) {
    call_fortran(dgemm_, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    portable_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

}  // namespace cpu
}  // namespace pbg
