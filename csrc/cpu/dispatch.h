// Host-side dispatch: names -> enums (with errors that name the argument), enums -> template
// parameters. Inner loops never branch on the comparator / operator / loss.
#pragma once

#include <torch/types.h>

#include <string>
#include <type_traits>

#include "../kernels/common.h"

namespace pbg {

Comparator parse_comparator(const std::string& name, const char* op);
Operator parse_operator(const std::string& name, const char* op);
Loss parse_loss(const std::string& name, const char* op);
NegMode parse_neg_mode(const std::string& name, const char* op, const char* arg);

template <Comparator C>
using ComparatorTag = std::integral_constant<Comparator, C>;
template <Operator O>
using OperatorTag = std::integral_constant<Operator, O>;
template <Loss L>
using LossTag = std::integral_constant<Loss, L>;

template <typename F>
auto dispatch_comparator(Comparator c, F&& f) {
  switch (c) {
    case Comparator::Dot: return f(ComparatorTag<Comparator::Dot>{});
    case Comparator::Cos: return f(ComparatorTag<Comparator::Cos>{});
    case Comparator::L2: return f(ComparatorTag<Comparator::L2>{});
    case Comparator::SquaredL2: return f(ComparatorTag<Comparator::SquaredL2>{});
  }
  TORCH_CHECK(false, "unreachable comparator");
}

template <typename F>
auto dispatch_operator(Operator o, F&& f) {
  switch (o) {
    case Operator::None: return f(OperatorTag<Operator::None>{});
    case Operator::Translation: return f(OperatorTag<Operator::Translation>{});
    case Operator::Diagonal: return f(OperatorTag<Operator::Diagonal>{});
    case Operator::ComplexDiagonal: return f(OperatorTag<Operator::ComplexDiagonal>{});
    case Operator::Linear: return f(OperatorTag<Operator::Linear>{});
    case Operator::Affine: return f(OperatorTag<Operator::Affine>{});
  }
  TORCH_CHECK(false, "unreachable operator");
}

template <typename F>
auto dispatch_loss(Loss l, F&& f) {
  switch (l) {
    case Loss::Ranking: return f(LossTag<Loss::Ranking>{});
    case Loss::Logistic: return f(LossTag<Loss::Logistic>{});
    case Loss::Softmax: return f(LossTag<Loss::Softmax>{});
  }
  TORCH_CHECK(false, "unreachable loss");
}

// Argument checks shared by the ops; every message names the op and the argument.
void check_float_matrix(const at::Tensor& t, const char* op, const char* arg);
void check_cpu(const at::Tensor& t, const char* op, const char* arg);
void check_index(const at::Tensor& t, const char* op, const char* arg);
void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op,
                      const char* arg, const char* ref_arg);

}  // namespace pbg
