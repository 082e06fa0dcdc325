// DnaDatasets loaders on small folders written by the test in data/dna.sh's formats (human.json + raw .seq files,
// TASK.tsv + TASK.json): windows read back byte for byte, the sampler's windows are where it says and respect the N
// limit, seeds reproduce, labels and splits come from the files, and user errors name the file and data/dna.sh.

using System.Text;
using System.Text.Json;

namespace Ssm.Genomics.Tests;

public class DnaDatasetsTests
{
    static byte[] RandomBases(Random rng, int n, double pN = 0.0)
        => Enumerable.Range(0, n).Select(_ => rng.NextDouble() < pN ? (byte)'N' : (byte)"ACGT"[rng.Next(4)]).ToArray();

    static void WriteHuman(string dir, params (string Name, string Split, byte[] Bases)[] files)
    {
        foreach (var f in files) File.WriteAllBytes(Path.Combine(dir, f.Name + ".seq"), f.Bases);
        var json = new
        {
            name = "human-grch37",
            split_rule = "test rule",
            files = files.Select(f => new { name = f.Name, file = f.Name + ".seq", split = f.Split, length = f.Bases.LongLength, n_count = f.Bases.LongCount(b => b == 'N') }),
        };
        File.WriteAllText(Path.Combine(dir, "human.json"), JsonSerializer.Serialize(json));
    }

    [Fact]
    public void HumanGenomeReadsWindowsByteForByte()
    {
        using var tmp = new GenomicsDataKit.TempDir();
        var rng = new Random(1);
        var a = RandomBases(rng, 5000, 0.05);
        var b = RandomBases(rng, 3333, 0.2);
        WriteHuman(tmp.Path, ("chrX", "train", a), ("chr20", "valid", b));
        using var g = HumanGenome.Open(tmp.Path);
        Assert.Equal("test rule", g.SplitRule);
        var train = Assert.Single(g.Split("train"));
        var valid = Assert.Single(g.Split("valid"));
        Assert.Equal(("chrX", 5000L, a.LongCount(x => x == 'N')), (train.Name, train.Length, train.NCount));
        Assert.Equal(("chr20", 3333L), (valid.Name, valid.Length));
        for (int t = 0; t < 50; t++)
        {
            int len = rng.Next(0, 300), start = rng.Next(0, a.Length - len + 1);
            var buf = new byte[len];
            train.Read(start, len, buf);
            Assert.Equal(a.AsSpan(start, len).ToArray(), buf);
            Assert.True(train.Slice(start, len).SequenceEqual(a.AsSpan(start, len)));
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => train.Read(4990, 20, new byte[20]));
        Assert.Contains("'test'", Assert.Throws<ArgumentException>(() => g.Split("test")).Message);
        // an N count the json does not give is counted from the file
        using var plain = new SequenceFile(Path.Combine(tmp.Path, "chr20.seq"), "chr20", "valid");
        Assert.Equal(b.LongCount(x => x == 'N'), plain.NCount);
    }

    [Fact]
    public void HumanGenomeErrorsNameTheFile()
    {
        using var tmp = new GenomicsDataKit.TempDir();
        var e = Assert.Throws<FileNotFoundException>(() => HumanGenome.Open(tmp.Path));
        Assert.Contains("human.json", e.Message);
        Assert.Contains("data/dna.sh", e.Message);
        WriteHuman(tmp.Path, ("chrX", "train", RandomBases(new Random(2), 100)));
        File.WriteAllBytes(Path.Combine(tmp.Path, "chrX.seq"), new byte[90]);   // shorter than human.json says
        var bad = Assert.Throws<InvalidDataException>(() => HumanGenome.Open(tmp.Path));
        Assert.Contains("chrX.seq", bad.Message);
        File.Delete(Path.Combine(tmp.Path, "chrX.seq"));
        Assert.Contains("chrX.seq", Assert.Throws<FileNotFoundException>(() => HumanGenome.Open(tmp.Path)).Message);
    }

    [Fact]
    public void WindowSamplerIsSeededAndAvoidsMostlyNWindows()
    {
        using var tmp = new GenomicsDataKit.TempDir();
        var rng = new Random(3);
        // the first file is all N but its last 40 bases; the second has N runs of 30 every 200 bases
        var a = Enumerable.Repeat((byte)'N', 2000).Concat(RandomBases(rng, 40)).ToArray();
        var b = RandomBases(rng, 3000);
        for (int s = 0; s < b.Length; s += 200) b.AsSpan(s, Math.Min(30, b.Length - s)).Fill((byte)'N');
        WriteHuman(tmp.Path, ("a", "train", a), ("b", "train", b));
        using var g = HumanGenome.Open(tmp.Path);
        const int L = 64;
        var s1 = new WindowSampler(g.Split("train"), L, seed: 7, maxNFraction: 0.25);
        var s2 = new WindowSampler(g.Split("train"), L, seed: 7, maxNFraction: 0.25);
        var w1 = new byte[L];
        var w2 = new byte[L];
        int fromB = 0;
        for (int t = 0; t < 300; t++)
        {
            var (f1, p1) = s1.Next(w1);
            var (f2, p2) = s2.Next(w2);
            Assert.Equal((f1.Name, p1), (f2.Name, p2));
            Assert.Equal(w1, w2);
            var src = f1.Name == "a" ? a : b;
            Assert.Equal(src.AsSpan((int)p1, L).ToArray(), w1);
            Assert.True(w1.Count(x => x == 'N') <= 0.25 * L, $"window at {f1.Name}:{p1} has {w1.Count(x => x == 'N')} N");
            if (f1.Name == "b") fromB++;
        }
        Assert.True(fromB > 250);                     // file a has almost no acceptable window
        var other = new WindowSampler(g.Split("train"), L, seed: 8, maxNFraction: 0.25);
        var starts = Enumerable.Range(0, 20).Select(_ => other.Next(w1).Start).ToArray();
        var again = new WindowSampler(g.Split("train"), L, seed: 7, maxNFraction: 0.25);
        Assert.NotEqual(starts, Enumerable.Range(0, 20).Select(_ => again.Next(w1).Start).ToArray());

        using var allN = new GenomicsDataKit.TempDir();
        WriteHuman(allN.Path, ("n", "train", Enumerable.Repeat((byte)'N', 500).ToArray()));
        using var gn = HumanGenome.Open(allN.Path);
        Assert.Throws<InvalidDataException>(() => new WindowSampler(gn.Split("train"), 50, 1).Next(new byte[50]));
        Assert.Throws<ArgumentException>(() => new WindowSampler(gn.Split("train"), 501, 1));
    }

