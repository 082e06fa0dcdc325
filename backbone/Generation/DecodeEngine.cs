// The decode step of a Mamba-1 language model with its projection weights in a DecodeMatrix format (float32,
// bfloat16 or int8), for CPU generation at the memory-bandwidth ceiling.
//
// It computes exactly MambaLM.Step (same state layout: LMState with Conv (b, d_inner, k) and Ssm (b, d_inner, n),
// so a prefill by MambaLM.Forward(ids, state) hands over to it), for a batch of b sequences:
//   x = embeddings[ids]                                                          (b d_model)   float32 residual
//   per layer:  h = RMSNorm(x);  [xi | z] = in_proj h;  conv state <- xi;  u = silu(conv)         (b d_inner)
//               [dt_r | B | C] = x_proj u;  Δ = softplus(dt_proj dt_r + bias);  state = exp(Δ A) state + Δ B u
//               y = (C·state + D u) silu(z);  x = x + out_proj y
//   logits = lm_head RMSNorm_f(x)                                                (b V)
// Glossary as in Layers/Mamba.cs: b batch, d_model, d_inner, n = d_state, r = dt_rank, k = d_conv, V = padded vocab.
//
// Two implementations of the same step:
//   Fused     (default) one pass over raw memory per layer in four parallel regions -- [in_proj rows + conv + silu]
//             per channel block, [x_proj rows], [dt_proj rows + softplus + scan + gate] per channel block,
//             [out_proj rows] -- so a step costs ~100 thread hand-offs and no tensor allocations. The small
//             element-wise work is vectorised (TensorPrimitives; Vector256 with its exp in the state update, which is
//             mamba_ssm's selective_state_update, one channel's n values at a time).
//   TensorOps the backbone's own step functions (RMSNorm.forward, CausalConv.Step, SelectiveScan.Step) with only
//             the five projections replaced by DecodeMatrix products: what Mamba.Step itself would run if it let a
//             caller replace its projections (a hook that Layers/Mamba.cs does not have yet; this path mirrors
//             Mamba.Step's body until it does). It costs ~25 tensor ops per layer, whose dispatch overhead (a few ms
//             per token at 24 layers) is why Fused exists; it is the fused path's oracle in the tests.
using System.Runtime.Intrinsics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using Ssm.Backbone.Scans;
using TorchSharp;
using static TorchSharp.torch;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace Ssm.Backbone.Generation;

/// <summary>Which implementation of the decode step a <see cref="DecodeEngine"/> runs.</summary>
public enum DecodeImpl { Fused, TensorOps }

/// <summary>
/// Token-by-token decoding of a Mamba-1 <see cref="MambaLM"/> on the CPU with its projections (in_proj, x_proj,
/// dt_proj, out_proj, lm_head) stored as <see cref="DecodeMatrix"/> in a chosen <see cref="WeightFormat"/>.
/// The engine snapshots the weights when it is built (Float32 projections share the model's storage): build it
/// after loading or training. Not thread-safe: one step at a time.
/// </summary>
public sealed class DecodeEngine : IDisposable
{
    sealed class LayerWeights : IDisposable
    {
        public required DecodeMatrix InProj, XProj, DtProj, OutProj;
        public required Tensor Norm, ConvW, DtBias, A, D;      // float32 contiguous CPU: (dm) (dIn k) (dIn) (dIn n) (dIn)
        public required Tensor? ConvB;                          // (dIn) or null
        public required double NormEps;
        public required bool ResidualInFp32;
        public void Dispose()
        {
            foreach (var m in new[] { InProj, XProj, DtProj, OutProj }) m.Dispose();
            foreach (var t in new[] { Norm, ConvW, DtBias, A, D, ConvB }) t?.Dispose();
        }
    }

