// Generation: the sampling filters against plain loops, seeds, greedy decoding against argmax of full forward passes,
// batches against single prompts, stop conditions, the decode engine against MambaLM.Step, and the decode-weight
// kernel against float64 products.
using Ssm.Backbone.Generation;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using TorchSharp;
using static TorchSharp.torch;
using static Ssm.Tests.TestUtil;

namespace Ssm.Backbone.Tests;

public class GenerationTests
{
    // ------------------------------------------------------------------------------------------ independent references

    static double[][] Rows(Tensor t) => Enumerable.Range(0, (int)t.shape[0])
        .Select(i => t[i].to_type(ScalarType.Float64).cpu().data<double>().ToArray()).ToArray();

    static double[] Softmax(double[] x)
    {
        double m = x.Where(double.IsFinite).Max();
        var e = x.Select(v => double.IsNegativeInfinity(v) ? 0 : Math.Exp(v - m)).ToArray();
        double s = e.Sum();
        return e.Select(v => v / s).ToArray();
    }

    static HashSet<int> Kept(double[] row) => Enumerable.Range(0, row.Length).Where(i => !double.IsNegativeInfinity(row[i])).ToHashSet();

    static HashSet<int> TopKRef(double[] x, int k) => Enumerable.Range(0, x.Length).OrderByDescending(i => x[i]).Take(k).ToHashSet();

    /// <summary>The smallest set of most likely tokens whose probability mass reaches p.</summary>
    static HashSet<int> TopPRef(double[] x, double p)
    {
        var probs = Softmax(x);
        var set = new HashSet<int>();
        double mass = 0;
        foreach (int i in Enumerable.Range(0, x.Length).OrderByDescending(i => probs[i]))
        {
            set.Add(i);
            mass += probs[i];
            if (mass >= p) break;
        }
        return set;
    }

    static HashSet<int> MinPRef(double[] x, double minP)
    {
        var probs = Softmax(x);
        double max = probs.Max();
        return Enumerable.Range(0, x.Length).Where(i => probs[i] >= minP * max).ToHashSet();
    }

    static double[] PenaltyRef(double[] x, bool[] seen, double penalty)
        => x.Select((v, i) => !seen[i] ? v : v > 0 ? v / penalty : v * penalty).ToArray();

    // ------------------------------------------------------------------------------------------ filters

    [Fact]
    public void TopKKeepsExactlyTheKLargest()
    {
        torch.manual_seed(1);
        var logits = torch.randn(5, 97) * 3;
        foreach (int k in new[] { 1, 2, 10, 96 })
        {
            var rows = Rows(LogitsProcessors.TopK(logits, k));
            var refRows = Rows(logits);
            for (int i = 0; i < rows.Length; i++)
            {
                Assert.Equal(k, Kept(rows[i]).Count);
                Assert.Equal(TopKRef(refRows[i], k), Kept(rows[i]));
                foreach (int j in Kept(rows[i])) Assert.Equal(refRows[i][j], rows[i][j]);   // kept logits unchanged
            }
        }
        Assert.Equal(97, Kept(Rows(LogitsProcessors.TopK(logits, 0))[0]).Count);          // 0 = off
    }

    [Fact]
    public void TopPKeepsTheSmallestSetWithEnoughMass()
    {
        torch.manual_seed(2);
        // Small vocabularies, and a large flat one whose nucleus is bigger than the first candidate set of the fast path.
        foreach (var logits in new[] { torch.randn(8, 61) * 2, torch.randn(3, 700) * 0.5 })
        foreach (double p in new[] { 0.05, 0.3, 0.5, 0.9, 0.99 })
        {
            var refRows = Rows(logits);
            var rows = Rows(LogitsProcessors.TopP(logits, p));
            for (int i = 0; i < rows.Length; i++)
            {
                var kept = Kept(rows[i]);
                Assert.Equal(TopPRef(refRows[i], p), kept);
                double mass = kept.Sum(j => Softmax(refRows[i])[j]);
                Assert.True(mass >= p, $"kept mass {mass} < {p}");
            }
        }
        Assert.Equal(61, Kept(Rows(LogitsProcessors.TopP(torch.randn(2, 61), 1.0))[0]).Count);
    }

