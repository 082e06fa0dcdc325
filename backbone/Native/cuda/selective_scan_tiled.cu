// Fused selective scan (Mamba-1, S6), the fast path for n <= 32 (every Mamba-1 model uses n = 16): forward and
// backward, float32 or bfloat16 activations, float32 parameters, states and arithmetic.
// Layouts (mamba_ssm's selective_scan_fn; the general kernels in selective_scan.cu take B and C as (b, g, l, n)):
//   u, delta, z, y: (b, d, l) in T    A: (d, n) f32    B, C: (b, g, n, l) in T    D, bias: (d) f32 or null
//   last: (b, d, n) f32    ck: (b, d, ceil(l / TB), n) f32, the state entering every TB-step tile (saved for the backward)
//
// Why this shape of kernel. The scan reads u, Δ, z and writes y once per (channel, step); B_t and C_t are shared by
// the channels of a group; the arithmetic is dominated by the n exponentials exp(Δ_t A) per (channel, step), and the
// only serial dependency is each state's own recurrence. So:
//   - a block owns 64 channels of one sequence in the forward (32 where a group has fewer, and in the backward) and
//     walks time in tiles. A tile's raw inputs (rows of u, Δ, z, B, C,
//     contiguous in memory) are copied into a shared staging area by cp.async while the previous tile is scanned, so
//     the global loads' latency hides behind the arithmetic without holding registers; a short pass then does the
//     per-element work once (Δ = softplus(Δ + bias), Δ u, D u, silu(z); Δ = 0 past l, which leaves the state
//     unchanged, so the step loops have no bounds checks) and packs what a step reads into one or two vector loads;
//   - several threads share a channel, each holding a few consecutive states in registers: the b d n independent
//     recurrences give more threads than channels, which keeps the SMs busy (with one warp per channel the kernel was
//     latency-bound: ncu showed two warps per scheduler, issuing on 35% of cycles). The forward uses four threads of
//     four states for n <= 16 (a step's loads and sums are shared by four exponentials) and eight for n <= 32; the
//     backward, with about twice the registers per state, eight threads throughout;
//   - the sums over a channel's states (C·h for y; dΔ and du in the backward) are not reduced per step: each thread
//     keeps its partial sums for W consecutive steps (W = its channel's thread count) and one reduce-scatter over the
//     channel's W lanes (W - 1 shuffles) leaves lane q with the total of step q, which that lane finishes (skip and
//     gate, or the input gradients, written straight to global memory in the backward).
// Measured on an H100 (b 8, d 2048, n 16, l 2048, float32, kernel alone): the first tiled version took 1.48 ms forward
// and 9.66 forward+backward; with per-element work hoisted, one-instruction exp2 and eight threads per channel, 0.59 /
// 3.41; with the cp.async staging, packed vector loads, shared-memory bias and D, branch-free per-element passes and
// four threads per channel in the forward, 0.37 / 2.02; with the forward's per-element pass on step pairs (paired
// loads, 16-byte stores, bias and D in registers), 16-byte output stores, 64 channels per block, a lane order that
// makes a quarter-warp's B, C loads one address, and for bfloat16 one MUFU instruction per activation and step groups
// unrolled by 4, 0.31 / 1.85 (bfloat16 forward 0.38 -> 0.28; bench/GpuBench/results/kernel-only.txt).
// What bounds the bfloat16 forward (ncu at l = 2048): no single unit. Shared memory is 65% busy (every thread reads
// B_t, C_t for its states and (Δ_t, Δ_t u_t) for its channel each step), the MUFU pipe 54% (the n exponentials per
// (channel, step) alone are 0.13 ms of it at this shape), issue slots 60%, with 1.2 eligible warps per scheduler of
// the 3.9 that the registers allow. Giving a thread two channels, which halves the B, C reads, halves the warps, and
// that version was latency-bound and slower (measured in launch_fwd). The same arithmetic with no device memory at all
// (bench/GpuBench/scan_floor.cu, the best of 12 arrangements) takes 0.180 ms at this shape, 1.55x below this kernel and
// already the 0.179 ms that 2x the bfloat16 bandwidth floor would be.
// The expanded state (b, d, l, n) never reaches device memory. The backward walks the tiles in reverse: it reloads the
// tile's entry state from ck, recomputes the TB states of the tile into shared memory, then runs the adjoint
// recurrence backwards (dh_{t-1} = exp(Δ_t A) dh_t + C_{t-1} dy_{t-1}); the B and C gradients are summed over the
// warp's four channels by a reduce-scatter and over the block in shared memory, then added to the global gradient
// once per block.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <type_traits>
#include "device_math.cuh"

