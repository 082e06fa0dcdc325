// The model card's baselines: the Kneser-Ney byte n-gram model is a proper distribution (sums to 1 over the 256 bytes
// in float64 for any context), agrees with a naive dictionary-based implementation of the same formulas, and on an
// order-1 Markov source with a known transition matrix its bits per byte approach the closed-form entropy rate;
// compressors and the unigram entropy give ~8 bits on random bytes and ~0 on a constant string.
using System.IO.Compression;
using System.Text;
using Ssm.Language;

namespace Ssm.Language.Tests;

public class ByteBaselinesTests
{
    // A text-like source: words from a small random vocabulary with punctuation, so that every order has structure.
    static byte[] TextLike(int n, int seed)
    {
        var rng = new Random(seed);
        var words = Enumerable.Range(0, 300).Select(_ =>
            new string(Enumerable.Range(0, rng.Next(1, 9)).Select(_ => (char)('a' + rng.Next(26))).ToArray())).ToArray();
        var sb = new StringBuilder();
        while (sb.Length < n)
        {
            // Zipf-like word choice
            sb.Append(words[(int)(words.Length * Math.Pow(rng.NextDouble(), 3))]);
            sb.Append(rng.Next(12) switch { 0 => ". ", 1 => ", ", 2 => "\n", 3 => "\u00e9 ", _ => " " });
        }
        return Encoding.UTF8.GetBytes(sb.ToString())[..n];
    }

    [Fact]
    public void NGramDistributionsSumToOneForRandomContexts()
    {
        var model = ByteNGramModel.Train(TextLike(50_000, 1), maxOrder: 5);
        var rng = new Random(2);
        var text = TextLike(5_000, 9);   // contexts seen and unseen in training
        for (int trial = 0; trial < 60; trial++)
        {
            int len = rng.Next(0, 8);
            byte[] ctx = trial % 3 == 0
                ? Enumerable.Range(0, len).Select(_ => (byte)rng.Next(256)).ToArray()     // mostly unseen
                : text.AsSpan(rng.Next(text.Length - len), len).ToArray();                 // mostly seen
            for (int order = 0; order <= 5; order++)
            {
                var p = model.Distribution(ctx, order);
                Assert.All(p, x => Assert.True(x > 0 && x < 1));
                double sum = 0;
                foreach (double x in p) sum += x;
                Assert.True(Math.Abs(sum - 1) < 1e-12, $"order {order}, context length {len}: sum {sum:R}");
                for (int w = 0; w < 256; w += 17)
                    Assert.True(Math.Abs(model.Probability(ctx, (byte)w, order) - p[w]) <= 1e-15 + 1e-12 * p[w]);
            }
        }
    }

    // ----- a naive implementation of the same smoothing (dictionaries of strings), as an independent oracle -----
    sealed class NaiveKn
    {
        readonly List<Dictionary<string, int>> _raw = [], _cont = [];
        readonly List<double[]> _dRaw = [], _dCont = [];

        public NaiveKn(byte[] data, int maxOrder)
        {
            string s = Encoding.Latin1.GetString(data);
            for (int k = 0; k <= maxOrder; k++)
            {
                var raw = new Dictionary<string, int>();
                for (int i = k; i < s.Length; i++) { var g = s.Substring(i - k, k + 1); raw[g] = raw.GetValueOrDefault(g) + 1; }
                _raw.Add(raw);
            }
            for (int k = 0; k <= maxOrder; k++)
            {
                var cont = new Dictionary<string, int>();
                if (k < maxOrder)
                    foreach (var g in _raw[k + 1].Keys) { var t = g[1..]; cont[t] = cont.GetValueOrDefault(t) + 1; }
                _cont.Add(cont);
                _dRaw.Add(Discounts(_raw[k].Values)); _dCont.Add(Discounts(cont.Values));
            }
        }

        static double[] Discounts(IEnumerable<int> counts)
        {
            var n = new double[5];
            foreach (int c in counts) if (c <= 4) n[c]++;
            if (n[1] == 0 || n[2] == 0 || n[3] == 0) return [0, 0.5, 1.0, 1.5];
            double y = n[1] / (n[1] + 2 * n[2]);
            return [0, Math.Clamp(1 - 2 * y * n[2] / n[1], 0, 1 - 1e-3), Math.Clamp(2 - 3 * y * n[3] / n[2], 0, 2 - 1e-3),
                    Math.Clamp(3 - 4 * y * n[4] / n[3], 0, 3 - 1e-3)];
        }

        public double P(string context, char w, int order)
        {
            int top = Math.Min(order, context.Length);
            double p = 1.0 / 256;
            for (int k = 0; k <= top; k++)
            {
                string h = context[^k..];
                var counts = k == top ? _raw[k] : _cont[k];
                var d = k == top ? _dRaw[k] : _dCont[k];
                double total = 0, gamma = 0;
                for (int v = 0; v < 256; v++)
                    if (counts.TryGetValue(h + (char)v, out int c) && c > 0) { total += c; gamma += d[Math.Min(c, 3)]; }
                if (total == 0) continue;
                int cw = counts.GetValueOrDefault(h + w);
                p = (cw - d[Math.Min(cw, 3)] + gamma * p) / total;
            }
            return p;
        }
    }

