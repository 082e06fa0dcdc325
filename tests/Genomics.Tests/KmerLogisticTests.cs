// The k-mer logistic-regression baseline: features against a naive substring count (every k-mer string enumerated,
// occurrences counted by string comparison, windows containing a non-ACGT letter skipped); the classifier on a
// separable synthetic task (composition) must be near perfect, and on a noisy motif task clearly above chance.

using System.Text;

namespace Ssm.Genomics.Tests;

public class KmerLogisticTests
{
    static IEnumerable<string> AllKmers(int k) => k == 0 ? [""] : AllKmers(k - 1).SelectMany(p => "ACGT".Select(c => p + c));

    static byte[] Random(Random rng, int n, string alphabet) => Enumerable.Range(0, n).Select(_ => (byte)alphabet[rng.Next(alphabet.Length)]).ToArray();

    [Fact]
    public void FeaturesAreNaiveSubstringFrequencies()
    {
        var rng = new Random(21);
        foreach (int[] ks in new[] { new[] { 1, 3, 5 }, new[] { 2 }, new[] { 4, 1 } })
        {
            var f = new KmerFeaturizer(ks);
            Assert.Equal(ks.Sum(k => 1 << (2 * k)), f.Dimension);
            for (int t = 0; t < 6; t++)
            {
                var seq = Random(rng, rng.Next(0, 120), "ACGTACGTacgN");
                string s = Encoding.ASCII.GetString(seq).ToUpperInvariant();
                var got = f.Features(seq);
                var want = new List<float>();
                foreach (int k in ks)
                {
                    var kmers = AllKmers(k).ToArray();                  // in A < C < G < T order: index = base-4 value
                    var counts = kmers.Select(m => Enumerable.Range(0, Math.Max(0, s.Length - k + 1)).Count(i => s.Substring(i, k) == m)).ToArray();
                    int total = Enumerable.Range(0, Math.Max(0, s.Length - k + 1)).Count(i => s.Substring(i, k).All(c => "ACGT".Contains(c)));
                    want.AddRange(counts.Select(c => total == 0 ? 0f : (float)c / total));
                }
                Assert.Equal(want.Count, got.Length);
                for (int i = 0; i < got.Length; i++) Assert.Equal(want[i], got[i], 1e-6);
            }
        }
        Assert.Equal(1, KmerFeaturizer.Index("AC"));
        Assert.Equal(4, KmerFeaturizer.Index("CA"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new KmerFeaturizer(0));
    }

    [Fact]
    public void SeparableCompositionIsLearnedAlmostPerfectly()
    {
        var rng = new Random(22);
        (byte[], int) Make() { int y = rng.Next(2); return (Random(rng, 80, y == 0 ? "AATTCG" : "GGCCAT"), y); }
        var train = Enumerable.Range(0, 400).Select(_ => Make()).ToArray();
        var test = Enumerable.Range(0, 200).Select(_ => Make()).ToArray();
        var m = KmerLogistic.Fit(train.Select(t => t.Item1).ToArray(), train.Select(t => t.Item2).ToArray(), 2,
            new KmerLogisticOptions { Ks = [1, 2], Steps = 100, BatchSize = 128, Seed = 3 });
        Assert.True(m.Accuracy(test.Select(t => t.Item1).ToArray(), test.Select(t => t.Item2).ToArray()) >= 0.98);
    }

    [Fact]
    public void NoisyMotifTaskBeatsChanceClearly()
    {
        var rng = new Random(23);
        string[] motifs = ["", "GATTACA", "TATAAT"];
        (byte[], int) Make()
        {
            int y = rng.Next(3);
            var s = Random(rng, 100, "ACGT");
            if (y > 0 && rng.NextDouble() < 0.8)        // the motif is missing from 20% of its class
            {
                int at = rng.Next(0, 100 - motifs[y].Length);
                Encoding.ASCII.GetBytes(motifs[y]).CopyTo(s, at);
            }
            return (s, y);
        }
        var train = Enumerable.Range(0, 900).Select(_ => Make()).ToArray();
        var test = Enumerable.Range(0, 600).Select(_ => Make()).ToArray();
        var m = KmerLogistic.Fit(train.Select(t => t.Item1).ToArray(), train.Select(t => t.Item2).ToArray(), 3,
            new KmerLogisticOptions { Ks = [4], Steps = 120, L2 = 1e-2 });
        double acc = m.Accuracy(test.Select(t => t.Item1).ToArray(), test.Select(t => t.Item2).ToArray());
        Assert.True(acc > 0.55, $"accuracy {acc:P1}, chance is 33%");
        Assert.Throws<ArgumentException>(() => KmerLogistic.Fit(train.Select(t => t.Item1).ToArray(), train.Select(t => 3).ToArray(), 3));
    }
}
