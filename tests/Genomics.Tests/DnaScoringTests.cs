// Streaming DNA scoring: chunked scoring with a carried state equals one full forward (float64 network, several chunk
// lengths including 1 and non-divisors, caller chunks of random sizes); the full score equals an independent loop
// over the backbone's step mode; the reverse strand read backwards in chunks equals scoring the reverse complement;
// batched window log-likelihoods equal single ones; and memory stays flat with sequence length (no tensor left alive,
// peak resident memory independent of length, unlike the full forward).
using System.Text;
using TorchSharp;
using Xunit.Abstractions;
using Ssm.Genomics;
using static TorchSharp.torch;

namespace Ssm.Genomics.Tests;

public class DnaScoringTests(ITestOutputHelper output)
{
    static Random Fresh(out int seed)
    {
        seed = Environment.TickCount ^ Guid.NewGuid().GetHashCode();
        return new Random(seed);
    }

    /// <summary>Bases as the parsers might hand them, plus lower case and other letters: mostly ACGT, some N.</summary>
    static byte[] RandomBases(Random rng, int n)
    {
        const string pool = "ACGTACGTACGTACGTacgtNNRy";
        var b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte)pool[rng.Next(pool.Length)];
        return b;
    }

    static DnaLM Model(int seed, ScalarType dtype = ScalarType.Float64)
    {
        torch.manual_seed(seed);
        var lm = new DnaLM(DnaLMConfig.Tiny).To(torch.CPU, dtype);
        using (torch.no_grad())
            foreach (var (name, p) in lm.Model.named_parameters())
                if (name.EndsWith("dt_proj.bias", StringComparison.Ordinal)) p.add_(1.0);   // longer memory than the init's
        return lm;
    }

    /// <summary>Splits bases into consecutive pieces of random sizes (0 included).</summary>
    static List<ReadOnlyMemory<byte>> RandomPieces(Random rng, byte[] bases)
    {
        var pieces = new List<ReadOnlyMemory<byte>>();
        for (int s = 0; s < bases.Length;)
        {
            int n = Math.Min(bases.Length - s, rng.Next(0, 90));
            pieces.Add(bases.AsMemory(s, n));
            s += n;
        }
        return pieces;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(5)]
    [InlineData(64)]
    [InlineData(333)]
    [InlineData(5000)]
    public void StreamingScoreEqualsTheFullForward(int chunkLength)
    {
        var rng = Fresh(out int seed);
        using var lm = Model(seed);
        var bases = RandomBases(rng, chunkLength == 1 ? 180 : 700 + rng.Next(50));
        var full = DnaScoring.ScoreFull(lm, bases);
        var streamed = DnaScoring.Score(lm, RandomPieces(rng, bases), chunkLength);
        Assert.Equal(full.Bases, streamed.Bases);
        Assert.Equal(full.Skipped, streamed.Skipped);
        Assert.Equal(bases.Count(b => "ACGTacgt".Contains((char)b)), full.Bases);
        Assert.True(Math.Abs(streamed.Nats - full.Nats) <= 1e-6 * full.Nats, $"seed {seed}: {streamed.Nats} vs {full.Nats}");
    }

    [Fact]
    public void FullScoreEqualsAStepLoopWithTheFourBaseSoftmax()
    {
        var rng = Fresh(out int seed);
        using var lm = Model(seed);
        var bases = RandomBases(rng, 120);
        var score = DnaScoring.ScoreFull(lm, bases);
        // independent: the backbone's recurrent step from [BOS]; -log p over the logits of A, C, G, T in float64
        using var noGrad = torch.no_grad();
        using var state = lm.AllocateState(1);
        long prev = DnaTokenizer.Bos;
        double nats = 0;
        long count = 0;
        foreach (var b in bases)
        {
            using var input = torch.tensor(new[] { prev });
            using var logits = lm.Step(input, state);
            var row = logits.to_type(ScalarType.Float64).data<double>().ToArray();
            int k = "ACGT".IndexOf(char.ToUpperInvariant((char)b));
            if (k >= 0)
            {
                var four = row.AsSpan(7, 4).ToArray();
                double max = four.Max();
                nats += max + Math.Log(four.Sum(v => Math.Exp(v - max))) - four[k];
                count++;
            }
            prev = DnaTokenizer.Id(b);
        }
        Assert.Equal(count, score.Bases);
        Assert.True(Math.Abs(score.Nats - nats) <= 1e-5 * nats, $"seed {seed}: {score.Nats} vs {nats}");
        Assert.Equal(score.Bits / score.Bases, score.BitsPerBase, 12);
    }

    [Fact]
    public void ReverseStrandIsScoredFromChunksReadBackwards()
    {
        var rng = Fresh(out int seed);
        var bases = RandomBases(rng, 500 + rng.Next(100));
        var rc = DnaTokenizer.ReverseComplement(bases);
        foreach (int c in new[] { 1, 7, 128, 1000 })
        {
            var pieces = DnaScoring.ReverseComplementChunks(bases.Length, (s, n) => bases.AsSpan((int)s, n).ToArray(), c)
                .SelectMany(m => m.ToArray()).ToArray();
            Assert.True(rc.SequenceEqual(pieces), $"seed {seed}, chunk {c}");
            var fwd = DnaScoring.ForwardChunks(bases.Length, (s, n) => bases.AsSpan((int)s, n).ToArray(), c).SelectMany(m => m.ToArray()).ToArray();
            Assert.True(bases.SequenceEqual(fwd));
        }
        using var lm = Model(seed);
        var strands = DnaScoring.ScoreStrands(lm, bases, chunkLength: 97);
        var wantFwd = DnaScoring.ScoreFull(lm, bases);
        var wantRev = DnaScoring.ScoreFull(lm, rc);
        Assert.True(Math.Abs(strands.Forward.Nats - wantFwd.Nats) <= 1e-6 * wantFwd.Nats, $"seed {seed}");
        Assert.True(Math.Abs(strands.Reverse.Nats - wantRev.Nats) <= 1e-6 * wantRev.Nats, $"seed {seed}");
        Assert.Equal(strands.Forward.Bases, strands.Reverse.Bases);
        Assert.Equal((strands.Forward.Nats + strands.Reverse.Nats) / 2, strands.Both.Nats, 9);
        // a reader that returns the wrong amount is an error naming the range
        var e = Assert.Throws<InvalidDataException>(() => DnaScoring.ScoreStrands(lm, 10, (s, n) => new byte[n - 1], 4));
        Assert.Contains("[", e.Message);
    }

    [Fact]
    public void BatchedWindowLikelihoodsEqualSingleOnes()
    {
        var rng = Fresh(out int seed);
        using var lm = Model(seed, ScalarType.Float32);
        var windows = Enumerable.Range(0, 11).Select(i => (ReadOnlyMemory<byte>)RandomBases(rng, i % 3 == 0 ? 21 : 40)).ToList();
        var batched = DnaScoring.LogLikelihoods(lm, windows, batch: 3);
        for (int i = 0; i < windows.Count; i++)
        {
            double single = DnaScoring.LogLikelihood(lm, windows[i].Span);
            Assert.True(single < 0);
            Assert.True(Math.Abs(batched[i] - single) <= 1e-5 * Math.Abs(single), $"seed {seed}, window {i}: {batched[i]} vs {single}");
        }
    }

    static long ProcStatusKb(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key + ":", StringComparison.Ordinal))
                return long.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0]);
        throw new InvalidOperationException(key);
    }

    /// <summary>The rise of peak resident memory (bytes) while running <paramref name="run"/>, or -1 where Linux's
    /// resettable peak (clear_refs 5) is not available.</summary>
    static long PeakRise(Action run)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return -1; }
        long before = ProcStatusKb("VmRSS");
        run();
        return (ProcStatusKb("VmHWM") - before) * 1024;
    }

    /// <summary>Tensors alive now, after the finalisers of unreachable ones (earlier tests) have run.</summary>
    static long LiveTensors()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return torch.Tensor.TotalCount;
    }

    [Fact]
    public void StreamingMemoryDoesNotGrowWithLength()
    {
        var rng = Fresh(out int seed);
        using var lm = Model(seed, ScalarType.Float32);
        var longSeq = RandomBases(rng, 200_000);
        var shortSeq = longSeq.AsMemory(0, 50_000);
        const int chunk = 4096;
        DnaScoring.Score(lm, longSeq.AsMemory(0, 3 * chunk), chunk);                // warm-up: thread pools, allocator

        // no tensor outlives a call, whatever the length
        long live = LiveTensors();
        var s1 = DnaScoring.Score(lm, shortSeq, chunk);
        Assert.Equal(live, LiveTensors());
        var s4 = DnaScoring.Score(lm, longSeq, chunk);
        Assert.Equal(live, LiveTensors());
        Assert.True(s4.Bases > 3 * s1.Bases);

        // peak resident memory: 4x the length costs no more, while a full forward's peak grows with the length (the
        // allocator only adds noise upwards, so each figure is the smaller of two runs)
        long Min2(Action run) => Math.Min(PeakRise(run), PeakRise(run));
        long riseShort = Min2(() => DnaScoring.Score(lm, shortSeq, chunk));
        if (riseShort < 0) return;                                                 // not Linux: the tensor count above stands
        long riseLong = Min2(() => DnaScoring.Score(lm, longSeq, chunk));
        long riseFull = PeakRise(() => DnaScoring.ScoreFull(lm, shortSeq.Span));
        const long MB = 1 << 20;
        output.WriteLine($"peak RSS rise: stream 50 kbp {riseShort / MB} MB, stream 200 kbp {riseLong / MB} MB, full 50 kbp {riseFull / MB} MB");
        Assert.True(riseLong < riseShort + 24 * MB, $"streaming peak rise {riseLong / MB} MB for 200 kbp vs {riseShort / MB} MB for 50 kbp");
        Assert.True(riseFull > 3 * Math.Max(riseLong, 8 * MB),
            $"the full forward over 50 kbp should need far more than streaming 200 kbp: {riseFull / MB} MB vs {riseLong / MB} MB");
    }

    [Fact]
    public void EmptyAndAllNSequencesScoreNothing()
    {
        using var lm = Model(1, ScalarType.Float32);
        var empty = DnaScoring.Score(lm, ReadOnlyMemory<byte>.Empty);
        Assert.Equal(0, empty.Bases);
        Assert.True(double.IsNaN(empty.BitsPerBase));
        var ns = DnaScoring.Score(lm, Encoding.ASCII.GetBytes(new string('N', 50)), 16);
        Assert.Equal(0, ns.Bases);
        Assert.Equal(50, ns.Skipped);
        Assert.Equal(0.0, ns.Nats);
    }
}
