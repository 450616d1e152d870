// pbg_fast::gemm_: the CPU GEMM (blas.h) as an op, on a named kernel, so that tests check our
// per-ISA micro-kernels against a reference and benchmarks time them against torch's BLAS.
#include <torch/library.h>

#include <chrono>

#include "blas.h"
#include "dispatch.h"

namespace pbg {
namespace {

constexpr const char* kOp = "gemm_";

// A row-major matrix view: rows contiguous, any row stride (views of wider rows included).
void check_rows(const at::Tensor& t, const char* arg) {
  check_cpu(t, kOp, arg);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, kOp, ": ", arg, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, kOp, ": ", arg, " must be 2-D, got ", t.dim(), "-D");
  TORCH_CHECK_VALUE(t.size(1) <= 1 || t.stride(1) == 1, kOp, ": ", arg,
                    " must have contiguous rows (stride(1) == 1)");
}

int64_t ld(const at::Tensor& t) { return std::max<int64_t>(t.stride(0), std::max<int64_t>(t.size(1), 1)); }

void gemm_cpu(at::Tensor& c, const at::Tensor& a, const at::Tensor& b, bool trans_a,
              bool trans_b, double alpha, double beta, const std::string& isa, int64_t reps) {
  check_rows(c, "c");
  check_rows(a, "a");
  check_rows(b, "b");
  cpu::GemmIsa which = cpu::GemmIsa::Blas;
  const bool bf16 = isa == "avx512_bf16";  // bfloat16 inputs, fp32 accumulation
  TORCH_CHECK_VALUE(bf16 || cpu::parse_gemm_isa(isa.c_str(), &which), kOp, ": isa: unknown '",
                    isa, "'; expected one of blas, avx2, avx512, avx512_bf16");
  TORCH_CHECK_VALUE(!bf16 || cpu::have_bf16_gemm(), kOp, ": isa 'avx512_bf16': this CPU (or "
                    "PBG_FAST_ISA) does not run AVX512-BF16");
  const int64_t m = trans_a ? a.size(1) : a.size(0), k = trans_a ? a.size(0) : a.size(1);
  const int64_t k2 = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  TORCH_CHECK_VALUE(k == k2 && c.size(0) == m && c.size(1) == n, kOp, ": shapes: op(a) is ", m,
                    "x", k, ", op(b) ", k2, "x", n, ", c ", c.size(0), "x", c.size(1));
  const cpu::Bf16ProductsScope scope(bf16);
  for (int64_t r = 0; r < reps; ++r)
    if (bf16)
      cpu::gemm(trans_a ? cpu::Trans::T : cpu::Trans::N, trans_b ? cpu::Trans::T : cpu::Trans::N,
                m, n, k, static_cast<float>(alpha), a.data_ptr<float>(), ld(a),
                b.data_ptr<float>(), ld(b), static_cast<float>(beta), c.data_ptr<float>(), ld(c));
    else
      cpu::gemm_with(which, trans_a ? cpu::Trans::T : cpu::Trans::N,
                 trans_b ? cpu::Trans::T : cpu::Trans::N, m, n, k, static_cast<float>(alpha),
                 a.data_ptr<float>(), ld(a), b.data_ptr<float>(), ld(b),
                 static_cast<float>(beta), c.data_ptr<float>(), ld(c));
}

}  // namespace

// The measured single-core fp32 FMA peak of an ISA, in flops per second (a register-only
// loop: the yardstick for "fraction of peak"; 0 where the CPU lacks the ISA).
double fma_peak(const std::string& isa, int64_t iters) {
  cpu::GemmIsa which;
  TORCH_CHECK_VALUE(cpu::parse_gemm_isa(isa.c_str(), &which) && which != cpu::GemmIsa::Blas,
                    "fma_peak: isa: unknown '", isa, "'; expected avx2 or avx512");
  const auto t0 = std::chrono::steady_clock::now();
  const double lanes = cpu::fma_peak_loop(which, iters);  // 0: the CPU lacks the ISA
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return lanes * 2.0 * 10.0 * static_cast<double>(iters) / s;
}

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) { m.impl("gemm_", &gemm_cpu); }

TORCH_LIBRARY_IMPL(pbg_fast, CompositeExplicitAutograd, m) { m.impl("fma_peak", &fma_peak); }

}  // namespace pbg
