// The shared trainer: AdamW against torch.optim.AdamW (an independent implementation), the schedule against its
// closed form, gradient clipping against torch's clip_grad_norm_, the sampler's epochs, model folders, and exact
// resume: a run interrupted (cancelled, or crashed) and resumed ends with bit-identical parameters.
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Backbone.IO;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Training;
using static TorchSharp.torch;
using AdamW = Ssm.Backbone.Training.AdamW;

namespace Backbone.Tests;

public class TrainingTests
{
    /// <summary>Bit-identical: same shape and every element equal.</summary>
    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static List<(string, Tensor)> Params(Generator g, int count)
    {
        var list = new List<(string, Tensor)>();
        for (int i = 0; i < count; i++)
            list.Add(($"p{i}", torch.randn(new long[] { 3 + i, 5 }, generator: g).requires_grad_()));
        return list;
    }

    [Fact]
    public void TrainerAppliesTheCallersWeightDecayRule()
    {
        // With a zero gradient only decoupled weight decay moves a weight: w <- w (1 - lr wd) per step (AdamW, Loshchilov
        // & Hutter alg. 2). The default rule decays the 2-D weight; a rule that spares it leaves it exactly unchanged.
        foreach (bool spare in new[] { false, true })
        {
            torch.manual_seed(2);
            using var lin = nn.Linear(3, 2);
            using var w0 = lin.weight!.detach().clone();
            var options = new TrainOptions
            {
                Steps = 3, LearningRate = 0.1, WeightDecay = 0.5, WarmupSteps = 0, MinLrRatio = 1, GradClip = 0, LogEvery = 0,
                Decay = spare ? (name, _) => name != "weight" : null,
            };
            new Trainer(lin, options, (_, _, _) => ((lin.weight! * 0).sum() + (lin.bias! * 0).sum(), 1), () => new JsonObject()).Run();
            using var expected = spare ? w0.clone() : w0 * Math.Pow(1 - 0.1 * 0.5, 3);
            Assert.True(lin.weight!.detach().allclose(expected, 1e-6, 1e-7), $"spare={spare}");
        }
    }

    [Fact]
    public void AdamWMatchesTorchOptimAdamW()
    {
        var g = new torch.Generator(11);
        var ours = Params(g, 3);
        var theirs = ours.Select(p => new Parameter(p.Item2.detach().clone())).ToList();
        const double lr = 3e-3, wd = 0.05, b1 = 0.8, b2 = 0.97, eps = 1e-6;
        var opt = new AdamW(ours, wd, b1, b2, eps, decay: (_, _) => true);
        var reference = torch.optim.AdamW(theirs, lr, b1, b2, eps, wd);
        for (int step = 0; step < 6; step++)
        {
            // The same random gradient for both (fresh each step, never zero).
            for (int i = 0; i < ours.Count; i++)
            {
                var grad = torch.randn(ours[i].Item2.shape, generator: g);
                ours[i].Item2.grad = grad.clone();
                theirs[i].grad = grad.clone();
            }
            opt.Step(lr);
            reference.step();
        }
        for (int i = 0; i < ours.Count; i++) TestUtil.Close(ours[i].Item2, theirs[i], 1e-6, $"p{i}");
    }

    [Fact]
    public void DecayRuleSkipsBiasesNormsALogAndD()
    {
        Assert.True(AdamW.DefaultDecay("backbone.layers.0.mixer.in_proj.weight", torch.zeros(4, 4)));
        Assert.False(AdamW.DefaultDecay("backbone.layers.0.mixer.in_proj.bias", torch.zeros(4)));
        Assert.False(AdamW.DefaultDecay("backbone.layers.0.mixer.A_log", torch.zeros(4, 4)));
        Assert.False(AdamW.DefaultDecay("backbone.layers.0.mixer.D", torch.zeros(4)));
        Assert.False(AdamW.DefaultDecay("backbone.layers.0.norm.weight", torch.zeros(4)));
        Assert.False(AdamW.DefaultDecay("backbone.embeddings.weight", torch.zeros(4, 4)));
    }

