// DeepSpeedCPUAdagrad's kernel: Adagrad (torch.optim.Adagrad without lr decay
// or an initial accumulator) over fp32, fp16 or bf16 parameters, vectorised by
// cpu_simd.h and tiled by cpu_optimizer.h. Per element, in fp32:
//   g += wd*p                     (weight decay as L2, like torch)
//   s += g*g
//   p -= lr * g / (sqrt(s) + eps)
#include <cstdio>

#include <torch/csrc/utils/pybind.h>

#include "cpu_optimizer.h"
#include "../../includes/ds_check.h"

namespace {

struct AdagradConfig {
    bool verbose;
};

struct AdagradOp {
    static constexpr int kStates = 1;
    float neg_lr;
    float eps;
    float weight_decay;

    template <class V>
    inline void apply(V& p, V g, V& sum, V& /*unused*/) const
    {
        if (weight_decay != 0.0f) g = g + p * V::set1(weight_decay);
        sum = sum + g * g;
        p = p + (g / (sqrt(sum) + V::set1(eps))) * V::set1(neg_lr);
    }
};

AdagradOp make_op(int id, int64_t step, double lr, double eps, double weight_decay)
{
    DS_CHECK(step >= 1, "adagrad_update: step must be >= 1, got ", step);
    ds_cpu::registry<AdagradConfig>().get(id, "adagrad_update");  // fails clearly on an unknown id
    AdagradOp op;
    op.neg_lr = static_cast<float>(-lr);
    op.eps = static_cast<float>(eps);
    op.weight_decay = static_cast<float>(weight_decay);
    return op;
}

}  // namespace

void create_adagrad(int id, double lr, double eps, double weight_decay, bool verbose)
{
    ds_cpu::registry<AdagradConfig>().create(id, AdagradConfig{verbose});
    if (verbose) {
        std::printf("DeepSpeedCPUAdagrad #%d: lr=%g eps=%g weight_decay=%g, %d floats per vector\n", id, lr, eps,
                    weight_decay, ds_cpu::Vec::kWidth);
    }
}

void adagrad_update(int id, int64_t step, double lr, double eps, double weight_decay, const at::Tensor& params,
                    const at::Tensor& grads, const at::Tensor& exp_avg_sq)
{
    const AdagradOp op = make_op(id, step, lr, eps, weight_decay);
    ds_cpu::apply_update(op, "adagrad_update", params, grads, {exp_avg_sq}, nullptr);
}

void adagrad_update_copy(int id, int64_t step, double lr, double eps, double weight_decay, const at::Tensor& params,
                         const at::Tensor& grads, const at::Tensor& exp_avg_sq, const at::Tensor& params_copy)
{
    const AdagradOp op = make_op(id, step, lr, eps, weight_decay);
    ds_cpu::apply_update(op, "adagrad_update_copy", params, grads, {exp_avg_sq}, &params_copy);
}

void destroy_adagrad(int id) { ds_cpu::registry<AdagradConfig>().destroy(id); }

int simd_width() { return ds_cpu::Vec::kWidth; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("create_adagrad", &create_adagrad, "Register an Adagrad optimizer under an id", py::arg("id"),
          py::arg("lr"), py::arg("eps"), py::arg("weight_decay"), py::arg("verbose") = false);
    m.def("adagrad_update", &adagrad_update, "One Adagrad step over one tensor, in place", py::arg("id"),
          py::arg("step"), py::arg("lr"), py::arg("eps"), py::arg("weight_decay"), py::arg("params"),
          py::arg("grads"), py::arg("exp_avg_sq"));
    m.def("adagrad_update_copy", &adagrad_update_copy,
          "adagrad_update that also writes the updated params into a 16-bit tensor in the same pass", py::arg("id"),
          py::arg("step"), py::arg("lr"), py::arg("eps"), py::arg("weight_decay"), py::arg("params"),
          py::arg("grads"), py::arg("exp_avg_sq"), py::arg("params_copy"));
    m.def("destroy_adagrad", &destroy_adagrad, "Forget the optimizer registered under an id", py::arg("id"));
    m.def("simd_width", &simd_width, "fp32 lanes per vector of this build (16, 8 or 1)");
}