    readonly MambaLM model;
    readonly LayerWeights[] layers;
    readonly DecodeMatrix lmHead;
    readonly Tensor embedding;                                  // (V, dm) float32 contiguous CPU (the model's own storage)
    readonly Tensor normF;
    readonly double normFEps;
    readonly int dm, dIn, n, r, k, vocab;
    readonly DecodeWorkers workers;
    Workspace? ws;

    public WeightFormat Format { get; }
    public DecodeImpl Impl { get; }

    /// <summary>Why <paramref name="model"/> cannot use the engine, or null when it can.</summary>
    public static string? Unsupported(MambaLM model)
    {
        if (model.Config.Mixer != MixerKind.Mamba1) return "the decode engine runs Mamba-1 layers only";
        foreach (var (name, p) in model.named_parameters())
        {
            if (p.device_type != DeviceType.CPU) return $"parameter {name} is on {p.device}, the decode engine runs on the CPU";
            if (p.dtype != ScalarType.Float32) return $"parameter {name} is {p.dtype}, the decode engine reads float32 parameters";
        }
        return null;
    }

    public DecodeEngine(MambaLM model, WeightFormat format = WeightFormat.Float32, DecodeImpl impl = DecodeImpl.Fused,
        DecodeWorkers? workers = null)
    {
        var why = Unsupported(model);
        if (why is not null) throw new NotSupportedException(why);
        this.model = model;
        this.workers = workers ?? DecodeWorkers.Shared;
        Format = format;
        Impl = impl;
        var mc = model.Config.MambaOrDefault;
        dm = checked((int)model.Config.DModel);
        dIn = checked((int)mc.DInner);
        n = checked((int)mc.DState);
        r = checked((int)mc.Rank);
        k = checked((int)mc.DConv);
        vocab = checked((int)model.Config.PaddedVocab);
        using var noGrad = torch.no_grad();
        static Tensor F32(Tensor t) => t.detach().to_type(ScalarType.Float32).contiguous().clone();
        layers = model.backbone.layers.Select(block =>
        {
            var m = (Mamba)block.mixer;
            return new LayerWeights
            {
                InProj = DecodeMatrix.Create(m.in_proj.weight!, m.in_proj.bias, format),
                XProj = DecodeMatrix.Create(m.x_proj.weight!, m.x_proj.bias, format),
                DtProj = DecodeMatrix.Create(m.dt_proj.weight!, null, format),   // its bias goes inside the softplus
                OutProj = DecodeMatrix.Create(m.out_proj.weight!, m.out_proj.bias, format),
                Norm = F32(block.norm.weight),
                ConvW = F32(m.conv1d.weight!.reshape(dIn, k)),
                ConvB = m.conv1d.bias is null ? null : F32(m.conv1d.bias),
                DtBias = F32(m.dt_proj.bias!),
                A = F32(-torch.exp(m.A_log)),                                       // A = -exp(A_log), as Mamba.Step
                D = F32(m.D),
                NormEps = block.norm.Eps,
                ResidualInFp32 = block.ResidualInFp32,
            };
        }).ToArray();
        lmHead = DecodeMatrix.Create(model.lm_head.weight!, model.lm_head.bias, format);
        var map = new Dictionary<TorchSharp.Modules.Linear, DecodeMatrix>(ReferenceEqualityComparer.Instance) { [model.lm_head] = lmHead };
        for (int i = 0; i < layers.Length; i++)
        {
            var m = (Mamba)model.backbone.layers[i].mixer;
            map[m.in_proj] = layers[i].InProj; map[m.x_proj] = layers[i].XProj; map[m.dt_proj] = layers[i].DtProj; map[m.out_proj] = layers[i].OutProj;
        }
        projections = new Projections(map);
        embedding = model.backbone.embeddings.weight!.detach().contiguous();
        normF = F32(model.backbone.norm_f.weight);
        normFEps = model.backbone.norm_f.Eps;
    }

