// Weight matrices for fast token-by-token decoding, and the matrix-vector kernel that streams them.
//
// Why: one decode step of a batch of one multiplies every projection matrix by one vector, so each weight is read
// once and used for a single multiply-add. The step is bound by memory bandwidth, not arithmetic: tokens/s is at
// most (read bandwidth) / (bytes of weights). Storing the weights in fewer bytes raises that ceiling:
//   Float32   4 bytes/weight  (exact)
//   BFloat16  2 bytes/weight  (the top half of the float32 bits, rounded to nearest even: 8 significant bits)
//   Int8      1 byte/weight + one float32 scale per output row: w ~ s_r q, q in [-127, 127], s_r = max_k |w_rk| / 127
//             (symmetric per-output-channel quantisation, as in LLM.int8()'s vector-wise scheme without outliers)
// Activations stay float32; the kernel widens each weight to float32 in registers (bf16: shift left by 16 bits;
// int8: sign-extend and convert) and accumulates in float32, then applies the row scale once.
//
// Kernel shape: y (b, rows) = x (b, cols) W^T for a range of rows, so several threads each stream their own rows.
// Batches of more than one sequence reuse each loaded weight row for up to 4 sequences at once (the row stays in L1
// for the next group), so the weights are still read from memory once per step.
// AVX-512 where the CPU has it (Vector512), else AVX2 + FMA (Vector256), with 4 independent accumulators to hide the
// FMA latency; a scalar loop otherwise and for the tail of rows whose length is not a multiple of the vector width.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Generation;

/// <summary>How the decode weights are stored.</summary>
public enum WeightFormat { Float32, BFloat16, Int8 }

/// <summary>
/// One linear layer's weight (rows = out features, cols = in features) and optional bias, stored for decoding in
/// a <see cref="WeightFormat"/>, with the kernel that multiplies it by float32 vectors.
/// </summary>
public sealed class DecodeMatrix : IDisposable
{
    readonly Tensor data;       // (rows, cols): float32 | bfloat16 | int8, contiguous, CPU
    readonly Tensor? scales;    // (rows) float32, Int8 only
    readonly Tensor? bias;      // (rows) float32 or null

    public WeightFormat Format { get; }
    public int Rows { get; }
    public int Cols { get; }

    /// <summary>The instruction sets the kernel can use, widest first.</summary>
    internal enum Tier { Avx512, Avx2, Scalar }

    /// <summary>The widest tier this CPU runs.</summary>
    internal static Tier Best { get; } =
        Avx512F.IsSupported && Vector512.IsHardwareAccelerated ? Tier.Avx512
        : Avx2.IsSupported && Fma.IsSupported ? Tier.Avx2 : Tier.Scalar;

    /// <summary>Tier in use: <see cref="Best"/> unless a test narrows it (each tier is tested where the CPU has it).</summary>
    internal static Tier Use { get; set; } = Best;

    DecodeMatrix(Tensor data, Tensor? scales, Tensor? bias, WeightFormat format)
    {
        this.data = data;
        this.scales = scales;
        this.bias = bias;
        Format = format;
        Rows = checked((int)data.shape[0]);
        Cols = checked((int)data.shape[1]);
    }

    /// <summary>
    /// Converts a weight (out, in) and optional bias (out) of any float dtype and device into decode storage on the
    /// CPU. Float32 shares the storage of a float32 CPU contiguous weight (no copy); the other formats are snapshots.
    /// </summary>
    public static DecodeMatrix Create(Tensor weight, Tensor? bias, WeightFormat format)
    {
        if (weight.dim() != 2) throw new ArgumentException($"a decode matrix needs a 2-d weight, got {weight.dim()}-d");
        if (bias is not null && (bias.dim() != 1 || bias.shape[0] != weight.shape[0]))
            throw new ArgumentException($"bias of shape ({string.Join(", ", bias.shape)}) does not match {weight.shape[0]} rows");
        using var noGrad = torch.no_grad();
        var w = weight.detach().cpu().to_type(ScalarType.Float32).contiguous();
        var b = bias?.detach().cpu().to_type(ScalarType.Float32).contiguous().clone();
        switch (format)
        {
            case WeightFormat.Float32:
                return new DecodeMatrix(w, null, b, format);
            case WeightFormat.BFloat16:
            {
                var bf = w.to_type(ScalarType.BFloat16).contiguous();           // round to nearest even (torch's cast)
                w.Dispose();
                return new DecodeMatrix(bf, null, b, format);
            }
            case WeightFormat.Int8:
            {
                using var scope = torch.NewDisposeScope();
                // s_r = max|w_r| / 127; an all-zero row gets s = 1 (q = 0 either way, and no division by zero).
                var maxAbs = w.abs().amax(new long[] { 1 });                      // (rows)
                var s = torch.where(maxAbs > 0, maxAbs / 127.0, torch.ones_like(maxAbs));
                var q = (w / s.unsqueeze(1)).round().clamp(-127, 127).to_type(ScalarType.Int8).contiguous();
                w.Dispose();
                return new DecodeMatrix(q.MoveToOuterDisposeScope(), s.contiguous().MoveToOuterDisposeScope(), b, format);
            }
            default: throw new ArgumentException($"unknown weight format {format}");
        }
    }

