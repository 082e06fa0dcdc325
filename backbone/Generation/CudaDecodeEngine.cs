// The decode step of a Mamba-1 language model on CUDA in fused kernels (backbone/Native/cuda/decode_step.cu): per
// layer an add+RMSNorm, the in_proj product, the conv step, the x_proj product, one kernel for dt_proj + softplus +
// selective state update + D skip + gate, and the out_proj product; then the final norm and lm_head. The op-by-op
// MambaLM.Step launches ~30 small tensor ops per layer and is bound by their dispatch cost (milliseconds per token at
// 24 layers); here a token is ~6 launches per layer, and after the first step of a batch the whole step is captured
// into a CUDA graph and replayed with one launch per token.
// Same state layout as MambaLM.Step (LMState: Conv (b, d_inner, k), Ssm (b, d_inner, n), float32), so a prefill by
// MambaLM.Forward(ids, state) hands over to it, and the same result (the tests compare the two).
// Weights: the model's own matrices (float32 or bfloat16, as MixedPrecision.Apply left them) are read in place;
// the small vectors (norms, conv taps, Δ bias, A = -exp(A_log), D) are float32 copies taken when the engine is built.
using System.Runtime.InteropServices;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using TorchSharp;
using static TorchSharp.torch;
using CudaLib = Ssm.Backbone.Native.CudaLib;
using TensorPointer = Ssm.Backbone.Native.TensorPointer;

namespace Ssm.Backbone.Generation;

/// <summary>Token-by-token decoding of a Mamba-1 <see cref="MambaLM"/> on CUDA with fused step kernels and a CUDA graph.
/// Build it after loading or training (it snapshots the small vectors). Not thread-safe: one step at a time.</summary>
public sealed unsafe class CudaDecodeEngine : IDisposable
{
    const int Slots = 14;   // pointer slots per layer, in decode_step.cu's order (L_NORM ... L_SSM_STATE)
    const int ConvStateSlot = 12, SsmStateSlot = 13;

    readonly MambaLM model;
    readonly int nLayers, dm, dIn, n, r, k, vocab, bf16;
    readonly float eps;
    readonly List<Tensor> owned = new();
    readonly IntPtr[] layerPtrs;
    readonly IntPtr emb, normF, head;
    Tensor? ids, logits, work;
    IntPtr graph;
    IntPtr[]? graphKey;

    /// <summary>Whether steps after the first of a batch replay a captured CUDA graph (false after a capture failed).</summary>
    public bool UseGraph { get; private set; }

    /// <summary>Why graph capture failed (the engine then launches the kernels every step), or null.</summary>
    public string? GraphError { get; private set; }

    /// <summary>Why <paramref name="model"/> cannot use the engine, or null when it can.</summary>
    public static string? Unsupported(MambaLM model)
    {
        if (model.Config.Mixer != MixerKind.Mamba1) return "the CUDA decode engine runs Mamba-1 layers only";
        var w = model.backbone.embeddings.weight!;
        if (w.device_type != DeviceType.CUDA) return "the model is not on CUDA";
        if (w.dtype != ScalarType.Float32 && w.dtype != ScalarType.BFloat16) return $"the CUDA decode engine reads float32 or bfloat16 weights, not {w.dtype}";
        if (Exports.Value is null) return $"the fused CUDA kernels are not available ({CudaLib.Status})";
        foreach (var block in model.backbone.layers)
        {
            var m = (Mamba)block.mixer;
            foreach (var lin in new[] { m.in_proj, m.x_proj, m.dt_proj, m.out_proj })
                if (lin.weight!.dtype != w.dtype) return $"mixed matrix dtypes ({lin.weight.dtype} and {w.dtype})";
        }
        if (model.lm_head.weight!.dtype != w.dtype) return $"mixed matrix dtypes ({model.lm_head.weight.dtype} and {w.dtype})";
        return null;
    }

