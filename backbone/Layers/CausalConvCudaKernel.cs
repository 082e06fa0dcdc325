// The fused causal depthwise conv1d + SiLU on CUDA (backbone/Native/cuda/causal_conv1d.cu), wired into autograd: the
// same result as silu(CausalConv.Forward(conv, x)) in one pass over the activations. x (b, c, l) float32 or bfloat16;
// the weight (c, 1, k) and bias (c) are read in float32 whatever their dtype; y comes in x's dtype. The backward
// recomputes the pre-activation instead of saving it. Without a backward to follow it launches the kernel directly.
using TorchSharp;
using static TorchSharp.torch;
using Ssm.Backbone.Native;
using static Ssm.Backbone.Native.TensorPointer;

namespace Ssm.Backbone.Layers;

internal sealed unsafe class CausalConvCudaKernel : torch.autograd.MultiTensorFunction<CausalConvCudaKernel>
{
    public override string Name => "CausalConvSiluCuda";

    static readonly Lazy<Exports?> Lib = new(Exports.TryLoad);

    /// <summary>Whether libssm_cuda.so with the conv exports is loaded.</summary>
    public static bool Available => Lib.Value is not null;

    /// <summary>Whether the fused kernel takes this input (CUDA, float32 or bfloat16, kernel width 1..8, l below the
    /// kernel's grid limit of 65,535 tiles of 2,048 steps).</summary>
    public static bool Takes(Tensor x, Tensor weight)
        => Available && x.device_type == DeviceType.CUDA && (x.dtype == ScalarType.Float32 || x.dtype == ScalarType.BFloat16)
           && x.dim() == 3 && x.shape[2] > 0 && x.shape[2] <= 65535L * 2048 && x.shape[0] * x.shape[1] <= int.MaxValue
           && weight.device_type == DeviceType.CUDA && Lib.Value!.Fits((int)weight.shape[^1]) != 0;

    /// <summary>silu(causal depthwise conv(x)): x (b c l), weight (c 1 k), bias (c) or null.</summary>
    public static Tensor Apply(Tensor x, Tensor weight, Tensor? bias)
    {
        bool grad = torch.is_grad_enabled() && (x.requires_grad || weight.requires_grad || (bias?.requires_grad ?? false));
        using var none = torch.empty(0, ScalarType.Float32, x.device);
        if (!grad)
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            return Run(x, weight, bias ?? none).y.MoveToOuterDisposeScope();
        }
        return FusedFunctionTensors.Apply(() => apply(x, weight, bias ?? none))[0];
    }

    static (Tensor y, Tensor x, Tensor w, Tensor bias) Run(Tensor x0, Tensor weight, Tensor bias0)
    {
        var x = x0.contiguous();
        int b = (int)x.shape[0], c = (int)x.shape[1], l = (int)x.shape[2], k = (int)weight.shape[^1];
        var w = weight.detach().reshape(c, k).to_type(ScalarType.Float32).contiguous();
        var bias = bias0.numel() == 0 ? bias0 : bias0.detach().to_type(ScalarType.Float32).contiguous();
        var y = torch.empty_like(x);
        Check(Lib.Value!.Fwd(x.dtype == ScalarType.BFloat16 ? 1 : 0, P(x), F(w), F(bias), P(y), b, c, l, k));
        return (y, x, w, bias);
    }

    public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
    {
        FusedFunctionTensors.Release();
        using var noGrad = torch.no_grad();
        Tensor weight = (Tensor)vars[1], bias = (Tensor)vars[2];
        var run = Run((Tensor)vars[0], weight, bias);
        ctx.save_for_backward(new List<Tensor> { run.x, run.w, run.bias });
        FusedFunctionTensors.Track(run.x, run.w, run.y);
        if (!ReferenceEquals(run.bias, bias)) FusedFunctionTensors.Track(run.bias);   // an absent bias is the caller's own empty tensor
        ctx.save_data("weight", (weight.shape, weight.dtype));
        ctx.save_data("bias", bias.dtype);
        ctx.set_materialize_grads(false);
        return new List<Tensor> { run.y };
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        FusedFunctionTensors.Release();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var s = ctx.get_saved_variables();
        Tensor x = s[0], w = s[1], bias = s[2];
        var (wShape, wType) = ((long[], ScalarType))ctx.get_data("weight");
        var bType = (ScalarType)ctx.get_data("bias");
        int b = (int)x.shape[0], c = (int)x.shape[1], l = (int)x.shape[2], k = (int)w.shape[1];
        var gy = (grads[0] is { IsInvalid: false } g0 && g0.numel() > 0 ? g0.to_type(x.dtype) : torch.zeros_like(x)).contiguous();
        var gx = torch.empty_like(x);
        var gw = torch.zeros(new long[] { c, k }, ScalarType.Float32, x.device);
        var gb = torch.zeros(new long[] { bias.numel() == 0 ? 0 : c }, ScalarType.Float32, x.device);
        Check(Lib.Value!.Bwd(x.dtype == ScalarType.BFloat16 ? 1 : 0, P(x), F(w), F(bias), P(gy), P(gx), F(gw), F(gb), b, c, l, k));
        var result = new List<Tensor> { gx, gw.reshape(wShape).to_type(wType), bias.numel() == 0 ? null! : gb.to_type(bType) };
        return FusedFunctionTensors.Keep(result, grads);
    }

    static void Check(int code)
    {
        if (code != 0) throw new InvalidOperationException($"CUDA causal conv1d + SiLU failed: {CudaLib.Error(code)}");
    }

    /// <summary>The conv exports of libssm_cuda.so (null when the library or any export is missing).</summary>
    sealed class Exports
    {
        public required delegate* unmanaged<int, int> Fits { get; init; }
        public required delegate* unmanaged<int, void*, float*, float*, void*, int, int, int, int, int> Fwd { get; init; }
        public required delegate* unmanaged<int, void*, float*, float*, void*, void*, float*, float*, int, int, int, int, int> Bwd { get; init; }

        public static Exports? TryLoad()
        {
            var f = new[] { "ssm_conv_silu_fits", "ssm_conv_silu_fwd", "ssm_conv_silu_bwd" }.Select(CudaLib.Export).ToArray();
            if (f.Any(x => x is null)) return null;
            return new Exports
            {
                Fits = (delegate* unmanaged<int, int>)f[0]!.Value,
                Fwd = (delegate* unmanaged<int, void*, float*, float*, void*, int, int, int, int, int>)f[1]!.Value,
                Bwd = (delegate* unmanaged<int, void*, float*, float*, void*, void*, float*, float*, int, int, int, int, int>)f[2]!.Value,
            };
        }
    }
}
