// CPU quantizer (cpu_quantizer op): the same per-group symmetric int8
// quantization as the CUDA kernels and the torch reference, bit for bit
// (see [Note: quantizer convention] in quantize_launch.h).
//
// OpenMP spreads groups over threads; the inner loops are plain elementwise
// loops that the compiler vectorises. No -ffast-math style rewriting is
// allowed here: the division must stay an IEEE division (not a multiply by
// the reciprocal) and rounding must be half-to-even (std::nearbyint under the
// default rounding mode) for the results to match torch.round(x / s).
// The light pybind header (tensor casters), not torch/extension.h: ~16 s to compile instead of ~45.
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include "../includes/ds_check.h"

namespace {

template <typename T>
void quantize_groups(const T* x, int64_t groups, int64_t group_size, int bits, int8_t* q, float* scales)
{
    const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
    const float qmin = -qmax - 1.0f;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
        const T* xg = x + g * group_size;
        int8_t* qg = q + g * group_size;
        float absmax = 0.0f;
        for (int64_t i = 0; i < group_size; ++i) {
            const float a = std::fabs(static_cast<float>(xg[i]));
            absmax = a > absmax ? a : absmax;
        }
        float scale = absmax / qmax;
        if (scale == 0.0f) scale = 1.0f;
        scales[g] = scale;
        for (int64_t i = 0; i < group_size; ++i) {
            float v = std::nearbyint(static_cast<float>(xg[i]) / scale);
            v = v < qmin ? qmin : v;
            v = v > qmax ? qmax : v;
            qg[i] = static_cast<int8_t>(v);
        }
    }
}

template <typename T>
void dequantize_groups(const int8_t* q, const float* scales, int64_t groups, int64_t group_size, T* out)
{
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
        const float s = scales[g];
        const int8_t* qg = q + g * group_size;
        T* og = out + g * group_size;
        for (int64_t i = 0; i < group_size; ++i) og[i] = static_cast<T>(static_cast<float>(qg[i]) * s);
    }
}

void check_groups(int64_t numel, int64_t groups, const char* what)
{
    DS_CHECK(groups > 0, what, ": groups must be positive, got ", groups);
    DS_CHECK(numel % groups == 0, what, ": numel ", numel, " is not divisible by groups=", groups);
}

// x: any shape, fp32/fp16/bf16 CPU tensor. Returns (q: int8, x's shape;
// scales: fp32, (groups,)).
std::tuple<at::Tensor, at::Tensor> quantize(const at::Tensor& x, int64_t groups, int64_t bits)
{
    DS_CHECK(x.device().is_cpu(), "quantize: expected a CPU tensor");
    DS_CHECK(bits >= 2 && bits <= 8, "quantize: bits must be in [2, 8], got ", bits);
    check_groups(x.numel(), groups, "quantize");
    const at::Tensor xc = x.contiguous();
    at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
    at::Tensor scales = at::empty({groups}, x.options().dtype(at::kFloat));
    if (x.numel() == 0) return std::make_tuple(q, scales);
    const int64_t group_size = x.numel() / groups;
    const int b = static_cast<int>(bits);
    switch (x.scalar_type()) {
        case at::kFloat:
            quantize_groups(xc.data_ptr<float>(), groups, group_size, b, q.data_ptr<int8_t>(), scales.data_ptr<float>());
            break;
        case at::kHalf:
            quantize_groups(xc.data_ptr<at::Half>(), groups, group_size, b, q.data_ptr<int8_t>(),
                            scales.data_ptr<float>());
            break;
        case at::kBFloat16:
            quantize_groups(xc.data_ptr<at::BFloat16>(), groups, group_size, b, q.data_ptr<int8_t>(),
                            scales.data_ptr<float>());
            break;
        default: DS_CHECK(false, "quantize: unsupported dtype ", x.scalar_type());
    }
    return std::make_tuple(q, scales);
}

// q: int8 CPU tensor, scales: (groups,) fp32. Returns q's shape in out_dtype.
at::Tensor dequantize(const at::Tensor& q, const at::Tensor& scales, int64_t groups, at::ScalarType out_dtype)
{
    DS_CHECK(q.device().is_cpu() && q.scalar_type() == at::kChar, "dequantize: q must be an int8 CPU tensor");
    DS_CHECK(scales.device().is_cpu() && scales.scalar_type() == at::kFloat,
                "dequantize: scales must be an fp32 CPU tensor");
    check_groups(q.numel(), groups, "dequantize");
    DS_CHECK(scales.numel() == groups, "dequantize: expected ", groups, " scales, got ", scales.numel());
    const at::Tensor qc = q.contiguous();
    const at::Tensor sc = scales.contiguous();
    at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
    if (q.numel() == 0) return out;
    const int64_t group_size = q.numel() / groups;
    switch (out_dtype) {
        case at::kFloat:
            dequantize_groups(qc.data_ptr<int8_t>(), sc.data_ptr<float>(), groups, group_size, out.data_ptr<float>());
            break;
        case at::kHalf:
            dequantize_groups(qc.data_ptr<int8_t>(), sc.data_ptr<float>(), groups, group_size,
                              out.data_ptr<at::Half>());
            break;
        case at::kBFloat16:
            dequantize_groups(qc.data_ptr<int8_t>(), sc.data_ptr<float>(), groups, group_size,
                              out.data_ptr<at::BFloat16>());
            break;
        default: DS_CHECK(false, "dequantize: unsupported dtype ", out_dtype);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("quantize", &quantize, "Symmetric per-group quantization -> (int8 q, fp32 scales) (CPU)", py::arg("x"),
          py::arg("groups"), py::arg("bits") = 8);
    m.def("dequantize", &dequantize, "Per-group dequantize fused with the cast to out_dtype (CPU)", py::arg("q"),
          py::arg("scales"), py::arg("groups"), py::arg("out_dtype"));
}