    [Fact]
    public void MinPKeepsTokensAboveAFractionOfTheTopProbability()
    {
        torch.manual_seed(3);
        var logits = torch.randn(6, 80) * 2;
        var refRows = Rows(logits);
        foreach (double minP in new[] { 0.01, 0.1, 0.5, 1.0 })
        {
            var rows = Rows(LogitsProcessors.MinP(logits, minP));
            for (int i = 0; i < rows.Length; i++) Assert.Equal(MinPRef(refRows[i], minP), Kept(rows[i]));
        }
    }

    [Fact]
    public void RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOfSeenTokens()
    {
        torch.manual_seed(4);
        var logits = torch.randn(3, 40);
        var seen = torch.rand(3, 40) < 0.3;
        var got = Rows(LogitsProcessors.RepetitionPenalty(logits, seen, 1.7));
        var x = Rows(logits);
        var s = Enumerable.Range(0, 3).Select(i => seen[i].cpu().data<bool>().ToArray()).ToArray();
        for (int i = 0; i < 3; i++)
        {
            var expect = PenaltyRef(x[i], s[i], 1.7);
            for (int j = 0; j < 40; j++) Assert.Equal(expect[j], got[i][j], 5);
        }
    }

    [Fact]
    public void ProcessAppliesPenaltyThenTemperatureTopKTopPMinPInOrder()
    {
        torch.manual_seed(5);
        var logits = torch.randn(4, 50) * 2;
        var seen = torch.rand(4, 50) < 0.2;
        var opts = new SamplingOptions(Temperature: 0.7, TopK: 20, TopP: 0.8, MinP: 0.05, RepetitionPenalty: 1.3);
        using var sampler = new Sampler(opts, 4, 0);
        var got = Rows(sampler.Process(logits, seen));
        var x = Rows(logits);
        for (int i = 0; i < 4; i++)
        {
            var s = seen[i].cpu().data<bool>().ToArray();
            var v = PenaltyRef(x[i], s, 1.3).Select(a => a / 0.7).ToArray();
            var keep = TopKRef(v, 20);
            var afterK = v.Select((a, j) => keep.Contains(j) ? a : double.NegativeInfinity).ToArray();
            var keepP = TopPRef(afterK, 0.8);
            var afterP = afterK.Select((a, j) => keepP.Contains(j) ? a : double.NegativeInfinity).ToArray();
            var keepM = MinPRef(afterP, 0.05);
            Assert.Equal(keepM, Kept(got[i]));
            foreach (int j in keepM) Assert.Equal(v[j], got[i][j], 4);
        }
    }

    [Fact]
    public void SamplerDrawsFromTheSoftmaxDistribution()
    {
        // One logits row repeated over many sequences (each its own generator): the empirical frequencies must match
        // softmax within 5 standard errors.
        var row = torch.tensor(new float[] { 1.0f, 0.0f, 2.0f, -1.0f, 0.5f, float.NegativeInfinity });
        int b = 3000;
        var logits = row.unsqueeze(0).expand(b, -1).contiguous();
        using var sampler = new Sampler(new SamplingOptions(), b, 42);
        var ids = sampler.Next(logits).data<long>().ToArray();
        var p = Softmax(Rows(row.unsqueeze(0))[0]);
        for (int j = 0; j < p.Length; j++)
        {
            double f = ids.Count(t => t == j) / (double)b;
            double se = Math.Sqrt(p[j] * (1 - p[j]) / b);
            Assert.True(Math.Abs(f - p[j]) <= 5 * se + 1e-12, $"token {j}: frequency {f:F4} vs probability {p[j]:F4}");
        }
        Assert.DoesNotContain(5L, ids);                                               // -inf is never drawn
    }

