#include "blas.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PBG_HAVE_OWN_GEMM 1
// kernels_avx2.cpp, kernels_avx512.cpp: `work` holds k * 2 vectors of floats.
void gemm_avx2(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
               float* work);
float fma_peak_avx2(int64_t iters);
// gemm_avx512_bf16.cpp: work_a holds m * ceil(k/2) words, work_b ceil(k/2) * 32.
void gemm_avx512_bf16(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc, uint32_t* work_a, uint32_t* work_b);
float fma_peak_avx512(int64_t iters);
void gemm_avx512(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                 float* work);
#endif

namespace {

GemmIsa detect_isa() {
#ifdef PBG_HAVE_OWN_GEMM
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return GemmIsa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return GemmIsa::Avx2;
#endif
  return GemmIsa::Blas;
}

// Chosen once, at load: the best kernel this CPU runs, or a lower one named by PBG_FAST_ISA
// (blas, avx2, avx512; a higher one than the CPU has is lowered to what it has; pbg_fast's
// import refuses an unknown name).
GemmIsa choose_isa() {
  const GemmIsa best = detect_isa();
  GemmIsa want = best;
  if (const char* env = std::getenv("PBG_FAST_ISA")) parse_gemm_isa(env, &want);
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

GemmIsa choose_gemm(GemmIsa level) {
  const char* env = std::getenv("PBG_FAST_GEMM");
  return env != nullptr && std::strcmp(env, "blas") == 0 ? GemmIsa::Blas : level;
}

const GemmIsa g_best = detect_isa();
const GemmIsa g_level = choose_isa();
const GemmIsa g_chosen = choose_gemm(g_level);

}  // namespace

bool parse_gemm_isa(const char* name, GemmIsa* out) {
  if (std::strcmp(name, "blas") == 0) *out = GemmIsa::Blas;
  else if (std::strcmp(name, "avx2") == 0) *out = GemmIsa::Avx2;
  else if (std::strcmp(name, "avx512") == 0) *out = GemmIsa::Avx512;
  else return false;
  return true;
}

const char* gemm_isa_name(GemmIsa isa) {
  switch (isa) {
    case GemmIsa::Avx512: return "avx512";
    case GemmIsa::Avx2: return "avx2";
    default: return "blas";
  }
}

GemmIsa best_gemm_isa() { return g_best; }

double fma_peak_loop(GemmIsa isa, int64_t iters) {
#ifdef PBG_HAVE_OWN_GEMM
  // The loops live in other TUs: their calls (and results, ignored) are not optimised away.
  if (isa == GemmIsa::Avx512 && g_best == GemmIsa::Avx512) {
    fma_peak_avx512(iters);
    return 16.0;
  }
  if (isa == GemmIsa::Avx2 && static_cast<int>(g_best) >= static_cast<int>(GemmIsa::Avx2)) {
    fma_peak_avx2(iters);
    return 8.0;
  }
#endif
  (void)isa;
  (void)iters;
  return 0.0;
}
GemmIsa gemm_isa() { return g_chosen; }

namespace {
bool detect_bf16() {
#ifdef PBG_HAVE_OWN_GEMM
  return g_level == GemmIsa::Avx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}
const bool g_bf16 = detect_bf16();
thread_local bool t_bf16_products = false;
}  // namespace

bool have_bf16_gemm() { return g_bf16; }

Bf16ProductsScope::Bf16ProductsScope(bool bf16) : saved_(t_bf16_products) {
  t_bf16_products = bf16;
}
Bf16ProductsScope::~Bf16ProductsScope() { t_bf16_products = saved_; }

void gemm_bf16(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (!g_bf16) std::abort();  // callers check have_bf16_gemm() first
#ifdef PBG_HAVE_OWN_GEMM
  thread_local std::vector<uint32_t> work_a, work_b;
  const size_t kp = static_cast<size_t>(std::max<int64_t>(k, 0) + 1) / 2;
  if (work_a.size() < kp * static_cast<size_t>(std::max<int64_t>(m, 0)))
    work_a.resize(kp * static_cast<size_t>(m));
  if (work_b.size() < kp * 32) work_b.resize(kp * 32);
  gemm_avx512_bf16(ta == Trans::T, tb == Trans::T, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                   work_a.data(), work_b.data());
#endif
}
GemmIsa isa_level() { return g_level; }

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

void gemm_with(GemmIsa isa, Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc) {
  if (degenerate(m, n, k, beta, c, ldc)) return;
#ifdef PBG_HAVE_OWN_GEMM
  // Our kernels keep a k x 2-vector panel of B in L1/L2 (packed, or an untransposed B's rows
  // read in place) and stream A once per panel: the chunk step's sizes (k = D or a chunk, a
  // few hundred at most). Bigger products go to BLAS.
  if (isa != GemmIsa::Blas && k <= 1024 && m * k <= (int64_t(1) << 18)) {
    thread_local std::vector<float> work;
    const size_t need = static_cast<size_t>(k) * 32;
    if (work.size() < need) work.resize(need);
    if (isa == GemmIsa::Avx512 && g_best == GemmIsa::Avx512) {
      gemm_avx512(ta == Trans::T, tb == Trans::T, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                  work.data());
      return;
    }
    if (static_cast<int>(g_best) >= static_cast<int>(GemmIsa::Avx2)) {
      gemm_avx2(ta == Trans::T, tb == Trans::T, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                work.data());
      return;
    }
  }
#else
  (void)isa;
#endif
  if (sgemm_ != nullptr) {
    call_fortran(sgemm_, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    portable_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (t_bf16_products) return gemm_bf16(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  gemm_with(g_chosen, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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
