// Caduceus: the mathematical properties over batch, length, width and dtype (Caduceus' own test_rcps.py style):
// RC equivariance of the PS model's hidden states and logits, RC invariance of its classifier, tied BiMamba
// projections, the reference's state-dict names, MLM masking statistics, the MLM loss against a float64 loop, and the
// model folders (masked LM, classifier, fine-tuning start).
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Training;
using Ssm.Genomics;
using static TorchSharp.torch;

namespace Ssm.Genomics.Tests;

public class CaduceusTests
{
    static Random Fresh(out int seed)
    {
        seed = Environment.TickCount ^ Guid.NewGuid().GetHashCode();
        return new Random(seed);
    }

    static T Build<T>(Func<T> make, int seed, ScalarType dtype) where T : nn.Module
    {
        torch.manual_seed(seed);
        var m = MixedPrecision.MoveTo(make(), torch.CPU, dtype);
        m.eval();
        return m;
    }

    /// <summary>Random ids over the whole vocabulary in use: bases, N and specials (MLM inputs hold [MASK]).</summary>
    static Tensor RandomIds(Random rng, long b, long l) => DnaLMTests.RandomIds(rng, b, l, nRate: 0.1, specialRate: 0.1);

    [Theory]
    [InlineData(1, 1, 8, ScalarType.Float64, 1e-10)]
    [InlineData(2, 17, 16, ScalarType.Float64, 1e-10)]
    [InlineData(3, 64, 32, ScalarType.Float64, 1e-10)]
    [InlineData(2, 33, 24, ScalarType.Float32, 1e-5)]
    [InlineData(4, 100, 32, ScalarType.Float32, 1e-5)]
    public void RcpsLogitsAreRcEquivariant(long b, long l, long d, ScalarType dtype, double tol)
    {
        var rng = Fresh(out int seed);
        var config = new CaduceusConfig(d, 2, DState: 8, Rcps: true);
        using var model = Build(() => new CaduceusForMaskedLM(config), seed, dtype);
        using var noGrad = torch.no_grad();
        using var x = RandomIds(rng, b, l);
        using var rcx = DnaTokenizer.ReverseComplement(x);
        // hidden states: h(rc x) == flip_{l,c}(h(x))
        using var h = model.caduceus.forward(x);
        using var hrc = model.caduceus.forward(rcx);
        Assert.Equal(new[] { b, l, 2 * d }, h.shape);
        using var hWant = RCPSWrapper.Rc(h);
        TestUtil.Close(hrc, hWant, tol, $"hidden, seed {seed}");
        // logits: logits(rc x) == RcLogits(logits(x)); compare before the float32 cast of the LM output
        using var lg = ((RCPSLMHead)model.lm_head).forward(h);
        using var lgrc = ((RCPSLMHead)model.lm_head).forward(hrc);
        using var want = RcMaps.RcLogits(lg);
        TestUtil.Close(lgrc, want, tol, $"logits, seed {seed}");
        using var outRc = model.forward(rcx);
        using var outX = model.forward(x);
        using var outWant = RcMaps.RcLogits(outX);
        TestUtil.Close(outRc, outWant, Math.Max(tol, 1e-5), $"forward, seed {seed}");
    }

    [Fact]
    public void PhModelIsNotRcEquivariant()
    {
        // the equivariance check can fail: the BiMamba model without parameter sharing is not equivariant
        var rng = Fresh(out int seed);
        using var model = Build(() => new CaduceusForMaskedLM(CaduceusConfig.Tiny), seed, ScalarType.Float64);
        using var noGrad = torch.no_grad();
        using var x = RandomIds(rng, 2, 40);
        using var rcx = DnaTokenizer.ReverseComplement(x);
        using var a = model.forward(rcx);
        using var fx = model.forward(x);
        using var b = RcMaps.RcLogits(fx);
        Assert.True(TestUtil.RelErr(a, b) > 1e-3, $"seed {seed}");
    }

