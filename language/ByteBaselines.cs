// Reference points for MambaByte's bits per byte (issue 7, section 3: "a simple baseline measured on the same split"):
//   - general-purpose compressors on the test file alone (gzip at .NET's Optimal level, Brotli at quality 11 with the
//     largest window): what a compressor that sees only the test text achieves, an upper bound a trained model must beat;
//   - the unigram byte entropy (bits per byte of a model that ignores context);
//   - an order-k byte n-gram model trained on train.bin with interpolated modified Kneser-Ney smoothing (Chen & Goodman
//     1998, "An Empirical Study of Smoothing Techniques for Language Modeling", section 3.5 / 4.1.6), k chosen on valid.
//
// Every bits-per-byte number from a model (unigram cross-entropy, n-gram) counts the same targets as MambaByte.Score:
// the bytes 1 .. n-1 of the split file, 0x00 document ends included. The compressors' numbers are 8 * compressed / n.
//
// Glossary: k context length (order; the n-gram has k + 1 bytes), h a context, w the next byte, c(h w) a count,
// N1+(. h w) the number of distinct bytes seen before h w (Kneser-Ney's continuation count), D1, D2, D3+ discounts.
using System.Diagnostics;
using System.IO.Compression;

namespace Ssm.Language;

public static class ByteBaselines
{
    /// <summary>8 * (gzip-compressed size) / size.</summary>
    public static double GzipBitsPerByte(ReadOnlySpan<byte> data, CompressionLevel level = CompressionLevel.Optimal)
    {
        if (data.IsEmpty) throw new ArgumentException("no data", nameof(data));
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, level, leaveOpen: true)) gz.Write(data);
        return 8.0 * ms.Length / data.Length;
    }

    /// <summary>8 * (Brotli-compressed size) / size, by default at the largest quality (11) and window (2^24 bytes).</summary>
    public static double BrotliBitsPerByte(ReadOnlySpan<byte> data, int quality = 11, int window = 24)
    {
        if (data.IsEmpty) throw new ArgumentException("no data", nameof(data));
        var dst = new byte[BrotliEncoder.GetMaxCompressedLength(data.Length)];
        if (!BrotliEncoder.TryCompress(data, dst, out int written, quality, window))
            throw new InvalidOperationException("Brotli compression failed");
        return 8.0 * written / data.Length;
    }

    /// <summary>Byte frequencies.</summary>
    public static long[] Histogram(ReadOnlySpan<byte> data)
    {
        var h = new long[256];
        foreach (byte b in data) h[b]++;
        return h;
    }

    /// <summary>The empirical unigram entropy of <paramref name="data"/> in bits per byte (fit to the data itself).</summary>
    public static double UnigramEntropy(ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty) throw new ArgumentException("no data", nameof(data));
        var h = Histogram(data);
        double e = 0;
        foreach (long c in h)
            if (c > 0) { double p = (double)c / data.Length; e -= p * Math.Log2(p); }
        return e;
    }

    /// <summary>Bits per byte of <paramref name="test"/>[1..] under the add-one smoothed byte frequencies of <paramref name="train"/>.</summary>
    public static double UnigramCrossEntropy(ReadOnlySpan<byte> train, ReadOnlySpan<byte> test)
    {
        if (test.Length < 2) throw new ArgumentException("need at least two test bytes", nameof(test));
        var h = Histogram(train);
        double total = train.Length + 256, bits = 0;
        var th = Histogram(test[1..]);
        for (int b = 0; b < 256; b++)
            if (th[b] > 0) bits -= th[b] * Math.Log2((h[b] + 1) / total);
        return bits / (test.Length - 1);
    }

    /// <summary>Every baseline on one corpus (the model card's reference numbers).</summary>
    public static BaselineReport Measure(ByteCorpus corpus, int maxOrder = 7, Action<string>? log = null)
    {
        var sw = Stopwatch.StartNew();
        var times = new Dictionary<string, double>();
        void Lap(string what) { times[what] = sw.Elapsed.TotalSeconds; log?.Invoke($"{what}: {sw.Elapsed.TotalSeconds:0.0} s"); sw.Restart(); }

        double uniTest = UnigramEntropy(corpus.Test), uniCross = UnigramCrossEntropy(corpus.Train, corpus.Test);
        Lap("unigram");
        double gzip = GzipBitsPerByte(corpus.Test), gzipSmallest = GzipBitsPerByte(corpus.Test, CompressionLevel.SmallestSize);
        Lap("gzip");
        double brotli = BrotliBitsPerByte(corpus.Test);
        Lap("brotli");
        var model = ByteNGramModel.Train(corpus.Train, maxOrder);
        Lap($"n-gram training (orders 0..{maxOrder}, {corpus.Train.Length:N0} bytes)");
        var valid = model.BitsPerByte(corpus.Valid);
        Lap("n-gram validation");
        int best = Array.IndexOf(valid, valid.Min());
        var test = model.BitsPerByte(corpus.Test);
        Lap("n-gram test");
        return new BaselineReport(corpus.Train.Length, corpus.Valid.Length, corpus.Test.Length, uniTest, uniCross,
            gzip, gzipSmallest, brotli, valid, test, best, test[best], times);
    }
}