    [Fact]
    public void LabeledSequencesFollowTheFiles()
    {
        using var tmp = new GenomicsDataKit.TempDir();
        string apes = Path.Combine(tmp.Path, "apes");
        Directory.CreateDirectory(apes);
        var rng = new Random(4);
        string[] species = ["human", "chimp", "gorilla", "orangutan"];
        var rows = new List<(string Split, string Block, string Species, string Seq)>();
        for (int block = 0; block < 12; block++)
        {
            string split = block % 6 == 0 ? "test" : block % 6 == 1 ? "valid" : "train";
            foreach (var sp in species)
                for (int w = 0; w < rng.Next(1, 3); w++)
                    rows.Add((split, block.ToString(), sp, Encoding.ASCII.GetString(RandomBases(rng, 20, 0.1))));
        }
        rows[0] = (rows[0].Split, rows[0].Block, rows[0].Species, "acgtRYKMnn" + rows[0].Seq[10..]);   // lower case, IUPAC
        File.WriteAllLines(Path.Combine(apes, "apes.tsv"),
            ["split\tblock\tspecies\tstart\tsequence", .. rows.Select((r, i) => $"{r.Split}\t{r.Block}\t{r.Species}\t{i * 200}\t{r.Seq}")]);
        File.WriteAllText(Path.Combine(apes, "TASK.json"), JsonSerializer.Serialize(new { name = "apes", labels = species }));

        var data = DnaDatasets.LoadTask("apes", tmp.Path);
        Assert.Equal(species, data.Labels);
        Assert.Equal(rows.Count, data.Items.Count);
        for (int i = 0; i < rows.Count; i++)
        {
            var it = data.Items[i];
            Assert.Equal((rows[i].Split, rows[i].Block, rows[i].Species), (it.Split, it.Group, it.LabelName));
            Assert.Equal(Array.IndexOf(species, rows[i].Species), it.Label);
            string want = new(rows[i].Seq.Select(c => "ACGT".Contains(char.ToUpperInvariant(c)) ? char.ToUpperInvariant(c) : 'N').ToArray());
            Assert.Equal(want, Encoding.ASCII.GetString(it.Sequence));
        }
        Assert.Equal("ACGTNNNNNN", Encoding.ASCII.GetString(data.Items[0].Sequence, 0, 10));
        foreach (var s in new[] { "train", "valid", "test" })
            Assert.Equal(rows.Count(r => r.Split == s), data.Split(s).Count);
        Assert.Empty(data.Split("train").Select(x => x.Group).Intersect(data.Split("test").Select(x => x.Group)));

        // splice without TASK.json: the built-in label order; an unknown label names the line
        string splice = Path.Combine(tmp.Path, "splice");
        Directory.CreateDirectory(splice);
        File.WriteAllLines(Path.Combine(splice, "splice.tsv"), ["split\tclass\tsequence", "train\tN\tACGT", "test\tIE\tGGTA", "train\tEI\tCAGG"]);
        var sp2 = DnaDatasets.LoadTask("splice", tmp.Path);
        Assert.Equal(["EI", "IE", "N"], sp2.Labels);
        Assert.Equal([2, 1, 0], sp2.Items.Select(x => x.Label));
        File.AppendAllLines(Path.Combine(splice, "splice.tsv"), ["valid\tXX\tACGT"]);
        var e = Assert.Throws<InvalidDataException>(() => DnaDatasets.LoadTask("splice", tmp.Path));
        Assert.Contains("splice.tsv:5", e.Message);
        Assert.Contains("XX", e.Message);

        Assert.Contains("data/dna.sh", Assert.Throws<FileNotFoundException>(() => DnaDatasets.LoadTask("promoters", tmp.Path)).Message);
        Assert.Throws<ArgumentException>(() => DnaDatasets.LoadTask("nope", tmp.Path));
    }

    [Fact]
    public void ResolveDirectoryFindsTheCacheAboveAndNamesTheScript()
    {
        using var tmp = new GenomicsDataKit.TempDir();
        string cache = Path.Combine(tmp.Path, "data", "cache", "dna");
        Directory.CreateDirectory(cache);
        string deep = Path.Combine(tmp.Path, "a", "b", "c");
        Directory.CreateDirectory(deep);
        Assert.Equal(Path.GetFullPath(cache), DnaDatasets.FindAbove(deep));
        Assert.Equal(Path.GetFullPath(cache), DnaDatasets.FindAbove(tmp.Path));
        Assert.Equal(Path.GetFullPath(cache), DnaDatasets.ResolveDirectory(cache));
        var e = Assert.Throws<DirectoryNotFoundException>(() => DnaDatasets.ResolveDirectory(Path.Combine(tmp.Path, "missing")));
        Assert.Contains("data/dna.sh", e.Message);
        Assert.Contains("missing", e.Message);
    }
}
