// act(x + bias), the epilogue of an MLP-in matmul (see inference_launch.h).
#include <cuda_runtime.h>

#include "../../includes/ds_cuda_convert.cuh"
#include "inference_launch.h"

namespace ds_kernels {
namespace {

__device__ __forceinline__ float activate(float v, int activation)
{
    switch (activation) {
        case 0: return v > 0.f ? v : 0.f;
        case 1: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
        case 2: {
            const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
            return 0.5f * v * (1.f + tanhf(inner));
        }
        default: return v / (1.f + expf(-v));
    }
}

template <typename T>
__global__ void bias_act_kernel(const T* x, const T* bias, T* out, int64_t total, int64_t cols, int activation)
{
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= total) return;
    // x + bias is rounded to T first, as the reference adds in T.
    const float v = to_float(from_float<T>(to_float(x[i]) + to_float(bias[i % cols])));
    out[i] = from_float<T>(activate(v, activation));
}

template <typename T>
const char* launch(const void* x, const void* bias, void* out, int64_t rows, int64_t cols, int activation,
                   cudaStream_t stream)
{
    const int64_t total = rows * cols;
    if (total == 0) return nullptr;
    if (activation < 0 || activation > 3) return "bias_activation: unknown activation code";
    const int threads = 256;
    bias_act_kernel<T><<<(total + threads - 1) / threads, threads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(out), total, cols, activation);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* bias_activation_launch(const void* x, const void* bias, void* out, int64_t rows, int64_t cols,
                                   int activation, ScalarKind kind, void* stream)
{
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (kind) {
        case ScalarKind::kFloat32: return launch<float>(x, bias, out, rows, cols, activation, s);
        case ScalarKind::kFloat16: return launch<__half>(x, bias, out, rows, cols, activation, s);
        case ScalarKind::kBFloat16: return launch<__nv_bfloat16>(x, bias, out, rows, cols, activation, s);
    }
    return "bias_activation: unknown scalar kind";
}

}  // namespace ds_kernels
