// The compute floor of the selective-scan forward on this GPU: how long the arithmetic that any fused forward must do
// takes with no device memory traffic at all, beside the bandwidth floor that issue 8's "within 2x" target is set
// against. Standalone (no .NET, no PyTorch):
//     nvcc -O3 -arch=sm_90 -o /tmp/scan_floor bench/GpuBench/scan_floor.cu && /tmp/scan_floor
// Shape: b 8, d 2048, l 2048, n 16 (b d l = 33.5 M channel-steps, 537 M state updates), bfloat16 activations.
//
// Why this exists. The bfloat16 forward reads and writes half the bytes of the float32 one but does the same float32
// arithmetic: per (channel, step) a softplus (Δ) and a SiLU (the gate), and per state one exponential exp(Δ A) and four
// FMA-pipe instructions (Δ A, Δ u B, the state update, the C contraction; Hopper has no packed float32 FMA). mamba_ssm
// does the same in float32 (csrc/selective_scan/selective_scan_fwd_kernel.cuh). So the state math is a floor of its own,
// and this program measures it: every kernel below keeps its inputs in shared memory (a 32-step table that the loop
// cycles through, read as the fused kernel reads its staging: one 16-byte load per step for (Δ, u, z) and broadcast
// 16-byte loads for B_t, C_t), so it moves no device memory beyond one float per thread at the end.
// Kernels (one thread per channel, all n states in registers; the work is split over 4x or 16x the channels with
// l / 4 or l / 16 steps, so there are enough warps to hide every latency: a throughput floor, not a schedule; each row
// is the best of 12 arrangements, see sweep()):
//   ex2 only      the n exponentials per channel-step and nothing else (the special-function pipe's rate)
//   state math    the n state updates per channel-step: 2^(Δ a) (FMUL + MUFU.EX2), h = dA h + (Δu) B (FMUL + FFMA),
//                 y += C h (FFMA), the B, C loads
//   + activations as the fused kernel's bfloat16 path: softplus and SiLU per channel-step (one MUFU each and a
//                 polynomial), D u and the gate
// The bandwidth floor uses the device-to-device copy rate measured here (cudaMemcpy of 1 GiB; bytes read + written).
#include <cuda_runtime.h>
#include "../../backbone/Native/cuda/device_math.cuh"   // ex2 and the bfloat16 path's activation forms
#include <algorithm>
#include <cstdio>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

