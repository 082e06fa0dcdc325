// Tests of the audio LM layer (audio/AudioModel.cs, LstmBaseline.cs, AudioBaselines.cs, AudioGenerator.cs): learning
// through the shared Trainer, NLL in bits against independent float64 computations (a log-softmax loop on random
// logits; the recurrent mode stepped from the start token), the unigram's closed form, the model folder, exact resume,
// and generation (seeded determinism, continuation, recurrent priming == convolution mode, slow path == fast path).
using System.Text.Json.Nodes;
using Ssm.Audio;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Audio.Tests;

public class AudioModelTests
{
    // ---------------------------------------------------------------- helpers

    static string TempDir() => Path.Combine(Path.GetTempPath(), "ssm-audiolm-" + Guid.NewGuid().ToString("N"));

    static void Delete(params string[] dirs)
    {
        foreach (var d in dirs) try { Directory.Delete(d, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Clips (n, l) of a tone with a harmonic and a swell, a different pitch per clip, at 16 kHz.</summary>
    static Tensor Tones(int n, int l)
    {
        var x = new float[n * l];
        for (int i = 0; i < n; i++)
            for (int t = 0; t < l; t++)
            {
                double s = t / 16000.0, f = 400 + 150 * i;
                double env = 0.4 + 0.3 * Math.Sin(2 * Math.PI * 31 * s);
                x[i * l + t] = (float)(env * (Math.Sin(2 * Math.PI * f * s) + 0.3 * Math.Sin(2 * Math.PI * 3 * f * s)));
            }
        return torch.tensor(x, new long[] { n, l });
    }

    /// <summary>A tiny model of each kind ("sashimi", "sashimi-mamba", "lstm"), seeded.</summary>
    internal static AudioModel Tiny(string kind, int seed = 1)
    {
        torch.manual_seed(seed);
        return kind switch
        {
            "sashimi" => AudioModel.Create("sashimi", "tiny"),
            "sashimi-mamba" => AudioModel.Create("sashimi", "tiny", overrides: [new("variant", "mamba")]),
            "lstm" => AudioModel.Create("lstm", "tiny"),
            _ => throw new ArgumentException(kind),
        };
    }

    static long[,] RandomClasses(int n, int l, int seed)
    {
        var rnd = new Random(seed);
        var ids = new long[n, l];
        for (int i = 0; i < n; i++) for (int t = 0; t < l; t++) ids[i, t] = rnd.Next(256);
        return ids;
    }

    static Tensor ToTensor(long[,] ids) =>
        torch.tensor(ids.Cast<long>().ToArray(), new long[] { ids.GetLength(0), ids.GetLength(1) });

    // ---------------------------------------------------------------- NLL in bits

    [Fact]
    public void NllBitsEqualsAFloat64LogSoftmaxLoop()
    {
        var gen = new torch.Generator(11, torch.CPU);
        using var logits = torch.randn(new long[] { 3, 7, 256 }, generator: gen) * 4;             // (b l V)
        using var targets = torch.randint(0, 256, new long[] { 3, 7 }, generator: gen);           // (b l)
        double[] z = logits.to_type(ScalarType.Float64).data<double>().ToArray();
        long[] y = targets.data<long>().ToArray();
        double expected = 0;
        var perTarget = new double[y.Length];
        for (int r = 0; r < y.Length; r++)
        {
            // log_softmax by hand: z_y - (max + ln sum exp(z - max)), then / ln 2
            double max = double.NegativeInfinity;
            for (int k = 0; k < 256; k++) max = Math.Max(max, z[r * 256 + k]);
            double sum = 0;
            for (int k = 0; k < 256; k++) sum += Math.Exp(z[r * 256 + k] - max);
            perTarget[r] = -(z[r * 256 + y[r]] - max - Math.Log(sum)) / Math.Log(2);
            expected += perTarget[r];
        }
        Assert.Equal(expected, AudioModel.NllBits(logits, targets), expected * 1e-6);
        using var bits = AudioModel.NllBitsPerTarget(logits, targets);
        Assert.Equal(new long[] { 3, 7 }, bits.shape);
        var got = bits.data<double>().ToArray();
        for (int r = 0; r < y.Length; r++) Assert.Equal(perTarget[r], got[r], 1e-5);
    }

    [Theory]
    [InlineData("sashimi")]
    [InlineData("lstm")]
    public void ScoreEqualsRecurrentStepsFromTheStartToken(string kind)
    {
        // The oracle: the recurrent mode from a zero state, fed the start token (zero class) and then the clip, summing
        // -log2 p(x_t) in float64 one sample at a time. Score runs the convolution mode on shifted inputs in batches.
        using var model = Tiny(kind, 21);
        var ids = RandomClasses(3, 37, 5);
        using var classes = ToTensor(ids).to_type(ScalarType.Byte);
        using var perSample = model.SampleBits(classes, batchSamples: 80);                        // 2 rows a batch
        var (bits, count) = model.Score(classes, batchSamples: 80);
        Assert.Equal(3 * 37, count);
        using var state = model.AllocateState(3);
        Tensor logits = model.Step(torch.full(new long[] { 3 }, model.ZeroClass, ScalarType.Int64), state);
        double total = 0;
        for (int t = 0; t < 37; t++)
        {
            using var logp = logits.to_type(ScalarType.Float64).log_softmax(-1);
            for (int i = 0; i < 3; i++)
            {
                double expected = -logp[i, ids[i, t]].item<double>() / Math.Log(2);
                total += expected;
                Assert.True(Math.Abs(perSample[i, t].item<double>() - expected) < 2e-3,
                    $"{kind}: clip {i} sample {t}: Score {perSample[i, t].item<double>():F5} bits, recurrent {expected:F5}");
            }
            using var x = torch.tensor(new[] { ids[0, t], ids[1, t], ids[2, t] });
            var next = model.Step(x, state);
            logits.Dispose();
            logits = next;
        }
        logits.Dispose();
        Assert.Equal(total, bits, total * 1e-5);
    }

    // ---------------------------------------------------------------- baselines

    [Fact]
    public void UnigramEntropyAndCrossEntropyMatchTheClosedForm()
    {
        // Exact counts: class k occurs c_k times in train (some classes never), t_k times in test; order shuffled.
        var c = Enumerable.Range(0, 256).Select(k => k % 5 == 0 ? 0L : 1 + (k * 37) % 23).ToArray();
        var tc = Enumerable.Range(0, 256).Select(k => (long)((k * 11) % 7)).ToArray();
        Tensor Build(long[] counts, int seed)
        {
            var list = counts.SelectMany((n, k) => Enumerable.Repeat((long)k, (int)n)).ToArray();
            new Random(seed).Shuffle(list);
            int m = list.Length - list.Length % 3;
            return torch.tensor(list[..m], new long[] { 3, m / 3 });
        }
        using var train = Build(c, 1);
        using var test = Build(tc, 2);
        // Build drops up to 2 entries to make 3 rows: recount from the tensors' own contents for the closed form.
        long[] Count(Tensor t) { var n = new long[256]; foreach (long v in t.data<long>()) n[v]++; return n; }
        var cn = Count(train);
        var tn = Count(test);
        foreach (double alpha in new[] { 0.0, 0.5 })
        {
            double N = cn.Sum() + alpha * 256, T = tn.Sum();
            double h = 0, ce = 0;
            for (int k = 0; k < 256; k++)
            {
                double p = (cn[k] + alpha) / N;
                if (p > 0) h -= p * Math.Log(p) / Math.Log(2);
                if (tn[k] > 0) ce -= tn[k] / T * Math.Log(p) / Math.Log(2);
            }
            var (model, trainH, testCe) = AudioBaselines.Unigram(train, test, 256, alpha);
            Assert.Equal(h, trainH, 1e-10);
            Assert.Equal(h, model.EntropyBits(), 1e-10);
            if (alpha == 0) Assert.True(double.IsPositiveInfinity(testCe) == double.IsPositiveInfinity(ce));
            else Assert.Equal(ce, testCe, 1e-10);
            Assert.Equal(cn.Sum(), model.Total);
        }
        // A unigram scores its own training data at its entropy (cross-entropy of p with itself).
        var self = UnigramModel.Fit(train, 256, 0.0);
        Assert.Equal(self.EntropyBits(), self.CrossEntropyBits(train), 1e-10);
    }

    [Fact]
    public void LstmDefaultIsSizedLikeTheDefaultSashimi()
    {
        torch.manual_seed(0);
        using var sashimi = new Sashimi(SashimiConfig.Default);
        using var lstm = new LstmBaseline(LstmBaselineConfig.Default);
        long ps = sashimi.parameters().Sum(p => p.numel()), pl = lstm.parameters().Sum(p => p.numel());
        var c = LstmBaselineConfig.Default;
        long E = c.EmbeddingDim, H = c.HiddenSize, V = c.Classes;
        // closed form: embedding + first layer + further layers (two bias vectors each, as nn.LSTM) + head
        long closed = V * E + 4 * H * (E + H + 2) + (c.NumLayers - 1) * 4 * H * (2 * H + 2) + H * V + V;
        Assert.Equal(closed, pl);
        Assert.InRange((double)pl / ps, 0.98, 1.02);
    }

    [Fact]
    public void LstmStepEqualsItsForward()
    {
        torch.manual_seed(4);
        using var model = new LstmBaseline(LstmBaselineConfig.Tiny with { HiddenSize = 24, NumLayers = 3 });
        model.eval();
        using var ids = ToTensor(RandomClasses(2, 29, 8));
        using var full = model.forward(ids);                                                      // (2 29 V)
        using var state = model.AllocateState(2);
        for (int t = 0; t < 29; t++)
        {
            using var x = ids[.., t];
            using var y = model.Step(x, state);
            using var d = (y - full[.., t]).abs().max();
            Assert.True(d.item<float>() < 1e-5f, $"step {t}: |step - forward| = {d.item<float>()}");
        }
        Assert.Equal(29, state.Steps);
    }

    [Theory]
    [InlineData(16, 2)]
    [InlineData(24, 3)]
    public void LstmForwardWithoutAutogradEqualsNnLstm(long hidden, long layers)
    {
        // Scoring (no autograd, CPU) runs the written-out recurrence; training runs nn.LSTM. Both must give the logits
        // of a float64 nn.LSTM (libtorch's own no-autograd CPU path is off by 0.09 at H = 16 here; see LstmBaseline).
        torch.manual_seed(6);
        var config = LstmBaselineConfig.Tiny with { HiddenSize = hidden, NumLayers = layers };
        using var model = new LstmBaseline(config);
        using var model64 = new LstmBaseline(config);
        model64.load_state_dict(model.state_dict());
        model64.to(ScalarType.Float64);
        model.eval();
        model64.eval();
        using var ids = ToTensor(RandomClasses(2, 41, 12));
        using var reference = model64.forward(ids);                                            // autograd on: nn.LSTM
        using var withGrad = model.forward(ids);
        Tensor inference;
        using (torch.no_grad()) inference = model.forward(ids);
        using (inference)
        {
            foreach (var (name, got) in new[] { ("nn.LSTM", withGrad), ("no-autograd recurrence", inference) })
            {
                using var d = (got.detach().to_type(ScalarType.Float64) - reference).abs().max();
                Assert.True(d.item<double>() < 1e-5, $"{name}: max |logit - float64 logit| = {d.item<double>():E2}");
            }
        }
    }

    // ---------------------------------------------------------------- model folder

    [Theory]
    [InlineData("sashimi")]
    [InlineData("lstm")]
    public void SaveLoadRoundTripGivesTheSameNll(string kind)
    {
        string dir = TempDir();
        try
        {
            using var model = Tiny(kind, 3);
            using var classes = ToTensor(RandomClasses(2, 50, 9));
            var before = model.Score(classes);
            model.Save(dir);
            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            Assert.Equal(kind, json["model_type"]!.GetValue<string>());
            Assert.Equal("mu-law", json["quantization"]!.GetValue<string>());
            Assert.Equal(8, json["bits"]!.GetValue<int>());
            Assert.Equal(16000, json["sample_rate"]!.GetValue<int>());
            Assert.Equal(256, json["classes"]!.GetValue<int>());
            using var loaded = AudioModel.Load(dir);
            Assert.True(JsonNode.DeepEquals(model.ConfigJson(), loaded.ConfigJson()), "config.json does not round-trip");
            var after = loaded.Score(classes);
            Assert.Equal(before.Bits, after.Bits);
            Assert.Equal(before.Count, after.Count);
        }
        finally { Delete(dir); }
    }

    [Fact]
    public void BadConfigsAndOverridesAreNamed()
    {
        string dir = TempDir();
        try
        {
            using (var model = Tiny("sashimi")) model.Save(dir);
            string path = Path.Combine(dir, "config.json");
            string good = File.ReadAllText(path);
            void Expect(Func<JsonObject, JsonObject> edit, string named)
            {
                File.WriteAllText(path, edit(JsonNode.Parse(good)!.AsObject()).ToJsonString());
                var e = Assert.Throws<InvalidDataException>(() => AudioModel.Load(dir).Dispose());
                Assert.Contains(named, e.Message);
                Assert.Contains("config.json", e.Message);
            }
            Expect(j => { j["bits"] = 7; return j; }, "classes");
            Expect(j => { j["d_modle"] = 8; return j; }, "d_modle");
            Expect(j => { j["model_type"] = "wavenet"; return j; }, "wavenet");
            Expect(j => { j["quantization"] = "a-law"; return j; }, "a-law");
            Expect(j => { j["d_state"] = 7; return j; }, "DState");
            Expect(j => { j.Remove("sample_rate"); return j; }, "sample_rate");
        }
        finally { Delete(dir); }
        Assert.Contains("d_modle", Assert.Throws<ArgumentException>(() => AudioModel.Create("sashimi", "tiny", overrides: [new("d_modle", "8")])).Message);
        Assert.Contains("classes", Assert.Throws<ArgumentException>(() => AudioModel.Create("lstm", "tiny", overrides: [new("classes", "16")])).Message);
        Assert.Contains("presets", Assert.Throws<ArgumentException>(() => AudioModel.Create("lstm", "huge")).Message);
        using var m4 = AudioModel.Create("lstm", "tiny", bits: 4, quantization: AudioQuantization.Linear);
        Assert.Equal(16, ((LstmBaselineConfig)m4.Config).Classes);
    }

    // ---------------------------------------------------------------- training

    static TrainOptions TrainOpts(long steps, string? dir = null, bool resume = false) => new()
    {
        Steps = steps, LearningRate = 3e-2, WarmupSteps = 0, WeightDecay = 0.01, Beta2 = 0.999, LogEvery = 0,
        CheckpointEvery = 5, OutputDir = dir, Resume = resume, Seed = 17,
    };

    [Fact]
    public void TinySashimiNllFallsOnAFixedClipWithTheTrainer()
    {
        using var audio = Tones(2, 640);
        using var model = Tiny("sashimi", 83);
        using var classes = model.EncodeClips(audio);
        double before = model.BitsPerSample(classes);
        Assert.InRange(before, 6.5, 9.5);                                                    // about log2 256 = 8 untrained
        var result = AudioTraining.Train(model, audio, audio, TrainOpts(40), new AudioTrainOptions { BatchSize = 2, CropLength = 512, EvalClips = 0 });
        double after = model.BitsPerSample(classes);
        Assert.Equal(after, result.LastEval["valid_bits_per_sample"], 1e-9);
        // measured about 8.25 -> 5.5 bits for several seeds (random 512-sample crops of the two clips, cosine schedule);
        // a model or crop pipeline that cannot learn stays near 8
        Assert.True(after < before - 1.8, $"NLL {before:F3} -> {after:F3} bits/sample after 40 steps");
    }

    [Fact]
    public void ResumeAfterInterruptionGivesTheSameWeights()
    {
        string a = TempDir(), b = TempDir();
        try
        {
            using var audio = Tones(3, 300);
            var ao = new AudioTrainOptions { BatchSize = 2, CropLength = 100, EvalClips = 0 };
            using (var m = Tiny("sashimi", 5)) AudioTraining.Train(m, audio, null, TrainOpts(16, a), ao);
            using (var m = Tiny("sashimi", 5))
            using (var cts = new CancellationTokenSource())
                AudioTraining.Train(m, audio, null, TrainOpts(16, b), ao, cts.Token, done => { if (done == 8) cts.Cancel(); });
            Assert.EndsWith("checkpoint-00000008", Trainer.LatestCheckpoint(b));
            Assert.False(File.Exists(Path.Combine(b, "model.safetensors")), "the interrupted run must not have finished");
            using (var m = Tiny("sashimi", 99)) AudioTraining.Train(m, audio, null, TrainOpts(16, b, resume: true), ao);
            using var ma = AudioModel.Load(a);
            using var mb = AudioModel.Load(b);
            var pa = ma.Model.state_dict();
            foreach (var (name, t) in mb.Model.state_dict())
                Assert.True(t.eq(pa[name]).all().item<bool>(), $"{name} differs between the straight and the resumed run");
        }
        finally { Delete(a, b); }
    }

    // ---------------------------------------------------------------- generation

    [Theory]
    [InlineData("sashimi")]
    [InlineData("lstm")]
    public void GenerationIsReproducibleWithASeed(string kind)
    {
        using var model = Tiny(kind, 7);
        var gen = new AudioGenerator(model);
        var reports = new List<AudioGenerationProgress>();
        var o = new AudioGenerationOptions { Seed = 7, Temperature = 0.9, ProgressEvery = 50 };
        var x = gen.Generate(2, 120, o, reports.Add);
        var y = gen.Generate(2, 120, o);
        var z = gen.Generate(2, 120, o with { Seed = 8 });
        Assert.Equal(2, x.Audio.Length);
        Assert.All(x.Audio, w => Assert.Equal(120, w.Length));
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(x.Classes[i], y.Classes[i]);
            Assert.Equal(x.Audio[i], y.Audio[i]);
            Assert.NotEqual(x.Classes[i], z.Classes[i]);
            // the waveform is the decoded classes
            using var dec = model.Decode(torch.tensor(x.Classes[i]));
            Assert.Equal(dec.data<float>().ToArray(), x.Audio[i]);
        }
        Assert.NotEqual(x.Classes[0], x.Classes[1]);                                          // each sequence its own stream
        Assert.Equal(new long[] { 50, 100, 120 }, reports.Select(r => r.Done));
        Assert.All(reports, r => Assert.Equal("generate", r.Phase));
    }

    [Theory]
    [InlineData("sashimi")]
    [InlineData("sashimi-mamba")]
    [InlineData("lstm")]
    public void PrimingEqualsTheConvolutionModeAndContinuationKeepsThePrompt(string kind)
    {
        using var model = Tiny(kind, 13);
        var gen = new AudioGenerator(model);
        using var wave = Tones(1, 37);
        var prompt = wave[0].data<float>().ToArray();
        using var promptClasses = model.Encode(wave).expand(2, 37).contiguous();               // (2 37)

        // Recurrent priming over [start, p_0 .. p_36] vs the convolution mode's last position on the same inputs.
        var (state, primed) = gen.Prime(promptClasses);
        using (state)
        using (primed)
        {
            Assert.Equal(38, state.Steps);
            using var start = torch.full(new long[] { 2, 1 }, model.ZeroClass, ScalarType.Int64);
            using var inputs = torch.cat([start, promptClasses], 1);                            // (2 38)
            using var forward = model.Logits(inputs);
            using var last = forward[.., -1];                                                   // (2 V)
            using var diff = (primed - last).abs().max();
            using var scale = last.abs().max();
            Assert.True(diff.item<float>() <= 1e-4f * scale.item<float>(), $"{kind}: primed vs forward last-step logits differ by {diff.item<float>()}");
        }

        var c = gen.Continue(prompt, 2, 25, new AudioGenerationOptions { Seed = 3 });
        Assert.Equal(37, c.PromptSamples);
        Assert.Equal(25, c.NewSamples);
        var pc = promptClasses[0].data<long>().ToArray();
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(62, c.Audio[i].Length);
            Assert.Equal(prompt, c.Audio[i][..37]);                                          // the prompt exactly as given
            Assert.Equal(pc, c.Classes[i][..37]);
        }
    }

    [Theory]
    [InlineData("sashimi")]
    [InlineData("lstm")]
    public void RecomputingTheForwardDrawsWhatTheRecurrentModeDraws(string kind)
    {
        // float64 so that the two paths' logits agree far below any sampling threshold.
        using var model = Tiny(kind, 31);
        model.Model.to(ScalarType.Float64);
        var gen = new AudioGenerator(model);
        var o = new AudioGenerationOptions { Seed = 5 };
        var fast = gen.Generate(2, 40, o);
        var slow = gen.GenerateByRecompute(2, 40, options: o);
        for (int i = 0; i < 2; i++) Assert.Equal(fast.Classes[i], slow.Classes[i]);
        var prompt = new float[] { 0f, 0.1f, 0.3f, -0.2f, -0.5f, 0.05f };
        var fastC = gen.Continue(prompt, 1, 20, o);
        var slowC = gen.GenerateByRecompute(1, 20, prompt, o);
        Assert.Equal(fastC.Classes[0], slowC.Classes[0]);
        Assert.Equal(fastC.Audio[0], slowC.Audio[0]);
    }
}
