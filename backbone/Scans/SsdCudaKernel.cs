// The fused CUDA kernels of the SSD chunk scan's diagonal blocks (backbone/Native/cuda/ssd_chunk_scan.cu), wired into
// autograd: Y = (CB exp(Acs_l - Acs_s) [s <= l]) xdt + exp(Acs_l) off per (batch, chunk, head), the step of
// Ssd.ChunkScan that otherwise materialises two (Q, Q) matrices per head, with step 4's row factor and the sum of the
// two parts in its epilogue. The backward is three more kernels (dxdt through the transposed weights; dCB and dAcs from
// dY xdt^T; doff and the rest of dAcs), so neither pass writes a (Q, Q) matrix per head. Without a backward to follow
// the forward is launched directly. The products around it (CB = C B^T, the chunk states, the state outputs C . state
// that come in as off), the cumulative sums and the inter-chunk recurrence stay tensor ops, and autograd carries the
// gradients through them.
using TorchSharp;
using static TorchSharp.torch;
using Ssm.Backbone.Native;
using static Ssm.Backbone.Native.TensorPointer;

namespace Ssm.Backbone.Scans;

internal sealed unsafe class SsdCudaKernel : torch.autograd.MultiTensorFunction<SsdCudaKernel>
{
    public override string Name => "SsdDiagCuda";

    static readonly Lazy<Exports?> Lib = new(Exports.TryLoad);

    /// <summary>Whether libssm_cuda.so with the SSD exports is loaded.</summary>
    public static bool Available => Lib.Value is not null;

    /// <summary>Whether the kernels take these float32 CUDA operands: no empty dimension (an empty sequence has no
    /// chunk), and the grid limits (b h ceil(p / 64), b g and c at most 65,535).</summary>
    public static bool Takes(Tensor xdt, long b, long c, long h, long g, long p)
        => Available && xdt.device_type == DeviceType.CUDA && xdt.dtype == ScalarType.Float32
           && b >= 1 && c >= 1 && h >= 1 && g >= 1 && p >= 1
           && b * h * ((p + 63) / 64) <= 65535 && b * g <= 65535 && c <= 65535;

