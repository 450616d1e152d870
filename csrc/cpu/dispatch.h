// Host-side dispatch: names -> enums (with errors that name the argument), enums -> template
// parameters. Inner loops never branch on the comparator / operator / loss.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <type_traits>

#include "../kernels/common.h"
#include "../kernels/tags.h"

namespace pbg {

Comparator parse_comparator(const std::string& name, const char* op);
Operator parse_operator(const std::string& name, const char* op);
Loss parse_loss(const std::string& name, const char* op);
NegMode parse_neg_mode(const std::string& name, const char* op, const char* arg);
// `precision` of chunk_step / train_bucket_: fp32, tf32, bf16; tf32 and bf16 only with float32
// tables (`dtype`). What the CPU kernels run: cpu::check_cpu_precision (chunk_step.h).
Precision parse_precision(const std::string& name, const char* op, at::ScalarType dtype);


// Argument checks shared by the ops; every message names the op and the argument. The *_on
// forms take the device the op runs on (the CPU kernels and the CUDA binding share them).
void check_on(const at::Tensor& t, c10::DeviceType device, const char* op, const char* arg);
void check_float_on(const at::Tensor& t, c10::DeviceType device, const char* op,
                    const char* arg);
void check_index_on(const at::Tensor& t, c10::DeviceType device, const char* op,
                    const char* arg);
void check_float_matrix(const at::Tensor& t, const char* op, const char* arg);
void check_cpu(const at::Tensor& t, const char* op, const char* arg);
void check_index(const at::Tensor& t, const char* op, const char* arg);
void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op,
                      const char* arg, const char* ref_arg);

}  // namespace pbg
