// torch binding of the decode-path kernels (transformer_inference op).
//
// Checks arguments, makes inputs contiguous, allocates outputs and calls the
// plain-CUDA launchers (inference_launch.h) on the current stream. The torch
// references in deepspeed/inference/kernels.py define the results.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "inference_launch.h"
#include "../../includes/ds_check.h"

namespace {

ds_kernels::ScalarKind to_kind(const at::Tensor& t, const char* what)
{
    DS_CHECK(t.is_cuda(), what, ": expected a CUDA tensor");
    switch (t.scalar_type()) {
        case at::kFloat: return ds_kernels::ScalarKind::kFloat32;
        case at::kHalf: return ds_kernels::ScalarKind::kFloat16;
        case at::kBFloat16: return ds_kernels::ScalarKind::kBFloat16;
        default: DS_CHECK(false, what, ": unsupported dtype ", t.scalar_type());
    }
}

void* stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

void check(const char* err) { DS_CHECK(err == nullptr, err ? err : ""); }

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps)
{
    const auto kind = to_kind(x, "rms_norm");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous(), wc = weight.to(x.scalar_type()).contiguous();
    at::Tensor out = at::empty_like(xc);
    const int64_t cols = xc.size(-1);
    check(ds_kernels::rms_norm_launch(xc.data_ptr(), wc.data_ptr(), out.data_ptr(), xc.numel() / cols, cols,
                                      static_cast<float>(eps), kind, stream()));
    return out;
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps)
{
    const auto kind = to_kind(x, "layer_norm");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous(), wc = weight.to(x.scalar_type()).contiguous(),
                     bc = bias.to(x.scalar_type()).contiguous();
    at::Tensor out = at::empty_like(xc);
    const int64_t cols = xc.size(-1);
    check(ds_kernels::layer_norm_launch(xc.data_ptr(), wc.data_ptr(), bc.data_ptr(), out.data_ptr(),
                                        xc.numel() / cols, cols, static_cast<float>(eps), kind, stream()));
    return out;
}

// x: (B, H, S, D); cos, sin: (B, S, rot) (or broadcastable over B).
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t rot)
{
    const auto kind = to_kind(x, "rotary");
    DS_CHECK(x.dim() == 4, "rotary: x must be (batch, heads, seq, head_dim)");
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t b = x.size(0), h = x.size(1), s = x.size(2), d = x.size(3);
    const at::Tensor xc = x.contiguous();
    const at::Tensor cc = cos.to(x.scalar_type()).expand({b, s, rot}).contiguous();
    const at::Tensor sc = sin.to(x.scalar_type()).expand({b, s, rot}).contiguous();
    at::Tensor out = at::empty_like(xc);
    check(ds_kernels::rotary_launch(xc.data_ptr(), cc.data_ptr(), sc.data_ptr(), out.data_ptr(), b, h, s, d, rot,
                                    kind, stream()));
    return out;
}

at::Tensor bias_activation(const at::Tensor& x, const at::Tensor& bias, int64_t activation)
{
    const auto kind = to_kind(x, "bias_activation");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous(), bc = bias.to(x.scalar_type()).contiguous();
    at::Tensor out = at::empty_like(xc);
    const int64_t cols = xc.size(-1);
    check(ds_kernels::bias_activation_launch(xc.data_ptr(), bc.data_ptr(), out.data_ptr(), xc.numel() / cols, cols,
                                             static_cast<int>(activation), kind, stream()));
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("rms_norm", &rms_norm, "RMSNorm with fp32 statistics");
    m.def("layer_norm", &layer_norm, "LayerNorm");
    m.def("rotary", &rotary, "rotary embedding on the first rot channels");
    m.def("bias_activation", &bias_activation, "act(x + bias): 0 relu, 1 gelu, 2 gelu-tanh, 3 silu");
}