namespace {

constexpr int N = 16;
using ssm::LOG2E;

using ssm::ex2;
using ssm::softplus_poly;
using ssm::silu_poly;

// 2^x for x <= 0 on the FMA and integer pipes instead of the special-function pipe: x = j + f with j an integer
// (rounded by the 1.5 2^23 shifter) and f in [-1/2, 1/2]; 2^f by its degree-6 Taylor polynomial (relative error
// 1.2e-7, about ex2.approx's); j goes into the exponent field (the shifter's low bits hold j, and its own bits
// vanish in the shift by 23). 12 instructions against one MUFU: worth it only while the special-function pipe is
// the bottleneck and issue slots are free.
__device__ __forceinline__ float ex2_fma(float x)
{
    x = fmaxf(x, -125.f);
    float t = x + 12582912.f;
    float f = x - (t - 12582912.f);
    float p = 1.540353040e-04f;
    p = fmaf(p, f, 1.333355815e-03f); p = fmaf(p, f, 9.618129108e-03f); p = fmaf(p, f, 5.550410866e-02f);
    p = fmaf(p, f, 2.402265070e-01f); p = fmaf(p, f, 6.931471806e-01f); p = fmaf(p, f, 1.f);
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

// The bfloat16 path's activations with their exponential on the FMA pipe (AF below).
struct Ex2Fma { __device__ __forceinline__ float operator()(float x) const { return ex2_fma(x); } };

// MODE 0: ex2 only; 1: state math; 2: state math + activations. M: how many of the n exponentials go to ex2_fma;
// AF: the activations' exponentials too. BLK threads per block, the step loop unrolled by UNR.
template <int MODE, int M, bool AF, int BLK, int UNR>
__global__ void __launch_bounds__(BLK) floor_kernel(const float* __restrict__ A, float* __restrict__ out, int l)
{
    __shared__ __align__(16) float4 e[32];          // (raw Δ, u, z, D) per step
    __shared__ __align__(16) float bc[32][2 * N];   // B_t, C_t per step
    int tid = threadIdx.x;
    for (int i = tid; i < 32; i += blockDim.x)
        e[i] = make_float4(0.05f * (i % 9) - 0.2f, 0.1f * (i % 5) - 0.2f, 0.3f * (i % 7) - 0.9f, 1.0f);
    for (int i = tid; i < 32 * 2 * N; i += blockDim.x) (&bc[0][0])[i] = 0.1f * ((i * 37) % 11) - 0.5f;
    __syncthreads();
    int c = blockIdx.x * blockDim.x + tid;
    float a[N], h[N], y = 0.f;
#pragma unroll
    for (int k = 0; k < N; k++) { a[k] = A[(c & 7) * N + k] * LOG2E; h[k] = 0.f; }
#pragma unroll (UNR)
    for (int t = 0; t < l; t++)
    {
        float4 v = e[t & 31];
        if (MODE == 0)
        {
            // Independent exponentials (summed so none is dead code); the adds ride along on the FMA pipe.
#pragma unroll
            for (int k = 0; k < N; k++) h[k] += ex2(v.x * a[k]);
            continue;
        }
        float dt = MODE == 2 ? (AF ? softplus_poly(v.x, Ex2Fma{}) : softplus_poly(v.x)) : v.x, du = dt * v.y, acc = 0.f;
        float b[2 * N];
#pragma unroll
        for (int q = 0; q < 2 * N; q += 4)
        {
            float4 w = *reinterpret_cast<const float4*>(&bc[t & 31][q]);
            b[q] = w.x; b[q + 1] = w.y; b[q + 2] = w.z; b[q + 3] = w.w;
        }
#pragma unroll
        for (int k = 0; k < N; k++)
        {
            h[k] = fmaf(k < M ? ex2_fma(dt * a[k]) : ex2(dt * a[k]), h[k], du * b[k]);
            acc = fmaf(b[N + k], h[k], acc);
        }
        y += MODE == 2 ? (acc + v.w * v.y) * (AF ? silu_poly(v.z, Ex2Fma{}) : silu_poly(v.z)) : acc;
    }
#pragma unroll
    for (int k = 0; k < N; k++) y += h[k];
    out[c] = y;
}

template <typename F>
float median_ms(F fn, int reps = 20, int rounds = 5)
{
    cudaEvent_t s, e;
    cudaEventCreate(&s); cudaEventCreate(&e);
    fn(); fn(); cudaDeviceSynchronize();
    std::vector<float> ts;
    for (int r = 0; r < rounds; r++)
    {
        cudaEventRecord(s);
        for (int i = 0; i < reps; i++) fn();
        cudaEventRecord(e); cudaEventSynchronize(e);
        float ms; cudaEventElapsedTime(&ms, s, e); ts.push_back(ms / reps);
    }
    cudaEventDestroy(s); cudaEventDestroy(e);
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

// max over x = -40 i / 2^18 of |ex2_fma(x) - 2^x| / 2^x, 2^x from exp2 in double precision.
__global__ void ex2_check(float* err)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float x = -40.f * (float)i / (float)(1 << 18);
    double r = exp2((double)x);
    float e = (float)(fabs((double)ex2_fma(x) - r) / r);
    atomicMax(reinterpret_cast<int*>(err), __float_as_int(e));   // non-negative floats order as their bits
}

// The SM clock while busy: clock64 cycles over globaltimer nanoseconds of one long-running thread.
__global__ void clock_kernel(double* ghz)
{
    long long c0 = clock64(), g0, g1;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g0));
    float x = 1.f;
    for (int i = 0; i < (1 << 22); i++) x = fmaf(x, 0.9999f, 1e-4f);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g1));
    long long c1 = clock64();
    if (x != 12345.f) *ghz = (double)(c1 - c0) / (double)(g1 - g0);
}