    [Fact]
    public void RcpsClassifierIsRcInvariantAndConjoiningMakesPhInvariant()
    {
        var rng = Fresh(out int seed);
        using var x = RandomIds(rng, 3, 45);
        using var rcx = DnaTokenizer.ReverseComplement(x);
        using var noGrad = torch.no_grad();
        using (var ps = Build(() => new CaduceusForSequenceClassification(CaduceusConfig.TinyPs, 3), seed, ScalarType.Float64))
        {
            using var a = ps.forward(x);
            using var b = ps.forward(rcx);
            Assert.Equal(new long[] { 3, 3 }, a.shape);
            TestUtil.Close(b, a, 1e-6, $"seed {seed}");                    // float32 output of a float64 network
        }
        torch.manual_seed(seed);
        using var ph = DnaModel.CreateClassifier(CaduceusConfig.Tiny, ["a", "b", "c", "d"]).To(torch.CPU, ScalarType.Float64);
        using var pa = ph.ClassProbabilities(x);
        using var pb = ph.ClassProbabilities(rcx);
        Assert.True(TestUtil.RelErr(pb, pa) > 1e-4, $"seed {seed}: a Ph classifier should see the strands differently");
        using var ca = ph.ClassProbabilities(x, conjoin: true);
        using var cb = ph.ClassProbabilities(rcx, conjoin: true);
        TestUtil.Close(cb, ca, 1e-6, $"conjoined, seed {seed}");
    }

    [Fact]
    public void BiMambaTiesInAndOutProjectionsOnly()
    {
        using var model = new CaduceusForMaskedLM(CaduceusConfig.Tiny);
        var mixer = (Bidirectional)((ResidualBlock)model.caduceus.backbone.layers[0]).mixer;
        var fwd = (Mamba)mixer.mamba_fwd;
        var rev = (Mamba)mixer.mamba_rev;
        Assert.True(SameStorage(fwd.in_proj.weight!, rev.in_proj.weight!));
        Assert.True(SameStorage(fwd.out_proj.weight!, rev.out_proj.weight!));
        Assert.False(SameStorage(fwd.conv1d.weight!, rev.conv1d.weight!));
        Assert.False(SameStorage(fwd.x_proj.weight!, rev.x_proj.weight!));
        Assert.False(SameStorage(fwd.dt_proj.weight!, rev.dt_proj.weight!));
        Assert.False(SameStorage(fwd.A_log, rev.A_log));
        // untied: separate storage, more parameters
        using var untied = new CaduceusForMaskedLM(CaduceusConfig.Tiny with { BidirectionalWeightTie = false });
        var m2 = (Bidirectional)((ResidualBlock)untied.caduceus.backbone.layers[0]).mixer;
        Assert.False(SameStorage(((Mamba)m2.mamba_fwd).in_proj.weight!, ((Mamba)m2.mamba_rev).in_proj.weight!));
        Assert.True(new DnaModelProbe(untied).Count > new DnaModelProbe(model).Count);
    }

    /// <summary>Whether an in-place change of <paramref name="a"/> shows in <paramref name="b"/> (then undone).</summary>
    static bool SameStorage(Tensor a, Tensor b)
    {
        using var noGrad = torch.no_grad();
        using var before = b.clone();
        a.add_(1.0);
        using var diff = (b - before).abs().max();
        bool shared = diff.item<float>() > 0.5;
        a.sub_(1.0);
        return shared;
    }

    sealed class DnaModelProbe(nn.Module m)
    {
        public long Count { get; } = m.parameters().DistinctBy(p => p.Handle).Sum(p => p.numel());
    }

    [Fact]
    public void StateDictNamesFollowCaduceus()
    {
        using var ph = new CaduceusForMaskedLM(CaduceusConfig.Tiny);
        var names = ph.state_dict().Keys.ToHashSet();
        foreach (var n in new[]
        {
            "caduceus.backbone.embeddings.word_embeddings.weight", "caduceus.backbone.layers.0.norm.weight",
            "caduceus.backbone.layers.1.mixer.mamba_fwd.in_proj.weight", "caduceus.backbone.layers.1.mixer.mamba_rev.dt_proj.bias",
            "caduceus.backbone.layers.0.mixer.mamba_rev.A_log", "caduceus.backbone.norm_f.weight", "lm_head.weight",
        }) Assert.Contains(n, names);
        using var ps = new CaduceusForMaskedLM(CaduceusConfig.TinyPs);
        var psNames = ps.state_dict().Keys.ToHashSet();
        foreach (var n in new[]
        {
            "caduceus.backbone.embeddings.word_embeddings.embedding.weight", "caduceus.backbone.layers.0.norm.submodule.weight",
            "caduceus.backbone.layers.1.mixer.submodule.mamba_fwd.conv1d.weight", "caduceus.backbone.layers.1.mixer.submodule.mamba_rev.D",
            "caduceus.backbone.norm_f.submodule.weight", "lm_head.lm_head.weight",
        }) Assert.Contains(n, psNames);
        // the LM head is the embedding table
        Assert.True(SameStorage(ps.caduceus.backbone.embeddings.Weight, ((RCPSLMHead)ps.lm_head).weight));
        Assert.True(SameStorage(ph.caduceus.backbone.embeddings.Weight, ((TorchSharp.Modules.Linear)ph.lm_head).weight!));
    }

