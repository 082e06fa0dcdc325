// Training and evaluation: augmentation against a brute-force search, a CNN that overfits a fixed batch, exact resume
// through the backbone Trainer, metrics against an independent count, and model folders of every architecture.
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using Ssm.Vision;
using static TorchSharp.torch;

namespace Ssm.Vision.Tests;

public sealed class ClassificationTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-cls-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static readonly string[] Classes = ["a", "b", "c", "d"];

    /// <summary>n random w x w grey images whose label is a function of where their bright patch is (learnable).</summary>
    internal static ImageDataset Synthetic(int n, int w, int seed, int classes = 4)
    {
        var rng = new Random(seed);
        var px = new byte[n * w * w];
        var labels = new int[n];
        for (int i = 0; i < n; i++)
        {
            labels[i] = rng.Next(classes);
            for (int k = 0; k < w * w; k++) px[i * w * w + k] = (byte)rng.Next(60);
            int qy = labels[i] / 2 * (w / 2), qx = labels[i] % 2 * (w / 2);
            for (int y = 1; y < w / 2 - 1; y++) for (int x = 1; x < w / 2 - 1; x++) px[i * w * w + (qy + y) * w + qx + x] = (byte)(180 + rng.Next(70));
        }
        return new ImageDataset("synthetic", px, labels, 1, w, w);
    }

    static ImageClassifier TinyCnn(int size, IEnumerable<KeyValuePair<string, string>>? overrides = null) =>
        ImageClassifier.Create("cnn", "tiny", Classes, new ImageSpec(1, size, [0.2f], [0.3f]), overrides);

    [Fact]
    public void AugmentCropsAWindowOfThePaddedImageAndFlipsOnlyWhenAllowed()
    {
        int b = 6, c = 2, h = 5, w = 7, p = 2;
        var rng = new Random(1);
        using var x = torch.rand(b, c, h, w);
        foreach (bool flip in new[] { false, true })
        {
            using var y = Classification.Augment(x, new AugmentOptions(p, flip), new Random(42), fill: 0.5);
            // Same seed, same augmentation.
            using var again = Classification.Augment(x, new AugmentOptions(p, flip), new Random(42), fill: 0.5);
            Assert.True(y.eq(again).all().item<bool>());
            var xs = x.data<float>().ToArray();
            var ys = y.data<float>().ToArray();
            int flipped = 0;
            for (int i = 0; i < b; i++)
            {
                // Brute force: some offset (dy, dx) in [0, 2p]^2 and orientation reproduces the sample exactly.
                float Padded(int k, int yy, int xx) => yy < p || yy >= h + p || xx < p || xx >= w + p ? 0.5f : xs[((i * c + k) * h + yy - p) * w + xx - p];
                bool Matches(int dy, int dx, bool mirrored)
                {
                    for (int k = 0; k < c; k++)
                        for (int yy = 0; yy < h; yy++)
                            for (int xx = 0; xx < w; xx++)
                                if (ys[((i * c + k) * h + yy) * w + xx] != Padded(k, dy + yy, dx + (mirrored ? w - 1 - xx : xx))) return false;
                    return true;
                }
                var hits = (from dy in Enumerable.Range(0, 2 * p + 1) from dx in Enumerable.Range(0, 2 * p + 1)
                            from m in new[] { false, true } where Matches(dy, dx, m) select m).ToList();
                Assert.NotEmpty(hits);
                if (!flip) Assert.Contains(false, hits);
                if (hits.All(m => m)) flipped++;
            }
            if (!flip) Assert.Equal(0, flipped);
        }
        // No padding and no flip: the identity.
        using var same = Classification.Augment(x, AugmentOptions.None, rng);
        Assert.True(same.eq(x).all().item<bool>());
    }

    [Fact]
    public void CnnGradientsMatchAFloat64Copy()
    {
        // Guards the im2col convolution (SimpleCnn.cs explains why it is not conv2d): every parameter's gradient of a
        // training-mode forward (batch statistics) agrees with the same network in float64.
        using var f32 = ImageClassifier.Create("cnn", "tiny", Classes, new ImageSpec(1, 8, [0f], [1f]), [new("widths", "[6, 8]")]);
        using var f64 = ImageClassifier.Create("cnn", "tiny", Classes, new ImageSpec(1, 8, [0f], [1f]), [new("widths", "[6, 8]")]);
        ModelFolder.LoadInto(f64.Model, ModelFolder.Weights(f32.Model), "f32");
        f64.Model.to(ScalarType.Float64);
        using var x = torch.randn(12, 1, 8, 8);
        using var y = torch.tensor(Enumerable.Range(0, 12).Select(i => (long)(i % 4)).ToArray());
        f32.Model.train(); f64.Model.train();
        nn.functional.cross_entropy(f64.Model.call(x.to_type(ScalarType.Float64)), y).backward();
        var p64 = f64.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        // Several times: the faulty kernel this guards against is wrong only on some calls.
        for (int rep = 0; rep < 4; rep++)
        {
            foreach (var p in f32.Model.parameters()) p.grad?.zero_();
            nn.functional.cross_entropy(f32.Model.call(x), y).backward();
            foreach (var (name, p) in f32.Model.named_parameters())
            {
                var g = p.grad!.to_type(ScalarType.Float64);
                var want = p64[name].grad!;
                double err = (g - want).abs().max().item<double>(), scale = want.abs().max().item<double>();
                Assert.True(err <= 1e-4 * scale + 1e-6, $"{name}: max error {err} for gradients up to {scale} (call {rep})");
            }
        }
    }

    [Fact]
    public void CnnOverfitsAFixedBatchOf32()
    {
        var data = Synthetic(32, 16, seed: 3);
        // Random labels: only memorisation can fit them.
        var rng = new Random(4);
        var labels = data.Labels.Select(_ => rng.Next(4)).ToArray();
        data = new ImageDataset("fixed", data.Pixels, labels, 1, 16, 16);
        torch.manual_seed(5);
        using var clf = ImageClassifier.Create("cnn", "tiny", Classes, new ImageSpec(1, 16, [0.2f], [0.3f]),
            [new("widths", "[8, 16]"), new("hidden", "64")]);
        var result = Classification.Train(clf, data, null,
            new TrainOptions { Steps = 120, LearningRate = 1e-2, WeightDecay = 0, WarmupSteps = 5, LogEvery = 0, Beta2 = 0.999 },
            new ClassificationOptions { BatchSize = 32, LabelSmoothing = 0, Augment = AugmentOptions.None });
        Assert.True(result.LastLoss < 0.05, $"final loss {result.LastLoss}");
        var eval = Classification.Evaluate(clf, data);
        Assert.Equal(32, eval.Correct);
    }

    [Fact]
    public void ResumedTrainingEndsWithTheSameWeightsAsAnUninterruptedRun()
    {
        var data = Synthetic(40, 8, seed: 6);
        var opts = (string dir) => new TrainOptions
        {
            Steps = 7, LearningRate = 3e-3, WarmupSteps = 2, CheckpointEvery = 2, LogEvery = 0, Seed = 9, OutputDir = dir, Resume = true,
        };
        // Crop and flip on, so the augmentation's randomness is part of what must be reproduced.
        var co = new ClassificationOptions { BatchSize = 6, Augment = new AugmentOptions(1, true) };

        using var a = TinyCnn(8);
        using var b = TinyCnn(8);
        ModelFolder.LoadInto(b.Model, ModelFolder.Weights(a.Model), "a"); // same start, independent of torch's global seed
        string dirA = Path.Combine(_dir, "a"), dirB = Path.Combine(_dir, "b");
        var ra = Classification.Train(a, data, null, opts(dirA), co);
        Assert.Equal(7, ra.Steps);
        Assert.Null(ra.ResumedFrom);

        // Run b is stopped after 3 steps (the trainer checkpoints step 3 on cancellation) ...
        using var cts = new CancellationTokenSource();
        var rb = Classification.Train(b, data, null, opts(dirB), co, cts.Token, afterStep: s => { if (s == 3) cts.Cancel(); });
        Assert.Equal(3, rb.Steps);
        Assert.NotNull(Trainer.LatestCheckpoint(dirB));

        // ... and resumed in a new process-like setting: a fresh model with other weights.
        using var c = TinyCnn(8);
        var rc = Classification.Train(c, data, null, opts(dirB), co);
        Assert.Equal(7, rc.Steps);
        Assert.EndsWith(Trainer.CheckpointName(3), rc.ResumedFrom);
        foreach (var (name, t) in ModelFolder.Weights(a.Model))
        {
            var other = c.Model.state_dict()[name];
            Assert.True(t.allclose(other, rtol: 0, atol: 1e-6), $"{name} differs after resume");
        }
        // The final folder loads as a classifier with the same outputs.
        using var loaded = ImageClassifier.Load(dirB);
        using var x = torch.randn(3, 1, 8, 8);
        Assert.True(loaded.Logits(x).allclose(a.Logits(x), rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void EvaluationAgreesWithAnIndependentCount()
    {
        var data = Synthetic(37, 8, seed: 7);
        torch.manual_seed(8);
        using var clf = TinyCnn(8);
        var r = Classification.Evaluate(clf, data, batchSize: 10);
        // Independent: logits of each image alone, normalised by hand; argmax and cross entropy in double.
        var conf = new long[4, 4];
        double loss = 0;
        for (int i = 0; i < data.Count; i++)
        {
            var px = data.Pixels.AsSpan(i * 64, 64).ToArray().Select(v => (v / 255f - 0.2f) / 0.3f).ToArray();
            using var x = torch.tensor(px, [1, 1, 8, 8]);
            var logits = clf.Logits(x).data<float>().ToArray().Select(v => (double)v).ToArray();
            int pred = Array.IndexOf(logits, logits.Max());
            conf[data.Labels[i], pred]++;
            double max = logits.Max(), lse = max + Math.Log(logits.Sum(v => Math.Exp(v - max)));
            loss += lse - logits[data.Labels[i]];
        }
        Assert.Equal(conf, r.Confusion);
        Assert.Equal(loss / data.Count, r.Loss, 4);
        long correct = Enumerable.Range(0, 4).Sum(i => conf[i, i]);
        Assert.Equal((double)correct / data.Count, r.Accuracy, 10);
        for (int i = 0; i < 4; i++)
        {
            long n = Enumerable.Range(0, 4).Sum(j => conf[i, j]);
            if (n > 0) Assert.Equal((double)conf[i, i] / n, r.ClassAccuracy(i), 10);
        }
        var json = r.ToJson();
        Assert.Equal(data.Count, json["count"]!.GetValue<long>());
        Assert.Equal(4, json["per_class"]!.AsArray().Count);
        Assert.Contains("confusion matrix", r.Format());
    }

    [Fact]
    public void StatisticsAndBackgroundMatchADirectComputation()
    {
        var data = Synthetic(20, 8, seed: 10);
        var (mean, std) = data.Statistics();
        var vals = data.Pixels.Select(v => v / 255.0).ToArray();
        double m = vals.Average(), s = Math.Sqrt(vals.Average(v => (v - m) * (v - m)));
        Assert.Equal(m, mean[0], 5);
        Assert.Equal(s, std[0], 5);
        Assert.True(data.DarkBackground());
        var inverted = new ImageDataset("inv", data.Pixels.Select(v => (byte)(255 - v)).ToArray(), data.Labels, 1, 8, 8);
        Assert.False(inverted.DarkBackground());
    }

    public static IEnumerable<object[]> SmallModels() =>
    [
        ["cnn", new[] { "widths=[4]", "hidden=8" }],
        ["vim", new[] { "depth=1", "embed_dim=16", "patch_size=4" }],
        ["vmamba", new[] { "dims=[8, 16]", "depths=[1, 1]", "patch_size=2" }],
    ];

    [Theory]
    [MemberData(nameof(SmallModels))]
    public void ModelFolderRoundTripsEveryArchitecture(string type, string[] sets)
    {
        var overrides = sets.Select(s => new KeyValuePair<string, string>(s[..s.IndexOf('=')], s[(s.IndexOf('=') + 1)..])).ToList();
        var spec = new ImageSpec(1, 8, [0.3f], [0.4f], DarkBackground: false);
        using var clf = ImageClassifier.Create(type, null, Classes, spec, overrides);
        string dir = Path.Combine(_dir, type);
        clf.Save(dir);
        var cfg = ModelFolder.ReadConfig(dir);
        Assert.Equal(type, cfg["model_type"]!.GetValue<string>());
        Assert.Equal(Classes, cfg["labels"]!.AsArray().Select(n => n!.GetValue<string>()));
        Assert.Equal(8, cfg["image_size"]!.GetValue<int>());
        Assert.Equal(8, cfg["img_size"]!.GetValue<int>());
        Assert.Equal(1, cfg["in_chans"]!.GetValue<int>());
        Assert.Equal(4, cfg["num_classes"]!.GetValue<int>());
        Assert.Equal(0.3, cfg["mean"]![0]!.GetValue<double>(), 6);
        Assert.Equal("light", cfg["background"]!.GetValue<string>());
        foreach (var (k, v) in overrides) Assert.True(JsonNode.DeepEquals(JsonNode.Parse(v), cfg[k]), k);

        using var back = ImageClassifier.Load(dir);
        Assert.Equal(clf.ParameterCount, back.ParameterCount);
        Assert.Equal(spec.Mean, back.Spec.Mean);
        Assert.False(back.Spec.DarkBackground);
        using var x = torch.randn(2, 1, 8, 8);
        using var want = clf.Logits(x);
        using var got = back.Logits(x);
        Assert.Equal(new long[] { 2, 4 }, got.shape);
        Assert.True(got.allclose(want, rtol: 0, atol: 1e-6));
    }

    [Fact]
    public void BadConfigsAndOverridesAreNamed()
    {
        var spec = new ImageSpec(1, 8, [0.3f], [0.4f]);
        Assert.Contains("unknown model type", Assert.Throws<ArgumentException>(() => ImageClassifier.Create("resnet", null, Classes, spec)).Message);
        Assert.Contains("unknown preset", Assert.Throws<ArgumentException>(() => ImageClassifier.Create("cnn", "huge", Classes, spec)).Message);
        Assert.Contains("unknown config field 'depthh'", Assert.Throws<ArgumentException>(() => ImageClassifier.Create("vim", null, Classes, spec, [new("depthh", "2")])).Message);
        Assert.Contains("fixed by the data", Assert.Throws<ArgumentException>(() => ImageClassifier.Create("vim", null, Classes, spec, [new("num_classes", "3")])).Message);
        Assert.Contains("depth", Assert.Throws<ArgumentException>(() => ImageClassifier.Create("vim", null, Classes, spec, [new("depth", "\"deep\"")])).Message);

        using var clf = TinyCnn(8);
        string dir = Path.Combine(_dir, "bad");
        clf.Save(dir);
        string cfgPath = Path.Combine(dir, ModelFolder.ConfigFile);
        var cfg = ModelFolder.ReadConfig(dir);
        cfg.Remove("labels");
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => ImageClassifier.Load(dir));
        Assert.Contains(cfgPath, e.Message);
        Assert.Contains("\"labels\"", e.Message);
        cfg["labels"] = new JsonArray("x", "y");
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        Assert.Contains("2 labels for num_classes 4", Assert.Throws<InvalidDataException>(() => ImageClassifier.Load(dir)).Message);
        cfg["labels"] = new JsonArray("a", "b", "c", "d");
        cfg["model_type"] = "lstm";
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        Assert.Contains("unknown model_type 'lstm'", Assert.Throws<InvalidDataException>(() => ImageClassifier.Load(dir)).Message);
        cfg["model_type"] = "cnn";
        cfg["hidden"] = 9;
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        Assert.Contains("shape", Assert.Throws<InvalidDataException>(() => ImageClassifier.Load(dir)).Message);
    }
}
