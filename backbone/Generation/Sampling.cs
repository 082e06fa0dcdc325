// Choosing the next token from logits, as transformers' generate does (generation/logits_process.py):
//   1. repetition penalty (CTRL, Keskar et al. 2019): for every token already in the sequence (prompt included),
//      a positive logit is divided by the penalty and a negative one multiplied by it (RepetitionPenaltyLogitsProcessor)
//   2. greedy: argmax of the penalised logits; otherwise the warpers, in transformers' order:
//      temperature (logits / T), top-k (keep the k largest), top-p (nucleus, Holtzman et al. 2020: keep the smallest
//      set of most likely tokens whose probability mass is >= p), min-p (keep tokens whose probability is >= min_p
//      times the most likely token's), each keeping at least one token, removed tokens set to -inf
//   3. sample from softmax(logits) by inverting the cumulative distribution at one uniform number per sequence.
// The uniform numbers come from a seeded CPU torch.Generator, one per sequence, so a seed reproduces the same text on
// any device and a sequence's draws do not depend on which other sequences share its batch.
// Shapes: logits (b, V) float (any device); ids and masks (b, V) or (b).
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Generation;

/// <summary>The logits processors and warpers of transformers' generate, on (b, V) logits of any device and float dtype.</summary>
public static class LogitsProcessors
{
    /// <summary>CTRL repetition penalty: where <paramref name="seen"/> (b, V) bool is true, logits &gt; 0 are divided by
    /// <paramref name="penalty"/> and logits &lt; 0 multiplied by it. 1 leaves the logits unchanged.</summary>
    public static Tensor RepetitionPenalty(Tensor logits, Tensor seen, double penalty)
    {
        if (penalty <= 0) throw new ArgumentException($"repetition penalty must be > 0, got {penalty}");
        using var scope = torch.NewDisposeScope();
        var penalised = torch.where(logits < 0, logits * penalty, logits / penalty);
        return torch.where(seen.to(logits.device).to_type(ScalarType.Bool), penalised, logits).MoveToOuterDisposeScope();
    }

    /// <summary>logits / temperature.</summary>
    public static Tensor Temperature(Tensor logits, double temperature)
    {
        if (!(temperature > 0)) throw new ArgumentException($"temperature must be > 0, got {temperature}");
        return logits / temperature;
    }

    /// <summary>Keeps the k largest logits of each row (and any tied with the k-th), the rest -inf. k &lt;= 0 or &gt;= V keeps all.</summary>
    public static Tensor TopK(Tensor logits, int k)
    {
        long V = logits.shape[^1];
        if (k <= 0 || k >= V) return logits.alias();
        using var scope = torch.NewDisposeScope();
        var kth = logits.topk(k, dim: -1).values[.., (k - 1)..k];                 // (b 1): the k-th largest
        return logits.masked_fill(logits < kth, double.NegativeInfinity).MoveToOuterDisposeScope();
    }

    /// <summary>Nucleus filter: keeps, per row, the smallest set of most likely tokens whose softmax mass is &gt;= p
    /// (at least one token); the rest -inf. p &gt;= 1 keeps all.</summary>
    public static Tensor TopP(Tensor logits, double p)
    {
        if (!(p > 0 && p <= 1)) throw new ArgumentException($"top-p must be in (0, 1], got {p}");
        if (p >= 1) return logits.alias();
        using var scope = torch.NewDisposeScope();
        long V = logits.shape[^1];
        var lse = logits.to_type(ScalarType.Float32).logsumexp(-1, keepdim: true).to_type(ScalarType.Float64);   // (b 1)
        // transformers sorts the whole vocabulary; the nucleus is a prefix of that order, so the top m tokens suffice
        // once they hold mass >= p in every row. m starts small and grows (a full sort only for very flat rows).
        Tensor values, probs, cum;
        for (long m = Math.Min(V, 64); ; m = Math.Min(V, m * 8))
        {
            values = logits.topk((int)m, dim: -1).values.to_type(ScalarType.Float64);  // (b m) descending
            probs = (values - lse).exp();
            cum = probs.cumsum(-1);
            if (m == V || cum[.., -1].ge(p).all().item<bool>()) break;
        }
        // A token is in the nucleus when the mass of the tokens before it is still < p (the first always is);
        // this is transformers' "cumulative ascending mass > 1 - p".
        var inNucleus = (cum - probs) < p;
        var threshold = values.masked_fill(inNucleus.logical_not(), double.PositiveInfinity).amin(new long[] { -1 }, keepdim: true);
        return logits.masked_fill(logits.to_type(ScalarType.Float64) < threshold, double.NegativeInfinity).MoveToOuterDisposeScope();
    }

    /// <summary>Min-p filter (Nguyen et al. 2024): keeps tokens whose probability is &gt;= minP * (largest probability),
    /// i.e. whose logit is &gt;= the largest logit + ln(minP) (the softmax normaliser cancels). 0 keeps all.</summary>
    public static Tensor MinP(Tensor logits, double minP)
    {
        if (!(minP >= 0 && minP <= 1)) throw new ArgumentException($"min-p must be in [0, 1], got {minP}");
        if (minP == 0) return logits.alias();
        using var scope = torch.NewDisposeScope();
        var x = logits.to_type(ScalarType.Float64);
        var floor = x.amax(new long[] { -1 }, keepdim: true) + Math.Log(minP);
        // The most likely token always passes (minP <= 1), so at least one token stays.
        return logits.masked_fill(x < floor, double.NegativeInfinity).MoveToOuterDisposeScope();
    }
}

