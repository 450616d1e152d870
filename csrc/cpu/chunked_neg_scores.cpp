// CPU `chunked_neg_scores` and its backward: the comparator over chunked positives and
// negatives, PBG's AbstractComparator.forward with "prepare" folded in.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "chunk_math.h"
#include "dispatch.h"
#include "op_args.h"

namespace pbg {
namespace {

constexpr const char* kOp = "chunked_neg_scores";

using Shapes = ScoresShapes;

Shapes check_inputs(const at::Tensor& lhs_pos, const at::Tensor& rhs_pos, const at::Tensor& lhs_neg,
                    const at::Tensor& rhs_neg, const char* op) {
  return check_scores_args(lhs_pos, rhs_pos, lhs_neg, rhs_neg, op, c10::DeviceType::CPU);
}

// Per-chunk workspace: prepared copies of the four inputs and their aux values.
template <typename T>
struct Prepared {
  std::vector<T> buf;
  T *a, *b, *ln, *rn, *aa, *ab, *aln, *arn;
  void load(const T* lp, const T* rp, const T* lnp, const T* rnp, const Shapes& s) {
    const int64_t P = s.P, L = s.L, R = s.R, D = s.D;
    buf.resize((2 * P + L + R) * (D + 1));
    T* p = buf.data();
    a = p; p += P * D; b = p; p += P * D; ln = p; p += L * D; rn = p; p += R * D;
    aa = p; p += P; ab = p; p += P; aln = p; p += L; arn = p;
    std::memcpy(a, lp, P * D * sizeof(T));
    std::memcpy(b, rp, P * D * sizeof(T));
    std::memcpy(ln, lnp, L * D * sizeof(T));
    std::memcpy(rn, rnp, R * D * sizeof(T));
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& lhs_pos,
                                                           const at::Tensor& rhs_pos,
                                                           const at::Tensor& lhs_neg,
                                                           const at::Tensor& rhs_neg,
                                                           c10::string_view comparator) {
  const Comparator cmp = parse_comparator(std::string(comparator), kOp);
  const Shapes s = check_inputs(lhs_pos, rhs_pos, lhs_neg, rhs_neg, kOp);
  auto lp = lhs_pos.contiguous(), rp = rhs_pos.contiguous();
  auto ln = lhs_neg.contiguous(), rn = rhs_neg.contiguous();
  auto pos = at::empty({s.C, s.P}, lp.options());
  auto lneg = at::empty({s.C, s.P, s.L}, lp.options());
  auto rneg = at::empty({s.C, s.P, s.R}, lp.options());
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), kOp, [&] {
    using T = scalar_t;
    dispatch_comparator(cmp, [&](auto ctag) {
      constexpr Comparator Cm = decltype(ctag)::value;
      at::parallel_for(0, s.C, 1, [&](int64_t begin, int64_t end) {
        cpu::blas_single_thread_in_this_thread();
        Prepared<T> w;
        const int64_t P = s.P, L = s.L, R = s.R, D = s.D;
        for (int64_t c = begin; c < end; ++c) {
          w.load(lp.data_ptr<T>() + c * P * D, rp.data_ptr<T>() + c * P * D,
                 ln.data_ptr<T>() + c * L * D, rn.data_ptr<T>() + c * R * D, s);
          cpu::prepare_rows<Cm>(w.a, P, D, w.aa);
          cpu::prepare_rows<Cm>(w.b, P, D, w.ab);
          cpu::prepare_rows<Cm>(w.ln, L, D, w.aln);
          cpu::prepare_rows<Cm>(w.rn, R, D, w.arn);
          cpu::pos_scores<Cm>(w.a, w.b, P, D, pos.data_ptr<T>() + c * P);
          cpu::neg_scores<Cm>(w.b, w.ab, P, w.ln, w.aln, L, D, lneg.data_ptr<T>() + c * P * L);
          cpu::neg_scores<Cm>(w.a, w.aa, P, w.rn, w.arn, R, D, rneg.data_ptr<T>() + c * P * R);
        }
      });
      return 0;
    });
  });
  return {pos, lneg, rneg};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_pos, const at::Tensor& grad_lhs_neg, const at::Tensor& grad_rhs_neg,
    const at::Tensor& lhs_pos, const at::Tensor& rhs_pos, const at::Tensor& lhs_neg,
    const at::Tensor& rhs_neg, c10::string_view comparator) {
  constexpr const char* kBw = "chunked_neg_scores_backward";
  const Comparator cmp = parse_comparator(std::string(comparator), kBw);
  const Shapes s = check_inputs(lhs_pos, rhs_pos, lhs_neg, rhs_neg, kBw);
  TORCH_CHECK_VALUE(grad_pos.sizes() == at::IntArrayRef({s.C, s.P}), kBw, ": grad_pos must be [",
                    s.C, ", ", s.P, "], got ", grad_pos.sizes());
  TORCH_CHECK_VALUE(grad_lhs_neg.sizes() == at::IntArrayRef({s.C, s.P, s.L}), kBw,
                    ": grad_lhs_neg has the wrong shape ", grad_lhs_neg.sizes());
  TORCH_CHECK_VALUE(grad_rhs_neg.sizes() == at::IntArrayRef({s.C, s.P, s.R}), kBw,
                    ": grad_rhs_neg has the wrong shape ", grad_rhs_neg.sizes());
  auto lp = lhs_pos.contiguous(), rp = rhs_pos.contiguous();
  auto ln = lhs_neg.contiguous(), rn = rhs_neg.contiguous();
  auto gp = grad_pos.to(lp.scalar_type()).contiguous();
  auto gl = grad_lhs_neg.to(lp.scalar_type()).contiguous();
  auto gr = grad_rhs_neg.to(lp.scalar_type()).contiguous();
  auto g_lp = at::zeros_like(lp), g_rp = at::zeros_like(rp);
  auto g_ln = at::empty_like(ln), g_rn = at::empty_like(rn);
  AT_DISPATCH_FLOATING_TYPES(lp.scalar_type(), kBw, [&] {
    using T = scalar_t;
    dispatch_comparator(cmp, [&](auto ctag) {
      constexpr Comparator Cm = decltype(ctag)::value;
      at::parallel_for(0, s.C, 1, [&](int64_t begin, int64_t end) {
        cpu::blas_single_thread_in_this_thread();
        Prepared<T> w;
        const int64_t P = s.P, L = s.L, R = s.R, D = s.D;
        std::vector<T> S, G, pos(P);
        for (int64_t c = begin; c < end; ++c) {
          w.load(lp.data_ptr<T>() + c * P * D, rp.data_ptr<T>() + c * P * D,
                 ln.data_ptr<T>() + c * L * D, rn.data_ptr<T>() + c * R * D, s);
          cpu::prepare_rows<Cm>(w.a, P, D, w.aa);
          cpu::prepare_rows<Cm>(w.b, P, D, w.ab);
          cpu::prepare_rows<Cm>(w.ln, L, D, w.aln);
          cpu::prepare_rows<Cm>(w.rn, R, D, w.arn);
          T* ga = g_lp.data_ptr<T>() + c * P * D;
          T* gb = g_rp.data_ptr<T>() + c * P * D;
          T* gln = g_ln.data_ptr<T>() + c * L * D;
          T* grn = g_rn.data_ptr<T>() + c * R * D;
          // lhs negatives: S[i, j] = s(rhs_pos_i, lhs_neg_j).
          S.resize(P * L);
          G.assign(gl.data_ptr<T>() + c * P * L, gl.data_ptr<T>() + (c + 1) * P * L);
          cpu::neg_scores<Cm>(w.b, w.ab, P, w.ln, w.aln, L, D, S.data());
          cpu::neg_grad_to_dot<Cm>(S.data(), G.data(), P * L);
          cpu::neg_backward_to_neg<Cm>(w.b, P, w.ln, L, D, G.data(), gln, T(0));
          cpu::neg_backward_to_query<Cm>(w.b, P, w.ln, L, D, G.data(), gb);
          // rhs negatives: S[i, j] = s(lhs_pos_i, rhs_neg_j).
          S.resize(P * R);
          G.assign(gr.data_ptr<T>() + c * P * R, gr.data_ptr<T>() + (c + 1) * P * R);
          cpu::neg_scores<Cm>(w.a, w.aa, P, w.rn, w.arn, R, D, S.data());
          cpu::neg_grad_to_dot<Cm>(S.data(), G.data(), P * R);
          cpu::neg_backward_to_neg<Cm>(w.a, P, w.rn, R, D, G.data(), grn, T(0));
          cpu::neg_backward_to_query<Cm>(w.a, P, w.rn, R, D, G.data(), ga);
          // positives
          cpu::pos_scores<Cm>(w.a, w.b, P, D, pos.data());
          cpu::pos_scores_backward<Cm>(w.a, w.b, pos.data(), gp.data_ptr<T>() + c * P, P, D, ga, gb);
          cpu::prepare_rows_backward<Cm>(w.a, w.aa, ga, P, D);
          cpu::prepare_rows_backward<Cm>(w.b, w.ab, gb, P, D);
          cpu::prepare_rows_backward<Cm>(w.ln, w.aln, gln, L, D);
          cpu::prepare_rows_backward<Cm>(w.rn, w.arn, grn, R, D);
        }
      });
      return 0;
    });
  });
  return {g_lp, g_rp, g_ln, g_rn};
}

}  // namespace

TORCH_LIBRARY_IMPL(pbg_fast, CPU, m) {
  m.impl("chunked_neg_scores", &forward_cpu);
  m.impl("chunked_neg_scores_backward", &backward_cpu);
}

}  // namespace pbg
