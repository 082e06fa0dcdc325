// The byte corpus loader and its windows: training batches are a pure function of (seed, step), stay inside the data
// and cover it; evaluation windows target every byte but the first exactly once; a missing or inconsistent corpus
// folder is a clear error that says how to make it.
using System.Text;
using TorchSharp;
using Ssm.Language;

namespace Ssm.Language.Tests;

public class ByteCorpusTests
{
    static byte[] RandomBytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public void TrainingWindowsArePureFunctionsOfSeedAndStep()
    {
        var data = RandomBytes(5003, 1);
        var a = new ByteWindowSampler(data, 16, 8, seed: 42);
        var steps = Enumerable.Range(0, 200).Select(i => (long)i).ToArray();
        var first = steps.Select(s => a.Offsets(s)).ToArray();
        // a fresh sampler asked in a shuffled order (as after a resume) gives the same batches
        var b = new ByteWindowSampler(data, 16, 8, seed: 42);
        var order = steps.ToArray();
        new Random(3).Shuffle(order);
        foreach (var s in order) Assert.Equal(first[s], b.Offsets(s));
        // another seed gives other batches
        var c = new ByteWindowSampler(data, 16, 8, seed: 43);
        Assert.True(steps.Count(s => !c.Offsets(s).SequenceEqual(first[s])) > 190);
        // the tensor holds exactly those bytes, as int64 (B, L + 1)
        using var batch = b.Batch(17);
        Assert.Equal(new long[] { 8, 17 }, batch.shape);
        Assert.Equal(torch.ScalarType.Int64, batch.dtype);
        var ids = batch.data<long>().ToArray();
        for (int i = 0; i < 8; i++)
            for (int t = 0; t < 17; t++)
                Assert.Equal(data[first[17][i] + t], ids[i * 17 + t]);
    }

    [Theory]
    [InlineData(1003, 8, 5)]
    [InlineData(32, 16, 3)]     // exactly two windows' worth: K = 1
    [InlineData(4097, 1, 7)]
    [InlineData(10_000, 999, 4)]
    public void TrainingWindowsStayInBoundsAndCoverTheData(int n, int L, int batch)
    {
        var data = RandomBytes(n, n);
        var s = new ByteWindowSampler(data, L, batch, seed: 7);
        int K = s.WindowsPerEpoch;
        Assert.Equal((n - L) / L, K);
        var phases = new HashSet<long>();
        for (int e = 0; e < 20; e++)
        {
            // within one epoch the K windows are distinct, share exactly one byte with their neighbour, and the bytes
            // of one contiguous run (lo, lo + K L] are each a target exactly once
            var targets = new int[n];
            var starts = new List<long>();
            for (long idx = (long)e * K; idx < (long)(e + 1) * K; idx++)
            {
                long o = s.Offset(idx);
                Assert.InRange(o, 0, n - L - 1);
                Assert.True(o + L + 1 <= n);
                starts.Add(o);
                for (long t = o + 1; t <= o + L; t++) targets[t]++;
            }
            Assert.Equal(K, starts.Distinct().Count());
            long lo = starts.Min(), hi = starts.Max() + L;
            Assert.Equal((long)K * L, hi - lo);
            for (long t = 0; t < n; t++) Assert.Equal(t > lo && t <= hi ? 1 : 0, targets[t]);
            phases.Add(lo);
        }
        // the window boundaries move from epoch to epoch (unless the data leaves no room: n - 1 == K L)
        Assert.True(phases.Count > 1 || n - 1 == (long)K * L);
        // batches are consecutive stretches of the window stream
        Assert.Equal(Enumerable.Range(0, batch).Select(i => s.Offset(3L * batch + i)), s.Offsets(3));
    }

    [Theory]
    [InlineData(1003, 8)]
    [InlineData(40, 16)]
    public void AcrossEpochsEveryByteIsCovered(int n, int L)
    {
        var s = new ByteWindowSampler(RandomBytes(n, 2), L, 1, seed: 11);
        var seen = new bool[n];
        var target = new bool[n];
        for (long idx = 0; idx < 400L * s.WindowsPerEpoch; idx++)
        {
            long o = s.Offset(idx);
            for (long t = o; t <= o + L; t++) { seen[t] = true; if (t > o) target[t] = true; }
        }
        Assert.All(seen, Assert.True);
        Assert.All(target.Skip(1), Assert.True);
    }