// One arrangement: `channels` threads of `steps` steps each.
template <int MODE, int M, bool AF, int BLK, int UNR>
float time_one(const float* A, float* out, long channels, int steps)
{
    return median_ms([&] { floor_kernel<MODE, M, AF, BLK, UNR><<<(int)(channels / BLK), BLK>>>(A, out, steps); });
}

struct Best { float ms; int blk, unr, split; };

// The fastest arrangement of the same channel-steps: the b d channels split into `split` pieces of l / split steps
// (more, shorter chains: more warps to hide latency), blocks of 128, 256 or 512 threads, the step loop unrolled by 2
// or 4. Which one wins depends on the compiler's schedule; the floor is the best of them.
template <int MODE, int M, bool AF>
Best sweep(const float* A, float* out, long bd, long l, std::vector<int> splits)
{
    Best best{1e30f, 0, 0, 0};
    for (int s : splits)
    {
        long ch = bd * s;
        int st = (int)(l / s);
        auto take = [&](float ms, int blk, int unr) { if (ms < best.ms) best = { ms, blk, unr, s }; };
        take(time_one<MODE, M, AF, 128, 2>(A, out, ch, st), 128, 2);
        take(time_one<MODE, M, AF, 128, 4>(A, out, ch, st), 128, 4);
        take(time_one<MODE, M, AF, 256, 2>(A, out, ch, st), 256, 2);
        take(time_one<MODE, M, AF, 256, 4>(A, out, ch, st), 256, 4);
        take(time_one<MODE, M, AF, 512, 2>(A, out, ch, st), 512, 2);
        take(time_one<MODE, M, AF, 512, 4>(A, out, ch, st), 512, 4);
    }
    return best;
}

}  // namespace

