// The fused CUDA kernel of the selective scan core (backbone/Native/cuda/selective_scan.cu), wired into autograd.
// Same contract as SelectiveScanCpuKernel: one pass computes Δ (bias, softplus), the scan, C·h, the D skip and the z
// gate with each channel's state in registers; the backward recomputes states chunk by chunk instead of storing them.
// The kernels live in libssm_cuda.so, built with nvcc by backbone/Native/cuda/build.sh and loaded at run time from
// $SSM_CUDA_LIB or the app's folder; when it is absent, SelectiveScan falls back to the tensor-op path.
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Scans;

internal sealed unsafe class SelectiveScanCudaKernel : torch.autograd.MultiTensorFunction<SelectiveScanCudaKernel>
{
    public override string Name => "SelectiveScanCuda";

    static readonly Lazy<Native?> Lib = new(Native.TryLoad);

    /// <summary>Whether libssm_cuda.so was found and loaded (and why not, otherwise).</summary>
    public static bool Available => Lib.Value is not null;
    public static string Status => Lib.Value is { } l ? $"loaded from {l.Path}" : Native.LoadError ?? "not loaded";

    public static (Tensor y, Tensor last) Apply(Tensor u, Tensor deltaRaw, Tensor A, Tensor B, Tensor C,
        Tensor? D, Tensor? z, Tensor? deltaBias, bool softplus)
    {
        if (u.device_type != DeviceType.CUDA || u.dtype != ScalarType.Float32)
            throw new ArgumentException("the CUDA selective-scan kernel runs on float32 CUDA tensors");
        using var none = torch.empty(0, u.dtype, u.device);
        var outs = apply(u, deltaRaw, A, B, C, D ?? none, z ?? none, deltaBias ?? none, softplus);
        return (outs[0], outs[1]);
    }

    static float* P(Tensor t) => t.numel() == 0 ? null : (float*)Ssm.Backbone.Native.TensorPointer.Of(t);

    // Why the bookkeeping below: on CUDA, autograd runs backward on its own device thread, where no dispose scope of
    // the caller is active, and TorchSharp's custom-function node keeps its own references to the gradients we return.
    // Our wrappers of those gradients would then hold device memory until the .NET GC finalises them (about 1 GB per
    // training step of a small LM: the OOM this code once hit). So backward frees its temporaries in a scope, and the
    // wrappers it must return are disposed at the next call, when the node has long taken its own references.
    static readonly System.Collections.Concurrent.ConcurrentQueue<Tensor> Returned = new();

    static void ReleaseReturned()
    {
        while (Returned.TryDequeue(out var t)) t.Dispose();
    }

