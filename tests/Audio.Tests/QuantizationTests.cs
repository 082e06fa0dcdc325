// Mu-law and linear quantisation against the closed-form formulas of state-spaces/s4 (src/dataloaders/audio.py),
// evaluated independently here in float64, and against the analytic error bounds derived in Quantization.cs.
using Ssm.Audio;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio.Tests;

public sealed class QuantizationTests
{
    const double Eps = 0.01;

    static double[] Samples(int seed, int n)
    {
        var rng = new Random(seed);
        var x = new double[n];
        for (int i = 0; i < n; i++)
        {
            // Half uniform in [-1, 1], half log-uniform in magnitude (1e-6 .. 1): mu-law cares about small values.
            double v = i % 2 == 0 ? rng.NextDouble() * 2 - 1 : Math.Pow(10, -6 * rng.NextDouble()) * (rng.Next(2) * 2 - 1);
            x[i] = (float)v;   // values exactly representable in float32, so both sides see the same input
        }
        double[] edges = [-1, 1, 0, 0.5, -0.5, 1e-9, -1e-9];
        edges.CopyTo(x, 0);
        return x;
    }

    static double Compand(double x, double mu) => Math.Sign(x) * Math.Log(1 + mu * Math.Abs(x)) / Math.Log(1 + mu);
    static double Expand(double y, double mu) => Math.Sign(y) * (Math.Pow(1 + mu, Math.Abs(y)) - 1) / mu;
    // The reference's quantize before truncation: u (q - eps) + eps/2 with u = (y + 1)/2.
    static double PreFloor(double y, int q) => (y + 1) / 2 * (q - Eps) + Eps / 2;

    static long[] Longs(Tensor t) => t.data<long>().ToArray();
    static double[] Doubles(Tensor t) => t.to_type(ScalarType.Float64).data<double>().ToArray();

