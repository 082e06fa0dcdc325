// The causal DNA LM: parameter counts against the closed form, the chunked forward with a carried state against one
// full forward and against the backbone's step mode (float64), the loss against a float64 loop over the A/C/G/T
// targets, a loss that falls on a fixed batch, and the model folder round trip.
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.Training;
using Ssm.Genomics;
using static TorchSharp.torch;

namespace Ssm.Genomics.Tests;

public class DnaLMTests
{
    static Random Fresh(out int seed)
    {
        seed = Environment.TickCount ^ Guid.NewGuid().GetHashCode();
        return new Random(seed);
    }

    /// <summary>Random ids: mostly A/C/G/T, some N, a few specials (inputs may hold any token).</summary>
    internal static Tensor RandomIds(Random rng, long b, long l, double nRate = 0.05, double specialRate = 0.0)
    {
        var ids = new long[b * l];
        for (int i = 0; i < ids.Length; i++)
        {
            double u = rng.NextDouble();
            ids[i] = u < specialRate ? rng.Next(7) : u < specialRate + nRate ? DnaTokenizer.N : DnaTokenizer.A + rng.Next(4);
        }
        return torch.tensor(ids, new long[] { b, l });
    }

    static DnaLM Float64Model(DnaLMConfig config, int seed)
    {
        torch.manual_seed(seed);
        var lm = new DnaLM(config).To(torch.CPU, ScalarType.Float64);
        // larger dt and a non-trivial state make the carried-state term matter over a few positions
        using (torch.no_grad())
            foreach (var (name, p) in lm.Model.named_parameters())
                if (name.EndsWith("dt_proj.bias", StringComparison.Ordinal)) p.add_(1.0);
        return lm;
    }

    static long MambaParams(long d, long n, long k, long expand)
    {
        long di = expand * d, r = (d + 15) / 16;
        return d * 2 * di + di * k + di + di * (r + 2 * n) + r * di + di + di * n + di + di * d + d;   // + the block's norm
    }

    [Fact]
    public void ParameterCountsMatchTheClosedFormAndTheDefaultFitsTenMegabytes()
    {
        foreach (var (name, c) in DnaLMConfig.Presets)
        {
            using var lm = new DnaLM(c);
            long expected = c.NLayer * MambaParams(c.DModel, c.DState, c.DConv, c.Expand) + 16 * c.DModel + c.DModel; // tied head
            Assert.True(expected == lm.ParameterCount, $"{name}: {lm.ParameterCount} != {expected}");
        }
        using var small = new DnaLM(DnaLMConfig.Small);
        Assert.True(small.ParameterCount < 2_500_000, $"small has {small.ParameterCount} parameters");
        Assert.True(small.ParameterCount * 4 <= 10_000_000, "the default model must stay under 10 MB in float32");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(7)]
    [InlineData(64)]
    public void ChunkedForwardWithCarriedStateEqualsOneFullForward(int chunk)
    {
        var rng = Fresh(out int seed);
        using var lm = Float64Model(DnaLMConfig.Tiny, seed);
        long b = 2, l = 150 + rng.Next(20);
        using var ids = RandomIds(rng, b, l, specialRate: 0.02);
        using var noGrad = torch.no_grad();
        using var full = lm.Logits(ids);
        using var state = lm.AllocateState(b);
        var parts = new List<Tensor>();
        for (long s = 0; s < l; s += chunk) parts.Add(lm.ForwardChunk(ids.narrow(1, s, Math.Min(chunk, l - s)), state));
        using var chunked = torch.cat(parts, 1);
        foreach (var p in parts) p.Dispose();
        // logits come back in float32 (MambaLM's contract); compare the float64 network's float32 outputs
        TestUtil.Close(chunked, full, 1e-6, $"seed {seed}, chunk {chunk}");
        // the carried state (float64 for a float64 model) equals the state a one-shot prefill hands over
        using var prefilled = lm.AllocateState(b);
        lm.Model.Forward(ids, prefilled).Dispose();
        for (int i = 0; i < state.Layers.Count; i++)
        {
            TestUtil.Close(state.Layers[i].Ssm, prefilled.Layers[i].Ssm, 1e-10, $"ssm state {i}, seed {seed}, chunk {chunk}");
            TestUtil.Close(state.Layers[i].Conv!, prefilled.Layers[i].Conv!, 1e-12, $"conv state {i}, seed {seed}, chunk {chunk}");
        }
    }

