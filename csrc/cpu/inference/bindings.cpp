// Python bindings of the cpu_inference op.
// The light pybind header (tensor casters), not torch/extension.h: ~16 s to compile instead of ~45.
#include <torch/csrc/utils/pybind.h>

#include "decode_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("decode_linear", &decode_linear, "x (M, K) . w (N, K)^T + bias, for small M (fp32, CPU)", py::arg("x"),
          py::arg("w"), py::arg("bias") = py::none());
    m.def("decode_attention", &decode_attention,
          "softmax(scale q k^T over valid slots < length) v for one decode step (fp32, CPU)", py::arg("q"),
          py::arg("k"), py::arg("v"), py::arg("valid"), py::arg("length"), py::arg("scale"));
    m.def("simd_width", &simd_width, "fp32 lanes per vector of this build");
}
