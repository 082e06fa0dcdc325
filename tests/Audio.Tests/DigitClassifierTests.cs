// The spoken-digit classifier: shapes through the front end and the SSM, the head applied to Features gives the
// logits, batching does not change the outputs, a tiny model overfits a fixed batch of synthetic tones, the model
// folder round-trips exactly, a broken config names the file, augmentation is a shift + gain of each clip, and
// Evaluate's confusion matrix agrees with argmax counted by hand.
using System.Text.Json.Nodes;
using Ssm.Audio;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio.Tests;

public sealed class DigitClassifierTests : IDisposable
{
    readonly string root = Path.Combine(Path.GetTempPath(), "ssm-digitclf-tests-" + Guid.NewGuid().ToString("N"));

    public DigitClassifierTests() => Directory.CreateDirectory(root);
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    /// <summary>Tiny at 8 kHz with half-second clips: 63 frames, 32 tokens.</summary>
    internal static DigitClassifierConfig Small => DigitClassifierConfig.Tiny with
    {
        SampleRate = 8000, ClipSamples = 4000, NFft = 128, HopLength = 64, FMax = 4000,
    };

    internal static readonly string[] Labels = ["low", "mid", "high", "top"];

    /// <summary>A tone per class (class c at 300 * 1.9^c Hz) with a random phase, gain and a little noise.</summary>
    internal static float[] Tone(int cls, int length, int rate, Random rng)
    {
        double hz = 300 * Math.Pow(1.9, cls), phase = rng.NextDouble() * 2 * Math.PI, amp = 0.1 + 0.4 * rng.NextDouble();
        return Enumerable.Range(0, length).Select(i => (float)(amp * Math.Sin(2 * Math.PI * hz * i / rate + phase) + 0.003 * (rng.NextDouble() - 0.5))).ToArray();
    }

    static Tensor Clips(int[] classes, int length, int rate, int seed)
    {
        var rng = new Random(seed);
        var flat = classes.SelectMany(c => Tone(c, length, rate, rng)).ToArray();
        return tensor(flat, [classes.Length, length]);
    }

    [Fact]
    public void ShapesThroughTheFrontEndAndTheNetwork()
    {
        torch.manual_seed(1);
        var c = Small with { DModel = 8 };
        using var clf = DigitClassifier.Create(c, Labels);
        Assert.Equal(4, clf.Config.NumClasses);
        using var x = randn(3, 4000) * 0.1;
        using var mel = clf.Model.LogMel(x);
        Assert.Equal(new long[] { 3, 1 + 4000 / 64, c.NMels }, mel.shape);
        // Standardised per clip over (t, m).
        using var mean = mel.mean([1, 2]);
        Assert.True(mean.abs().max().item<float>() < 1e-4);
        Assert.Equal(32, c.Tokens(4000));
        using var f = clf.Model.Features(x);
        Assert.Equal(new long[] { 3, 8 }, f.shape);
        using var logits = clf.Model.call(x);
        Assert.Equal(new long[] { 3, 4 }, logits.shape);
        Assert.Throws<ArgumentException>(() => clf.Model.call(randn(4000)));
    }

    [Theory]
    [InlineData(2, 63)]
    [InlineData(2, 64)]
    [InlineData(3, 10)]
    [InlineData(1, 5)]
    public void TheStemEqualsItsConv1d(long stride, long frames)
    {
        // Stem computes the stem's Conv1d (kernel 3, padding 1) as windows x matrix: compare with the module itself.
        torch.manual_seed(7);
        var c = Small with { StemStride = stride, DModel = 8 };
        using var clf = DigitClassifier.Create(c, Labels);
        using var x = randn(2, frames, c.NMels);                                        // (b t m)
        using var want = clf.Model.stem.forward(x.transpose(1, 2)).transpose(1, 2);     // (b l d)
        using var got = clf.Model.Stem(x);
        Assert.Equal(want.shape, got.shape);
        Assert.True(got.allclose(want, 1e-5, 1e-5));
        Assert.Equal(c.Tokens((frames - 1) * c.HopLength), got.shape[1]);
    }

