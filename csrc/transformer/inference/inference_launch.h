// Host API of the decode-path CUDA kernels (plain C++, no CUDA or torch types),
// shared by the .cu files here and the torch binding pt_binding.cpp.
//
// Every kernel has a torch reference in deepspeed/inference/kernels.py that
// defines its maths: RMSNorm with fp32 statistics (Llama), LayerNorm,
// rotary embedding on the first `rot` channels (half-split convention), and
// act(x + bias). Rows are contiguous; `stream` is a cudaStream_t. Each
// launcher returns nullptr on success, else an error text.
#pragma once

#include <cstdint>

#include "../../includes/ds_kernel_types.h"

namespace ds_kernels {

// x, out: rows x cols of `kind`; weight (and bias): cols of `kind`.
const char* rms_norm_launch(const void* x, const void* weight, void* out, int64_t rows, int64_t cols, float eps,
                            ScalarKind kind, void* stream);
const char* layer_norm_launch(const void* x, const void* weight, const void* bias, void* out, int64_t rows,
                              int64_t cols, float eps, ScalarKind kind, void* stream);

// x, out: (batch, heads, seq, head_dim); cos, sin: (batch, seq, rot), rot <= head_dim and even.
const char* rotary_launch(const void* x, const void* cos, const void* sin, void* out, int64_t batch, int64_t heads,
                          int64_t seq, int64_t head_dim, int64_t rot, ScalarKind kind, void* stream);

// x, out: rows x cols; bias: cols. activation: 0 relu, 1 gelu (erf), 2 gelu (tanh), 3 silu.
const char* bias_activation_launch(const void* x, const void* bias, void* out, int64_t rows, int64_t cols,
                                   int activation, ScalarKind kind, void* stream);

}  // namespace ds_kernels
