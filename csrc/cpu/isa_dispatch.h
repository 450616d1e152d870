// Run-time ISA dispatch for the chunk step's element-wise work (the fp32 GEMMs have their own
// kernels, gemm_kernel.h). In a portable build (no -march: the x86-64 baseline, SSE2), a hot
// function's body is written once as an always-inline template and wrapped three times: as
// is, with target("arch=x86-64-v3") (AVX2, FMA) and with target("arch=x86-64-v4") (AVX-512
// F/BW/DQ/VL). The body and what it inlines are compiled for each wrapper's ISA; a callee that
// is not inlined runs its one baseline copy, so no code of one ISA is linked into another's
// path. The wrapper runs at isa_level() (blas.h: chosen once at load from the CPU, lowered by
// PBG_FAST_ISA). A build that already targets AVX2 or better (-march=native) has one version.
#pragma once

#include "blas.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX2__)
#define PBG_ISA_VERSIONS 1
#define PBG_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#define PBG_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#endif