    /// <summary>Bytes of weights read from memory per step: the projections and lm_head (in the engine's format),
    /// the small float32 per-layer parameters and one embedding row per sequence (here: one).</summary>
    public long WeightBytesPerToken
    {
        get
        {
            long small = layers.Sum(l => new[] { l.Norm, l.ConvW, l.ConvB, l.DtBias, l.A, l.D }.Sum(t => t is null ? 0 : t.numel() * 4));
            return layers.Sum(l => l.InProj.Bytes + l.XProj.Bytes + l.DtProj.Bytes + l.OutProj.Bytes)
                + lmHead.Bytes + small + normF.numel() * 4 + (long)dm * 4;
        }
    }

    /// <summary>Bytes of recurrent state per sequence (read and written once per step).</summary>
    public long StateBytesPerSequence => (long)layers.Length * dIn * (k + n) * 4;

    /// <summary>The projection weights the engine multiplies by (dequantised), in the model's parameter names:
    /// loading them into a copy of the model gives a float32 model that computes what this engine computes.</summary>
    public IReadOnlyDictionary<string, Tensor> DequantizedWeights()
    {
        var d = new Dictionary<string, Tensor>();
        for (int i = 0; i < layers.Length; i++)
        {
            string p = $"backbone.layers.{i}.mixer.";
            d[p + "in_proj.weight"] = layers[i].InProj.Dequantize();
            d[p + "x_proj.weight"] = layers[i].XProj.Dequantize();
            d[p + "dt_proj.weight"] = layers[i].DtProj.Dequantize();
            d[p + "out_proj.weight"] = layers[i].OutProj.Dequantize();
        }
        d["lm_head.weight"] = lmHead.Dequantize();
        return d;
    }

    /// <summary>One token per sequence: ids (b) int64 -> logits (b, padded vocab) float32 on the CPU; advances
    /// <paramref name="state"/> (from <see cref="MambaLM.AllocateState"/> or a prefill) in place.</summary>
    public Tensor Step(Tensor ids, LMState state)
    {
        if (ids.dim() != 1) throw new ArgumentException($"ids must be (b), got ({string.Join(", ", ids.shape)})");
        int b = checked((int)ids.shape[0]);
        if (state.Layers.Count != layers.Length) throw new ArgumentException($"state has {state.Layers.Count} layers, the model {layers.Length}");
        foreach (var ls in state.Layers)
        {
            CheckState(ls.Conv, "conv", b, k);
            CheckState(ls.Ssm, "ssm", b, n);
        }
        using var noGrad = torch.no_grad();
        try { return Impl == DecodeImpl.Fused ? FusedStep(ids, state, b) : TensorOpsStep(ids, state); }
        finally { workers.Rest(); }                                             // sampling (torch ops) comes next
    }

    void CheckState(Tensor? t, string what, int b, int last)
    {
        if (t is null || t.dim() != 3 || t.shape[0] != b || t.shape[1] != dIn || t.shape[2] != last)
            throw new ArgumentException($"{what} state must be ({b}, {dIn}, {last}), got {(t is null ? "null" : "(" + string.Join(", ", t.shape) + ")")}");
        if (t.dtype != ScalarType.Float32 || t.device_type != DeviceType.CPU || !t.is_contiguous())
            throw new ArgumentException($"{what} state must be a contiguous float32 CPU tensor (it is updated in place)");
    }

    // ------------------------------------------------------------------------------------------ tensor ops

    readonly Projections projections;

    Tensor TensorOpsStep(Tensor ids, LMState state)
    {
        // The model's own step (Mamba.Step, ResidualBlock.Step, MambaLM.Step) with only the projections swapped.
        var prior = model.StepProjection;
        model.StepProjection = projections;
        try { return model.Step(ids.cpu(), state); }
        finally { model.StepProjection = prior; }
    }

