// The diffusion process (backbone/Generation/Diffusion.cs), the weight EMA (Training/Ema.cs) and the sample-quality
// scores (Generation/SampleQuality.cs), each against an independent derivation: closed forms, exact inverses, an
// oracle denoiser whose data distribution is one point, and direct float64 loops.
using Ssm.Backbone.Generation;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Backbone.Tests;

public class DiffusionTests
{
    [Theory]
    [InlineData(NoiseSchedule.Linear, 1000)]
    [InlineData(NoiseSchedule.Linear, 37)]
    [InlineData(NoiseSchedule.Cosine, 1000)]
    [InlineData(NoiseSchedule.Cosine, 50)]
    public void ScheduleMatchesClosedForms(NoiseSchedule schedule, int steps)
    {
        var d = new GaussianDiffusion(steps, schedule);
        for (int t = 0; t < steps; t++)
        {
            double beta = d.Betas[t];
            Assert.InRange(beta, 0, 0.999);
            // alpha-bar as exp(sum log(1 - beta)) (not the running product the class uses)
            double logSum = 0;
            for (int s = 0; s <= t; s++) logSum += Math.Log(1 - d.Betas[s]);
            Assert.Equal(Math.Exp(logSum), d.AlphasCumprod[t], 1e-12);
            // posterior variance of q(x_{t-1} | x_t, x_0) from the precisions of its two Gaussian factors:
            // 1 / (alpha_t / beta_t + 1 / (1 - abar_{t-1})), and beta_t itself... at t = 0 the posterior is exact (0).
            double abarPrev = t == 0 ? 1 : Math.Exp(logSum - Math.Log(1 - beta));
            double expected = t == 0 ? 0 : 1 / ((1 - beta) / beta + 1 / (1 - abarPrev));
            Assert.Equal(expected, d.PosteriorVariance[t], 1e-12);
        }
        if (schedule == NoiseSchedule.Linear)
        {
            // DDPM: 1e-4 .. 0.02 at T = 1000, scaled by 1000 / T.
            Assert.Equal(1e-4 * 1000 / steps, d.Betas[0], 1e-15);
            Assert.Equal(0.02 * 1000 / steps, d.Betas[^1], 1e-15);
        }
        else
        {
            // Where beta is not clipped the product telescopes: abar_t = f(t + 1) / f(0) (Nichol & Dhariwal eq. 17).
            static double F(double u) => Math.Pow(Math.Cos((u + 0.008) / 1.008 * Math.PI / 2), 2);
            for (int t = 0; t < steps; t++)
            {
                if (d.Betas.Take(t + 1).Any(b => b >= 0.999)) break;
                Assert.Equal(F((t + 1.0) / steps) / F(0), d.AlphasCumprod[t], 1e-10);
            }
        }
    }

    [Theory]
    [InlineData(PredictionType.Epsilon)]
    [InlineData(PredictionType.V)]
    public void SplitInvertsTheTarget(PredictionType prediction)
    {
        torch.manual_seed(11);
        var d = new GaussianDiffusion(200, NoiseSchedule.Cosine, prediction);
        using var x0 = torch.randn(6, 2, 5, 5, dtype: ScalarType.Float64);
        using var eps = torch.randn(6, 2, 5, 5, dtype: ScalarType.Float64);
        using var t = torch.tensor(new long[] { 0, 3, 50, 120, 198, 199 });
        using var xt = d.QSample(x0, t, eps);
        using var target = d.Target(x0, eps, t);
        var (x0Hat, epsHat) = d.Split(xt, t, target);
        using (x0Hat) using (epsHat)
        {
            TestUtil.Close(x0Hat, x0, 1e-9, "x0");
            TestUtil.Close(epsHat, eps, 1e-9, "eps");
        }
        // q(x_t | x_0) by its definition, sample by sample.
        for (int i = 0; i < 6; i++)
        {
            double a = d.AlphasCumprod[t[i].item<long>()];
            using var expected = Math.Sqrt(a) * x0[i] + Math.Sqrt(1 - a) * eps[i];
            TestUtil.Close(xt[i], expected, 1e-12, "x_t");
        }
    }

