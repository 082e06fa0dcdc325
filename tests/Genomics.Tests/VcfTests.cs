// VcfReader: the fixture (expectations read off its text by the VCF 4.2 rules), random VCFs compared with what the
// generator wrote (plain, gzip, concatenated gzip members, hand-made BGZF blocks), and malformed records reported
// with file, line and reason.

using System.Text;

namespace Ssm.Genomics.Tests;

public class VcfTests
{
    [Fact]
    public void Fixture_HeaderVariantsAndSkips()
    {
        string path = GenomicsIoKit.Fixture("example.vcf");
        using var reader = VcfReader.Open(path);
        Assert.Equal(4, reader.MetaLines.Count);
        Assert.Equal("##fileformat=VCFv4.2", reader.MetaLines[0]);
        Assert.Equal(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", "S1", "S2"], reader.HeaderColumns);
        Assert.Equal(["S1", "S2"], reader.Samples);
        var v = reader.Variants().ToList();
        Assert.Equal(5, v.Count);

        Assert.Equal(("chr1", 10177L, "rs367896724", "A", 6), (v[0].Chrom, v[0].Position, v[0].Id, v[0].Ref, v[0].LineNumber));
        Assert.Equal(["AC"], v[0].Alts);
        Assert.Equal(VariantKind.Insertion, v[0].Kind);
        Assert.True(v[0].IsIndel);
        Assert.False(v[0].IsSnv());

        // Lower-case REF/ALT are upper-cased; a multi-allelic SNV splits into two biallelic ones.
        Assert.Equal("T", v[1].Ref);
        Assert.Equal(["A", "G"], v[1].Alts);
        Assert.True(v[1].IsSnv(0) && v[1].IsSnv(1));
        Assert.False(v[1].IsIndel);
        Assert.Equal(VariantKind.Snv, v[1].Kind);
        var split = v[1].Split();
        Assert.Equal(2, split.Count);
        Assert.All(split, s => Assert.Equal((10352L, "T", 7), (s.Position, s.Ref, s.LineNumber)));
        Assert.Equal(["A"], split[0].Alts);
        Assert.Equal(["G"], split[1].Alts);

        Assert.Equal(30000, v[2].Position);
        Assert.Equal(["A", "ACGTT", "TCGA"], v[2].Alts);
        Assert.Equal([VariantKind.Deletion, VariantKind.Insertion, VariantKind.Mnv], Enumerable.Range(0, 3).Select(v[2].KindOf));
        Assert.Equal(VariantKind.Mixed, v[2].Kind);
        Assert.True(v[2].IsIndel);
        Assert.Equal((29999L, 30003L), (v[2].ZeroBasedStart, v[2].EndExclusive));

        // "T,*": the '*' allele is dropped, the SNV kept.
        Assert.Equal((50000L, 11), (v[3].Position, v[3].LineNumber));
        Assert.Equal(["T"], v[3].Alts);

        Assert.Equal(("chr2", 200L, "TTA", 13), (v[4].Chrom, v[4].Position, v[4].Ref, v[4].LineNumber));
        Assert.Equal(VariantKind.Deletion, v[4].Kind);

        Assert.Equal(2, reader.SkippedSymbolic);     // <DEL> and the breakend
        Assert.Equal(1, reader.DroppedSymbolicAlleles); // the '*'
        Assert.Equal(1, reader.SkippedNoAlt);        // ALT '.'
        Assert.Throws<ArgumentOutOfRangeException>(() => v[0].IsSnv(1));
    }

    sealed record Expected(string Chrom, long Pos, string Id, string Ref, string[] Alts, int Line);

    static string RandomBases(Random rnd, int len, bool mixCase)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < len; i++)
        {
            char c = "ACGTN"[rnd.Next(rnd.Next(10) == 0 ? 5 : 4)];
            sb.Append(mixCase && rnd.Next(5) == 0 ? char.ToLowerInvariant(c) : c);
        }
        return sb.ToString();
    }

    static (string Text, List<Expected> Records, int Symbolic, int Dropped, int NoAlt) MakeVcf(Random rnd)
    {
        string nl = rnd.Next(2) == 0 ? "\n" : "\r\n";
        var sb = new StringBuilder();
        int metas = rnd.Next(5);
        sb.Append("##fileformat=VCFv4.3").Append(nl);
        for (int i = 0; i < metas; i++) sb.Append($"##contig=<ID=c{i},length={1000 + i}>").Append(nl);
        bool sitesOnly = rnd.Next(2) == 0;
        sb.Append(sitesOnly ? "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO" : "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tNA1").Append(nl);
        int line = metas + 2;
        var records = new List<Expected>();
        int symbolic = 0, dropped = 0, noAlt = 0;
        int n = rnd.Next(60);
        string[] symbols = ["<DEL>", "<INS:ME>", "<*>", "*", "G]c2:5]", "]c3:7]T", ".A", "C."];
        for (int r = 0; r < n; r++)
        {
            line++;
            string chrom = $"c{rnd.Next(3)}";
            long pos = 1 + rnd.Next(1_000_000);
            string id = rnd.Next(2) == 0 ? "." : $"rs{rnd.Next(100000)}";
            string refAllele = RandomBases(rnd, 1 + (rnd.Next(3) == 0 ? rnd.Next(6) : 0), true);
            var written = new List<string>();
            var kept = new List<string>();
            int alts = rnd.Next(8) == 0 ? 0 : 1 + rnd.Next(3);
            int droppedHere = 0;
            for (int a = 0; a < alts; a++)
            {
                if (rnd.Next(6) == 0)
                {
                    written.Add(symbols[rnd.Next(symbols.Length)]);
                    droppedHere++;
                    continue;
                }
                string alt = RandomBases(rnd, 1 + (rnd.Next(3) == 0 ? rnd.Next(6) : 0), true);
                written.Add(alt);
                kept.Add(alt.ToUpperInvariant());
            }
            string altField = alts == 0 ? "." : string.Join(',', written);
            sb.Append($"{chrom}\t{pos}\t{id}\t{refAllele}\t{altField}\t50\tPASS\tDP=3");
            if (!sitesOnly) sb.Append("\tGT\t0/1");
            sb.Append(nl);
            if (alts == 0) noAlt++;
            else if (kept.Count == 0) symbolic++;
            else
            {
                dropped += droppedHere;
                records.Add(new Expected(chrom, pos, id, refAllele.ToUpperInvariant(), kept.ToArray(), line));
            }
        }
        return (sb.ToString(), records, symbolic, dropped, noAlt);
    }

    [Fact]
    public void RandomFiles_MatchWhatWasWritten_PlainGzipMembersAndBgzf()
    {
        var rnd = new Random(701);
        for (int trial = 0; trial < 40; trial++)
        {
            var (text, expected, symbolic, dropped, noAlt) = MakeVcf(rnd);
            byte[] bytes = Encoding.ASCII.GetBytes(text);
            byte[] stored = (trial % 4) switch
            {
                0 => bytes,
                1 => GenomicsIoKit.Gzip(bytes),
                2 => GenomicsIoKit.GzipMembers(bytes, rnd, 2 + rnd.Next(4)),
                _ => GenomicsIoKit.Bgzf(bytes, 1 + rnd.Next(2000)),
            };
            using var reader = new VcfReader(new TrickleStream(stored, rnd, 1 + rnd.Next(100)), "random.vcf");
            var got = reader.Variants().ToList();
            Assert.Equal(expected.Count, got.Count);
            for (int i = 0; i < got.Count; i++)
            {
                var e = expected[i];
                var g = got[i];
                Assert.Equal((e.Chrom, e.Pos, e.Id, e.Ref, e.Line), (g.Chrom, g.Position, g.Id, g.Ref, g.LineNumber));
                Assert.Equal(e.Alts, g.Alts);
                var split = g.Split();
                Assert.Equal(e.Alts, split.Select(s => Assert.Single(s.Alts)));
                Assert.All(split, s => Assert.Equal((g.Chrom, g.Position, g.Ref), (s.Chrom, s.Position, s.Ref)));
                for (int a = 0; a < e.Alts.Length; a++)
                {
                    var kind = g.KindOf(a);
                    int dl = e.Alts[a].Length - e.Ref.Length;
                    Assert.Equal(dl > 0 ? VariantKind.Insertion : dl < 0 ? VariantKind.Deletion : e.Ref.Length == 1 ? VariantKind.Snv : VariantKind.Mnv, kind);
                    Assert.Equal(kind == VariantKind.Snv, g.IsSnv(a));
                }
                Assert.Equal(e.Alts.Any(a => a.Length != e.Ref.Length), g.IsIndel);
            }
            Assert.Equal(symbolic, reader.SkippedSymbolic);
            Assert.Equal(dropped, reader.DroppedSymbolicAlleles);
            Assert.Equal(noAlt, reader.SkippedNoAlt);
        }
    }

    [Fact]
    public void Bgzip_FileOnDisk_ReadsAndDetectsTruncation()
    {
        var rnd = new Random(702);
        string text;
        do text = MakeVcf(rnd).Text; while (text.Length < 2500);
        var expected = ReadAll(new MemoryStream(Encoding.ASCII.GetBytes(text)));
        byte[] bgzf = GenomicsIoKit.Bgzf(Encoding.ASCII.GetBytes(text), 500);
        using var dir = new GenomicsIoKit.TempDir();
        string path = dir.File("calls.vcf.gz");
        File.WriteAllBytes(path, bgzf);
        using (var reader = VcfReader.Open(path))
            Assert.Equal(expected, reader.Variants().Select(v => v.ToString()).ToList());
        // Dropping the EOF block leaves a valid (complete) series of members; cutting inside a block does not.
        File.WriteAllBytes(path, bgzf[..^GenomicsIoKit.BgzfEof.Length]);
        using (var reader = VcfReader.Open(path))
            Assert.Equal(expected, reader.Variants().Select(v => v.ToString()).ToList());
        File.WriteAllBytes(path, bgzf[..(bgzf.Length / 2)]);
        var e = Record.Exception(() =>
        {
            using var reader = VcfReader.Open(path);
            reader.Variants().ToList();
        });
        Assert.IsType<InvalidDataException>(e);
        Assert.StartsWith($"{path}: truncated gzip stream", e!.Message);
    }

    static List<string> ReadAll(Stream s)
    {
        using var reader = new VcfReader(s, "mem.vcf");
        return reader.Variants().Select(v => v.ToString()).ToList();
    }

    const string Header = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n";

    [Theory]
    [InlineData(Header + "chr1\t0\t.\tA\tC\n", 3, "POS '0' is not a positive integer")]
    [InlineData(Header + "chr1\t-5\t.\tA\tC\n", 3, "POS '-5' is not a positive integer")]
    [InlineData(Header + "chr1\t100\t.\tA\tC\nchr1\t12a\t.\tA\tC\n", 4, "POS '12a' is not a positive integer")]
    [InlineData(Header + "chr1\t\t.\tA\tC\n", 3, "POS '' is not a positive integer")]
    [InlineData(Header + "chr1\t1.5\t.\tA\tC\n", 3, "POS '1.5' is not a positive integer")]
    [InlineData(Header + "chr1\t99999999999999999999\t.\tA\tC\n", 3, "is not a positive integer")]
    [InlineData(Header + "chr1\t10\t.\tA\n", 3, "expected at least 5 tab-separated columns (CHROM POS ID REF ALT), found 4")]
    [InlineData(Header + "chr1 10 . A C\n", 3, "found 1")]
    [InlineData(Header + "chr1\t10\t.\tAXG\tC\n", 3, "REF 'AXG' has 'X'")]
    [InlineData(Header + "chr1\t10\t.\tA\tC,R\n", 3, "ALT 'R' has 'R'")]
    [InlineData(Header + "chr1\t10\t.\tA\tC,\n", 3, "empty ALT allele")]
    [InlineData(Header + "chr1\t10\t.\t\tC\n", 3, "empty REF allele")]
    [InlineData(Header + "\t10\t.\tA\tC\n", 3, "empty CHROM")]
    [InlineData(Header + "chr1\t10\t.\tA\tC\n##late=meta\n", 4, "header line after the '#CHROM' line")]
    [InlineData("##fileformat=VCFv4.2\nchr1\t10\t.\tA\tC\n", 2, "data line before the '#CHROM' header line")]
    [InlineData("##fileformat=VCFv4.2\n##x=y\n", 3, "missing '#CHROM' header line")]
    [InlineData("", 1, "missing '#CHROM' header line")]
    [InlineData("##fileformat=VCFv4.2\n#CHROM\tPOS\tREF\tALT\n", 2, "must start with the tab-separated columns")]
    [InlineData("##fileformat=VCFv4.2\n#chrom stuff\n", 2, "single '#' but is not the '#CHROM' line")]
    public void Malformed_ReportsFileLineAndReason(string text, int line, string reason)
    {
        using var dir = new GenomicsIoKit.TempDir();
        foreach (bool gz in new[] { false, true })
        {
            string path = dir.File(gz ? "bad.vcf.gz" : "bad.vcf");
            byte[] bytes = Encoding.ASCII.GetBytes(text.Replace("\n", gz ? "\r\n" : "\n"));
            File.WriteAllBytes(path, gz ? GenomicsIoKit.Gzip(bytes) : bytes);
            var e = Record.Exception(() =>
            {
                using var reader = VcfReader.Open(path);
                reader.Variants().ToList();
            });
            GenomicsIoKit.AssertError(e!, path, line, reason);
        }
    }
}
