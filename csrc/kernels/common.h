// Shared, torch-free definitions for the pbg_fast kernels.
// Included by both csrc/cpu/*.cpp and csrc/cuda/*.cu: no torch or STL containers here.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define PBG_HD __host__ __device__ __forceinline__
#else
#define PBG_HD inline __attribute__((always_inline))
#endif

// Vectorisation hints for the CPU loops (OpenMP simd; no threads). Empty under nvcc.
#define PBG_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) && !defined(__CUDACC__)
#define PBG_SIMD PBG_PRAGMA(omp simd)
#define PBG_SIMD_REDUCE(...) PBG_PRAGMA(omp simd reduction(__VA_ARGS__))
#else
#define PBG_SIMD
#define PBG_SIMD_REDUCE(...)
#endif

namespace pbg {

// Names as PBG spells them; the integer values are the ABI between Python and the kernels.
enum class Comparator : int { Dot = 0, Cos = 1, L2 = 2, SquaredL2 = 3 };
enum class Operator : int {
  None = 0,
  Translation = 1,
  Diagonal = 2,
  ComplexDiagonal = 3,
  Linear = 4,
  Affine = 5
};
enum class Loss : int { Ranking = 0, Logistic = 1, Softmax = 2 };

// How one side of a chunk is scored against negatives (PBG's `Negatives`, plus Skip for the
// side whose scores a dynamic-relation direction discards):
//   Skip:         no negative scores and no loss term for this side.
//   Uniform:      the chunk's uniformly sampled negatives only (U may be 0: PBG's NONE).
//   BatchUniform: the chunk's own positives (the same-edge pair masked) + the uniform negatives.
//   All:          every row of the side's table (PBG's all_negs), the positive's own row masked.
enum class NegMode : int { Skip = 0, Uniform = 1, BatchUniform = 2, All = 3 };

// Inputs of the chunk step's score and gradient products (accumulation is always in the tables'
// dtype): FP32 as stored; TF32 (tensor cores, 10-bit mantissa inputs) or BF16 (inputs rounded to
// bfloat16) on CUDA with float32 tables only. The CPU kernels compute in FP32.
enum class Precision : int { FP32 = 0, TF32 = 1, BF16 = 2 };

// PBG replaces masked negative scores with this value before the loss; every loss then gives
// them zero loss and zero gradient.
constexpr double kMaskedScore = -1e9;
// PBG's L2 comparator clamps the squared distance below at this value before the sqrt.
constexpr double kL2MinSquaredDist = 1e-30;

// Number of parameters per relation for an operator over D-dim embeddings, packed flat:
//   translation [t(D)], diagonal [d(D)], complex_diagonal [real(D/2) | imag(D/2)],
//   linear [M(D*D) row-major, out_i = sum_j M_ij x_j], affine [M(D*D) | t(D)].
PBG_HD int64_t operator_num_params(Operator op, int64_t dim) {
  switch (op) {
    case Operator::None: return 0;
    case Operator::Translation:
    case Operator::Diagonal:
    case Operator::ComplexDiagonal: return dim;
    case Operator::Linear: return dim * dim;
    case Operator::Affine: return dim * dim + dim;
  }
  return 0;
}

}  // namespace pbg