    [Fact]
    public void InvalidOptionsAreNamed()
    {
        Assert.Contains("top-p", Assert.Throws<ArgumentException>(() => new GenerationOptions(TopP: 0).Validate()).Message);
        Assert.Contains("temperature", Assert.Throws<ArgumentException>(() => new GenerationOptions(Temperature: 0).Validate()).Message);
        Assert.Contains("min-p", Assert.Throws<ArgumentException>(() => new GenerationOptions(MinP: 1.5).Validate()).Message);
        Assert.Contains("top-k", Assert.Throws<ArgumentException>(() => new GenerationOptions(TopK: -1).Validate()).Message);
        Assert.Contains("repetition", Assert.Throws<ArgumentException>(() => new GenerationOptions(RepetitionPenalty: 0).Validate()).Message);
        new GenerationOptions(Temperature: 0, Greedy: true).Validate();              // temperature is unused when greedy
    }

    // ------------------------------------------------------------------------------------------ models

    static void Perturb(nn.Module m, double scale = 0.3)
    {
        using var noGrad = torch.no_grad();
        foreach (var (_, p) in m.named_parameters()) p.add_(torch.randn_like(p) * scale * (p.abs().mean().item<float>() + 0.05));
    }

    static MambaLM TinyLM(MixerKind kind, long seed, bool bias = false, long dModel = 16, long vocab = 50, bool tie = true)
    {
        torch.manual_seed(seed);
        var cfg = new MambaLMConfig(VocabSize: vocab, DModel: dModel, NLayer: 2, Mixer: kind,
            Mamba: new MambaConfig(dModel, DState: 4, Bias: bias),
            Mamba2: new Mamba2Config(dModel, DState: 8, HeadDim: 8, ChunkSize: 4), TieEmbeddings: tie);
        var lm = new MambaLM(cfg);
        Perturb(lm);
        lm.eval();
        return lm;
    }

    /// <summary>The oracle: argmax of the last position of a full forward pass over the whole sequence, each step.</summary>
    static long[] GreedyByFullForward(MambaLM lm, long[] prompt, int count)
    {
        using var noGrad = torch.no_grad();
        var seq = prompt.ToList();
        for (int t = 0; t < count; t++)
        {
            using var scope = torch.NewDisposeScope();
            var logits = lm.forward(torch.tensor(seq.ToArray()).unsqueeze(0));       // (1 l V)
            seq.Add(logits[0, -1, ..(int)lm.Config.VocabSize].argmax().item<long>());
        }
        return seq.Skip(prompt.Length).ToArray();
    }

    [Theory]
    [InlineData(MixerKind.Mamba1, DecodeBackend.Engine)]
    [InlineData(MixerKind.Mamba1, DecodeBackend.Model)]
    [InlineData(MixerKind.Mamba1, DecodeBackend.FullForward)]
    [InlineData(MixerKind.Mamba2, DecodeBackend.Auto)]
    public void GreedyGenerationIsTheArgmaxOfAFullForwardEachStep(MixerKind kind, DecodeBackend backend)
    {
        var lm = TinyLM(kind, 11);
        using var gen = new TokenGenerator(lm, backend);
        var prompt = new long[] { 3, 14, 15, 9, 2, 6 };
        var got = gen.Generate(prompt, new GenerationOptions(MaxNewTokens: 12, Greedy: true));
        Assert.Equal(GreedyByFullForward(lm, prompt, 12), got.Tokens);
        Assert.Equal(StopReason.MaxNewTokens, got.Reason);
        Assert.Equal(11, got.Timing.StepSeconds.Count);
    }

