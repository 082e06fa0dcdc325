// Device helpers shared by the fused kernels that read float32 or bfloat16 activations and compute in float32.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>

namespace ssm {

__device__ __forceinline__ float tof(float v) { return v; }
__device__ __forceinline__ float tof(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
// __fdividef: MUFU.RCP and a multiply (2 ulp); 1.f / x would add the IEEE-rounding fix-up path per element.
__device__ __forceinline__ float sigmoid_f(float x) { return __fdividef(1.f, 1.f + __expf(-x)); }

}  // namespace ssm