namespace {

constexpr int TPC = 8;          // threads per channel
constexpr int CH = 32;          // channels per block
constexpr int THREADS = CH * TPC;
constexpr int TF = 32;          // forward tile (time steps)
constexpr int TB = 16;          // backward tile, and the spacing of the saved states ck
constexpr int NMAX = 32;        // largest n of this path
using ssm::LOG2E;
constexpr unsigned ALL = 0xffffffffu;

using ssm::tof;
using ssm::st;
using ssm::sigmoid_f;
using ssm::cp16;
using ssm::cp_commit;
using ssm::cp_wait_all;
using ssm::aligned16;
using ssm::ex2;
using ssm::softplus_poly;
using ssm::silu_poly;
// softplus and its derivative from one exponential: e = exp(x), softplus = log1p(e), sigmoid = e / (1 + e); x > 20
// returns x (and 1), as torch does.
__device__ __forceinline__ float softplus_f(float x) { float r = log1pf(__expf(fminf(x, 20.f))); return x > 20.f ? x : r; }
__device__ __forceinline__ float2 softplus_sig(float x)
{
    float e = __expf(fminf(x, 20.f));
    return x > 20.f ? make_float2(x, 1.f) : make_float2(log1pf(e), __fdividef(e, 1.f + e));
}


// rows (<= ROWS) x lt elements (row r at src + r * l) into dst + r * DSTRIDE. vec: by 16-byte cp.async, which needs
// every row start 16-byte aligned and lt * sizeof(T) a multiple of 16 (the host checks l % 8 == 0 and the pointers);
// else by plain loads. Elements past lt are left as they were: the per-element pass masks them. The trip counts are
// compile-time (one cp.async per thread and row block for float32 u, Δ, z), so a tile's staging costs a few
// instructions per thread.
template <typename T, int TT, int ROWS, int DSTRIDE, int NT = THREADS>
__device__ __forceinline__ void stage_rows(T* dst, const T* src, int l, int rows, int lt, bool vec)
{
    if (vec)
    {
        constexpr int EPC = 16 / sizeof(T), RC = TT / EPC;
#pragma unroll
        for (int e = 0; e < (ROWS * RC + NT - 1) / NT; e++)
        {
            int i = threadIdx.x + e * NT, r = i / RC, q = (i % RC) * EPC;
            if (r < rows && q < lt) cp16(dst + r * DSTRIDE + q, src + (long)r * l + q);
        }
    }
    else
    {
        for (int i = threadIdx.x; i < rows * TT; i += NT)
        {
            int r = i / TT, t = i % TT;
            if (t < lt) dst[r * DSTRIDE + t] = src[(long)r * l + t];
        }
    }
}

// v[0..W-1] hold a thread's values for W steps; afterwards v[0] holds, on the lane with sub == q, the sum over the
// channel's W lanes of step q's values: log2 W rounds, each halving the values a lane keeps (W - 1 shuffles in all,
// where a plain reduction per step would take W log2 W). The channel's lanes are L apart (sub = lane / L): L = 1, its
// lanes adjacent (the backward); L = 32 / W, one lane per channel in each group of L (the forward, whose step loads of
// B and C are then the same address within a quarter-warp).
template <int W, int L = 1>
__device__ __forceinline__ float reduce_scatter(float* v, int sub)
{
#pragma unroll
    for (int m = W / 2; m >= 1; m /= 2)
    {
        bool hi = sub & m;
#pragma unroll
        for (int i = 0; i < m; i++) { float s = hi ? v[i] : v[i + m], k = hi ? v[i + m] : v[i]; v[i] = k + __shfl_xor_sync(ALL, s, m * L); }
    }
    return v[0];
}

// SPT floats from/to shared memory in one vector access (SPT = 2 or 4; the address is SPT * 4-byte aligned).
template <int SPT> struct Vec;
template <> struct Vec<2>
{
    static __device__ __forceinline__ void get(const float* p, float* o) { float2 v = *reinterpret_cast<const float2*>(p); o[0] = v.x; o[1] = v.y; }
    static __device__ __forceinline__ void put(float* p, const float* o) { *reinterpret_cast<float2*>(p) = make_float2(o[0], o[1]); }
};
template <> struct Vec<4>
{
    static __device__ __forceinline__ void get(const float* p, float* o) { float4 v = *reinterpret_cast<const float4*>(p); o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w; }
    static __device__ __forceinline__ void put(float* p, const float* o) { *reinterpret_cast<float4*>(p) = make_float4(o[0], o[1], o[2], o[3]); }
};

// The B and C of a tile, packed per (step, lane of the channel): [B_j0 .. B_j0+SPT-1, C_j0 .. C_j0+SPT-1], so a step
// reads its lane's slice in one vector load (8 lanes x 16 bytes = one shared-memory wavefront for SPT = 2). Zero past n
// and past lt (a zero B, C and A row makes a state slot inert).
template <typename T, int TT, int FT, int SPT, int PADT, int NT>
__device__ __forceinline__ void pack_bc(float (*bc)[FT][2 * SPT], const T (*rB)[PADT], const T (*rC)[PADT], int n, int lt)
{
    // Consecutive threads take consecutive j (rows of the staging, padded by 16 bytes: at most 2-way bank conflicts).
    constexpr int RB = FT * SPT;
    static_assert(TT * RB % NT == 0, "whole passes");
#pragma unroll
    for (int e = 0; e < TT * RB / NT; e++)
    {
        int i = threadIdx.x + e * NT, j = i % RB, t = i / RB;
        bool ok = j < n && t < lt;
        float bv = tof(rB[j][t]), cv = tof(rC[j][t]);
        bc[t][j / SPT][j % SPT] = ok ? bv : 0.f;
        bc[t][j / SPT][SPT + j % SPT] = ok ? cv : 0.f;
    }
}

// Four float32 or eight bfloat16 values to 16-byte-aligned global memory in one store.
__device__ __forceinline__ void store16(float* p, const float* v) { *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]); }
__device__ __forceinline__ void store16(__nv_bfloat16* p, const float* v)
{
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) { __nv_bfloat162 h2 = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]); w[i] = *reinterpret_cast<unsigned*>(&h2); }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

// A step's packed [B.., C..] slice of a lane: one 16-byte load for SPT = 2, two for SPT = 4.
template <int SPT>
__device__ __forceinline__ void get_bc(const float* p, float* o)
{
#pragma unroll
    for (int i = 0; i < SPT / 2; i++)
    {
        float4 v = reinterpret_cast<const float4*>(p)[i];
        o[4 * i] = v.x; o[4 * i + 1] = v.y; o[4 * i + 2] = v.z; o[4 * i + 3] = v.w;
    }
}

