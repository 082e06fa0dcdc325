// Fused selective scan (Mamba-1, S6) for CUDA: forward and backward, float32.
// Semantics and layouts are those of SelectiveScanCpuKernel (see backbone/Scans/SelectiveScan.cs for the glossary):
//   u, delta, z, y: (b, d, l)   A: (d, n)   Bt, Ct: (b, g, l, n) (B, C transposed so a time step's n values are
//   contiguous)   D, bias: (d) or null   last: (b, d, n).
//   Δ_t = softplus(delta_t + bias) (or no softplus);  h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t;
//   y_t = (C_t · h_t + D u_t) * silu(z_t).
// One warp owns one (batch, channel) pair and keeps that channel's n states in registers (lane j holds states
// j, j + 32, ...), so the expanded state (b, d, l, n) is never written to device memory. The backward recomputes
// the states: a first pass stores the state at every chunk boundary (K steps), then chunks are revisited in reverse,
// each recomputed from its boundary state into a small per-warp buffer and walked backwards.
// Launched on the legacy default stream (stream 0), which libtorch uses unless told otherwise, so ordering with
// TorchSharp's own ops holds without synchronisation.
#include <cuda_runtime.h>
#include <stdint.h>

#define MAXS 8          // states per lane: n <= 256
#define CHUNK 64        // backward: time steps per recomputed chunk

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float softplus_f(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

__global__ void scan_fwd(const float* __restrict__ u, const float* __restrict__ delta, const float* __restrict__ A,
    const float* __restrict__ Bt, const float* __restrict__ Ct, const float* __restrict__ D, const float* __restrict__ z,
    const float* __restrict__ bias, int softplus, float* __restrict__ y, float* __restrict__ last,
    int b, int d, int l, int n, int g)
{
    long warp = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long)b * d) return;
    int bi = (int)(warp / d), di = (int)(warp % d), gi = di / (d / g);
    const float* up = u + warp * l;
    const float* dp = delta + warp * l;
    const float* zp = z ? z + warp * l : nullptr;
    const float* Bp = Bt + ((long)bi * g + gi) * (long)l * n;
    const float* Cp = Ct + ((long)bi * g + gi) * (long)l * n;
    float a[MAXS], h[MAXS];
#pragma unroll
    for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; a[k] = j < n ? A[(long)di * n + j] : 0.f; h[k] = 0.f; }
    float Dv = D ? D[di] : 0.f, bv = bias ? bias[di] : 0.f;
    float* yp = y + warp * l;
    for (int t = 0; t < l; t++)
    {
        float dt = dp[t] + bv;
        if (softplus) dt = softplus_f(dt);
        float ut = up[t], acc = 0.f;
        const float* Bq = Bp + (long)t * n;
        const float* Cq = Cp + (long)t * n;
#pragma unroll
        for (int k = 0; k < MAXS; k++)
        {
            int j = lane + 32 * k;
            if (j < n) { h[k] = expf(dt * a[k]) * h[k] + dt * Bq[j] * ut; acc += Cq[j] * h[k]; }
        }
        acc = warp_sum(acc);
        if (lane == 0)
        {
            float yt = acc + Dv * ut;
            if (zp) { float zt = zp[t]; yt *= zt * sigmoid_f(zt); }
            yp[t] = yt;
        }
    }
#pragma unroll
    for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; if (j < n) last[warp * n + j] = h[k]; }
}

// Gradients: gu, gdelta, gz (b d l) written; gA (d n), gBt, gCt (b g l n), gD, gbias (d) accumulated atomically
// (zeroed by the caller). gy (b d l) and glast (b d n) are the incoming gradients. scratch: (b d) x (nchunks + CHUNK) x n.
__global__ void scan_bwd(const float* __restrict__ u, const float* __restrict__ delta, const float* __restrict__ A,
    const float* __restrict__ Bt, const float* __restrict__ Ct, const float* __restrict__ D, const float* __restrict__ z,
    const float* __restrict__ bias, int softplus, const float* __restrict__ gy, const float* __restrict__ glast,
    float* __restrict__ gu, float* __restrict__ gdelta, float* __restrict__ gA, float* __restrict__ gBt,
    float* __restrict__ gCt, float* __restrict__ gD, float* __restrict__ gz, float* __restrict__ gbias,
    float* __restrict__ scratch, int b, int d, int l, int n, int g)
{
    long warp = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long)b * d) return;
    int bi = (int)(warp / d), di = (int)(warp % d), gi = di / (d / g);
    int nch = (l + CHUNK - 1) / CHUNK;
    const float* up = u + warp * l;
    const float* dp = delta + warp * l;
    const float* zp = z ? z + warp * l : nullptr;
    const float* gyp = gy + warp * l;
    long gofs = ((long)bi * g + gi) * (long)l * n;
    const float* Bp = Bt + gofs;
    const float* Cp = Ct + gofs;
    float* gBp = gBt + gofs;
    float* gCp = gCt + gofs;
    float* ck = scratch + warp * (long)(nch + CHUNK) * n;       // nch boundary states, then CHUNK recomputed states
    float* hs = ck + (long)nch * n;
    float a[MAXS], h[MAXS], dh[MAXS], ga[MAXS];
#pragma unroll
    for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; a[k] = j < n ? A[(long)di * n + j] : 0.f; h[k] = 0.f; ga[k] = 0.f; }
    float Dv = D ? D[di] : 0.f, bv = bias ? bias[di] : 0.f;
    // Pass 1: the state entering every chunk.
    for (int t = 0; t < l; t++)
    {
        if (t % CHUNK == 0)
        {
#pragma unroll
            for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; if (j < n) ck[(long)(t / CHUNK) * n + j] = h[k]; }
        }
        float dt = dp[t] + bv;
        if (softplus) dt = softplus_f(dt);
        float ut = up[t];
        const float* Bq = Bp + (long)t * n;