    /// <summary>
    /// Y[l] = sum_{s &lt;= l} CB[l, s] exp(Acs[l] - Acs[s]) xdt[s] (+ exp(Acs[l]) off[l]) for every (batch, chunk, head).
    /// CB (b, g, c, Q, Q), Acs (b, g, r, c, Q), xdt and off (b, c, Q, g, r, p), all float32 on one CUDA device; off may
    /// be null. Returns (b, c, Q, g, r, p) float32, differentiable in every input.
    /// </summary>
    public static Tensor Diag(Tensor CB, Tensor Acs, Tensor xdt, Tensor? off = null)
    {
        if (!Available) throw new InvalidOperationException("libssm_cuda.so with the SSD kernels is not loaded");
        using var none = torch.empty(0, ScalarType.Float32, xdt.device);
        bool grad = torch.is_grad_enabled() && (CB.requires_grad || Acs.requires_grad || xdt.requires_grad || (off?.requires_grad ?? false));
        if (!grad)
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            return Forward(CB.contiguous(), Acs.contiguous(), xdt.contiguous(), off?.contiguous() ?? none).MoveToOuterDisposeScope();
        }
        return FusedFunctionTensors.Apply(() => apply(CB, Acs, xdt, off ?? none))[0];
    }

    /// <summary>Whether <see cref="FinalForward"/> takes x and z: float32 or bfloat16, z absent or of x's dtype.</summary>
    public static bool TakesFinal(Tensor x, Tensor? z)
        => Lib.Value?.FwdFinal is not null && (x.dtype == ScalarType.Float32 || x.dtype == ScalarType.BFloat16)
           && (z is null || z.dtype == x.dtype);

    /// <summary>
    /// Inference only (no autograd): the chunk's output as <see cref="Diag"/> computes it, finished in the same kernel:
    /// (Y + D x) silu(z) in x's dtype, (b, l, h, p), the padding rows dropped. x, z (b, l, h, p); D (h) or (h, p) or null.
    /// </summary>
    public static Tensor FinalForward(Tensor CB, Tensor Acs, Tensor xdt, Tensor off, Tensor x, Tensor? z, Tensor? D)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var (b, c, Q, g, r, p) = Dims(xdt);
        var cb = CB.contiguous();
        var acs = Acs.contiguous();
        var xd = xdt.contiguous();
        var o = off.contiguous();
        var xi = x.contiguous();
        var zi = z?.contiguous();
        var d = D?.to_type(ScalarType.Float32).contiguous();
        var outp = torch.empty(x.shape, x.dtype, x.device);
        Check(Lib.Value!.FwdFinal(F(cb), F(acs), F(xd), F(o), x.dtype == ScalarType.BFloat16 ? 1 : 0, P(xi), P(zi),
            F(d), d is not null && d.dim() == 2 ? 1 : 0, P(outp), b, c, Q, (int)x.shape[1], g * r, g, p));
        return outp.MoveToOuterDisposeScope();
    }

    static Tensor Forward(Tensor CB, Tensor Acs, Tensor xdt, Tensor off)
    {
        var (b, c, Q, g, r, p) = Dims(xdt);
        var y = torch.empty(xdt.shape, ScalarType.Float32, xdt.device);
        Check(Lib.Value!.Fwd(F(CB), F(Acs), F(xdt), F(off), F(y), b, c, Q, g * r, g, p));
        return y;
    }

    static (int b, int c, int Q, int g, int r, int p) Dims(Tensor xdt)
        => ((int)xdt.shape[0], (int)xdt.shape[1], (int)xdt.shape[2], (int)xdt.shape[3], (int)xdt.shape[4], (int)xdt.shape[5]);

    public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
    {
        FusedFunctionTensors.Release();
        using var noGrad = torch.no_grad();
        var CB = ((Tensor)vars[0]).contiguous();
        var Acs = ((Tensor)vars[1]).contiguous();
        var xdt = ((Tensor)vars[2]).contiguous();
        var off = ((Tensor)vars[3]).contiguous();
        var y = Forward(CB, Acs, xdt, off);
        ctx.save_for_backward(new List<Tensor> { CB, Acs, xdt, off });
        FusedFunctionTensors.Track(CB, Acs, xdt, off, y);
        ctx.set_materialize_grads(false);
        return new List<Tensor> { y };
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        FusedFunctionTensors.Release();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var s = ctx.get_saved_variables();
        Tensor CB = s[0], Acs = s[1], xdt = s[2], off = s[3];
        var (b, c, Q, g, r, p) = Dims(xdt);
        var dY = (grads[0] is { IsInvalid: false } g0 && g0.numel() > 0 ? g0.to_type(ScalarType.Float32) : torch.zeros_like(xdt)).contiguous();
        var CBT = CB.transpose(-1, -2).contiguous();
        var dX = torch.empty_like(xdt);
        var dCB = torch.zeros_like(CB);                                   // tiles above the diagonal stay zero
        var dAcs = torch.zeros_like(Acs);                                 // gathered by atomic adds
        var dOff = off.numel() == 0 ? off : torch.empty_like(off);
        Check(Lib.Value!.Bwd(F(CB), F(CBT), F(Acs), F(xdt), F(off), F(dY), F(dX), F(dCB), F(dAcs), F(dOff), b, c, Q, g * r, g, p));
        return FusedFunctionTensors.Keep(new List<Tensor> { dCB, dAcs, dX, off.numel() == 0 ? null! : dOff }, grads);
    }

    static void Check(int code)
    {
        if (code != 0) throw new InvalidOperationException($"CUDA SSD chunk scan failed: {CudaLib.Error(code)}");
    }

    /// <summary>The SSD exports of libssm_cuda.so (null when the library or either export is missing).</summary>
    sealed class Exports
    {
        public required delegate* unmanaged<float*, float*, float*, float*, float*, int, int, int, int, int, int, int> Fwd { get; init; }
        public required delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, float*, float*, int, int, int, int, int, int, int> Bwd { get; init; }
        // Optional (a build without it keeps the tensor-op skip and gate).
        public delegate* unmanaged<float*, float*, float*, float*, int, void*, void*, float*, int, void*, int, int, int, int, int, int, int, int> FwdFinal { get; init; }

        public static Exports? TryLoad()
        {
            var f = new[] { "ssm_ssd_chunk_fwd", "ssm_ssd_chunk_bwd" }.Select(CudaLib.Export).ToArray();
            if (f.Any(x => x is null)) return null;
            return new Exports
            {
                Fwd = (delegate* unmanaged<float*, float*, float*, float*, float*, int, int, int, int, int, int, int>)f[0]!.Value,
                Bwd = (delegate* unmanaged<float*, float*, float*, float*, float*, float*, float*, float*, float*, float*, int, int, int, int, int, int, int>)f[1]!.Value,
                FwdFinal = CudaLib.Export("ssm_ssd_chunk_fwd_final") is IntPtr ff
                    ? (delegate* unmanaged<float*, float*, float*, float*, int, void*, void*, float*, int, void*, int, int, int, int, int, int, int, int>)ff : null,
            };
        }
    }
}