// ---- Forward ----
// The forward's layout (measured choices in launch_fwd): FT threads per channel, each holding SPT consecutive states,
// CHF channels per block. Per tile it runs three phases between barriers: a per-element pass (two steps per thread:
// paired loads and 16-byte stores), the scan (FT steps per reduce-scatter, a step's Δ pair in one load), and a
// 16-byte-store output pass.
// bfloat16 activations only carry 8 significant bits, so their per-element activations use one MUFU instruction each
// (a polynomial finishes log1p and 1/(1+t) to 2^-19.6 and 2^-14.3 relative): the special-function pipe is the
// kernel's floor (one exponential per state and step), and every other MUFU instruction adds to it. float32 keeps the
// library forms (log1pf, exp and reciprocal), whose numerics match mamba_ssm's.

// Two consecutive elements as floats (the address is 2-element aligned).
__device__ __forceinline__ float2 ld2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 ld2(const __nv_bfloat16* p)
{
    unsigned w = *reinterpret_cast<const unsigned*>(p);       // little-endian: the first element in the low half
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

template <typename T> __device__ __forceinline__ float softplus_fwd(float x) { return softplus_f(x); }
template <typename T> __device__ __forceinline__ float silu_fwd(float z) { return z * sigmoid_f(z); }
template <> __device__ __forceinline__ float softplus_fwd<__nv_bfloat16>(float x) { return softplus_poly(x); }
template <> __device__ __forceinline__ float silu_fwd<__nv_bfloat16>(float z) { return silu_poly(z); }

template <typename T, int SPT, int FT, int CHF> struct FwdSmem
{
    static constexpr int RB = FT * SPT, PADT = TF + 16 / (int)sizeof(T);
    T ru[CHF][TF], rd[CHF][TF], rz[CHF][TF];           // staging: the next tile's raw u, Δ, z rows
    T rB[RB][PADT], rC[RB][PADT];                      // staging: its B, C rows
    __align__(16) float2 dd[CHF][TF + 2];              // (Δ, Δ u) per (channel, step); 16-byte rows for the paired stores
    __align__(16) float2 pg[CHF][TF + 2];              // (D u, silu(z)) per (channel, step)
    __align__(16) float sy[CHF][TF + 4];               // y per (channel, step)
    __align__(16) float bc[TF][FT][2 * SPT];           // B, C per (step, lane of the channel): see pack_bc
};

template <typename T, int SPT, int FT, int CHF>
__global__ void __launch_bounds__(CHF * FT, (FT >= 4 ? 512 : 256) / (CHF * FT) > 0 ? (FT >= 4 ? 512 : 256) / (CHF * FT) : 1)
tiled_fwd(const T* __restrict__ u,
    const T* __restrict__ delta, const float* __restrict__ A, const T* __restrict__ Bm, const T* __restrict__ Cm,
    const float* __restrict__ D, const T* __restrict__ z, const float* __restrict__ bias, int softplus,
    T* __restrict__ y, float* __restrict__ last, float* __restrict__ ck, int b, int d, int l, int n, int g, int vec)
{
    constexpr int NT = CHF * FT;
    constexpr int HT = TF / 2;                    // step pairs per row of a tile
    constexpr int CSTEP = NT / HT;                // the per-element pass: thread -> (channel tid / HT + e CSTEP, pair tid % HT)
    constexpr int PP = CHF / CSTEP;               // pairs per thread
    constexpr int QN = SPT / 4, ITEMS = FT * QN * HT;   // pack items: (lane of the channel, quad of its states, step pair)
    constexpr int V = 16 / sizeof(T), CHUNKS = CHF * TF / V;   // output pass: 16-byte chunks
    static_assert(NT % HT == 0 && CHF % CSTEP == 0 && SPT % 4 == 0, "tile shapes");
    using M = FwdSmem<T, SPT, FT, CHF>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    auto& S = *reinterpret_cast<M*>(smem_raw);
    int tilesPerSeq = d / CHF;
    int bi = blockIdx.x / tilesPerSeq, c0 = (blockIdx.x % tilesPerSeq) * CHF;
    // A warp holds CW = 32 / FT channels, lane = sub CW + channel: the lanes of a quarter-warp read the same B, C slice
    // each step. An H100 serves a 16-byte shared load in 2 wavefronts when each quarter-warp reads one address, in 4
    // when the quarter-warp's lanes read 4 addresses, as lane = channel FT + sub had it (measured with ncu).
    constexpr int CW = 32 / FT;
    int tid = threadIdx.x, lane = tid & 31, ch = (tid >> 5) * CW + lane % CW, sub = lane / CW, di = c0 + ch, j0 = sub * SPT;
    int pc = tid / HT, pt = (tid % HT) * 2;
    int gi = c0 / (d / g);
    long row0 = (long)bi * d + c0;
    const T* Bp = Bm + ((long)bi * g + gi) * (long)n * l;
    const T* Cp = Cm + ((long)bi * g + gi) * (long)n * l;
    float a[SPT], h[SPT], rbias[PP], rD[PP];
#pragma unroll
    for (int k = 0; k < SPT; k++) { a[k] = j0 + k < n ? A[(long)di * n + j0 + k] * LOG2E : 0.f; h[k] = 0.f; }
#pragma unroll
    for (int e = 0; e < PP; e++)
    {
        int c = c0 + pc + e * CSTEP;
        rbias[e] = bias ? bias[c] : 0.f;
        rD[e] = D ? D[c] : 0.f;
    }
    int nck = (l + TB - 1) / TB;
    float* ckp = ck ? ck + (row0 + ch) * (long)nck * n : nullptr;
    const T* u0 = u + row0 * l;
    const T* d0 = delta + row0 * l;
    const T* z0 = z ? z + row0 * l : nullptr;
    T* y0 = y + row0 * l;
    auto stage = [&](int t0)
    {
        int lt = min(TF, l - t0);
        stage_rows<T, TF, CHF, TF, NT>(&S.ru[0][0], u0 + t0, l, CHF, lt, vec);
        stage_rows<T, TF, CHF, TF, NT>(&S.rd[0][0], d0 + t0, l, CHF, lt, vec);
        if (z) stage_rows<T, TF, CHF, TF, NT>(&S.rz[0][0], z0 + t0, l, CHF, lt, vec);
        stage_rows<T, TF, M::RB, M::PADT, NT>(&S.rB[0][0], Bp + t0, l, n, lt, vec);
        stage_rows<T, TF, M::RB, M::PADT, NT>(&S.rC[0][0], Cp + t0, l, n, lt, vec);
        cp_commit();
    };
    // The per-element work of a staged tile, and the packing of its B, C. FULL (every tile but a short last one):
    // no step masks. Past lt the staging holds stale values, which the selects drop (Δ = Δu = 0 and B = C = 0 leave
    // the state unchanged, and those steps' y is never stored).
    auto prep = [&](auto full, int lt)
    {
        constexpr bool FULL = decltype(full)::value;
#pragma unroll
        for (int e = 0; e < PP; e++)
        {
            int c = pc + e * CSTEP, t = pt;
            float2 uu = ld2(&S.ru[c][t]), dr = ld2(&S.rd[c][t]);
            float dx = dr.x + rbias[e], dy = dr.y + rbias[e], gx = 1.f, gy = 1.f;
            if (softplus) { dx = softplus_fwd<T>(dx); dy = softplus_fwd<T>(dy); }
            if (z) { float2 zz = ld2(&S.rz[c][t]); gx = silu_fwd<T>(zz.x); gy = silu_fwd<T>(zz.y); }
            if (!FULL)
            {
                bool ox = t < lt, oy = t + 1 < lt;
                uu.x = ox ? uu.x : 0.f; dx = ox ? dx : 0.f;
                uu.y = oy ? uu.y : 0.f; dy = oy ? dy : 0.f;
            }
            *reinterpret_cast<float4*>(&S.dd[c][t]) = make_float4(dx, dx * uu.x, dy, dy * uu.y);
            *reinterpret_cast<float4*>(&S.pg[c][t]) = make_float4(rD[e] * uu.x, gx, rD[e] * uu.y, gy);
        }
        // bc[t][f] = [B_j .. B_j+SPT-1, C_j .. C_j+SPT-1] (j = f SPT) at step t: a step's slice of a lane is read in
        // SPT / 2 16-byte loads. An item moves a quad of rows over two steps (8 paired loads, 4 16-byte stores);
        // consecutive threads take the quads of one step pair (with step pairs consecutive, the stores of a quarter-warp
        // hit the same banks, 8-way; this way 2-way, and the loads 2-way). Rows past n were never staged: zeroed.
#pragma unroll
        for (int e = 0; e < (ITEMS + NT - 1) / NT; e++)
        {
            int i = tid + e * NT;
            if (ITEMS % NT != 0 && i >= ITEMS) break;
            int t = (i / (FT * QN)) * 2, fq = i % (FT * QN), f = fq / QN, jb = f * SPT + (fq % QN) * 4;
            float b0[4], b1[4], c0v[4], c1v[4];
#pragma unroll
            for (int r = 0; r < 4; r++)
            {
                float2 bv = ld2(&S.rB[jb + r][t]), cv = ld2(&S.rC[jb + r][t]);
                bool on = jb + r < n, ox = on && (FULL || t < lt), oy = on && (FULL || t + 1 < lt);
                b0[r] = ox ? bv.x : 0.f; c0v[r] = ox ? cv.x : 0.f;
                b1[r] = oy ? bv.y : 0.f; c1v[r] = oy ? cv.y : 0.f;
            }
            int q4 = (fq % QN) * 4;
            *reinterpret_cast<float4*>(&S.bc[t][f][q4]) = make_float4(b0[0], b0[1], b0[2], b0[3]);
            *reinterpret_cast<float4*>(&S.bc[t][f][SPT + q4]) = make_float4(c0v[0], c0v[1], c0v[2], c0v[3]);
            *reinterpret_cast<float4*>(&S.bc[t + 1][f][q4]) = make_float4(b1[0], b1[1], b1[2], b1[3]);
            *reinterpret_cast<float4*>(&S.bc[t + 1][f][SPT + q4]) = make_float4(c1v[0], c1v[1], c1v[2], c1v[3]);
        }
    };
    stage(0);
    for (int t0 = 0; t0 < l; t0 += TF)
    {
        int lt = min(TF, l - t0);
        cp_wait_all();
        __syncthreads();                           // the staging holds tile t0; the previous tile's outputs are stored
        if (lt == TF) prep(std::true_type{}, lt); else prep(std::false_type{}, lt);
        __syncthreads();                           // the staging is free: fetch the next tile behind this one's scan
        if (t0 + TF < l) stage(t0 + TF);
        // Step groups unrolled per dtype, measured (device ms at l 2048 / 8192 on an H100): bfloat16 unrolled by 4,
        // 0.267 / 1.048 against 0.278 / 1.086 by 2; float32, whose loads fill more registers, 0.298 / 1.167 by 2 and
        // 0.305 / 1.193 by 4. Capping registers for a third block per SM (80, with spills) was slower in both.
        constexpr int UNROLL = sizeof(T) == 2 ? 4 : 2;
#pragma unroll UNROLL
        for (int tg = 0; tg < TF; tg += FT)
        {
            if (ckp && tg % TB == 0 && t0 + tg < l)
            {
#pragma unroll
                for (int k = 0; k < SPT; k++) if (j0 + k < n) ckp[(long)((t0 + tg) / TB) * n + j0 + k] = h[k];
            }
            float q[2 * FT];                       // (Δ, Δu) of the FT steps, 16 bytes per two steps
#pragma unroll
            for (int s = 0; s < FT; s += 2)
            {
                float4 v = *reinterpret_cast<const float4*>(&S.dd[ch][tg + s]);
                q[2 * s] = v.x; q[2 * s + 1] = v.y; q[2 * s + 2] = v.z; q[2 * s + 3] = v.w;
            }
            float part[FT];
#pragma unroll
            for (int s = 0; s < FT; s++)
            {
                float bcv[2 * SPT], acc = 0.f;
                get_bc<SPT>(&S.bc[tg + s][sub][0], bcv);
#pragma unroll
                for (int k = 0; k < SPT; k++)
                {
                    h[k] = fmaf(ex2(q[2 * s] * a[k]), h[k], q[2 * s + 1] * bcv[k]);
                    acc = fmaf(bcv[SPT + k], h[k], acc);
                }
                part[s] = acc;
            }
            float sum = reduce_scatter<FT, CW>(part, sub);
            float2 p = S.pg[ch][tg + sub];
            S.sy[ch][tg + sub] = (sum + p.x) * p.y;
        }
        __syncthreads();
#pragma unroll
        for (int e = 0; e < (CHUNKS + NT - 1) / NT; e++)
        {
            int i = tid + e * NT, c = i / (TF / V), t = (i % (TF / V)) * V;
            if (CHUNKS % NT != 0 && i >= CHUNKS) break;
            T* dst = y0 + (long)c * l + t0 + t;
            if (vec && lt == TF)
            {
                float v[V];
#pragma unroll
                for (int k = 0; k < V; k += 4)
                {
                    float4 w = *reinterpret_cast<const float4*>(&S.sy[c][t + k]);
                    v[k] = w.x; v[k + 1] = w.y; v[k + 2] = w.z; v[k + 3] = w.w;
                }
                store16(dst, v);
            }
            else
            {
#pragma unroll
                for (int k = 0; k < V; k++) if (t + k < lt) st(dst + k, S.sy[c][t + k]);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < SPT; k++) if (j0 + k < n) last[(row0 + ch) * n + j0 + k] = h[k];
}

template <typename T, int SPT> struct BwdSmem
{
    static constexpr int RB = TPC * SPT, PADT = TB + 16 / (int)sizeof(T);
    T ru[CH][TB], rd[CH][TB], rz[CH][TB], rg[CH][TB];   // staging: the next tile's raw u, Δ, z, dL/dy rows
    T rB[RB][PADT], rC[RB][PADT];                       // staging: its B, C rows
    float bias[CH];
    float4 q[CH][TB + 1];                               // (Δ, Δ u, u, dL/dy before the gate) per (channel, step)
    float2 zs[CH][TB + 1];                              // (dL/dy · d gate/dz, dΔ/draw) per (channel, step)
    __align__(16) float bc[TB][TPC][2 * SPT];
    float gbc[TB][TPC][2 * SPT];                        // the block's dL/dB, dL/dC of the tile, packed like bc
    __align__(16) float hs[TB][THREADS][SPT];          // slot t = the state entering step t (per thread; h_{TB-1} stays in registers)
};

// Gradients: gu, gdelta, gz (b d l) in T written; gA (d n), gB, gC (b g n l) float32, gD, gbias (d) float32 accumulated
// atomically (zeroed by the caller). gy (b d l) in T, glast (b d n) float32 or null.
// Register budget, measured on an H100 (b 8, d 2048, l 2048, n 16): float32 runs best uncapped at two blocks per SM
// (122 registers, 1.52 ms; capped at 80 for three blocks it spilled and took 1.62); bfloat16, whose smaller staging lets
// four blocks share an SM's shared memory, at 64 registers despite spilling (1.36 ms against 1.52).
template <typename T, int SPT>
__global__ void __launch_bounds__(THREADS, SPT == 2 && sizeof(T) == 2 ? 4 : 2) tiled_bwd(const T* __restrict__ u, const T* __restrict__ delta,
    const float* __restrict__ A, const T* __restrict__ Bm, const T* __restrict__ Cm, const float* __restrict__ D,
    const T* __restrict__ z, const float* __restrict__ bias, int softplus, const float* __restrict__ ck,
    const T* __restrict__ gy, const float* __restrict__ glast, T* __restrict__ gu, T* __restrict__ gdelta,
    float* __restrict__ gA, float* __restrict__ gB, float* __restrict__ gC, float* __restrict__ gD, T* __restrict__ gz,
    float* __restrict__ gbias, int b, int d, int l, int n, int g, int vec)
{
    extern __shared__ __align__(16) unsigned char smem_raw[];
    auto& S = *reinterpret_cast<BwdSmem<T, SPT>*>(smem_raw);
    constexpr int PER = CH * TB / THREADS;        // elements per thread in the per-element pass (channel tid / 16 + 16 e)
    int tilesPerSeq = d / CH;
    int bi = blockIdx.x / tilesPerSeq, c0 = (blockIdx.x % tilesPerSeq) * CH;
    int tid = threadIdx.x, ch = tid / TPC, sub = tid % TPC, di = c0 + ch, j0 = sub * SPT, lane = tid & 31;
    int gi = c0 / (d / g);
    long row0 = (long)bi * d + c0;
    long gofs = ((long)bi * g + gi) * (long)n * l;
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
    if (tid < CH) S.bias[tid] = bias ? bias[c0 + tid] : 0.f;
    float Dv = D ? D[di] : 0.f, gDv = 0.f, gbv = 0.f;
    int nck = (l + TB - 1) / TB;
    const float* ckp = ck + (row0 + ch) * (long)nck * n;
    const T* u0 = u + row0 * l;
    const T* d0 = delta + row0 * l;
    const T* z0 = z ? z + row0 * l : nullptr;
    const T* g0 = gy + row0 * l;
    T* gu0 = gu + (row0 + ch) * l;
    T* gd0 = gdelta + (row0 + ch) * l;
    T* gz0 = z ? gz + (row0 + ch) * l : nullptr;
    auto stage = [&](int t0)
    {
        int lt = min(TB, l - t0);
        using M = BwdSmem<T, SPT>;
        stage_rows<T, TB, CH, TB>(&S.ru[0][0], u0 + t0, l, CH, lt, vec);
        stage_rows<T, TB, CH, TB>(&S.rd[0][0], d0 + t0, l, CH, lt, vec);
        if (z) stage_rows<T, TB, CH, TB>(&S.rz[0][0], z0 + t0, l, CH, lt, vec);
        stage_rows<T, TB, CH, TB>(&S.rg[0][0], g0 + t0, l, CH, lt, vec);
        stage_rows<T, TB, M::RB, M::PADT>(&S.rB[0][0], Bm + gofs + t0, l, n, lt, vec);
        stage_rows<T, TB, M::RB, M::PADT>(&S.rC[0][0], Cm + gofs + t0, l, n, lt, vec);
        cp_commit();
    };
    stage((nck - 1) * TB);
    for (int c = nck - 1; c >= 0; c--)
    {
        int t0 = c * TB, lt = min(TB, l - t0);
        cp_wait_all();
        __syncthreads();                           // the staging holds this tile; the previous tile's sums are flushed
        // The per-element work, once: Δ, Δ u, the gate's factors (0 past l, which also silences those steps).
#pragma unroll
        for (int e = 0; e < PER; e++)
        {
            // Branch-free: past lt the staging holds stale values, which the selects drop.
            int cc = tid / TB + e * (THREADS / TB), t = tid % TB;
            bool ok = t < lt;
            float uu = tof(S.ru[cc][t]), raw = tof(S.rd[cc][t]) + S.bias[cc], gg = tof(S.rg[cc][t]), zf = 0.f;
            float2 ds = softplus ? softplus_sig(raw) : make_float2(raw, 1.f);      // Δ, dΔ/draw
            float dy = gg;
            if (z)
            {
                float zz = tof(S.rz[cc][t]), s = sigmoid_f(zz);
                dy = gg * zz * s;                                            // dL/d(y before the gate)
                zf = gg * s * (1.f + zz * (1.f - s));                        // dL/dz = zf (C·h + D u)
            }
            uu = ok ? uu : 0.f;
            float dt = ok ? ds.x : 0.f;
            dy = ok ? dy : 0.f;
            S.q[cc][t] = make_float4(dt, dt * uu, uu, dy);
            S.zs[cc][t] = make_float2(ok ? zf : 0.f, ok ? ds.y : 0.f);
        }
        pack_bc<T, TB, TPC, SPT, BwdSmem<T, SPT>::PADT, THREADS>(S.bc, S.rB, S.rC, n, lt);
        for (int i = tid; i < TB * TPC * 2 * SPT; i += THREADS) (&S.gbc[0][0][0])[i] = 0.f;
        __syncthreads();
        if (c > 0) stage(t0 - TB);                 // fetch the tile before this one behind this one's work
        // Recompute the tile's states from its saved entry state.
        float hn[SPT];                             // h_{t} of the step the walk starts from (t = TB - 1)
        {
            float h[SPT];
#pragma unroll
            for (int k = 0; k < SPT; k++) h[k] = j0 + k < n ? ckp[(long)c * n + j0 + k] : 0.f;
            Vec<SPT>::put(&S.hs[0][tid][0], h);
#pragma unroll
            for (int t = 0; t < TB; t++)
            {
                float4 q = S.q[ch][t];
                float Bv[SPT];
                Vec<SPT>::get(&S.bc[t][sub][0], Bv);
#pragma unroll
                for (int k = 0; k < SPT; k++) h[k] = fmaf(ex2(q.x * a2[k]), h[k], q.y * Bv[k]);
                if (t < TB - 1) Vec<SPT>::put(&S.hs[t + 1][tid][0], h);
            }
#pragma unroll
            for (int k = 0; k < SPT; k++) hn[k] = h[k];
        }
        // Walk the tile backwards, 8 steps at a time (the group's channel sums are reduce-scattered together, and lane
        // sub of a channel then finishes step tg + sub).
#pragma unroll 1
        for (int tg = TB - TPC; tg >= 0; tg -= TPC)
        {
            float py[TPC], pdt[TPC], pdu[TPC];
#pragma unroll
            for (int s = TPC - 1; s >= 0; s--)
            {
                int t = tg + s;
                float4 q = S.q[ch][t];             // dt, dtu, ut, dy
                float bcv[2 * SPT], hp[SPT], acc = 0.f, ddt = 0.f, dut = 0.f, v[2 * SPT];
                get_bc<SPT>(&S.bc[t][sub][0], bcv);
                Vec<SPT>::get(&S.hs[t][tid][0], hp);
#pragma unroll
                for (int k = 0; k < SPT; k++)
                {
                    float hc = hn[k], Bk = bcv[k], Ck = bcv[SPT + k];
                    acc = fmaf(Ck, hc, acc);
                    v[SPT + k] = q.w * hc;                                       // dL/dC_j
                    dh[k] = fmaf(Ck, q.w, dh[k]);
                    float dA = ex2(q.x * a2[k]), dAhp = dA * hp[k];
                    ddt = fmaf(dh[k], fmaf(an[k], dAhp, Bk * q.z), ddt);
                    ga[k] = fmaf(dh[k] * q.x, dAhp, ga[k]);
                    v[k] = dh[k] * q.y;                                          // dL/dB_j
                    dut = fmaf(dh[k] * q.x, Bk, dut);
                    dh[k] *= dA;
                    hn[k] = hp[k];
                }
                py[s] = acc; pdt[s] = ddt; pdu[s] = dut;
                // dL/dB_t, dL/dC_t: sum over the warp's 4 channels (lane bits 3, 4) by a reduce-scatter; lane keeps the
                // value of index q = b3 * SPT + b4 * SPT / 2 + i, i < SPT / 2 (of v = [dB_j0.., dC_j0..]).
                bool b3 = (lane >> 3) & 1, b4 = (lane >> 4) & 1;
#pragma unroll
                for (int i = 0; i < SPT; i++) { float sd = b3 ? v[i] : v[i + SPT], kp = b3 ? v[i + SPT] : v[i]; v[i] = kp + __shfl_xor_sync(ALL, sd, 8); }
#pragma unroll
                for (int i = 0; i < SPT / 2; i++) { float sd = b4 ? v[i] : v[i + SPT / 2], kp = b4 ? v[i + SPT / 2] : v[i]; v[i] = kp + __shfl_xor_sync(ALL, sd, 16); }
                float* gq = &S.gbc[t][sub][b3 * SPT + b4 * (SPT / 2)];
#pragma unroll
                for (int i = 0; i < SPT / 2; i++) atomicAdd(gq + i, v[i]);
            }
            float ysum = reduce_scatter<TPC>(py, sub), ddt = reduce_scatter<TPC>(pdt, sub), dut = reduce_scatter<TPC>(pdu, sub);
            int t = tg + sub;
            if (t < lt)
            {
                float4 q = S.q[ch][t];
                float2 f = S.zs[ch][t];
                float gdt = ddt * f.y;
                st(gu0 + t0 + t, fmaf(q.w, Dv, dut));
                st(gd0 + t0 + t, gdt);
                if (z) st(gz0 + t0 + t, f.x * fmaf(Dv, q.z, ysum));
                gbv += gdt;
                gDv = fmaf(q.w, q.z, gDv);
            }
        }
        __syncthreads();
        for (int i = tid; i < TB * n; i += THREADS)
        {
            int t = i % TB, j = i / TB;
            if (t >= lt) continue;
            atomicAdd(&gB[gofs + (long)j * l + t0 + t], S.gbc[t][j / SPT][j % SPT]);
            atomicAdd(&gC[gofs + (long)j * l + t0 + t], S.gbc[t][j / SPT][SPT + j % SPT]);
        }
    }
#pragma unroll
    for (int k = 0; k < SPT; k++) if (j0 + k < n) atomicAdd(&gA[(long)di * n + j0 + k], ga[k]);
    // gbv, gDv: summed over the channel's 8 lanes (each finished different steps).
#pragma unroll
    for (int m = 1; m < TPC; m <<= 1) { gbv += __shfl_xor_sync(ALL, gbv, m); gDv += __shfl_xor_sync(ALL, gDv, m); }
    if (sub == 0)
    {
        if (gD) atomicAdd(&gD[di], gDv);
        if (gbias) atomicAdd(&gbias[di], gbv);
    }
}

bool tiled_fits(int d, int n, int g) { return n >= 1 && n <= NMAX && g > 0 && d % g == 0 && (d / g) % CH == 0; }


// Dynamic shared memory (the tiles exceed the 48 KB a block gets without opting in), set once per instantiation.
template <typename K>
size_t smem_for(K kernel, size_t bytes)
{
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    return bytes;
}

template <typename T, int SPT, int FT, int CHF>
int launch_fwd_t(const void* u, const void* delta, const float* A, const void* B, const void* C, const float* D,
    const void* z, const float* bias, int softplus, void* y, float* last, float* ck, int b, int d, int l, int n, int g)
{
    static size_t smem = smem_for(tiled_fwd<T, SPT, FT, CHF>, sizeof(FwdSmem<T, SPT, FT, CHF>));
    int vec = l % 8 == 0 && aligned16(u) && aligned16(delta) && aligned16(B) && aligned16(C) && (!z || aligned16(z)) && aligned16(y);
    tiled_fwd<T, SPT, FT, CHF><<<b * (d / CHF), CHF * FT, smem, 0>>>((const T*)u, (const T*)delta, A, (const T*)B, (const T*)C, D,
        (const T*)z, bias, softplus, (T*)y, last, ck, b, d, l, n, g, vec);
    return (int)cudaGetLastError();
}

template <typename T, int SPT>
int launch_bwd_t(const void* u, const void* delta, const float* A, const void* B, const void* C, const float* D,
    const void* z, const float* bias, int softplus, const float* ck, const void* gy, const float* glast, void* gu,
    void* gdelta, float* gA, float* gB, float* gC, float* gD, void* gz, float* gbias, int b, int d, int l, int n, int g)
{
    static size_t smem = smem_for(tiled_bwd<T, SPT>, sizeof(BwdSmem<T, SPT>));
    int vec = l % 8 == 0 && aligned16(u) && aligned16(delta) && aligned16(B) && aligned16(C) && aligned16(gy) && (!z || aligned16(z));
    tiled_bwd<T, SPT><<<b * (d / CH), THREADS, smem, 0>>>((const T*)u, (const T*)delta, A, (const T*)B, (const T*)C, D,
        (const T*)z, bias, softplus, ck, (const T*)gy, glast, (T*)gu, (T*)gdelta, gA, gB, gC, gD, (T*)gz, gbias, b, d, l, n, g, vec);
    return (int)cudaGetLastError();
}

template <typename T>
int launch_fwd(const void* u, const void* delta, const float* A, const void* B, const void* C, const float* D,
    const void* z, const float* bias, int softplus, void* y, float* last, float* ck, int b, int d, int l, int n, int g)
{
    // n <= 16 (every Mamba-1 model): four threads of four states per channel, 64 channels per block where the group
    // allows. Measured at b 8, d 2048, l 2048 on an H100 with the earlier lane order (device ms, float32 / bfloat16),
    // against this layout's 0.327 / 0.300: 32 channels per block 0.336 / 0.301; two threads of eight states 0.356 /
    // 0.309 (half the warps: latency-bound); two channels per thread, which halves the shared-memory reads of B and C,
    // 0.394 / 0.331 (also half the warps); four channels per thread 0.596 / 0.503. bench/GpuBench/results/
    // fwd-layout-sweep.txt has the sweep.
    if (n > 16) return launch_fwd_t<T, 4, 8, 32>(u, delta, A, B, C, D, z, bias, softplus, y, last, ck, b, d, l, n, g);
    return (d / g) % 64 == 0 ? launch_fwd_t<T, 4, 4, 64>(u, delta, A, B, C, D, z, bias, softplus, y, last, ck, b, d, l, n, g)
                             : launch_fwd_t<T, 4, 4, 32>(u, delta, A, B, C, D, z, bias, softplus, y, last, ck, b, d, l, n, g);
}

template <typename T>
int launch_bwd(const void* u, const void* delta, const float* A, const void* B, const void* C, const float* D,
    const void* z, const float* bias, int softplus, const float* ck, const void* gy, const float* glast, void* gu,
    void* gdelta, float* gA, float* gB, float* gC, float* gD, void* gz, float* gbias, int b, int d, int l, int n, int g)
{
    return n <= 2 * TPC
        ? launch_bwd_t<T, 2>(u, delta, A, B, C, D, z, bias, softplus, ck, gy, glast, gu, gdelta, gA, gB, gC, gD, gz, gbias, b, d, l, n, g)
        : launch_bwd_t<T, 4>(u, delta, A, B, C, D, z, bias, softplus, ck, gy, glast, gu, gdelta, gA, gB, gC, gD, gz, gbias, b, d, l, n, g);
}

}  // namespace

extern "C" {

// Whether the tiled path takes these sizes (n <= 32, the channels of a group a multiple of 32).
int ssm_scan_tiled_fits(int d, int n, int g) { return tiled_fits(d, n, g) ? 1 : 0; }

// Floats of the saved states ck for the backward: (b, d, ceil(l / 16), n).
long ssm_scan_tiled_ck_floats(int b, int d, int l, int n) { return (long)b * d * ((l + TB - 1) / TB) * n; }

// bf16: 0 = float32 activations, 1 = bfloat16. B, C: (b, g, n, l). ck may be null (no backward will follow).
int ssm_scan_tiled_fwd(int bf16, const void* u, const void* delta, const float* A, const void* B, const void* C,
    const float* D, const void* z, const float* bias, int softplus, void* y, float* last, float* ck,
    int b, int d, int l, int n, int g)
{
    if (!tiled_fits(d, n, g)) return -1;
    return bf16 ? launch_fwd<__nv_bfloat16>(u, delta, A, B, C, D, z, bias, softplus, y, last, ck, b, d, l, n, g)
                : launch_fwd<float>(u, delta, A, B, C, D, z, bias, softplus, y, last, ck, b, d, l, n, g);
}

// gB, gC: (b, g, n, l) float32, accumulated (zero them first), like gA, gD and gbias.
int ssm_scan_tiled_bwd(int bf16, const void* u, const void* delta, const float* A, const void* B, const void* C,
    const float* D, const void* z, const float* bias, int softplus, const float* ck, const void* gy, const float* glast,
    void* gu, void* gdelta, float* gA, float* gB, float* gC, float* gD, void* gz, float* gbias,
    int b, int d, int l, int n, int g)
{
    if (!tiled_fits(d, n, g)) return -1;
    return bf16 ? launch_bwd<__nv_bfloat16>(u, delta, A, B, C, D, z, bias, softplus, ck, gy, glast, gu, gdelta, gA, gB, gC, gD, gz, gbias, b, d, l, n, g)
                : launch_bwd<float>(u, delta, A, B, C, D, z, bias, softplus, ck, gy, glast, gu, gdelta, gA, gB, gC, gD, gz, gbias, b, d, l, n, g);
}

}
