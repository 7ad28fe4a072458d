// The cpu_inference op's kernels (bound in bindings.cpp): the CPU decode step's products and attention.
//
// Only ATen's tensor header here, and torch's pybind header in bindings.cpp:
// <torch/extension.h> alone takes ~45 s to compile on a 2-core machine.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

// x (M, K) . w (N, K)^T (+ bias (N)) for small M; fp32, contiguous (decode_linear.cpp).
at::Tensor decode_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b);

// One decode step's attention over the caches' first `length` slots (decode_attention.cpp).
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& valid,
                            int64_t length, double scale);

// fp32 lanes per vector of this build.
int simd_width();