/// <param name="NGramValid">bits per byte on valid for each order k = 0 .. max.</param>
/// <param name="NGramTest">bits per byte on test for each order k (only <see cref="BestOrder"/>'s is the reported one).</param>
public sealed record BaselineReport(
    long TrainBytes, long ValidBytes, long TestBytes,
    double UnigramEntropyTest, double UnigramCrossEntropyTest,
    double GzipTest, double GzipSmallestTest, double BrotliTest,
    double[] NGramValid, double[] NGramTest, int BestOrder, double NGramBestTest,
    IReadOnlyDictionary<string, double> Seconds);

/// <summary>
/// A byte n-gram model with interpolated modified Kneser-Ney smoothing, for every context length k = 0 .. MaxOrder
/// at once (at most 7: an n-gram is packed big-endian into one ulong, oldest byte highest).
/// <para>p_k(w | h) = (c(h w) - D(c(h w)))+ / c(h .) + gamma(h) p_{k-1}(w | h'), gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3 N3+(h .)) / c(h .),
/// where h' drops h's oldest byte, p_{-1} = 1/256, the highest level uses raw counts and every lower level continuation
/// counts N1+(. h w); a context never seen at a level is skipped (that level's distribution is the lower one).</para>
/// </summary>
public sealed class ByteNGramModel
{
    /// <summary>The n-grams of one context length, sorted by key (so each context's continuations are contiguous).</summary>
    sealed class Level
    {
        public ulong[] Keys = [];       // (h << 8) | w
        public int[] Raw = [];          // c(h w)
        public int[] Cont = [];         // N1+(. h w)   (0 for the n-gram at the very start of the data)
        public ulong[] Contexts = [];   // h, sorted
        public int[] Start = [];        // Keys[Start[j] .. Start[j + 1]) have context Contexts[j]; length Contexts + 1
        public int[] RawTotal = [], ContTotal = [];
        // D1 N1 + D2 N2 + D3 N3+ for each context, for raw and continuation counts
        public double[] RawGammaNum = [], ContGammaNum = [];
        public double[] RawD = new double[4], ContD = new double[4];   // index by min(count, 3); [0] = 0
    }

    readonly Level[] _levels;

    public int MaxOrder { get; }

    ByteNGramModel(Level[] levels) { _levels = levels; MaxOrder = levels.Length - 1; }

