// Fused SSD chunk scan, the diagonal blocks (Mamba-2; "Transformers are SSMs" section 6, step 1 of Listing 1; the
// intra-chunk half of mamba_ssm's _chunk_scan_fwd), forward only. Per (batch, chunk, head):
//   Y[l, :] = sum_{s <= l} CB[l, s] exp(Acs[l] - Acs[s]) X[s, :]
// with CB = C B^T of the chunk (shared by the heads of a group), Acs the within-chunk cumulative sum of dt A and
// X = dt x. Layouts (float32, contiguous; h heads in g groups, head i reads group i / (h / g)):
//   CB (b, g, c, Q, Q)    Acs (b, h, c, Q)    X, Y (b, c, Q, h, p)
//
// Why a kernel. The tensor-op path (Scans/Ssd.cs) forms the decay matrix exp(Acs[l] - Acs[s]) and the weights
// CB exp(...) for every (batch, head, chunk) in device memory: at b 8, l 8192, 32 heads, Q 256 that is 2.1 GB per
// matrix in float32, written and read several times, before one batched product. Here a block computes a 64 x 64 tile
// of Y (64 steps of the chunk x 64 head channels) as a causal matrix product whose left factor is formed in shared
// memory 32 steps at a time (weight = CB exp(...), zero above the diagonal, so tiles past the diagonal are skipped);
// nothing of size Q x Q per head leaves the chip. 64 threads, each an 8 x 8 register tile of Y: a step s costs a
// thread four 16-byte shared loads for 64 FMAs; the next tile's CB and X arrive by cp.async behind the products. The lanes of a quarter-warp (one row group, eight column groups) read
// one address of the weights and 128 contiguous bytes of X, the cheapest patterns of 16-byte shared loads.
// The backward stays with the tensor-op path (autograd): the caller uses this kernel only without a gradient to record.
#include <cuda_runtime.h>