    /// <summary>Each Linear of the model mapped to its decode matrix.</summary>
    sealed class Projections(Dictionary<TorchSharp.Modules.Linear, DecodeMatrix> map) : IStepProjection
    {
        public Tensor? Project(TorchSharp.Modules.Linear layer, Tensor x, bool withBias)
        {
            if (!map.TryGetValue(layer, out var m)) return null;
            if (withBias && layer.bias is not null && !m.HasBias) return null;
            return m.Multiply(x.to_type(ScalarType.Float32));
        }
    }

    // ------------------------------------------------------------------------------------------ fused

    /// <summary>Pinned scratch buffers for a batch size (and one set of temporaries per worker).</summary>
    sealed class Workspace
    {
        public readonly int Batch;
        public readonly float[] X, H, Xi, Z, U, Dbc, Dt, Y, O;
        public readonly float[][] Tmp;                          // per worker: dIn (softplus and silu temporaries)
        public Workspace(int b, int dm, int dIn, int dbc, int tmp, int parts)
        {
            Batch = b;
            static float[] P(long len) => GC.AllocateArray<float>(checked((int)Math.Max(1, len)), pinned: true);
            X = P((long)b * dm); H = P((long)b * dm); O = P((long)b * dm);
            Xi = P((long)b * dIn); Z = P((long)b * dIn); U = P((long)b * dIn); Dt = P((long)b * dIn); Y = P((long)b * dIn);
            Dbc = P((long)b * dbc);
            Tmp = Enumerable.Range(0, parts).Select(_ => P(tmp)).ToArray();
        }
    }

