// Fused selective scan (Mamba-1, S6), the fast path for n <= 32 (every Mamba-1 model uses n = 16): forward and
// backward, float32 or bfloat16 activations, float32 parameters, states and arithmetic.
// Layouts as in selective_scan.cu (which keeps the general kernels, n <= 256, float32):
//   u, delta, z, y: (b, d, l) in T    A: (d, n) f32    Bt, Ct: (b, g, l, n) in T    D, bias: (d) f32 or null
//   last: (b, d, n) f32    ck: (b, d, ceil(l / TB), n) f32, the state entering every TB-step tile (saved for the backward)
//
// Why this shape of kernel. The scan reads u, Δ, z and writes y once per (channel, step); B_t and C_t are shared by
// the channels of a group; the arithmetic is dominated by the n exponentials exp(Δ_t A) per (channel, step), and the
// only serial dependency is each state's own recurrence. So:
//   - a block owns 32 channels of one sequence and walks time in tiles: the tile of u, Δ, z (rows contiguous in memory:
//     coalesced) and of B, C is loaded into shared memory with the per-element work done once (Δ = softplus(Δ + bias),
//     Δ u; Δ = 0 past l, which leaves the state unchanged, so the step loops have no bounds checks);
//   - eight threads share a channel, each holding n / 8 consecutive states in registers: the b d n independent
//     recurrences give 8 x more threads than channels, which is what keeps the SMs busy (with one warp per channel, or
//     four threads, the kernel was latency-bound: ncu showed two warps per scheduler, issuing on 35% of cycles);
//   - the sums over a channel's states (C·h for y; dΔ and du in the backward) are not reduced per step: each thread
//     keeps its partial sums for 8 consecutive steps and one reduce-scatter over the channel's 8 lanes (7 shuffles)
//     leaves lane q with the total of step q, written to shared memory; y = (sum + D u) silu(z) is then stored a tile
//     row at a time.
// The expanded state (b, d, l, n) never reaches device memory. The backward walks the tiles in reverse: it reloads the
// tile's entry state from ck, recomputes the TB states of the tile into shared memory, then runs the adjoint
// recurrence backwards (dh_{t-1} = exp(Δ_t A) dh_t + C_{t-1} dy_{t-1}); the B and C gradients are summed over the
// warp's four channels by a reduce-scatter and over the block in shared memory, then added to the global gradient
// once per block.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

constexpr int TPC = 8;          // threads per channel
constexpr int CH = 32;          // channels per block
constexpr int THREADS = CH * TPC;
constexpr int TF = 32;          // forward tile (time steps)
constexpr int TB = 16;          // backward tile, and the spacing of the saved states ck
constexpr int NMAX = 32;        // largest n of this path
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
constexpr unsigned ALL = 0xffffffffu;

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
// 2^x in one MUFU.EX2 instruction (~2 ulp; exp2f without fast math adds range handling around it).
__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
__device__ __forceinline__ float softplus_f(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + __expf(-x)); }

// v[0..7] hold a thread's values for 8 steps; afterwards v[0] holds, on the lane with sub == q, the sum over the
// channel's 8 lanes (lane bits 0..2) of step q's values.
__device__ __forceinline__ float reduce_scatter8(float* v, int sub)
{
    bool b2 = (sub >> 2) & 1, b1 = (sub >> 1) & 1, b0 = sub & 1;
#pragma unroll
    for (int i = 0; i < 4; i++) { float s = b2 ? v[i] : v[i + 4], k = b2 ? v[i + 4] : v[i]; v[i] = k + __shfl_xor_sync(ALL, s, 4); }
#pragma unroll
    for (int i = 0; i < 2; i++) { float s = b1 ? v[i] : v[i + 2], k = b1 ? v[i + 2] : v[i]; v[i] = k + __shfl_xor_sync(ALL, s, 2); }
    { float s = b0 ? v[0] : v[1], k = b0 ? v[1] : v[0]; v[0] = k + __shfl_xor_sync(ALL, s, 1); }
    return v[0];
}