    /// <summary>Whether the product adds a bias.</summary>
    public bool HasBias => bias is not null;

    /// <summary>Bytes streamed per multiply: the weights, their scales and the bias.</summary>
    public long Bytes => data.numel() * data.ElementSize + (scales?.numel() ?? 0) * 4 + (bias?.numel() ?? 0) * 4;

    /// <summary>The weight this matrix actually multiplies by, as float32 (rows, cols) (for tests and error analysis).</summary>
    public Tensor Dequantize()
    {
        using var noGrad = torch.no_grad();
        return Format switch
        {
            WeightFormat.Int8 => data.to_type(ScalarType.Float32) * scales!.unsqueeze(1),
            _ => data.to_type(ScalarType.Float32).clone(),
        };
    }

    /// <summary>The bias as float32 (rows), or null.</summary>
    public Tensor? Bias => bias;

    /// <summary>
    /// y[i, r - r0] = Σ_k W[r, k] x[i, k] (+ bias[r]) for sequences i &lt; batch and rows r in [r0, r1).
    /// x rows are <paramref name="xStride"/> floats apart (Cols of them are read), y rows <paramref name="yStride"/>.
    /// </summary>
    public unsafe void MultiplyRows(float* x, int xStride, int batch, int r0, int r1, float* y, int yStride)
    {
        if (r0 < 0 || r1 > Rows || r0 > r1) throw new ArgumentOutOfRangeException(nameof(r0), $"rows [{r0}, {r1}) outside [0, {Rows})");
        byte* w = (byte*)Native.TensorPointer.Of(data);
        float* s = scales is null ? null : (float*)Native.TensorPointer.Of(scales);
        float* bp = bias is null ? null : (float*)Native.TensorPointer.Of(bias);
        long rowBytes = (long)Cols * data.ElementSize;
        var k = new Kernel(w, rowBytes, s, bp, Cols, x, xStride, batch, y, yStride);
        var tier = (Tier)Math.Max((int)Use, (int)Best);                       // never wider than the CPU
        switch (Format)
        {
            case WeightFormat.Float32: Dispatch<F32>(tier, k, r0, r1); break;
            case WeightFormat.BFloat16: Dispatch<BF16>(tier, k, r0, r1); break;
            default: Dispatch<I8>(tier, k, r0, r1); break;
        }
    }

    static void Dispatch<T>(Tier tier, in Kernel k, int r0, int r1) where T : struct, ILoad
    {
        if (tier == Tier.Avx512) Rows512<T>(k, r0, r1);
        else if (tier == Tier.Avx2) RowsSimd<T>(k, r0, r1);
        else RowsScalar<T>(k, r0, r1);
    }

    /// <summary>x (b, cols) float32 CPU -> y (b, rows) float32, all rows, split over the decode workers.</summary>
    public unsafe Tensor Multiply(Tensor x)
    {
        if (x.dim() != 2 || x.shape[1] != Cols) throw new ArgumentException($"x must be (b, {Cols}), got ({string.Join(", ", x.shape)})");
        if (x.device_type != DeviceType.CPU) throw new ArgumentException("decode matrices multiply CPU tensors");
        using var xc = x.to_type(ScalarType.Float32).contiguous();
        int b = checked((int)x.shape[0]);
        var y = torch.empty(new long[] { b, Rows }, ScalarType.Float32);
        if (b == 0 || Rows == 0) return y;
        float* xp = (float*)Native.TensorPointer.Of(xc), yp = (float*)Native.TensorPointer.Of(y);
        var workers = DecodeWorkers.Shared;
        workers.Run(Rows, (r0, r1) => MultiplyRows(xp, Cols, b, r0, r1, yp + r0, Rows));
        workers.Rest();                                                     // tensor ops (and their threads) come next
        return y;
    }

    public void Dispose()
    {
        data.Dispose();
        scales?.Dispose();
        bias?.Dispose();
    }

