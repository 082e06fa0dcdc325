// Fused SSD chunk scan, the diagonal blocks (Mamba-2; "Transformers are SSMs" section 6, step 1 of Listing 1; the
// intra-chunk half of mamba_ssm's _chunk_scan_fwd and its backward). Per (batch, chunk, head):
//   Y[l, :] = sum_{s <= l} CB[l, s] exp(Acs[l] - Acs[s]) X[s, :]
// with CB = C B^T of the chunk (shared by the heads of a group), Acs the within-chunk cumulative sum of dt A and
// X = dt x. Layouts (float32, contiguous; h heads in g groups, head i reads group i / (h / g)):
//   CB (b, g, c, Q, Q)    Acs (b, h, c, Q)    X, Y (b, c, Q, h, p)
//
// Why kernels. The tensor-op path (Scans/Ssd.cs) forms the decay matrix exp(Acs[l] - Acs[s]) and the weights
// CB exp(...) for every (batch, head, chunk) in device memory: at b 8, l 8192, 32 heads, Q 256 that is 2.1 GB per
// matrix in float32, written and read several times, before one batched product (and autograd keeps them for the
// backward). Here nothing of size Q x Q per head leaves the chip:
//   - forward: a block computes a 64 x 64 tile of Y (64 steps of the chunk x 64 head channels) as a causal matrix
//     product whose left factor is formed in shared memory 32 steps at a time (weight = CB exp(...), zero above the
//     diagonal, so tiles past the diagonal are skipped); the next tile's CB and X arrive by cp.async behind the
//     products. 64 threads, each an 8 x 8 register tile: a step costs a thread four 16-byte shared loads for 64 FMAs;
//   - backward, dX = W^T dY: the same kernel on CB^T with the mask and the exponent reversed;
//   - backward, dCB and dAcs: per 64 x 64 tile on or below the diagonal, dW = dY X^T for each head of the group (the
//     same register tiles), then the elementwise chain rule through CB exp(Acs[l] - Acs[s]).
// The forward optionally adds step 4's exp(Acs[l]) C_l . state (computed by a matrix product outside, as Off) in its
// epilogue, which saves the broadcast multiply and the sum over the chunk's outputs (and their backward passes).
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "device_math.cuh"