    [Fact]
    public void ParameterCountsMatchTheClosedForm()
    {
        foreach (var (name, c) in CaduceusConfig.Presets)
        {
            using var m = DnaModel.CreateMaskedLM(c);
            long d = c.DModel, di = c.Expand * d, r = (d + 15) / 16, n = c.DState, k = c.DConv;
            long shared = d * 2 * di + di * d;                                    // in_proj, out_proj (tied between directions)
            long own = di * k + di + di * (r + 2 * n) + r * di + di + di * n + di; // conv, x_proj, dt_proj, A_log, D
            long expected = c.NLayer * (shared + 2 * own + d) + 16 * d + d;        // + norms, embedding (= head), norm_f
            Assert.True(expected == m.ParameterCount, $"{name}: {m.ParameterCount} != {expected}");
        }
    }

    [Fact]
    public void OutProjIsRescaledByDepth()
    {
        torch.manual_seed(3);
        using var m = new CaduceusForMaskedLM(new CaduceusConfig(64, 16));
        var w = ((Mamba)((Bidirectional)((ResidualBlock)m.caduceus.backbone.layers[5]).mixer).mamba_fwd).out_proj.weight!;
        // kaiming_uniform(a = sqrt 5) on fan_in 128: bound 1/sqrt(128); divided by sqrt(16)
        double bound = 1 / Math.Sqrt(128) / 4;
        double max = w.abs().max().item<float>();
        Assert.True(max <= bound * 1.0001 && max > 0.9 * bound, $"max |w| {max} vs bound {bound}");
        double embStd = m.caduceus.backbone.embeddings.Weight.std().item<float>();
        Assert.InRange(embStd, 0.015, 0.025);
    }

    [Fact]
    public void MlmMaskingHasBertStatistics()
    {
        var rng = Fresh(out int seed);
        long b = 64, l = 4096;
        using var ids = RandomIds(rng, b, l);                                  // 10% specials never selected
        using var gen = new Generator((ulong)(uint)seed);
        var (inputs, labels) = MlmMasking.Apply(ids, gen);
        using var _i = inputs;
        using var _l = labels;
        var x = ids.data<long>().ToArray();
        var inp = inputs.data<long>().ToArray();
        var lab = labels.data<long>().ToArray();
        long eligible = 0, selected = 0, masked = 0, random = 0, unchanged = 0;
        for (int i = 0; i < x.Length; i++)
        {
            bool nuc = x[i] >= 7 && x[i] <= 11;
            if (nuc) eligible++;
            if (lab[i] == MlmMasking.IgnoreIndex)
            {
                Assert.Equal(x[i], inp[i]);                                   // unselected positions untouched
                continue;
            }
            Assert.True(nuc, $"seed {seed}: selected a special at {i}");
            Assert.Equal(x[i], lab[i]);                                       // label = original id
            selected++;
            if (inp[i] == DnaTokenizer.Mask) masked++;
            else if (inp[i] == x[i]) unchanged++;
            else
            {
                Assert.InRange(inp[i], 7, 10);                                // replacements are bases
                random++;
            }
        }
        // a random replacement equal to the original counts as unchanged: 1/4 of the random 10% for A/C/G/T
        // (N is never its own replacement), so the expected unchanged share is 0.1 + 0.1 * P(base) / 4
        double pBase = x.Count(v => v >= 7 && v <= 10) / (double)eligible;
        double rate = (double)selected / eligible;
        Assert.True(Math.Abs(rate - 0.15) < 0.005, $"seed {seed}: selection rate {rate:0.0000}");
        Assert.True(Math.Abs((double)masked / selected - 0.8) < 0.01, $"seed {seed}: [MASK] share {(double)masked / selected:0.0000}");
        Assert.True(Math.Abs((double)random / selected - 0.1 * (1 - pBase / 4)) < 0.008, $"seed {seed}: random share {(double)random / selected:0.0000}");
        Assert.True(Math.Abs((double)unchanged / selected - (0.1 + 0.1 * pBase / 4)) < 0.008, $"seed {seed}: unchanged share {(double)unchanged / selected:0.0000}");
        // the same generator seed gives the same masks
        using var gen2 = new Generator((ulong)(uint)seed);
        var (inputs2, labels2) = MlmMasking.Apply(ids, gen2);
        using var _i2 = inputs2;
        using var _l2 = labels2;
        Assert.True(inputs2.allclose(inputs, 0, 0) && labels2.allclose(labels, 0, 0));
    }

