// Log-likelihood of DNA under the causal DnaLM, for sequences of any length (a human chromosome is 50-250 Mbp).
//
// Streaming (Score): the sequence arrives as chunks of bases in any sizes; they are regrouped into pieces of
// chunkLength bases and each piece runs through DnaLM.ForwardChunk, which continues from the carried LMState (conv
// inputs + SSM state of every layer, 160 KB for the default model). Only one piece's activations exist at a time, so memory does not grow
// with the sequence: 1 Mbp and 100 Mbp cost the same. The result equals ScoreFull (one forward over the whole
// sequence) up to floating-point rounding; the tests check this with a float64 network for several chunk lengths,
// 1 included.
//
// Conventions (DnaLM's file header): the first base is predicted from [BOS] at a zero state; only A/C/G/T targets
// count (N and any other byte are skipped, still read as input); probabilities are over the four bases.
//
// Both strands: DNA is double-stranded and a sequence is as likely read from either strand, so a strand-symmetric
// score averages the forward strand and its reverse complement. The reverse complement of a streamed record starts at
// the record's END, so the caller hands a random-access reader read(start, length) -> bytes plus the record length;
// the RC is then produced chunk by chunk from the end backwards (each chunk reverse-complemented), again with flat
// memory. For a record already in memory, pass the array (ScoreStrands(model, bases)).
using TorchSharp;
using Ssm.Backbone.Models;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Genomics;

/// <summary>The score of one sequence: negative log-likelihood over the scored bases.</summary>
/// <param name="Nats">-ln p(scored bases), summed.</param>
/// <param name="Bases">Targets scored (A/C/G/T).</param>
/// <param name="Skipped">Positions not scored (N and other bytes).</param>
public sealed record DnaScore(double Nats, long Bases, long Skipped)
{
    /// <summary>-log2 p(scored bases).</summary>
    public double Bits => Nats / Math.Log(2);

    /// <summary>Bits per scored base (NaN when none was scored).</summary>
    public double BitsPerBase => Bases == 0 ? double.NaN : Bits / Bases;

    /// <summary>ln p of the sequence (= -Nats).</summary>
    public double LogLikelihood => -Nats;

    public static DnaScore Zero { get; } = new(0, 0, 0);

    public static DnaScore operator +(DnaScore a, DnaScore b) => new(a.Nats + b.Nats, a.Bases + b.Bases, a.Skipped + b.Skipped);
}

/// <summary>Scores of both strands; <see cref="Both"/> is their average (same bases on both strands).</summary>
public sealed record DnaStrandScores(DnaScore Forward, DnaScore Reverse)
{
    public DnaScore Both => new((Forward.Nats + Reverse.Nats) / 2, Forward.Bases, Forward.Skipped);
}

/// <summary>Reads <paramref name="length"/> bases of a record starting at base <paramref name="start"/> (0-based).</summary>
public delegate byte[] BaseReader(long start, int length);

public static class DnaScoring
{
    /// <summary>
    /// The default piece length of streaming scoring. Measured by bench/DnaBench on 2 CPU cores (small model, 1 Mbp):
    /// 1,024 scores about 2x faster than 8,192 (8.2 k vs 4.0 k bases/s) with 6x less memory (77 vs 449 MB), because
    /// the projections' matrix products slow down per base on long pieces; the result does not depend on it.
    /// </summary>
    public const int DefaultChunkLength = 1024;

    /// <summary>
    /// Streaming score of a sequence given as consecutive chunks of ASCII bases (any sizes, the order of the
    /// sequence); memory is bounded by <paramref name="chunkLength"/>. The progress bar, when given, advances by bases.
    /// </summary>
    public static DnaScore Score(DnaLM model, IEnumerable<ReadOnlyMemory<byte>> chunks, int chunkLength = DefaultChunkLength,
        ProgressBar? progress = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(chunks);
        if (chunkLength < 1) throw new ArgumentOutOfRangeException(nameof(chunkLength), chunkLength, "the chunk length must be at least 1");
        model.Model.eval();
        using var noGrad = torch.no_grad();
        using var state = model.AllocateState(1);
        var device = model.Device;
        var piece = new long[chunkLength + 1];                    // [previous base or BOS, piece bases...]
        piece[0] = DnaTokenizer.Bos;
        int fill = 0;
        double nats = 0;
        long bases = 0, total = 0;

        void Flush()
        {
            if (fill == 0) return;
            using var scope = torch.NewDisposeScope();
            var all = torch.tensor(piece, new long[] { 1, chunkLength + 1 }, ScalarType.Int64).narrow(1, 0, fill + 1).to(device);
            var logits = model.ForwardChunk(all.narrow(1, 0, fill), state);                      // (1 fill V)
            var (n, scored) = DnaLM.TargetNats(logits, all.narrow(1, 1, fill));
            nats += n.to_type(ScalarType.Float64).sum().item<double>();
            bases += scored.sum().item<long>();
            total += fill;
            progress?.Advance(fill);
            piece[0] = piece[fill];
            fill = 0;
        }

        foreach (var chunk in chunks)
        {
            var span = chunk.Span;
            while (span.Length > 0)
            {
                int take = Math.Min(span.Length, chunkLength - fill);
                DnaTokenizer.Encode(span[..take], piece.AsSpan(1 + fill, take));
                fill += take;
                span = span[take..];
                if (fill == chunkLength) Flush();
            }
        }
        Flush();
        return new DnaScore(nats, bases, total - bases);
    }

    /// <summary>Streaming score of a sequence held in memory (see the chunked overload).</summary>
    public static DnaScore Score(DnaLM model, ReadOnlyMemory<byte> bases, int chunkLength = DefaultChunkLength, ProgressBar? progress = null) =>
        Score(model, [bases], chunkLength, progress);

