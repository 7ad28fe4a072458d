// DeepSpeedCPULion's kernel: Lion (Chen et al., 2023) over fp32, fp16 or bf16
// parameters, vectorised by cpu_simd.h and tiled by cpu_optimizer.h. Per
// element, in fp32, exactly as deepspeed/runtime/lion.py:
//   u = sign(b1*m + (1-b1)*g)
//   p *= 1 - lr*wd
//   p -= lr*u
//   m = b2*m + (1-b2)*g
#include <cstdio>

#include <torch/csrc/utils/pybind.h>

#include "cpu_optimizer.h"
#include "../../includes/ds_check.h"

namespace {

struct LionConfig {
    bool verbose;
};

struct LionOp {
    static constexpr int kStates = 1;
    float beta1, beta2, one_minus_beta1, one_minus_beta2;
    float neg_lr;
    float weight_decay;
    float decay_factor;  // 1 - lr*wd

    template <class V>
    inline void apply(V& p, V g, V& m, V& /*unused*/) const
    {
        const V direction = sign(m * V::set1(beta1) + g * V::set1(one_minus_beta1));
        if (weight_decay != 0.0f) p = p * V::set1(decay_factor);
        p = p + direction * V::set1(neg_lr);
        m = m * V::set1(beta2) + g * V::set1(one_minus_beta2);
    }
};

LionOp make_op(int id, int64_t step, double lr, double beta1, double beta2, double weight_decay)
{
    DS_CHECK(step >= 1, "lion_update: step must be >= 1, got ", step);
    ds_cpu::registry<LionConfig>().get(id, "lion_update");  // fails clearly on an unknown id
    LionOp op;
    op.beta1 = static_cast<float>(beta1);
    op.beta2 = static_cast<float>(beta2);
    op.one_minus_beta1 = static_cast<float>(1.0 - beta1);
    op.one_minus_beta2 = static_cast<float>(1.0 - beta2);
    op.neg_lr = static_cast<float>(-lr);
    op.weight_decay = static_cast<float>(weight_decay);
    op.decay_factor = static_cast<float>(1.0 - lr * weight_decay);
    return op;
}

}  // namespace

void create_lion(int id, double lr, double beta1, double beta2, double weight_decay, bool verbose)
{
    ds_cpu::registry<LionConfig>().create(id, LionConfig{verbose});
    if (verbose) {
        std::printf("DeepSpeedCPULion #%d: lr=%g betas=(%g, %g) weight_decay=%g, %d floats per vector\n", id, lr,
                    beta1, beta2, weight_decay, ds_cpu::Vec::kWidth);
    }
}

void lion_update(int id, int64_t step, double lr, double beta1, double beta2, double weight_decay,
                 const at::Tensor& params, const at::Tensor& grads, const at::Tensor& exp_avg)
{
    const LionOp op = make_op(id, step, lr, beta1, beta2, weight_decay);
    ds_cpu::apply_update(op, "lion_update", params, grads, {exp_avg}, nullptr);
}

void lion_update_copy(int id, int64_t step, double lr, double beta1, double beta2, double weight_decay,
                      const at::Tensor& params, const at::Tensor& grads, const at::Tensor& exp_avg,
                      const at::Tensor& params_copy)
{
    const LionOp op = make_op(id, step, lr, beta1, beta2, weight_decay);
    ds_cpu::apply_update(op, "lion_update_copy", params, grads, {exp_avg}, &params_copy);
}

void destroy_lion(int id) { ds_cpu::registry<LionConfig>().destroy(id); }

int simd_width() { return ds_cpu::Vec::kWidth; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("create_lion", &create_lion, "Register a Lion optimizer under an id", py::arg("id"), py::arg("lr"),
          py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("verbose") = false);
    m.def("lion_update", &lion_update, "One Lion step over one tensor, in place", py::arg("id"), py::arg("step"),
          py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("params"),
          py::arg("grads"), py::arg("exp_avg"));
    m.def("lion_update_copy", &lion_update_copy,
          "lion_update that also writes the updated params into a 16-bit tensor in the same pass", py::arg("id"),
          py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"),
          py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("params_copy"));
    m.def("destroy_lion", &destroy_lion, "Forget the optimizer registered under an id", py::arg("id"));
    m.def("simd_width", &simd_width, "fp32 lanes per vector of this build (16, 8 or 1)");
}