    [Fact]
    public void MlmLossIsTheMeanCrossEntropyOverLabelledPositions()
    {
        var rng = Fresh(out int seed);
        using var model = Build(() => new CaduceusForMaskedLM(CaduceusConfig.TinyPs), seed, ScalarType.Float64);
        using var ids = RandomIds(rng, 2, 50);
        using var gen = new Generator((ulong)(uint)seed);
        var (inputs, labels) = MlmMasking.Apply(ids, gen, rate: 0.3);
        using var _i = inputs;
        using var _l = labels;
        using var noGrad = torch.no_grad();
        var (loss, n) = model.Loss(inputs, labels);
        using var _loss = loss;
        using var logits = model.forward(inputs).to_type(ScalarType.Float64);
        var lg = logits.data<double>().ToArray();
        var lab = labels.data<long>().ToArray();
        double sum = 0;
        long count = 0;
        for (int i = 0; i < lab.Length; i++)
        {
            if (lab[i] == MlmMasking.IgnoreIndex) continue;
            var row = lg.AsSpan(i * 16, 16).ToArray();
            double max = row.Max();
            sum += max + Math.Log(row.Sum(v => Math.Exp(v - max))) - row[lab[i]];
            count++;
        }
        Assert.Equal(count, n);
        Assert.True(Math.Abs(loss.item<float>() - sum / count) < 1e-5 * Math.Max(1, sum / count), $"seed {seed}: {loss.item<float>()} vs {sum / count}");
    }

    [Fact]
    public void ModelFoldersRoundTripAndFineTuningKeepsTheBackbone()
    {
        var rng = Fresh(out int seed);
        torch.manual_seed(seed);
        string root = Path.Combine(Path.GetTempPath(), "caduceus-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var mlm = DnaModel.Create("caduceus", "tiny-ps");
            Assert.Equal(DnaTask.MaskedLM, mlm.Task);
            string mlmDir = Path.Combine(root, "mlm");
            mlm.Save(mlmDir);
            var json = ModelFolder.ReadConfig(mlmDir);
            Assert.Equal("caduceus", json["model_type"]!.GetValue<string>());
            Assert.True(json["rcps"]!.GetValue<bool>());
            Assert.Equal("add", json["bidirectional_strategy"]!.GetValue<string>());
            Assert.Equal(10, json["complement_map"]!["7"]!.GetValue<int>());
            using var mlm2 = DnaModel.Load(mlmDir);
            using var ids = RandomIds(rng, 2, 30);
            using var a = mlm.Logits(ids);
            using var b = mlm2.Logits(ids);
            Assert.Equal(0.0, (a - b).abs().max().item<float>());

            using var clf = DnaModel.ClassifierFromPretrained(mlmDir, ["EI", "IE", "N"]);
            Assert.Equal(DnaTask.SequenceClassification, clf.Task);
            var src = mlm.AsMaskedLM.caduceus.state_dict();
            foreach (var (name, t) in clf.AsClassifier.caduceus.state_dict())
                Assert.True(t.allclose(src[name], 0, 0), $"{name} not copied");
            string clfDir = Path.Combine(root, "clf");
            clf.Save(clfDir);
            var cj = ModelFolder.ReadConfig(clfDir);
            Assert.Equal(3, cj["num_labels"]!.GetValue<int>());
            Assert.Equal("IE", cj["id2label"]!["1"]!.GetValue<string>());
            using var clf2 = DnaModel.Load(clfDir);
            Assert.Equal(new[] { "EI", "IE", "N" }, clf2.Labels);
            var seqs = new[] { "ACGTACGTAC", "GGGTTTAAAC", "ACG" }.Select(s => (ReadOnlyMemory<byte>)System.Text.Encoding.ASCII.GetBytes(s)).ToList();
            var r1 = clf.Classify(seqs);
            var r2 = clf2.Classify(seqs);
            for (int i = 0; i < seqs.Count; i++)
            {
                Assert.Equal(r1[i].Label, r2[i].Label);
                Assert.Equal(r1[i].Probabilities, r2[i].Probabilities);
                Assert.Equal(1.0, r1[i].Probabilities.Sum(), 5);
            }

            Assert.Throws<InvalidDataException>(() => DnaModel.ClassifierFromPretrained(Path.Combine(root, "missing"), ["a", "b"]));
            json["bidirectional_strategy"] = "concat";
            File.WriteAllText(Path.Combine(mlmDir, "config.json"), json.ToJsonString());
            var e = Assert.Throws<InvalidDataException>(() => DnaModel.Load(mlmDir));
            Assert.Contains("config.json", e.Message);
        }
        finally { if (Directory.Exists(root)) Directory.Delete(root, true); }
    }