    // ------------------------------------------------------------------------------------------ kernels

    readonly unsafe struct Kernel(byte* w, long rowBytes, float* scales, float* bias, int cols, float* x, int xStride, int batch, float* y, int yStride)
    {
        public readonly byte* W = w;
        public readonly long RowBytes = rowBytes;
        public readonly float* Scales = scales, Bias = bias, X = x, Y = y;
        public readonly int Cols = cols, XStride = xStride, Batch = batch, YStride = yStride;
    }

    /// <summary>How one storage format widens its weights to float32.</summary>
    unsafe interface ILoad
    {
        static abstract Vector512<float> Load16(byte* row, int k);
        static abstract Vector256<float> Load8(byte* row, int k);
        static abstract float Load1(byte* row, int k);
    }

    readonly unsafe struct F32 : ILoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int k) => Vector512.Load((float*)row + k);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(byte* row, int k) => Avx.LoadVector256((float*)row + k);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Load1(byte* row, int k) => ((float*)row)[k];
    }

    readonly unsafe struct BF16 : ILoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int k)
            => Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load((ushort*)row + k)), 16).AsSingle();
        // bfloat16 is the high half of a float32: zero-extend to 32 bits and shift into place.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(byte* row, int k)
            => Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)row + k), 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Load1(byte* row, int k) => BitConverter.Int32BitsToSingle(((ushort*)row)[k] << 16);
    }

    readonly unsafe struct I8 : ILoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int k)
            => Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + k)));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(byte* row, int k)
            => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)row + k));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Load1(byte* row, int k) => ((sbyte*)row)[k];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe void RowsSimd<T>(in Kernel k, int r0, int r1) where T : struct, ILoad
    {
        for (int r = r0; r < r1; r++)
        {
            byte* row = k.W + r * k.RowBytes;
            float s = k.Scales == null ? 1f : k.Scales[r], b = k.Bias == null ? 0f : k.Bias[r];
            float* yr = k.Y + (r - r0);
            int i = 0;
            for (; i + 4 <= k.Batch; i += 4)
            {
                float* x0 = k.X + (long)i * k.XStride;
                Dot4<T>(row, k.Cols, x0, x0 + k.XStride, x0 + 2L * k.XStride, x0 + 3L * k.XStride,
                    out float d0, out float d1, out float d2, out float d3);
                yr[(long)i * k.YStride] = d0 * s + b;
                yr[(long)(i + 1) * k.YStride] = d1 * s + b;
                yr[(long)(i + 2) * k.YStride] = d2 * s + b;
                yr[(long)(i + 3) * k.YStride] = d3 * s + b;
            }
            for (; i < k.Batch; i++) yr[(long)i * k.YStride] = Dot1<T>(row, k.Cols, k.X + (long)i * k.XStride) * s + b;
        }
    }

    /// <summary>One row times one vector: 4 accumulators over 32 weights per iteration, then 8, then scalar.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe float Dot1<T>(byte* row, int n, float* x) where T : struct, ILoad
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int k = 0;
        for (; k + 32 <= n; k += 32)
        {
            a0 = Fma.MultiplyAdd(T.Load8(row, k), Avx.LoadVector256(x + k), a0);
            a1 = Fma.MultiplyAdd(T.Load8(row, k + 8), Avx.LoadVector256(x + k + 8), a1);
            a2 = Fma.MultiplyAdd(T.Load8(row, k + 16), Avx.LoadVector256(x + k + 16), a2);
            a3 = Fma.MultiplyAdd(T.Load8(row, k + 24), Avx.LoadVector256(x + k + 24), a3);
        }
        for (; k + 8 <= n; k += 8) a0 = Fma.MultiplyAdd(T.Load8(row, k), Avx.LoadVector256(x + k), a0);
        float sum = Vector256.Sum((a0 + a1) + (a2 + a3));
        for (; k < n; k++) sum += T.Load1(row, k) * x[k];
        return sum;
    }

    /// <summary>One row times four vectors: each weight vector is loaded once and used four times.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Dot4<T>(byte* row, int n, float* x0, float* x1, float* x2, float* x3,
        out float d0, out float d1, out float d2, out float d3) where T : struct, ILoad
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int k = 0;
        for (; k + 8 <= n; k += 8)
        {
            var w = T.Load8(row, k);
            a0 = Fma.MultiplyAdd(w, Avx.LoadVector256(x0 + k), a0);
            a1 = Fma.MultiplyAdd(w, Avx.LoadVector256(x1 + k), a1);
            a2 = Fma.MultiplyAdd(w, Avx.LoadVector256(x2 + k), a2);
            a3 = Fma.MultiplyAdd(w, Avx.LoadVector256(x3 + k), a3);
        }
        d0 = Vector256.Sum(a0); d1 = Vector256.Sum(a1); d2 = Vector256.Sum(a2); d3 = Vector256.Sum(a3);
        for (; k < n; k++)
        {
            float w = T.Load1(row, k);
            d0 += w * x0[k]; d1 += w * x1[k]; d2 += w * x2[k]; d3 += w * x3[k];
        }
    }

    // The same two kernels 16 wide (AVX-512F): half the instructions per weight, which matters for bf16 and int8,
    // whose widening costs one or two extra instructions per vector.

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe void Rows512<T>(in Kernel k, int r0, int r1) where T : struct, ILoad
    {
        for (int r = r0; r < r1; r++)
        {
            byte* row = k.W + r * k.RowBytes;
            float s = k.Scales == null ? 1f : k.Scales[r], b = k.Bias == null ? 0f : k.Bias[r];
            float* yr = k.Y + (r - r0);
            int i = 0;
            for (; i + 4 <= k.Batch; i += 4)
            {
                float* x0 = k.X + (long)i * k.XStride;
                Dot4x16<T>(row, k.Cols, x0, x0 + k.XStride, x0 + 2L * k.XStride, x0 + 3L * k.XStride,
                    out float d0, out float d1, out float d2, out float d3);
                yr[(long)i * k.YStride] = d0 * s + b;
                yr[(long)(i + 1) * k.YStride] = d1 * s + b;
                yr[(long)(i + 2) * k.YStride] = d2 * s + b;
                yr[(long)(i + 3) * k.YStride] = d3 * s + b;
            }
            for (; i < k.Batch; i++) yr[(long)i * k.YStride] = Dot1x16<T>(row, k.Cols, k.X + (long)i * k.XStride) * s + b;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe float Dot1x16<T>(byte* row, int n, float* x) where T : struct, ILoad
    {
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int k = 0;
        for (; k + 64 <= n; k += 64)
        {
            a0 = Avx512F.FusedMultiplyAdd(T.Load16(row, k), Vector512.Load(x + k), a0);
            a1 = Avx512F.FusedMultiplyAdd(T.Load16(row, k + 16), Vector512.Load(x + k + 16), a1);
            a2 = Avx512F.FusedMultiplyAdd(T.Load16(row, k + 32), Vector512.Load(x + k + 32), a2);
            a3 = Avx512F.FusedMultiplyAdd(T.Load16(row, k + 48), Vector512.Load(x + k + 48), a3);
        }
        for (; k + 16 <= n; k += 16) a0 = Avx512F.FusedMultiplyAdd(T.Load16(row, k), Vector512.Load(x + k), a0);
        float sum = Vector512.Sum((a0 + a1) + (a2 + a3));
        for (; k < n; k++) sum += T.Load1(row, k) * x[k];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Dot4x16<T>(byte* row, int n, float* x0, float* x1, float* x2, float* x3,
        out float d0, out float d1, out float d2, out float d3) where T : struct, ILoad
    {
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int k = 0;
        for (; k + 16 <= n; k += 16)
        {
            var w = T.Load16(row, k);
            a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + k), a0);
            a1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + k), a1);
            a2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + k), a2);
            a3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + k), a3);
        }
        d0 = Vector512.Sum(a0); d1 = Vector512.Sum(a1); d2 = Vector512.Sum(a2); d3 = Vector512.Sum(a3);
        for (; k < n; k++)
        {
            float w = T.Load1(row, k);
            d0 += w * x0[k]; d1 += w * x1[k]; d2 += w * x2[k]; d3 += w * x3[k];
        }
    }

    /// <summary>The portable path: plain float32 multiply-adds in order.</summary>
    static unsafe void RowsScalar<T>(in Kernel k, int r0, int r1) where T : struct, ILoad
    {
        for (int r = r0; r < r1; r++)
        {
            byte* row = k.W + r * k.RowBytes;
            float s = k.Scales == null ? 1f : k.Scales[r], b = k.Bias == null ? 0f : k.Bias[r];
            for (int i = 0; i < k.Batch; i++)
            {
                float* x = k.X + (long)i * k.XStride;
                float sum = 0;
                for (int c = 0; c < k.Cols; c++) sum += T.Load1(row, c) * x[c];
                k.Y[(long)i * k.YStride + (r - r0)] = sum * s + b;
            }
        }
    }
}