    /// <param name="model">A Mamba-1 LM on CUDA.</param>
    /// <param name="useGraph">Capture the step into a CUDA graph (false: launch the kernels every step).</param>
    public CudaDecodeEngine(MambaLM model, bool useGraph = true)
    {
        var why = Unsupported(model);
        if (why is not null) throw new NotSupportedException(why);
        this.model = model;
        UseGraph = useGraph;
        var mc = model.Config.MambaOrDefault;
        nLayers = model.backbone.layers.Count;
        dm = checked((int)model.Config.DModel);
        dIn = checked((int)mc.DInner);
        n = checked((int)mc.DState);
        r = checked((int)mc.Rank);
        k = checked((int)mc.DConv);
        vocab = checked((int)model.lm_head.weight!.shape[0]);
        bf16 = model.backbone.embeddings.weight!.dtype == ScalarType.BFloat16 ? 1 : 0;
        eps = (float)model.backbone.norm_f.Eps;
        using var noGrad = torch.no_grad();
        layerPtrs = new IntPtr[nLayers * Slots];
        for (int i = 0; i < nLayers; i++)
        {
            var block = model.backbone.layers[i];
            var m = (Mamba)block.mixer;
            if (Math.Abs(block.norm.Eps - model.backbone.norm_f.Eps) > 0) throw new NotSupportedException("the CUDA decode engine needs one norm epsilon for all layers");
            var p = new IntPtr[Slots];
            p[0] = Own(block.norm.weight, fp32: true);
            p[1] = Own(m.in_proj.weight!, fp32: false);
            p[2] = m.in_proj.bias is null ? IntPtr.Zero : Own(m.in_proj.bias, fp32: true);
            p[3] = Own(m.conv1d.weight!.reshape(dIn, k), fp32: true);
            p[4] = m.conv1d.bias is null ? IntPtr.Zero : Own(m.conv1d.bias, fp32: true);
            p[5] = Own(m.x_proj.weight!, fp32: false);
            p[6] = Own(m.dt_proj.weight!, fp32: false);
            p[7] = Own(m.dt_proj.bias!, fp32: true);
            p[8] = Own(-torch.exp(m.A_log.to_type(ScalarType.Float32)), fp32: true);
            p[9] = Own(m.D, fp32: true);
            p[10] = Own(m.out_proj.weight!, fp32: false);
            p[11] = m.out_proj.bias is null ? IntPtr.Zero : Own(m.out_proj.bias, fp32: true);
            Array.Copy(p, 0, layerPtrs, i * Slots, Slots);
        }
        emb = Own(model.backbone.embeddings.weight!, fp32: false);
        normF = Own(model.backbone.norm_f.weight, fp32: true);
        head = Own(model.lm_head.weight!, fp32: false);
    }

    /// <summary>A contiguous copy (float32 for the small vectors; the matrices keep their dtype and share storage
    /// when already contiguous) that lives as long as the engine.</summary>
    IntPtr Own(Tensor t, bool fp32)
    {
        var c = (fp32 ? t.detach().to_type(ScalarType.Float32) : t.detach()).contiguous();
        owned.Add(c);
        return TensorPointer.Of(c);
    }

    /// <summary>One token per sequence: ids (b) int64 on CUDA -> logits (b, padded vocab) float32; updates the state.</summary>
    public Tensor Step(Tensor tokenIds, LMState state)
    {
        using var noGrad = torch.no_grad();
        int b = checked((int)tokenIds.shape[0]);
        if (state.Layers.Count != nLayers) throw new ArgumentException($"state has {state.Layers.Count} layers, the model {nLayers}");
        for (int i = 0; i < nLayers; i++)
        {
            var s = state.Layers[i];
            foreach (var (t, shape) in new[] { (s.Conv!, new long[] { b, dIn, k }), (s.Ssm, new long[] { b, dIn, n }) })
                if (t.device_type != DeviceType.CUDA || t.dtype != ScalarType.Float32 || !t.is_contiguous() || !t.shape.SequenceEqual(shape))
                    throw new ArgumentException($"layer {i} state must be contiguous float32 CUDA tensors of ({string.Join(", ", shape)})");
            layerPtrs[i * Slots + ConvStateSlot] = TensorPointer.Of(s.Conv!);
            layerPtrs[i * Slots + SsmStateSlot] = TensorPointer.Of(s.Ssm);
        }
        if (ids is null || ids.shape[0] != b) Allocate(b);
        ids!.copy_(tokenIds);
        var key = layerPtrs.Append((IntPtr)b).ToArray();
        var x = Exports.Value!;
        fixed (IntPtr* L = layerPtrs)
        {
            if (UseGraph && graph != IntPtr.Zero && graphKey is not null && key.AsSpan().SequenceEqual(graphKey))
                Check(x.GraphLaunch(graph));
            else
            {
                // The first step with these buffers runs the kernels directly (which also loads them: capture must
                // not be the first use of a kernel), then the graph is captured for the next steps.
                Check(x.Step(L, nLayers, dm, dIn, n, r, k, vocab, bf16, eps, emb, normF, head, Ptr(ids), b, Ptr(logits!), Ptr(work!)));
                if (UseGraph)
                {
                    DestroyGraph();
                    int err;
                    graph = x.GraphCreate(L, nLayers, dm, dIn, n, r, k, vocab, bf16, eps, emb, normF, head, Ptr(ids), b, Ptr(logits!), Ptr(work!), &err);
                    if (err == 0) graphKey = key;
                    else
                    {
                        // A driver or setup that cannot capture (e.g. an old driver) still decodes, one launch per kernel.
                        graph = IntPtr.Zero;
                        UseGraph = false;
                        GraphError = CudaLib.Error(err);
                    }
                }
            }
        }
        return logits!.clone();
    }