    [Fact]
    public void SamplingTimestepsDescendFromTheLastStep()
    {
        var d = new GaussianDiffusion(1000);
        foreach (int n in new[] { 1, 7, 50, 1000 })
        {
            var ts = d.SamplingTimesteps(n);
            Assert.Equal(n, ts.Length);
            Assert.Equal(999, ts[0]);
            for (int i = 1; i < n; i++) Assert.True(ts[i] < ts[i - 1]);
            Assert.True(ts[^1] >= 0);
        }
        Assert.Equal(Enumerable.Range(0, 1000).Reverse(), d.SamplingTimesteps(1000));
        Assert.Throws<ArgumentOutOfRangeException>(() => d.SamplingTimesteps(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => d.SamplingTimesteps(1001));
    }

    /// <summary>The exact denoiser of a data distribution concentrated on one point x*: eps = (x_t - sqrt(abar) x*) / sqrt(1 - abar).</summary>
    static Denoiser Oracle(GaussianDiffusion d, Tensor xStar) => (xt, t, y) =>
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.tensor(t.data<long>().ToArray().Select(s => d.AlphasCumprod[s]).ToArray(), dtype: xt.dtype).view(-1, 1, 1, 1);
        var eps = (xt - a.sqrt() * xStar) / (1 - a).sqrt();
        if (d.Prediction == PredictionType.Epsilon) return eps.MoveToOuterDisposeScope();
        return (a.sqrt() * eps - (1 - a).sqrt() * xStar).MoveToOuterDisposeScope();
    };

    [Theory]
    [InlineData(PredictionType.Epsilon, 1, 0.0)]
    [InlineData(PredictionType.Epsilon, 10, 0.0)]
    [InlineData(PredictionType.V, 25, 0.0)]
    [InlineData(PredictionType.Epsilon, 25, 1.0)]
    public void DdimWithTheExactDenoiserLandsOnTheData(PredictionType prediction, int steps, double eta)
    {
        torch.manual_seed(5);
        var d = new GaussianDiffusion(1000, NoiseSchedule.Linear, prediction);
        using var xStar = torch.rand(1, 1, 4, 4, dtype: ScalarType.Float64) * 1.6 - 0.8;   // inside the clip range
        using var noise = torch.randn(3, 1, 4, 4, dtype: ScalarType.Float64);
        using var x = d.SampleDdim(Oracle(d, xStar), noise, null, 0, steps, eta: eta, generator: new Generator(3));
        TestUtil.Close(x, xStar.expand(3, -1, -1, -1), 1e-7, "sample");
    }

    [Fact]
    public void DdimIsDeterministicForASeedAtEtaZero()
    {
        torch.manual_seed(9);
        var d = new GaussianDiffusion(100);
        using var w = torch.randn(1, 1, 3, 3);
        // A fixed non-trivial "network": a nonlinear function of x_t and t.
        Denoiser net = (xt, t, y) => (xt * w).tanh() + t.to_type(xt.dtype).view(-1, 1, 1, 1) / 100;
        Tensor Run(int seed, double eta)
        {
            var g = new Generator((ulong)seed);
            var noise = torch.randn(new long[] { 2, 1, 3, 3 }, generator: g);
            return d.SampleDdim(net, noise, null, 0, 20, eta: eta, generator: g);
        }
        using var a = Run(1, 0);
        using var b = Run(1, 0);
        using var c = Run(2, 0);
        Assert.True(a.allclose(b, 0, 0), "same seed, eta 0: samples must be identical");
        Assert.False(a.allclose(c), "a different seed must give a different sample");
        using var e1 = Run(1, 1);
        using var e2 = Run(1, 1);
        Assert.True(e1.allclose(e2, 0, 0), "eta 1: the seeded generator must fix the injected noise too");
        Assert.False(e1.allclose(a), "eta 1 must differ from eta 0");
    }