    [Fact]
    public void MaskedLMTrainingLowersTheValidationLoss()
    {
        Fresh(out int seed);
        torch.manual_seed(seed);
        using var model = DnaModel.CreateMaskedLM(CaduceusConfig.TinyPs);
        var source = DnaLMTests.MotifGenome(seed);
        using var valid = DnaTraining.ValidationWindows(source, 8, 64, seed);
        var (before, _, masked) = DnaTraining.EvalMaskedLM(model, valid, seed);
        Assert.True(masked > 0);
        var result = DnaTraining.TrainMaskedLM(model, source, source,
            new TrainOptions { Steps = 30, LearningRate = 1e-2, LogEvery = 0, Seed = seed },
            new DnaTrainOptions { BatchSize = 4, SeqLen = 64, EvalWindows = 8, EvalSeed = seed });
        double after = result.LastEval["valid_mlm_loss"];
        Assert.True(after < before - 0.2, $"seed {seed}: MLM loss {before:0.000} -> {after:0.000}");
        var (again, acc, _) = DnaTraining.EvalMaskedLM(model, valid, seed);
        Assert.Equal(after, again, 4);                                     // the same masks at every evaluation
        Assert.InRange(acc, 0.0, 1.0);
    }

    [Fact]
    public void ClassifierLossFallsOnAFixedBatch()
    {
        var rng = Fresh(out int seed);
        torch.manual_seed(seed);
        using var model = DnaModel.CreateClassifier(CaduceusConfig.TinyPs, ["gc-rich", "at-rich"]);
        const int n = 32;
        var (x, labels) = GcVersusAt(rng, n, 24);
        using var xDispose = x;
        using var labelsDispose = labels;
        var data = new DnaLabelledSet(x, labels);
        var before = DnaTraining.EvalClassifier(model, data);
        var result = DnaTraining.TrainClassifier(model, data, data,
            new TrainOptions { Steps = 30, LearningRate = 5e-3, LogEvery = 0, Seed = seed }, new DnaTrainOptions { BatchSize = 16 });
        var after = DnaTraining.EvalClassifier(model, data);
        Assert.True(after.Loss < before.Loss, $"seed {seed}: loss {before.Loss:0.000} -> {after.Loss:0.000}");
        Assert.Equal(after.Accuracy, result.LastEval["valid_accuracy"], 6);
        Assert.Equal(n, after.Count);
        long total = 0;
        foreach (var c in after.Confusion) total += c;
        Assert.Equal(n, total);
    }

    /// <summary>n windows of length len as token ids, class 0 mostly G/C and class 1 mostly A/T (strand-symmetric, so
    /// learnable by an RC-invariant model), alternating; labels (n).</summary>
    internal static (Tensor Ids, Tensor Labels) GcVersusAt(Random rng, int n, int len)
    {
        var ids = new long[n * len];
        var y = new long[n];
        for (int i = 0; i < n; i++)
        {
            y[i] = i % 2;
            for (int j = 0; j < len; j++)
            {
                bool gc = rng.NextDouble() < (y[i] == 0 ? 0.8 : 0.2);
                ids[i * len + j] = gc ? (rng.Next(2) == 0 ? DnaTokenizer.G : DnaTokenizer.C) : (rng.Next(2) == 0 ? DnaTokenizer.A : DnaTokenizer.T);
            }
        }
        return (torch.tensor(ids, new long[] { n, len }), torch.tensor(y));
    }
}
