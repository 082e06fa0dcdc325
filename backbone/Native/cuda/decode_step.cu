// One decode step of a Mamba-1 LM (mamba_simple.py `step`, HF MambaForCausalLM with a cache) in a handful of fused
// kernels, so a token costs ~6 launches per layer instead of the ~30 small tensor ops of the op-by-op step, and the
// whole step can be captured once into a CUDA graph and replayed per token (one launch per token).
// Per token, for every sequence b of the batch (B <= any; matrices are read once per 16 sequences):
//   r  = embedding[ids]                                                    residual stream, float32
//   per layer:  h = rmsnorm(r += previous mixer output)                    (ResidualBlock: pre-norm, fp32 residual)
//               [x | z] = in_proj h;  x = silu(conv_step(x)) (state shift) (causal depthwise conv, d_conv taps)
//               [dt | B | C] = x_proj x;  Δ = softplus(dt_proj dt + bias)  (selective parameters)
//               s = exp(Δ A) s + Δ B x;  y = (C·s + D x) silu(z)           (selective_state_update)
//               out = out_proj y
//   logits = lm_head rmsnorm_f(r + out)
// Matrices are float32 or bfloat16 (`bf16`); activations, states and every sum are float32. A = -exp(A_log) is
// precomputed by the caller, as are float32 copies of the small vectors.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

// Pointer slots of one layer in the `layers` array (host memory, L_COUNT per layer, all device pointers).
enum { L_NORM, L_IN_W, L_IN_B, L_CONV_W, L_CONV_B, L_X_W, L_DT_W, L_DT_B, L_A, L_D, L_OUT_W, L_OUT_B,
       L_CONV_STATE, L_SSM_STATE, L_COUNT };

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float silu_f(float v) { return v / (1.f + expf(-v)); }
__device__ __forceinline__ float softplus_f(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }

// Four consecutive weights as floats (the caller guarantees 4-element alignment).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p)
{
    uint2 raw = *reinterpret_cast<const uint2*>(p);
    __nv_bfloat162 lo = *reinterpret_cast<__nv_bfloat162*>(&raw.x), hi = *reinterpret_cast<__nv_bfloat162*>(&raw.y);
    float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
    return make_float4(a.x, a.y, b.x, b.y);
}

__global__ void embed(const void* emb, int bf16, const int64_t* ids, float* r, int dm)
{
    long row = ids[blockIdx.x];
    for (int i = threadIdx.x; i < dm; i += blockDim.x)
        r[(long)blockIdx.x * dm + i] = bf16 ? to_f(((const __nv_bfloat16*)emb)[row * dm + i]) : ((const float*)emb)[row * dm + i];
}

// r += add (when given); out = w * r / sqrt(mean(r^2) + eps). One block per sequence.
__global__ void add_rmsnorm(float* r, const float* add, const float* w, float* out, int dm, float eps)
{
    __shared__ float part[32];
    float* rr = r + (long)blockIdx.x * dm;
    const float* aa = add ? add + (long)blockIdx.x * dm : nullptr;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dm; i += blockDim.x)
    {
        float v = rr[i];
        if (aa) { v += aa[i]; rr[i] = v; }
        ss += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32)
    {
        float v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    float scale = rsqrtf(part[0] / dm + eps);
    for (int i = threadIdx.x; i < dm; i += blockDim.x) out[(long)blockIdx.x * dm + i] = w[i] * (rr[i] * scale);
}

// y (B, O) = x (B, I) W^T (+ bias): one warp per output row reads that row of W once for all MB sequences.
template <typename W, int MB>
__global__ void gemv(const W* __restrict__ w, const float* __restrict__ x, const float* __restrict__ bias,
    float* __restrict__ y, int B, int O, int I)
{
    int o = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (o >= O) return;
    const W* wr = w + (long)o * I;
    float acc[MB];
#pragma unroll
    for (int b = 0; b < MB; b++) acc[b] = 0.f;
    if ((I & 3) == 0)
    {
        for (int i = lane * 4; i < I; i += 128)
        {
            float4 wv = load4(wr + i);
#pragma unroll
            for (int b = 0; b < MB; b++)
                if (b < B)
                {
                    float4 xv = *reinterpret_cast<const float4*>(x + (long)b * I + i);
                    acc[b] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
                }
        }
    }
    else
    {
        for (int i = lane; i < I; i += 32)
        {
            float wv = to_f(wr[i]);
#pragma unroll
            for (int b = 0; b < MB; b++) if (b < B) acc[b] += wv * x[(long)b * I + i];
        }
    }
#pragma unroll
    for (int b = 0; b < MB; b++)
    {
        float v = acc[b];
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0 && b < B) y[(long)b * O + o] = v + (bias ? bias[o] : 0.f);
    }
}

