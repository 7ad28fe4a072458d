// torch binding of the CUDA quantizer (quantizer op): quantize / dequantize.
//
// Checks arguments, allocates outputs and calls the plain-CUDA launchers in
// quantize.cu / dequantize.cu on the current stream. The convention is in
// [Note: quantizer convention] (quantize_launch.h).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <tuple>

#include "quantize_launch.h"
#include "../includes/ds_check.h"

namespace {

ds_kernels::ScalarKind to_kind(at::ScalarType t, const char* what)
{
    switch (t) {
        case at::kFloat: return ds_kernels::ScalarKind::kFloat32;
        case at::kHalf: return ds_kernels::ScalarKind::kFloat16;
        case at::kBFloat16: return ds_kernels::ScalarKind::kBFloat16;
        default: DS_CHECK(false, what, ": unsupported dtype ", t, " (expected float32, float16 or bfloat16)");
    }
}

void check_groups(int64_t numel, int64_t groups, const char* what)
{
    DS_CHECK(groups > 0, what, ": groups must be positive, got ", groups);
    DS_CHECK(numel % groups == 0, what, ": numel ", numel, " is not divisible by groups=", groups);
}

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

// x: any shape, fp32/fp16/bf16 CUDA tensor. Returns (q: int8, x's shape;
// scales: fp32, (groups,)).
std::tuple<at::Tensor, at::Tensor> quantize(const at::Tensor& x, int64_t groups, int64_t bits)
{
    DS_CHECK(x.is_cuda(), "quantize: expected a CUDA tensor");
    DS_CHECK(bits >= 2 && bits <= 8, "quantize: bits must be in [2, 8], got ", bits);
    check_groups(x.numel(), groups, "quantize");
    const auto kind = to_kind(x.scalar_type(), "quantize");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous();
    at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
    at::Tensor scales = at::empty({groups}, x.options().dtype(at::kFloat));
    const char* err = ds_kernels::quantize_launch(xc.data_ptr(), kind, xc.numel(), groups, static_cast<int>(bits),
                                                  q.data_ptr<int8_t>(), scales.data_ptr<float>(), current_stream());
    DS_CHECK(err == nullptr, err ? err : "");
    return std::make_tuple(q, scales);
}

// q: int8 CUDA tensor, scales: (groups,) fp32. Returns q's shape in out_dtype.
at::Tensor dequantize(const at::Tensor& q, const at::Tensor& scales, int64_t groups, at::ScalarType out_dtype)
{
    DS_CHECK(q.is_cuda() && q.scalar_type() == at::kChar, "dequantize: q must be an int8 CUDA tensor");
    DS_CHECK(scales.device() == q.device() && scales.scalar_type() == at::kFloat,
                "dequantize: scales must be fp32 on the same device as q");
    check_groups(q.numel(), groups, "dequantize");
    DS_CHECK(scales.numel() == groups, "dequantize: expected ", groups, " scales, got ", scales.numel());
    const auto kind = to_kind(out_dtype, "dequantize");
    const c10::cuda::CUDAGuard guard(q.device());
    const at::Tensor qc = q.contiguous();
    const at::Tensor sc = scales.contiguous();
    at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
    const char* err = ds_kernels::dequantize_launch(qc.data_ptr<int8_t>(), sc.data_ptr<float>(), qc.numel(), groups,
                                                    kind, out.data_ptr(), current_stream());
    DS_CHECK(err == nullptr, err ? err : "");
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("quantize", &quantize, "Symmetric per-group quantization -> (int8 q, fp32 scales) (CUDA)", py::arg("x"),
          py::arg("groups"), py::arg("bits") = 8);
    m.def("dequantize", &dequantize, "Per-group dequantize fused with the cast to out_dtype (CUDA)", py::arg("q"),
          py::arg("scales"), py::arg("groups"), py::arg("out_dtype"));
}
