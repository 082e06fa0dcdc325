// RData (.rda reader) and Xz (LZMA2 decoder) against independent references:
//  - random data.frames serialised in the test by a writer built from R Internals' "Serialization Formats" (flags word,
//    CHARSXP encodings, REFSXP back-references to symbols, ALTREP compact_intseq in version 3), saved as RDX2/RDX3,
//    uncompressed, gzip and bzip2; the reader must give back exactly what was written;
//  - .xz fixtures made by xz-utils (tests/fixtures/genomics/data/make_xz_fixtures.py) from contents this test
//    regenerates: several blocks, lc/lp/pb other than the defaults, stored (incompressible) chunks, two streams,
//    CRC32/CRC64/SHA-256/no checks; corrupted copies must fail with InvalidDataException;
//  - the real kernlab promotergene.rda (bzip2, 2.3 KB) against documented facts of the UCI promoter data set
//    (106 sequences of 57 nt, 53 promoters and 53 non-promoters);
//  - CRC-32 and CRC-64/XZ of "123456789" against their published check values.

using System.IO.Compression;
using System.Runtime.CompilerServices;
using System.Text;
using ICSharpCode.SharpZipLib.BZip2;

namespace Ssm.Genomics.Tests;

/// <summary>Fixtures under tests/fixtures/genomics/data and temp folders for the data tests.</summary>
static class GenomicsDataKit
{
    public static string Fixture(string name, [CallerFilePath] string here = "")
    {
        string copied = Path.Combine(AppContext.BaseDirectory, "fixtures", "genomics", "data", name);
        if (File.Exists(copied)) return copied;
        return Path.GetFullPath(Path.Combine(Path.GetDirectoryName(here)!, "..", "fixtures", "genomics", "data", name));
    }

    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ssm-genomics-data-" + Guid.NewGuid().ToString("N"));
        public TempDir() => Directory.CreateDirectory(Path);
        public string File(string name) => System.IO.Path.Combine(Path, name);
        public void Dispose()
        {
            try { Directory.Delete(Path, true); } catch (IOException) { }
        }
    }
}

public class RDataTests
{
    /// <summary>Writes R's XDR serialisation (big-endian words), following R Internals 1.8.</summary>
    sealed class XdrWriter
    {
        readonly MemoryStream s = new();
        readonly List<string> symbols = [];
        public const int IsObj = 1 << 8, HasAttr = 1 << 9, HasTag = 1 << 10;

        public void Int(int v) { s.WriteByte((byte)(v >> 24)); s.WriteByte((byte)(v >> 16)); s.WriteByte((byte)(v >> 8)); s.WriteByte((byte)v); }
        public void Bytes(byte[] b) => s.Write(b);

        public void Header(int version)
        {
            Bytes("X\n"u8.ToArray());
            Int(version); Int(0x040401); Int(version == 3 ? 0x030500 : 0x020300);
            if (version == 3) { Int(5); Bytes("UTF-8"u8.ToArray()); }
        }

        /// <summary>CHARSXP: gp bits LATIN1 (4), UTF8 (8), ASCII (64) in the levels field (bits 12+).</summary>
        public void Chars(string? v, bool latin1 = false)
        {
            if (v == null) { Int(9); Int(-1); return; }
            bool ascii = v.All(c => c < 128);
            int gp = ascii ? 64 : latin1 ? 4 : 8;
            Int(9 | (gp << 12));
            var b = latin1 ? Encoding.Latin1.GetBytes(v) : Encoding.UTF8.GetBytes(v);
            Int(b.Length); Bytes(b);
        }

        public void Sym(string name)
        {
            int i = symbols.IndexOf(name);
            if (i >= 0) { Int(((i + 1) << 8) | 255); return; }     // REFSXP, index packed in the flags
            symbols.Add(name);
            Int(1); Chars(name);
        }

        /// <summary>A pairlist of tagged items, then NILVALUE.</summary>
        public void Tagged(IEnumerable<(string Tag, Action Write)> items)
        {
            foreach (var (tag, write) in items) { Int(2 | HasTag); Sym(tag); write(); }
            Int(254);
        }