    [Fact]
    public void NGramMatchesANaiveImplementation()
    {
        var train = TextLike(20_000, 3);
        var model = ByteNGramModel.Train(train, maxOrder: 4);
        var naive = new NaiveKn(train, 4);
        var test = TextLike(600, 4);
        string s = Encoding.Latin1.GetString(test);
        var bits = new double[5];
        for (int i = 1; i < test.Length; i++)
            for (int order = 0; order <= 4; order++)
            {
                double expect = naive.P(s[..i], s[i], order);
                double got = model.Probability(test.AsSpan(0, i), test[i], order);
                Assert.True(Math.Abs(got - expect) <= 1e-12 * expect, $"position {i} order {order}: {got:R} vs {expect:R}");
                bits[order] -= Math.Log2(expect);
            }
        // the one-pass evaluation equals the per-byte probabilities
        var bpb = model.BitsPerByte(test);
        for (int order = 0; order <= 4; order++)
            Assert.Equal(bits[order] / (test.Length - 1), bpb[order], 1e-10);
    }

    [Fact]
    public void NGramApproachesTheEntropyRateOfAMarkovChain()
    {
        // An order-1 Markov chain over 256 bytes: each byte has 3 to 6 successors with random probabilities.
        var rng = new Random(5);
        var next = new int[256][];
        var prob = new double[256][];
        for (int a = 0; a < 256; a++)
        {
            int m = rng.Next(3, 7);
            next[a] = Enumerable.Range(0, m).Select(_ => rng.Next(256)).Distinct().ToArray();
            var w = next[a].Select(_ => 0.2 + rng.NextDouble()).ToArray();
            prob[a] = w.Select(x => x / w.Sum()).ToArray();
        }
        // closed form: H = sum_a pi(a) H(row a), pi the stationary distribution (power iteration in float64)
        var pi = Enumerable.Repeat(1.0 / 256, 256).ToArray();
        for (int it = 0; it < 5000; it++)
        {
            var q = new double[256];
            for (int a = 0; a < 256; a++)
                for (int j = 0; j < next[a].Length; j++) q[next[a][j]] += 0.5 * pi[a] * prob[a][j];
            for (int a = 0; a < 256; a++) q[a] += 0.5 * pi[a];   // lazy chain: same stationary distribution, no periodicity
            pi = q;
        }
        double H = 0;
        for (int a = 0; a < 256; a++) H -= pi[a] * prob[a].Sum(p => p * Math.Log2(p));

        byte[] Sample(int n, int seed)
        {
            var r = new Random(seed);
            var x = new byte[n];
            int s = r.Next(256);
            for (int i = 0; i < n; i++)
            {
                double u = r.NextDouble();
                int j = 0;
                while (j < prob[s].Length - 1 && (u -= prob[s][j]) > 0) j++;
                s = next[s][j];
                x[i] = (byte)s;
            }
            return x;
        }
        var model = ByteNGramModel.Train(Sample(600_000, 6), maxOrder: 3);
        var bpb = model.BitsPerByte(Sample(100_000, 7));
        Assert.InRange(bpb[1] - H, -0.02, 0.03);       // order 1 is the true model class
        Assert.InRange(bpb[2] - H, -0.02, 0.10);       // higher orders spend a little on sparser counts
        Assert.True(bpb[0] > H + 1, $"order 0 ({bpb[0]:0.000}) should be far above the entropy rate ({H:0.000})");
    }

    [Fact]
    public void CompressorsAndUnigramEntropyOnExtremeInputs()
    {
        var random = new byte[1 << 20];
        new Random(8).NextBytes(random);
        Assert.InRange(ByteBaselines.GzipBitsPerByte(random), 7.99, 8.05);
        Assert.InRange(ByteBaselines.BrotliBitsPerByte(random), 7.99, 8.05);
        Assert.InRange(ByteBaselines.UnigramEntropy(random), 7.99, 8.0);

        var constant = Enumerable.Repeat((byte)'a', 1 << 20).ToArray();
        Assert.InRange(ByteBaselines.GzipBitsPerByte(constant), 0, 0.02);
        Assert.InRange(ByteBaselines.GzipBitsPerByte(constant, CompressionLevel.SmallestSize), 0, 0.02);
        Assert.InRange(ByteBaselines.BrotliBitsPerByte(constant), 0, 0.001);
        Assert.Equal(0, ByteBaselines.UnigramEntropy(constant));

        // two equally frequent symbols: exactly one bit; the train unigram on itself costs log2 of (count + 1) / (n + 256)
        var ab = Enumerable.Range(0, 1000).Select(i => (byte)(i % 2 == 0 ? 'a' : 'b')).ToArray();
        Assert.Equal(1.0, ByteBaselines.UnigramEntropy(ab), 12);
        Assert.Equal(-Math.Log2(501.0 / 1256), ByteBaselines.UnigramCrossEntropy(ab, ab), 12);
    }
}