namespace {

constexpr int RT = 64;   // rows (steps of the chunk) per block
constexpr int PT = 64;   // head channels per block
constexpr int KS = 32;   // steps s per shared-memory tile
constexpr int NT = 64;   // threads: 8 row groups x 8 column groups

// 16 bytes global -> shared without passing through registers (sm_80+), zero-filled when !full; completes at cp_wait.
__device__ __forceinline__ void cp16(void* dst, const void* src, bool full)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(full ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_all;\n" ::); }

// VEC: Q % 4 == 0 and p % 4 == 0 with 16-byte-aligned pointers: the next tile's rows of CB and X are copied into shared
// memory by cp.async while the current one is multiplied (ncu: without it, most stalls waited on those loads), and Y
// is written 16 bytes at a time. Otherwise the tiles are loaded by plain, bounds-checked loads.
template <bool VEC>
__global__ void __launch_bounds__(NT) ssd_diag_fwd(const float* __restrict__ CB, const float* __restrict__ Acs,
    const float* __restrict__ X, float* __restrict__ Y, int c, int Q, int h, int g, int p, int ptiles)
{
    __shared__ __align__(16) float CBs[2][RT][KS + 4];  // CB rows l0 .., steps s0 ..; +4: a quarter-warp's 16-byte row reads hit distinct banks
    __shared__ __align__(16) float Xs[2][KS][PT];       // X rows s0 .. s0 + KS - 1, channels p0 .. p0 + PT - 1
    __shared__ __align__(16) float W[KS][RT];           // W[k][i]: the weight of step s0 + k for row l0 + i
    __shared__ float As[2][KS];
    int rt = blockIdx.x, ci = blockIdx.y, z = blockIdx.z;
    int pt = z % ptiles, bh = z / ptiles, bi = bh / h, hi = bh % h, gi = hi / (h / g);
    int l0 = rt * RT, p0 = pt * PT, tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
    long rowStride = (long)h * p;
    const float* cb = CB + (((long)bi * g + gi) * c + ci) * (long)Q * Q;
    const float* a = Acs + ((long)bi * h + hi) * (long)c * Q + (long)ci * Q;
    const float* x = X + ((long)bi * c + ci) * (long)Q * rowStride + (long)hi * p;
    float* y = Y + ((long)bi * c + ci) * (long)Q * rowStride + (long)hi * p;
    int lme = l0 + tid;                            // the row whose weights this thread forms
    float al = lme < Q ? a[lme] : 0.f;
    // Tile s0 into buffer buf. Rows past Q (and, for X, channels past p) are zero: a zero weight times a stale X could be NaN.
    auto load = [&](int s0, int buf)
    {
#pragma unroll
        for (int e = tid; e < RT * KS / 4; e += NT)
        {
            int row = e / (KS / 4), q = (e % (KS / 4)) * 4, l = l0 + row, s = s0 + q;
            if (VEC) cp16(&CBs[buf][row][q], cb + (long)min(l, Q - 1) * Q + min(s, Q - 4), l < Q && s < Q);
            else
            {
#pragma unroll
                for (int j = 0; j < 4; j++) CBs[buf][row][q + j] = l < Q && s + j < Q ? cb[(long)l * Q + s + j] : 0.f;
            }
        }
#pragma unroll
        for (int e = tid; e < KS * PT / 4; e += NT)
        {
            int k = e / (PT / 4), q = (e % (PT / 4)) * 4, s = s0 + k, col = p0 + q;
            if (VEC) cp16(&Xs[buf][k][q], x + (long)min(s, Q - 1) * rowStride + min(col, p - 4), s < Q && col < p);
            else
            {
#pragma unroll
                for (int j = 0; j < 4; j++) Xs[buf][k][q + j] = s < Q && col + j < p ? x[(long)s * rowStride + col + j] : 0.f;
            }
        }
        if (tid < KS) As[buf][tid] = s0 + tid < Q ? a[s0 + tid] : 0.f;
        if (VEC) cp_commit();
    };
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.f;
    int ntiles = (min(Q, l0 + RT) + KS - 1) / KS;  // causal: s <= l < l0 + RT
    load(0, 0);
    for (int t = 0; t < ntiles; t++)
    {
        int buf = t & 1, s0 = t * KS;
        if (VEC) cp_wait();
        __syncthreads();                           // tile t is staged; tile t - 1's products are done
        if (t + 1 < ntiles) load(s0 + KS, buf ^ 1);
        // The weights of row lme for the KS steps: CB[lme, s] exp(Acs[lme] - Acs[s]) for s <= lme, else 0 (a select,
        // so the exponent of a masked pair, which may overflow, never reaches the sum).
#pragma unroll
        for (int k4 = 0; k4 < KS; k4 += 4)
        {
            float4 v = *reinterpret_cast<const float4*>(&CBs[buf][tid][k4]);
            float cv[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
            for (int k = 0; k < 4; k++)
            {
                bool on = lme < Q && s0 + k4 + k <= lme;
                W[k4 + k][tid] = on ? cv[k] * __expf(al - As[buf][k4 + k]) : 0.f;
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < KS; k++)
        {
            float4 w0 = *reinterpret_cast<const float4*>(&W[k][ty * 8]), w1 = *reinterpret_cast<const float4*>(&W[k][ty * 8 + 4]);
            float4 x0 = *reinterpret_cast<const float4*>(&Xs[buf][k][tx * 4]), x1 = *reinterpret_cast<const float4*>(&Xs[buf][k][32 + tx * 4]);
            float wv[8] = { w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w };
            float xv[8] = { x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w };
#pragma unroll
            for (int i = 0; i < 8; i++)
#pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] = fmaf(wv[i], xv[j], acc[i][j]);
        }
    }
    // Thread (tx, ty) holds rows l0 + 8 ty + i and channels p0 + 4 tx + j, p0 + 32 + 4 tx + j (j < 4).
#pragma unroll
    for (int i = 0; i < 8; i++)
    {
        int l = l0 + ty * 8 + i;
        if (l >= Q) break;
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            int col = p0 + half * 32 + tx * 4;
            float* dst = y + (long)l * rowStride + col;
            const float* v = &acc[i][half * 4];
            if (VEC && col < p) *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
            else if (!VEC)
            {
#pragma unroll
                for (int j = 0; j < 4; j++) if (col + j < p) dst[j] = v[j];
            }
        }
    }
}

bool aligned16(const void* q) { return ((unsigned long long)q & 15) == 0; }

}  // namespace

extern "C" {

// Y (b, c, Q, h, p) = the diagonal-block outputs; see the top of this file. 0, or a CUDA error code (negative: the
// sizes do not fit the grid).
int ssm_ssd_diag_fwd(const float* CB, const float* Acs, const float* X, float* Y, int b, int c, int Q, int h, int g, int p)
{
    if (b < 1 || c < 1 || Q < 1 || h < 1 || g < 1 || h % g != 0 || p < 1) return -1;
    int ptiles = (p + PT - 1) / PT;
    long z = (long)b * h * ptiles;
    if (z > 65535 || c > 65535) return -1;
    bool vec = Q % 4 == 0 && p % 4 == 0 && aligned16(CB) && aligned16(X) && aligned16(Y);
    dim3 grid((Q + RT - 1) / RT, c, (unsigned)z);
    if (vec) ssd_diag_fwd<true><<<grid, NT>>>(CB, Acs, X, Y, c, Q, h, g, p, ptiles);
    else ssd_diag_fwd<false><<<grid, NT>>>(CB, Acs, X, Y, c, Q, h, g, p, ptiles);
    return (int)cudaGetLastError();
}

}
