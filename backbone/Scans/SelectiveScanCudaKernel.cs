// The fused CUDA kernels of the selective scan core, wired into autograd:
//   tiled (backbone/Native/cuda/selective_scan_tiled.cu): n <= 32 with channel groups of a multiple of 32 (every
//     Mamba-1 model); float32 or bfloat16 activations with float32 parameters, states and arithmetic; B and C in
//     mamba_ssm's (b, g, n, l) layout, so a contiguous B costs no copy; the forward saves the state every 16 steps
//     when a backward will follow, and the backward recomputes the rest.
//   warp (backbone/Native/cuda/selective_scan.cu): any n <= 256, float32, B and C as (b, g, l, n); the backward
//     recomputes every state.
// Without a backward to follow (inference, or no input requiring grad) Apply launches the forward directly: the
// autograd function's bookkeeping costs more host time than the kernel itself on short sequences.
// Same contract as SelectiveScanCpuKernel: one pass computes Δ (bias, softplus), the scan, C·h, the D skip and the z
// gate with each channel's state in registers, so the expanded state (b, d, l, n) never reaches device memory.
// The kernels live in libssm_cuda.so (Native.CudaLib); without it SelectiveScan uses the tensor-op path.
using TorchSharp;
using static TorchSharp.torch;
using Ssm.Backbone.Native;
using static Ssm.Backbone.Native.TensorPointer;

namespace Ssm.Backbone.Scans;

internal sealed unsafe class SelectiveScanCudaKernel : torch.autograd.MultiTensorFunction<SelectiveScanCudaKernel>
{
    public override string Name => "SelectiveScanCuda";

    static readonly Lazy<Exports?> Lib = new(Exports.TryLoad);

    /// <summary>Whether libssm_cuda.so was found and loaded (and why not, otherwise).</summary>
    public static bool Available => Lib.Value is not null;
    public static string Status => Lib.Value is not null ? CudaLib.Status : CudaLib.Available ? "libssm_cuda.so lacks the scan exports (rebuild it)" : CudaLib.Status;

    /// <summary>Whether the tiled kernel takes these sizes (and so bfloat16 inputs without a float32 copy).</summary>
    public static bool TiledFits(long d, long n, long g) => Lib.Value is { } lib && lib.TiledFits((int)d, (int)n, (int)g) != 0;