    /// <summary>Chunks of a record read forward with <paramref name="read"/>, each at most <paramref name="chunkLength"/> bases.</summary>
    public static IEnumerable<ReadOnlyMemory<byte>> ForwardChunks(long length, BaseReader read, int chunkLength = DefaultChunkLength)
    {
        ArgumentNullException.ThrowIfNull(read);
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "the record length must be >= 0");
        if (chunkLength < 1) throw new ArgumentOutOfRangeException(nameof(chunkLength), chunkLength, "the chunk length must be at least 1");
        for (long start = 0; start < length; start += chunkLength)
            yield return Checked(read(start, (int)Math.Min(chunkLength, length - start)), start, (int)Math.Min(chunkLength, length - start));
    }

    /// <summary>
    /// The reverse complement of a record as chunks, read from the end backwards: chunk k is the reverse complement of
    /// bases [length - (k + 1) c, length - k c) (the last one shorter), so their concatenation is rc(record).
    /// </summary>
    public static IEnumerable<ReadOnlyMemory<byte>> ReverseComplementChunks(long length, BaseReader read, int chunkLength = DefaultChunkLength)
    {
        ArgumentNullException.ThrowIfNull(read);
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "the record length must be >= 0");
        if (chunkLength < 1) throw new ArgumentOutOfRangeException(nameof(chunkLength), chunkLength, "the chunk length must be at least 1");
        for (long end = length; end > 0; end -= chunkLength)
        {
            long start = Math.Max(0, end - chunkLength);
            var bytes = Checked(read(start, (int)(end - start)), start, (int)(end - start));
            yield return DnaTokenizer.ReverseComplement(bytes);
        }
    }

    static byte[] Checked(byte[] bytes, long start, int length) => bytes is not null && bytes.Length == length ? bytes
        : throw new InvalidDataException($"the base reader returned {bytes?.Length ?? 0} bases for [{start}, {start + length}); expected {length}");

    /// <summary>Streaming score of the reverse complement of a record given by a random-access reader.</summary>
    public static DnaScore ScoreReverseComplement(DnaLM model, long length, BaseReader read, int chunkLength = DefaultChunkLength,
        ProgressBar? progress = null) =>
        Score(model, ReverseComplementChunks(length, read, chunkLength), chunkLength, progress);

    /// <summary>Both strands of a record given by a random-access reader (two streaming passes, flat memory).</summary>
    public static DnaStrandScores ScoreStrands(DnaLM model, long length, BaseReader read, int chunkLength = DefaultChunkLength,
        ProgressBar? progress = null) =>
        new(Score(model, ForwardChunks(length, read, chunkLength), chunkLength, progress),
            ScoreReverseComplement(model, length, read, chunkLength, progress));

    /// <summary>Both strands of a record in memory.</summary>
    public static DnaStrandScores ScoreStrands(DnaLM model, ReadOnlyMemory<byte> bases, int chunkLength = DefaultChunkLength,
        ProgressBar? progress = null) =>
        ScoreStrands(model, bases.Length, (s, n) => bases.Slice((int)s, n).ToArray(), chunkLength, progress);

    /// <summary>
    /// The same score from one full forward over the whole sequence (activations grow with its length): the reference
    /// the streaming path is tested against, and the baseline of the scoring benchmark.
    /// </summary>
    public static DnaScore ScoreFull(DnaLM model, ReadOnlySpan<byte> bases)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (bases.Length == 0) return DnaScore.Zero;
        model.Model.eval();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var targets = DnaTokenizer.EncodeTensor(bases, model.Device).unsqueeze(0);          // (1 L)
        var logits = model.Logits(DnaLM.ShiftRight(targets));                                // (1 L V)
        var (n, scored) = DnaLM.TargetNats(logits, targets);
        long count = scored.sum().item<long>();
        return new DnaScore(n.to_type(ScalarType.Float64).sum().item<double>(), count, bases.Length - count);
    }

    /// <summary>ln p(window): the log-likelihood in nats of a short window of bases (variant effect: ln p(alt) - ln p(ref)).</summary>
    public static double LogLikelihood(DnaLM model, ReadOnlySpan<byte> window) => ScoreFull(model, window).LogLikelihood;

    /// <summary>
    /// ln p of many short windows (nats), run in batches of windows of equal length (<paramref name="batch"/> at a
    /// time); the result is in the order of <paramref name="windows"/>.
    /// </summary>
    public static double[] LogLikelihoods(DnaLM model, IReadOnlyList<ReadOnlyMemory<byte>> windows, int batch = 64)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(windows);
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "the batch must be at least 1");
        var result = new double[windows.Count];
        model.Model.eval();
        using var noGrad = torch.no_grad();
        foreach (var group in Enumerable.Range(0, windows.Count).GroupBy(i => windows[i].Length))
        {
            int len = group.Key;
            if (len == 0) continue;
            foreach (var rows in group.Chunk(batch))
            {
                using var scope = torch.NewDisposeScope();
                var ids = new long[rows.Length * len];
                for (int r = 0; r < rows.Length; r++) DnaTokenizer.Encode(windows[rows[r]].Span, ids.AsSpan(r * len, len));
                var targets = torch.tensor(ids, new long[] { rows.Length, len }, ScalarType.Int64).to(model.Device);
                var logits = model.Logits(DnaLM.ShiftRight(targets));
                var (n, _) = DnaLM.TargetNats(logits, targets);
                var perRow = n.to_type(ScalarType.Float64).sum(1).cpu();
                var values = perRow.data<double>().ToArray();
                for (int r = 0; r < rows.Length; r++) result[rows[r]] = -values[r];
            }
        }
        return result;
    }
}
