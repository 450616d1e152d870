// Enums -> template parameters, shared by the CPU kernels (csrc/cpu) and the CUDA launchers
// (csrc/cuda/device_common.cuh): host code, torch-free, CUDA-free. The name -> enum parsing
// with its errors is csrc/cpu/dispatch.h. Inner loops never branch on the comparator /
// operator / loss. An enum value outside its cases (never produced by parse_*) aborts.
#pragma once

#include <cstdlib>
#include <type_traits>

#include "common.h"

namespace pbg {

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
  std::abort();  // parse_* produced the enum: unreachable
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
  std::abort();
}

template <typename F>
auto dispatch_loss(Loss l, F&& f) {
  switch (l) {
    case Loss::Ranking: return f(LossTag<Loss::Ranking>{});
    case Loss::Logistic: return f(LossTag<Loss::Logistic>{});
    case Loss::Softmax: return f(LossTag<Loss::Softmax>{});
  }
  std::abort();
}

}  // namespace pbg