    [Fact]
    public void SameSeedSameTokensDifferentSeedDifferentTokens()
    {
        var lm = TinyLM(MixerKind.Mamba1, 12);
        using var gen = new TokenGenerator(lm);
        var prompt = new long[] { 1, 2, 3 };
        IReadOnlyList<long> Run(ulong seed) => gen.Generate(prompt, new GenerationOptions(MaxNewTokens: 24, Temperature: 1.5, Seed: seed)).Tokens;
        Assert.Equal(Run(7), Run(7));
        Assert.NotEqual(Run(7), Run(8));
        var streamed = new List<long>();
        var r = gen.Generate(prompt, new GenerationOptions(MaxNewTokens: 24, Temperature: 1.5, Seed: 7), streamed.Add);
        Assert.Equal(r.Tokens, streamed);                                              // every token streamed, in order
    }

    [Theory]
    [InlineData(MixerKind.Mamba1)]
    [InlineData(MixerKind.Mamba2)]
    public void BatchOfPromptsOfDifferentLengthsEqualsEachAlone(MixerKind kind)
    {
        var lm = TinyLM(kind, 13);
        using var gen = new TokenGenerator(lm);
        var prompts = new long[][] { new long[] { 5, 4, 3 }, new long[] { 9, 1, 1, 7, 2, 8, 30 }, new long[] { 42 } };
        foreach (bool greedy in new[] { true, false })
        {
            var opts = new GenerationOptions(MaxNewTokens: 10, Greedy: greedy, Temperature: 1.3, TopK: 20, RepetitionPenalty: 1.2, Seed: 100);
            var alone = prompts.Select((p, i) => gen.Generate(p, opts with { Seed = 100 + (ulong)i }).Tokens).ToArray();
            // An end-of-sequence token taken from the middle of sequence 1's output makes it leave the batch early.
            long eos = alone[1][3];
            var optsEos = opts with { EosTokenId = eos };
            alone = prompts.Select((p, i) => gen.Generate(p, optsEos with { Seed = 100 + (ulong)i }).Tokens).ToArray();
            Assert.True(alone[1].Count <= 4);
            var streamed = prompts.Select(_ => new List<long>()).ToArray();
            var batch = gen.GenerateBatch(prompts, optsEos, (i, t) => streamed[i].Add(t));
            for (int i = 0; i < prompts.Length; i++)
            {
                Assert.Equal(alone[i], batch[i].Tokens);
                Assert.Equal(batch[i].Tokens, streamed[i]);
                Assert.Equal(batch[i].Tokens[^1] == eos ? StopReason.EndOfSequence : StopReason.MaxNewTokens, batch[i].Reason);
            }
        }
    }

    [Fact]
    public void StopStringEndsGenerationAndIsReported()
    {
        var lm = TinyLM(MixerKind.Mamba1, 14);
        using var gen = new TokenGenerator(lm);
        // A toy tokenizer: token t is the letter 'a' + t % 26 (every token one character).
        static string Decode(IReadOnlyList<long> ids) => new(ids.Select(t => (char)('a' + t % 26)).ToArray());
        var prompt = new long[] { 2, 7, 1, 8 };
        var free = gen.Generate(prompt, new GenerationOptions(MaxNewTokens: 30, Greedy: true)).Tokens;
        string text = Decode(free);
        string stop = text.Substring(6, 3);
        int end = text.IndexOf(stop, StringComparison.Ordinal) + stop.Length;            // first completion of the stop string
        var got = gen.Generate(prompt, new GenerationOptions(MaxNewTokens: 30, Greedy: true, StopStrings: new[] { "zzzzzz", stop }), decode: Decode);
        Assert.Equal(StopReason.StopString, got.Reason);
        Assert.Equal(stop, got.StopString);
        Assert.Equal(free.Take(end), got.Tokens);
        Assert.Throws<ArgumentException>(() => gen.Generate(prompt, new GenerationOptions(StopStrings: new[] { "x" })));
    }

    [Fact]
    public void IncrementalDecoderHoldsBackSplitCharacters()
    {
        // Byte tokens of "é!" (0xC3 0xA9 0x21): after the first byte nothing is final yet.
        static string Decode(IReadOnlyList<long> ids) => System.Text.Encoding.UTF8.GetString(ids.Select(t => (byte)t).ToArray());
        var dec = new IncrementalDecoder(Decode);
        Assert.Equal("", dec.Push(0xC3));
        Assert.Equal("é", dec.Push(0xA9));
        Assert.Equal("!", dec.Push(0x21));
        Assert.Equal("", dec.Flush());
    }