    public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
    {
        ReleaseReturned();
        using var noGrad = torch.no_grad();
        var u = ((Tensor)vars[0]).contiguous();
        var delta = ((Tensor)vars[1]).contiguous();
        var A = ((Tensor)vars[2]).contiguous();
        var Bt = ((Tensor)vars[3]).transpose(2, 3).contiguous();                 // (b g l n)
        var Ct = ((Tensor)vars[4]).transpose(2, 3).contiguous();
        var D = ((Tensor)vars[5]).contiguous();
        var z = ((Tensor)vars[6]).contiguous();
        var bias = ((Tensor)vars[7]).contiguous();
        bool softplus = (bool)vars[8];
        int b = (int)u.shape[0], d = (int)u.shape[1], l = (int)u.shape[2], n = (int)A.shape[1], g = (int)Bt.shape[1];
        var y = torch.empty_like(u);
        var last = torch.empty(new long[] { b, d, n }, u.dtype, u.device);
        Check(Lib.Value!.Fwd(P(u), P(delta), P(A), P(Bt), P(Ct), P(D), P(z), P(bias), softplus ? 1 : 0, P(y), P(last), b, d, l, n, g));
        ctx.save_for_backward(new List<Tensor> { u, delta, A, Bt, Ct, D, z, bias });
        ctx.save_data("softplus", softplus);
        ctx.set_materialize_grads(false);
        return new List<Tensor> { y, last };
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        ReleaseReturned();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var s = ctx.get_saved_variables();
        Tensor u = s[0], delta = s[1], A = s[2], Bt = s[3], Ct = s[4], D = s[5], z = s[6], bias = s[7];
        bool softplus = (bool)ctx.get_data("softplus");
        int b = (int)u.shape[0], d = (int)u.shape[1], l = (int)u.shape[2], n = (int)A.shape[1], g = (int)Bt.shape[1];
        var gy = (grads[0] is { IsInvalid: false } g0 && g0.numel() > 0 ? g0 : torch.zeros_like(u)).contiguous();
        var gLast = (grads[1] is { IsInvalid: false } g1 && g1.numel() > 0 ? g1 : torch.zeros(new long[] { b, d, n }, u.dtype, u.device)).contiguous();
        var gu = torch.empty_like(u);
        var gdelta = torch.empty_like(u);
        var gA = torch.zeros_like(A);
        var gBt = torch.zeros_like(Bt);
        var gCt = torch.zeros_like(Ct);
        var gD = torch.zeros_like(D);
        var gz = torch.empty_like(z);
        var gbias = torch.zeros_like(bias);
        using var scratch = torch.empty(Lib.Value!.ScratchFloats(b, d, l, n), u.dtype, u.device);
        Check(Lib.Value.Bwd(P(u), P(delta), P(A), P(Bt), P(Ct), P(D), P(z), P(bias), softplus ? 1 : 0, P(gy), P(gLast),
            P(gu), P(gdelta), P(gA), P(gBt), P(gCt), P(gD), P(gz), P(gbias), P(scratch), b, d, l, n, g));
        Tensor? Present(Tensor grad, Tensor input) => input.numel() == 0 ? null : grad;
        var result = new List<Tensor>
        {
            gu, gdelta, gA, gBt.transpose(2, 3), gCt.transpose(2, 3),
            Present(gD, D)!, Present(gz, z)!, Present(gbias, bias)!, null!,
        };
        foreach (var t in result)
            if (t is not null) { t.MoveToOuterDisposeScope(); Returned.Enqueue(t); }
        return result;
    }

    static void Check(int code)
    {
        if (code != 0) throw new InvalidOperationException($"CUDA selective scan failed: {Lib.Value!.Error(code)}");
    }

    sealed class Native
    {
        public required string Path { get; init; }
        public required delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*, int, int, int, int, int, int> Fwd { get; init; }
        public required delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*,
            float*, float*, float*, float*, float*, float*, float*, float*, float*, int, int, int, int, int, int> Bwd { get; init; }
        public required delegate* unmanaged<int, int, int, int, long> ScratchFloats { get; init; }
        public required delegate* unmanaged<int, IntPtr> ErrorText { get; init; }

        public string Error(int code) => Marshal.PtrToStringAnsi(ErrorText(code)) ?? $"error {code}";

        public static string? LoadError { get; private set; }

        public static Native? TryLoad()
        {
            var candidates = new List<string>();
            if (Environment.GetEnvironmentVariable("SSM_CUDA_LIB") is { Length: > 0 } env) candidates.Add(env);
            candidates.Add(System.IO.Path.Combine(AppContext.BaseDirectory, "libssm_cuda.so"));
            foreach (var path in candidates)
            {
                if (!File.Exists(path)) continue;
                if (!NativeLibrary.TryLoad(path, out var h)) { LoadError = $"{path} could not be loaded"; continue; }
                try
                {
                    return new Native
                    {
                        Path = path,
                        Fwd = (delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*, int, int, int, int, int, int>)NativeLibrary.GetExport(h, "ssm_scan_fwd"),
                        Bwd = (delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, int, float*, float*,
                            float*, float*, float*, float*, float*, float*, float*, float*, float*, int, int, int, int, int, int>)NativeLibrary.GetExport(h, "ssm_scan_bwd"),
                        ScratchFloats = (delegate* unmanaged<int, int, int, int, long>)NativeLibrary.GetExport(h, "ssm_scan_bwd_scratch_floats"),
                        ErrorText = (delegate* unmanaged<int, IntPtr>)NativeLibrary.GetExport(h, "ssm_cuda_error"),
                    };
                }
                catch (EntryPointNotFoundException e) { LoadError = $"{path}: {e.Message}"; }
            }
            LoadError ??= "libssm_cuda.so not found (set SSM_CUDA_LIB or build it with backbone/Native/cuda/build.sh)";
            return null;
        }
    }
}
