// The order-k Markov chain baseline of issue 5: bits per base of held-out DNA under
//   p(x_i | x_{i-k} .. x_{i-1}) = (n(context, x_i) + alpha) / (n(context) + 4 alpha)      (add-alpha smoothing)
// with counts n from the training sequence. The alphabet is A C G T (lower case counts as upper case).
//
// N handling: any byte other than A C G T (N, IUPAC codes) breaks the chain. A position is counted (Fit) or scored
// (Score) only if it is A/C/G/T and its k preceding bases all are (so a context never contains N, and N targets are
// never scored). Score can demand more preceding valid bases (minContext): the table below scores every order on
// exactly the positions with maxOrder valid predecessors, so the orders are compared on the same bases.
//
// Counting is one pass with a rolling index h = the last k+1 bases in base 4 (oldest first, 2 bits each), masked to
// 2(k+1) bits; counts live in a long[4^(k+1)] indexed by h = 4 * context + base. No allocation per base.
namespace Ssm.Genomics;

/// <summary>Bits and the number of bases they were summed over.</summary>
public readonly record struct MarkovScore(double Bits, long Scored)
{
    public double BitsPerBase => Scored == 0 ? double.NaN : Bits / Scored;
    public static MarkovScore operator +(MarkovScore a, MarkovScore b) => new(a.Bits + b.Bits, a.Scored + b.Scored);
}

/// <summary>An order-k Markov chain over A, C, G, T with add-alpha smoothing.</summary>
public sealed class MarkovChain
{
    /// <summary>0..3 for A C G T (either case), -1 for anything else.</summary>
    internal static readonly sbyte[] Code = MakeCode();

    static sbyte[] MakeCode()
    {
        var c = new sbyte[256];
        Array.Fill(c, (sbyte)-1);
        c['A'] = c['a'] = 0; c['C'] = c['c'] = 1; c['G'] = c['g'] = 2; c['T'] = c['t'] = 3;
        return c;
    }

    public const int MaxSupportedOrder = 15;            // 4^16 counts would not fit an array

    public int Order { get; }
    public double Alpha { get; }
    /// <summary>n(context, base) at index 4 * context + base; context = the k previous bases in base 4, oldest first.</summary>
    public long[] Counts { get; }
    double[]? log2Table;

    public MarkovChain(int order, double alpha = 1.0)
    {
        if (order < 0 || order > MaxSupportedOrder) throw new ArgumentOutOfRangeException(nameof(order), $"order {order} outside 0..{MaxSupportedOrder}");
        if (!(alpha > 0)) throw new ArgumentOutOfRangeException(nameof(alpha), "alpha must be positive");
        Order = order; Alpha = alpha;
        Counts = new long[1L << (2 * (order + 1))];
    }

    /// <summary>Total counted positions.</summary>
    public long Total => Counts.Sum();

    /// <summary>Adds the counts of one sequence (each call is a separate sequence: the context starts empty).</summary>
    public void Fit(ReadOnlySpan<byte> sequence) => FitMany([this], sequence);

    /// <summary>log2 p(base | context) for index 4 * context + base.</summary>
    public double Log2Probability(int index) => Log2Table()[index];

    double[] Log2Table()
    {
        if (log2Table != null) return log2Table;
        var t = new double[Counts.Length];
        for (int c = 0; c < Counts.Length; c += 4)
        {
            double den = Counts[c] + Counts[c + 1] + Counts[c + 2] + Counts[c + 3] + 4 * Alpha;
            for (int b = 0; b < 4; b++) t[c + b] = Math.Log2((Counts[c + b] + Alpha) / den);
        }
        return log2Table = t;
    }

    /// <summary>
    /// -log2 p of every scored base of <paramref name="sequence"/>: bases A/C/G/T with at least max(Order, minContext)
    /// valid predecessors in this sequence.
    /// </summary>
    public MarkovScore Score(ReadOnlySpan<byte> sequence, int minContext = 0)
    {
        var acc = new MarkovScore[1];
        ScoreMany([this], sequence, minContext, acc);
        return acc[0];
    }

    /// <summary>Bits per scored base of <paramref name="sequence"/>.</summary>
    public double BitsPerBase(ReadOnlySpan<byte> sequence) => Score(sequence).BitsPerBase;

    /// <summary>Counts one sequence into several chains at once (any orders), in one pass.</summary>
    public static void FitMany(IReadOnlyList<MarkovChain> chains, ReadOnlySpan<byte> sequence)
    {
        int maxOrder = chains.Max(c => c.Order);
        var counts = chains.Select(c => c.Counts).ToArray();
        var masks = chains.Select(c => (ulong)c.Counts.Length - 1).ToArray();
        var orders = chains.Select(c => c.Order).ToArray();
        foreach (var c in chains) c.log2Table = null;
        ulong h = 0, mask = (1UL << (2 * (maxOrder + 1))) - 1;
        int run = 0;                                      // valid bases ending here, including this one
        var code = Code;
        for (int i = 0; i < sequence.Length; i++)
        {
            int x = code[sequence[i]];
            if (x < 0) { run = 0; continue; }
            h = ((h << 2) | (uint)x) & mask;
            run++;
            for (int j = 0; j < counts.Length; j++)
                if (run > orders[j]) counts[j][h & masks[j]]++;
        }
    }

