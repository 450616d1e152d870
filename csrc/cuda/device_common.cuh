// Shared machinery of the CUDA kernels: one launch shape (a grid-stride loop over an index space
// calling a functor), an accumulate that is atomic on the device, and enum -> template dispatch.
//
// Every kernel in csrc/cuda is a functor `f(i)` over an index range run by for_each_index(), so
// the per-element math lives in __host__ __device__ code. Defining PBG_CUDA_HOST_EMULATION makes
// for_each_index() run the range sequentially on the host instead of launching: the launchers
// can then be exercised on host memory on a machine without a GPU (a test hook; production
// builds never define it).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../kernels/common.h"
#include "../kernels/tags.h"

namespace pbg {
namespace cuda {
namespace detail {

constexpr int kThreadsPerBlock = 256;
// Grid-stride loops cover any range; more blocks than this only add scheduling overhead.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

#if !defined(PBG_CUDA_HOST_EMULATION)
template <typename F>
__global__ void for_each_index_kernel(int64_t n, F f) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}
#endif

// Runs f(i) for i in [0, n) on `stream`; returns the launch error. n == 0 launches nothing (a
// zero-block grid is an error in CUDA).
template <typename F>
cudaError_t for_each_index(int64_t n, const F& f, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
#if defined(PBG_CUDA_HOST_EMULATION)
  (void)stream;
  for (int64_t i = 0; i < n; ++i) f(i);
  return cudaSuccess;
#else
  int64_t blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  for_each_index_kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(n, f);
  return cudaGetLastError();
#endif
}

#if defined(__CUDACC__)
__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 600
  atomicAdd(p, v);
#else
  // No native double atomicAdd before sm_60 (torch's default arch list may still name them).
  unsigned long long* addr = reinterpret_cast<unsigned long long*>(p);
  unsigned long long old = *addr, assumed;
  do {
    assumed = old;
    old = atomicCAS(addr, assumed, __double_as_longlong(v + __longlong_as_double(assumed)));
  } while (assumed != old);
#endif
}
#endif

// *p += v, atomically on the device (several threads accumulate into one parameter row).
template <typename T>
PBG_HD void add_to(T* p, T v) {
#if defined(__CUDA_ARCH__)
  atomic_add(p, v);
#else
  *p += v;
#endif
}

PBG_HD int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Enum -> compile-time constant, so inner loops never branch on the comparator / operator /
// loss: f receives a tag whose ::value is the constant. The one dispatch shared with the CPU
// kernels (csrc/kernels/tags.h).
using ::pbg::dispatch_comparator;
using ::pbg::dispatch_loss;
using ::pbg::dispatch_operator;

// Returns from the enclosing function on a launch error.
#define PBG_CUDA_RETURN_IF_ERROR(expr)            \
  do {                                            \
    const cudaError_t pbg_err_ = (expr);          \
    if (pbg_err_ != cudaSuccess) return pbg_err_; \
  } while (0)

}  // namespace detail
}  // namespace cuda
}  // namespace pbg