    [Fact]
    public void HeadOfFeaturesIsTheLogitsAndBatchingChangesNothing()
    {
        torch.manual_seed(2);
        using var clf = DigitClassifier.Create(Small, Labels);
        using var x = Clips([0, 1, 2, 3, 1], 4000, 8000, 5);
        using var logits = clf.Logits(x);
        var (f, p) = clf.FeaturesAndProbs(x, batchSize: 2);                               // 3 batches: 2, 2, 1
        using (f) using (p)
        {
            using var head = clf.Model.head.forward(f);
            Assert.True(head.allclose(logits, 1e-5, 1e-5));
            using var sm = nn.functional.softmax(logits, 1);
            Assert.True(p.allclose(sm, 1e-5, 1e-6));
            // The gain of a clip does not matter (per-clip standardisation of log-mel energies; the 1e-6 floor of the
            // log makes it approximate for quiet bins).
            using var louder = clf.Logits(x * 3.0);
            Assert.True(louder.allclose(logits, 0, 1e-2), $"max diff {(louder - logits).abs().max().item<float>()} of {logits.abs().max().item<float>()}");
        }
    }

    [Fact]
    public void ATinyClassifierOverfitsAFixedBatchOfTones()
    {
        torch.manual_seed(3);
        using var clf = DigitClassifier.Create(Small, Labels);
        int[] classes = [0, 1, 2, 3, 0, 1, 2, 3];
        using var x = Clips(classes, 4000, 8000, 7);
        using var y = tensor(classes.Select(c => (long)c).ToArray());
        var opt = new AdamW(clf.Model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), weightDecay: 0);
        double first = double.NaN, last = double.NaN;
        clf.Model.train();
        for (int s = 0; s < 40; s++)
        {
            using var scope = torch.NewDisposeScope();
            opt.ZeroGrad();
            var loss = nn.functional.cross_entropy(clf.Model.call(x), y);
            loss.backward();
            opt.Step(1e-2);
            last = loss.item<float>();
            if (s == 0) first = last;
        }
        using var pred = clf.Logits(x).argmax(1);
        Assert.Equal(classes.Select(c => (long)c), pred.data<long>().ToArray());
        Assert.True(last < 0.2 * first, $"loss {first} -> {last}");
    }

    [Fact]
    public void SaveAndLoadGiveIdenticalLogits()
    {
        torch.manual_seed(4);
        using var clf = DigitClassifier.Create(Small with { NLayer = 2 }, Labels);
        string dir = Path.Combine(root, "clf");
        clf.Save(dir);
        using var back = DigitClassifier.Load(dir);
        Assert.Equal(clf.Config, back.Config);
        Assert.Equal(Labels, back.Labels);
        using var x = Clips([3, 2, 1], 4000, 8000, 9);
        using var a = clf.Logits(x);
        using var b = back.Logits(x);
        Assert.True(a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>());
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
        Assert.Equal(DigitClassifier.ModelType, json["model_type"]!.GetValue<string>());
        Assert.Equal(2, json["n_layer"]!.GetValue<long>());
    }

    [Fact]
    public void BrokenConfigsNameTheFileAndTheField()
    {
        torch.manual_seed(5);
        using var clf = DigitClassifier.Create(Small, Labels);
        string dir = Path.Combine(root, "bad");
        clf.Save(dir);
        string path = Path.Combine(dir, "config.json");
        var good = File.ReadAllText(path);

        void Expect(Func<JsonObject, JsonObject> edit, string words)
        {
            File.WriteAllText(path, edit(JsonNode.Parse(good)!.AsObject()).ToJsonString());
            var e = Assert.Throws<InvalidDataException>(() => DigitClassifier.Load(dir).Dispose());
            Assert.Contains(path, e.Message);
            Assert.Contains(words, e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        Expect(j => { j["labels"] = new JsonArray("a", "b"); return j; }, "2 labels for num_classes 4");
        Expect(j => { j["d_modle"] = 8; return j; }, "d_modle");
        Expect(j => { j["n_fft"] = 127; return j; }, "n_fft");
        Expect(j => { j["model_type"] = "vim"; return j; }, "model_type");
        // Weights of another shape: the tensor is named.
        File.WriteAllText(path, JsonNode.Parse(good)!.AsObject().Also(j => j["d_model"] = 12).ToJsonString());
        var w = Assert.Throws<InvalidDataException>(() => DigitClassifier.Load(dir).Dispose());
        Assert.Contains("model.safetensors", w.Message);

        var o = Assert.Throws<ArgumentException>(() => DigitClassifierConfig.Default.With([new("d_modle", "8")]));
        Assert.Contains("d_modle", o.Message);
        Assert.Equal(96, DigitClassifierConfig.Default.With([new("d_model", "96")]).DModel);
        Assert.Throws<ArgumentException>(() => DigitClassifierConfig.Preset("huge"));
    }

    [Fact]
    public void AugmentationShiftsAndScalesEachClip()
    {
        const int l = 200, maxShift = 12;
        using var x = randn(6, l);
        var aug = new DigitAugment(MaxShiftSeconds: maxShift / 1000.0, GainDb: 6, NoiseProbability: 0);
        using var y = aug.Apply(x, new Random(11), sampleRate: 1000);
        var xs = x.data<float>().ToArray();
        var ys = y.data<float>().ToArray();
        var seen = new HashSet<int>();
        for (int i = 0; i < 6; i++)
        {
            // Some shift s in [-max, max] and gain g in [-6, 6] dB explain the row: y[t] = g x[t - s], zeros shifted in.
            bool found = false;
            for (int s = -maxShift; s <= maxShift && !found; s++)
            {
                int probe = Math.Clamp(l / 2, s, l - 1 + s);                             // a t with t - s inside
                double g = ys[i * l + probe] / xs[i * l + probe - s];
                if (!(g >= Math.Pow(10, -6 / 20.0) - 1e-4 && g <= Math.Pow(10, 6 / 20.0) + 1e-4)) continue;
                found = Enumerable.Range(0, l).All(t =>
                {
                    double want = t - s >= 0 && t - s < l ? g * xs[i * l + t - s] : 0.0;
                    return Math.Abs(ys[i * l + t] - want) <= 1e-4 * (1 + Math.Abs(want));
                });
                if (found) seen.Add(s);
            }
            Assert.True(found, $"row {i} is not a shifted, scaled copy");
        }
        Assert.True(seen.Count > 1, "every clip got the same shift");

        // Noise at a fixed SNR: the added power is the clip's power / 10^(snr/10).
        var noisy = new DigitAugment(0, 0, NoiseProbability: 1, MinSnrDb: 20, MaxSnrDb: 20);
        using var big = randn(4, 20000);
        using var z = noisy.Apply(big, new Random(3), 1000);
        using var ratio = (z - big).square().mean([1]) / big.square().mean([1]);
        Assert.True(ratio.sub(0.01).abs().max().item<float>() < 0.001);
    }

    [Fact]
    public void EvaluateCountsTheConfusionMatrixLikeArgmax()
    {
        torch.manual_seed(6);
        using var clf = DigitClassifier.Create(Small, Labels);
        int[] classes = [0, 1, 2, 3, 3, 2, 1];
        using var x = Clips(classes, 4000, 8000, 13);
        using var y = tensor(classes.Select(c => (long)c).ToArray());
        var r = DigitTraining.Evaluate(clf, x, y, batchSize: 3, split: "toy");
        using var logits = clf.Logits(x);
        var pred = logits.argmax(1).data<long>().ToArray();
        var want = new long[4, 4];
        for (int i = 0; i < classes.Length; i++) want[classes[i], pred[i]]++;
        Assert.Equal(want, r.Confusion);
        Assert.Equal(pred.Zip(classes).Count(p => p.First == p.Second) / (double)classes.Length, r.Accuracy, 12);
        using var ce = nn.functional.cross_entropy(logits, y);
        Assert.Equal(ce.item<float>(), r.Loss, 4);
        Assert.Equal(7, r.ToJson()["count"]!.GetValue<long>());
    }
}

static class DigitClassifierJsonExtensions
{
    public static JsonObject Also(this JsonObject o, Action<JsonObject> edit)
    {
        edit(o);
        return o;
    }
}