/// <summary>
/// A fixed team of threads (the caller plus ProcessorCount - 1 workers) for the many short parallel regions of a
/// decode step (about a hundred per token, each tens to hundreds of microseconds). The workers spin briefly between
/// regions instead of going back to a pool, so a region starts in about a microsecond; after a short idle period they
/// block on an event, so an idle process does not burn a core.
/// </summary>
public sealed class DecodeWorkers : IDisposable
{
    /// <summary>One team per process, ProcessorCount wide.</summary>
    public static DecodeWorkers Shared => shared.Value;
    static readonly Lazy<DecodeWorkers> shared = new(() => new DecodeWorkers(Environment.ProcessorCount));

    /// <summary>How long an idle worker spins before it blocks.</summary>
    static readonly long SpinTicks = System.Diagnostics.Stopwatch.Frequency / 2000;   // 0.5 ms

    readonly Thread[] threads;
    readonly ManualResetEventSlim[] wake;
    readonly int[] sleeping;
    readonly object gate = new();
    Action<int>? job;
    int generation, remaining;
    volatile bool disposed, resting;
    Exception? failure;

    public int Size { get; }

    public DecodeWorkers(int size)
    {
        if (size < 1) throw new ArgumentException($"a team needs at least one thread, got {size}");
        Size = size;
        threads = new Thread[size - 1];
        wake = new ManualResetEventSlim[size - 1];
        sleeping = new int[size - 1];
        for (int i = 0; i < threads.Length; i++)
        {
            int id = i;
            wake[i] = new ManualResetEventSlim(false);
            threads[i] = new Thread(() => Loop(id)) { IsBackground = true, Name = $"decode-worker-{id + 1}" };
            threads[i].Start();
        }
    }

