// Explicit float <-> storage conversions for device code.
//
// torch builds CUDA extensions with -D__CUDA_NO_HALF_CONVERSIONS__ and
// -D__CUDA_NO_BFLOAT16_CONVERSIONS__, so implicit casts between float and
// __half / __nv_bfloat16 do not compile there. Every kernel loads its storage
// type through to_float() and stores through from_float(), which round to
// nearest-even exactly like torch's .to(dtype).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ds_kernels {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);

template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace ds_kernels