    [Fact]
    public void GuidanceCombinesTheTwoBranchesLinearly()
    {
        torch.manual_seed(2);
        using var xt = torch.randn(3, 1, 2, 2, dtype: ScalarType.Float64);
        using var t = torch.tensor(new long[] { 5, 6, 7 });
        using var y = torch.tensor(new long[] { 0, 2, 1 });
        const long nullClass = 3;
        Denoiser net = (x, tt, yy) => x * (yy!.to_type(x.dtype).view(-1, 1, 1, 1) + 1) + tt.to_type(x.dtype).view(-1, 1, 1, 1);
        using var cond = net(xt, t, y);
        using var nul = torch.full(3, nullClass, dtype: ScalarType.Int64);
        using var uncond = net(xt, t, nul);
        foreach (double g in new[] { 0.0, 1.0, 2.5 })
        {
            using var got = GaussianDiffusion.Guided(net, xt, t, y, nullClass, g);
            using var want = uncond + g * (cond - uncond);
            TestUtil.Close(got, want, 1e-12, $"guidance {g}");
        }
    }

    [Fact]
    public void TrainingLossIsTheMeanSquaredErrorToTheTarget()
    {
        var d = new GaussianDiffusion(50, NoiseSchedule.Linear, PredictionType.V);
        using var x0 = torch.rand(4, 1, 3, 3) * 2 - 1;
        Denoiser zero = (x, t, y) => torch.zeros_like(x);
        // With a zero network the loss is E|v|^2 over the drawn t and noise: recompute it from the same generator draws.
        using var loss = d.TrainingLoss(zero, x0, null, new Generator(77));
        var g = new Generator(77);
        using var t = torch.randint(0, 50, [4], dtype: ScalarType.Int64, generator: g);
        using var eps = torch.randn(x0.shape, generator: g);
        using var v = d.Target(x0, eps, t);
        Assert.Equal(v.square().mean().item<float>(), loss.item<float>(), 5);
    }

    [Fact]
    public void EmaFollowsItsRecurrenceAndRoundTrips()
    {
        using var lin = nn.Linear(3, 2);
        using var ema = new Ema(lin, 0.9);
        var w = lin.weight!;
        double[] start = w.detach().data<float>().ToArray().Select(f => (double)f).ToArray();
        var expected = (double[])start.Clone();
        for (int n = 1; n <= 30; n++)
        {
            using (torch.no_grad()) w.add_(0.1 * n);
            ema.Update(n);
            double d = Math.Min(0.9, (1.0 + n) / (10.0 + n));
            var cur = w.detach().data<float>().ToArray();
            for (int i = 0; i < expected.Length; i++) expected[i] = d * expected[i] + (1 - d) * cur[i];
        }
        var avg = ema.Averages["weight"].data<float>().ToArray().Select(f => (double)f).ToArray();
        Assert.True(TestUtil.RelErr(avg, expected) < 1e-5);

        using var other = nn.Linear(3, 2);
        using var ema2 = new Ema(other, 0.9);
        ema2.LoadState(ema.State());
        Assert.True(ema2.Averages["weight"].allclose(ema.Averages["weight"], 0, 0));
        Assert.Equal(ema.DecayAt(31), ema2.DecayAt(31));
        ema2.CopyTo(other);
        Assert.True(other.weight!.allclose(ema.Averages["weight"], 0, 0));
        Assert.Throws<InvalidDataException>(() => ema2.LoadState(new Dictionary<string, Tensor>()));
    }
}

public class SampleQualityTests
{
    /// <summary>A random 2 x 2 symmetric positive definite matrix.</summary>
    static double[,] Spd(Random r)
    {
        double a = r.NextDouble() * 2 - 1, b = r.NextDouble() * 2 - 1, c = r.NextDouble() * 2 - 1, e = r.NextDouble() * 2 - 1;
        // M M^T + 0.1 I
        return new[,] { { a * a + b * b + 0.1, a * c + b * e }, { a * c + b * e, c * c + e * e + 0.1 } };
    }

