// Device helpers shared by the fused kernels that read float32 or bfloat16 activations and compute in float32, and
// the cp.async staging the tiled kernels use.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace ssm {

__device__ __forceinline__ float tof(float v) { return v; }
__device__ __forceinline__ float tof(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
// __fdividef: MUFU.RCP and a multiply (2 ulp); 1.f / x would add the IEEE-rounding fix-up path per element.
__device__ __forceinline__ float sigmoid_f(float x) { return __fdividef(1.f, 1.f + __expf(-x)); }

// 16 bytes global -> shared without passing through registers (sm_80+); completes at cp_wait_all. The second form
// zero-fills the 16 bytes instead when !full (src must still be a valid address).
__device__ __forceinline__ void cp16(void* dst, const void* src)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
__device__ __forceinline__ void cp16(void* dst, const void* src, bool full)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(full ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

constexpr float LOG2E = 1.4426950408889634f;
// 2^x in one MUFU.EX2 instruction (~2 ulp; exp2f without fast math adds range handling around it).
__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }

// The bfloat16 paths' activations (bfloat16 activations carry 8 significant bits, so one MUFU instruction and a
// polynomial finish suffice, and the special-function pipe is the scan's busiest unit). E: the 2^x they use (ex2 by
// default; bench/GpuBench/scan_floor.cu also times an FMA-pipe one).
struct Ex2Mufu { __device__ __forceinline__ float operator()(float x) const { return ex2(x); } };
// softplus(x) = max(x, 0) + log1p(t), t = exp(-|x|) in (0, 1]; log1p(t) = t P(t) with P a degree-6 fit of log1p(t) / t
// on [0, 1] (relative error 1.3e-6), so small Δ keep their relative precision. Branch-free; large x gives x + t P(t) = x.
template <typename E = Ex2Mufu>
__device__ __forceinline__ float softplus_poly(float x, E exp2 = {})
{
    float t = exp2(-fabsf(x) * LOG2E);
    float p = 1.414082830e-02f;
    p = fmaf(p, t, -6.640121107e-02f); p = fmaf(p, t, 1.492232089e-01f); p = fmaf(p, t, -2.350382562e-01f);
    p = fmaf(p, t, 3.310944076e-01f); p = fmaf(p, t, -4.998696493e-01f); p = fmaf(p, t, 9.999987314e-01f);
    return fmaf(t, p, fmaxf(x, 0.f));
}
// silu(z) = z sigmoid(z): with t = exp(-|z|), sigmoid(|z|) = 1 / (1 + t) (a degree-5 fit on [0, 1], relative error
// 5.1e-5) and sigmoid(-|z|) = t / (1 + t).
template <typename E = Ex2Mufu>
__device__ __forceinline__ float silu_poly(float z, E exp2 = {})
{
    float t = exp2(-fabsf(z) * LOG2E);
    float r = -1.044827588e-01f;
    r = fmaf(r, t, 4.179335200e-01f); r = fmaf(r, t, -7.705690454e-01f); r = fmaf(r, t, 9.534193130e-01f);
    r = fmaf(r, t, -9.962755131e-01f); r = fmaf(r, t, 9.999489782e-01f);
    return z * (z >= 0.f ? r : t * r);
}

// Whether a pointer allows 16-byte accesses (picks the vector paths).
__host__ __device__ inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace ssm