    static IntPtr Ptr(Tensor t) => TensorPointer.Of(t);

    void Allocate(int b)
    {
        DestroyGraph();
        ids?.Dispose(); logits?.Dispose(); work?.Dispose();
        var dev = model.backbone.embeddings.weight!.device;
        ids = torch.zeros(b, ScalarType.Int64, dev);
        logits = torch.zeros(new long[] { b, vocab }, ScalarType.Float32, dev);
        work = torch.zeros(Exports.Value!.WorkFloats(b, dm, dIn, n, r), ScalarType.Float32, dev);
    }

    void DestroyGraph()
    {
        if (graph != IntPtr.Zero) Exports.Value!.GraphDestroy(graph);
        graph = IntPtr.Zero;
        graphKey = null;
    }

    static void Check(int code)
    {
        if (code != 0) throw new InvalidOperationException($"CUDA decode step failed: {CudaLib.Error(code)}");
    }

    public void Dispose()
    {
        DestroyGraph();
        ids?.Dispose(); logits?.Dispose(); work?.Dispose();
        foreach (var t in owned) t.Dispose();
        owned.Clear();
    }

    static readonly Lazy<Native?> Exports = new(Native.TryLoad);

    sealed class Native
    {
        public required delegate* unmanaged<int, int, int, int, int, long> WorkFloats { get; init; }
        public required delegate* unmanaged<IntPtr*, int, int, int, int, int, int, int, int, float, IntPtr, IntPtr, IntPtr, IntPtr, int, IntPtr, IntPtr, int> Step { get; init; }
        public required delegate* unmanaged<IntPtr*, int, int, int, int, int, int, int, int, float, IntPtr, IntPtr, IntPtr, IntPtr, int, IntPtr, IntPtr, int*, IntPtr> GraphCreate { get; init; }
        public required delegate* unmanaged<IntPtr, int> GraphLaunch { get; init; }
        public required delegate* unmanaged<IntPtr, void> GraphDestroy { get; init; }

        public static Native? TryLoad()
        {
            var f = new[] { "ssm_decode_work_floats", "ssm_decode_step", "ssm_decode_graph_create", "ssm_decode_graph_launch", "ssm_decode_graph_destroy" }
                .Select(CudaLib.Export).ToArray();
            if (f.Any(p => p is null)) return null;
            return new Native
            {
                WorkFloats = (delegate* unmanaged<int, int, int, int, int, long>)f[0]!.Value,
                Step = (delegate* unmanaged<IntPtr*, int, int, int, int, int, int, int, int, float, IntPtr, IntPtr, IntPtr, IntPtr, int, IntPtr, IntPtr, int>)f[1]!.Value,
                GraphCreate = (delegate* unmanaged<IntPtr*, int, int, int, int, int, int, int, int, float, IntPtr, IntPtr, IntPtr, IntPtr, int, IntPtr, IntPtr, int*, IntPtr>)f[2]!.Value,
                GraphLaunch = (delegate* unmanaged<IntPtr, int>)f[3]!.Value,
                GraphDestroy = (delegate* unmanaged<IntPtr, void>)f[4]!.Value,
            };
        }
    }
}