// B and C of a tile: TT x NMAX, zero past n (a zero B, C and A row makes a state slot inert) and past l.
template <typename T, int TT>
__device__ __forceinline__ void load_bc(float (*dst)[NMAX], const T* src, int l, int n, int t0)
{
    for (int i = threadIdx.x; i < TT * NMAX; i += THREADS)
    {
        int t = i / NMAX, j = i % NMAX;
        dst[t][j] = (t0 + t < l && j < n) ? ld(src + (long)(t0 + t) * n + j) : 0.f;
    }
}

template <int SPT> struct Vec;
template <> struct Vec<2> { static __device__ __forceinline__ void get(const float* p, float* o) { float2 v = *reinterpret_cast<const float2*>(p); o[0] = v.x; o[1] = v.y; } };
template <> struct Vec<4> { static __device__ __forceinline__ void get(const float* p, float* o) { float4 v = *reinterpret_cast<const float4*>(p); o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w; } };

template <typename T, int SPT>
__global__ void __launch_bounds__(THREADS) tiled_fwd(const T* __restrict__ u, const T* __restrict__ delta,
    const float* __restrict__ A, const T* __restrict__ Bt, const T* __restrict__ Ct, const float* __restrict__ D,
    const T* __restrict__ z, const float* __restrict__ bias, int softplus, T* __restrict__ y, float* __restrict__ last,
    float* __restrict__ ck, int b, int d, int l, int n, int g)
{
    __shared__ float su[CH][TF + 1], sdt[CH][TF + 1], sdu[CH][TF + 1], sz[CH][TF + 1], sy[CH][TF + 1];
    __shared__ __align__(16) float sB[TF][NMAX];
    __shared__ __align__(16) float sC[TF][NMAX];
    int tilesPerSeq = d / CH;
    int bi = blockIdx.x / tilesPerSeq, c0 = (blockIdx.x % tilesPerSeq) * CH;
    int tid = threadIdx.x, ch = tid / TPC, sub = tid % TPC, di = c0 + ch, j0 = sub * SPT;
    int gi = c0 / (d / g);
    long row0 = (long)bi * d + c0;
    const T* Bp = Bt + ((long)bi * g + gi) * (long)l * n;
    const T* Cp = Ct + ((long)bi * g + gi) * (long)l * n;
    float a[SPT], h[SPT];
#pragma unroll
    for (int k = 0; k < SPT; k++) { a[k] = j0 + k < n ? A[(long)di * n + j0 + k] * LOG2E : 0.f; h[k] = 0.f; }
    int nck = (l + TB - 1) / TB;
    float* ckp = ck ? ck + (row0 + ch) * (long)nck * n : nullptr;
    // float32: the next tile is fetched into registers while the current one is scanned (a few registers per thread at
    // eight threads per channel), so the global loads' latency hides behind the arithmetic. bfloat16: measured slower
    // that way on the H100 (0.80 against 0.66 ms at b 8, d 2048, l 2048), so it loads each tile when it needs it.
    constexpr bool PREFETCH = sizeof(T) == 4;
    constexpr int PER = CH * TF / THREADS, PERBC = TF * NMAX / THREADS;
    float ru[PER], rd[PER], rz[PER], rb[PERBC], rc[PERBC];
    auto fetch = [&](int t0)
    {
#pragma unroll
        for (int e = 0; e < PER; e++)
        {
            int i = tid + e * THREADS, c = i / TF, t = i % TF;
            bool ok = t0 + t < l;
            long at = (row0 + c) * (long)l + t0 + t;
            ru[e] = ok ? ld(u + at) : 0.f;
            rd[e] = ok ? ld(delta + at) : 0.f;
            rz[e] = ok && z ? ld(z + at) : 0.f;
        }
#pragma unroll
        for (int e = 0; e < PERBC; e++)
        {
            int i = tid + e * THREADS, t = i / NMAX, j = i % NMAX;
            bool ok = t0 + t < l && j < n;
            rb[e] = ok ? ld(Bp + (long)(t0 + t) * n + j) : 0.f;
            rc[e] = ok ? ld(Cp + (long)(t0 + t) * n + j) : 0.f;
        }
    };
    if constexpr (PREFETCH) fetch(0);
    for (int t0 = 0; t0 < l; t0 += TF)
    {
        if constexpr (PREFETCH)
        {
#pragma unroll
            for (int e = 0; e < PER; e++)
            {
                int i = tid + e * THREADS, c = i / TF, t = i % TF;
                float dt = 0.f;
                if (t0 + t < l)
                {
                    dt = rd[e] + (bias ? bias[c0 + c] : 0.f);
                    if (softplus) dt = softplus_f(dt);
                }
                su[c][t] = ru[e]; sdt[c][t] = dt; sdu[c][t] = dt * ru[e]; sz[c][t] = rz[e];
            }
#pragma unroll
            for (int e = 0; e < PERBC; e++)
            {
                int i = tid + e * THREADS;
                sB[i / NMAX][i % NMAX] = rb[e];
                sC[i / NMAX][i % NMAX] = rc[e];
            }
        }
        else
        {
            for (int i = tid; i < CH * TF; i += THREADS)
            {
                int c = i / TF, t = i % TF;
                float uu = 0.f, dt = 0.f, zz = 0.f;
                if (t0 + t < l)
                {
                    long at = (row0 + c) * (long)l + t0 + t;
                    uu = ld(u + at);
                    dt = ld(delta + at) + (bias ? bias[c0 + c] : 0.f);
                    if (softplus) dt = softplus_f(dt);
                    if (z) zz = ld(z + at);
                }
                su[c][t] = uu; sdt[c][t] = dt; sdu[c][t] = dt * uu; sz[c][t] = zz;
            }
            load_bc<T, TF>(sB, Bp, l, n, t0);
            load_bc<T, TF>(sC, Cp, l, n, t0);
        }
        __syncthreads();
        if constexpr (PREFETCH) { if (t0 + TF < l) fetch(t0 + TF); }
#pragma unroll 1
        for (int tg = 0; tg < TF; tg += TPC)
        {
            float part[TPC];
#pragma unroll
            for (int s = 0; s < TPC; s++)
            {
                int t = tg + s;
                if (ckp && (t0 + t) % TB == 0 && t0 + t < l)
                {
#pragma unroll
                    for (int k = 0; k < SPT; k++) if (j0 + k < n) ckp[(long)((t0 + t) / TB) * n + j0 + k] = h[k];
                }
                float dt = sdt[ch][t], dtu = sdu[ch][t], Bv[SPT], Cv[SPT], acc = 0.f;
                Vec<SPT>::get(&sB[t][j0], Bv);
                Vec<SPT>::get(&sC[t][j0], Cv);
#pragma unroll
                for (int k = 0; k < SPT; k++) { h[k] = fmaf(ex2(dt * a[k]), h[k], dtu * Bv[k]); acc = fmaf(Cv[k], h[k], acc); }
                part[s] = acc;
            }
            sy[ch][tg + sub] = reduce_scatter8(part, sub);
        }
        __syncthreads();
        for (int i = tid; i < CH * TF; i += THREADS)
        {
            int c = i / TF, t = i % TF;
            if (t0 + t >= l) continue;
            float yt = sy[c][t] + (D ? D[c0 + c] : 0.f) * su[c][t];
            if (z) { float zt = sz[c][t]; yt *= zt * sigmoid_f(zt); }
            st(y + (row0 + c) * (long)l + t0 + t, yt);
        }
        __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < SPT; k++) if (j0 + k < n) last[(row0 + ch) * n + j0 + k] = h[k];
}