int main()
{
    const long b = 8, d = 2048, l = 2048, n = N;
    const long elems = b * d * l;                       // channel-steps
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));

    // Bandwidth: device-to-device copy of 1 GiB.
    const size_t cb = 1ull << 30;
    void *src, *dst;
    CK(cudaMalloc(&src, cb)); CK(cudaMalloc(&dst, cb));
    CK(cudaMemset(src, 1, cb));
    float copy_ms = median_ms([&] { cudaMemcpyAsync(dst, src, cb, cudaMemcpyDeviceToDevice); }, 10, 5);
    double bw = 2.0 * cb / (copy_ms * 1e-3);            // bytes/s, read + write
    CK(cudaFree(src)); CK(cudaFree(dst));

    // Bytes the fused bfloat16 forward must move: u, Δ, z read and y written (2 bytes each), B and C read.
    double bytes16 = 4.0 * elems * 2 + 2.0 * b * n * l * 2;
    double bytes32 = 4.0 * elems * 4 + 2.0 * b * n * l * 4;
    double floor16 = bytes16 / bw * 1e3, floor32 = bytes32 / bw * 1e3;

    // Compute kernels: the same b d l channel-steps as the shape, arranged as in sweep().
    const long bd = b * d;
    float *A, *out;
    double* ghz;
    CK(cudaMalloc(&A, 8 * N * sizeof(float))); CK(cudaMalloc(&out, 16 * bd * sizeof(float))); CK(cudaMalloc(&ghz, sizeof(double)));
    std::vector<float> hA(8 * N);
    for (int i = 0; i < 8 * N; i++) hA[i] = -(1.f + i % N) * (1.f + 0.1f * (i / N));   // S4D-real-like: A_k = -(k + 1) scaled
    CK(cudaMemcpy(A, hA.data(), hA.size() * sizeof(float), cudaMemcpyHostToDevice));
    const std::vector<int> splits = { 4, 16 };
    Best t0 = sweep<0, 0, false>(A, out, bd, l, splits);
    Best t1 = sweep<1, 0, false>(A, out, bd, l, splits);
    Best t2 = sweep<2, 0, false>(A, out, bd, l, splits);
    // Exponentials on the FMA pipe instead (the special-function pipe is the busiest unit of the kernels above):
    // the activations', or 2 of the n states'.
    Best t2af = sweep<2, 0, true>(A, out, bd, l, splits);
    Best t2m2 = sweep<2, 2, false>(A, out, bd, l, splits);
    // The real shape's parallelism: one thread per channel over all l steps; too few warps, latency shows.
    Best t2r = sweep<2, 0, false>(A, out, bd, l, { 1 });
    // ex2_fma against ex2.approx on a grid of x in [-40, 0]: the largest relative difference.
    float* err;
    CK(cudaMalloc(&err, sizeof(float)));
    CK(cudaMemset(err, 0, sizeof(float)));
    ex2_check<<<1024, 256>>>(err);
    float maxrel = 0;
    CK(cudaMemcpy(&maxrel, err, sizeof(float), cudaMemcpyDeviceToHost));
    CK(cudaGetLastError());
    clock_kernel<<<1, 1>>>(ghz);
    double clk = 0;
    CK(cudaMemcpy(&clk, ghz, sizeof(double), cudaMemcpyDeviceToHost));
    std::vector<float> ho(bd);
    CK(cudaMemcpy(ho.data(), out, bd * sizeof(float), cudaMemcpyDeviceToHost));
    double chk = 0; for (float v : ho) chk += v;

    double exps = (double)elems * n;
    std::printf("# scan_floor: the selective-scan forward's compute floor beside its bandwidth floor\n");
    std::printf("# device: %s, %d SMs; SM clock while busy (clock64 / globaltimer): %.2f GHz\n", prop.name, prop.multiProcessorCount, clk);
    std::printf("# shape: b %ld, d %ld, l %ld, n %ld: %.1f M channel-steps, %.0f M exponentials; checksum %.6g\n",
        b, d, l, n, elems / 1e6, exps / 1e6, chk);
    std::printf("# device ms = CUDA events around 20 back-to-back launches / 20, median of 5; each row the best of its arrangements\n");
    std::printf("%-58s %10s %s\n", "quantity", "ms", "note");
    std::printf("%-58s %10.4f %.2f TB/s (read + write)\n", "device copy of 1 GiB", copy_ms, bw / 1e12);
    std::printf("%-58s %10.4f %.1f MB\n", "bandwidth floor, float32 forward", floor32, bytes32 / 1e6);
    std::printf("%-58s %10.4f %.1f MB\n", "bandwidth floor, bfloat16 forward", floor16, bytes16 / 1e6);
    std::printf("%-58s %10.4f target: 2x the bfloat16 floor\n", "target, bfloat16 forward", 2 * floor16);
    double target = 2 * floor16;
    auto row = [&](const char* what, Best r)
    {
        std::printf("%-58s %10.4f %4.0f%% of the target (blocks of %d, unroll %d, channels x %d)\n", what, r.ms,
            100.0 * r.ms / target, r.blk, r.unr, r.split);
    };
    row("ex2 only (n per channel-step), no memory", t0);
    std::printf("%-58s %10.2f of 16 per SM per clock\n", "  ex2 rate", exps / (t0.ms * 1e-3) / prop.multiProcessorCount / (clk * 1e9));
    row("state math (n updates per channel-step), no memory", t1);
    row("state math + activations (bf16 path's), no memory", t2);
    row("  the activations' exponentials on the FMA pipe", t2af);
    row("  2 of the n state exponentials on the FMA pipe", t2m2);
    row("  one thread per channel over all l steps", t2r);
    std::printf("# ex2_fma vs 2^x (float64) on [-40, 0]: max relative error %.2e\n", maxrel);
    return 0;
}
