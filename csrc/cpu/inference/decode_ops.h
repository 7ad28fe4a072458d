// The cpu_inference op's kernels (bound in bindings.cpp): the CPU decode step's products and attention.
#pragma once

#include <torch/extension.h>

// x (M, K) . w (N, K)^T (+ bias (N)) for small M; fp32, contiguous (decode_linear.cpp).
torch::Tensor decode_linear(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b);

// One decode step's attention over the caches' first `length` slots (decode_attention.cpp).
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& valid, int64_t length, double scale);

// fp32 lanes per vector of this build.
int simd_width();
