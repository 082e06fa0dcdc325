using TorchSharp;
using static TorchSharp.torch;

namespace Backbone.Tests;

/// <summary>Helpers shared by the backbone tests.</summary>
static class TestUtil
{
    /// <summary>max |a - b| / max |b|, computed in float64.</summary>
    public static double RelErr(Tensor a, Tensor b)
    {
        using var scope = torch.NewDisposeScope();
        var a64 = a.detach().to_type(ScalarType.Float64).cpu();
        var b64 = b.detach().to_type(ScalarType.Float64).cpu();
        Assert.Equal(b64.shape, a64.shape);
        double den = b64.abs().max().item<double>();
        Assert.True(den > 0, "reference is all zeros: the comparison would prove nothing");
        return (a64 - b64).abs().max().item<double>() / den;
    }

    public static void Close(Tensor actual, Tensor expected, double tol, string what = "")
    {
        double e = RelErr(actual, expected);
        Assert.True(e <= tol, $"{what} relative error {e:E3} > {tol:E1}");
    }
}