    [Fact]
    public void ClipGradNormMatchesTorch()
    {
        var g = new torch.Generator(5);
        var ours = Params(g, 2);
        var theirs = ours.Select(p => new Parameter(p.Item2.detach().clone())).ToList();
        for (int i = 0; i < 2; i++)
        {
            var grad = torch.randn(ours[i].Item2.shape, generator: g) * 3;
            ours[i].Item2.grad = grad.clone();
            theirs[i].grad = grad.clone();
        }
        var opt = new AdamW(ours);
        double norm = opt.ClipGradNorm(0.5);
        double refNorm = torch.nn.utils.clip_grad_norm_(theirs, 0.5);
        Assert.Equal(refNorm, norm, 4);
        Assert.True(norm > 0.5, "the test must actually clip");
        for (int i = 0; i < 2; i++) TestUtil.Close(ours[i].Item2.grad!, theirs[i].grad!, 1e-5);
    }

    [Fact]
    public void WarmupCosineFollowsItsClosedForm()
    {
        const long total = 1000, warmup = 100;
        const double peak = 2e-3, floor = 0.1;
        for (long s = 0; s < warmup; s++) Assert.Equal(peak * (s + 1) / warmup, LrSchedule.WarmupCosine(s, total, warmup, peak, floor), 12);
        Assert.Equal(peak, LrSchedule.WarmupCosine(warmup, total, warmup, peak, floor), 12);
        // Half way through the decay the cosine is at its midpoint; at the end it reaches the floor.
        Assert.Equal(peak * (floor + (1 - floor) * 0.5), LrSchedule.WarmupCosine(warmup + (total - warmup) / 2, total, warmup, peak, floor), 12);
        Assert.Equal(peak * floor, LrSchedule.WarmupCosine(total, total, warmup, peak, floor), 12);
        var rnd = new Random(3);
        for (int i = 0; i < 50; i++)
        {
            long s = rnd.NextInt64(warmup, total);
            double t = (double)(s - warmup) / (total - warmup);
            Assert.Equal(peak * (floor + (1 - floor) * (Math.Cos(Math.PI * t) + 1) / 2), LrSchedule.WarmupCosine(s, total, warmup, peak, floor), 12);
        }
    }

    [Fact]
    public void EpochSamplerVisitsEveryItemOncePerEpochAndIsAFunctionOfTheStep()
    {
        const int n = 37, batch = 5;
        var a = new EpochSampler(n, batch, seed: 9);
        var stream = Enumerable.Range(0, 30).SelectMany(i => a.Batch(i)).ToArray();     // 150 indices: 4 epochs + 2
        for (int e = 0; e < 4; e++)
            Assert.Equal(Enumerable.Range(0, n), stream.Skip(e * n).Take(n).Order());
        Assert.NotEqual(stream.Take(n), stream.Skip(n).Take(n));                           // reshuffled each epoch
        var b = new EpochSampler(n, batch, seed: 9);
        Assert.Equal(a.Batch(17), b.Batch(17));                                            // no history needed
        Assert.NotEqual(stream.Take(n), Enumerable.Range(0, 30).SelectMany(i => new EpochSampler(n, batch, 10).Batch(i)).Take(n));
    }

    sealed class Tiny : nn.Module<Tensor, Tensor>
    {
        public Embedding embed;
        public Mamba mixer;
        public Linear head;
        public Tiny() : base(nameof(Tiny))
        {
            embed = nn.Embedding(11, 8);
            mixer = new Mamba(new MambaConfig(8, DState: 4));
            head = nn.Linear(8, 11);
            head.weight = embed.weight!;                       // tied, as in an LM
            RegisterComponents();
        }
        public override Tensor forward(Tensor ids) => head.forward(mixer.forward(embed.forward(ids)));
    }

    static (Tensor Loss, long Units) Step(Tiny model, Tensor data, EpochSampler sampler, long step)
    {
        var idx = torch.tensor(sampler.Batch(step), ScalarType.Int64);
        var batch = data.index_select(0, idx);                // (b, l + 1)
        var logits = model.forward(batch[.., ..^1]);
        // Dropout stands in for every random op of a step: the trainer must make it reproducible too.
        logits = nn.functional.dropout(logits, 0.2, training: true);
        var loss = nn.functional.cross_entropy(logits.reshape(-1, 11), batch[.., 1..].reshape(-1));
        return (loss, batch.shape[0]);
    }

