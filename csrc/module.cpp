// The Python module pbg_fast._C: importing it registers the ops (csrc/ops.cpp and the
// TORCH_LIBRARY_IMPL blocks); it also reports what the extension was built with.
#include <Python.h>

#include "cpu/blas.h"
#include "cpu/isa_dispatch.h"

namespace {

const char* cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "sse2";
#elif defined(__aarch64__)
  return "neon";
#else
  return "generic";
#endif
}

const char* compiled_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__x86_64__)
  return "x86-64";
#else
  return "generic";
#endif
}

PyObject* native_build_info(PyObject*, PyObject*) {
#ifdef _OPENMP
  const bool openmp = true;
#else
  const bool openmp = false;
#endif
#ifdef PBG_FAST_CUDA
  const bool cuda = true;
#else
  const bool cuda = false;
#endif
  return Py_BuildValue("{s:s,s:s,s:s,s:O,s:s,s:s,s:s,s:O,s:O,s:O}", "cpu_isa", cpu_isa(),
                       "compiled_isa", compiled_isa(), "isa_level",
                       pbg::cpu::gemm_isa_name(pbg::cpu::isa_level()), "isa_versions",
#ifdef PBG_ISA_VERSIONS
                       Py_True,
#else
                       Py_False,
#endif
                       "gemm_isa",
                       pbg::cpu::gemm_isa_name(pbg::cpu::gemm_isa()), "gemm_isa_best",
                       pbg::cpu::gemm_isa_name(pbg::cpu::best_gemm_isa()), "blas",
                       pbg::cpu::blas_name(), "openmp", openmp ? Py_True : Py_False, "cuda",
                       cuda ? Py_True : Py_False, "bf16_gemm",
                       pbg::cpu::have_bf16_gemm() ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"native_build_info", native_build_info, METH_NOARGS, "What the extension was built with."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "pbg_fast native ops", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
