// Host API of the multi-tensor Adam kernel (plain C++, no CUDA or torch types),
// shared by multi_tensor_adam.cu and the torch binding fused_adam_frontend.cpp.
#pragma once

#include <cstdint>

#include "../includes/ds_kernel_types.h"

namespace ds_kernels {

// Hyper-parameters of one Adam step. `mode` 1 is AdamW (decoupled decay,
// p *= 1 - lr*wd), 0 is Adam with L2 (g += wd*p). `step` is the 1-based step
// count used for bias correction.
struct AdamHyper {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    int64_t step;
    int mode;
    bool bias_correction;
};

// Updates n tensors in place. g[t] and p[t] have element type param_kind, m[t]
// and v[t] (exp_avg, exp_avg_sq) have state_kind; tensor t holds numels[t]
// contiguous elements. state_kind must be kFloat32 or equal to param_kind.
// Math is fp32. When *noop_flag (device int) is non-zero nothing is written.
// `stream` is a cudaStream_t. Returns nullptr on success, else an error text.
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
                                     void* stream);

}  // namespace ds_kernels