    static Dictionary<string, Tensor> Train(string dir, long steps, bool resume, long? failAt = null, CancellationTokenSource? cancelAt = null, long cancelStep = -1)
    {
        torch.manual_seed(123);
        var model = new Tiny();
        var data = torch.randint(0, 11, new long[] { 40, 9 }, generator: new torch.Generator(4));
        var sampler = new EpochSampler(40, 6, seed: 2);
        var options = new TrainOptions
        {
            Steps = steps, LearningRate = 1e-2, WarmupSteps = 2, CheckpointEvery = 3, OutputDir = dir, Resume = resume,
            Seed = 77, LogEvery = 0,
        };
        var trainer = new Trainer(model, options, (s, _, _) =>
        {
            if (failAt == s) throw new IOException("simulated crash");
            if (s == cancelStep) cancelAt!.Cancel();
            return Step(model, data, sampler, s);
        }, () => new JsonObject { ["model_type"] = "tiny" });
        trainer.Run(cancelAt?.Token ?? default);
        return model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
    }

    [Fact]
    public void ResumeAfterACrashOrACancelGivesTheSameParametersAsAnUninterruptedRun()
    {
        string root = Path.Combine(Path.GetTempPath(), "ssm-trainer-" + Guid.NewGuid().ToString("N"));
        try
        {
            var straight = Train(Path.Combine(root, "straight"), 10, resume: false);

            // Crash in step 7: the newest checkpoint is step 6; resuming replays 6..9 with the same batches and dropout masks.
            string crashed = Path.Combine(root, "crashed");
            Assert.Throws<IOException>(() => Train(crashed, 10, resume: false, failAt: 7));
            Assert.EndsWith(Trainer.CheckpointName(6), Trainer.LatestCheckpoint(crashed));
            var resumed = Train(crashed, 10, resume: true);

            // Ctrl+C during step 4: the trainer checkpoints the finished steps and stops; resume continues.
            string cancelled = Path.Combine(root, "cancelled");
            using (var cts = new CancellationTokenSource()) Train(cancelled, 10, resume: false, cancelAt: cts, cancelStep: 4);
            Assert.EndsWith(Trainer.CheckpointName(5), Trainer.LatestCheckpoint(cancelled));
            var resumed2 = Train(cancelled, 10, resume: true);

            foreach (var (name, t) in straight)
            {
                Assert.True(Same(t, resumed[name]), $"{name} differs after crash + resume");
                Assert.True(Same(t, resumed2[name]), $"{name} differs after cancel + resume");
            }
            // And the run really trained (the comparison is not between two untouched initialisations).
            torch.manual_seed(123);
            var init = new Tiny();
            Assert.False(Same(init.mixer.in_proj.weight!, straight["mixer.in_proj.weight"]));
            // Only the newest checkpoints are kept, and no temporary folder is left behind.
            Assert.Equal(2, Directory.GetDirectories(crashed, "checkpoint-*").Length);
            Assert.Empty(Directory.GetDirectories(crashed, ".checkpoint-*"));
            Assert.True(File.Exists(Path.Combine(crashed, ModelFolder.WeightsFile)));
        }
        finally { try { Directory.Delete(root, true); } catch (IOException) { } }
    }