    /// <summary>Counts every n-gram of length 1 .. maxOrder + 1 in <paramref name="data"/>.</summary>
    public static ByteNGramModel Train(byte[] data, int maxOrder = 7)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (maxOrder < 0 || maxOrder > 7) throw new ArgumentOutOfRangeException(nameof(maxOrder), "the order must be in 0 .. 7");
        if (data.Length <= maxOrder) throw new ArgumentException($"{data.Length} bytes are too few for order {maxOrder}", nameof(data));
        var levels = new Level[maxOrder + 1];
        var opts = new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount };
        Parallel.For(0, maxOrder + 1, opts, k => levels[k] = CountLevel(data, k));
        // Continuation counts of level k come from the distinct n-grams of level k + 1 (drop their oldest byte). The
        // highest level is only ever used with raw counts.
        Parallel.For(0, maxOrder, opts, k => SetContinuation(levels[k], levels[k + 1].Keys, k));
        Parallel.For(0, maxOrder + 1, opts, k => Finish(levels[k]));
        return new ByteNGramModel(levels);
    }

    static ulong Mask(int bytes) => bytes >= 8 ? ulong.MaxValue : (1UL << (8 * bytes)) - 1;

    static Level CountLevel(byte[] data, int k)
    {
        int n = data.Length - k;
        var keys = new ulong[n];
        ulong mask = Mask(k + 1), key = 0;
        for (int i = 0; i < k; i++) key = (key << 8) | data[i];
        for (int i = k; i < data.Length; i++)
        {
            key = ((key << 8) | data[i]) & mask;
            keys[i - k] = key;
        }
        Array.Sort(keys);
        int u = 0;
        var raw = new int[n];
        for (int i = 0; i < n; i++)
        {
            if (i > 0 && keys[i] == keys[u - 1]) { raw[u - 1]++; continue; }
            keys[u] = keys[i]; raw[u] = 1; u++;
        }
        Array.Resize(ref keys, u);
        Array.Resize(ref raw, u);
        return new Level { Keys = keys, Raw = raw, Cont = new int[u] };
    }

    static void SetContinuation(Level level, ulong[] higher, int k)
    {
        ulong mask = Mask(k + 1);
        var suffix = new ulong[higher.Length];
        for (int i = 0; i < higher.Length; i++) suffix[i] = higher[i] & mask;
        Array.Sort(suffix);
        int j = 0;
        for (int i = 0; i < suffix.Length;)
        {
            int e = i;
            while (e < suffix.Length && suffix[e] == suffix[i]) e++;
            while (level.Keys[j] < suffix[i]) j++;          // every suffix is itself an n-gram of this level
            if (level.Keys[j] != suffix[i]) throw new InvalidOperationException("n-gram suffix missing from its level");
            level.Cont[j] = e - i;
            i = e;
        }
    }

    static void Finish(Level l)
    {
        l.RawD = Discounts(l.Raw);
        l.ContD = Discounts(l.Cont);
        var ctx = new List<ulong>();
        var start = new List<int>();
        for (int i = 0; i < l.Keys.Length; i++)
            if (i == 0 || (l.Keys[i] >> 8) != (l.Keys[i - 1] >> 8)) { ctx.Add(l.Keys[i] >> 8); start.Add(i); }
        start.Add(l.Keys.Length);
        l.Contexts = ctx.ToArray();
        l.Start = start.ToArray();
        int m = l.Contexts.Length;
        l.RawTotal = new int[m]; l.ContTotal = new int[m];
        l.RawGammaNum = new double[m]; l.ContGammaNum = new double[m];
        for (int j = 0; j < m; j++)
            for (int i = l.Start[j]; i < l.Start[j + 1]; i++)
            {
                l.RawTotal[j] += l.Raw[i];
                l.RawGammaNum[j] += l.RawD[Math.Min(l.Raw[i], 3)];
                l.ContTotal[j] += l.Cont[i];
                l.ContGammaNum[j] += l.ContD[Math.Min(l.Cont[i], 3)];
            }
    }

    /// <summary>Chen &amp; Goodman's estimates D_c = c - (c + 1) Y n_{c+1} / n_c, Y = n1 / (n1 + 2 n2), kept in [0, c).</summary>
    static double[] Discounts(int[] counts)
    {
        var n = new long[5];
        foreach (int c in counts) if (c >= 1 && c <= 4) n[c]++;
        var d = new double[4];
        if (n[1] == 0 || n[2] == 0 || n[3] == 0)
        {
            d[1] = 0.5; d[2] = 1.0; d[3] = 1.5;   // too little data for the estimates: plain middle values
            return d;
        }
        double y = (double)n[1] / (n[1] + 2 * n[2]);
        for (int c = 1; c <= 3; c++)
            d[c] = Math.Clamp(c - (c + 1) * y * n[c + 1] / n[c], 0.0, c - 1e-3);
        return d;
    }

    static int FindContext(Level l, ulong h) => Array.BinarySearch(l.Contexts, h);

    static int FindSymbol(Level l, int ctx, ulong key) =>
        Array.BinarySearch(l.Keys, l.Start[ctx], l.Start[ctx + 1] - l.Start[ctx], key);

    static ulong Pack(ReadOnlySpan<byte> h)
    {
        ulong key = 0;
        foreach (byte b in h) key = (key << 8) | b;
        return key;
    }

    void CheckOrder(int order)
    {
        if (order < 0 || order > MaxOrder) throw new ArgumentOutOfRangeException(nameof(order), $"the order must be in 0 .. {MaxOrder}");
    }

    /// <summary>p(w | the last min(order, |context|) bytes of <paramref name="context"/>).</summary>
    public double Probability(ReadOnlySpan<byte> context, byte w, int order)
    {
        CheckOrder(order);
        int top = Math.Min(order, context.Length);
        double p = 1.0 / 256;
        for (int k = 0; k <= top; k++)
        {
            var l = _levels[k];
            ulong h = Pack(context[^k..]);
            int j = FindContext(l, h);
            if (j < 0) continue;
            bool raw = k == top;
            int total = raw ? l.RawTotal[j] : l.ContTotal[j];
            if (total == 0) continue;
            int i = FindSymbol(l, j, (h << 8) | w);
            int c = i < 0 ? 0 : raw ? l.Raw[i] : l.Cont[i];
            var d = raw ? l.RawD : l.ContD;
            double gamma = raw ? l.RawGammaNum[j] : l.ContGammaNum[j];
            p = (c - d[Math.Min(c, 3)] + gamma * p) / total;
        }
        return p;
    }

    /// <summary>The whole next-byte distribution (256 values) after <paramref name="context"/>, computed level by level.</summary>
    public double[] Distribution(ReadOnlySpan<byte> context, int order)
    {
        CheckOrder(order);
        int top = Math.Min(order, context.Length);
        var p = new double[256];
        Array.Fill(p, 1.0 / 256);
        var counts = new int[256];
        for (int k = 0; k <= top; k++)
        {
            var l = _levels[k];
            ulong h = Pack(context[^k..]);
            int j = FindContext(l, h);
            if (j < 0) continue;
            bool raw = k == top;
            int total = raw ? l.RawTotal[j] : l.ContTotal[j];
            if (total == 0) continue;
            Array.Clear(counts);
            for (int i = l.Start[j]; i < l.Start[j + 1]; i++) counts[(int)(l.Keys[i] & 0xFF)] = raw ? l.Raw[i] : l.Cont[i];
            var d = raw ? l.RawD : l.ContD;
            double gamma = raw ? l.RawGammaNum[j] : l.ContGammaNum[j];
            for (int w = 0; w < 256; w++) p[w] = (counts[w] - d[Math.Min(counts[w], 3)] + gamma * p[w]) / total;
        }
        return p;
    }

    /// <summary>
    /// Bits per byte of data[1..] for every order k = 0 .. MaxOrder (index k), each byte predicted from up to k
    /// preceding bytes of <paramref name="data"/>. One pass: the counts of all levels are looked up once per byte.
    /// </summary>
    public double[] BitsPerByte(byte[] data)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (data.Length < 2) throw new ArgumentException("need at least two bytes", nameof(data));
        int K = MaxOrder;
        int chunks = Math.Max(1, Environment.ProcessorCount) * 8;
        var partial = new double[chunks, K + 1];
        Parallel.For(0, chunks, ci =>
        {
            long lo = 1 + (long)(data.Length - 1) * ci / chunks, hi = 1 + (long)(data.Length - 1) * (ci + 1) / chunks;
            // per level: count (raw, cont), totals, gamma numerators; -1 total = context unseen
            var rawC = new int[K + 1]; var contC = new int[K + 1];
            var rawT = new int[K + 1]; var contT = new int[K + 1];
            var rawG = new double[K + 1]; var contG = new double[K + 1];
            var sums = new double[K + 1];
            for (long pos = lo; pos < hi; pos++)
            {
                int avail = (int)Math.Min(K, pos);
                byte w = data[pos];
                ulong h = 0;
                for (int k = 0; k <= avail; k++)
                {
                    if (k > 0) h |= (ulong)data[pos - k] << (8 * (k - 1));
                    var l = _levels[k];
                    int j = FindContext(l, h);
                    if (j < 0) { rawT[k] = contT[k] = 0; continue; }
                    int i = FindSymbol(l, j, (h << 8) | w);
                    rawC[k] = i < 0 ? 0 : l.Raw[i]; contC[k] = i < 0 ? 0 : l.Cont[i];
                    rawT[k] = l.RawTotal[j]; contT[k] = l.ContTotal[j];
                    rawG[k] = l.RawGammaNum[j]; contG[k] = l.ContGammaNum[j];
                }
                for (int order = 0; order <= K; order++)
                {
                    int top = Math.Min(order, avail);
                    double p = 1.0 / 256;
                    for (int k = 0; k <= top; k++)
                    {
                        var l = _levels[k];
                        if (k == top)
                        {
                            if (rawT[k] > 0) p = (rawC[k] - l.RawD[Math.Min(rawC[k], 3)] + rawG[k] * p) / rawT[k];
                        }
                        else if (contT[k] > 0) p = (contC[k] - l.ContD[Math.Min(contC[k], 3)] + contG[k] * p) / contT[k];
                    }
                    sums[order] -= Math.Log2(p);
                }
            }
            for (int k = 0; k <= K; k++) partial[ci, k] = sums[k];   // each chunk owns its row
        });
        var bpb = new double[K + 1];
        for (int k = 0; k <= K; k++)
        {
            double s = 0;
            for (int ci = 0; ci < chunks; ci++) s += partial[ci, k];
            bpb[k] = s / (data.Length - 1);
        }
        return bpb;
    }
}