// Causal depthwise conv step: the state (B, dIn, k) shifts left and takes x; xc = silu(conv(state) + bias).
__global__ void conv_step(const float* __restrict__ xz, float* __restrict__ state, const float* __restrict__ cw,
    const float* __restrict__ cb, float* __restrict__ xc, int B, int dIn, int k)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * dIn) return;
    int b = (int)(i / dIn), c = (int)(i % dIn);
    float* s = state + i * k;
    float x = xz[(long)b * 2 * dIn + c], acc = cb ? cb[c] : 0.f;
    for (int j = 0; j < k - 1; j++) { s[j] = s[j + 1]; acc += s[j] * cw[c * k + j]; }
    s[k - 1] = x;
    acc += x * cw[c * k + k - 1];
    xc[i] = silu_f(acc);
}

// Δ = softplus(dt_proj dt + bias); s = exp(Δ A) s + Δ B x; y = (C·s + D x) silu(z). One thread per (b, channel).
template <typename W>
__global__ void ssm_step(const float* __restrict__ xc, const float* __restrict__ xdbl, const float* __restrict__ xz,
    const W* __restrict__ dtw, const float* __restrict__ dtb, const float* __restrict__ A, const float* __restrict__ D,
    float* __restrict__ state, float* __restrict__ y, int B, int dIn, int n, int r)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * dIn) return;
    int b = (int)(i / dIn), c = (int)(i % dIn);
    const float* p = xdbl + (long)b * (r + 2 * n);
    float dt = dtb[c];
    for (int j = 0; j < r; j++) dt += to_f(dtw[(long)c * r + j]) * p[j];
    dt = softplus_f(dt);
    float x = xc[i], acc = 0.f, dtx = dt * x;
    float* s = state + i * n;
    const float* Ar = A + (long)c * n;
    for (int j = 0; j < n; j++)
    {
        float h = expf(dt * Ar[j]) * s[j] + dtx * p[r + j];
        s[j] = h;
        acc += p[r + n + j] * h;
    }
    float zt = xz[(long)b * 2 * dIn + dIn + c];
    y[i] = (acc + D[c] * x) * silu_f(zt);
}

struct Dims { int n_layers, dm, dIn, n, r, k, V, bf16; float eps; };

template <typename W>
void launch_gemv(const void* w, const float* x, const float* bias, float* y, int B, int O, int I, cudaStream_t s)
{
    const int threads = 256, rows = threads / 32;
    int blocks = (O + rows - 1) / rows;
    for (int b0 = 0; b0 < B; b0 += 16)
    {
        int nb = B - b0 < 16 ? B - b0 : 16;
        const float* xb = x + (long)b0 * I;
        float* yb = y + (long)b0 * O;
        if (nb == 1) gemv<W, 1><<<blocks, threads, 0, s>>>((const W*)w, xb, bias, yb, nb, O, I);
        else if (nb <= 4) gemv<W, 4><<<blocks, threads, 0, s>>>((const W*)w, xb, bias, yb, nb, O, I);
        else gemv<W, 16><<<blocks, threads, 0, s>>>((const W*)w, xb, bias, yb, nb, O, I);
    }
}

void launch_proj(int bf16, const void* w, const float* x, const float* bias, float* y, int B, int O, int I, cudaStream_t s)
{
    if (bf16) launch_gemv<__nv_bfloat16>(w, x, bias, y, B, O, I, s);
    else launch_gemv<float>(w, x, bias, y, B, O, I, s);
}

long align4(long v) { return (v + 3) / 4 * 4; }

// The whole step on stream s; returns the first launch error.
int enqueue_step(const void* const* L, const Dims& m, const void* emb, const float* norm_f, const void* head,
    const int64_t* ids, int B, float* logits, float* work, cudaStream_t s)
{
    int dm = m.dm, dIn = m.dIn, dbc = m.r + 2 * m.n;
    float* r = work;                                       // residual (B dm)
    float* add = r + align4((long)B * dm);                 // mixer output (B dm)
    float* hid = add + align4((long)B * dm);               // normalised (B dm)
    float* xz = hid + align4((long)B * dm);                // (B 2dIn)
    float* xc = xz + align4((long)B * 2 * dIn);            // (B dIn)
    float* xdbl = xc + align4((long)B * dIn);              // (B r+2n)
    float* y = xdbl + align4((long)B * dbc);               // (B dIn)
    const int nt = 256;
    int eb = (int)(((long)B * dIn + nt - 1) / nt);
    embed<<<B, nt, 0, s>>>(emb, m.bf16, ids, r, dm);
    for (int li = 0; li < m.n_layers; li++)
    {
        const void* const* P = L + (long)li * L_COUNT;
        add_rmsnorm<<<B, nt, 0, s>>>(r, li == 0 ? nullptr : add, (const float*)P[L_NORM], hid, dm, m.eps);
        launch_proj(m.bf16, P[L_IN_W], hid, (const float*)P[L_IN_B], xz, B, 2 * dIn, dm, s);
        conv_step<<<eb, nt, 0, s>>>(xz, (float*)P[L_CONV_STATE], (const float*)P[L_CONV_W], (const float*)P[L_CONV_B], xc, B, dIn, m.k);
        launch_proj(m.bf16, P[L_X_W], xc, nullptr, xdbl, B, dbc, dIn, s);
        if (m.bf16)
            ssm_step<__nv_bfloat16><<<eb, nt, 0, s>>>(xc, xdbl, xz, (const __nv_bfloat16*)P[L_DT_W], (const float*)P[L_DT_B],
                (const float*)P[L_A], (const float*)P[L_D], (float*)P[L_SSM_STATE], y, B, dIn, m.n, m.r);
        else
            ssm_step<float><<<eb, nt, 0, s>>>(xc, xdbl, xz, (const float*)P[L_DT_W], (const float*)P[L_DT_B],
                (const float*)P[L_A], (const float*)P[L_D], (float*)P[L_SSM_STATE], y, B, dIn, m.n, m.r);
        launch_proj(m.bf16, P[L_OUT_W], y, (const float*)P[L_OUT_B], add, B, dm, dIn, s);
    }
    add_rmsnorm<<<B, nt, 0, s>>>(r, m.n_layers > 0 ? add : nullptr, norm_f, hid, dm, m.eps);
    launch_proj(m.bf16, head, hid, nullptr, logits, B, m.V, dm, s);
    return (int)cudaGetLastError();
}

