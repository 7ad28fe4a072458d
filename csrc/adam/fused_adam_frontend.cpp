// torch binding of the multi-tensor Adam kernel (fused_adam op).
//
// Validates the tensor lists, turns them into raw pointers and calls the
// plain-CUDA launcher on the current stream. The kernel itself lives in
// multi_tensor_adam.cu and knows nothing about torch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

#include "multi_tensor_adam.h"
#include "../includes/ds_check.h"

namespace {

ds_kernels::ScalarKind to_kind(at::ScalarType t)
{
    switch (t) {
        case at::kFloat: return ds_kernels::ScalarKind::kFloat32;
        case at::kHalf: return ds_kernels::ScalarKind::kFloat16;
        case at::kBFloat16: return ds_kernels::ScalarKind::kBFloat16;
        default: DS_CHECK(false, "multi_tensor_adam: unsupported dtype ", t);
    }
}

// tensor_lists = [grads, params, exp_avgs, exp_avg_sqs]; every tensor must be
// a contiguous CUDA tensor on one device; grads share the params' dtype and
// the states share one dtype (fp32 or the params' dtype).
void multi_tensor_adam(int64_t chunk_size,
                       const at::Tensor& noop_flag,
                       const std::vector<std::vector<at::Tensor>>& tensor_lists,
                       double lr,
                       double beta1,
                       double beta2,
                       double epsilon,
                       int64_t step,
                       int64_t mode,
                       int64_t bias_correction,
                       double weight_decay)
{
    DS_CHECK(tensor_lists.size() == 4, "multi_tensor_adam: expected 4 tensor lists [g, p, m, v], got ",
                tensor_lists.size());
    const size_t n = tensor_lists[0].size();
    for (const auto& list : tensor_lists) {
        DS_CHECK(list.size() == n, "multi_tensor_adam: tensor lists must have equal length");
    }
    if (n == 0) return;
    DS_CHECK(noop_flag.is_cuda() && noop_flag.scalar_type() == at::kInt && noop_flag.numel() >= 1,
                "multi_tensor_adam: noop_flag must be a CUDA int32 tensor with one element");

    const at::Tensor& first = tensor_lists[1][0];
    const auto param_type = first.scalar_type();
    const auto state_type = tensor_lists[2][0].scalar_type();
    DS_CHECK(state_type == at::kFloat || state_type == param_type,
                "multi_tensor_adam: optimizer state must be fp32 or the parameter dtype");
    DS_CHECK(noop_flag.device() == first.device(), "multi_tensor_adam: noop_flag on another device");

    std::vector<std::vector<void*>> ptrs(4, std::vector<void*>(n));
    std::vector<int64_t> numels(n);
    for (size_t t = 0; t < n; ++t) {
        const int64_t numel = tensor_lists[1][t].numel();
        for (size_t d = 0; d < 4; ++d) {
            const at::Tensor& x = tensor_lists[d][t];
            DS_CHECK(x.is_cuda() && x.device() == first.device(),
                        "multi_tensor_adam: all tensors must be on ", first.device());
            DS_CHECK(x.is_contiguous(), "multi_tensor_adam: tensors must be contiguous");
            DS_CHECK(x.numel() == numel, "multi_tensor_adam: g/p/m/v sizes differ for tensor ", t);
            DS_CHECK(x.scalar_type() == (d < 2 ? param_type : state_type),
                        "multi_tensor_adam: mixed dtypes in one call (list ", d, ", tensor ", t, ")");
            ptrs[d][t] = x.data_ptr();
        }
        numels[t] = numel;
    }

    ds_kernels::AdamHyper hyper;
    hyper.lr = static_cast<float>(lr);
    hyper.beta1 = static_cast<float>(beta1);
    hyper.beta2 = static_cast<float>(beta2);
    hyper.eps = static_cast<float>(epsilon);
    hyper.weight_decay = static_cast<float>(weight_decay);
    hyper.step = step;
    hyper.mode = static_cast<int>(mode);
    hyper.bias_correction = bias_correction != 0;

    const c10::cuda::CUDAGuard guard(first.device());
    const char* err = ds_kernels::multi_tensor_adam_launch(
        chunk_size, noop_flag.data_ptr<int>(), static_cast<int>(n), ptrs[0].data(), ptrs[1].data(),
        ptrs[2].data(), ptrs[3].data(), numels.data(), to_kind(param_type), to_kind(state_type), hyper,
        static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()));
    DS_CHECK(err == nullptr, err ? err : "");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("multi_tensor_adam", &multi_tensor_adam,
          "Multi-tensor Adam/AdamW step over [grads, params, exp_avgs, exp_avg_sqs] (CUDA)",
          py::arg("chunk_size"), py::arg("noop_flag"), py::arg("tensor_lists"), py::arg("lr"), py::arg("beta1"),
          py::arg("beta2"), py::arg("epsilon"), py::arg("step"), py::arg("mode"), py::arg("bias_correction"),
          py::arg("weight_decay"));
}