    [Fact]
    public void FrechetDistanceMatchesTheTwoByTwoClosedForm()
    {
        var r = new Random(4);
        for (int trial = 0; trial < 10; trial++)
        {
            var s1 = Spd(r); var s2 = Spd(r);
            double[] m1 = [r.NextDouble(), r.NextDouble()], m2 = [r.NextDouble(), r.NextDouble()];
            // tr sqrt(S1 S2) for a 2 x 2 matrix with positive eigenvalues: sqrt(tr A + 2 sqrt(det A)).
            double p00 = s1[0, 0] * s2[0, 0] + s1[0, 1] * s2[1, 0], p01 = s1[0, 0] * s2[0, 1] + s1[0, 1] * s2[1, 1];
            double p10 = s1[1, 0] * s2[0, 0] + s1[1, 1] * s2[1, 0], p11 = s1[1, 0] * s2[0, 1] + s1[1, 1] * s2[1, 1];
            double trSqrt = Math.Sqrt(p00 + p11 + 2 * Math.Sqrt(p00 * p11 - p01 * p10));
            double expected = Math.Pow(m1[0] - m2[0], 2) + Math.Pow(m1[1] - m2[1], 2) + s1[0, 0] + s1[1, 1] + s2[0, 0] + s2[1, 1] - 2 * trSqrt;
            using var tm1 = torch.tensor(m1); using var tm2 = torch.tensor(m2);
            using var ts1 = torch.tensor(new[] { s1[0, 0], s1[0, 1], s1[1, 0], s1[1, 1] }).view(2, 2);
            using var ts2 = torch.tensor(new[] { s2[0, 0], s2[0, 1], s2[1, 0], s2[1, 1] }).view(2, 2);
            Assert.Equal(expected, SampleQuality.FrechetDistance(tm1, ts1, tm2, ts2), 1e-9);
        }
    }

    [Fact]
    public void FrechetDistanceOfFeatureSets()
    {
        torch.manual_seed(3);
        using var a = torch.randn(400, 6, dtype: ScalarType.Float64);
        Assert.Equal(0, SampleQuality.FrechetDistance(a, a), 1e-8);
        // A shift moves only the mean term: d^2 = |shift|^2 exactly (same covariance).
        using var shift = torch.tensor(new[] { 1.0, -2, 0, 0.5, 0, 3 });
        Assert.Equal(1 + 4 + 0.25 + 9, SampleQuality.FrechetDistance(a + shift, a), 1e-8);
        // Scaling by s: covariances S and s^2 S commute, so tr sqrt = s tr S and d^2 = (1 - s)^2 tr S (means scale too).
        var (mu, cov) = SampleQuality.Moments(a);
        using (mu) using (cov)
        {
            double s = 1.7;
            double expected = (1 - s) * (1 - s) * (cov.trace().item<double>() + mu.square().sum().item<double>());
            Assert.Equal(expected, SampleQuality.FrechetDistance(a * s, a), 1e-8);
        }
        using var wrong = torch.randn(10, 5);
        Assert.Throws<ArgumentException>(() => SampleQuality.FrechetDistance(a, wrong));
    }

    [Fact]
    public void InceptionScoresAgainstDirectLoops()
    {
        torch.manual_seed(8);
        using var probs = nn.functional.softmax(torch.randn(7, 4, dtype: ScalarType.Float64) * 2, 1);
        var p = new double[7, 4];
        for (int i = 0; i < 7; i++) for (int k = 0; k < 4; k++) p[i, k] = probs[i, k].item<double>();
        var py = new double[4];
        for (int k = 0; k < 4; k++) { for (int i = 0; i < 7; i++) py[k] += p[i, k] / 7; }
        double kl = 0, pairs = 0, ent = 0;
        for (int i = 0; i < 7; i++)
        {
            for (int k = 0; k < 4; k++) { kl += p[i, k] * Math.Log(p[i, k] / py[k]) / 7; ent -= p[i, k] * Math.Log(p[i, k]) / 7; }
            for (int j = 0; j < 7; j++) for (int k = 0; k < 4; k++) pairs += p[i, k] * Math.Log(p[i, k] / p[j, k]) / 49;
        }
        Assert.Equal(Math.Exp(kl), SampleQuality.InceptionScore(probs), 1e-9);
        Assert.Equal(Math.Exp(pairs), SampleQuality.ModifiedInceptionScore(probs), 1e-9);
        double[] refp = [0.1, 0.2, 0.3, 0.4];
        double klRef = 0;
        for (int k = 0; k < 4; k++) klRef += refp[k] * Math.Log(refp[k] / py[k]);
        using var tref = torch.tensor(refp);
        Assert.Equal(klRef + ent, SampleQuality.AmScore(probs, tref), 1e-9);
        // Confident and balanced over k classes: IS = k.
        using var onehot = torch.eye(4, dtype: ScalarType.Float64).repeat(3, 1);
        Assert.Equal(4, SampleQuality.InceptionScore(onehot), 1e-6);
    }
}
