// The order-k Markov baseline against a brute-force reference: a dictionary from context strings to counts, built
// and evaluated position by position from the N rules (a position counts if it and its k predecessors are A/C/G/T),
// on random sequences with N runs and mixed case; total bits must agree to 1e-9 and scored counts exactly. k = 0 is
// also checked against the closed form of the smoothed unigram cross-entropy.

using System.Text;

namespace Ssm.Genomics.Tests;

public class MarkovBaselineTests
{
    static byte[] RandomSequence(Random rng, int n, double pN)
    {
        var s = new byte[n];
        // a skewed, context-dependent source so higher orders matter: repeat the base 3 back with probability 0.3
        for (int i = 0; i < n; i++)
        {
            if (rng.NextDouble() < pN) { s[i] = (byte)(rng.Next(3) == 0 ? 'R' : 'N'); continue; }
            byte b = i >= 3 && s[i - 3] != 'N' && s[i - 3] != 'R' && rng.NextDouble() < 0.3 ? s[i - 3] : (byte)"AACGTTT"[rng.Next(7)];
            s[i] = rng.Next(10) == 0 ? (byte)char.ToLowerInvariant((char)b) : b;
        }
        return s;
    }

    sealed class BruteForce(int k, double alpha)
    {
        readonly Dictionary<string, long> joint = [];    // context + base
        readonly Dictionary<string, long> context = [];

        static bool Valid(char c) => "ACGT".Contains(c);

        public void Fit(byte[] seq)
        {
            string s = Encoding.ASCII.GetString(seq).ToUpperInvariant();
            for (int i = k; i < s.Length; i++)
            {
                string w = s.Substring(i - k, k + 1);
                if (!w.All(Valid)) continue;
                joint[w] = joint.GetValueOrDefault(w) + 1;
                context[w[..k]] = context.GetValueOrDefault(w[..k]) + 1;
            }
        }

        public (double Bits, long Scored) Score(byte[] seq, int minContext)
        {
            string s = Encoding.ASCII.GetString(seq).ToUpperInvariant();
            int need = Math.Max(k, minContext);
            double bits = 0;
            long n = 0;
            for (int i = need; i < s.Length; i++)
            {
                if (!s.Substring(i - need, need + 1).All(Valid)) continue;
                string w = s.Substring(i - k, k + 1);
                double p = (joint.GetValueOrDefault(w) + alpha) / (context.GetValueOrDefault(w[..k]) + 4 * alpha);
                bits -= Math.Log2(p);
                n++;
            }
            return (bits, n);
        }
    }

    [Fact]
    public void SingleChainMatchesBruteForce()
    {
        var rng = new Random(11);
        for (int trial = 0; trial < 12; trial++)
        {
            int k = trial % 6;
            double alpha = new[] { 1.0, 0.5, 0.01, 3.0 }[trial % 4];
            var train = Enumerable.Range(0, 3).Select(_ => RandomSequence(rng, rng.Next(50, 3000), 0.03)).ToArray();
            var valid = Enumerable.Range(0, 2).Select(_ => RandomSequence(rng, rng.Next(50, 2000), 0.05)).ToArray();
            var chain = new MarkovChain(k, alpha);
            var brute = new BruteForce(k, alpha);
            foreach (var s in train) { chain.Fit(s); brute.Fit(s); }
            int minContext = trial % 3 == 0 ? k + 2 : 0;
            double bits = 0, want = 0;
            long n = 0, wantN = 0;
            foreach (var s in valid)
            {
                var sc = chain.Score(s, minContext);
                var (b, c) = brute.Score(s, minContext);
                bits += sc.Bits; n += sc.Scored; want += b; wantN += c;
            }
            Assert.Equal(wantN, n);
            Assert.True(wantN > 0);
            Assert.True(Math.Abs(bits - want) <= 1e-9 * Math.Abs(want), $"k={k} alpha={alpha}: {bits} vs {want}");
        }
    }

    [Fact]
    public void TableScoresEveryOrderOnTheSamePositions()
    {
        var rng = new Random(12);
        var train = Enumerable.Range(0, 4).Select(_ => RandomSequence(rng, rng.Next(500, 4000), 0.02)).ToArray();
        var valid = Enumerable.Range(0, 3).Select(_ => RandomSequence(rng, rng.Next(500, 3000), 0.02)).ToArray();
        const int maxK = 6;
        var rows = MarkovBaseline.Measure(train, valid, maxK, alpha: 0.7);
        Assert.Equal(maxK + 1, rows.Count);
        for (int k = 0; k <= maxK; k++)
        {
            var brute = new BruteForce(k, 0.7);
            foreach (var s in train) brute.Fit(s);
            double tb = 0, vb = 0;
            long tn = 0, vn = 0;
            foreach (var s in train) { var (b, c) = brute.Score(s, maxK); tb += b; tn += c; }
            foreach (var s in valid) { var (b, c) = brute.Score(s, maxK); vb += b; vn += c; }
            Assert.Equal(k, rows[k].Order);
            Assert.Equal((tn, vn), (rows[k].TrainScored, rows[k].ValidScored));
            Assert.Equal(tb / tn, rows[k].TrainBitsPerBase, 1e-9);
            Assert.Equal(vb / vn, rows[k].ValidBitsPerBase, 1e-9);
        }
        // a context-dependent source: order 3 sees the copy, so it must beat order 0 on held-out data
        Assert.True(rows[3].ValidBitsPerBase < rows[0].ValidBitsPerBase - 0.05);
    }

    [Fact]
    public void OrderZeroIsTheSmoothedUnigramCrossEntropy()
    {
        var rng = new Random(13);
        foreach (double alpha in new[] { 1.0, 0.25 })
        {
            var s = Enumerable.Range(0, 10_000).Select(_ => (byte)"ACGTTTTGA"[rng.Next(9)]).ToArray();
            var chain = new MarkovChain(0, alpha);
            chain.Fit(s);
            double n = s.Length, closed = 0;
            foreach (char c in "ACGT")
            {
                double nc = s.Count(b => b == c);
                closed -= nc / n * Math.Log2((nc + alpha) / (n + 4 * alpha));
            }
            Assert.Equal(closed, chain.BitsPerBase(s), 1e-12);
            Assert.Equal(s.Length, chain.Total);
        }
    }

    [Fact]
    public void NeverCountsOrScoresAcrossN()
    {
        var chain = new MarkovChain(2);
        chain.Fit("ACNGTNNA"u8);            // no window of 3 valid bases
        Assert.Equal(0, chain.Total);
        chain.Fit("acgt"u8);                // lower case counts: ACG, CGT
        Assert.Equal(2, chain.Total);
        Assert.Equal(1, chain.Counts[KmerFeaturizer.Index("ACG")]);
        Assert.Equal(1, chain.Counts[KmerFeaturizer.Index("CGT")]);
        Assert.Equal(0, chain.Score("ANCGNTA"u8).Scored);
        Assert.Throws<ArgumentOutOfRangeException>(() => new MarkovChain(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new MarkovChain(2, 0));
    }
}
