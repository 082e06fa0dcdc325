// bf16 mixed precision through every vision trainer (ClassificationOptions.Precision, DiffusionTrainOptions.Precision,
// `--precision` of ssm-vision and ssm-diffuse train): while training, the matrices compute in bf16 and the SSM
// parameters stay float32; the loss is finite and the weights move; a checkpoint holds AdamW's float32 master copies
// and a run resumed from it ends where an uninterrupted one does; the saved run loads into a float32 model whose
// outputs the bf16 model matches within bf16 rounding (the float32 model is the reference: same weights, no rounding
// of activations).
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Apps.Diffusion;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using Ssm.Vision;
using Ssm.Vision.Cli;
using Ssm.Tests;
using static TorchSharp.torch;

namespace Ssm.Vision.Tests;

public sealed class Bf16TrainingTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-bf16-vision-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static readonly string[] Classes = ["a", "b", "c", "d"];

    /// <summary>n random 8x8 grey images, the label a function of where a bright patch is.</summary>
    static ImageDataset Patches(int n, int seed) => ClassificationTests.Synthetic(n, 8, seed, Classes.Length);

    static readonly Dictionary<string, KeyValuePair<string, string>[]> TinyConfigs = new()
    {
        ["vim"] = [new("depth", "2"), new("embed_dim", "16"), new("patch_size", "2"), new("d_state", "4")],
        ["vmamba"] = [new("dims", "[8, 16]"), new("depths", "[1, 1]"), new("patch_size", "2"), new("d_state", "4")],
        ["cnn"] = [],
    };

    static ImageClassifier Tiny(string type, int seed)
    {
        torch.manual_seed(seed);
        return ImageClassifier.Create(type, type == "cnn" ? "tiny" : null, Classes, new ImageSpec(1, 8, [0.2f], [0.3f]), TinyConfigs[type]);
    }

    static TrainOptions Options(string dir, long steps = 3) => new()
    {
        Steps = steps, LearningRate = 3e-3, WarmupSteps = 1, CheckpointEvery = 2, LogEvery = 0, Seed = 4, OutputDir = dir, Resume = true,
    };

    static readonly ClassificationOptions Bf16 = new() { BatchSize = 8, Augment = AugmentOptions.None, Precision = Precision.Bf16 };

    [Theory]
    [InlineData("vim")]
    [InlineData("vmamba")]
    [InlineData("cnn")]
    public void ClassifierTrainsInBf16AndItsSavedRunEvaluatesInFloat32(string type)
    {
        var data = Patches(24, 1);
        string dir = Path.Combine(_dir, type);
        using var clf = Tiny(type, 2);
        var before = Bf16Check.Snapshot(clf.Model);
        bool checkedDuringTraining = false;
        var result = Classification.Train(clf, data, data.Take(8), Options(dir), Bf16, afterStep: _ =>
        {
            if (checkedDuringTraining) return;
            Bf16Check.AssertMixed(clf.Model, ssm: type != "cnn");
            checkedDuringTraining = true;
        });
        Assert.True(checkedDuringTraining);
        Assert.True(double.IsFinite(result.LastLoss), $"loss {result.LastLoss}");
        Assert.True(result.LastEval["val_loss"] is var v && double.IsFinite(v), "val_loss not finite");
        Assert.True(Bf16Check.Changed(clf.Model, before) > clf.Model.parameters().Count() / 2, "the weights did not move");

        // The checkpoint holds float32 master copies of the bf16 parameters, none of the float32 ones.
        var opt = SafeTensors.Load(Path.Combine(Trainer.LatestCheckpoint(dir)!, "optimizer.safetensors"));
        try
        {
            var masters = opt.Keys.Where(k => k.StartsWith("master.")).Select(k => k["master.".Length..]).ToHashSet();
            var bf16 = clf.Model.named_parameters().Where(p => p.parameter.dtype == ScalarType.BFloat16).Select(p => p.name).ToHashSet();
            Assert.NotEmpty(masters);
            Assert.Equal(bf16.Order(), masters.Order());
            Assert.All(opt.Where(kv => kv.Key.StartsWith("master.")), kv => Assert.Equal(ScalarType.Float32, kv.Value.dtype));
        }
        finally { foreach (var t in opt.Values) t.Dispose(); }

        // The saved run loads as a float32 model with the same weights; the bf16 model matches its logits within bf16 rounding.
        using var loaded = ImageClassifier.Load(dir);
        Assert.All(loaded.Model.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        foreach (var (name, p) in clf.Model.named_parameters())
            Assert.True(Bf16Check.Same(p.detach().to_type(ScalarType.Float32), loaded.Model.state_dict()[name]), $"{name} did not load as saved");
        using var x = torch.randn(6, 1, 8, 8);
        using var want = loaded.Logits(x);
        using var got = clf.Logits(x);
        Assert.Equal(ScalarType.Float32, got.dtype);
        TestUtil.Close(got, want, 0.05, $"{type} bf16 vs float32 logits");
        var eval = Classification.Evaluate(loaded, data, 8);
        Assert.True(double.IsFinite(eval.Loss));
    }

    [Fact]
    public void ABf16RunResumedFromItsCheckpointEndsLikeAnUninterruptedOne()
    {
        var data = Patches(24, 3);
        string a = Path.Combine(_dir, "a"), b = Path.Combine(_dir, "b");
        using (var clf = Tiny("vim", 5)) Classification.Train(clf, data, null, Options(a, 5), Bf16);
        using (var clf = Tiny("vim", 5))
        {
            using var cts = new CancellationTokenSource();
            var r = Classification.Train(clf, data, null, Options(b, 5), Bf16, cts.Token, afterStep: s => { if (s == 2) cts.Cancel(); });
            Assert.Equal(2, r.Steps);
        }
        // Resuming it in float32 is refused before any step, naming the checkpoint and the option to use.
        using (var clf = Tiny("vim", 77))
        {
            var e = Assert.Throws<InvalidDataException>(() => Classification.Train(clf, data, null, Options(b, 5), Bf16 with { Precision = Precision.Fp32 }));
            Assert.Contains(Trainer.CheckpointName(2), e.Message);
            Assert.Contains("--precision bf16", e.Message);
            // And a float32 run is not resumed in bf16.
            Classification.Train(clf, data, null, Options(Path.Combine(_dir, "c"), 2), Bf16 with { Precision = Precision.Fp32 });
            using var other = Tiny("vim", 78);
            e = Assert.Throws<InvalidDataException>(() => Classification.Train(other, data, null, Options(Path.Combine(_dir, "c"), 2), Bf16));
            Assert.Contains("--precision fp32", e.Message);
        }
        // A fresh model with other weights resumes from step 2: weights, moments and master copies come from the checkpoint.
        using (var clf = Tiny("vim", 77))
        {
            var r = Classification.Train(clf, data, null, Options(b, 5), Bf16);
            Assert.EndsWith(Trainer.CheckpointName(2), r.ResumedFrom);
        }
        var wa = SafeTensors.Load(Path.Combine(a, ModelFolder.WeightsFile));
        var wb = SafeTensors.Load(Path.Combine(b, ModelFolder.WeightsFile));
        try
        {
            Assert.Contains(wa.Values, t => t.dtype == ScalarType.BFloat16);
            Assert.Equal(wa.Keys.Order(), wb.Keys.Order());
            foreach (var (name, t) in wa)
            {
                Assert.Equal(t.dtype, wb[name].dtype);
                Assert.True(Bf16Check.Same(t, wb[name]), $"{name} differs after resume");
            }
        }
        finally { foreach (var t in wa.Values.Concat(wb.Values)) t.Dispose(); }
    }

    [Theory]
    [InlineData("diffussm")]
    [InlineData("dis")]
    public void DenoiserTrainsInBf16AndPublishesAFloat32Ema(string type)
    {
        var rng = new Random(6);
        var pixels = new byte[16 * 64];
        rng.NextBytes(pixels);
        var data = new ImageDataset("noise", pixels, Enumerable.Range(0, 16).Select(i => i % 3).ToArray(), 1, 8, 8);
        string dir = Path.Combine(_dir, type);
        torch.manual_seed(8);
        using var gen = ImageDiffusion.Create(type, "tiny", ["x", "y", "z"], 1, 8);
        var before = Bf16Check.Snapshot(gen.Model);
        bool checkedDuringTraining = false;
        var result = ImageDiffusion.Train(gen, data, data.Take(4), Options(dir),
            new DiffusionTrainOptions { BatchSize = 8, EmaDecay = 0.5, GridPerClass = 0, Precision = Precision.Bf16 }, afterStep: _ =>
            {
                if (checkedDuringTraining) return;
                Bf16Check.AssertMixed(gen.Model);
                checkedDuringTraining = true;
            });
        Assert.True(checkedDuringTraining);
        Assert.True(double.IsFinite(result.LastLoss), $"loss {result.LastLoss}");
        Assert.True(double.IsFinite(result.LastEval["val_loss"]), "val_loss not finite");
        Assert.True(Bf16Check.Changed(gen.Model, before) > 0, "the weights did not move");

        // The published model is the EMA in float32 (the in-memory model went back to float32 with it).
        using var loaded = ImageDiffusion.Load(dir);
        foreach (var (name, p) in gen.Model.named_parameters())
        {
            Assert.Equal(ScalarType.Float32, p.dtype);
            Assert.True(Bf16Check.Same(p.detach(), loaded.Model.state_dict()[name]), $"{name} did not load as saved");
        }
        // Its bf16 form predicts what the float32 model predicts, within bf16 rounding.
        VisionCheck.Perturb(loaded.Model, 0.5);   // leave adaLN-Zero's zero output so the prediction carries signal
        using var x = torch.randn(4, 1, 8, 8);
        using var t = torch.tensor(new long[] { 3, 100, 500, 900 });
        using var y = torch.tensor(new long[] { 0, 1, 2, 3 });
        loaded.Model.eval();
        using var noGrad = torch.no_grad();
        using var want = loaded.Model.call(x, t, y);
        MixedPrecision.Apply(loaded.Model, Precision.Bf16);
        Bf16Check.AssertMixed(loaded.Model);
        using var got = loaded.Model.call(x, t, y);
        Assert.Equal(ScalarType.Float32, got.dtype);
        TestUtil.Close(got, want, 0.05, $"{type} bf16 vs float32 prediction");
    }

    // ------------------------------------------------------------------ the CLIs

    /// <summary>A data folder of n random 8x8 images per split, 3 classes.</summary>
    string DataFolder(int n)
    {
        string dir = Path.Combine(_dir, "data");
        if (Directory.Exists(dir)) return dir;
        Directory.CreateDirectory(dir);
        var rng = new Random(9);
        var splits = new JsonObject();
        foreach (var split in new[] { "train", "val", "test" })
        {
            var px = new byte[n * 64];
            rng.NextBytes(px);
            Idx.Write(Path.Combine(dir, $"{split}-images.gz"), px, [n, 8, 8]);
            Idx.Write(Path.Combine(dir, $"{split}-labels"), Enumerable.Range(0, n).Select(i => (byte)(i % 3)).ToArray(), [n]);
            splits[split] = new JsonObject { ["images"] = $"{split}-images.gz", ["labels"] = $"{split}-labels" };
        }
        File.WriteAllText(Path.Combine(dir, "dataset.json"), new JsonObject
        {
            ["name"] = "toy", ["labels"] = new JsonArray("x", "y", "z"), ["hflip"] = false, ["splits"] = splits,
        }.ToJsonString());
        return dir;
    }

    (int Code, string Out, string Err) Vision(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = VisionCli.Run(args, o, e, defaultModelDir: Path.Combine(_dir, "no-default-model"));
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void VisionTrainWithBf16WritesARunThatEvalReads()
    {
        string data = DataFolder(12), output = Path.Combine(_dir, "vision-run");
        var (code, o, e) = Vision("train", "--data", data, "--out", output, "--model-type", "vim", "--set", "depth=1", "--set", "embed_dim=16",
            "--set", "patch_size=4", "--steps", "2", "--batch-size", "4", "--precision", "bf16", "--device", "cpu", "--json");
        Assert.True(code == 0, e);
        Assert.Contains("bf16", e);
        Assert.True(JsonNode.Parse(o)!["completed"]!.GetValue<bool>());
        var weights = SafeTensors.Load(Path.Combine(output, ModelFolder.WeightsFile));
        try
        {
            Assert.Equal(ScalarType.BFloat16, weights["head.weight"].dtype);
            Assert.Equal(ScalarType.Float32, weights["layers.0.mixer.A_log"].dtype);
        }
        finally { foreach (var t in weights.Values) t.Dispose(); }
        (code, o, e) = Vision("eval", "--model", output, "--data", data, "--json");
        Assert.True(code == 0, e);
        Assert.Equal(12, JsonNode.Parse(o)!["count"]!.GetValue<long>());
    }

    [Fact]
    public void VisionTrainRejectsAnUnknownPrecisionInOneLine()
    {
        var (code, _, e) = Vision("train", "--data", DataFolder(4), "--out", Path.Combine(_dir, "bad"), "--precision", "fp16", "--device", "cpu");
        Assert.NotEqual(0, code);
        var lines = ConsoleCapture.Lines(e);
        Assert.Single(lines);
        Assert.Equal("error: --precision fp16: expected fp32 or bf16", lines[0]);
        Assert.False(Directory.Exists(Path.Combine(_dir, "bad")));
    }
}

/// <summary>ssm-diffuse writes to the process console, so these run apart from tests that print.</summary>
[Collection(ConsoleRedirectCollection.Name)]
public sealed class DiffuseBf16CliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-bf16-diffuse-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    (int Code, string Out, string Err) Run(params string[] args) => ConsoleCapture.Run(() =>
        DiffuseCli.Run(args, defaultModelDir: Path.Combine(_dir, "no-default-model"), defaultJudgeDir: Path.Combine(_dir, "no-judge")));

    string DataFolder()
    {
        string dir = Path.Combine(_dir, "data");
        Directory.CreateDirectory(dir);
        var rng = new Random(10);
        var splits = new JsonObject();
        foreach (var split in new[] { "train", "val" })
        {
            var px = new byte[8 * 64];
            rng.NextBytes(px);
            Idx.Write(Path.Combine(dir, $"{split}-images.gz"), px, [8, 8, 8]);
            Idx.Write(Path.Combine(dir, $"{split}-labels"), Enumerable.Range(0, 8).Select(i => (byte)(i % 2)).ToArray(), [8]);
            splits[split] = new JsonObject { ["images"] = $"{split}-images.gz", ["labels"] = $"{split}-labels" };
        }
        File.WriteAllText(Path.Combine(dir, "dataset.json"), new JsonObject
        {
            ["name"] = "toy", ["labels"] = new JsonArray("x", "y"), ["hflip"] = false, ["splits"] = splits,
        }.ToJsonString());
        return dir;
    }

    [Fact]
    public void DiffuseTrainWithBf16WritesAModelThatSamples()
    {
        string output = Path.Combine(_dir, "run");
        var r = Run("train", "--data", DataFolder(), "--out", output, "--model-type", "dis", "--preset", "tiny", "--steps", "2", "--batch-size", "4",
            "--grid-per-class", "0", "--timesteps", "20", "--precision", "bf16", "--device", "cpu", "--json");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("bf16", r.Err);
        Assert.True(JsonNode.Parse(r.Out)!["completed"]!.GetValue<bool>());
        r = Run("sample", "--model", output, "--n", "1", "--steps", "2", "--device", "cpu", "--out", Path.Combine(_dir, "s.png"));
        Assert.True(r.Code == 0, r.Err);
    }

    [Fact]
    public void DiffuseTrainRejectsAnUnknownPrecisionInOneLine()
    {
        string line = ConsoleCapture.AssertOneLineError(Run("train", "--data", Path.Combine(_dir, "none"), "--out", Path.Combine(_dir, "bad"),
            "--precision", "half", "--device", "cpu"));
        Assert.Equal("error: --precision half: expected fp32 or bf16", line);
    }
}
