#include "dispatch.h"

namespace pbg {

Comparator parse_comparator(const std::string& name, const char* op) {
  if (name == "dot") return Comparator::Dot;
  if (name == "cos") return Comparator::Cos;
  if (name == "l2") return Comparator::L2;
  if (name == "squared_l2") return Comparator::SquaredL2;
  TORCH_CHECK_VALUE(false, op, ": comparator: unknown '", name,
                    "'; expected one of dot, cos, l2, squared_l2");
}

Operator parse_operator(const std::string& name, const char* op) {
  if (name == "none") return Operator::None;
  if (name == "translation") return Operator::Translation;
  if (name == "diagonal") return Operator::Diagonal;
  if (name == "complex_diagonal") return Operator::ComplexDiagonal;
  if (name == "linear") return Operator::Linear;
  if (name == "affine") return Operator::Affine;
  TORCH_CHECK_VALUE(false, op, ": operator: unknown '", name,
                    "'; expected one of none, translation, diagonal, complex_diagonal, linear, "
                    "affine");
}

Loss parse_loss(const std::string& name, const char* op) {
  if (name == "ranking") return Loss::Ranking;
  if (name == "logistic") return Loss::Logistic;
  if (name == "softmax") return Loss::Softmax;
  TORCH_CHECK_VALUE(false, op, ": loss: unknown '", name,
                    "'; expected one of ranking, logistic, softmax");
}

NegMode parse_neg_mode(const std::string& name, const char* op, const char* arg) {
  if (name == "skip") return NegMode::Skip;
  if (name == "uniform") return NegMode::Uniform;
  if (name == "batch_uniform") return NegMode::BatchUniform;
  if (name == "all") return NegMode::All;
  TORCH_CHECK_VALUE(false, op, ": ", arg, ": unknown '", name,
                    "'; expected one of skip, uniform, batch_uniform, all");
}

Precision parse_precision(const std::string& name, const char* op, at::ScalarType dtype) {
  Precision p;
  if (name == "fp32") {
    p = Precision::FP32;
  } else if (name == "tf32") {
    p = Precision::TF32;
  } else if (name == "bf16") {
    p = Precision::BF16;
  } else {
    TORCH_CHECK_VALUE(false, op, ": precision: unknown '", name,
                      "'; expected one of fp32, tf32, bf16");
  }
  TORCH_CHECK_VALUE(p == Precision::FP32 || dtype == at::kFloat, op, ": precision '", name,
                    "' needs float32 tables, got ", dtype, "; use 'fp32'");
  return p;
}

void check_on(const at::Tensor& t, c10::DeviceType device, const char* op, const char* arg) {
  TORCH_CHECK(t.device().type() == device, op, ": ", arg, " must be a ",
              c10::DeviceTypeName(device), " tensor, got ", t.device());
}

void check_float_on(const at::Tensor& t, c10::DeviceType device, const char* op,
                    const char* arg) {
  check_on(t, device, op, arg);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", arg,
                   " must be float32 or float64, got ", t.scalar_type());
}

void check_index_on(const at::Tensor& t, c10::DeviceType device, const char* op,
                    const char* arg) {
  check_on(t, device, op, arg);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": ", arg, " must be int64, got ",
                   t.scalar_type());
}

void check_cpu(const at::Tensor& t, const char* op, const char* arg) {
  check_on(t, c10::DeviceType::CPU, op, arg);
}

void check_float_matrix(const at::Tensor& t, const char* op, const char* arg) {
  check_float_on(t, c10::DeviceType::CPU, op, arg);
}

void check_index(const at::Tensor& t, const char* op, const char* arg) {
  check_index_on(t, c10::DeviceType::CPU, op, arg);
}

void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg,
                      const char* ref_arg) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", arg, " must have the dtype of ",
                   ref_arg, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

}  // namespace pbg