/// <summary>Sampling settings (transformers' GenerationConfig names in brackets).</summary>
/// <param name="Temperature">[temperature] divides the logits; ignored when greedy.</param>
/// <param name="TopK">[top_k] keep the k most likely tokens; 0 = off.</param>
/// <param name="TopP">[top_p] nucleus mass; 1 = off.</param>
/// <param name="MinP">[min_p] relative probability floor; 0 = off.</param>
/// <param name="RepetitionPenalty">[repetition_penalty] CTRL penalty on tokens already in the sequence; 1 = off.</param>
/// <param name="Greedy">[do_sample = false] take the argmax of the penalised logits.</param>
public sealed record SamplingOptions(
    double Temperature = 1.0,
    int TopK = 0,
    double TopP = 1.0,
    double MinP = 0.0,
    double RepetitionPenalty = 1.0,
    bool Greedy = false)
{
    /// <summary>Throws an ArgumentException naming the first invalid option.</summary>
    public void Validate()
    {
        if (!Greedy && !(Temperature > 0)) throw new ArgumentException($"temperature must be > 0, got {Temperature}");
        if (TopK < 0) throw new ArgumentException($"top-k must be >= 0 (0 = off), got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1], got {TopP}");
        if (!(MinP >= 0 && MinP <= 1)) throw new ArgumentException($"min-p must be in [0, 1], got {MinP}");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty)) throw new ArgumentException($"repetition penalty must be > 0, got {RepetitionPenalty}");
    }
}

/// <summary>
/// Picks next tokens for a batch of sequences. Each sequence has its own seeded generator (seed + its index), so a
/// seed reproduces the same tokens, and sequence i of a batch draws what it would draw alone with seed + i.
/// </summary>
public sealed class Sampler : IDisposable
{
    readonly SamplingOptions options;
    readonly torch.Generator[] generators;

    /// <param name="options">Processors and warpers.</param>
    /// <param name="batch">Number of sequences (one generator each).</param>
    /// <param name="seed">Seed of sequence 0; null draws one from the process's random source.</param>
    public Sampler(SamplingOptions options, int batch, ulong? seed)
    {
        options.Validate();
        this.options = options;
        ulong s0 = seed ?? (ulong)Random.Shared.NextInt64(long.MaxValue);
        generators = Enumerable.Range(0, batch).Select(i => new torch.Generator(unchecked(s0 + (ulong)i), torch.CPU)).ToArray();
    }

    public SamplingOptions Options => options;

    /// <summary>Applies the processors and warpers (not the sampling) to logits (b, V); <paramref name="seen"/> (b, V)
    /// bool marks the tokens already in each sequence (needed only with a repetition penalty).</summary>
    public Tensor Process(Tensor logits, Tensor? seen)
    {
        using var scope = torch.NewDisposeScope();
        var x = logits.to_type(ScalarType.Float32);
        if (options.RepetitionPenalty != 1.0)
        {
            if (seen is null) throw new ArgumentException("a repetition penalty needs the tokens seen so far");
            x = LogitsProcessors.RepetitionPenalty(x, seen, options.RepetitionPenalty);
        }
        if (!options.Greedy)
        {
            if (options.Temperature != 1.0) x = LogitsProcessors.Temperature(x, options.Temperature);
            x = LogitsProcessors.TopK(x, options.TopK);
            x = LogitsProcessors.TopP(x, options.TopP);
            x = LogitsProcessors.MinP(x, options.MinP);
        }
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The next token of each sequence: logits (b, V) -> ids (b) int64 on the logits' device.
    /// <paramref name="rows"/> says which generator each row uses (default: row i uses generator i), so a batch whose
    /// finished sequences were dropped keeps every sequence on its own random stream.
    /// </summary>
    public Tensor Next(Tensor logits, Tensor? seen = null, IReadOnlyList<int>? rows = null)
    {
        if (logits.dim() != 2) throw new ArgumentException($"logits must be (b, V), got ({string.Join(", ", logits.shape)})");
        int b = checked((int)logits.shape[0]);
        rows ??= Enumerable.Range(0, b).ToArray();
        if (rows.Count != b || rows.Any(i => i < 0 || i >= generators.Length))
            throw new ArgumentException($"rows must name {b} of the sampler's {generators.Length} sequences");
        using var scope = torch.NewDisposeScope();
        var x = Process(logits, seen);
        if (options.Greedy) return x.argmax(-1).MoveToOuterDisposeScope();
        // Inverse-CDF sampling in float64: the first token whose cumulative probability exceeds u * total.
        var cum = x.to_type(ScalarType.Float64).softmax(-1).cumsum(-1);             // (b V)
        var u = torch.cat(rows.Select(i => torch.rand(1, ScalarType.Float64, generator: generators[i])).ToArray())
            .to(x.device).unsqueeze(1);                                             // (b 1)
        var target = u * cum.narrow(-1, cum.shape[1] - 1, 1);
        var ids = torch.searchsorted(cum, target, right: true).squeeze(1).clamp_max(x.shape[1] - 1);
        return ids.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        foreach (var g in generators) g.Dispose();
    }
}
