#include "loss_rows.h"

#include <cstring>

#include "../kernels/losses.h"

namespace pbg {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PBG_HAVE_OWN_LOSS 1
// loss_avx2.cpp, loss_avx512.cpp
double softmax_rows_avx2(int64_t rows, int64_t n, const float* S, int64_t lds, const float* pos,
                         const float* weight, float* G, int64_t ldg, float* gpos,
                         int64_t* violators);
double softmax_rows_avx512(int64_t rows, int64_t n, const float* S, int64_t lds,
                           const float* pos, const float* weight, float* G, int64_t ldg,
                           float* gpos, int64_t* violators);
#endif

double softmax_rows(GemmIsa isa, int64_t rows, int64_t n, const float* S, int64_t lds,
                    const float* pos, const float* weight, float* G, int64_t ldg, float* gpos,
                    int64_t* violators) {
  const GemmIsa best = best_gemm_isa();
  if (static_cast<int>(isa) > static_cast<int>(best)) isa = best;
#ifdef PBG_HAVE_OWN_LOSS
  if (isa == GemmIsa::Avx512)
    return softmax_rows_avx512(rows, n, S, lds, pos, weight, G, ldg, gpos, violators);
  if (isa == GemmIsa::Avx2)
    return softmax_rows_avx2(rows, n, S, lds, pos, weight, G, ldg, gpos, violators);
#endif
  double loss = 0.0;
  int64_t viol = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = S + i * lds;
    float* g = G + i * ldg;
    for (int64_t j = 0; j < n; ++j) viol += s[j] > pos[i];
    if (g != s) std::memcpy(g, s, n * sizeof(float));
    loss += loss_row<Loss::Softmax, float, FastMath>(pos[i], g, n, weight ? weight[i] : 1.f,
                                                     0.f, 0.f, &gpos[i]);
  }
  *violators += viol;
  return loss;
}

}  // namespace cpu
}  // namespace pbg
