// The diffusion denoisers (vision/DiffuSSM.cs, vision/DiS.cs) and their model folder / training / sampling glue
// (vision/ImageDiffusion.cs). The process itself is tested in Backbone.Tests/DiffusionTests.cs.
using Ssm.Backbone.Generation;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Training;
using Ssm.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Vision.Tests;

public class DiffusionModelTests
{
    static readonly string[] Classes = ["zero", "one", "two"];

    [Theory]
    [InlineData(7, 2)]
    [InlineData(8, 2)]
    [InlineData(9, 2)]
    [InlineData(10, 3)]
    [InlineData(11, 4)]
    [InlineData(1, 2)]
    [InlineData(784, 2)]
    public void HourglassRestoresTheLengthExactly(long j, long m)
    {
        torch.manual_seed(1);
        const long d = 6;
        // An identity core: the down path must shorten to ceil(J / M), the up path restore exactly J.
        using var hg = new Hourglass(d, m, nn.Identity());
        using var x = torch.randn(2, j, d);
        using var down = hg.Down(x);
        Assert.Equal(new[] { 2L, (j + m - 1) / m, d }, down.shape);
        using var y = hg.forward(x);
        Assert.Equal(x.shape, y.shape);
        // Short position l sees exactly tokens l*M .. l*M + M - 1: changing token j-1 changes only the last short position.
        using var x2 = x.clone();
        x2[0, j - 1] += 1;
        using var down2 = hg.Down(x2);
        using var diff = (down2 - down).abs().sum(2);                   // (2 L)
        long last = (j - 1) / m;
        for (long l = 0; l < down.shape[1]; l++)
            Assert.Equal(l == last, diff[0, l].item<float>() > 0);
        Assert.Equal(0f, diff[1].sum().item<float>());
    }

    static void Perturb(nn.Module m) => VisionCheck.Perturb(m, 0.5);

    [Theory]
    [InlineData("diffussm")]
    [InlineData("dis")]
    public void DenoiserShapesAndConditioning(string type)
    {
        torch.manual_seed(3);
        using var gen = ImageDiffusion.Create(type, "tiny", Classes, 1, 8);
        Perturb(gen.Model);   // leave the zero initialisation (adaLN-Zero, zero output layer) so every path carries signal
        gen.Model.eval();
        using var x = torch.randn(2, 1, 8, 8);
        using var t = torch.tensor(new long[] { 10, 500 });
        using var y0 = torch.tensor(new long[] { 0, 0 });
        using var y1 = torch.tensor(new long[] { 1, 3 });                // 3 = the null class
        using var noGrad = torch.no_grad();
        using var out0 = gen.Model.call(x, t, y0);
        Assert.Equal(x.shape, out0.shape);
        using var out1 = gen.Model.call(x, t, y1);
        Assert.False(out0.allclose(out1, 1e-6, 1e-6), "the class must reach the output");
        using var t2 = torch.tensor(new long[] { 11, 900 });
        using var out2 = gen.Model.call(x, t2, y0);
        Assert.False(out0.allclose(out2, 1e-6, 1e-6), "the time step must reach the output");
        // Bidirectional: the first pixel's output depends on pixel (0, 2), which lies in the next merged token (DiffuSSM,
        // M = 2) or the next patch (DiS, p = 2): only the reversed scan carries it back (a forward-only path, DESIGN.md's
        // trap of a reference that silently runs one direction, gives exactly 0 here). Near, so the initial decay of
        // the state does not hide it.
        using var xl = x.clone();
        xl[0, 0, 0, 2] += 3;
        using var outL = gen.Model.call(xl, t, y0);
        Assert.True((outL[0, 0, 0, 0] - out0[0, 0, 0, 0]).abs().item<float>() > 1e-6, "the first pixel must see a later one");
        Assert.Throws<ArgumentException>(() => gen.Model.call(torch.randn(1, 1, 9, 9), t.narrow(0, 0, 1), y0.narrow(0, 0, 1)));
    }