    /// <summary>Runs body(start, end) over Size contiguous parts of [0, count), one per thread; returns when all are done.</summary>
    public void Run(int count, Action<int, int> body)
        => RunParts(p => { var (a, e) = Part(count, Size, p); if (a < e) body(a, e); });

    /// <summary>Runs part(p) for p in [0, Size), part 0 on the calling thread.</summary>
    public void RunParts(Action<int> part)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (threads.Length == 0) { part(0); return; }
        lock (gate)
        {
            resting = false;
            job = part;
            failure = null;
            Volatile.Write(ref remaining, threads.Length);
            Interlocked.Increment(ref generation);                       // full fence: publishes job before the flag checks
            for (int i = 0; i < threads.Length; i++)
                if (Volatile.Read(ref sleeping[i]) != 0) wake[i].Set();
            Exception? mine = null;
            try { part(0); } catch (Exception e) { mine = e; }
            var spin = new SpinWait();
            while (Volatile.Read(ref remaining) != 0) spin.SpinOnce(sleep1Threshold: -1);
            job = null;
            if (mine is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(mine);
            if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    /// <summary>
    /// Lets the workers block now instead of spinning: call it when no region follows soon (after a decode step),
    /// so that the cores are free for other work such as torch's own threads (whose ops would otherwise wait for a
    /// spinning worker to be descheduled). The next region wakes them (tens of microseconds, once).
    /// </summary>
    public void Rest() => resting = true;

    /// <summary>The p-th of n nearly equal contiguous parts of [0, count).</summary>
    public static (int start, int end) Part(int count, int parts, int p)
        => ((int)((long)count * p / parts), (int)((long)count * (p + 1) / parts));

    void Loop(int id)
    {
        int seen = 0;
        while (true)
        {
            long idleSince = System.Diagnostics.Stopwatch.GetTimestamp();
            while (Volatile.Read(ref generation) == seen)
            {
                if (disposed) return;
                if (!resting && System.Diagnostics.Stopwatch.GetTimestamp() - idleSince < SpinTicks) { Thread.SpinWait(30); continue; }
                // Dekker-style hand-shake with RunParts: announce sleep, fence, re-check the generation, then block.
                Volatile.Write(ref sleeping[id], 1);
                Interlocked.MemoryBarrier();
                if (Volatile.Read(ref generation) == seen && !disposed) wake[id].Wait();
                wake[id].Reset();
                Volatile.Write(ref sleeping[id], 0);
                idleSince = System.Diagnostics.Stopwatch.GetTimestamp();
            }
            seen = Volatile.Read(ref generation);
            try { job!(id + 1); }
            catch (Exception e) { failure = e; }
            Interlocked.Decrement(ref remaining);
        }
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var w in wake) w.Set();
        foreach (var t in threads) t.Join();
        foreach (var w in wake) w.Dispose();
    }
}