    [Fact]
    public void BadPromptsAreRejected()
    {
        var lm = TinyLM(MixerKind.Mamba1, 15);
        using var gen = new TokenGenerator(lm);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => gen.Generate(Array.Empty<long>(), new GenerationOptions())).Message);
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentException>(() => gen.Generate(new long[] { 50 }, new GenerationOptions())).Message);
        Assert.Empty(gen.Generate(new long[] { 1 }, new GenerationOptions(MaxNewTokens: 0)).Tokens);
        Assert.Throws<NotSupportedException>(() => new TokenGenerator(TinyLM(MixerKind.Mamba2, 1), DecodeBackend.Engine));
    }

    // ------------------------------------------------------------------------------------------ decode engine

    /// <summary>Prefill the reference and the engine's state (through <paramref name="engineModel"/>) on the same prompt,
    /// then step both on the same tokens; returns the largest relative logit error over the steps and the relative
    /// error of the final SSM states.</summary>
    static (double logits, double state) EngineVsStep(MambaLM reference, DecodeEngine engine, MambaLM engineModel, int b, int steps, long seed)
    {
        using var noGrad = torch.no_grad();
        torch.manual_seed(seed);
        long V = reference.Config.VocabSize;
        var prompt = torch.randint(0, V, new long[] { b, 5 });
        using var s1 = reference.AllocateState(b);
        using var s2 = engineModel.AllocateState(b);
        reference.Forward(prompt, s1).Dispose();
        engineModel.Forward(prompt, s2).Dispose();
        double worst = 0;
        for (int t = 0; t < steps; t++)
        {
            var ids = torch.randint(0, V, new long[] { b });
            var expect = reference.Step(ids, s1);
            var got = engine.Step(ids, s2);
            worst = Math.Max(worst, RelErr(got, expect));
        }
        double st = s1.Layers.Select((l, i) => RelErr(s2.Layers[i].Ssm, l.Ssm)).Max();
        return (worst, st);
    }

    [Theory]
    [InlineData(DecodeImpl.Fused, false, 16, 1)]
    [InlineData(DecodeImpl.Fused, true, 16, 3)]
    [InlineData(DecodeImpl.Fused, true, 20, 6)]
    [InlineData(DecodeImpl.TensorOps, true, 20, 3)]
    public void Float32EngineEqualsMambaLMStep(DecodeImpl impl, bool bias, long dModel, int b)
    {
        var lm = TinyLM(MixerKind.Mamba1, 21, bias: bias, dModel: dModel, tie: !bias);
        using var engine = new DecodeEngine(lm, WeightFormat.Float32, impl);
        var (logits, state) = EngineVsStep(lm, engine, lm, b, steps: 6, seed: 3);
        Assert.True(logits <= 1e-5, $"logits rel. error {logits:E2}");
        Assert.True(state <= 1e-5, $"state rel. error {state:E2}");
    }

    [Theory]
    [InlineData(WeightFormat.BFloat16)]
    [InlineData(WeightFormat.Int8)]
    public void QuantizedEngineComputesTheModelWithRoundedWeights(WeightFormat format)
    {
        // Exactness: with the engine's dequantised weights loaded into a copy of the model, MambaLM.Step gives the
        // engine's logits to float32 rounding. So the only error of bf16/int8 is the weight rounding itself.
        // (Untied embeddings: the engine looks tokens up in the float32 embedding even when lm_head is tied to it.)
        var lm = TinyLM(MixerKind.Mamba1, 22, bias: true, dModel: 24, tie: false);
        using var engine = new DecodeEngine(lm, format);
        var copy = TinyLM(MixerKind.Mamba1, 22, bias: true, dModel: 24, tie: false);
        using (torch.no_grad())
        {
            var ps = copy.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, w) in engine.DequantizedWeights()) ps[name].copy_(w);
        }
        var (exact, _) = EngineVsStep(copy, engine, copy, b: 2, steps: 6, seed: 4);
        Assert.True(exact <= 1e-5, $"{format} engine vs the model with its rounded weights: rel. error {exact:E2}");

        // Cost against float32. Each rounded weight has relative error <= u (bf16: 2^-8; int8: 1/254 of its row's
        // largest weight, and the rows' weights are ~3x smaller than their maxima on average, so ~3/254 ~ 2^-6.4).
        // The errors of a product are independent and of random sign, so a projection's output moves by ~u/sqrt(3)
        // of its own size; the 4 projections of each of the 2 layers and lm_head add up along the path (9 terms)
        // without cancelling in the worst case, so 9u bounds the relative logit error to first order.
        double u = format == WeightFormat.BFloat16 ? Math.Pow(2, -8) : 3.0 / 254;
        var (cost, _) = EngineVsStep(lm, engine, lm, b: 2, steps: 6, seed: 4);
        Assert.True(cost <= 9 * u, $"{format} vs float32: rel. logit error {cost:E2} > {9 * u:E2}");
        Assert.True(cost > 0, "quantised weights gave exactly the float32 logits: nothing was rounded");
    }

    [Fact]
    public void ScanExponentialMatchesMathExpOnTheNegativeAxis()
    {
        // The state update's inlined exp(Δ A) (Δ A <= 0): relative error within a few float32 ulps down to -87,
        // where exp underflows (below it the result is the smallest normal, ~1e-38: absolute error < 1.2e-38).
        var xs = Enumerable.Range(0, 7998).Select(i => -100.0f * i / 7997).Append(-1e-8f).Append(0f).ToArray();
        for (int i = 0; i + 8 <= xs.Length; i += 8)
        {
            var v = System.Runtime.Intrinsics.Vector256.Create(xs.AsSpan(i, 8));
            var e = DecodeEngine.Exp(v);
            for (int j = 0; j < 8; j++)
            {
                double x = xs[i + j], want = Math.Exp(x), got = e[j];
                if (x >= -87) Assert.True(Math.Abs(got - want) <= 3e-7 * want, $"exp({x}) = {got}, expected {want}");
                else Assert.True(Math.Abs(got - want) < 1.2e-38, $"exp({x}) = {got}, expected ~0");
            }
        }
    }

    // ------------------------------------------------------------------------------------------ GEMV kernel

    [Theory]
    [InlineData("Avx512")]
    [InlineData("Avx2")]
    [InlineData("Scalar")]
    public void DecodeMatrixProductMatchesFloat64(string tierName)
    {
        var tier = Enum.Parse<DecodeMatrix.Tier>(tierName);
        if (tier < DecodeMatrix.Best) return;                                           // this CPU lacks the instructions
        torch.manual_seed(31);
        // Widths below, between and above the vector widths (8, 16) and the unrolled blocks (32, 64), batches around 4.
        var shapes = new (int rows, int cols, int batch)[] { (1, 1, 1), (7, 13, 1), (33, 70, 5), (64, 256, 4), (5, 8, 9), (10, 100, 2), (3, 40, 3), (9, 200, 7), (4, 17, 1) };
        var old = DecodeMatrix.Use;
        DecodeMatrix.Use = tier;
        try
        {
            foreach (var (rows, cols, batch) in shapes)
            foreach (var format in Enum.GetValues<WeightFormat>())
            foreach (bool withBias in new[] { false, true })
            {
                var w = torch.randn(rows, cols);
                var bias = withBias ? torch.randn(rows) : null;
                var x = torch.randn(batch, cols);
                using var m = DecodeMatrix.Create(w, bias, format);
                var y = m.Multiply(x).to_type(ScalarType.Float64);
                var wq = m.Dequantize().to_type(ScalarType.Float64);
                var x64 = x.to_type(ScalarType.Float64);
                var expect = torch.matmul(x64, wq.t());
                if (bias is not null) expect = expect + bias.to_type(ScalarType.Float64);
                // float32 accumulation: |error| <= cols * 2^-24 * sum |w| |x| (+ the bias rounding), per entry.
                var scale = torch.matmul(x64.abs(), wq.abs().t()) + (bias?.abs().to_type(ScalarType.Float64) ?? torch.zeros(1, dtype: ScalarType.Float64));
                var excess = ((y - expect).abs() - scale * (cols * Math.Pow(2, -24)) - 1e-30).max().item<double>();
                Assert.True(excess <= 0, $"{format} {rows}x{cols} b={batch}: error above the float32 accumulation bound by {excess:E2}");

                // The rounding itself, against the exact float32 weights: bf16 |dw| <= 2^-8 |w| (8 significant bits,
                // round to nearest); int8 |dw| <= s_r / 2 = max_r |w| / 254 (the grid of 255 levels spanning the row).
                var w64 = w.to_type(ScalarType.Float64);
                var rowMax = w64.abs().amax(new long[] { 1 }, keepdim: true);
                var perWeight = format switch
                {
                    WeightFormat.Float32 => torch.zeros_like(w64),
                    WeightFormat.BFloat16 => w64.abs() * Math.Pow(2, -8),
                    _ => rowMax / 254 * (1 + 1e-6),
                };
                Assert.True(((wq - w64).abs() - perWeight).max().item<double>() <= 1e-12, $"{format}: a weight rounds further than its format allows");
                if (format == WeightFormat.Int8)                                          // the largest weight of a row is exact
                    Assert.True((wq.abs().amax(new long[] { 1 }, keepdim: true) - rowMax).abs().max().item<double>() <= 1e-6 * rowMax.max().item<double>());
                var exact = torch.matmul(x64, w64.t());
                if (bias is not null) exact = exact + bias.to_type(ScalarType.Float64);
                var bound = format switch
                {
                    WeightFormat.Float32 => torch.zeros_like(exact),
                    WeightFormat.BFloat16 => torch.matmul(x64.abs(), w64.abs().t()) * Math.Pow(2, -8),
                    _ => x64.abs().sum(1, keepdim: true) * (w64.abs().amax(new long[] { 1 }) / 254).unsqueeze(0),
                };
                var excessQ = ((y - exact).abs() - bound - scale * (cols * Math.Pow(2, -24)) - 1e-30).max().item<double>();
                Assert.True(excessQ <= 0, $"{format} {rows}x{cols}: rounding error above its bound by {excessQ:E2}");
                Assert.Equal(format == WeightFormat.Float32 ? 4 : format == WeightFormat.BFloat16 ? 2 : 1,
                    (m.Bytes - (withBias ? rows * 4 : 0) - (format == WeightFormat.Int8 ? rows * 4 : 0)) / (rows * cols));
            }
        }
        finally { DecodeMatrix.Use = old; }
    }

    [Fact]
    public void WorkersRunEveryPartOnceAndPropagateErrors()
    {
        using var team = new DecodeWorkers(3);
        for (int rep = 0; rep < 200; rep++)
        {
            var hits = new int[1000];
            team.Run(1000, (a, e) => { for (int i = a; i < e; i++) Interlocked.Increment(ref hits[i]); });
            Assert.All(hits, h => Assert.Equal(1, h));
            if (rep % 50 == 0) Thread.Sleep(3);                                         // let the workers fall asleep
        }
        Assert.Throws<InvalidOperationException>(() => team.RunParts(p => { if (p == 2) throw new InvalidOperationException("boom"); }));
        var again = new int[10];
        team.Run(10, (a, e) => { for (int i = a; i < e; i++) again[i]++; });              // still usable after a failure
        Assert.All(again, h => Assert.Equal(1, h));
    }
}