        public void Strings(string?[] v, bool latin1 = false, Action? attrs = null)
        {
            Int(16 | (attrs != null ? HasAttr : 0)); Int(v.Length);
            foreach (var x in v) Chars(x, latin1);
            attrs?.Invoke();
        }

        public void Ints(int[] v, int type = 13, bool obj = false, Action? attrs = null)
        {
            Int(type | (obj ? IsObj : 0) | (attrs != null ? HasAttr : 0)); Int(v.Length);
            foreach (int x in v) Int(x);
            attrs?.Invoke();
        }

        public void Doubles(double[] v)
        {
            Int(14); Int(v.Length);
            foreach (double x in v) { long bits = BitConverter.DoubleToInt64Bits(x); Int((int)(bits >> 32)); Int((int)bits); }
        }

        public byte[] ToArray() => s.ToArray();
    }

    sealed record Frame(string[] Levels, int[] Codes, string?[] Strs, bool Latin1, int[] Ints, double[] Dbls, int[] Lgls);

    static Frame RandomFrame(Random rng)
    {
        int n = rng.Next(1, 40);
        var levels = Enumerable.Range(0, rng.Next(1, 5)).Select(i => "lvl" + i + (rng.Next(2) == 0 ? "" : "-x")).ToArray();
        bool latin1 = rng.Next(2) == 0;
        string[] pool = latin1 ? ["plain", "café", "Ærø", ""] : ["plain", "αβγ", "naïve", "", "日本"];
        return new Frame(levels,
            Enumerable.Range(0, n).Select(_ => rng.Next(6) == 0 ? RInts.NA : rng.Next(1, levels.Length + 1)).ToArray(),
            Enumerable.Range(0, n).Select(_ => rng.Next(5) == 0 ? null : pool[rng.Next(pool.Length)] + rng.Next(100)).ToArray(),
            latin1,
            Enumerable.Range(0, n).Select(_ => rng.Next(7) == 0 ? RInts.NA : rng.Next(-1000, 1000)).ToArray(),
            Enumerable.Range(0, n).Select(_ => rng.NextDouble() * 1e6 - 5e5).ToArray(),
            Enumerable.Range(0, n).Select(_ => rng.Next(5) == 0 ? RInts.NA : rng.Next(2)).ToArray());
    }

    /// <summary>save(df, other, file=...) as R writes it: "RDX{v}\n", then the pairlist df = ..., other = 1:n.</summary>
    static byte[] Save(Frame f, int version)
    {
        int n = f.Codes.Length;
        var w = new XdrWriter();
        w.Bytes(Encoding.ASCII.GetBytes($"RDX{version}\n"));
        w.Header(version);
        w.Tagged([
            ("df", () =>
            {
                w.Int(19 | XdrWriter.IsObj | XdrWriter.HasAttr); w.Int(6);
                w.Ints(f.Codes, obj: true, attrs: () => w.Tagged([("levels", () => w.Strings(f.Levels)), ("class", () => w.Strings(["factor"]))]));
                w.Strings(f.Strs, f.Latin1);
                w.Ints(f.Ints);
                w.Doubles(f.Dbls);
                w.Ints(f.Lgls, type: 10);
                if (version == 3)
                {   // ALTREP compact_intseq 1..n: info = (class, package, type), state = (n, start, step), no attributes
                    w.Int(238);
                    w.Int(2); w.Sym("compact_intseq"); w.Int(2); w.Sym("base"); w.Int(2); w.Ints([13]); w.Int(254);
                    w.Doubles([n, 1, 1]);
                    w.Int(254);
                }
                else w.Ints(Enumerable.Range(1, n).ToArray());
                w.Tagged([
                    ("names", () => w.Strings(["Class", "s", "i", "d", "l", "idx"])),
                    ("class", () => w.Strings(["data.frame"])),       // the "class" symbol is now a back-reference
                    ("row.names", () => w.Ints([RInts.NA, -n])),
                ]);
            }),
            ("other", () => w.Ints(Enumerable.Range(1, n).ToArray())),
        ]);
        return w.ToArray();
    }

