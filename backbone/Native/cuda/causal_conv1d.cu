// Fused causal depthwise conv1d + SiLU, forward and backward (mamba_ssm's causal_conv1d_fn with activation "silu"):
//   x, y: (b, c, l) in T (float32 or bfloat16)    w: (c, k) float32    bias: (c) float32 or null    k <= 8
//   a[b,c,t] = bias[c] + sum_{i<k} w[c,i] x[b,c,t-k+1+i]   (x = 0 before t = 0)    y = silu(a) = a sigmoid(a)
// The unfused path (a cuDNN depthwise convolution over l + k - 1 padded outputs, a slice, a copy and a SiLU) reads and
// writes the (b, c, l) activations about four times; here a block loads one row tile (with its k - 1 step halo) into
// shared memory once and each output costs k multiply-adds from it. The backward recomputes a (k multiply-adds)
// instead of storing it: g = dL/dy silu'(a), dL/dx[t] = sum_i w[i] g[t + k - 1 - i], dL/dw[i] = sum_t g[t] x[t-k+1+i],
// dL/dbias = sum_t g[t]; the weight and bias sums are reduced per block and added once per block.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "device_math.cuh"

namespace {

constexpr int CT = 256;          // threads per block
constexpr int EPT = 8;           // steps per thread
constexpr int TILE = CT * EPT;   // steps per block
constexpr int KMAX = 8;          // largest kernel width (mamba_ssm's causal_conv1d takes 2..4)
constexpr unsigned ALL = 0xffffffffu;

using ssm::tof;
using ssm::st;
using ssm::sigmoid_f;

// Rows x[row, t0 - (KMAX - 1) + j] for j < n into s (zero outside [0, l)): consecutive threads, consecutive steps.
template <typename T>
__device__ __forceinline__ void load_row(float* s, const T* xr, int t0, int l, int n)
{
    for (int j = threadIdx.x; j < n; j += CT)
    {
        int t = t0 - (KMAX - 1) + j;
        s[j] = (t >= 0 && t < l) ? tof(xr[t]) : 0.f;
    }
}

// grid: (b c rows, ceil(l / TILE) tiles)
template <typename T>
__global__ void __launch_bounds__(CT) conv_silu_fwd(const T* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ bias, T* __restrict__ y, int c, int l, int k)
{
    __shared__ float sx[TILE + KMAX - 1];          // sx[j] = x[t0 - (KMAX - 1) + j]
    long row = blockIdx.x;
    int ci = (int)(row % c), t0 = blockIdx.y * TILE;
    load_row(sx, x + row * l, t0, l, TILE + KMAX - 1);
    float wr[KMAX];
#pragma unroll
    for (int i = 0; i < KMAX; i++) wr[i] = i < k ? w[(long)ci * k + i] : 0.f;
    float bv = bias ? bias[ci] : 0.f;
    __syncthreads();
    int off = KMAX - k;                            // sx index of x[t - k + 1] for t = t0
    T* yr = y + row * l;
#pragma unroll
    for (int e = 0; e < EPT; e++)
    {
        int j = e * CT + threadIdx.x, t = t0 + j;
        if (t >= l) break;
        float a = bv;
#pragma unroll
        for (int i = 0; i < KMAX; i++) if (i < k) a = fmaf(wr[i], sx[j + off + i], a);
        st(yr + t, a * sigmoid_f(a));
    }
}

template <typename T>
__global__ void __launch_bounds__(CT) conv_silu_bwd(const T* __restrict__ x, const float* __restrict__ w,
    const float* __restrict__ bias, const T* __restrict__ gy, T* __restrict__ gx, float* __restrict__ gw,
    float* __restrict__ gbias, int c, int l, int k)
{
    __shared__ float sx[TILE + 2 * KMAX];          // sx[j] = x[t0 - (KMAX - 1) + j], the tile and a halo on each side
    __shared__ float sg[TILE + KMAX];              // sg[j] = g[t0 + j] (0 past l)
    __shared__ float red[CT / 32][KMAX + 1];
    long row = blockIdx.x;
    int ci = (int)(row % c), t0 = blockIdx.y * TILE;
    load_row(sx, x + row * l, t0, l, TILE + 2 * (KMAX - 1));
    float wr[KMAX];
#pragma unroll
    for (int i = 0; i < KMAX; i++) wr[i] = i < k ? w[(long)ci * k + i] : 0.f;
    float bv = bias ? bias[ci] : 0.f;
    int off = KMAX - k;
    const T* gyr = gy + row * l;
    __syncthreads();
    // g over the tile and the k - 1 steps after it (the outputs whose windows reach into this tile).
    for (int j = threadIdx.x; j < TILE + KMAX - 1; j += CT)
    {
        int t = t0 + j;
        float g = 0.f;
        if (t < l)
        {
            float a = bv;
#pragma unroll
            for (int i = 0; i < KMAX; i++) if (i < k) a = fmaf(wr[i], sx[j + off + i], a);
            float s = sigmoid_f(a);
            g = tof(gyr[t]) * s * (1.f + a * (1.f - s));
        }
        sg[j] = g;
    }
    __syncthreads();
    float pw[KMAX], pb = 0.f;
#pragma unroll
    for (int i = 0; i < KMAX; i++) pw[i] = 0.f;
    T* gxr = gx + row * l;
#pragma unroll
    for (int e = 0; e < EPT; e++)
    {
        int j = e * CT + threadIdx.x, t = t0 + j;
        if (t >= l) break;
        // dL/dx[t] = sum_i w[i] g[t + k - 1 - i]; sg index j + k - 1 - i.
        float v = 0.f;
#pragma unroll
        for (int i = 0; i < KMAX; i++) if (i < k) v = fmaf(wr[i], sg[j + k - 1 - i], v);
        st(gxr + t, v);
        float g = sg[j];
        pb += g;
#pragma unroll
        for (int i = 0; i < KMAX; i++) if (i < k) pw[i] = fmaf(g, sx[j + off + i], pw[i]);
    }
    // Block sums of dL/dw and dL/dbias: warp shuffles, then one row per warp in shared memory.
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1)
    {
        pb += __shfl_xor_sync(ALL, pb, m);
#pragma unroll
        for (int i = 0; i < KMAX; i++) pw[i] += __shfl_xor_sync(ALL, pw[i], m);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0)
    {
#pragma unroll
        for (int i = 0; i < KMAX; i++) red[warp][i] = pw[i];
        red[warp][KMAX] = pb;
    }
    __syncthreads();
    if (threadIdx.x <= KMAX)
    {
        int i = threadIdx.x;
        float s = 0.f;
        for (int q = 0; q < CT / 32; q++) s += red[q][i];
        if (i < k) atomicAdd(&gw[(long)ci * k + i], s);
        else if (i == KMAX && gbias) atomicAdd(&gbias[ci], s);
    }
}

