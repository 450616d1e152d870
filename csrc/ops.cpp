// Every op schema of pbg_fast, in one place. Kernels register their implementations with
// TORCH_LIBRARY_IMPL(pbg_fast, <backend>, m) at the bottom of their own files.
// Shapes and semantics are documented in pbg_fast/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "cpu/blas.h"

TORCH_LIBRARY(pbg_fast, m) {
  m.def(
      "chunked_neg_scores(Tensor lhs_pos, Tensor rhs_pos, Tensor lhs_neg, Tensor rhs_neg, "
      "str comparator) -> (Tensor, Tensor, Tensor)");
  m.def(
      "chunked_neg_scores_backward(Tensor grad_pos, Tensor grad_lhs_neg, Tensor grad_rhs_neg, "
      "Tensor lhs_pos, Tensor rhs_pos, Tensor lhs_neg, Tensor rhs_neg, str comparator) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("loss_forward(Tensor pos, Tensor neg, Tensor? weight, str loss, float margin) -> Tensor");
  m.def(
      "loss_backward(Tensor grad, Tensor pos, Tensor neg, Tensor? weight, str loss, float margin) "
      "-> (Tensor, Tensor)");
  m.def("operator_forward(Tensor x, Tensor op_params, Tensor rel, str operator) -> Tensor");
  m.def(
      "operator_backward(Tensor grad_out, Tensor x, Tensor op_params, Tensor rel, str operator) "
      "-> (Tensor, Tensor)");
  m.def(
      "row_adagrad_(Tensor(a!) weight, Tensor(b!) state, Tensor indices, Tensor grad, float lr, "
      "float eps) -> ()");
  m.def(
      "chunk_step(Tensor src_emb, Tensor dst_emb, Tensor src_idx, Tensor dst_idx, Tensor rel, "
      "Tensor op_params, Tensor src_uniform, Tensor dst_uniform, Tensor? weight, int chunk_size, "
      "str src_mode, str dst_mode, str comparator, str operator, str loss, float margin) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace {

const char* cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("amx-bf16")) return "avx512+amx";
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
  return Py_BuildValue("{s:s,s:s,s:s,s:O}", "cpu_isa", cpu_isa(), "compiled_isa", compiled_isa(),
                       "blas", pbg::cpu::blas_name(), "openmp", openmp ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"native_build_info", native_build_info, METH_NOARGS, "What the extension was built with."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "pbg_fast native ops", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
