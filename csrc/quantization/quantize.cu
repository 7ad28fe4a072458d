// Per-group symmetric int8 quantization on CUDA (see [Note: quantizer
// convention] in quantize_launch.h).
//
// One block per group (grid-stride over groups when there are more groups
// than blocks): a strided pass finds the group's absmax with a warp-shuffle
// reduction, then a second pass writes q. __fdiv_rn keeps the division IEEE
// even under --use_fast_math, which is what makes the result bit-identical
// to the CPU implementations.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../includes/ds_cuda_convert.cuh"
#include "quantize_launch.h"

namespace ds_kernels {
namespace {

constexpr int kBlockSize = 256;
constexpr int kWarpSize = 32;
constexpr int kMaxGridBlocks = 1 << 20;

// Max over all threads of the block; every thread gets the result.
// `shared` needs one float per warp.
__device__ __forceinline__ float block_reduce_max(float v, float* shared)
{
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int n_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
    if (warp == 0) {
        v = lane < n_warps ? shared[lane] : 0.0f;
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
        }
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    const float result = shared[0];
    __syncthreads();  // shared[] is reused by the next group
    return result;
}

template <typename T>
__global__ void quantize_kernel(const T* __restrict__ x,
                                int64_t groups,
                                int64_t group_size,
                                float qmax,
                                int8_t* __restrict__ q,
                                float* __restrict__ scales)
{
    __shared__ float warp_max[kBlockSize / kWarpSize];
    const float qmin = -qmax - 1.0f;
    for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
        const T* xg = x + g * group_size;
        int8_t* qg = q + g * group_size;

        float absmax = 0.0f;
        for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
            absmax = fmaxf(absmax, fabsf(to_float(xg[i])));
        }
        absmax = block_reduce_max(absmax, warp_max);

        float scale = __fdiv_rn(absmax, qmax);
        if (scale == 0.0f) scale = 1.0f;
        if (threadIdx.x == 0) scales[g] = scale;

        for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
            float v = rintf(__fdiv_rn(to_float(xg[i]), scale));  // round half to even
            v = fminf(fmaxf(v, qmin), qmax);
            qg[i] = static_cast<int8_t>(__float2int_rn(v));
        }
    }
}

template <typename T>
cudaError_t launch_typed(const void* x, int64_t groups, int64_t group_size, float qmax, int8_t* q, float* scales,
                         cudaStream_t stream)
{
    const int64_t grid = groups < kMaxGridBlocks ? groups : kMaxGridBlocks;
    quantize_kernel<T><<<static_cast<unsigned int>(grid), kBlockSize, 0, stream>>>(
        static_cast<const T*>(x), groups, group_size, qmax, q, scales);
    return cudaGetLastError();
}

}  // namespace

const char* quantize_launch(const void* x,
                            ScalarKind x_kind,
                            int64_t numel,
                            int64_t groups,
                            int bits,
                            int8_t* q,
                            float* scales,
                            void* stream)
{
    if (groups <= 0 || numel % groups != 0) return "quantize: numel must be divisible by a positive group count";
    if (bits < 2 || bits > 8) return "quantize: bits must be in [2, 8]";
    if (numel == 0) return nullptr;
    const int64_t group_size = numel / groups;
    const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
    auto cu_stream = static_cast<cudaStream_t>(stream);
    cudaError_t err;
    switch (x_kind) {
        case ScalarKind::kFloat32:
            err = launch_typed<float>(x, groups, group_size, qmax, q, scales, cu_stream);
            break;
        case ScalarKind::kFloat16:
            err = launch_typed<__half>(x, groups, group_size, qmax, q, scales, cu_stream);
            break;
        case ScalarKind::kBFloat16:
            err = launch_typed<__nv_bfloat16>(x, groups, group_size, qmax, q, scales, cu_stream);
            break;
        default: return "quantize: unsupported input dtype";
    }
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace ds_kernels