    [Theory]
    [InlineData("diffussm")]
    [InlineData("dis")]
    public void OneTrainingStepReducesTheLossOnAFixedBatch(string type)
    {
        torch.manual_seed(4);
        using var gen = ImageDiffusion.Create(type, "tiny", Classes, 1, 8);
        using var x0 = torch.rand(8, 1, 8, 8) * 2 - 1;
        using var y = torch.tensor(new long[] { 0, 1, 2, 0, 1, 2, 0, 1 });
        double Loss()
        {
            using var l = gen.Process.TrainingLoss(gen.Denoiser, x0, y, new Generator(21));
            return l.item<float>();
        }
        var opt = new AdamW(gen.Model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), 0);
        double before = Loss();
        for (int i = 0; i < 3; i++)
        {
            opt.ZeroGrad();
            using var l = gen.Process.TrainingLoss(gen.Denoiser, x0, y, new Generator(21));
            l.backward();
            opt.Step(3e-3);
        }
        double after = Loss();
        Assert.True(after < before * 0.98, $"{type}: loss {before:F5} -> {after:F5}");
    }

    [Fact]
    public void SavedAndLoadedModelSamplesTheSameImage()
    {
        torch.manual_seed(5);
        var dir = Path.Combine(Path.GetTempPath(), "ssm-diff-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var gen = ImageDiffusion.Create("diffussm", "tiny", Classes, 1, 8,
                settings: new DiffusionSettings(100, NoiseSchedule.Cosine, PredictionType.V, 0.2));
            Perturb(gen.Model);
            gen.Save(dir);
            using var a = gen.Sample([0, 1, 2, -1], steps: 5, guidance: 2, seed: 7);
            using var b = gen.Sample([0, 1, 2, -1], steps: 5, guidance: 2, seed: 7);
            using var c = gen.Sample([0, 1, 2, -1], steps: 5, guidance: 2, seed: 8);
            Assert.True(a.allclose(b, 0, 0), "same seed, same model: identical samples");
            Assert.False(a.allclose(c), "another seed: other samples");
            Assert.True(a.abs().max().item<float>() <= 1.0f + 1e-6f);
            using var loaded = ImageDiffusion.Load(dir);
            Assert.Equal(gen.ConfigJson().ToJsonString(), loaded.ConfigJson().ToJsonString());
            Assert.Equal(NoiseSchedule.Cosine, loaded.Settings.Schedule);
            Assert.Equal(PredictionType.V, loaded.Settings.Prediction);
            using var d = loaded.Sample([0, 1, 2, -1], steps: 5, guidance: 2, seed: 7);
            Assert.True(a.allclose(d, 0, 0), "the loaded model must sample the same images");
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void LabelDropoutReplacesAboutTheRequestedShare()
    {
        using var emb = new LabelEmbedder(10, 4);
        using var y = torch.randint(0, 10, [20000], dtype: ScalarType.Int64, generator: new Generator(1));
        using var dropped = emb.Drop(y, 0.1, new Generator(2));
        double share = dropped.eq(10).to_type(ScalarType.Float64).mean().item<double>();
        Assert.InRange(share, 0.09, 0.11);
        using var kept = dropped.ne(10);
        Assert.True(dropped.masked_select(kept).allclose(y.masked_select(kept), 0, 0), "kept labels must be unchanged");
        using var none = emb.Drop(y, 0);
        Assert.True(none.allclose(y, 0, 0));
    }

    [Fact]
    public void PixelGaussianBaselineHasEachClassMeanAndSpread()
    {
        // Class 0: every pixel 50 (no spread); class 1: pixels 100 or 200 with equal counts (mean 150, std 50).
        var pixels = new byte[20 * 4];
        var labels = new int[20];
        for (int i = 0; i < 20; i++)
        {
            labels[i] = i % 2;
            for (int j = 0; j < 4; j++) pixels[i * 4 + j] = (byte)(labels[i] == 0 ? 50 : ((i / 2 + j) % 2 == 0 ? 100 : 200));
        }
        var data = new ImageDataset("two", pixels, labels, 1, 2, 2);
        var classes = Enumerable.Range(0, 4000).Select(i => i % 2).ToArray();
        using var x = ImageDiffusion.PixelGaussianSamples(data, classes, seed: 3);
        Assert.Equal(new long[] { 4000, 1, 2, 2 }, x.shape);
        using var c0 = x.index_select(0, torch.arange(0, 4000, 2));
        using var c1 = x.index_select(0, torch.arange(1, 4000, 2));
        Assert.Equal(50 / 127.5 - 1, c0.min().item<float>(), 5);
        Assert.Equal(50 / 127.5 - 1, c0.max().item<float>(), 5);
        // unbiased std over 10 images of 100/200: 50 * sqrt(10 / 9)
        double sd = 50 * Math.Sqrt(10.0 / 9) / 127.5;
        Assert.Equal(150 / 127.5 - 1, c1.mean().item<float>(), 1);
        Assert.InRange(c1.std().item<float>(), sd * 0.95, sd * 1.05);
    }

    [Fact]
    public void TimestepEmbeddingIsTheSinusoidalCode()
    {
        using var t = torch.tensor(new long[] { 0, 7, 999 });
        using var e = TimestepEmbedder.Sinusoidal(t, 8);
        for (int i = 0; i < 3; i++)
            for (int k = 0; k < 4; k++)
            {
                double f = Math.Exp(-Math.Log(10000) * k / 4), arg = t[i].item<long>() * f;
                Assert.Equal(Math.Cos(arg), e[i, k].item<float>(), 4);
                Assert.Equal(Math.Sin(arg), e[i, k + 4].item<float>(), 4);
            }
    }

    [Fact]
    public void ClassNamesAndConfigErrorsAreClear()
    {
        using var gen = ImageDiffusion.Create("dis", "tiny", Classes, 1, 8);
        Assert.Equal(1, gen.ClassId("ONE"));
        Assert.Equal(2, gen.ClassId("2"));
        var e = Assert.Throws<ArgumentException>(() => gen.ClassId("three"));
        Assert.Contains("0 zero, 1 one, 2 two", e.Message);
        Assert.Throws<ArgumentException>(() => gen.ClassId("3"));
        Assert.Contains("unknown model type", Assert.Throws<ArgumentException>(() => ImageDiffusion.Create("unet", null, Classes, 1, 8)).Message);
        Assert.Contains("odd", Assert.Throws<ArgumentException>(() => ImageDiffusion.Create("dis", "tiny", Classes, 1, 8, overrides: [new("depth", "4")])).Message);
        Assert.Contains("fixed by the data", Assert.Throws<ArgumentException>(() => ImageDiffusion.Create("diffussm", "tiny", Classes, 1, 8, overrides: [new("img_size", "16")])).Message);
        Assert.Throws<ArgumentException>(() => gen.Sample([5]));
    }

    [Fact]
    public void TrainingWritesTheEmaModelGridsAndResumesExactly()
    {
        torch.manual_seed(6);
        var root = Path.Combine(Path.GetTempPath(), "ssm-difftrain-" + Guid.NewGuid().ToString("N"));
        try
        {
            var rng = new Random(3);
            var pixels = new byte[24 * 64];
            rng.NextBytes(pixels);
            var data = new ImageDataset("synthetic", pixels, Enumerable.Range(0, 24).Select(i => i % 3).ToArray(), 1, 8, 8);
            TrainOptions Opts(string dir) => new()
            {
                Steps = 6, LearningRate = 1e-3, WarmupSteps = 1, EvalEvery = 3, CheckpointEvery = 2, LogEvery = 1, OutputDir = dir, Resume = true,
            };
            var co = new DiffusionTrainOptions { BatchSize = 8, EmaDecay = 0.9, GridPerClass = 2, GridSteps = 2 };
            using (var a = ImageDiffusion.Create("diffussm", "tiny", Classes, 1, 8))
                ImageDiffusion.Train(a, data, data.Take(6), Opts(Path.Combine(root, "a")), co);
            // Interrupted after step 3, then resumed: the same final (EMA) weights as the uninterrupted run.
            torch.manual_seed(6);
            using (var b = ImageDiffusion.Create("diffussm", "tiny", Classes, 1, 8))
            {
                using var cts = new CancellationTokenSource();
                ImageDiffusion.Train(b, data, data.Take(6), Opts(Path.Combine(root, "b")), co, cts.Token, afterStep: s => { if (s == 3) cts.Cancel(); });
            }
            Assert.False(File.Exists(Path.Combine(root, "b", "model.safetensors")));
            using (var c = ImageDiffusion.Create("diffussm", "tiny", Classes, 1, 8))
                ImageDiffusion.Train(c, data, data.Take(6), Opts(Path.Combine(root, "b")), co);
            using var ma = ImageDiffusion.Load(Path.Combine(root, "a"));
            using var mb = ImageDiffusion.Load(Path.Combine(root, "b"));
            foreach (var ((n, pa), (_, pb)) in ma.Model.named_parameters().Zip(mb.Model.named_parameters()))
                Assert.True(pa.allclose(pb, 1e-6, 1e-7), $"{n} differs after resume");
            Assert.True(File.Exists(Path.Combine(root, "a", "samples", "step-00000003.png")));
            Assert.True(File.Exists(Path.Combine(root, "a", "samples", "step-00000006.png")));
            Assert.False(File.Exists(Path.Combine(root, "a", "extra.safetensors")), "the final folder holds the EMA weights once");
            Assert.Contains("val_loss", File.ReadAllText(Path.Combine(root, "a", "log.jsonl")));
        }
        finally { if (Directory.Exists(root)) Directory.Delete(root, true); }
    }
}
