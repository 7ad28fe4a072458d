// RMSNorm and LayerNorm, one block per row, fp32 statistics (see inference_launch.h).
#include <cuda_runtime.h>

#include "../../includes/ds_cuda_convert.cuh"
#include "inference_launch.h"

namespace ds_kernels {
namespace {

constexpr int kThreads = 256;

// Block-wide sum of one float per thread; every thread gets the total.
__device__ float block_sum(float v)
{
    __shared__ float partial[kThreads / 32];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
    __syncthreads();
    return total;
}

template <typename T>
__global__ void rms_norm_kernel(const T* x, const T* w, T* out, int64_t cols, float eps)
{
    const T* row = x + blockIdx.x * cols;
    T* dst = out + blockIdx.x * cols;
    float sq = 0.f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_float(row[i]);
        sq += v * v;
    }
    const float inv = rsqrtf(block_sum(sq) / static_cast<float>(cols) + eps);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        // As the reference: normalise in fp32, round to T, then scale by the weight.
        const float normed = to_float(from_float<T>(to_float(row[i]) * inv));
        dst[i] = from_float<T>(to_float(w[i]) * normed);
    }
}

template <typename T>
__global__ void layer_norm_kernel(const T* x, const T* w, const T* b, T* out, int64_t cols, float eps)
{
    const T* row = x + blockIdx.x * cols;
    T* dst = out + blockIdx.x * cols;
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += to_float(row[i]);
    const float mean = block_sum(s) / static_cast<float>(cols);
    float var = 0.f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
        const float d = to_float(row[i]) - mean;
        var += d * d;
    }
    const float inv = rsqrtf(block_sum(var) / static_cast<float>(cols) + eps);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
        dst[i] = from_float<T>((to_float(row[i]) - mean) * inv * to_float(w[i]) + to_float(b[i]));
}

template <typename T>
const char* launch_norm(const void* x, const void* w, const void* b, void* out, int64_t rows, int64_t cols,
                        float eps, cudaStream_t stream)
{
    if (rows == 0) return nullptr;
    if (b == nullptr)
        rms_norm_kernel<T><<<rows, kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                                          static_cast<T*>(out), cols, eps);
    else
        layer_norm_kernel<T><<<rows, kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                                            static_cast<const T*>(b), static_cast<T*>(out), cols,
                                                            eps);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* dispatch(const void* x, const void* w, const void* b, void* out, int64_t rows, int64_t cols, float eps,
                     ScalarKind kind, void* stream)
{
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (kind) {
        case ScalarKind::kFloat32: return launch_norm<float>(x, w, b, out, rows, cols, eps, s);
        case ScalarKind::kFloat16: return launch_norm<__half>(x, w, b, out, rows, cols, eps, s);
        case ScalarKind::kBFloat16: return launch_norm<__nv_bfloat16>(x, w, b, out, rows, cols, eps, s);
    }
    return "normalize: unknown scalar kind";
}

}  // namespace

const char* rms_norm_launch(const void* x, const void* weight, void* out, int64_t rows, int64_t cols, float eps,
                            ScalarKind kind, void* stream)
{
    return dispatch(x, weight, nullptr, out, rows, cols, eps, kind, stream);
}

const char* layer_norm_launch(const void* x, const void* weight, const void* bias, void* out, int64_t rows,
                              int64_t cols, float eps, ScalarKind kind, void* stream)
{
    if (bias == nullptr) return "layer_norm: bias is required";
    return dispatch(x, weight, bias, out, rows, cols, eps, kind, stream);
}

}  // namespace ds_kernels