    [Fact]
    public void ChunkedForwardContinuesTheStepModeState()
    {
        // prefix by single steps (the backbone's recurrent mode), then one chunk: equal to a full forward
        var rng = Fresh(out int seed);
        using var lm = Float64Model(DnaLMConfig.Tiny with { DConv = 3 }, seed);
        long b = 3, l = 40, prefix = 2 + rng.Next(10);
        using var ids = RandomIds(rng, b, l);
        using var noGrad = torch.no_grad();
        using var full = lm.Logits(ids);
        using var state = lm.AllocateState(b);
        for (long t = 0; t < prefix; t++)
        {
            using var col = ids[.., t];
            using var stepLogits = lm.Step(col, state);
            using var want = full[.., t];
            TestUtil.Close(stepLogits, want, 1e-6, $"seed {seed}, step {t}");
        }
        using var rest = lm.ForwardChunk(ids.narrow(1, prefix, l - prefix), state);
        using var wantRest = full.narrow(1, prefix, l - prefix);
        TestUtil.Close(rest, wantRest, 1e-6, $"seed {seed}");
        // and the state after the chunk continues in step mode
        using var next = RandomIds(rng, b, 1);
        using var all = torch.cat([ids, next], 1);
        using var fullNext = lm.Logits(all);
        using var nextCol = next[.., 0];
        using var stepped = lm.Step(nextCol, state);
        using var wantNext = fullNext[.., l];
        TestUtil.Close(stepped, wantNext, 1e-6, $"seed {seed}, step after chunk");
    }

    [Fact]
    public void LossIsTheMeanOverBaseTargetsOfTheFourBaseSoftmax()
    {
        var rng = Fresh(out int seed);
        using var lm = Float64Model(DnaLMConfig.Tiny, seed);
        long b = 3, l = 30;
        using var ids = RandomIds(rng, b, l, nRate: 0.2);
        using var noGrad = torch.no_grad();
        var (loss, scored) = lm.Loss(ids);
        using var _ = loss;
        // float64 loop: input[0] = BOS, input[t] = target[t - 1]; log p over logits of ids 7..10 only; skip non-bases
        var idArr = ids.data<long>().ToArray();
        using var inputs = torch.tensor(Enumerable.Range(0, (int)(b * l)).Select(i => i % l == 0 ? DnaTokenizer.Bos : idArr[i - 1]).ToArray(),
            new long[] { b, l });
        using var logits = lm.Logits(inputs).to_type(ScalarType.Float64);
        var lg = logits.data<double>().ToArray();
        double sum = 0;
        long count = 0;
        for (int i = 0; i < b * l; i++)
        {
            long y = idArr[i];
            if (y < 7 || y > 10) continue;
            var four = Enumerable.Range(7, 4).Select(v => lg[i * 16 + v]).ToArray();
            double max = four.Max();
            double lse = max + Math.Log(four.Sum(v => Math.Exp(v - max)));
            sum += lse - lg[i * 16 + (int)y];
            count++;
        }
        Assert.Equal(count, scored);
        double got = loss.item<float>();
        Assert.True(Math.Abs(got - sum / count) < 1e-5 * Math.Max(1, sum / count), $"seed {seed}: {got} vs {sum / count}");
    }

    [Fact]
    public void AWindowOfOnlyNHasZeroLossNotNaN()
    {
        torch.manual_seed(1);
        using var lm = new DnaLM(DnaLMConfig.Tiny);
        using var ids = torch.full(new long[] { 2, 8 }, DnaTokenizer.N, ScalarType.Int64);
        var (loss, scored) = lm.Loss(ids);
        using var _ = loss;
        Assert.Equal(0, scored);
        Assert.Equal(0.0, loss.item<float>());
    }

    [Fact]
    public void LossFallsOnAFixedBatch()
    {
        var rng = Fresh(out int seed);
        torch.manual_seed(seed);
        using var lm = new DnaLM(DnaLMConfig.Tiny);
        // a learnable batch: a random period-5 motif repeated (the next base is determined after one period)
        var motif = Enumerable.Range(0, 5).Select(_ => DnaTokenizer.A + rng.Next(4)).ToArray();
        using var ids = torch.tensor(Enumerable.Range(0, 4 * 64).Select(i => motif[(i % 64 + i / 64) % 5]).ToArray(), new long[] { 4, 64 });
        double first;
        using (torch.no_grad()) { var (l0, _) = lm.Loss(ids); first = l0.item<float>(); l0.Dispose(); }
        var trainer = new Trainer(lm.Model, new TrainOptions { Steps = 40, LearningRate = 1e-2, WarmupSteps = 0, LogEvery = 0, Seed = seed },
            (_, _, _) => { var (loss, _) = lm.Loss(ids); return (loss, ids.numel()); }, () => new JsonObject());
        var result = trainer.Run();
        Assert.True(result.LastLoss < 0.5 * first, $"seed {seed}: loss {first:0.000} -> {result.LastLoss:0.000}");
    }

