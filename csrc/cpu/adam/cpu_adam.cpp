// DeepSpeedCPUAdam's kernel: Adam / AdamW over fp32, fp16 or bf16 parameters
// with fp32 (or 16-bit) states, vectorised by cpu_simd.h and tiled by
// cpu_optimizer.h. All arithmetic is fp32; the step's scalars are computed in
// double once per call.
//
// Per element, with t the step, bc1 = 1 - b1^t and bc2 = 1 - b2^t (both 1
// without bias correction):
//   AdamW: p *= 1 - lr*wd          Adam (L2): g += wd*p
//   m = b1*m + (1-b1)*g
//   v = b2*v + (1-b2)*g*g
//   p += (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
#include <cmath>
#include <cstdio>

#include <torch/csrc/utils/pybind.h>

#include "cpu_optimizer.h"
#include "../../includes/ds_check.h"

namespace {

struct AdamConfig {
    bool adamw_mode;
    bool verbose;
};

struct AdamOp {
    static constexpr int kStates = 2;
    float beta1, beta2, one_minus_beta1, one_minus_beta2;
    float eps;
    float neg_step_size;  // -lr / bc1
    float inv_sqrt_bc2;   // 1 / sqrt(bc2): multiplying is cheaper than dividing
    float weight_decay;
    float decay_factor;   // 1 - lr*wd (AdamW)
    bool adamw_mode;

    template <class V>
    inline void apply(V& p, V g, V& m, V& v) const
    {
        if (weight_decay != 0.0f) {
            if (adamw_mode) {
                p = p * V::set1(decay_factor);
            } else {
                g = g + p * V::set1(weight_decay);
            }
        }
        m = m * V::set1(beta1) + g * V::set1(one_minus_beta1);
        v = v * V::set1(beta2) + g * g * V::set1(one_minus_beta2);
        const V denom = sqrt(v) * V::set1(inv_sqrt_bc2) + V::set1(eps);
        p = p + (m / denom) * V::set1(neg_step_size);
    }
};

AdamOp make_op(int id, int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay,
               bool bias_correction)
{
    DS_CHECK(step >= 1, "adam_update: step must be >= 1, got ", step);
    const AdamConfig config = ds_cpu::registry<AdamConfig>().get(id, "adam_update");
    const double bc1 = bias_correction ? 1.0 - std::pow(beta1, static_cast<double>(step)) : 1.0;
    const double bc2 = bias_correction ? 1.0 - std::pow(beta2, static_cast<double>(step)) : 1.0;
    AdamOp op;
    op.beta1 = static_cast<float>(beta1);
    op.beta2 = static_cast<float>(beta2);
    op.one_minus_beta1 = static_cast<float>(1.0 - beta1);
    op.one_minus_beta2 = static_cast<float>(1.0 - beta2);
    op.eps = static_cast<float>(eps);
    op.neg_step_size = static_cast<float>(-lr / bc1);
    op.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    op.weight_decay = static_cast<float>(weight_decay);
    op.decay_factor = static_cast<float>(1.0 - lr * weight_decay);
    op.adamw_mode = config.adamw_mode;
    return op;
}

}  // namespace

void create_adam(int id, double lr, double beta1, double beta2, double eps, double weight_decay, bool adamw_mode,
                 bool verbose)
{
    ds_cpu::registry<AdamConfig>().create(id, AdamConfig{adamw_mode, verbose});
    if (verbose) {
        std::printf("DeepSpeedCPUAdam #%d: %s, lr=%g betas=(%g, %g) eps=%g weight_decay=%g, %d floats per vector\n",
                    id, adamw_mode ? "AdamW" : "Adam", lr, beta1, beta2, eps, weight_decay, ds_cpu::Vec::kWidth);
    }
}

void adam_update(int id, int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool bias_correction, const at::Tensor& params, const at::Tensor& grads, const at::Tensor& exp_avg,
                 const at::Tensor& exp_avg_sq)
{
    const AdamOp op = make_op(id, step, lr, beta1, beta2, eps, weight_decay, bias_correction);
    ds_cpu::apply_update(op, "adam_update", params, grads, {exp_avg, exp_avg_sq}, nullptr);
}

void adam_update_copy(int id, int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay,
                      bool bias_correction, const at::Tensor& params, const at::Tensor& grads,
                      const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& params_copy)
{
    const AdamOp op = make_op(id, step, lr, beta1, beta2, eps, weight_decay, bias_correction);
    ds_cpu::apply_update(op, "adam_update_copy", params, grads, {exp_avg, exp_avg_sq}, &params_copy);
}

void destroy_adam(int id) { ds_cpu::registry<AdamConfig>().destroy(id); }

int simd_width() { return ds_cpu::Vec::kWidth; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("create_adam", &create_adam, "Register an Adam optimizer under an id", py::arg("id"), py::arg("lr"),
          py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("adamw_mode"),
          py::arg("verbose") = false);
    m.def("adam_update", &adam_update, "One Adam step over one tensor, in place", py::arg("id"), py::arg("step"),
          py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
          py::arg("bias_correction"), py::arg("params"), py::arg("grads"), py::arg("exp_avg"),
          py::arg("exp_avg_sq"));
    m.def("adam_update_copy", &adam_update_copy,
          "adam_update that also writes the updated params into a 16-bit tensor in the same pass", py::arg("id"),
          py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
          py::arg("weight_decay"), py::arg("bias_correction"), py::arg("params"), py::arg("grads"),
          py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("params_copy"));
    m.def("destroy_adam", &destroy_adam, "Forget the optimizer registered under an id", py::arg("id"));
    m.def("simd_width", &simd_width, "fp32 lanes per vector of this build (16, 8 or 1)");
}