#define HS(t, k) hs_mem[((t) * SPT + (k)) * THREADS + tid]

// Gradients: gu, gdelta, gz (b d l) in T written; gA (d n), gBt, gCt (b g l n) float32, gD, gbias (d) float32 accumulated
// atomically (zeroed by the caller). gy (b d l) in T, glast (b d n) float32 or null.
template <typename T, int SPT>
__global__ void __launch_bounds__(THREADS) tiled_bwd(const T* __restrict__ u, const T* __restrict__ delta,
    const float* __restrict__ A, const T* __restrict__ Bt, const T* __restrict__ Ct, const float* __restrict__ D,
    const T* __restrict__ z, const float* __restrict__ bias, int softplus, const float* __restrict__ ck,
    const T* __restrict__ gy, const float* __restrict__ glast, T* __restrict__ gu, T* __restrict__ gdelta,
    float* __restrict__ gA, float* __restrict__ gBt, float* __restrict__ gCt, float* __restrict__ gD, T* __restrict__ gz,
    float* __restrict__ gbias, int b, int d, int l, int n, int g)
{
    // Per (channel, step): inputs, then the channel sums of the walk (C·h for the gate's gradient, dL/dΔ, dL/du).
    __shared__ float su[CH][TB + 1], sdt[CH][TB + 1], sdu[CH][TB + 1], ssig[CH][TB + 1], sz[CH][TB + 1], sg[CH][TB + 1];
    __shared__ float sy[CH][TB + 1], sddt[CH][TB + 1], sdut[CH][TB + 1], sdy[CH][TB + 1];
    __shared__ __align__(16) float sB[TB][NMAX];
    __shared__ __align__(16) float sC[TB][NMAX];
    __shared__ float sgB[TB][NMAX], sgC[TB][NMAX];
    extern __shared__ float hs_mem[];                  // (TB + 1) x SPT x THREADS: slot 0 = the tile's entry state, t + 1 = h_t
    int tilesPerSeq = d / CH;
    int bi = blockIdx.x / tilesPerSeq, c0 = (blockIdx.x % tilesPerSeq) * CH;
    int tid = threadIdx.x, ch = tid / TPC, sub = tid % TPC, di = c0 + ch, j0 = sub * SPT, lane = tid & 31;
    int gi = c0 / (d / g);
    long row0 = (long)bi * d + c0;
    long gofs = ((long)bi * g + gi) * (long)l * n;
    const T* Bp = Bt + gofs;
    const T* Cp = Ct + gofs;
    float a2[SPT], an[SPT], dh[SPT], ga[SPT];
#pragma unroll
    for (int k = 0; k < SPT; k++)
    {
        bool on = j0 + k < n;
        an[k] = on ? A[(long)di * n + j0 + k] : 0.f;
        a2[k] = an[k] * LOG2E;
        dh[k] = (on && glast) ? glast[(row0 + ch) * n + j0 + k] : 0.f;
        ga[k] = 0.f;
    }
    float Dv = D ? D[di] : 0.f, gDv = 0.f, gbv = 0.f;
    int nck = (l + TB - 1) / TB;
    const float* ckp = ck + (row0 + ch) * (long)nck * n;
    for (int c = nck - 1; c >= 0; c--)
    {
        int t0 = c * TB;
        // Load, with the per-element work done once: Δ, Δ u, and dΔ/draw (0 past l, which also silences those steps).
        for (int i = tid; i < CH * TB; i += THREADS)
        {
            int cc = i / TB, t = i % TB;
            float uu = 0.f, dt = 0.f, sig = 0.f, zz = 0.f, gg = 0.f;
            if (t0 + t < l)
            {
                long at = (row0 + cc) * (long)l + t0 + t;
                uu = ld(u + at);
                float raw = ld(delta + at) + (bias ? bias[c0 + cc] : 0.f);
                dt = softplus ? softplus_f(raw) : raw;
                sig = softplus ? sigmoid_f(raw) : 1.f;
                if (z) zz = ld(z + at);
                gg = ld(gy + at);
            }
            su[cc][t] = uu; sdt[cc][t] = dt; sdu[cc][t] = dt * uu; ssig[cc][t] = sig; sz[cc][t] = zz; sg[cc][t] = gg;
            sdy[cc][t] = z ? gg * zz * sigmoid_f(zz) : gg;                     // dL/d(y before the gate)
        }
        load_bc<T, TB>(sB, Bp, l, n, t0);
        load_bc<T, TB>(sC, Cp, l, n, t0);
        for (int i = tid; i < TB * NMAX; i += THREADS) { sgB[i / NMAX][i % NMAX] = 0.f; sgC[i / NMAX][i % NMAX] = 0.f; }
        __syncthreads();
        // Recompute the tile's states from its saved entry state.
        {
            float h[SPT];
#pragma unroll
            for (int k = 0; k < SPT; k++) { h[k] = j0 + k < n ? ckp[(long)c * n + j0 + k] : 0.f; HS(0, k) = h[k]; }
#pragma unroll
            for (int t = 0; t < TB; t++)
            {
                float dt = sdt[ch][t], dtu = sdu[ch][t], Bv[SPT];
                Vec<SPT>::get(&sB[t][j0], Bv);
#pragma unroll
                for (int k = 0; k < SPT; k++) { h[k] = fmaf(ex2(dt * a2[k]), h[k], dtu * Bv[k]); HS(t + 1, k) = h[k]; }
            }
        }
        // Walk the tile backwards, 8 steps at a time (the group's channel sums are reduce-scattered together).
#pragma unroll 1
        for (int tg = TB - TPC; tg >= 0; tg -= TPC)
        {
            float py[TPC], pdt[TPC], pdu[TPC];
#pragma unroll
            for (int s = TPC - 1; s >= 0; s--)
            {
                int t = tg + s;
                float dt = sdt[ch][t], dtu = sdu[ch][t], ut = su[ch][t], dy = sdy[ch][t];
                float Bv[SPT], Cv[SPT], acc = 0.f, ddt = 0.f, dut = 0.f, v[2 * SPT];
                Vec<SPT>::get(&sB[t][j0], Bv);
                Vec<SPT>::get(&sC[t][j0], Cv);
#pragma unroll
                for (int k = 0; k < SPT; k++)
                {
                    float hc = HS(t + 1, k), hp = HS(t, k);
                    acc = fmaf(Cv[k], hc, acc);
                    v[SPT + k] = dy * hc;                                        // dL/dC_j
                    dh[k] = fmaf(Cv[k], dy, dh[k]);
                    float dA = ex2(dt * a2[k]), dAhp = dA * hp;
                    ddt = fmaf(dh[k], fmaf(an[k], dAhp, Bv[k] * ut), ddt);
                    ga[k] = fmaf(dh[k] * dt, dAhp, ga[k]);
                    v[k] = dh[k] * dtu;                                          // dL/dB_j
                    dut = fmaf(dh[k] * dt, Bv[k], dut);
                    dh[k] *= dA;
                }
                py[s] = acc; pdt[s] = ddt; pdu[s] = dut;
                // dL/dB_t, dL/dC_t: sum over the warp's 4 channels (lane bits 3, 4) by a reduce-scatter; lane keeps the
                // value of index q = b3 * SPT + b4 * SPT / 2 + i, i < SPT / 2 (of v = [dB_j0.., dC_j0..]).
                bool b3 = (lane >> 3) & 1, b4 = (lane >> 4) & 1;
#pragma unroll
                for (int i = 0; i < SPT; i++) { float sd = b3 ? v[i] : v[i + SPT], kp = b3 ? v[i + SPT] : v[i]; v[i] = kp + __shfl_xor_sync(ALL, sd, 8); }
#pragma unroll
                for (int i = 0; i < SPT / 2; i++) { float sd = b4 ? v[i] : v[i + SPT / 2], kp = b4 ? v[i + SPT / 2] : v[i]; v[i] = kp + __shfl_xor_sync(ALL, sd, 16); }
                int q0 = b3 * SPT + b4 * (SPT / 2);
#pragma unroll
                for (int i = 0; i < SPT / 2; i++)
                {
                    int q = q0 + i;
                    if (q < SPT) atomicAdd(&sgB[t][j0 + q], v[i]);
                    else atomicAdd(&sgC[t][j0 + q - SPT], v[i]);
                }
                gDv = fmaf(dy, ut, gDv);                                         // every lane of the channel agrees
            }
            sy[ch][tg + sub] = reduce_scatter8(py, sub);
            sddt[ch][tg + sub] = reduce_scatter8(pdt, sub);
            sdut[ch][tg + sub] = reduce_scatter8(pdu, sub);
        }
        __syncthreads();
        for (int i = tid; i < CH * TB; i += THREADS)
        {
            int cc = i / TB, t = i % TB;
            if (t0 + t >= l) continue;
            long at = (row0 + cc) * (long)l + t0 + t;
            float gout = sg[cc][t], ut = su[cc][t], Dc = D ? D[c0 + cc] : 0.f, dy = sdy[cc][t], gzt = 0.f;
            if (z)
            {
                float zt = sz[cc][t], s = sigmoid_f(zt);
                gzt = gout * (sy[cc][t] + Dc * ut) * s * (1.f + zt * (1.f - s));
                st(gz + at, gzt);
            }
            st(gu + at, fmaf(dy, Dc, sdut[cc][t]));
            st(gdelta + at, sddt[cc][t] * ssig[cc][t]);
        }
        // dL/dbias: this thread's steps (lane sub held steps tg + sub of every group).
#pragma unroll
        for (int tg = 0; tg < TB; tg += TPC) gbv = fmaf(sddt[ch][tg + sub], ssig[ch][tg + sub], gbv);
        for (int i = tid; i < TB * n; i += THREADS)
        {
            int t = i / n, j = i % n;
            if (t0 + t >= l) continue;
            atomicAdd(&gBt[gofs + (long)(t0 + t) * n + j], sgB[t][j]);
            atomicAdd(&gCt[gofs + (long)(t0 + t) * n + j], sgC[t][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < SPT; k++) if (j0 + k < n) atomicAdd(&gA[(long)di * n + j0 + k], ga[k]);
    // gbv: summed over the channel's 8 lanes (each held different steps); gDv: the lanes agree.
    gbv += __shfl_xor_sync(ALL, gbv, 1);
    gbv += __shfl_xor_sync(ALL, gbv, 2);
    gbv += __shfl_xor_sync(ALL, gbv, 4);
    if (sub == 0)
    {
        if (gD) atomicAdd(&gD[di], gDv);
        if (gbias) atomicAdd(&gbias[di], gbv);
    }
}

bool tiled_fits(int d, int n, int g) { return n >= 1 && n <= NMAX && g > 0 && d % g == 0 && (d / g) % CH == 0; }

template <typename T>
int launch_fwd(const void* u, const void* delta, const float* A, const void* Bt, const void* Ct, const float* D,
    const void* z, const float* bias, int softplus, void* y, float* last, float* ck, int b, int d, int l, int n, int g)
{
    int blocks = b * (d / CH);
    if (n <= 2 * TPC)
        tiled_fwd<T, 2><<<blocks, THREADS, 0, 0>>>((const T*)u, (const T*)delta, A, (const T*)Bt, (const T*)Ct, D,
            (const T*)z, bias, softplus, (T*)y, last, ck, b, d, l, n, g);
    else
        tiled_fwd<T, 4><<<blocks, THREADS, 0, 0>>>((const T*)u, (const T*)delta, A, (const T*)Bt, (const T*)Ct, D,
            (const T*)z, bias, softplus, (T*)y, last, ck, b, d, l, n, g);
    return (int)cudaGetLastError();
}

// The recomputed states live in dynamic shared memory (35 KB for n <= 16, 70 KB for n <= 32), above the 48 KB a block
// gets without opting in.
template <typename T, int SPT>
size_t bwd_smem()
{
    size_t bytes = (size_t)(TB + 1) * SPT * THREADS * sizeof(float);
    static bool set = false;
    if (!set) { cudaFuncSetAttribute(tiled_bwd<T, SPT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes); set = true; }
    return bytes;
}

template <typename T>
int launch_bwd(const void* u, const void* delta, const float* A, const void* Bt, const void* Ct, const float* D,
    const void* z, const float* bias, int softplus, const float* ck, const void* gy, const float* glast, void* gu,
    void* gdelta, float* gA, float* gBt, float* gCt, float* gD, void* gz, float* gbias, int b, int d, int l, int n, int g)
{
    int blocks = b * (d / CH);
    if (n <= 2 * TPC)
        tiled_bwd<T, 2><<<blocks, THREADS, bwd_smem<T, 2>(), 0>>>((const T*)u, (const T*)delta, A, (const T*)Bt, (const T*)Ct, D, (const T*)z,
            bias, softplus, ck, (const T*)gy, glast, (T*)gu, (T*)gdelta, gA, gBt, gCt, gD, (T*)gz, gbias, b, d, l, n, g);
    else
        tiled_bwd<T, 4><<<blocks, THREADS, bwd_smem<T, 4>(), 0>>>((const T*)u, (const T*)delta, A, (const T*)Bt, (const T*)Ct, D, (const T*)z,
            bias, softplus, ck, (const T*)gy, glast, (T*)gu, (T*)gdelta, gA, gBt, gCt, gD, (T*)gz, gbias, b, d, l, n, g);
    return (int)cudaGetLastError();
}

}  // namespace

extern "C" {

// Whether the tiled path takes these sizes (n <= 32, the channels of a group a multiple of 32).
int ssm_scan_tiled_fits(int d, int n, int g) { return tiled_fits(d, n, g) ? 1 : 0; }

// Floats of the saved states ck for the backward: (b, d, ceil(l / 16), n).
long ssm_scan_tiled_ck_floats(int b, int d, int l, int n) { return (long)b * d * ((l + TB - 1) / TB) * n; }

// bf16: 0 = float32 activations, 1 = bfloat16. ck may be null (no backward will follow).
int ssm_scan_tiled_fwd(int bf16, const void* u, const void* delta, const float* A, const void* Bt, const void* Ct,
    const float* D, const void* z, const float* bias, int softplus, void* y, float* last, float* ck,
    int b, int d, int l, int n, int g)
{
    if (!tiled_fits(d, n, g)) return -1;
    return bf16 ? launch_fwd<__nv_bfloat16>(u, delta, A, Bt, Ct, D, z, bias, softplus, y, last, ck, b, d, l, n, g)
                : launch_fwd<float>(u, delta, A, Bt, Ct, D, z, bias, softplus, y, last, ck, b, d, l, n, g);
}

int ssm_scan_tiled_bwd(int bf16, const void* u, const void* delta, const float* A, const void* Bt, const void* Ct,
    const float* D, const void* z, const float* bias, int softplus, const float* ck, const void* gy, const float* glast,
    void* gu, void* gdelta, float* gA, float* gBt, float* gCt, float* gD, void* gz, float* gbias,
    int b, int d, int l, int n, int g)
{
    if (!tiled_fits(d, n, g)) return -1;
    return bf16 ? launch_bwd<__nv_bfloat16>(u, delta, A, Bt, Ct, D, z, bias, softplus, ck, gy, glast, gu, gdelta, gA, gBt, gCt, gD, gz, gbias, b, d, l, n, g)
                : launch_bwd<float>(u, delta, A, Bt, Ct, D, z, bias, softplus, ck, gy, glast, gu, gdelta, gA, gBt, gCt, gD, gz, gbias, b, d, l, n, g);
}

}