namespace {

constexpr int RT = 64;   // rows (steps of the chunk) per block
constexpr int PT = 64;   // head channels per block
constexpr int KS = 32;   // steps s per shared-memory tile
constexpr int NT = 64;   // threads: 8 row groups x 8 column groups

using ssm::cp16;
using ssm::cp_commit;
using ssm::cp_wait_all;
using ssm::aligned16;

// A ROWS x COLS tile of floats (row r at src + r ld) into dst (row stride DST), zero past nr rows and nc columns: by
// 16-byte cp.async (VEC: ld, nc and src 4-float aligned; the caller commits) or by plain, bounds-checked loads.
template <bool VEC, int ROWS, int COLS, int DST>
__device__ __forceinline__ void copy_tile(float* dst, const float* src, long ld, int nr, int nc)
{
#pragma unroll
    for (int e = threadIdx.x; e < ROWS * COLS / 4; e += NT)
    {
        int r = e / (COLS / 4), q = (e % (COLS / 4)) * 4;
        if (VEC) cp16(dst + r * DST + q, src + (long)min(r, nr - 1) * ld + min(q, nc - 4), r < nr && q < nc);
        else
        {
#pragma unroll
            for (int j = 0; j < 4; j++) dst[r * DST + q + j] = r < nr && q + j < nc ? src[(long)r * ld + q + j] : 0.f;
        }
    }
}

// The 8 x 8 register tile of thread (tx, ty) in a 64 x 64 output tile: rows 8 ty + i, columns col8(tx, j), that is
// 4 tx + j and 32 + 4 tx + j - 4: the lanes of a quarter-warp (one ty, tx = 0..7) then read one address of the left
// factor and 128 contiguous bytes of the right one per 16-byte load, the cheapest patterns of shared loads.
__device__ __forceinline__ int col8(int tx, int j) { return j < 4 ? tx * 4 + j : 28 + tx * 4 + j; }

// acc += a b^T for one step k of a 64 x 64 x K product: a = the tile's 64 left-factor values at k (rows), b = its 64
// right-factor values at k (columns); 4 shared loads, 64 FMAs.
__device__ __forceinline__ void fma8x8(float (&acc)[8][8], const float* a, const float* b, int tx, int ty)
{
    float4 a0 = *reinterpret_cast<const float4*>(a + ty * 8), a1 = *reinterpret_cast<const float4*>(a + ty * 8 + 4);
    float4 b0 = *reinterpret_cast<const float4*>(b + tx * 4), b1 = *reinterpret_cast<const float4*>(b + 32 + tx * 4);
    float av[8] = { a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w };
    float bv[8] = { b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w };
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
}

// The thread's 8 x 8 tile into dst (the 64 x 64 tile's origin, row stride ld), rows < nr and columns < nc; 16 bytes at
// a time when vec (ld, nc and dst 4-float aligned).
__device__ __forceinline__ void store8x8(float* dst, long ld, int nr, int nc, const float (&acc)[8][8], int tx, int ty, bool vec)
{
#pragma unroll
    for (int i = 0; i < 8; i++)
    {
        int r = ty * 8 + i;
        if (r >= nr) break;
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            int col = half * 32 + tx * 4;
            float* d = dst + (long)r * ld + col;
            const float* v = &acc[i][half * 4];
            if (vec && col < nc) *reinterpret_cast<float4*>(d) = make_float4(v[0], v[1], v[2], v[3]);
            else if (!vec)
            {
#pragma unroll
                for (int j = 0; j < 4; j++) if (col + j < nc) d[j] = v[j];
            }
        }
    }
}

// VEC: Q % 4 == 0 and p % 4 == 0 with 16-byte-aligned pointers: the next tile's rows of CB and X are copied into shared
// memory by cp.async while the current one is multiplied (ncu: without it, most stalls waited on those loads), and Y
// is written 16 bytes at a time. Otherwise the tiles are loaded by plain, bounds-checked loads.
// REV (the backward's dX = W^T dY): M is CB^T, and row i sums over j >= i with exp(Acs[j] - Acs[i]).
// Off (forward only; may be null): the off-diagonal outputs C_l . state before their row factor, same layout as Y;
// Y gets exp(Acs[l]) Off[l, :] added in the epilogue (step 4 of the chunked scan), so Y is the chunk's whole output.
// The last steps of the scan, when the caller wants them here (inference: no backward follows): out = (Y + D x) silu(z)
// in x's dtype, at (b, L, h, p) without the padding rows; D is (h) (dhp 0) or (h, p) (dhp 1), D and z may be null.
template <typename T> struct Final
{
    const T* x; const T* z; const float* D; T* out; int L, dhp;
};