    /// <summary>
    /// u, deltaRaw, z (b d l), B, C (b g n l): float32, or bfloat16 when <see cref="TiledFits"/>; A (d n), D, deltaBias (d)
    /// float32. Returns y (b d l) in u's dtype and the last state (b d n) in float32.
    /// </summary>
    public static (Tensor y, Tensor last) Apply(Tensor u, Tensor deltaRaw, Tensor A, Tensor B, Tensor C,
        Tensor? D, Tensor? z, Tensor? deltaBias, bool softplus)
    {
        if (!Available) throw new InvalidOperationException($"the fused CUDA scan is not available: {Status}");
        if (u.device_type != DeviceType.CUDA || (u.dtype != ScalarType.Float32 && u.dtype != ScalarType.BFloat16))
            throw new ArgumentException("the CUDA selective-scan kernel runs on float32 or bfloat16 CUDA tensors");
        using var none = torch.empty(0, ScalarType.Float32, u.device);
        bool saveStates = torch.is_grad_enabled() && new[] { u, deltaRaw, A, B, C, D, z, deltaBias }.Any(t => t is not null && t.requires_grad);
        if (!saveStates)
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var run = Run(u, deltaRaw, A, B, C, D ?? none, z ?? none, deltaBias ?? none, softplus, save: false);
            return (run.y.to_type(u.dtype).MoveToOuterDisposeScope(), run.last.MoveToOuterDisposeScope());
        }
        var outs = FusedFunctionTensors.Apply(() => apply(u, deltaRaw, A, B, C, D ?? none, z ?? none, deltaBias ?? none, softplus, saveStates));
        return (outs[0], outs[1]);
    }

    /// <summary>The forward kernel on contiguous inputs in the kernel's dtypes (what the backward needs is returned too).</summary>
    sealed record Launched(Tensor y, Tensor last, bool tiled, List<Tensor> saved);

    static Launched Run(Tensor u0, Tensor deltaRaw, Tensor A0, Tensor B0, Tensor C0, Tensor D0, Tensor z0, Tensor bias0, bool softplus, bool save)
    {
        var lib = Lib.Value!;
        var A = A0.contiguous();
        int b = (int)u0.shape[0], d = (int)u0.shape[1], l = (int)u0.shape[2], n = (int)A.shape[1], g = (int)B0.shape[1];
        bool tiled = lib.TiledFits(d, n, g) != 0;
        // The warp kernel is float32 only, with B and C as (b g l n); the tiled one reads every activation in u's dtype
        // and B, C as they come, (b g n l).
        var act = tiled ? u0.dtype : ScalarType.Float32;
        var u = u0.to_type(act).contiguous();
        var delta = deltaRaw.to_type(act).contiguous();
        var B = tiled ? B0.to_type(act).contiguous() : B0.to_type(act).transpose(2, 3).contiguous();
        var C = tiled ? C0.to_type(act).contiguous() : C0.to_type(act).transpose(2, 3).contiguous();
        var D = D0.contiguous();
        var z = z0.numel() == 0 ? z0.contiguous() : z0.to_type(act).contiguous();
        var bias = bias0.contiguous();
        var y = torch.empty_like(u);
        var last = torch.empty(new long[] { b, d, n }, ScalarType.Float32, u.device);
        Tensor ck;
        if (tiled)
        {
            ck = save ? torch.empty(lib.CkFloats(b, d, l, n), ScalarType.Float32, u.device) : torch.empty(0, ScalarType.Float32, u.device);
            Check(lib.TiledFwd(act == ScalarType.BFloat16 ? 1 : 0, P(u), P(delta), F(A), P(B), P(C), F(D), P(z), F(bias),
                softplus ? 1 : 0, P(y), F(last), F(ck), b, d, l, n, g));
        }
        else
        {
            ck = torch.empty(0, ScalarType.Float32, u.device);
            Check(lib.Fwd(F(u), F(delta), F(A), F(B), F(C), F(D), F(z), F(bias), softplus ? 1 : 0, F(y), F(last), b, d, l, n, g));
        }
        return new Launched(y, last, tiled, new List<Tensor> { u, delta, A, B, C, D, z, bias, ck });
    }

    public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
    {
        FusedFunctionTensors.Release();
        using var noGrad = torch.no_grad();
        bool softplus = (bool)vars[8], save = (bool)vars[9];
        var run = Run((Tensor)vars[0], (Tensor)vars[1], (Tensor)vars[2], (Tensor)vars[3], (Tensor)vars[4], (Tensor)vars[5],
            (Tensor)vars[6], (Tensor)vars[7], softplus, save);
        if (save) ctx.save_for_backward(run.saved);
        var outY = run.y.to_type(((Tensor)vars[0]).dtype);
        FusedFunctionTensors.Track(run.saved.Append(run.y).Append(outY).Append(run.last).ToArray());
        ctx.save_data("softplus", softplus);
        ctx.save_data("tiled", run.tiled);
        ctx.save_data("dtypes", new[] { ((Tensor)vars[0]).dtype, ((Tensor)vars[1]).dtype, ((Tensor)vars[3]).dtype, ((Tensor)vars[4]).dtype, ((Tensor)vars[6]).dtype });
        ctx.set_materialize_grads(false);
        return new List<Tensor> { outY, run.last };
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        FusedFunctionTensors.Release();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var s = ctx.get_saved_variables();
        if (s.Count == 0) throw new InvalidOperationException("the CUDA selective scan ran without saving states: call it with grad enabled for a backward");
        // B, C: (b g n l) for the tiled kernel, (b g l n) for the warp kernel; their gradients come in the same layout.
        Tensor u = s[0], delta = s[1], A = s[2], Bk = s[3], Ck = s[4], D = s[5], z = s[6], bias = s[7], ck = s[8];
        bool softplus = (bool)ctx.get_data("softplus"), tiled = (bool)ctx.get_data("tiled");
        var dtypes = (ScalarType[])ctx.get_data("dtypes");
        int b = (int)u.shape[0], d = (int)u.shape[1], l = (int)u.shape[2], n = (int)A.shape[1], g = (int)Bk.shape[1];
        var gy = (grads[0] is { IsInvalid: false } g0 && g0.numel() > 0 ? g0.to_type(u.dtype) : torch.zeros_like(u)).contiguous();
        var gLast = (grads[1] is { IsInvalid: false } g1 && g1.numel() > 0 ? g1 : torch.zeros(new long[] { b, d, n }, ScalarType.Float32, u.device)).contiguous();
        var gu = torch.empty_like(u);
        var gdelta = torch.empty_like(u);
        var gz = torch.empty_like(z);
        var gA = torch.zeros_like(A);
        var gD = torch.zeros_like(D);
        var gbias = torch.zeros_like(bias);
        var gB = torch.zeros(Bk.shape, ScalarType.Float32, u.device);                 // accumulated by atomics: float32
        var gC = torch.zeros(Ck.shape, ScalarType.Float32, u.device);
        if (tiled)
            Check(Lib.Value!.TiledBwd(u.dtype == ScalarType.BFloat16 ? 1 : 0, P(u), P(delta), F(A), P(Bk), P(Ck), F(D), P(z), F(bias),
                softplus ? 1 : 0, F(ck), P(gy), F(gLast), P(gu), P(gdelta), F(gA), F(gB), F(gC), F(gD), P(gz), F(gbias), b, d, l, n, g));
        else
        {
            using var scratch = torch.empty(Lib.Value!.ScratchFloats(b, d, l, n), ScalarType.Float32, u.device);
            Check(Lib.Value.Bwd(F(u), F(delta), F(A), F(Bk), F(Ck), F(D), F(z), F(bias), softplus ? 1 : 0, F(gy), F(gLast),
                F(gu), F(gdelta), F(gA), F(gB), F(gC), F(gD), F(gz), F(gbias), F(scratch), b, d, l, n, g));
            gB = gB.transpose(2, 3);
            gC = gC.transpose(2, 3);
        }
        Tensor? Present(Tensor grad, Tensor input) => input.numel() == 0 ? null : grad;
        var result = new List<Tensor>
        {
            gu.to_type(dtypes[0]), gdelta.to_type(dtypes[1]), gA,
            gB.to_type(dtypes[2]), gC.to_type(dtypes[3]),
            Present(gD, D)!, z.numel() == 0 ? null! : gz.to_type(dtypes[4]), Present(gbias, bias)!, null!, null!,
        };
        return FusedFunctionTensors.Keep(result, grads);
    }

    static void Check(int code)
    {
        if (code != 0) throw new InvalidOperationException($"CUDA selective scan failed: {CudaLib.Error(code)}");
    }

    /// <summary>The scan's exports of libssm_cuda.so (null when the library or any export is missing).</summary>
    sealed class Exports
    {
        public required delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*, int, int, int, int, int, int> Fwd { get; init; }
        public required delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*,
            float*, float*, float*, float*, float*, float*, float*, float*, float*, int, int, int, int, int, int> Bwd { get; init; }
        public required delegate* unmanaged<int, int, int, int, long> ScratchFloats { get; init; }
        public required delegate* unmanaged<int, int, int, int> TiledFits { get; init; }
        public required delegate* unmanaged<int, int, int, int, long> CkFloats { get; init; }
        public required delegate* unmanaged<int, void*, void*, float*, void*, void*, float*, void*, float*, int, void*, float*, float*,
            int, int, int, int, int, int> TiledFwd { get; init; }
        public required delegate* unmanaged<int, void*, void*, float*, void*, void*, float*, void*, float*, int, float*, void*, float*,
            void*, void*, float*, float*, float*, float*, void*, float*, int, int, int, int, int, int> TiledBwd { get; init; }

        public static Exports? TryLoad()
        {
            var names = new[] { "ssm_scan_fwd", "ssm_scan_bwd", "ssm_scan_bwd_scratch_floats", "ssm_scan_tiled_fits",
                "ssm_scan_tiled_ck_floats", "ssm_scan_tiled_fwd", "ssm_scan_tiled_bwd" };
            var f = names.Select(CudaLib.Export).ToArray();
            if (f.Any(x => x is null)) return null;
            return new Exports
            {
                Fwd = (delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*, int, int, int, int, int, int>)f[0]!.Value,
                Bwd = (delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*,
                    float*, float*, float*, float*, float*, float*, float*, float*, float*, int, int, int, int, int, int>)f[1]!.Value,
                ScratchFloats = (delegate* unmanaged<int, int, int, int, long>)f[2]!.Value,
                TiledFits = (delegate* unmanaged<int, int, int, int>)f[3]!.Value,
                CkFloats = (delegate* unmanaged<int, int, int, int, long>)f[4]!.Value,
                TiledFwd = (delegate* unmanaged<int, void*, void*, float*, void*, void*, float*, void*, float*, int, void*, float*, float*,
                    int, int, int, int, int, int>)f[5]!.Value,
                TiledBwd = (delegate* unmanaged<int, void*, void*, float*, void*, void*, float*, void*, float*, int, float*, void*, float*,
                    void*, void*, float*, float*, float*, float*, void*, float*, int, int, int, int, int, int>)f[6]!.Value,
            };
        }
    }
}