    [Fact]
    public void ResumeRefusesACheckpointOfAnotherConfig()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ssm-trainer-" + Guid.NewGuid().ToString("N"));
        try
        {
            Train(dir, 3, resume: false);
            torch.manual_seed(1);
            var model = new Tiny();
            var t = new Trainer(model, new TrainOptions { Steps = 5, OutputDir = dir, Resume = true, Seed = 77 },
                (_, _, _) => (model.forward(torch.zeros(1, 2, dtype: ScalarType.Int64)).sum(), 1),
                () => new JsonObject { ["model_type"] = "other" });
            var e = Assert.Throws<InvalidDataException>(() => t.Run());
            Assert.Contains("different model config", e.Message);
            // Same config but another length: the schedule would change under the resumed run.
            var t2 = new Trainer(model, new TrainOptions { Steps = 5, OutputDir = dir, Resume = true, Seed = 77 },
                (_, _, _) => (model.forward(torch.zeros(1, 2, dtype: ScalarType.Int64)).sum(), 1),
                () => new JsonObject { ["model_type"] = "tiny" });
            var e2 = Assert.Throws<InvalidDataException>(() => t2.Run());
            Assert.Contains("run of 3 steps", e2.Message);
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    [Fact]
    public void ModelFolderWritesTiedWeightsOnceAndNamesWhatIsWrong()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ssm-folder-" + Guid.NewGuid().ToString("N"));
        try
        {
            torch.manual_seed(8);
            var a = new Tiny();
            ModelFolder.Save(dir, a, new JsonObject { ["model_type"] = "tiny" });
            using (var f = SafeTensors.Open(Path.Combine(dir, ModelFolder.WeightsFile)))
                Assert.DoesNotContain("head.weight", f.Names);
            torch.manual_seed(9);
            var b = new Tiny();
            ModelFolder.LoadWeights(dir, b, optional: new HashSet<string> { "head.weight" });
            Assert.True(Same(a.mixer.x_proj.weight!, b.mixer.x_proj.weight!));
            Assert.True(Same(b.head.weight!, a.embed.weight!));          // still tied after loading

            var tensors = ModelFolder.Weights(a).ToDictionary(kv => kv.Key, kv => kv.Value);
            tensors.Remove("mixer.D");
            var e1 = Assert.Throws<InvalidDataException>(() => ModelFolder.LoadInto(b, tensors, "x", new HashSet<string> { "head.weight" }));
            Assert.Contains("'mixer.D'", e1.Message);
            tensors["mixer.D"] = torch.zeros(3);
            var e2 = Assert.Throws<InvalidDataException>(() => ModelFolder.LoadInto(b, tensors, "x", new HashSet<string> { "head.weight" }));
            Assert.Contains("'mixer.D' has shape [3]", e2.Message);
            tensors["mixer.D"] = torch.zeros(16);
            tensors["mixer.extra"] = torch.zeros(1);
            var e3 = Assert.Throws<InvalidDataException>(() => ModelFolder.LoadInto(b, tensors, "x", new HashSet<string> { "head.weight" }));
            Assert.Contains("'mixer.extra' is not a parameter", e3.Message);
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    [Fact]
    public void MixedPrecisionKeepsSsmParametersFp32AndUpdatesThroughMasters()
    {
        torch.manual_seed(3);
        var model = new Tiny();
        MixedPrecision.Apply(model, Precision.Bf16);
        Assert.Equal(ScalarType.BFloat16, model.mixer.in_proj.weight!.dtype);
        Assert.Equal(ScalarType.BFloat16, model.embed.weight!.dtype);
        Assert.Equal(ScalarType.Float32, model.mixer.A_log.dtype);
        Assert.Equal(ScalarType.Float32, model.mixer.D.dtype);
        Assert.Equal(ScalarType.Float32, model.mixer.dt_proj.bias!.dtype);
        Assert.True(Same(model.head.weight!, model.embed.weight!));     // the tie survives the cast

        var opt = new AdamW(model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), weightDecay: 0);
        var ids = torch.randint(0, 11, new long[] { 4, 9 }, generator: new torch.Generator(6));
        double Loss() { using var noGrad = torch.no_grad(); return nn.functional.cross_entropy(model.forward(ids[.., ..^1]).to_type(ScalarType.Float32).reshape(-1, 11), ids[.., 1..].reshape(-1)).item<float>(); }
        double before = Loss();
        // Updates far below bf16's resolution (2^-8 relative) must accumulate in the masters rather than vanish.
        var w0 = model.mixer.in_proj.weight!.detach().to_type(ScalarType.Float32).clone();
        for (int i = 0; i < 30; i++)
        {
            opt.ZeroGrad();
            nn.functional.cross_entropy(model.forward(ids[.., ..^1]).to_type(ScalarType.Float32).reshape(-1, 11), ids[.., 1..].reshape(-1)).backward();
            opt.Step(i < 20 ? 1e-2 : 1e-6);
        }
        Assert.True(Loss() < before, "bf16 training did not reduce the loss");
        var state = opt.StateDict();
        Assert.Contains("master.mixer.in_proj.weight", state.Keys);
        Assert.DoesNotContain("master.mixer.A_log", state.Keys);
        // The master is the float32 truth; the parameter is its bf16 rounding.
        TestUtil.Close(model.mixer.in_proj.weight!.to_type(ScalarType.Float32), state["master.mixer.in_proj.weight"], 8e-3);
        Assert.False(Same(w0, model.mixer.in_proj.weight!.to_type(ScalarType.Float32)));
    }
}
