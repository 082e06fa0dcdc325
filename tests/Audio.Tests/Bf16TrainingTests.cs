// bf16 mixed precision through the audio trainers (AudioTrainOptions.Precision, DigitTrainOptions.Precision, and
// `--precision` of ssm-audio train / train-classifier): while training, the matrices compute in bf16 and the SSM
// parameters stay float32 (for SaShiMi's S4D variant the whole S4D layer, whose FFT convolution is float32 only); the
// loss is finite and the weights move; the saved run loads into a float32 model with the same weights, and the bf16
// model's outputs match that float32 model's within bf16 rounding (the float32 model is the reference: same weights,
// no rounding of activations).
using System.Globalization;
using System.Text.Json.Nodes;
using Ssm.Apps.Audio;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Tests;
using static TorchSharp.torch;

namespace Ssm.Audio.Tests;

[Collection(ConsoleRedirectCollection.Name)]
public sealed class Bf16TrainingTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-bf16-audio-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }


    /// <summary>Clips (n, l) of a tone and its harmonic, a different pitch per clip, at 16 kHz.</summary>
    static Tensor Tones(int n, int l)
    {
        var x = new float[n * l];
        for (int i = 0; i < n; i++)
            for (int t = 0; t < l; t++)
            {
                double s = t / 16000.0, f = 300 + 170 * i;
                x[i * l + t] = (float)(0.5 * Math.Sin(2 * Math.PI * f * s) + 0.2 * Math.Sin(2 * Math.PI * 3 * f * s));
            }
        return torch.tensor(x, new long[] { n, l });
    }

    static AudioModel Tiny(string kind, int seed) => global::Audio.Tests.AudioModelTests.Tiny(kind, seed);

    [Theory]
    [InlineData("sashimi")]
    [InlineData("sashimi-mamba")]
    [InlineData("lstm")]
    public void AudioModelTrainsInBf16AndItsSavedRunScoresInFloat32(string kind)
    {
        string dir = Path.Combine(_dir, kind);
        using var audio = Tones(3, 400);
        using var model = Tiny(kind, 3);
        var before = Bf16Check.Snapshot(model.Model);
        Func<string, bool>? alsoFp32 = model.Model is IFp32Parameters f ? f.KeepsFp32 : null;
        bool checkedDuringTraining = false;
        var options = new TrainOptions { Steps = 3, LearningRate = 1e-2, WarmupSteps = 1, LogEvery = 0, CheckpointEvery = 2, OutputDir = dir, Seed = 2 };
        var result = AudioTraining.Train(model, audio, audio, options,
            new AudioTrainOptions { BatchSize = 2, CropLength = 128, EvalClips = 0, Precision = Precision.Bf16 }, afterStep: _ =>
            {
                if (checkedDuringTraining) return;
                Bf16Check.AssertMixed(model.Model, ssm: kind != "lstm", alsoFp32);
                if (kind == "sashimi")
                {
                    // The S4D variant: every S4D layer stays float32 as a whole (its output projection included), the rest is bf16.
                    var s4d = model.Model.named_parameters().Where(p => p.name.Contains(".layer.output_linear.")).ToList();
                    Assert.NotEmpty(s4d);
                    Assert.All(s4d, p => Assert.Equal(ScalarType.Float32, p.parameter.dtype));
                    Assert.Equal(ScalarType.BFloat16, model.Model.named_parameters().First(p => p.name.EndsWith(".layer.ff.2.weight")).parameter.dtype);
                }
                checkedDuringTraining = true;
            });
        Assert.True(checkedDuringTraining);
        Assert.True(double.IsFinite(result.LastLoss), $"loss {result.LastLoss}");
        Assert.True(double.IsFinite(result.LastEval["valid_bits_per_sample"]), "validation NLL not finite");
        Assert.True(Bf16Check.Changed(model.Model, before) > model.Model.parameters().Count() / 2, "the weights did not move");

        using var loaded = AudioModel.Load(dir);
        Assert.All(loaded.Model.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        var saved = loaded.Model.state_dict();
        foreach (var (name, p) in model.Model.named_parameters())
            Assert.True(Bf16Check.Same(p.detach().to_type(ScalarType.Float32), saved[name]), $"{name} did not load as saved");
        using var classes = model.EncodeClips(audio);
        using var ids = model.ShiftedInputs(classes);
        using var want = loaded.Logits(ids);
        using var got = model.Logits(ids);
        Assert.Equal(ScalarType.Float32, got.dtype);
        TestUtil.Close(got, want, 0.05, $"{kind} bf16 vs float32 logits");
        double bits32 = loaded.BitsPerSample(classes), bits16 = model.BitsPerSample(classes);
        Assert.True(Math.Abs(bits16 - bits32) < 0.05 * bits32, $"NLL {bits16} bits (bf16) vs {bits32} (float32)");
    }

    [Fact]
    public void DigitClassifierTrainsInBf16AndItsSavedRunEvaluatesInFloat32()
    {
        string dir = Path.Combine(_dir, "digits");
        int[] classes = [0, 1, 2, 3, 0, 1, 2, 3];
        var rng = new Random(4);
        using var clips = torch.tensor(classes.SelectMany(c => DigitClassifierTests.Tone(c, 4000, 8000, rng)).ToArray(), [classes.Length, 4000]);
        using var labels = torch.tensor(classes.Select(c => (long)c).ToArray());
        using var batch = new AudioBatch(clips.alias(), labels.alias(), [], new long[classes.Length], 8000);
        torch.manual_seed(5);
        using var clf = DigitClassifier.Create(DigitClassifierTests.Small, DigitClassifierTests.Labels);
        var before = Bf16Check.Snapshot(clf.Model);
        var o = new DigitTrainOptions
        {
            Steps = 3, BatchSize = 4, LearningRate = 1e-2, WarmupSteps = 1, LogEvery = 0, OutputDir = dir, EvalBatchSize = 4,
            Augment = DigitAugment.None, Precision = Precision.Bf16,
        };
        var result = DigitTraining.Train(clf, batch, batch, o);
        Assert.True(double.IsFinite(result.LastLoss), $"loss {result.LastLoss}");
        Assert.True(double.IsFinite(result.LastEval["val_loss"]), "validation loss not finite");
        Bf16Check.AssertMixed(clf.Model, ssm: true);                                         // the model stays in its training precision
        Assert.True(Bf16Check.Changed(clf.Model, before) > clf.Model.parameters().Count() / 2, "the weights did not move");

        using var loaded = DigitClassifier.Load(dir);
        Assert.All(loaded.Model.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        using var want = loaded.Logits(clips);
        using var got = clf.Logits(clips);
        Assert.Equal(ScalarType.Float32, got.dtype);
        TestUtil.Close(got, want, 0.05, "digit classifier bf16 vs float32 logits");
        var (features, probs) = clf.FeaturesAndProbs(clips, batchSize: 3);
        using (features) using (probs)
        {
            Assert.Equal(ScalarType.Float32, features.dtype);
            using var sum = probs.sum(1);
            Assert.True(sum.allclose(torch.ones(classes.Length), 1e-3, 1e-3));
        }
        var eval = DigitTraining.Evaluate(loaded, batch, 4, "train");
        Assert.True(double.IsFinite(eval.Loss));
    }

    // ------------------------------------------------------------------ the CLI

    (int Code, string Out, string Err) Run(params string[] args) => ConsoleCapture.Run(() =>
        AudioCli.Run(args, defaultModelDir: Path.Combine(_dir, "no-default-model"), defaultJudgeDir: Path.Combine(_dir, "no-judge")));

    /// <summary>A spoken-digit-style folder: tones of 4 classes, 0.5 s clips at 8 kHz, 2 train / 1 valid / 1 test per class.</summary>
    string Dataset()
    {
        string dir = Path.Combine(_dir, "tones");
        if (Directory.Exists(dir)) return dir;
        var labels = DigitClassifierTests.Labels;
        var rng = new Random(6);
        var lines = new List<string> { AudioDataset.ManifestHeader };
        var counts = new Dictionary<string, int> { ["train"] = 0, ["valid"] = 0, ["test"] = 0 };
        foreach (var (split, per) in new[] { ("train", 2), ("valid", 1), ("test", 1) })
            for (int c = 0; c < labels.Length; c++)
                for (int i = 0; i < per; i++)
                {
                    string file = $"{split}/{labels[c]}_{i}.wav";
                    Wav.Write(Path.Combine(dir, file), DigitClassifierTests.Tone(c, 4000, 8000, rng), 8000, WavSampleFormat.Pcm16);
                    lines.Add(string.Join('\t', file, split, labels[c], $"v{split}{i}", $"g{split}{i}", "0.5"));
                    counts[split]++;
                }
        File.WriteAllText(Path.Combine(dir, AudioDataset.ManifestName), string.Join('\n', lines) + "\n");
        File.WriteAllText(Path.Combine(dir, AudioDataset.InfoName), string.Create(CultureInfo.InvariantCulture,
            $$"""{"name": "tones", "sample_rate": 8000, "clip_seconds": 0.5, "labels": ["{{string.Join("\", \"", labels)}}"], "splits": {"train": {{counts["train"]}}, "valid": {{counts["valid"]}}, "test": {{counts["test"]}}}, "script": "data/spoken-digits.sh"}"""));
        return dir;
    }

    static JsonNode Json((int Code, string Out, string Err) r)
    {
        Assert.True(r.Code == 0, r.Err);
        return JsonNode.Parse(r.Out)!;
    }

    [Fact]
    public void TrainAndTrainClassifierWithBf16WriteRunsThatLoad()
    {
        string data = Dataset(), lm = Path.Combine(_dir, "lm"), clf = Path.Combine(_dir, "clf");
        var r = Run("train", "--data", data, "--out", lm, "--model-type", "sashimi", "--preset", "tiny", "--set", "variant=mamba",
            "--sample-rate", "8000", "--steps", "2", "--batch-size", "2", "--crop", "256", "--precision", "bf16", "--device", "cpu", "--json");
        var doc = Json(r);
        Assert.Contains("bf16", r.Err);
        Assert.True(doc["completed"]!.GetValue<bool>());
        Assert.True(doc["valid_bits_per_sample"]!.GetValue<double>() is > 0 and < 16);
        Assert.True(Json(Run("eval", Path.Combine(data, "test"), "--model", lm, "--device", "cpu", "--json"))["bits_per_sample"]!.GetValue<double>() is > 0 and < 16);

        r = Run("train-classifier", "--data", data, "--out", clf, "--preset", "tiny", "--steps", "2", "--batch-size", "4",
            "--no-augment", "--precision", "bf16", "--device", "cpu", "--json");
        doc = Json(r);
        Assert.Contains("bf16", r.Err);
        Assert.True(doc["completed"]!.GetValue<bool>());
        Assert.True(double.IsFinite(doc["test"]!["loss"]!.GetValue<double>()));
        using var loaded = DigitClassifier.Load(clf);
        Assert.All(loaded.Model.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        var weights = SafeTensors.Load(Path.Combine(clf, ModelFolder.WeightsFile));
        try
        {
            Assert.Equal(ScalarType.BFloat16, weights["head.weight"].dtype);
            Assert.Equal(ScalarType.Float32, weights.First(kv => kv.Key.EndsWith(".A_log")).Value.dtype);
        }
        finally { foreach (var t in weights.Values) t.Dispose(); }
    }

    [Theory]
    [InlineData("train")]
    [InlineData("train-classifier")]
    public void AnUnknownPrecisionIsAOneLineError(string command)
    {
        string line = ConsoleCapture.AssertOneLineError(Run(command, "--data", Path.Combine(_dir, "none"), "--out", Path.Combine(_dir, "bad"),
            "--precision", "int8", "--device", "cpu"));
        Assert.Equal("error: --precision int8: expected fp32 or bf16", line);
        Assert.False(Directory.Exists(Path.Combine(_dir, "bad")));
    }
}