#pragma unroll
        for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; if (j < n) h[k] = expf(dt * a[k]) * h[k] + dt * Bq[j] * ut; }
    }
#pragma unroll
    for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; dh[k] = j < n ? glast[warp * n + j] : 0.f; }
    float gDv = 0.f, gbv = 0.f;
    // Pass 2: chunks in reverse; within a chunk, recompute h_t (t0 <= t < t1), then walk back.
    for (int c = nch - 1; c >= 0; c--)
    {
        int t0 = c * CHUNK, t1 = min(l, t0 + CHUNK);
#pragma unroll
        for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; h[k] = j < n ? ck[(long)c * n + j] : 0.f; }
        for (int t = t0; t < t1; t++)
        {
            float dt = dp[t] + bv;
            if (softplus) dt = softplus_f(dt);
            float ut = up[t];
            const float* Bq = Bp + (long)t * n;
#pragma unroll
            for (int k = 0; k < MAXS; k++)
            {
                int j = lane + 32 * k;
                if (j < n) { h[k] = expf(dt * a[k]) * h[k] + dt * Bq[j] * ut; hs[(long)(t - t0) * n + j] = h[k]; }
            }
        }
        __syncwarp();
        for (int t = t1 - 1; t >= t0; t--)
        {
            float raw = dp[t] + bv;
            float dt = softplus ? softplus_f(raw) : raw;
            float ut = up[t];
            const float* Bq = Bp + (long)t * n;
            const float* Cq = Cp + (long)t * n;
            const float* hcur = hs + (long)(t - t0) * n;
            const float* hprev = t > t0 ? hs + (long)(t - t0 - 1) * n : ck + (long)c * n;
            // y_t before the gate, for the gate's gradient.
            float acc = 0.f;
#pragma unroll
            for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; if (j < n) acc += Cq[j] * hcur[j]; }
            acc = warp_sum(acc);
            float yt = acc + Dv * ut, g_out = gyp[t], dy = g_out;
            if (zp)
            {
                float zt = zp[t], s = sigmoid_f(zt);
                dy = g_out * zt * s;
                if (lane == 0) gz[warp * l + t] = g_out * yt * s * (1.f + zt * (1.f - s));
            }
            float ddt = 0.f, dut = 0.f;
#pragma unroll
            for (int k = 0; k < MAXS; k++)
            {
                int j = lane + 32 * k;
                if (j < n)
                {
                    float hc = hcur[j], hp = hprev[j], Bj = Bq[j];
                    atomicAdd(&gCp[(long)t * n + j], dy * hc);
                    dh[k] += Cq[j] * dy;
                    float dA = expf(dt * a[k]);
                    ddt += dh[k] * (a[k] * dA * hp + Bj * ut);
                    ga[k] += dh[k] * dt * dA * hp;
                    atomicAdd(&gBp[(long)t * n + j], dh[k] * dt * ut);
                    dut += dh[k] * dt * Bj;
                    dh[k] *= dA;
                }
            }
            ddt = warp_sum(ddt);
            dut = warp_sum(dut);
            if (lane == 0)
            {
                gu[warp * l + t] = dut + dy * Dv;
                float draw = softplus ? ddt * sigmoid_f(raw) : ddt;
                gdelta[warp * l + t] = draw;
                gbv += draw;
                gDv += dy * ut;
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (int k = 0; k < MAXS; k++) { int j = lane + 32 * k; if (j < n) atomicAdd(&gA[(long)di * n + j], ga[k]); }
    if (lane == 0)
    {
        if (gD) atomicAdd(&gD[di], gDv);
        if (gbias) atomicAdd(&gbias[di], gbv);
    }
}

static int blocks_for(long warps, int threads) { return (int)((warps * 32 + threads - 1) / threads); }

extern "C" {

// Returns 0, or a CUDA error code (cudaGetErrorString through ssm_cuda_error).
int ssm_scan_fwd(const float* u, const float* delta, const float* A, const float* Bt, const float* Ct,
    const float* D, const float* z, const float* bias, int softplus, float* y, float* last,
    int b, int d, int l, int n, int g)
{
    if (n > 32 * MAXS || g <= 0 || d % g != 0) return -1;
    const int threads = 128;
    scan_fwd<<<blocks_for((long)b * d, threads), threads, 0, 0>>>(u, delta, A, Bt, Ct, D, z, bias, softplus, y, last, b, d, l, n, g);
    return (int)cudaGetLastError();
}

long ssm_scan_bwd_scratch_floats(int b, int d, int l, int n)
{
    long nch = (l + CHUNK - 1) / CHUNK;
    return (long)b * d * (nch + CHUNK) * n;
}

int ssm_scan_bwd(const float* u, const float* delta, const float* A, const float* Bt, const float* Ct,
    const float* D, const float* z, const float* bias, int softplus, const float* gy, const float* glast,
    float* gu, float* gdelta, float* gA, float* gBt, float* gCt, float* gD, float* gz, float* gbias, float* scratch,
    int b, int d, int l, int n, int g)
{
    if (n > 32 * MAXS || g <= 0 || d % g != 0) return -1;
    const int threads = 128;
    scan_bwd<<<blocks_for((long)b * d, threads), threads, 0, 0>>>(u, delta, A, Bt, Ct, D, z, bias, softplus, gy, glast,
        gu, gdelta, gA, gBt, gCt, gD, gz, gbias, scratch, b, d, l, n, g);
    return (int)cudaGetLastError();
}

const char* ssm_cuda_error(int code) { return code < 0 ? "invalid arguments (n > 256 or d not a multiple of g)" : cudaGetErrorString((cudaError_t)code); }

}