    /// <summary>A window source over a synthetic genome (a period-7 motif with random mutations), as ASCII bytes.</summary>
    internal static DnaWindowSource MotifGenome(int seed, int length = 20_000)
    {
        var rng = new Random(seed);
        var motif = Enumerable.Range(0, 7).Select(_ => "ACGT"[rng.Next(4)]).ToArray();
        var genome = Enumerable.Range(0, length).Select(i => (byte)(rng.NextDouble() < 0.05 ? "ACGTN"[rng.Next(5)] : motif[i % 7])).ToArray();
        return (r, b, l) =>
        {
            var w = new byte[b * l];
            for (int i = 0; i < b; i++) Array.Copy(genome, r.Next(0, (int)(genome.Length - l)), w, i * l, l);
            return torch.tensor(w, new[] { b, l }, ScalarType.Byte);
        };
    }

    [Fact]
    public void TrainCausalWritesAFolderThatScoresLikeTheTrainedModel()
    {
        Fresh(out int seed);
        torch.manual_seed(seed);
        string dir = Path.Combine(Path.GetTempPath(), "dnalm-train-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var model = DnaModel.CreateCausal(DnaLMConfig.Tiny);
            var source = MotifGenome(seed);
            var before = DnaTraining.EvalCausal(model, source, 8, 64, seed).BitsPerBase;
            var result = DnaTraining.TrainCausal(model, source, source,
                new TrainOptions { Steps = 30, LearningRate = 1e-2, LogEvery = 0, Seed = seed, OutputDir = dir },
                new DnaTrainOptions { BatchSize = 4, SeqLen = 64, EvalWindows = 8, EvalSeed = seed });
            double after = result.LastEval["valid_bits_per_base"];
            Assert.True(after < before - 0.2, $"seed {seed}: {before:0.000} -> {after:0.000} bits/base");
            Assert.Equal(after, DnaTraining.EvalCausal(model, source, 8, 64, seed).BitsPerBase, 4);
            using var loaded = DnaModel.Load(dir);
            Assert.Equal(after, DnaTraining.EvalCausal(loaded, source, 8, 64, seed).BitsPerBase, 4);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void AWindowSourceOfTheWrongShapeIsAnError()
    {
        using var model = DnaModel.CreateCausal(DnaLMConfig.Tiny);
        DnaWindowSource bad = (_, b, l) => torch.zeros(new[] { b, l + 1 }, ScalarType.Byte);
        var e = Assert.Throws<InvalidDataException>(() => DnaTraining.TrainCausal(model, bad, null,
            new TrainOptions { Steps = 1, LogEvery = 0 }, new DnaTrainOptions { BatchSize = 2, SeqLen = 8 }));
        Assert.Contains("window source", e.Message);
    }

    [Fact]
    public void ModelFolderRoundTripsAndNamesHfMambaTensors()
    {
        var rng = Fresh(out int seed);
        torch.manual_seed(seed);
        string dir = Path.Combine(Path.GetTempPath(), "dnalm-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var model = DnaModel.Create(DnaModel.CausalModelType, "tiny", new Dictionary<string, string> { ["n_layer"] = "3" });
            Assert.Equal(3, model.CausalConfig!.NLayer);
            model.Save(dir);
            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            Assert.Equal("ssm-dna-lm", json["model_type"]!.GetValue<string>());
            Assert.Equal(2, json["bos_token_id"]!.GetValue<int>());
            Assert.Equal(12, json["vocab_size"]!.GetValue<int>());
            using var st = Ssm.Backbone.IO.SafeTensors.Open(Path.Combine(dir, "model.safetensors"));
            Assert.Contains("backbone.embeddings.weight", st.Names);
            Assert.Contains("backbone.layers.2.mixer.A_log", st.Names);
            Assert.DoesNotContain("lm_head.weight", st.Names);                          // tied: written once
            using var loaded = DnaModel.Load(dir);
            Assert.Equal(model.CausalConfig, loaded.CausalConfig);
            using var ids = RandomIds(rng, 2, 20);
            using var a = model.Logits(ids);
            using var b = loaded.Logits(ids);
            Assert.Equal(0.0, (a - b).abs().max().item<float>());

            json["d_modle"] = 3;
            File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
            var e = Assert.Throws<InvalidDataException>(() => DnaModel.Load(dir));
            Assert.Contains("config.json", e.Message);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void CreateRejectsUnknownPresetsFieldsAndValues()
    {
        Assert.Throws<ArgumentException>(() => DnaModel.Create("ssm-dna-lm", "huge"));
        Assert.Throws<ArgumentException>(() => DnaModel.Create("ssm-dna-lm", "tiny", new Dictionary<string, string> { ["width"] = "3" }));
        Assert.Throws<ArgumentException>(() => DnaModel.Create("ssm-dna-lm", "tiny", new Dictionary<string, string> { ["d_model"] = "-4" }));
        Assert.Throws<ArgumentException>(() => DnaModel.Create("transformer"));
    }
}
