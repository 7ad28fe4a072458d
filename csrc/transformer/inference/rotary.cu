// Rotary position embedding on the first `rot` channels of each head (see inference_launch.h).
#include <cuda_runtime.h>

#include "../../includes/ds_cuda_convert.cuh"
#include "inference_launch.h"

namespace ds_kernels {
namespace {

// One thread per output element: channel c < rot/2 pairs with c + rot/2
// (rotate_half: out = x * cos + [-x2, x1] * sin); channels >= rot pass through.
template <typename T>
__global__ void rotary_kernel(const T* x, const T* cos, const T* sin, T* out, int64_t total, int64_t heads,
                              int64_t seq, int64_t head_dim, int64_t rot)
{
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= total) return;
    const int64_t c = i % head_dim;
    if (c >= rot) {
        out[i] = x[i];
        return;
    }
    const int64_t s = (i / head_dim) % seq;
    const int64_t b = i / (head_dim * seq * heads);
    const int64_t table = (b * seq + s) * rot + c;
    const int64_t half = rot / 2;
    const float other = c < half ? -to_float(x[i + half]) : to_float(x[i - half]);
    // Rounded like the reference: each product in T, then the sum.
    const float a = to_float(from_float<T>(to_float(x[i]) * to_float(cos[table])));
    const float r = to_float(from_float<T>(other * to_float(sin[table])));
    out[i] = from_float<T>(a + r);
}

template <typename T>
const char* launch(const void* x, const void* cos, const void* sin, void* out, int64_t batch, int64_t heads,
                   int64_t seq, int64_t head_dim, int64_t rot, cudaStream_t stream)
{
    const int64_t total = batch * heads * seq * head_dim;
    if (total == 0) return nullptr;
    if (rot % 2 != 0 || rot > head_dim) return "rotary: rot must be even and <= head_dim";
    const int threads = 256;
    const int64_t blocks = (total + threads - 1) / threads;
    rotary_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(cos),
                                                     static_cast<const T*>(sin), static_cast<T*>(out), total, heads,
                                                     seq, head_dim, rot);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* rotary_launch(const void* x, const void* cos, const void* sin, void* out, int64_t batch, int64_t heads,
                          int64_t seq, int64_t head_dim, int64_t rot, ScalarKind kind, void* stream)
{
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (kind) {
        case ScalarKind::kFloat32: return launch<float>(x, cos, sin, out, batch, heads, seq, head_dim, rot, s);
        case ScalarKind::kFloat16: return launch<__half>(x, cos, sin, out, batch, heads, seq, head_dim, rot, s);
        case ScalarKind::kBFloat16:
            return launch<__nv_bfloat16>(x, cos, sin, out, batch, heads, seq, head_dim, rot, s);
    }
    return "rotary: unknown scalar kind";
}

}  // namespace ds_kernels
