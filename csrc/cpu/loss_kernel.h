// The softmax loss over a block of score rows (the chunk step's P x N negative scores), fp32,
// written once for any SIMD width (V: simd_avx2.h, simd_avx512.h). Included only by the
// per-ISA translation units (loss_avx2.cpp, loss_avx512.cpp) after their target pragma, inside
// an anonymous namespace, like gemm_kernel.h. The math is loss_row<Loss::Softmax, float,
// FastMath> (kernels/losses.h: PBG's semantics) with the same exp polynomial, fused:
//   pass 1: the row's max and its violators (negatives scoring above the positive);
//   pass 2: e_j = exp(s_j - hi) into G and their sum (hi = max(pos, max_j s_j));
//   pass 3: G *= weight / total.
// The generic loss_row, compiled from portable C++, took 3 more passes (a copy and a separate
// count) and selects instead of min/max in its exp: ~1.9x slower per row of 100 on a Zen 3.

// exp(x), FastMath's polynomial (kernels/fastmath.h) on V lanes: x clamped to [-87.3, 88.3],
// 0 below -87.3 (a masked score, -1e9, gives exactly 0).
template <class V>
inline typename V::vec exp_lanes(typename V::vec x) {
  using vec = typename V::vec;
  const vec lo = V::bcast(-87.3f);
  const vec xc = V::min(V::max(x, lo), V::bcast(88.3f));
  const vec shifter = V::bcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vec n = V::sub(V::fma(xc, V::bcast(1.44269504088896341f), shifter), shifter);
  vec r = V::fma(n, V::bcast(-0.693359375f), xc);
  r = V::fma(n, V::bcast(2.12194440e-4f), r);
  vec p = V::bcast(1.9875691500e-4f);
  p = V::fma(p, r, V::bcast(1.3981999507e-3f));
  p = V::fma(p, r, V::bcast(8.3334519073e-3f));
  p = V::fma(p, r, V::bcast(4.1665795894e-2f));
  p = V::fma(p, r, V::bcast(1.6666665459e-1f));
  p = V::fma(p, r, V::bcast(5.0000001201e-1f));
  p = V::fma(V::mul(p, r), r, V::add(r, V::bcast(1.0f)));
  return V::zero_where_lt(V::mul(p, V::pow2(n)), x, lo);
}

// Rows [0, rows) of S (stride lds) with their positives pos[i] and weights (null: 1):
// G[i, :n] = dL/dS[i, :n] (G may be S), gpos[i] += dL/dpos[i], *violators += #{j: S[i,j] >
// pos[i]}. Returns the sum of the rows' losses (each already weighted). One scalar logf per row
// (the includer includes <math.h>).
template <class V>
inline double softmax_rows_impl(int64_t rows, int64_t n, const float* S, int64_t lds,
                                const float* pos, const float* weight, float* G, int64_t ldg,
                                float* gpos, int64_t* violators) {
  using vec = typename V::vec;
  constexpr int L = V::L;
  if (n <= 0) return 0.0;  // no negatives: no loss, no gradient (loss_row's n == 0)
  const int64_t nf = n - (n - 1) % L - 1;  // the full vectors before the last, ragged or not
  const int64_t tail = n - nf;             // 1 .. L
  const vec ninf = V::bcast(-__builtin_inff());
  double loss = 0.0;
  int64_t viol = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = S + i * lds;
    float* g = G + i * ldg;
    const float p = pos[i], w = weight ? weight[i] : 1.f;
    const vec vp = V::bcast(p);
    vec m = ninf;
    int count = 0;
    for (int64_t j = 0; j < nf; j += L) {
      const vec x = V::load(s + j);
      m = V::max(m, x);
      count += V::count_gt(x, vp);
    }
    const vec xt = V::load_cols_or(s + nf, tail, ninf);  // -inf: never the max, never counted
    m = V::max(m, xt);
    count += V::count_gt(xt, vp);
    viol += count;
    const float mx = V::reduce_max(m);
    const float hi = p > mx ? p : mx;
    const vec vhi = V::bcast(hi);
    vec sum = V::zero();
    for (int64_t j = 0; j < nf; j += L) {
      const vec e = exp_lanes<V>(V::sub(V::load(s + j), vhi));
      V::store_cols(g + j, e, L, 1.f, 0.f);
      sum = V::add(sum, e);
    }
    const vec et = exp_lanes<V>(V::sub(xt, vhi));  // exp(-inf) = 0 in the unused lanes
    V::store_cols(g + nf, et, tail, 1.f, 0.f);
    sum = V::add(sum, et);
    const float ep = V::reduce_max(exp_lanes<V>(V::bcast(p - hi)));
    const float total = V::reduce_add(sum) + ep;
    const float scale = w / total;
    for (int64_t j = 0; j < nf; j += L) V::store_cols(g + j, V::load(g + j), L, scale, 0.f);
    V::store_cols(g + nf, V::load_cols(g + nf, tail), tail, scale, 0.f);
    gpos[i] += w * (ep / total - 1.f);
    loss += w * (hi + logf(total) - p);
  }
  *violators += viol;
  return loss;
}
