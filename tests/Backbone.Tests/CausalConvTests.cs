using Ssm.Backbone.Layers;
using TorchSharp;
using static TorchSharp.torch;
using static Ssm.Tests.TestUtil;

namespace Backbone.Tests;

// CausalConv.ForwardSilu (the Mamba blocks' convolution; one fused kernel on CUDA, tensor ops elsewhere) against the
// definition written as a float64 loop: y[b,c,t] = silu(bias[c] + sum_i w[c,0,i] x[b,c,t-k+1+i]), x = 0 before t = 0.
public class CausalConvTests
{
    static Tensor Loop(Tensor x, Tensor w, Tensor? bias)
    {
        long b = x.shape[0], c = x.shape[1], l = x.shape[2], k = w.shape[2];
        var xs = x.to(ScalarType.Float64).data<double>().ToArray();
        var ws = w.to(ScalarType.Float64).data<double>().ToArray();
        var bs = bias?.to(ScalarType.Float64).data<double>().ToArray();
        var y = new double[b * c * l];
        for (long bi = 0; bi < b; bi++)
            for (long ci = 0; ci < c; ci++)
                for (long t = 0; t < l; t++)
                {
                    double a = bs?[ci] ?? 0;
                    for (long i = 0; i < k; i++)
                    {
                        long s = t - k + 1 + i;
                        if (s >= 0) a += ws[ci * k + i] * xs[(bi * c + ci) * l + s];
                    }
                    y[(bi * c + ci) * l + t] = a / (1 + Math.Exp(-a));
                }
        return torch.tensor(y, new[] { b, c, l }, ScalarType.Float64);
    }

    [Theory]
    [InlineData(4, true, 37)]
    [InlineData(3, false, 9)]
    [InlineData(1, true, 5)]
    [InlineData(4, true, 2)]      // shorter than the kernel
    public void ForwardSiluMatchesTheDefinition(long k, bool bias, long l)
    {
        torch.manual_seed(300 + k * 10 + l);
        var x = torch.randn(2, 5, l, ScalarType.Float64);
        var w = torch.randn(5, 1, k, ScalarType.Float64);
        var b = bias ? torch.randn(5, ScalarType.Float64) : null;
        Close(CausalConv.ForwardSilu(x, w, b), Loop(x, w, b), 1e-12, "causal conv + SiLU");
    }

    [Fact]
    public void ModuleOverloadUsesItsParameters()
    {
        torch.manual_seed(31);
        using var conv = CausalConv.Create(6, 4, bias: true);
        var x = torch.randn(3, 6, 20);
        Close(CausalConv.ForwardSilu(conv, x), CausalConv.ForwardSilu(x, conv.weight!, conv.bias), 0, "module overload");
        Close(CausalConv.ForwardSilu(conv, x), nn.functional.silu(CausalConv.Forward(conv, x)), 1e-6, "module path");
    }
}