    /// <summary>
    /// -log2 p of every A/C/G/T base of each window under order-k chains, the first bases of a window (and those after
    /// an N) backing off to the highest order their context allows: the same targets an LM scores from [BOS], so the
    /// bits per base compare one to one with the LM's (ssm-dna eval). Returns one score per chain (chains[j].Order == j).
    /// </summary>
    public static MarkovScore[] ScoreWithBackoff(IReadOnlyList<MarkovChain> chains, IEnumerable<byte[]> windows)
    {
        for (int j = 0; j < chains.Count; j++)
            if (chains[j].Order != j) throw new ArgumentException($"chain {j} has order {chains[j].Order}; orders must be 0, 1, 2, ...");
        var tables = chains.Select(c => c.Log2Table()).ToArray();
        var bits = new double[chains.Count];
        var scored = new long[chains.Count];
        var code = Code;
        foreach (var w in windows)
        {
            ulong h = 0;
            int run = 0;   // valid (A/C/G/T) bases ending here, this one included
            foreach (byte b in w)
            {
                int x = code[b];
                if (x < 0) { run = 0; continue; }
                h = (h << 2) | (uint)x;
                run++;
                for (int k = 0; k < chains.Count; k++)
                {
                    int e = Math.Min(k, run - 1);                                      // the order this position can use
                    bits[k] -= tables[e][h & ((1UL << (2 * (e + 1))) - 1)];            // index 4 * context + base
                    scored[k]++;
                }
            }
        }
        return chains.Select((_, k) => new MarkovScore(bits[k], scored[k])).ToArray();
    }

    /// <summary>Scores one sequence under several chains at once, adding into <paramref name="scores"/>.</summary>
    public static void ScoreMany(IReadOnlyList<MarkovChain> chains, ReadOnlySpan<byte> sequence, int minContext, MarkovScore[] scores)
    {
        if (scores.Length != chains.Count) throw new ArgumentException($"{scores.Length} score slots for {chains.Count} chains", nameof(scores));
        int maxOrder = chains.Max(c => c.Order);
        var tables = chains.Select(c => c.Log2Table()).ToArray();
        var masks = chains.Select(c => (ulong)c.Counts.Length - 1).ToArray();
        var need = chains.Select(c => Math.Max(c.Order, minContext) + 1).ToArray();
        var bits = new double[chains.Count];
        var scored = new long[chains.Count];
        ulong h = 0, mask = (1UL << (2 * (maxOrder + 1))) - 1;
        int run = 0;
        var code = Code;
        for (int i = 0; i < sequence.Length; i++)
        {
            int x = code[sequence[i]];
            if (x < 0) { run = 0; continue; }
            h = ((h << 2) | (uint)x) & mask;
            if (run < int.MaxValue) run++;
            for (int j = 0; j < tables.Length; j++)
                if (run >= need[j]) { bits[j] -= tables[j][h & masks[j]]; scored[j]++; }
        }
        for (int j = 0; j < scores.Length; j++) scores[j] += new MarkovScore(bits[j], scored[j]);
    }
}

/// <summary>One row of the baseline table: an order, its bits per base on the training and validation data.</summary>
public sealed record MarkovRow(int Order, double Alpha, double TrainBitsPerBase, double ValidBitsPerBase, long TrainScored, long ValidScored);

/// <summary>Fits orders 0..maxOrder on training sequences and measures bits per base on validation sequences.</summary>
public static class MarkovBaseline
{
    /// <summary>
    /// The table for orders 0..<paramref name="maxOrder"/>: every order is fitted on all training files (one counting
    /// pass for all orders) and scored on the positions with maxOrder valid predecessors, so rows share positions.
    /// </summary>
    public static IReadOnlyList<MarkovRow> Measure(IReadOnlyList<SequenceFile> train, IReadOnlyList<SequenceFile> valid,
        int maxOrder = 8, double alpha = 1.0)
    {
        var chains = Enumerable.Range(0, maxOrder + 1).Select(k => new MarkovChain(k, alpha)).ToArray();
        foreach (var f in train) MarkovChain.FitMany(chains, Whole(f));
        var trainScores = new MarkovScore[chains.Length];
        var validScores = new MarkovScore[chains.Length];
        foreach (var f in train) MarkovChain.ScoreMany(chains, Whole(f), maxOrder, trainScores);
        foreach (var f in valid) MarkovChain.ScoreMany(chains, Whole(f), maxOrder, validScores);
        return chains.Select((c, k) => new MarkovRow(k, alpha, trainScores[k].BitsPerBase, validScores[k].BitsPerBase,
            trainScores[k].Scored, validScores[k].Scored)).ToArray();
    }

    /// <summary>The same table on in-memory sequences (tests, small data).</summary>
    public static IReadOnlyList<MarkovRow> Measure(IReadOnlyList<byte[]> train, IReadOnlyList<byte[]> valid, int maxOrder = 8, double alpha = 1.0)
    {
        var chains = Enumerable.Range(0, maxOrder + 1).Select(k => new MarkovChain(k, alpha)).ToArray();
        foreach (var s in train) MarkovChain.FitMany(chains, s);
        var tr = new MarkovScore[chains.Length];
        var va = new MarkovScore[chains.Length];
        foreach (var s in train) MarkovChain.ScoreMany(chains, s, maxOrder, tr);
        foreach (var s in valid) MarkovChain.ScoreMany(chains, s, maxOrder, va);
        return chains.Select((c, k) => new MarkovRow(k, alpha, tr[k].BitsPerBase, va[k].BitsPerBase, tr[k].Scored, va[k].Scored)).ToArray();
    }

    static ReadOnlySpan<byte> Whole(SequenceFile f)
    {
        if (f.Length > int.MaxValue) throw new ArgumentException($"{f.Path}: {f.Length} bases is more than one span can hold");
        return f.Slice(0, (int)f.Length);
    }
}