template <bool VEC, bool REV, typename T = float>
__global__ void __launch_bounds__(NT) ssd_diag_fwd(const float* __restrict__ CB, const float* __restrict__ Acs,
    const float* __restrict__ X, const float* __restrict__ Off, float* __restrict__ Y, int c, int Q, int h, int g, int p,
    int ptiles, Final<T> fin = Final<T>{})
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
        copy_tile<VEC, RT, KS, KS + 4>(&CBs[buf][0][0], cb + (long)l0 * Q + s0, Q, Q - l0, Q - s0);
        copy_tile<VEC, KS, PT, PT>(&Xs[buf][0][0], x + (long)s0 * rowStride + p0, rowStride, Q - s0, p - p0);
        if (tid < KS) As[buf][tid] = s0 + tid < Q ? a[s0 + tid] : 0.f;
        if (VEC) cp_commit();
    };
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.f;
    // Causal: s <= l < l0 + RT, so tiles from 0 to the block's last row; REV: s >= l >= l0, tiles from l0 to Q.
    int tfirst = REV ? l0 / KS : 0, ntiles = REV ? (Q + KS - 1) / KS : (min(Q, l0 + RT) + KS - 1) / KS;
    load(tfirst * KS, tfirst & 1);
    for (int t = tfirst; t < ntiles; t++)
    {
        int buf = t & 1, s0 = t * KS;
        if (VEC) cp_wait_all();
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
                // s < Q too: in REV the last tile runs past Q, where CB is a zero fill and exp(Acs[s] - Acs[l]) with
                // Acs[s] = 0 can overflow (0 x inf = NaN; found by the doctor's Q = 100 check).
                bool on = lme < Q && s0 + k4 + k < Q && (REV ? s0 + k4 + k >= lme : s0 + k4 + k <= lme);
                W[k4 + k][tid] = on ? cv[k] * __expf(REV ? As[buf][k4 + k] - al : al - As[buf][k4 + k]) : 0.f;
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < KS; k++)
        {
            fma8x8(acc, &W[k][0], &Xs[buf][k][0], tx, ty);
        }
    }
    if (!REV && Off)
    {
        const float* off = Off + ((long)bi * c + ci) * (long)Q * rowStride + (long)hi * p;
#pragma unroll
        for (int i = 0; i < 8; i++)
        {
            int l = l0 + ty * 8 + i;
            if (l >= Q) break;
            float el = __expf(a[l]);
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                int col = p0 + col8(tx, j);
                if (col < p) acc[i][j] = fmaf(el, off[(long)l * rowStride + col], acc[i][j]);
            }
        }
    }
    if (!REV && fin.out)
    {
#pragma unroll
        for (int i = 0; i < 8; i++)
        {
            int l = l0 + ty * 8 + i, t = ci * Q + l;
            if (l >= Q || t >= fin.L) break;
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                int col = p0 + col8(tx, j);
                if (col >= p) continue;
                long idx = (((long)bi * fin.L + t) * h + hi) * p + col;
                float v = acc[i][j];
                if (fin.D) v = fmaf(fin.D[fin.dhp ? hi * p + col : hi], ssm::tof(fin.x[idx]), v);
                if (fin.z) { float zv = ssm::tof(fin.z[idx]); v *= zv * ssm::sigmoid_f(zv); }
                ssm::st(fin.out + idx, v);
            }
        }
        return;
    }
    store8x8(y + (long)l0 * rowStride + p0, rowStride, Q - l0, p - p0, acc, tx, ty, VEC);
}

