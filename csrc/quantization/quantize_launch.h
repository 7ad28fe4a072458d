// Host API of the CUDA quantizer kernels (plain C++, no CUDA or torch types),
// shared by quantize.cu / dequantize.cu and the torch binding pt_binding.cpp.
//
// [Note: quantizer convention] Symmetric per-group quantization, no zero
// point. x (numel elements) is split into `groups` equal contiguous groups.
// For group g: qmax = 2^(bits-1) - 1, s = absmax(x_g) / qmax computed in fp32
// (s = 1 when that is 0, so an all-zero group dequantizes to zeros),
// q = clamp(round_half_to_even(x / s), -qmax-1, qmax) with an IEEE fp32
// division, and dequantize gives (float(q) * s) rounded to the output dtype.
// The torch reference (deepspeed/ops/quantizer/reference.py), the C++ CPU op
// (cpu_quantizer.cpp) and these kernels all follow it, so they agree bit for
// bit on finite inputs.
#pragma once

#include <cstdint>

#include "../includes/ds_kernel_types.h"

namespace ds_kernels {

// x: numel elements of x_kind; q: numel int8; scales: `groups` floats.
// numel % groups == 0 and 2 <= bits <= 8 are the caller's contract.
// `stream` is a cudaStream_t. Returns nullptr on success, else an error text.
const char* quantize_launch(const void* x,
                            ScalarKind x_kind,
                            int64_t numel,
                            int64_t groups,
                            int bits,
                            int8_t* q,
                            float* scales,
                            void* stream);

// out: numel elements of out_kind, out[i] = float(q[i]) * scales[i / group_size].
const char* dequantize_launch(const int8_t* q,
                              const float* scales,
                              int64_t numel,
                              int64_t groups,
                              ScalarKind out_kind,
                              void* out,
                              void* stream);

}  // namespace ds_kernels