template <typename T>
int launch_fwd(const void* x, const float* w, const float* bias, void* y, int b, int c, int l, int k)
{
    dim3 grid((unsigned)((long)b * c), (unsigned)((l + TILE - 1) / TILE));
    conv_silu_fwd<T><<<grid, CT, 0, 0>>>((const T*)x, w, bias, (T*)y, c, l, k);
    return (int)cudaGetLastError();
}

template <typename T>
int launch_bwd(const void* x, const float* w, const float* bias, const void* gy, void* gx, float* gw, float* gbias,
    int b, int c, int l, int k)
{
    dim3 grid((unsigned)((long)b * c), (unsigned)((l + TILE - 1) / TILE));
    conv_silu_bwd<T><<<grid, CT, 0, 0>>>((const T*)x, w, bias, (const T*)gy, (T*)gx, gw, gbias, c, l, k);
    return (int)cudaGetLastError();
}

bool fits(int b, int c, int l, int k) { return b > 0 && c > 0 && l > 0 && k >= 1 && k <= KMAX && (l + TILE - 1) / TILE <= 65535; }

}  // namespace

extern "C" {

// Whether the fused kernel takes this kernel width (1..8).
int ssm_conv_silu_fits(int k) { return k >= 1 && k <= KMAX ? 1 : 0; }

// bf16: 0 = float32 x and y, 1 = bfloat16. Returns 0, -1 for sizes it does not take, or a CUDA error.
int ssm_conv_silu_fwd(int bf16, const void* x, const float* w, const float* bias, void* y, int b, int c, int l, int k)
{
    if (!fits(b, c, l, k)) return -1;
    return bf16 ? launch_fwd<__nv_bfloat16>(x, w, bias, y, b, c, l, k) : launch_fwd<float>(x, w, bias, y, b, c, l, k);
}

// gx in x's dtype (written); gw (c, k) and gbias (c) float32, accumulated (zero them first).
int ssm_conv_silu_bwd(int bf16, const void* x, const float* w, const float* bias, const void* gy, void* gx, float* gw,
    float* gbias, int b, int c, int l, int k)
{
    if (!fits(b, c, l, k)) return -1;
    return bf16 ? launch_bwd<__nv_bfloat16>(x, w, bias, gy, gx, gw, gbias, b, c, l, k)
                : launch_bwd<float>(x, w, bias, gy, gx, gw, gbias, b, c, l, k);
}

}
