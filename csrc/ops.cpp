// The pbg_fast op library: every schema (csrc/op_schemas.h). Kernels register their
// implementations with TORCH_LIBRARY_IMPL(pbg_fast, <backend>, m) at the bottom of their own
// files. Shapes and semantics are documented in pbg_fast/ops.py.
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(pbg_fast, m) {
  for (const char* schema : pbg::kOpSchemas) m.def(schema);
}