// The backward of the epilogue's exp(Acs[l]) Off[l, :]: dOff = exp(Acs[l]) dY, and dAcs[l] += exp(Acs[l]) dY . Off
// (added atomically: the dCB kernel adds to dAcs too). One warp per row (batch, chunk, step, head) of Y.
__global__ void ssd_off_bwd(const float* __restrict__ dY, const float* __restrict__ Off, const float* __restrict__ Acs,
    float* __restrict__ dOff, float* __restrict__ dAcs, long rows, int c, int Q, int h, int p)
{
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    int lane = threadIdx.x & 31, hi = (int)(row % h);
    long t = row / h;
    int l = (int)(t % Q);
    long bc = t / Q;
    int ci = (int)(bc % c);
    long bi = bc / c, ai = ((bi * h + hi) * c + ci) * (long)Q + l;
    float e = __expf(Acs[ai]), sum = 0.f;
    const float* dy = dY + row * p;
    const float* o = Off + row * p;
    float* d = dOff + row * p;
    for (int k = lane; k < p; k += 32)
    {
        float gy = dy[k];
        d[k] = e * gy;
        sum = fmaf(gy, o[k], sum);
    }
#pragma unroll
    for (int m = 16; m >= 1; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
    if (lane == 0 && sum != 0.f) atomicAdd(&dAcs[ai], e * sum);
}

// The backward's other half, per (batch, chunk, group) and 64 x 64 tile (l, s) of the chunk's (Q, Q) block on or below
// the diagonal, looping over the group's heads: with E = exp(Acs[l] - Acs[s]) [s <= l] and dW = dY X^T (a 64 x 64 x p
// product per head),
//   dCB[l, s] = sum over heads of dW E          dAcs[l] += sum_s T[l, s],  dAcs[s] -= sum_l T[l, s],  T = dW E CB
// (Y = (CB E) X, and E's exponent is Acs[l] - Acs[s]). dCB is written once per tile (the caller zeroes the tiles above
// the diagonal); dAcs (zeroed by the caller) gathers row and column sums from several tiles by atomic adds.
constexpr int KP = 32;   // head channels per staged slice of dY and X

__global__ void __launch_bounds__(NT) ssd_diag_bwd_cb(const float* __restrict__ CB, const float* __restrict__ Acs,
    const float* __restrict__ X, const float* __restrict__ dY, float* __restrict__ dCB, float* __restrict__ dAcs,
    int c, int Q, int h, int g, int p)
{
    __shared__ __align__(16) float Dt[KP][RT + 4];      // dY slice, transposed: Dt[k][i] = dY[l0 + i, p0 + k]
    __shared__ __align__(16) float Xt[KP][RT + 4];      // X slice, transposed:  Xt[k][j] = X[s0 + j, p0 + k]
    __shared__ float CBt[RT][RT + 1];                  // CB[l0 + i, s0 + j]
    __shared__ float Ar[RT], Ac[RT];                   // Acs of the tile's rows and columns (this head)
    __shared__ float Cs[8][RT];                        // column sums of T by row group
    int tile = blockIdx.x, ci = blockIdx.y, bg = blockIdx.z, bi = bg / g, gi = bg % g, r = h / g;
    int lt = (int)((sqrtf(8.f * tile + 1.f) - 1.f) * 0.5f);  // tile = lt (lt + 1) / 2 + st, st <= lt
    while ((lt + 1) * (lt + 2) / 2 <= tile) lt++;
    while (lt * (lt + 1) / 2 > tile) lt--;
    int st = tile - lt * (lt + 1) / 2;
    int l0 = lt * RT, s0 = st * RT, tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
    long rowStride = (long)h * p;
    const float* cb = CB + (((long)bi * g + gi) * c + ci) * (long)Q * Q;
    for (int e = tid; e < RT * RT; e += NT)
    {
        int i = e / RT, j = e % RT, l = l0 + i, s = s0 + j;
        CBt[i][j] = l < Q && s < Q ? cb[(long)l * Q + s] : 0.f;
    }
    // Thread (tx, ty): rows l0 + 8 ty + i, columns s0 + col8(tx, j).
    float gcb[8][8];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) gcb[i][j] = 0.f;
    for (int ri = 0; ri < r; ri++)
    {
        int hi = gi * r + ri;
        const float* a = Acs + ((long)bi * h + hi) * (long)c * Q + (long)ci * Q;
        const float* x = X + ((long)bi * c + ci) * (long)Q * rowStride + (long)hi * p;
        const float* dy = dY + ((long)bi * c + ci) * (long)Q * rowStride + (long)hi * p;
        __syncthreads();                               // the previous head is done with Ar, Ac, Cs (and CBt is in place)
        Ar[tid] = l0 + tid < Q ? a[l0 + tid] : 0.f;
        Ac[tid] = s0 + tid < Q ? a[s0 + tid] : 0.f;
        float dw[8][8];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < 8; j++) dw[i][j] = 0.f;
        for (int p0 = 0; p0 < p; p0 += KP)
        {
            __syncthreads();                           // the previous slice's products are done
            // Thread tid stages row tid of both tiles (its KP channels): consecutive threads, consecutive rows, so the
            // transposed stores are conflict-free.
#pragma unroll 8
            for (int k = 0; k < KP; k++)
            {
                int col = p0 + k;
                Dt[k][tid] = l0 + tid < Q && col < p ? dy[(long)(l0 + tid) * rowStride + col] : 0.f;
                Xt[k][tid] = s0 + tid < Q && col < p ? x[(long)(s0 + tid) * rowStride + col] : 0.f;
            }
            __syncthreads();
#pragma unroll 8
            for (int k = 0; k < KP; k++)
            {
                fma8x8(dw, &Dt[k][0], &Xt[k][0], tx, ty);
            }
        }
        // E, the dCB contribution, and T's row and column sums.
        float rs[8], cs[8];
#pragma unroll
        for (int j = 0; j < 8; j++) cs[j] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++)
        {
            int il = ty * 8 + i, l = l0 + il;
            rs[i] = 0.f;
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                int js = col8(tx, j), s = s0 + js;
                bool on = l < Q && s <= l;
                float w = on ? dw[i][j] * __expf(Ar[il] - Ac[js]) : 0.f;
                gcb[i][j] += w;
                float t = w * CBt[il][js];
                rs[i] += t;
                cs[j] += t;
            }
        }
        // Row sums: the 8 lanes of a row group are one quarter-warp (tid = 8 ty + tx).