    [Fact]
    public void TooLittleDataIsAClearError()
    {
        var ex = Assert.Throws<ArgumentException>(() => new ByteWindowSampler(new byte[31], 16, 2, 0));
        Assert.Contains("too few", ex.Message);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 1)]
    [InlineData(100, 10)]
    [InlineData(101, 10)]
    [InlineData(102, 10)]
    [InlineData(57, 64)]
    public void EvaluationWindowsTargetEveryByteButTheFirstOnce(int n, int L)
    {
        var targets = new int[n];
        foreach (var (o, m) in TextScoring.Windows(n, L))
        {
            Assert.InRange(m, 2, L + 1);
            Assert.True(o + m <= n);
            for (long t = o + 1; t < o + m; t++) targets[t]++;
        }
        for (int t = 0; t < n; t++) Assert.Equal(t == 0 ? 0 : 1, targets[t]);
    }

    sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "bytecorpus-" + Guid.NewGuid().ToString("N"));
        public TempDir() => Directory.CreateDirectory(Path);
        public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
    }

    // Writes a corpus folder the way data/text-corpus.sh lays it out (documents + 0x00, manifest in file order).
    static void WriteCorpus(string dir, (string Id, string Source, string Text, string Split)[] docs)
    {
        var bins = new Dictionary<string, List<byte>> { ["train"] = [], ["valid"] = [], ["test"] = [] };
        var man = new StringBuilder("id\tsource\tbytes\tsplit\n");
        foreach (var (id, src, text, split) in docs)
        {
            var b = Encoding.UTF8.GetBytes(text);
            bins[split].AddRange(b);
            bins[split].Add(0);
            man.Append($"{id}\t{src}\t{b.Length}\t{split}\n");
        }
        foreach (var (k, v) in bins) File.WriteAllBytes(Path.Combine(dir, k + ".bin"), v.ToArray());
        File.WriteAllText(Path.Combine(dir, "manifest.tsv"), man.ToString());
    }

    static readonly (string, string, string, string)[] Docs =
    [
        ("a/1", "a", "Call me Ishmael.\n", "train"),
        ("b/1", "b", "Fellow-Citizens of the Senate\n", "valid"),
        ("a/2", "a", "It is a truth universally acknowledged, ñ\n", "train"),
        ("b/2", "b", "In the beginning\n", "test"),
        ("c/1", "c", "The Fulton County Grand Jury\n", "test"),
    ];

    [Fact]
    public void LoadsThePreparedLayout()
    {
        using var tmp = new TempDir();
        WriteCorpus(tmp.Path, Docs);
        var c = ByteCorpus.Load(tmp.Path);
        Assert.Equal(5, c.Documents.Count);
        foreach (var (id, src, text, split) in Docs)
        {
            var d = c.Documents.Single(x => x.Id == id);
            Assert.Equal(src, d.Source);
            Assert.Equal(ByteCorpus.ParseSplit(split), d.Split);
            Assert.Equal(text, Encoding.UTF8.GetString(c.Bytes(d).Span));
        }
        Assert.Equal(2, c.DocumentsOf(ByteSplit.Test).Count());
        Assert.Equal(Encoding.UTF8.GetByteCount("Call me Ishmael.\n") + 1 + Encoding.UTF8.GetByteCount(Docs[2].Item3) + 1, c.Train.Length);
        Assert.Equal(0, c.Valid[^1]);
    }

    [Fact]
    public void MissingOrInconsistentCorpusIsAClearError()
    {
        using var tmp = new TempDir();
        var missing = Path.Combine(tmp.Path, "nope");
        var e1 = Assert.Throws<DirectoryNotFoundException>(() => ByteCorpus.Load(missing));
        Assert.Contains("run data/text-corpus.sh first", e1.Message);
        Assert.Contains(missing, e1.Message);

        WriteCorpus(tmp.Path, Docs);
        File.Delete(Path.Combine(tmp.Path, "valid.bin"));
        var e2 = Assert.Throws<FileNotFoundException>(() => ByteCorpus.Load(tmp.Path));
        Assert.Contains("valid.bin", e2.Message);
        Assert.Contains("run data/text-corpus.sh first", e2.Message);

        WriteCorpus(tmp.Path, Docs);
        var train = File.ReadAllBytes(Path.Combine(tmp.Path, "train.bin"));
        File.WriteAllBytes(Path.Combine(tmp.Path, "train.bin"), train[..^1]);   // a truncated file
        var e3 = Assert.Throws<InvalidDataException>(() => ByteCorpus.Load(tmp.Path));
        Assert.Contains("manifest.tsv", e3.Message);

        WriteCorpus(tmp.Path, Docs);
        File.WriteAllText(Path.Combine(tmp.Path, "manifest.tsv"), "id\tsource\tbytes\tsplit\na/1\ta\t17\tholdout\n");
        var e4 = Assert.Throws<InvalidDataException>(() => ByteCorpus.Load(tmp.Path));
        Assert.Contains("holdout", e4.Message);
    }
}