    static byte[] Compress(byte[] b, string how)
    {
        var o = new MemoryStream();
        switch (how)
        {
            case "gzip": using (var z = new GZipStream(o, CompressionLevel.Optimal, true)) z.Write(b); break;
            case "bzip2": using (var z = new BZip2OutputStream(o) { IsStreamOwner = false }) z.Write(b); break;
            default: return b;
        }
        return o.ToArray();
    }

    [Theory]
    [InlineData(2, "none")]
    [InlineData(2, "gzip")]
    [InlineData(3, "bzip2")]
    [InlineData(3, "none")]
    [InlineData(3, "gzip")]
    public void RandomDataFramesReadBackExactly(int version, string compression)
    {
        var rng = new Random(100 * version + compression.Length);
        for (int trial = 0; trial < 20; trial++)
        {
            var f = RandomFrame(rng);
            var objs = RData.Load(Compress(Save(f, version), compression), "test.rda");
            Assert.Equal(["df", "other"], objs.Keys.Order().ToArray());
            Assert.Equal(Enumerable.Range(1, f.Codes.Length).ToArray(), ((RInts)objs["other"]).Values);

            var df = RData.ToDataFrame(objs["df"], "df");
            Assert.Equal(["Class", "s", "i", "d", "l", "idx"], df.Names);
            Assert.Equal(f.Codes.Length, df.Rows);
            Assert.Equal(f.Codes.Select(c => c == RInts.NA ? null : f.Levels[c - 1]).ToArray(), df.Column("Class"));
            Assert.Equal(f.Strs, df.Column("s"));
            Assert.Equal(f.Ints.Select(v => v == RInts.NA ? null : v.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray(), df.Column("i"));
            Assert.Equal(f.Lgls.Select(v => v == RInts.NA ? null : v == 1 ? "TRUE" : "FALSE").ToArray(), df.Column("l"));
            Assert.Equal(Enumerable.Range(1, f.Codes.Length).Select(v => v.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray(), df.Column("idx"));

            var cols = ((RList)objs["df"]).Values;
            Assert.Equal(f.Dbls.Select(BitConverter.DoubleToInt64Bits), ((RDoubles)cols[3]).Values.Select(BitConverter.DoubleToInt64Bits));
            Assert.True(((RInts)cols[4]).IsLogical);
            Assert.Equal([RInts.NA, -f.Codes.Length], ((RInts)objs["df"].Attribute("row.names")!).Values);
            Assert.Equal(["factor"], cols[0].Classes);
        }
    }

    [Fact]
    public void TruncatedAndForeignDataFailWithTheName()
    {
        var full = Save(RandomFrame(new Random(5)), 2);
        for (int cut = 7; cut < full.Length; cut += Math.Max(1, full.Length / 40))
        {
            var e = Assert.Throws<InvalidDataException>(() => RData.Load(full.AsSpan(0, cut).ToArray(), "cut.rda"));
            Assert.Contains("cut.rda", e.Message);
        }
        var notRda = Assert.Throws<InvalidDataException>(() => RData.Load("hello world"u8.ToArray(), "hello.txt"));
        Assert.Contains("hello.txt", notRda.Message);
        var ascii = Encoding.ASCII.GetBytes("RDX2\nA\n2\n");
        Assert.Contains("XDR", Assert.Throws<InvalidDataException>(() => RData.Load(ascii, "ascii.rda")).Message);
        var missing = Assert.Throws<InvalidDataException>(() => RData.Load(Path.Combine(Path.GetTempPath(), "no-such-" + Guid.NewGuid() + ".rda")));
        Assert.Contains("no-such-", missing.Message);
    }

    // ---- xz

    /// <summary>The LCG of make_xz_fixtures.py: s = s * 6364136223846793005 + 1442695040888963407 (mod 2^64), s >> 33.</summary>
    static IEnumerable<ulong> Lcg(ulong seed)
    {
        ulong s = seed;
        while (true)
        {
            s = unchecked(s * 6364136223846793005UL + 1442695040888963407UL);
            yield return s >> 33;
        }
    }

    /// <summary>make_xz_fixtures.py's content(seed).</summary>
    static byte[] Content(ulong seed)
    {
        using var g = Lcg(seed).GetEnumerator();
        ulong Next() { g.MoveNext(); return g.Current; }
        var o = new List<byte>();
        for (int i = 0; i < 3000; i++)
        {
            if (i % 300 == 299)
            {
                int src = (int)(Next() % (ulong)(o.Count - 100));
                o.AddRange(o.GetRange(src, 100));
            }
            o.Add((byte)"ACGT"[(int)(Next() & 3)]);
        }
        for (int i = 0; i < 512; i++) o.Add((byte)(Next() & 0xFF));
        for (int i = 0; i < 200; i++) o.AddRange("ACGT"u8.ToArray());
        for (int i = 0; i < 60; i++) o.AddRange(Encoding.ASCII.GetBytes($"line {i}: the quick brown fox jumps over the lazy dog {i * i}\n"));
        return o.ToArray();
    }

    static byte[] RandomBytes(ulong seed, int n) => Lcg(seed).Take(n).Select(v => (byte)(v & 0xFF)).ToArray();

    public static TheoryData<string> XzFixtures => new() { "mix.xz", "mix-blocks-lc1lp2pb0.xz", "random-sha256.xz", "two-streams.xz" };

    static byte[] Expected(string name) => name switch
    {
        "mix.xz" => Content(1),
        "mix-blocks-lc1lp2pb0.xz" => Content(2),
        "random-sha256.xz" => RandomBytes(3, 2048),
        "two-streams.xz" => [.. Content(4), .. Content(5)],
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(XzFixtures))]
    public void XzFixturesDecodeToTheirContent(string name)
    {
        var x = File.ReadAllBytes(GenomicsDataKit.Fixture(name));
        Assert.True(Xz.IsXz(x));
        Assert.Equal(Expected(name), Xz.Decompress(x, name));
        Assert.Equal(Expected(name), RData.Decompress(x, name));   // dispatch by magic
    }

    [Theory]
    [MemberData(nameof(XzFixtures))]
    public void CorruptXzFailsCleanly(string name)
    {
        var x = File.ReadAllBytes(GenomicsDataKit.Fixture(name));
        var rng = new Random(name.Length);
        // flips inside the compressed data (after the 12-byte stream header and 12-byte block header, before the
        // check, index and footer): caught by the decoder or by the block's check, unless the stream has no check
        for (int t = 0; t < 30; t++)
        {
            var y = (byte[])x.Clone();
            int at = rng.Next(24, x.Length - 48);
            y[at] ^= (byte)(1 << rng.Next(8));
            if (name == "two-streams.xz")
            {
                try { Assert.NotEqual(Expected(name), Xz.Decompress(y, name)); }   // first stream has no check
                catch (InvalidDataException) { }
                continue;
            }
            Assert.Throws<InvalidDataException>(() => Xz.Decompress(y, name));
        }
        for (int cut = 1; cut < x.Length; cut += 97)
            Assert.Throws<InvalidDataException>(() => Xz.Decompress(x.AsSpan(0, cut).ToArray(), name));
    }

    [Fact]
    public void CrcCheckValues()
    {
        Assert.Equal(0xCBF43926u, Xz.Crc32("123456789"u8));
        Assert.Equal(0x995DC9BBDF1939FAul, Xz.Crc64("123456789"u8));
    }

    // ---- the real kernlab promotergene.rda

    [Fact]
    public void PromoterGeneHasTheDocumentedShape()
    {
        string path = GenomicsDataKit.Fixture("promotergene.rda");
        Assert.Equal((byte)'B', File.ReadAllBytes(path)[0]);       // bzip2, as kernlab ships it
        var objs = RData.Load(path);
        var df = RData.ToDataFrame(objs["promotergene"], "promotergene");
        Assert.Equal(106, df.Rows);
        Assert.Equal(58, df.Names.Count);
        Assert.Equal("Class", df.Names[0]);
        Assert.Equal(Enumerable.Range(2, 57).Select(i => "V" + i), df.Names.Skip(1));
        Assert.Equal(53, df.Column("Class").Count(c => c == "+"));
        Assert.Equal(53, df.Column("Class").Count(c => c == "-"));
        foreach (var name in df.Names.Skip(1))
            Assert.All(df.Column(name), b => Assert.Contains(b, new[] { "a", "c", "g", "t" }));
    }
}