#pragma unroll
        for (int i = 0; i < 8; i++)
        {
            float v = rs[i];
            v += __shfl_xor_sync(0xffffffffu, v, 1);
            v += __shfl_xor_sync(0xffffffffu, v, 2);
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            int l = l0 + ty * 8 + i;
            if (tx == 0 && l < Q) atomicAdd(&dAcs[((long)bi * h + hi) * (long)c * Q + (long)ci * Q + l], v);
        }
        // Column sums: over the 8 row groups, through shared memory.
#pragma unroll
        for (int j = 0; j < 8; j++) Cs[ty][col8(tx, j)] = cs[j];
        __syncthreads();
        {
            float v = 0.f;
#pragma unroll
            for (int q = 0; q < 8; q++) v += Cs[q][tid];
            int s = s0 + tid;
            if (s < Q && v != 0.f) atomicAdd(&dAcs[((long)bi * h + hi) * (long)c * Q + (long)ci * Q + s], -v);
        }
    }
    float* gout = dCB + (((long)bi * g + gi) * c + ci) * (long)Q * Q + (long)l0 * Q + s0;
    store8x8(gout, Q, Q - l0, Q - s0, gcb, tx, ty, (Q & 3) == 0 && aligned16(dCB));
}


}  // namespace

extern "C" {

// Y (b, c, Q, h, p) = the diagonal-block outputs; see the top of this file. 0, or a CUDA error code (negative: the
// sizes do not fit the grid).
// Off (b, c, Q, h, p) may be null; with it Y also holds exp(Acs[l]) Off[l, :].
int ssm_ssd_chunk_fwd(const float* CB, const float* Acs, const float* X, const float* Off, float* Y, int b, int c, int Q,
    int h, int g, int p)
{
    if (b < 1 || c < 1 || Q < 1 || h < 1 || g < 1 || h % g != 0 || p < 1) return -1;
    int ptiles = (p + PT - 1) / PT;
    long z = (long)b * h * ptiles;
    if (z > 65535 || c > 65535) return -1;
    bool vec = Q % 4 == 0 && p % 4 == 0 && aligned16(CB) && aligned16(X) && aligned16(Y);
    dim3 grid((Q + RT - 1) / RT, c, (unsigned)z);
    if (vec) ssd_diag_fwd<true, false><<<grid, NT>>>(CB, Acs, X, Off, Y, c, Q, h, g, p, ptiles);
    else ssd_diag_fwd<false, false><<<grid, NT>>>(CB, Acs, X, Off, Y, c, Q, h, g, p, ptiles);
    return (int)cudaGetLastError();
}

// The forward with the scan's last steps (see Final): out (b, L, h, p) = (Y + D x) silu(z) in x's dtype (bf16: 1, else
// float32), Y as ssm_ssd_chunk_fwd computes it (never stored). For inference: there is no backward of this form.
int ssm_ssd_chunk_fwd_final(const float* CB, const float* Acs, const float* X, const float* Off, int bf16, const void* x,
    const void* z, const float* D, int dhp, void* out, int b, int c, int Q, int L, int h, int g, int p)
{
    if (b < 1 || c < 1 || Q < 1 || h < 1 || g < 1 || h % g != 0 || p < 1 || L < 1 || L > c * Q || !x || !out) return -1;
    int ptiles = (p + PT - 1) / PT;
    long zg = (long)b * h * ptiles;
    if (zg > 65535 || c > 65535) return -1;
    bool vec = Q % 4 == 0 && p % 4 == 0 && aligned16(CB) && aligned16(X);
    dim3 grid((Q + RT - 1) / RT, c, (unsigned)zg);
    if (bf16)
    {
        Final<__nv_bfloat16> f{ (const __nv_bfloat16*)x, (const __nv_bfloat16*)z, D, (__nv_bfloat16*)out, L, dhp };
        if (vec) ssd_diag_fwd<true, false, __nv_bfloat16><<<grid, NT>>>(CB, Acs, X, Off, nullptr, c, Q, h, g, p, ptiles, f);
        else ssd_diag_fwd<false, false, __nv_bfloat16><<<grid, NT>>>(CB, Acs, X, Off, nullptr, c, Q, h, g, p, ptiles, f);
    }
    else
    {
        Final<float> f{ (const float*)x, (const float*)z, D, (float*)out, L, dhp };
        if (vec) ssd_diag_fwd<true, false, float><<<grid, NT>>>(CB, Acs, X, Off, nullptr, c, Q, h, g, p, ptiles, f);
        else ssd_diag_fwd<false, false, float><<<grid, NT>>>(CB, Acs, X, Off, nullptr, c, Q, h, g, p, ptiles, f);
    }
    return (int)cudaGetLastError();
}

// The backward of Y = (CB exp(Acs[l] - Acs[s]) [s <= l]) X (+ exp(Acs[l]) Off) for every (batch, chunk, head): dX
// and, with Off, dOff (b, c, Q, h, p) written; dCB (b, g, c, Q, Q) and dAcs (b, h, c, Q) must be zero on entry. CBT is
// CB with its last two axes swapped. Off and dOff null: no epilogue term.
int ssm_ssd_chunk_bwd(const float* CB, const float* CBT, const float* Acs, const float* X, const float* Off, const float* dY,
    float* dX, float* dCB, float* dAcs, float* dOff, int b, int c, int Q, int h, int g, int p)
{
    if (b < 1 || c < 1 || Q < 1 || h < 1 || g < 1 || h % g != 0 || p < 1) return -1;
    int ptiles = (p + PT - 1) / PT, qt = (Q + RT - 1) / RT;
    long z = (long)b * h * ptiles;
    if (z > 65535 || c > 65535 || (long)b * g > 65535) return -1;
    bool vec = Q % 4 == 0 && p % 4 == 0 && aligned16(CBT) && aligned16(dY) && aligned16(dX);
    dim3 grid(qt, c, (unsigned)z);
    if (vec) ssd_diag_fwd<true, true><<<grid, NT>>>(CBT, Acs, dY, nullptr, dX, c, Q, h, g, p, ptiles);
    else ssd_diag_fwd<false, true><<<grid, NT>>>(CBT, Acs, dY, nullptr, dX, c, Q, h, g, p, ptiles);
    dim3 grid2(qt * (qt + 1) / 2, c, (unsigned)(b * g));
    ssd_diag_bwd_cb<<<grid2, NT>>>(CB, Acs, X, dY, dCB, dAcs, c, Q, h, g, p);
    if (Off && dOff)
    {
        long rows = (long)b * c * Q * h;
        ssd_off_bwd<<<(unsigned)((rows + 7) / 8), 256>>>(dY, Off, Acs, dOff, dAcs, rows, c, Q, h, p);
    }
    return (int)cudaGetLastError();
}

}
