// Dequantize fused with the cast to the compute dtype (see [Note: quantizer
// convention] in quantize_launch.h): out[i] = T(float(q[i]) * s[group(i)]).
//
// Fusing the cast avoids materialising an fp32 copy of a gathered ZeRO++
// shard only to cast it again. Grid-stride elementwise loop; __fmul_rn keeps
// the product IEEE (no contraction), matching the CPU implementations.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../includes/ds_cuda_convert.cuh"
#include "quantize_launch.h"

namespace ds_kernels {
namespace {

constexpr int kBlockSize = 256;
constexpr int64_t kMaxGridBlocks = 1 << 16;

template <typename T>
__global__ void dequantize_kernel(const int8_t* __restrict__ q,
                                  const float* __restrict__ scales,
                                  int64_t numel,
                                  int64_t group_size,
                                  T* __restrict__ out)
{
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
        const float s = scales[i / group_size];
        out[i] = from_float<T>(__fmul_rn(static_cast<float>(q[i]), s));
    }
}

template <typename T>
cudaError_t launch_typed(const int8_t* q, const float* scales, int64_t numel, int64_t group_size, void* out,
                         cudaStream_t stream)
{
    int64_t grid = (numel + kBlockSize - 1) / kBlockSize;
    if (grid > kMaxGridBlocks) grid = kMaxGridBlocks;
    dequantize_kernel<T><<<static_cast<unsigned int>(grid), kBlockSize, 0, stream>>>(
        q, scales, numel, group_size, static_cast<T*>(out));
    return cudaGetLastError();
}

}  // namespace

const char* dequantize_launch(const int8_t* q,
                              const float* scales,
                              int64_t numel,
                              int64_t groups,
                              ScalarKind out_kind,
                              void* out,
                              void* stream)
{
    if (groups <= 0 || numel % groups != 0) return "dequantize: numel must be divisible by a positive group count";
    if (numel == 0) return nullptr;
    const int64_t group_size = numel / groups;
    auto cu_stream = static_cast<cudaStream_t>(stream);
    cudaError_t err;
    switch (out_kind) {
        case ScalarKind::kFloat32:
            err = launch_typed<float>(q, scales, numel, group_size, out, cu_stream);
            break;
        case ScalarKind::kFloat16:
            err = launch_typed<__half>(q, scales, numel, group_size, out, cu_stream);
            break;
        case ScalarKind::kBFloat16:
            err = launch_typed<__nv_bfloat16>(q, scales, numel, group_size, out, cu_stream);
            break;
        default: return "dequantize: unsupported output dtype";
    }
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace ds_kernels