    static unsafe float* Ptr(float[] a) => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(a));
    static unsafe float* Ptr(Tensor? t) => t is null ? null : (float*)Native.TensorPointer.Of(t);

    unsafe Tensor FusedStep(Tensor ids, LMState state, int b)
    {
        int R = r + 2 * n;
        if (ws is null || ws.Batch != b) ws = new Workspace(b, dm, dIn, R, dIn, workers.Size);
        var w = ws;
        using var idsCpu = ids.to_type(ScalarType.Int64).cpu().contiguous();
        var logits = torch.empty(new long[] { b, vocab }, ScalarType.Float32);
        if (b == 0) return logits;
        long* idp = (long*)Native.TensorPointer.Of(idsCpu);
        float* x = Ptr(w.X), h = Ptr(w.H), o = Ptr(w.O), emb = Ptr(embedding);
        for (int i = 0; i < b; i++)
        {
            long id = idp[i];
            if (id < 0 || id >= embedding.shape[0]) throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} outside [0, {embedding.shape[0]})");
            new ReadOnlySpan<float>(emb + id * dm, dm).CopyTo(new Span<float>(x + (long)i * dm, dm));
        }
        for (int li = 0; li < layers.Length; li++)
        {
            var lw = layers[li];
            var conv = Ptr(state.Layers[li].Conv!);
            var ssm = Ptr(state.Layers[li].Ssm);
            RmsNorm(x, Ptr(lw.Norm), lw.NormEps, h, b);
            workers.RunParts(p => InAndConv(lw, p, conv, b));
            workers.Run(R, (r0, r1) => lw.XProj.MultiplyRows(Ptr(w.U), dIn, b, r0, r1, Ptr(w.Dbc) + r0, R));
            workers.RunParts(p => DtAndScan(lw, p, ssm, b));
            workers.Run(dm, (r0, r1) => lw.OutProj.MultiplyRows(Ptr(w.Y), dIn, b, r0, r1, Ptr(w.O) + r0, dm));
            var xs = new Span<float>(x, b * dm);
            TensorPrimitives.Add(xs, new ReadOnlySpan<float>(o, b * dm), xs);     // residual (float32 throughout)
        }
        RmsNorm(x, Ptr(normF), normFEps, h, b);
        float* lp = Ptr(logits);
        workers.Run(vocab, (r0, r1) => lmHead.MultiplyRows(Ptr(w.H), dm, b, r0, r1, lp + r0, vocab));
        return logits;
    }

    /// <summary>out = w * x / sqrt(mean(x^2) + eps), row by row (RMSNorm.forward in float32).</summary>
    unsafe void RmsNorm(float* x, float* weight, double eps, float* outp, int b)
    {
        var wv = new ReadOnlySpan<float>(weight, dm);
        for (int i = 0; i < b; i++)
        {
            var xi = new ReadOnlySpan<float>(x + (long)i * dm, dm);
            var oi = new Span<float>(outp + (long)i * dm, dm);
            float inv = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xi) / dm + (float)eps);
            TensorPrimitives.Multiply(xi, inv, oi);
            TensorPrimitives.Multiply(oi, wv, oi);
        }
    }

    /// <summary>Region 1, channels [c0, c1) of part p: in_proj rows of xi and z, then conv step and silu into u.</summary>
    unsafe void InAndConv(LayerWeights lw, int p, float* conv, int b)
    {
        var (c0, c1) = DecodeWorkers.Part(dIn, workers.Size, p);
        if (c0 >= c1) return;
        var w = ws!;
        float* h = Ptr(w.H), xi = Ptr(w.Xi), z = Ptr(w.Z), u = Ptr(w.U), cw = Ptr(lw.ConvW), cb = Ptr(lw.ConvB);
        lw.InProj.MultiplyRows(h, dm, b, c0, c1, xi + c0, dIn);
        lw.InProj.MultiplyRows(h, dm, b, dIn + c0, dIn + c1, z + c0, dIn);
        var tmp = w.Tmp[p];
        int len = c1 - c0;
        for (int i = 0; i < b; i++)
        {
            float* xr = xi + (long)i * dIn, ur = u + (long)i * dIn;
            for (int c = c0; c < c1; c++)
            {
                // CausalConv.Step: shift the window left, append x, dot with the channel's kernel, add the bias.
                float* s = conv + ((long)i * dIn + c) * k;
                float* wk = cw + (long)c * k;
                float acc = cb == null ? 0f : cb[c];
                for (int j = 0; j < k - 1; j++) { s[j] = s[j + 1]; acc += s[j] * wk[j]; }
                s[k - 1] = xr[c];
                ur[c] = acc + s[k - 1] * wk[k - 1];
            }
            Silu(new Span<float>(ur + c0, len), tmp.AsSpan(0, len));
        }
    }

    /// <summary>Region 3, channels [c0, c1) of part p: dt_proj rows, Δ = softplus(. + bias), the state update, y = (C·h + D u) silu(z).</summary>
    unsafe void DtAndScan(LayerWeights lw, int p, float* ssm, int b)
    {
        var (c0, c1) = DecodeWorkers.Part(dIn, workers.Size, p);
        if (c0 >= c1) return;
        var w = ws!;
        int R = r + 2 * n, len = c1 - c0;
        float* dbc = Ptr(w.Dbc), dtp = Ptr(w.Dt), u = Ptr(w.U), z = Ptr(w.Z), y = Ptr(w.Y);
        float* A = Ptr(lw.A), D = Ptr(lw.D), bias = Ptr(lw.DtBias);
        lw.DtProj.MultiplyRows(dbc, R, b, c0, c1, dtp + c0, dIn);               // reads the first r columns of each dbc row
        var tmp = w.Tmp[p];
        for (int i = 0; i < b; i++)
        {
            float* dt = dtp + (long)i * dIn, ur = u + (long)i * dIn, zr = z + (long)i * dIn, yr = y + (long)i * dIn;
            float* B = dbc + (long)i * R + r, C = B + n;
            var dts = new Span<float>(dt + c0, len);
            TensorPrimitives.Add(dts, new ReadOnlySpan<float>(bias + c0, len), dts);
            Softplus(dts, tmp.AsSpan(0, len));
            for (int c = c0; c < c1; c++)
                yr[c] = UpdateAndRead(ssm + ((long)i * dIn + c) * n, A + (long)c * n, dt[c], ur[c], B, C, n) + D[c] * ur[c];
            var ys = new Span<float>(yr + c0, len);                                 // gate: y * silu(z)
            var zs = new ReadOnlySpan<float>(zr + c0, len);
            var t = tmp.AsSpan(0, len);
            TensorPrimitives.Sigmoid(zs, t);
            TensorPrimitives.Multiply(t, zs, t);
            TensorPrimitives.Multiply(ys, t, ys);
        }
    }

    /// <summary>One channel of the selective state update: h = exp(Δ A) ⊙ h + Δ u B in place (ZOH A, Euler B);
    /// returns C · h. Eight states per Vector256 (exp vectorised), scalar for the rest.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe float UpdateAndRead(float* h, float* A, float dt, float u, float* B, float* C, int n)
    {
        int j = 0;
        float yv = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var dv = Vector256.Create(dt);
            var sv = Vector256.Create(dt * u);
            var acc = Vector256<float>.Zero;
            for (; j + 8 <= n; j += 8)
            {
                var hv = Exp(dv * Vector256.Load(A + j)) * Vector256.Load(h + j) + sv * Vector256.Load(B + j);
                hv.Store(h + j);
                acc += hv * Vector256.Load(C + j);
            }
            yv = Vector256.Sum(acc);
        }
        for (; j < n; j++)
        {
            h[j] = MathF.Exp(dt * A[j]) * h[j] + dt * u * B[j];
            yv += h[j] * C[j];
        }
        return yv;
    }

    /// <summary>exp(x) for x &lt;= 0 (here x = Δ A with Δ &gt; 0, A &lt; 0), inlined: exp(x) = 2^k exp(r), k = round(x / ln 2),
    /// r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in two parts so r is exact), exp(r) by Cephes' degree-6
    /// polynomial (relative error ~1e-7, like MathF.Exp); inputs below -87.3 (where exp underflows) clamp there.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Exp(Vector256<float> x)
    {
        x = Vector256.Max(Vector256.Min(x, Vector256<float>.Zero), Vector256.Create(-87.3365447504019f));
        var k = Vector256.Round(x * Vector256.Create(1.44269504088896341f));
        var r = x - k * Vector256.Create(0.693359375f) + k * Vector256.Create(2.12194440e-4f);
        var p = Vector256.Create(1.9875691500e-4f);
        p = p * r + Vector256.Create(1.3981999507e-3f);
        p = p * r + Vector256.Create(8.3334519073e-3f);
        p = p * r + Vector256.Create(4.1665795894e-2f);
        p = p * r + Vector256.Create(1.6666665459e-1f);
        p = p * r + Vector256.Create(5.0000001201e-1f);
        p = p * (r * r) + r + Vector256<float>.One;
        var scale = (Vector256.ConvertToInt32(k) + Vector256.Create(127)) << 23;          // 2^k as float bits
        return p * scale.AsSingle();
    }

    /// <summary>x = x * sigmoid(x) in place.</summary>
    static void Silu(Span<float> x, Span<float> tmp)
    {
        TensorPrimitives.Sigmoid(x, tmp);
        TensorPrimitives.Multiply(x, tmp, x);
    }

    /// <summary>softplus in place, in the overflow-free form max(x, 0) + log1p(exp(-|x|)) (torch's to within rounding).</summary>
    static void Softplus(Span<float> x, Span<float> tmp)
    {
        TensorPrimitives.Abs(x, tmp);
        TensorPrimitives.Negate(tmp, tmp);
        TensorPrimitives.Exp(tmp, tmp);
        TensorPrimitives.LogP1(tmp, tmp);
        TensorPrimitives.Max(x, 0f, x);
        TensorPrimitives.Add(x, tmp, x);
    }

    public void Dispose()
    {
        foreach (var l in layers) l.Dispose();
        lmHead.Dispose();
        normF.Dispose();
        embedding.Dispose();
    }
}
