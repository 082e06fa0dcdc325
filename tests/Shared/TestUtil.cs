using TorchSharp;
using static TorchSharp.torch;

// Linked into every test project (with a global using of Ssm.Tests): the numeric comparisons all tests share.
namespace Ssm.Tests;

/// <summary>Helpers shared by the tests of every library.</summary>
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

    /// <summary>max |a - b| / max |b| over plain arrays (b the reference, assumed not all zero).</summary>
    public static double RelErr(double[] a, double[] b)
    {
        Assert.Equal(b.Length, a.Length);
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++)
        {
            num = Math.Max(num, Math.Abs(a[i] - b[i]));
            den = Math.Max(den, Math.Abs(b[i]));
        }
        return num / Math.Max(den, 1e-300);
    }

    public static void Close(Tensor actual, Tensor expected, double tol, string what = "")
    {
        double e = RelErr(actual, expected);
        Assert.True(e <= tol, $"{what} relative error {e:E3} > {tol:E1}");
    }
}
