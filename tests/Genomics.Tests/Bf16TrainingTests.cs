// bf16 mixed precision through the DNA trainers (DnaTrainOptions.Precision for TrainCausal, TrainMaskedLM and
// TrainClassifier, and `ssm-dna train --precision`): while training, the matrices and embeddings compute in bf16 and
// the SSM parameters stay float32, tied weights stay tied; the loss is finite and the weights move; the saved run
// loads into a float32 model with the same weights, whose scores the bf16 model matches within bf16 rounding (the
// float32 model is the reference: same weights, no rounding of activations).
using System.Text.Json.Nodes;
using Ssm.Apps.Dna;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using Ssm.Genomics;
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Tests;
using static TorchSharp.torch;

namespace Ssm.Genomics.Tests;

[Collection(ConsoleRedirectCollection.Name)]
public sealed class Bf16TrainingTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-bf16-dna-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }


    /// <summary>The saved run as a float32 model with exactly the in-memory model's weights.</summary>
    static DnaModel LoadAndCompare(DnaModel model, string dir)
    {
        var loaded = DnaModel.Load(dir, torch.CPU);
        Assert.All(loaded.Module.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        var saved = loaded.Module.state_dict();
        foreach (var (name, p) in model.Module.named_parameters())
            Assert.True(Bf16Check.Same(p.detach().to_type(ScalarType.Float32), saved[name]), $"{name} did not load as saved");
        return loaded;
    }

    static TrainOptions Options(string dir) => new() { Steps = 3, LearningRate = 1e-2, WarmupSteps = 1, LogEvery = 0, CheckpointEvery = 2, OutputDir = dir, Seed = 1 };

    static readonly DnaTrainOptions Bf16 = new() { BatchSize = 4, SeqLen = 48, EvalWindows = 4, EvalBatch = 4, EvalSeed = 2, Precision = Precision.Bf16 };

    [Fact]
    public void CausalLMTrainsInBf16AndItsSavedRunScoresInFloat32()
    {
        string dir = Path.Combine(_dir, "lm");
        var source = DnaLMTests.MotifGenome(11);
        torch.manual_seed(3);
        using var model = DnaModel.CreateCausal(DnaLMConfig.Tiny);
        var before = Bf16Check.Snapshot(model.Module);
        bool checkedDuringTraining = false;
        var result = DnaTraining.TrainCausal(model, source, source, Options(dir), Bf16, afterStep: _ =>
        {
            if (checkedDuringTraining) return;
            Bf16Check.AssertMixed(model.Module);
            checkedDuringTraining = true;
        });
        Assert.True(checkedDuringTraining);
        Assert.Contains("lm_head.weight", ModelFolder.TiedNames(model.Module));        // still one tensor with the embedding
        Assert.True(double.IsFinite(result.LastLoss), $"loss {result.LastLoss}");
        Assert.True(Bf16Check.Changed(model.Module, before) > model.Module.parameters().Count() / 2, "the weights did not move");

        using var loaded = LoadAndCompare(model, dir);
        double bf16 = result.LastEval["valid_bits_per_base"];
        double fp32 = DnaTraining.EvalCausal(loaded, source, 4, 48, 2, 4).BitsPerBase;
        Assert.True(Math.Abs(bf16 - fp32) < 0.03 * fp32, $"{bf16} bits/base (bf16) vs {fp32} (float32)");
        using var ids = DnaTraining.ValidationWindows(source, 3, 40, 5);
        using var want = loaded.Logits(ids);
        using var got = model.Logits(ids);
        Assert.Equal(ScalarType.Float32, got.dtype);
        TestUtil.Close(got, want, 0.05, "causal LM bf16 vs float32 logits");
    }

    [Fact]
    public void CaduceusMaskedLMTrainsInBf16AndItsSavedRunScoresInFloat32()
    {
        string dir = Path.Combine(_dir, "mlm");
        var source = DnaLMTests.MotifGenome(12);
        torch.manual_seed(4);
        using var model = DnaModel.CreateMaskedLM(CaduceusConfig.TinyPs);
        var before = Bf16Check.Snapshot(model.Module);
        var result = DnaTraining.TrainMaskedLM(model, source, source, Options(dir), Bf16);
        Bf16Check.AssertMixed(model.Module);                                                        // the model stays in its training precision
        Assert.NotEmpty(ModelFolder.TiedNames(model.Module));                            // the LM head still is the embedding
        Assert.True(double.IsFinite(result.LastLoss), $"loss {result.LastLoss}");
        Assert.True(Bf16Check.Changed(model.Module, before) > model.Module.parameters().Count() / 2, "the weights did not move");

        using var loaded = LoadAndCompare(model, dir);
        using var ids = DnaTraining.ValidationWindows(source, 4, 48, 2);
        var (loss16, acc16, _) = DnaTraining.EvalMaskedLM(model, ids, 2, 4);
        var (loss32, _, _) = DnaTraining.EvalMaskedLM(loaded, ids, 2, 4);
        Assert.Equal(result.LastEval["valid_mlm_loss"], loss16, 6);
        Assert.InRange(acc16, 0.0, 1.0);
        Assert.True(Math.Abs(loss16 - loss32) < 0.03 * loss32, $"MLM loss {loss16} (bf16) vs {loss32} (float32)");
    }

    [Fact]
    public void CaduceusClassifierTrainsInBf16AndItsSavedRunEvaluatesInFloat32()
    {
        string dir = Path.Combine(_dir, "clf");
        var rng = new Random(7);
        var (x, labels) = CaduceusTests.GcVersusAt(rng, 16, 24);
        using var xDispose = x;
        using var labelsDispose = labels;
        var data = new DnaLabelledSet(x, labels);
        torch.manual_seed(5);
        using var model = DnaModel.CreateClassifier(CaduceusConfig.Tiny, ["gc-rich", "at-rich"]);
        var before = Bf16Check.Snapshot(model.Module);
        var result = DnaTraining.TrainClassifier(model, data, data, Options(dir), Bf16 with { BatchSize = 8 });
        Bf16Check.AssertMixed(model.Module);
        Assert.True(double.IsFinite(result.LastLoss), $"loss {result.LastLoss}");
        Assert.True(Bf16Check.Changed(model.Module, before) > model.Module.parameters().Count() / 2, "the weights did not move");

        using var loaded = LoadAndCompare(model, dir);
        var e16 = DnaTraining.EvalClassifier(model, data);
        var e32 = DnaTraining.EvalClassifier(loaded, data);
        Assert.Equal(result.LastEval["valid_loss"], e16.Loss, 6);
        Assert.True(Math.Abs(e16.Loss - e32.Loss) < 0.03 * e32.Loss, $"loss {e16.Loss} (bf16) vs {e32.Loss} (float32)");
        using var p16 = model.ClassProbabilities(x);
        using var p32 = loaded.ClassProbabilities(x);
        Assert.Equal(ScalarType.Float32, p16.dtype);
        TestUtil.Close(p16, p32, 0.02, "class probabilities bf16 vs float32");
    }

    // ------------------------------------------------------------------ the CLI

    (int Code, string Out, string Err) Run(params string[] args) =>
        ConsoleCapture.Run(() => DnaCli.Run(args, defaultModelsDir: Path.Combine(_dir, "no-models")));

    /// <summary>A prepared human folder as data/dna.sh writes it (human/human.json and raw .seq files), random bases.</summary>
    string HumanData()
    {
        var rng = new Random(8);
        string Seq(int n) => new(Enumerable.Range(0, n).Select(_ => "ACGT"[rng.Next(4)]).ToArray());
        string train = Seq(2000), valid = Seq(800);
        return DnaCliTests.WriteHumanData(Path.Combine(_dir, "data"), train, valid);
    }

    [Fact]
    public void TrainWithBf16WritesARunThatLoads()
    {
        string outDir = Path.Combine(_dir, "cli-run");
        var r = Run("train", "--task", "lm", "--data", HumanData(), "--out", outDir, "--preset", "tiny", "--steps", "2", "--batch-size", "2",
            "--length", "32", "--eval-windows", "2", "--precision", "bf16", "--device", "cpu", "--json");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("bf16", r.Err);
        var summary = JsonNode.Parse(r.Out)!;
        Assert.True(summary["completed"]!.GetValue<bool>());
        Assert.True(double.IsFinite(summary["valid_bits_per_base"]!.GetValue<double>()));
        var weights = SafeTensors.Load(Path.Combine(outDir, ModelFolder.WeightsFile));
        try
        {
            Assert.Equal(ScalarType.BFloat16, weights["backbone.embeddings.weight"].dtype);
            Assert.All(weights.Where(kv => kv.Key.EndsWith(".A_log")), kv => Assert.Equal(ScalarType.Float32, kv.Value.dtype));
        }
        finally { foreach (var t in weights.Values) t.Dispose(); }
        using var loaded = DnaModel.Load(outDir, torch.CPU);
        Assert.Equal(DnaModel.CausalModelType, loaded.ModelType);
    }

    [Fact]
    public void AnUnknownPrecisionIsAOneLineUsageError()
    {
        var r = Run("train", "--task", "lm", "--data", Path.Combine(_dir, "none"), "--out", Path.Combine(_dir, "bad"), "--precision", "fp8", "--device", "cpu");
        string line = ConsoleCapture.AssertOneLineError(r);
        Assert.Equal(2, r.Code);
        Assert.Equal("error: --precision fp8: expected fp32 or bf16", line);
        Assert.False(Directory.Exists(Path.Combine(_dir, "bad")));
    }
}
