#include "loss_rows.h"

namespace pbg {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PBG_HAVE_OWN_LOSS 1
// kernels_avx2.cpp, kernels_avx512.cpp
double loss_rows_avx2(Loss loss, int64_t rows, int64_t n, const float* S, int64_t lds,
                      const float* pos, const float* weight, float margin, float neg_weight,
                      float* G, int64_t ldg, float* gpos, int64_t* violators);
double loss_rows_avx512(Loss loss, int64_t rows, int64_t n, const float* S, int64_t lds,
                        const float* pos, const float* weight, float margin, float neg_weight,
                        float* G, int64_t ldg, float* gpos, int64_t* violators);
#endif

double loss_rows(Loss loss, GemmIsa isa, int64_t rows, int64_t n, const float* S, int64_t lds,
                 const float* pos, const float* weight, float margin, float neg_weight, float* G,
                 int64_t ldg, float* gpos, int64_t* violators) {
  const GemmIsa best = best_gemm_isa();
  if (static_cast<int>(isa) > static_cast<int>(best)) isa = best;
#ifdef PBG_HAVE_OWN_LOSS
  if (isa == GemmIsa::Avx512)
    return loss_rows_avx512(loss, rows, n, S, lds, pos, weight, margin, neg_weight, G, ldg, gpos,
                            violators);
  if (isa == GemmIsa::Avx2)
    return loss_rows_avx2(loss, rows, n, S, lds, pos, weight, margin, neg_weight, G, ldg, gpos,
                          violators);
#endif
  return loss_rows_generic(loss, rows, n, S, lds, pos, weight, margin, neg_weight, G, ldg, gpos,
                           violators);
}

}  // namespace cpu
}  // namespace pbg
