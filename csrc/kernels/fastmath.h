// The transcendental functions the losses need, as policies:
//   StdMath:  libm (device code, double precision, the reference-exact path).
//   FastMath: float-only polynomials written branch-free so the compiler vectorises the
//             loss loops around them (libm's expf does not vectorise without -ffast-math).
//             Accuracy: exp ~1-2 ulp (Cephes expf), log1p on [0, 1] ~1e-7 relative.
// Torch-free.
#pragma once

#include <math.h>
#include <string.h>

#include "common.h"

namespace pbg {

struct StdMath {
  template <typename T>
  static PBG_HD T exp(T x) {
    return ::exp(x);
  }
  // log(1 + e) for e in [0, 1].
  template <typename T>
  static PBG_HD T log1p_unit(T e) {
    return ::log1p(e);
  }
};

struct FastMath {
  template <typename T>
  static PBG_HD T exp(T x) {
    return StdMath::exp(x);
  }
  template <typename T>
  static PBG_HD T log1p_unit(T e) {
    return StdMath::log1p_unit(e);
  }
};

#if !defined(__CUDACC__)
template <>
inline float FastMath::exp<float>(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for accuracy).
  const float lo = -87.3f, hi = 88.3f;
  const bool underflow = x < lo;
  x = x < lo ? lo : (x > hi ? hi : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // n is NaN only for a NaN x (the result is p * scale = NaN anyway): 0 keeps the conversion
  // defined.
  const int32_t bits = (static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.0f : p * scale;
}

template <>
inline float FastMath::log1p_unit<float>(float e) {
  // log(1 + e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3]: odd series in s, 7 terms.
  const float s = e / (2.0f + e), s2 = s * s;
  float q = 1.0f / 13.0f;
  q = q * s2 + 1.0f / 11.0f;
  q = q * s2 + 1.0f / 9.0f;
  q = q * s2 + 1.0f / 7.0f;
  q = q * s2 + 1.0f / 5.0f;
  q = q * s2 + 1.0f / 3.0f;
  q = q * s2 + 1.0f;
  return 2.0f * s * q;
}
#endif

}  // namespace pbg
