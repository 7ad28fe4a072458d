// Multi-tensor fused Adam/AdamW: one launch updates up to 36 tensors
// (see multi_tensor_apply.cuh), each block owning one chunk of one tensor.
//
// Parameters and gradients may be fp32, fp16 or bf16; exp_avg/exp_avg_sq are
// fp32 or the parameter's type. All arithmetic is fp32 and follows the order
// of torch's foreach Adam (lerp for exp_avg, sqrt(v)/sqrt(bc2) + eps), so the
// kernel and the CPU path of FusedAdam agree to fp32 rounding.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "../includes/ds_cuda_convert.cuh"
#include "../includes/multi_tensor_apply.cuh"
#include "multi_tensor_adam.h"

namespace ds_kernels {
namespace {

constexpr int kBlockSize = 512;

// Per-launch scalars, derived once on the host in double precision.
struct AdamScalars {
    float beta1;
    float beta2;
    float one_minus_beta1;
    float one_minus_beta2;
    float eps;
    float step_size;      // lr / (1 - beta1^t)
    float bc2_sqrt;       // sqrt(1 - beta2^t)
    float weight_decay;   // used for L2 mode
    float decay_factor;   // 1 - lr*wd, used for AdamW mode
    int mode;
};

template <typename P, typename S>
struct AdamFunctor {
    __device__ __forceinline__ void operator()(int64_t chunk_size,
                                               const int* __restrict__ noop_flag,
                                               const TensorListMeta<4>& meta,
                                               AdamScalars s)
    {
        if (*noop_flag != 0) return;
        const int tensor = meta.block_to_tensor[blockIdx.x];
        const int64_t offset = static_cast<int64_t>(meta.block_to_chunk[blockIdx.x]) * chunk_size;
        int64_t n = meta.numels[tensor] - offset;
        if (n > chunk_size) n = chunk_size;

        P* __restrict__ g = static_cast<P*>(meta.addresses[0][tensor]) + offset;
        P* __restrict__ p = static_cast<P*>(meta.addresses[1][tensor]) + offset;
        S* __restrict__ m = static_cast<S*>(meta.addresses[2][tensor]) + offset;
        S* __restrict__ v = static_cast<S*>(meta.addresses[3][tensor]) + offset;

        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            float gi = to_float(g[i]);
            float pi = to_float(p[i]);
            float mi = to_float(m[i]);
            float vi = to_float(v[i]);
            if (s.mode == 0) {
                gi = gi + s.weight_decay * pi;
            } else {
                pi = pi * s.decay_factor;
            }
            mi = mi + s.one_minus_beta1 * (gi - mi);
            vi = s.beta2 * vi + s.one_minus_beta2 * gi * gi;
            const float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
            pi = pi - s.step_size * (mi / denom);
            p[i] = from_float<P>(pi);
            m[i] = from_float<S>(mi);
            v[i] = from_float<S>(vi);
        }
    }
};

template <typename P, typename S>
cudaError_t launch_typed(int64_t chunk_size, const int* noop_flag, int n, void* const* const* lists,
                         const int64_t* numels, const AdamScalars& s, cudaStream_t stream)
{
    return multi_tensor_apply<4>(kBlockSize, chunk_size, noop_flag, n, lists, numels, stream,
                                 AdamFunctor<P, S>(), s);
}

}  // namespace

const char* multi_tensor_adam_launch(int64_t chunk_size,
                                     const int* noop_flag,
                                     int n,
                                     void* const* g,
                                     void* const* p,
                                     void* const* m,
                                     void* const* v,
                                     const int64_t* numels,
                                     ScalarKind param_kind,
                                     ScalarKind state_kind,
                                     const AdamHyper& hyper,
                                     void* stream)
{
    if (chunk_size <= 0) return "multi_tensor_adam: chunk_size must be positive";
    if (hyper.step < 1) return "multi_tensor_adam: step must be >= 1";
    if (hyper.mode != 0 && hyper.mode != 1) return "multi_tensor_adam: mode must be 0 (Adam) or 1 (AdamW)";

    const double t = static_cast<double>(hyper.step);
    const double bc1 = hyper.bias_correction ? 1.0 - std::pow(static_cast<double>(hyper.beta1), t) : 1.0;
    const double bc2 = hyper.bias_correction ? 1.0 - std::pow(static_cast<double>(hyper.beta2), t) : 1.0;
    AdamScalars s;
    s.beta1 = hyper.beta1;
    s.beta2 = hyper.beta2;
    s.one_minus_beta1 = static_cast<float>(1.0 - static_cast<double>(hyper.beta1));
    s.one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(hyper.beta2));
    s.eps = hyper.eps;
    s.step_size = static_cast<float>(static_cast<double>(hyper.lr) / bc1);
    s.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    s.weight_decay = hyper.weight_decay;
    s.decay_factor = static_cast<float>(1.0 - static_cast<double>(hyper.lr) * hyper.weight_decay);
    s.mode = hyper.mode;

    void* const* lists[4] = {g, p, m, v};
    auto cu_stream = static_cast<cudaStream_t>(stream);
    cudaError_t err;
    const bool fp32_state = state_kind == ScalarKind::kFloat32;
    if (!fp32_state && state_kind != param_kind) {
        return "multi_tensor_adam: optimizer state must be fp32 or the parameter dtype";
    }
    switch (param_kind) {
        case ScalarKind::kFloat32:
            err = launch_typed<float, float>(chunk_size, noop_flag, n, lists, numels, s, cu_stream);
            break;
        case ScalarKind::kFloat16:
            err = fp32_state ? launch_typed<__half, float>(chunk_size, noop_flag, n, lists, numels, s, cu_stream)
                             : launch_typed<__half, __half>(chunk_size, noop_flag, n, lists, numels, s, cu_stream);
            break;
        case ScalarKind::kBFloat16:
            err = fp32_state
                      ? launch_typed<__nv_bfloat16, float>(chunk_size, noop_flag, n, lists, numels, s, cu_stream)
                      : launch_typed<__nv_bfloat16, __nv_bfloat16>(chunk_size, noop_flag, n, lists, numels, s,
                                                                   cu_stream);
            break;
        default: return "multi_tensor_adam: unsupported parameter dtype";
    }
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace ds_kernels
