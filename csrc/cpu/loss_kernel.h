// The chunk step's loss pass over a block of score rows (P positives, each with a row of N
// negative scores), fp32, for every loss, written once for any SIMD width (V: simd_avx2.h,
// simd_avx512.h). Included only by the per-ISA translation units (kernels_avx2.cpp,
// kernels_avx512.cpp) after their target pragma, inside an anonymous namespace, like
// gemm_kernel.h; the includer includes <math.h> and kernels/losses.h first. The math is
// loss_row<L, float, FastMath> (kernels/losses.h: PBG's semantics, FastMath's polynomials),
// with the violator count (negatives scoring above their positive) fused in:
//   ranking:  one pass: hinge, its count, the gradient;
//   logistic: one pass: softplus and sigmoid from one exp per score;
//   softmax:  three: max and violators, then e_j = exp(s_j - hi) and their sum, then the scale.
// The generic loss_row, compiled from portable C++, makes two more passes (a copy and the
// count) and selects instead of min/max in its exp (Zen 3, one core, rows of 100: see
// benchmarks/RESULTS.md).

// exp(x), FastMath's polynomial (kernels/fastmath.h) on V lanes: x clamped to [-87.3, 88.3],
// 0 below -87.3 (a masked score, -1e9, gives exactly 0), NaN for NaN (max and min return their
// second operand when one is NaN: x goes second, so a NaN score poisons the row's loss and
// gradients, as in loss_row).
template <class V>
inline typename V::vec exp_lanes(typename V::vec x) {
  using vec = typename V::vec;
  const vec lo = V::bcast(-87.3f);
  const vec xc = V::min(V::bcast(88.3f), V::max(lo, x));
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

// log(1 + e) for e in [0, 1], FastMath's series (2 atanh(e / (2 + e))) on V lanes.
template <class V>
inline typename V::vec log1p_unit_lanes(typename V::vec e) {
  using vec = typename V::vec;
  const vec s = V::div(e, V::add(V::bcast(2.0f), e)), s2 = V::mul(s, s);
  vec q = V::bcast(1.0f / 13.0f);
  q = V::fma(q, s2, V::bcast(1.0f / 11.0f));
  q = V::fma(q, s2, V::bcast(1.0f / 9.0f));
  q = V::fma(q, s2, V::bcast(1.0f / 7.0f));
  q = V::fma(q, s2, V::bcast(1.0f / 5.0f));
  q = V::fma(q, s2, V::bcast(1.0f / 3.0f));
  q = V::fma(q, s2, V::bcast(1.0f));
  return V::mul(V::add(s, s), q);
}

// One row of n scores s (its gradient into g; g may be s: each vector is read before it is
// written) in vectors: nf full ones, then a
// last one of `tail` lanes (1 .. L). Each returns the row's weighted loss and adds dL/dpos to
// *gpos and its violators to *viol.
template <class V>
inline float ranking_row(const float* s, float* g, int64_t nf, int64_t tail, float p, float w,
                         float margin, float* gpos, int64_t* viol) {
  using vec = typename V::vec;
  constexpr int L = V::L;
  const vec zero = V::zero(), vp = V::bcast(p), vw = V::bcast(w);
  const vec shift = V::bcast(margin - p);
  vec loss = zero;
  int count = 0, violators = 0;
  auto step = [&](vec x, float* out, int64_t cols) {
    const vec v = V::add(shift, x);  // the hinge's argument; active where > 0
    loss = V::add(loss, V::pick_gt(v, zero, v, zero));
    count += V::count_gt(v, zero);
    violators += V::count_gt(x, vp);
    V::store_cols(out, V::pick_gt(v, zero, vw, zero), cols, 1.f, 0.f);
  };
  for (int64_t j = 0; j < nf; j += L) step(V::load(s + j), g + j, L);
  // -inf past the row: never active, never a violator.
  step(V::load_cols_or(s + nf, tail, V::bcast(-__builtin_inff())), g + nf, tail);
  *viol += violators;
  *gpos -= w * static_cast<float>(count);
  return w * V::reduce_add(loss);
}

template <class V>
inline float logistic_row(const float* s, float* g, int64_t nf, int64_t tail, float p, float w,
                          float neg_weight, float* gpos, int64_t* viol) {
  using vec = typename V::vec;
  constexpr int L = V::L;
  float sp_pos, sig_neg_pos;  // the positive's term: softplus(-pos), sigmoid(-pos)
  pbg::softplus_sigmoid<pbg::FastMath>(-p, &sp_pos, &sig_neg_pos);
  *gpos -= w * sig_neg_pos;
  const float wn = w * neg_weight;
  const vec zero = V::zero(), one = V::bcast(1.f), vp = V::bcast(p), vwn = V::bcast(wn);
  vec nloss = zero;
  int violators = 0;
  auto step = [&](vec x, float* out, int64_t cols) {
    // softplus(x) = max(x, 0) + log(1 + e), sigmoid(x) = x >= 0 ? 1 / (1 + e) : e / (1 + e),
    // e = exp(-|x|): stable everywhere; a masked score (-1e9) gives 0 and 0.
    const vec e = exp_lanes<V>(V::sub(zero, V::abs(x)));
    const vec sp = V::add(V::max(x, zero), log1p_unit_lanes<V>(e));
    const vec inv = V::div(one, V::add(one, e));
    const vec sig = V::pick_gt(zero, x, V::mul(e, inv), inv);
    nloss = V::add(nloss, sp);
    violators += V::count_gt(x, vp);
    V::store_cols(out, V::mul(vwn, sig), cols, 1.f, 0.f);
  };
  for (int64_t j = 0; j < nf; j += L) step(V::load(s + j), g + j, L);
  // -inf past the row: softplus 0, sigmoid 0, never a violator.
  step(V::load_cols_or(s + nf, tail, V::bcast(-__builtin_inff())), g + nf, tail);
  *viol += violators;
  return w * sp_pos + wn * V::reduce_add(nloss);
}

template <class V>
inline float softmax_row(const float* s, float* g, int64_t nf, int64_t tail, float p, float w,
                         float* gpos, int64_t* viol) {
  using vec = typename V::vec;
  constexpr int L = V::L;
  const vec vp = V::bcast(p), ninf = V::bcast(-__builtin_inff());
  // Pass 1: the max and the violators (-inf past the row: never the max, never counted).
  vec m = ninf;
  int violators = 0;
  for (int64_t j = 0; j < nf; j += L) {
    const vec x = V::load(s + j);
    m = V::max(m, x);
    violators += V::count_gt(x, vp);
  }
  const vec xt = V::load_cols_or(s + nf, tail, ninf);
  m = V::max(m, xt);
  violators += V::count_gt(xt, vp);
  *viol += violators;
  // Pass 2: t = logaddexp(pos, logsumexp(s)) = hi + log(exp(pos - hi) + sum_j exp(s_j - hi)).
  const float mx = V::reduce_max(m);
  const float hi = p > mx ? p : mx;
  const vec vhi = V::bcast(hi);
  vec sum = V::zero();
  for (int64_t j = 0; j < nf; j += L) {
    const vec e = exp_lanes<V>(V::sub(V::load(s + j), vhi));
    V::store_cols(g + j, e, L, 1.f, 0.f);
    sum = V::add(sum, e);
  }
  const vec et = exp_lanes<V>(V::sub(xt, vhi));  // exp(-inf) = 0 past the row
  V::store_cols(g + nf, et, tail, 1.f, 0.f);
  sum = V::add(sum, et);
  const float ep = V::reduce_max(exp_lanes<V>(V::bcast(p - hi)));
  const float total = V::reduce_add(sum) + ep;
  // Pass 3: dL/ds_j = w * e_j / total.
  const float scale = w / total;
  for (int64_t j = 0; j < nf; j += L) V::store_cols(g + j, V::load(g + j), L, scale, 0.f);
  V::store_cols(g + nf, V::load_cols(g + nf, tail), tail, scale, 0.f);
  *gpos += w * (ep / total - 1.f);
  return w * (hi + logf(total) - p);
}

// Rows [0, rows) of S (stride lds) with their positives pos[i] and weights (null: 1):
// G[i, :n] = dL/dS[i, :n] (stride ldg; G may be S when ldg == lds), gpos[i] += dL/dpos[i], *violators +=
// #{j: S[i, j] > pos[i]}. `margin`: ranking's; `neg_weight`: logistic's 1 / (negatives PBG
// counts). Returns the sum of the rows' weighted losses (n == 0: ranking and softmax 0,
// logistic the positives' terms, as loss_row).
template <class V>
inline double loss_rows_impl(pbg::Loss loss, int64_t rows, int64_t n, const float* S,
                             int64_t lds, const float* pos, const float* weight, float margin,
                             float neg_weight, float* G, int64_t ldg, float* gpos,
                             int64_t* violators) {
  constexpr int L = V::L;
  double total = 0.0;
  if (n <= 0) {
    if (loss == pbg::Loss::Logistic)
      for (int64_t i = 0; i < rows; ++i)
        total += pbg::loss_row<pbg::Loss::Logistic, float, pbg::FastMath>(
            pos[i], G + i * ldg, 0, weight ? weight[i] : 1.f, margin, neg_weight, &gpos[i]);
    return total;
  }
  const int64_t nf = n - (n - 1) % L - 1;  // the full vectors before the last, ragged or not
  const int64_t tail = n - nf;             // 1 .. L
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = S + i * lds;
    float* g = G + i * ldg;
    const float p = pos[i], w = weight ? weight[i] : 1.f;
    switch (loss) {
      case pbg::Loss::Ranking:
        total += ranking_row<V>(s, g, nf, tail, p, w, margin, &gpos[i], violators);
        break;
      case pbg::Loss::Logistic:
        total += logistic_row<V>(s, g, nf, tail, p, w, neg_weight, &gpos[i], violators);
        break;
      default:
        total += softmax_row<V>(s, g, nf, tail, p, w, &gpos[i], violators);
        break;
    }
  }
  return total;
}