struct Graph { cudaStream_t stream; cudaGraph_t graph; cudaGraphExec_t exec; };

}  // namespace

extern "C" {

// Floats of the step's workspace for a batch of B.
long ssm_decode_work_floats(int B, int dm, int dIn, int n, int r)
{
    return 3 * align4((long)B * dm) + align4((long)B * 2 * dIn) + 2 * align4((long)B * dIn) + align4((long)B * (r + 2 * n));
}

// One step, launched on the legacy default stream (ordered with libtorch's own work).
int ssm_decode_step(const void* const* layers, int n_layers, int dm, int dIn, int n, int r, int k, int V, int bf16,
    float eps, const void* emb, const float* norm_f, const void* head, const int64_t* ids, int B, float* logits, float* work)
{
    Dims m{n_layers, dm, dIn, n, r, k, V, bf16, eps};
    return enqueue_step(layers, m, emb, norm_f, head, ids, B, logits, work, 0);
}

// Captures the step with these exact buffers into a CUDA graph on a blocking stream (ordered with the legacy default
// stream both ways, so no extra synchronisation with libtorch). Returns a handle, or null with *err set.
void* ssm_decode_graph_create(const void* const* layers, int n_layers, int dm, int dIn, int n, int r, int k, int V,
    int bf16, float eps, const void* emb, const float* norm_f, const void* head, const int64_t* ids, int B,
    float* logits, float* work, int* err)
{
    Dims m{n_layers, dm, dIn, n, r, k, V, bf16, eps};
    Graph* g = new Graph{};
    int e = (int)cudaStreamCreate(&g->stream);
    if (e == 0) e = (int)cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeRelaxed);
    if (e == 0)
    {
        int le = enqueue_step(layers, m, emb, norm_f, head, ids, B, logits, work, g->stream);
        e = (int)cudaStreamEndCapture(g->stream, &g->graph);
        if (e == 0) e = le;
    }
    if (e == 0) e = (int)cudaGraphInstantiate(&g->exec, g->graph, 0);
    if (e != 0)
    {
        if (g->graph) cudaGraphDestroy(g->graph);
        if (g->stream) cudaStreamDestroy(g->stream);
        delete g;
        cudaGetLastError();
        *err = e;
        return nullptr;
    }
    *err = 0;
    return g;
}

int ssm_decode_graph_launch(void* handle)
{
    Graph* g = (Graph*)handle;
    return (int)cudaGraphLaunch(g->exec, g->stream);
}

void ssm_decode_graph_destroy(void* handle)
{
    Graph* g = (Graph*)handle;
    if (!g) return;
    cudaStreamSynchronize(g->stream);
    cudaGraphExecDestroy(g->exec);
    cudaGraphDestroy(g->graph);
    cudaStreamDestroy(g->stream);
    delete g;
}

// Used memory of the current device (bytes): total - free, for benchmarks' peak reporting.
long ssm_cuda_mem_used()
{
    size_t freeB = 0, total = 0;
    if (cudaMemGetInfo(&freeB, &total) != cudaSuccess) return -1;
    return (long)(total - freeB);
}

// GPU time of the work enqueued on the legacy default stream (the one libtorch and these kernels use) between
// ssm_timer_begin and ssm_timer_end, by CUDA events: the benchmarks report it beside the host's wall time, which also
// counts launch overhead. ssm_timer_end waits for the work, frees both events and returns 0 or a CUDA error.
int ssm_timer_begin(void** start, void** stop)
{
    cudaEvent_t a, b;
    cudaError_t e = cudaEventCreate(&a);
    if (e != cudaSuccess) return (int)e;
    if ((e = cudaEventCreate(&b)) != cudaSuccess) { cudaEventDestroy(a); return (int)e; }
    *start = a;
    *stop = b;
    return (int)cudaEventRecord(a, 0);
}

int ssm_timer_end(void* start, void* stop, float* ms)
{
    cudaEvent_t a = (cudaEvent_t)start, b = (cudaEvent_t)stop;
    cudaError_t e = cudaEventRecord(b, 0);
    if (e == cudaSuccess) e = cudaEventSynchronize(b);
    if (e == cudaSuccess) e = cudaEventElapsedTime(ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return (int)e;
}

}
