// float -> bfloat16, as bits: host and device, torch-free and CUDA-header-free (the CUDA chunk
// step's BF16 products store their inputs this way; cuBLAS reads them as CUDA_R_16BF).
#pragma once

#include <stdint.h>
#include <string.h>

#include "common.h"

namespace pbg {

// Round to nearest, ties to even (as __float2bfloat16_rn); a NaN stays a (quiet) NaN.
PBG_HD uint16_t bf16_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace pbg
