// Plain C++ vocabulary shared by the CUDA launchers and their torch bindings.
//
// The .cu files never include torch headers, so they compile with nvcc alone
// (tests/unit/test_nvcc_compile.py relies on that). The bindings translate
// at::ScalarType into ScalarKind and call the launchers declared next to each
// kernel; this header is the only thing both sides must agree on.
#pragma once

#include <cstdint>

namespace ds_kernels {

// Element types the kernels are instantiated for. Values are stable because
// they cross the binding boundary as plain ints.
enum class ScalarKind : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace ds_kernels
