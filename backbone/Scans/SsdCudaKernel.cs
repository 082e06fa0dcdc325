// The fused CUDA kernel of the SSD chunk scan's diagonal blocks (backbone/Native/cuda/ssd_chunk_scan.cu), forward only:
// Ssd.ChunkScan calls it when nothing records a gradient (inference, prefill, evaluation) and keeps its tensor-op
// step 1 otherwise, so training runs through autograd as before. Without libssm_cuda.so it is never used.
using TorchSharp;
using static TorchSharp.torch;
using Ssm.Backbone.Native;

namespace Ssm.Backbone.Scans;

internal static unsafe class SsdCudaKernel
{
    static readonly Lazy<IntPtr?> Diag = new(() => CudaLib.Export("ssm_ssd_diag_fwd"));

    /// <summary>Whether libssm_cuda.so with the SSD export is loaded.</summary>
    public static bool Available => Diag.Value is not null;

    /// <summary>Whether the kernel takes these float32 CUDA operands (the grid limits: b h ceil(p / 64) and c at most 65,535).</summary>
    public static bool Takes(Tensor xdt, long b, long c, long h, long p)
        => Available && xdt.device_type == DeviceType.CUDA && xdt.dtype == ScalarType.Float32
           && b * h * ((p + 63) / 64) <= 65535 && c <= 65535;

    /// <summary>
    /// Y_diag[l] = sum_{s &lt;= l} CB[l, s] exp(Acs[l] - Acs[s]) xdt[s] for every (batch, chunk, head).
    /// CB (b, g, c, Q, Q), Acs (b, g, r, c, Q), xdt (b, c, Q, g, r, p), all float32 on one CUDA device.
    /// Returns (b, c, Q, g, r, p) float32.
    /// </summary>
    public static Tensor DiagForward(Tensor CB, Tensor Acs, Tensor xdt)
    {
        long b = xdt.shape[0], c = xdt.shape[1], Q = xdt.shape[2], g = xdt.shape[3], r = xdt.shape[4], p = xdt.shape[5];
        using var scope = torch.NewDisposeScope();
        var cb = CB.contiguous();
        var acs = Acs.contiguous();
        var x = xdt.contiguous();
        var y = torch.empty(xdt.shape, ScalarType.Float32, xdt.device);
        int code = ((delegate* unmanaged<float*, float*, float*, float*, int, int, int, int, int, int, int>)Diag.Value!.Value)(
            F(cb), F(acs), F(x), F(y), (int)b, (int)c, (int)Q, (int)(g * r), (int)g, (int)p);
        if (code != 0) throw new InvalidOperationException($"CUDA SSD chunk scan failed: {CudaLib.Error(code)}");
        return y.MoveToOuterDisposeScope();
    }

    static float* F(Tensor t) => (float*)TensorPointer.Of(t);
}
