// What the bf16 training tests of every domain check about a model's dtypes (linked into the Vision, Audio and
// Genomics test projects).
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Tests;

/// <summary>What the bf16 tests of every domain check about a model's dtypes.</summary>
static class Bf16Check
{
    /// <summary>The SSM parameters the references keep in float32, by name (written out here, not taken from the library).</summary>
    public static bool IsSsmParameter(string name)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return last is "A_log" or "A_b_log" or "A_logs" or "D" or "D_b" or "Ds" or "dt_projs_bias" or "log_dt" or "log_A_real" or "A_imag"
            || name.EndsWith("dt_proj.bias") || name.EndsWith("dt_proj_b.bias") || name.EndsWith("kernel.C");
    }

    /// <summary>
    /// Asserts mixed precision: every SSM parameter float32 (and at least one when <paramref name="ssm"/>), every other
    /// weight of a Linear / Conv / Embedding bf16 (at least one), except those <paramref name="alsoFp32"/> names.
    /// </summary>
    public static void AssertMixed(nn.Module model, bool ssm = true, Func<string, bool>? alsoFp32 = null)
    {
        int kept = 0, half = 0;
        foreach (var (name, p) in model.named_parameters())
            if (IsSsmParameter(name)) { Assert.True(p.dtype == ScalarType.Float32, $"{name} is {p.dtype}"); kept++; }
        foreach (var (prefix, m) in model.named_modules())
        {
            if (m is not (Linear or Conv1d or Conv2d or Embedding)) continue;
            foreach (var (n, p) in m.named_parameters(recurse: false))
            {
                string name = prefix.Length == 0 ? n : prefix + "." + n;
                if (IsSsmParameter(name) || alsoFp32?.Invoke(name) == true) continue;
                Assert.True(p.dtype == ScalarType.BFloat16, $"{name} is {p.dtype}");
                half++;
            }
        }
        Assert.True(half > 0, "no bf16 matrix");
        if (ssm) Assert.True(kept > 0, "no SSM parameter found");
    }

    /// <summary>Float32 copies of every parameter, by name.</summary>
    public static Dictionary<string, Tensor> Snapshot(nn.Module model) =>
        model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().to_type(ScalarType.Float32).clone());

    /// <summary>How many parameters differ from a snapshot.</summary>
    public static int Changed(nn.Module model, Dictionary<string, Tensor> before) =>
        model.named_parameters().Count(p => !Same(p.parameter.detach().to_type(ScalarType.Float32), before[p.name]));

    /// <summary>Same shape, dtype and every value.</summary>
    public static bool Same(Tensor a, Tensor b)
    {
        using var eq = a.eq(b);
        using var all = eq.all();
        return a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && all.item<bool>();
    }
}