    [Theory]
    [InlineData(8)]
    [InlineData(4)]
    [InlineData(10)]
    public void MuLawEncodeMatchesTheClosedForm(int bits)
    {
        int q = 1 << bits;
        var x = Samples(bits, 20000);
        using var xt = tensor(x.Select(v => (float)v).ToArray());
        using var k = Quantization.MuLawEncode(xt, bits);
        Assert.Equal(ScalarType.Int64, k.dtype);
        var got = Longs(k);
        int nearBoundary = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double pre = PreFloor(Compand(x[i], q - 1), q);
            long want = (long)Math.Floor(pre);
            // float32 arithmetic may land on the other side of a class boundary when the exact value is within ~1e-5 of it.
            if (Math.Abs(pre - Math.Round(pre)) < 1e-4 * q / 256.0) { nearBoundary++; Assert.InRange(got[i], want - 1, want + 1); continue; }
            Assert.True(want == got[i], $"x = {x[i]:R}: class {got[i]}, closed form {want} (pre-floor {pre:R})");
        }
        Assert.True(nearBoundary < x.Length / 100, $"{nearBoundary} samples near a boundary");
        Assert.Equal(q - 1, got[1]);   // x = 1 -> top class
        Assert.Equal(0, got[0]);       // x = -1 -> class 0
        Assert.Equal(q / 2, got[2]);   // x = 0 -> q_zero
    }

    [Theory]
    [InlineData(8)]
    [InlineData(4)]
    [InlineData(10)]
    public void MuLawDecodeMatchesTheClosedForm(int bits)
    {
        int q = 1 << bits;
        using var k = arange(q, dtype: ScalarType.Int64);
        using var x = Quantization.MuLawDecode(k, bits);
        Assert.Equal(ScalarType.Float32, x.dtype);
        var got = Doubles(x);
        for (int c = 0; c < q; c++)
            Assert.True(Math.Abs(Expand(c / (q / 2.0) - 1, q - 1) - got[c]) <= 1e-6, $"class {c}: {got[c]}");
        Assert.Equal(0.0, got[q / 2]);
        Assert.Equal(-1.0, got[0], 6);
    }

    [Theory]
    [InlineData(8)]
    [InlineData(6)]
    [InlineData(12)]
    public void MuLawRoundTripIsWithinTheStepOfTheCompandedGrid(int bits)
    {
        int q = 1 << bits;
        double mu = q - 1, h = (2 + Eps) / (q - Eps);
        Assert.Equal(h, Quantization.StepBound(bits), 15);
        var x = Samples(100 + bits, 20000);
        using var xt = tensor(x, ScalarType.Float64);
        using var k = Quantization.MuLawEncode(xt, bits);
        using var back = Quantization.MuLawDecode(k, bits, ScalarType.Float64);
        var xr = Doubles(back);
        double tightest = 0;
        for (int i = 0; i < x.Length; i++)
        {
            // The companded error is < h; the expansion's slope ln(1+mu)(1+mu)^|y|/mu is largest at the far end of the step.
            double y = Compand(x[i], mu);
            double bound = h * Math.Log(1 + mu) / mu * Math.Pow(1 + mu, Math.Min(1, Math.Abs(y) + h));
            double err = Math.Abs(x[i] - xr[i]);
            Assert.True(err <= bound * (1 + 1e-9), $"x = {x[i]:R}: |x - x'| = {err} > {bound}");
            tightest = Math.Max(tightest, err / bound);
        }
        // Decoding at the bin edge uses most of the allowance somewhere: the bound is not vacuous.
        Assert.True(tightest > 0.5, $"largest error / bound = {tightest}");
    }

    [Theory]
    [InlineData(8)]
    [InlineData(3)]
    [InlineData(16)]
    public void LinearQuantisationMatchesTheClosedFormAndItsBound(int bits)
    {
        int q = 1 << bits;
        double h = (2 + Eps) / (q - Eps);
        var x = Samples(200 + bits, 10000);
        using var xt = tensor(x, ScalarType.Float64);
        using var k = Quantization.LinearEncode(xt, bits);
        using var back = Quantization.LinearDecode(k, bits, ScalarType.Float64);
        var got = Longs(k);
        var xr = Doubles(back);
        for (int i = 0; i < x.Length; i++)
        {
            double pre = PreFloor(x[i], q);
            long want = (long)Math.Floor(pre);
            if (Math.Abs(pre - Math.Round(pre)) > 1e-9) Assert.Equal(want, got[i]);
            Assert.Equal(got[i] / (q / 2.0) - 1, xr[i], 12);
            Assert.True(Math.Abs(x[i] - xr[i]) < h, $"x = {x[i]}: decoded {xr[i]}, bound {h}");
        }
        Assert.Equal(q / 2, got[2]);
        Assert.Equal(0.0, xr[2]);
    }

    [Fact]
    public void ZeroClassAndDispatch()
    {
        Assert.Equal(128L, Quantization.ZeroClass());
        Assert.Equal(256, Quantization.Levels());
        using var z = zeros(3);
        foreach (var kind in Enum.GetValues<AudioQuantization>())
        {
            using var k = Quantization.Encode(z, kind);
            Assert.All(Longs(k), v => Assert.Equal(128L, v));
            using var d = Quantization.Decode(k, kind);
            Assert.All(Doubles(d), v => Assert.Equal(0.0, v));
        }
    }

    [Fact]
    public void ShapeDtypeAndOutOfRangeInputs()
    {
        using var x = tensor(new float[] { -3f, 2f, float.NaN, 0.25f, -0.25f, 1f }).reshape(2, 3);
        using var k = Quantization.MuLawEncode(x);
        Assert.Equal(new long[] { 2, 3 }, k.shape);
        var c = Longs(k);
        Assert.Equal(0, c[0]);     // clamped to -1
        Assert.Equal(255, c[1]);   // clamped to 1
        Assert.Equal(128, c[2]);   // NaN -> 0
        using var half = tensor(new float[] { 0.25f }).to_type(ScalarType.BFloat16);
        using var kh = Quantization.MuLawEncode(half);
        Assert.Equal(c[3], Longs(kh)[0]);
        using var d = Quantization.MuLawDecode(k, dtype: ScalarType.Float64);
        Assert.Equal(ScalarType.Float64, d.dtype);
        using var ints = tensor(new long[] { 1, 2 });
        Assert.Throws<ArgumentException>(() => Quantization.MuLawEncode(ints));
        Assert.Throws<ArgumentOutOfRangeException>(() => Quantization.MuLawEncode(x, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Quantization.LinearEncode(x, 17));
        Assert.Throws<ArgumentException>(() => Quantization.LinearDecode(k, dtype: ScalarType.Int32));
    }

    [Fact]
    public void MinMaxScaleMapsEachRowOntoMinusOneToOne()
    {
        var rng = new Random(5);
        var v = Enumerable.Range(0, 2 * 50).Select(_ => (float)(rng.NextDouble() * 7 - 2)).ToArray();
        using var x = tensor(v).reshape(2, 50);
        using var s = Quantization.MinMaxScale(x);
        var o = s.data<float>().ToArray();
        for (int r = 0; r < 2; r++)
        {
            var row = v.Skip(r * 50).Take(50).ToArray();
            double lo = row.Min(), hi = row.Max();
            for (int i = 0; i < 50; i++)
                Assert.Equal(-1 + 2 * (row[i] - lo) / (hi - lo + 1e-6), o[r * 50 + i], 5);
        }
    }
}
