// FASTA / FASTQ readers and the FASTA writer, against an independent reference: a string-per-line parser written
// from the format rules (ReferenceFasta below) and the generator's own record of what it wrote. Random files vary line
// width, LF/CRLF, case, IUPAC codes, blank lines, empty records, the final newline, plain/gzip/multi-member gzip and
// short reads from the underlying stream. Malformed inputs check the exception type, file name, line and reason.

using System.IO.Compression;
using System.Runtime.CompilerServices;
using System.Text;

namespace Ssm.Genomics.Tests;

/// <summary>Helpers shared by the genomics I/O tests (FASTA, FASTQ, VCF).</summary>
static class GenomicsIoKit
{
    /// <summary>A fixture under tests/fixtures/genomics/io (found next to this source file, or copied to the output).</summary>
    public static string Fixture(string name, [CallerFilePath] string here = "")
    {
        string copied = Path.Combine(AppContext.BaseDirectory, "fixtures", "genomics", "io", name);
        if (File.Exists(copied)) return copied;
        return Path.GetFullPath(Path.Combine(Path.GetDirectoryName(here)!, "..", "fixtures", "genomics", "io", name));
    }

    /// <summary>A fresh temp folder, deleted on Dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ssm-genomics-io-" + Guid.NewGuid().ToString("N"));
        public TempDir() => Directory.CreateDirectory(Path);
        public string File(string name) => System.IO.Path.Combine(Path, name);
        public void Dispose()
        {
            try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>One gzip member made by .NET's own compressor.</summary>
    public static byte[] Gzip(ReadOnlySpan<byte> data)
    {
        var ms = new MemoryStream();
        using (var z = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true)) z.Write(data);
        return ms.ToArray();
    }

    /// <summary>Data cut at random points into several gzip members, concatenated (what `cat a.gz b.gz` makes);
    /// some members are empty.</summary>
    public static byte[] GzipMembers(byte[] data, Random rnd, int members)
    {
        var cuts = Enumerable.Range(0, members - 1).Select(_ => rnd.Next(data.Length + 1)).Append(0).Append(data.Length).Order().ToArray();
        var ms = new MemoryStream();
        for (int i = 0; i + 1 < cuts.Length; i++)
        {
            ms.Write(Gzip(data.AsSpan(cuts[i], cuts[i + 1] - cuts[i])));
            if (rnd.Next(3) == 0) ms.Write(BgzfEof); // an empty member (.NET writes no member at all for no data)
        }
        return ms.ToArray();
    }

    /// <summary>CRC-32 of gzip, bit by bit (test-side, independent of the library's table version).</summary>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        }
        return ~c;
    }

    /// <summary>
    /// BGZF (bgzip) blocks written by hand: each member carries the 'BC' extra field with its size, and the file ends
    /// with the standard 28-byte empty EOF block, as in the SAM/BAM specification section 4.1.
    /// </summary>
    public static byte[] Bgzf(byte[] data, int blockSize)
    {
        var ms = new MemoryStream();
        for (int off = 0; off < data.Length; off += blockSize)
        {
            var part = data.AsSpan(off, Math.Min(blockSize, data.Length - off));
            var deflated = new MemoryStream();
            using (var d = new DeflateStream(deflated, CompressionLevel.Optimal, leaveOpen: true)) d.Write(part);
            WriteBgzfBlock(ms, deflated.ToArray(), Crc32(part), (uint)part.Length);
        }
        ms.Write(BgzfEof);
        return ms.ToArray();
    }

    static void WriteBgzfBlock(Stream s, byte[] deflated, uint crc, uint size)
    {
        int bsize = 18 + deflated.Length + 8 - 1;
        s.Write([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, (byte)'B', (byte)'C', 2, 0, (byte)bsize, (byte)(bsize >> 8)]);
        s.Write(deflated);
        s.Write(BitConverter.GetBytes(crc));
        s.Write(BitConverter.GetBytes(size));
    }

    public static readonly byte[] BgzfEof =
        [0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 0x06, 0, 0x42, 0x43, 0x02, 0, 0x1b, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// <summary>A gzip member with the optional FNAME, FCOMMENT and FHCRC header fields set.</summary>
    public static byte[] GzipWithNameAndComment(byte[] data)
    {
        var deflated = new MemoryStream();
        using (var d = new DeflateStream(deflated, CompressionLevel.Optimal, leaveOpen: true)) d.Write(data);
        var s = new MemoryStream();
        var header = new List<byte> { 0x1f, 0x8b, 8, 0x08 | 0x10 | 0x02, 1, 2, 3, 4, 0, 3 };
        header.AddRange("reads.fastq\0"u8.ToArray());
        header.AddRange("a comment\0"u8.ToArray());
        uint hcrc = Crc32(header.ToArray());
        header.Add((byte)hcrc);
        header.Add((byte)(hcrc >> 8));
        s.Write(header.ToArray());
        s.Write(deflated.ToArray());
        s.Write(BitConverter.GetBytes(Crc32(data)));
        s.Write(BitConverter.GetBytes((uint)data.Length));
        return s.ToArray();
    }

    /// <summary>Asserts the one-line error format "PATH:LINE: ...reason...".</summary>
    public static void AssertError(Exception e, string path, long line, string reason)
    {
        Assert.IsType<InvalidDataException>(e);
        Assert.Contains($"{path}:{line}: ", e.Message);
        Assert.Contains(reason, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}

/// <summary>A stream over bytes that returns short, random-length reads (exercises every buffer boundary).</summary>
sealed class TrickleStream(byte[] data, Random rnd, int maxRead) : Stream
{
    int _pos;
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
    public override int Read(Span<byte> buffer)
    {
        int n = Math.Min(Math.Min(buffer.Length, data.Length - _pos), 1 + rnd.Next(maxRead));
        data.AsSpan(_pos, n).CopyTo(buffer);
        _pos += n;
        return n;
    }
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => _pos; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>Expected content of one record.</summary>
sealed record ExpectedRecord(string Name, string Description, string Bases, long Soft, long Ambiguous);

/// <summary>
/// The reference FASTA parser: whole text, string.Split per line, a switch per character; only for small inputs.
/// Throws (message, line) on malformed input.
/// </summary>
static class ReferenceFasta
{
    public static List<ExpectedRecord> Parse(string text)
    {
        var records = new List<ExpectedRecord>();
        string? name = null, desc = null;
        var bases = new StringBuilder();
        long soft = 0, amb = 0;
        string[] lines = text.Split('\n');
        void Close()
        {
            if (name != null) records.Add(new ExpectedRecord(name, desc!, bases.ToString(), soft, amb));
            bases.Clear();
            soft = amb = 0;
        }
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].TrimEnd('\r');
            if (line.StartsWith('>'))
            {
                Close();
                string title = line[1..].Trim(' ', '\t');
                int sp = title.IndexOfAny([' ', '\t']);
                name = sp < 0 ? title : title[..sp];
                desc = sp < 0 ? "" : title[(sp + 1)..].Trim(' ', '\t');
                if (name.Length == 0) throw new FormatException($"{i + 1}|empty name");
                continue;
            }
            if (name == null)
            {
                if (line.Trim(' ', '\t', '\r').Length == 0) continue;
                throw new FormatException($"{i + 1}|sequence data before the first");
            }
            foreach (char c in line)
            {
                if (c is ' ' or '\t' or '\r') continue;
                char u = char.ToUpperInvariant(c);
                bool lower = c != u;
                switch (u)
                {
                    case 'A' or 'C' or 'G' or 'T' or 'N':
                        bases.Append(u);
                        break;
                    case 'R' or 'Y' or 'S' or 'W' or 'K' or 'M' or 'B' or 'D' or 'H' or 'V':
                        bases.Append('N');
                        amb++;
                        break;
                    default:
                        throw new FormatException($"{i + 1}|invalid character '{c}'");
                }
                if (lower) soft++;
            }
        }
        Close();
        return records;
    }
}

/// <summary>Random FASTA text together with the records it encodes.</summary>
static class RandomFasta
{
    const string Plain = "ACGT", Iupac = "RYSWKMBDHV";

    public static (string Text, List<ExpectedRecord> Records) Make(Random rnd, int maxRecords = 5, int maxLength = 3000)
    {
        var sb = new StringBuilder();
        var records = new List<ExpectedRecord>();
        string nl = rnd.Next(2) == 0 ? "\n" : "\r\n";
        int width = 1 + rnd.Next(120);
        bool lowerRuns = rnd.Next(2) == 0;
        if (rnd.Next(4) == 0) sb.Append(nl); // blank lines before the first header are allowed
        int count = 1 + rnd.Next(maxRecords);
        for (int r = 0; r < count; r++)
        {
            string name = $"seq{r}_{rnd.Next(1000)}";
            string desc = rnd.Next(2) == 0 ? "" : $"len=? sample {rnd.Next(100)}";
            sb.Append('>').Append(name);
            if (desc.Length > 0) sb.Append(rnd.Next(2) == 0 ? ' ' : '\t').Append(desc);
            sb.Append(nl);
            int len = rnd.Next(5) == 0 ? 0 : rnd.Next(maxLength);
            var truth = new StringBuilder();
            long soft = 0, amb = 0;
            bool inLower = false;
            int col = 0;
            for (int i = 0; i < len; i++)
            {
                if (lowerRuns ? rnd.Next(50) == 0 : true) inLower = lowerRuns ? !inLower : rnd.Next(4) == 0;
                int kind = rnd.Next(20);
                char c;
                if (kind < 17) { c = Plain[rnd.Next(4)]; truth.Append(c); }
                else if (kind == 17) { c = 'N'; truth.Append('N'); }
                else { c = Iupac[rnd.Next(Iupac.Length)]; truth.Append('N'); amb++; }
                if (inLower) { c = char.ToLowerInvariant(c); soft++; }
                sb.Append(c);
                if (++col == width && i + 1 < len)
                {
                    sb.Append(nl);
                    col = 0;
                    if (rnd.Next(30) == 0) sb.Append(nl); // a blank line inside the record
                }
            }
            bool last = r == count - 1;
            if (len > 0 && (!last || rnd.Next(3) != 0)) sb.Append(nl); // the last line may lack its newline
            if (!last && rnd.Next(6) == 0) sb.Append(nl);
            records.Add(new ExpectedRecord(name, desc, truth.ToString(), soft, amb));
        }
        return (sb.ToString(), records);
    }
}

public class FastaTests
{
    static void AssertSame(List<ExpectedRecord> expected, List<FastaRecord> actual)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].Name, actual[i].Name);
            Assert.Equal(expected[i].Description, actual[i].Description);
            Assert.Equal(expected[i].Bases, Encoding.ASCII.GetString(actual[i].Bases));
            Assert.Equal(expected[i].Soft, actual[i].SoftMaskedCount);
            Assert.Equal(expected[i].Ambiguous, actual[i].AmbiguousCount);
        }
    }

    [Fact]
    public void RandomFiles_MatchReferenceParser_PlainGzipAndMultiMember()
    {
        var rnd = new Random(501);
        using var dir = new GenomicsIoKit.TempDir();
        for (int trial = 0; trial < 60; trial++)
        {
            var (text, truth) = RandomFasta.Make(rnd);
            var reference = ReferenceFasta.Parse(text);
            Assert.Equal(truth, reference); // the reference parser agrees with what was generated
            byte[] bytes = Encoding.ASCII.GetBytes(text);
            byte[] stored = (trial % 3) switch
            {
                0 => bytes,
                1 => GenomicsIoKit.Gzip(bytes),
                _ => GenomicsIoKit.GzipMembers(bytes, rnd, 1 + rnd.Next(4)),
            };
            // The extension never decides: a gzip file named .fa and a plain one named .gz both read.
            string path = dir.File($"t{trial}" + (rnd.Next(2) == 0 ? ".fa" : ".fa.gz"));
            File.WriteAllBytes(path, stored);
            AssertSame(reference, FastaReader.ReadFile(path));
            using var fromStream = new FastaReader(new TrickleStream(stored, rnd, 1 + rnd.Next(40)), "trickle");
            AssertSame(reference, fromStream.ReadAll().ToList());
        }
    }

    [Fact]
    public void ReadBases_AnyBufferSize_GivesSameBasesAndFinalStatistics()
    {
        var rnd = new Random(502);
        for (int trial = 0; trial < 40; trial++)
        {
            var (text, truth) = RandomFasta.Make(rnd);
            byte[] bytes = Encoding.ASCII.GetBytes(text);
            using var reader = new FastaReader(new TrickleStream(bytes, rnd, 200), "mem.fa");
            int r = 0;
            while (reader.NextRecord(out var header))
            {
                Assert.Equal(truth[r].Name, header.Name);
                var got = new StringBuilder();
                var buf = new byte[1 + rnd.Next(100)];
                int n;
                while ((n = reader.ReadBases(buf)) > 0)
                {
                    Assert.True(n == buf.Length || reader.RecordComplete, "a short read happens only at the end of the record");
                    got.Append(Encoding.ASCII.GetString(buf, 0, n));
                }
                Assert.True(reader.RecordComplete);
                Assert.Equal(0, reader.ReadBases(buf));
                Assert.Equal(truth[r].Bases, got.ToString());
                Assert.Equal(truth[r].Bases.Length, reader.Length);
                Assert.Equal(truth[r].Soft, reader.SoftMaskedCount);
                Assert.Equal(truth[r].Ambiguous, reader.AmbiguousCount);
                r++;
            }
            Assert.Equal(truth.Count, r);
            Assert.False(reader.NextRecord(out _));
        }
    }

    [Fact]
    public void NextRecord_SkipsTheRestOfAPartlyReadRecord()
    {
        var rnd = new Random(503);
        for (int trial = 0; trial < 20; trial++)
        {
            var (text, truth) = RandomFasta.Make(rnd, maxRecords: 6);
            using var reader = new FastaReader(new MemoryStream(Encoding.ASCII.GetBytes(text)), "mem.fa");
            for (int r = 0; r < truth.Count; r++)
            {
                Assert.True(reader.NextRecord(out var h));
                Assert.Equal(truth[r].Name, h.Name);
                int take = rnd.Next(3) switch { 0 => 0, 1 => 1 + rnd.Next(20), _ => int.MaxValue };
                var buf = new byte[7];
                string got = "";
                while (got.Length < take)
                {
                    int n = reader.ReadBases(buf);
                    if (n == 0) break;
                    got += Encoding.ASCII.GetString(buf, 0, n);
                }
                Assert.StartsWith(got, truth[r].Bases);
            }
            Assert.False(reader.NextRecord(out _));
        }
    }

    [Fact]
    public void HeaderLineNumbers_AreTheLinesOfTheHeaders()
    {
        string text = "\n>a first\nAC\r\nGT\n\n>b\n>c  spaced   desc \nNNNN";
        using var reader = new FastaReader(new MemoryStream(Encoding.ASCII.GetBytes(text)), "h.fa");
        var headers = new List<FastaHeader>();
        while (reader.NextRecord(out var h)) headers.Add(h);
        Assert.Equal([new FastaHeader("a", "first", 2), new FastaHeader("b", "", 6), new FastaHeader("c", "spaced   desc", 7)], headers);
    }

    [Fact]
    public void Fixture_MatchesReferenceParser()
    {
        string path = GenomicsIoKit.Fixture("example.fa");
        var reference = ReferenceFasta.Parse(File.ReadAllText(path));
        var records = FastaReader.ReadFile(path);
        AssertSame(reference, records);
        // What the fixture was written to hold: an empty record, soft-masked and IUPAC bases, CRLF lines.
        Assert.Contains(records, r => r.Bases.Length == 0);
        Assert.Contains(records, r => r.SoftMaskedCount > 0);
        Assert.Contains(records, r => r.AmbiguousCount > 0);
    }

    [Fact]
    public void Chunks_ConcatenateToTheRecords()
    {
        var rnd = new Random(504);
        using var dir = new GenomicsIoKit.TempDir();
        for (int trial = 0; trial < 10; trial++)
        {
            var (text, truth) = RandomFasta.Make(rnd);
            string path = dir.File($"c{trial}.fa");
            File.WriteAllText(path, text);
            int chunk = 1 + rnd.Next(500);
            var perRecord = new List<(string Name, List<ReadOnlyMemory<byte>> Chunks)>();
            long lastHeaderLine = -1;
            foreach (var (h, bases) in FastaReader.Chunks(path, chunk))
            {
                if (h.LineNumber == lastHeaderLine) perRecord[^1].Chunks.Add(bases);
                else perRecord.Add((h.Name, [bases]));
                lastHeaderLine = h.LineNumber;
            }
            Assert.Equal(truth.Select(t => t.Name), perRecord.Select(p => p.Name));
            for (int r = 0; r < truth.Count; r++)
            {
                var chunks = perRecord[r].Chunks;
                Assert.Equal(truth[r].Bases, string.Concat(chunks.Select(c => Encoding.ASCII.GetString(c.Span))));
                for (int k = 0; k + 1 < chunks.Count; k++) Assert.Equal(chunk, chunks[k].Length);
                Assert.True(chunks[^1].Length > 0 || truth[r].Bases.Length == 0);
            }
        }
    }

    [Fact]
    public void Writer_RoundTripsAndWrapsLines()
    {
        var rnd = new Random(505);
        using var dir = new GenomicsIoKit.TempDir();
        for (int trial = 0; trial < 12; trial++)
        {
            var records = new List<(string Name, ReadOnlyMemory<byte> Bases)>();
            int count = 1 + rnd.Next(4);
            for (int r = 0; r < count; r++)
            {
                var b = new byte[rnd.Next(4) == 0 ? 0 : rnd.Next(2000)];
                for (int i = 0; i < b.Length; i++) b[i] = (byte)"ACGTNacgtnRYkm"[rnd.Next(14)];
                records.Add(($"r{r} description {r}", b));
            }
            int width = rnd.Next(5) == 0 ? 0 : 1 + rnd.Next(100);
            string path = dir.File(trial % 2 == 0 ? "out.fa" : "out.fa.gz");
            File.Delete(dir.File(trial % 2 == 0 ? "out.fa.gz" : "out.fa"));
            File.WriteAllText(path, "old contents"); // overwritten atomically
            FastaWriter.Write(path, records, width);
            Assert.Single(Directory.GetFiles(dir.Path)); // no temp file left behind

            byte[] raw = File.ReadAllBytes(path);
            Assert.Equal(trial % 2 == 1, raw.Length >= 2 && raw[0] == 0x1f && raw[1] == 0x8b);
            string text = trial % 2 == 0 ? Encoding.ASCII.GetString(raw)
                : new StreamReader(new GZipStream(new MemoryStream(raw), CompressionMode.Decompress)).ReadToEnd();
            // Independent look at the layout: every sequence line is `width` long except the last of its record.
            string[] lines = text.Split('\n');
            Assert.Equal("", lines[^1]);
            for (int i = 0; i + 1 < lines.Length; i++)
            {
                if (lines[i].StartsWith('>')) continue;
                bool lastOfRecord = i + 2 == lines.Length || lines[i + 1].StartsWith('>');
                if (width > 0) Assert.True(lastOfRecord ? lines[i].Length <= width && lines[i].Length > 0 : lines[i].Length == width);
            }
            var back = FastaReader.ReadFile(path);
            Assert.Equal(records.Count, back.Count);
            for (int r = 0; r < records.Count; r++)
            {
                Assert.Equal(records[r].Name, back[r].Name + " " + back[r].Description);
                string expected = new(Encoding.ASCII.GetString(records[r].Bases.Span).ToUpperInvariant()
                    .Select(c => "ACGTN".Contains(c) ? c : 'N').ToArray());
                Assert.Equal(expected, Encoding.ASCII.GetString(back[r].Bases));
            }
        }
    }

    [Fact]
    public void Writer_RejectsBadNamesAndBases()
    {
        using var dir = new GenomicsIoKit.TempDir();
        Assert.Throws<ArgumentException>(() => FastaWriter.Write(dir.File("x.fa"), [("", new byte[] { (byte)'A' })]));
        Assert.Throws<ArgumentException>(() => FastaWriter.Write(dir.File("x.fa"), [("a\nb", new byte[] { (byte)'A' })]));
        var e = Assert.Throws<ArgumentException>(() => FastaWriter.Write(dir.File("x.fa"), [("a", "AC-T"u8.ToArray())]));
        Assert.Contains("'-'", e.Message);
        Assert.Empty(Directory.GetFiles(dir.Path)); // nothing half-written
    }

    /// <summary>A stream that generates one long FASTA record on the fly (no file), tracking what it emitted.</summary>
    sealed class GeneratedFastaStream : Stream
    {
        readonly long _bases;
        readonly int _width;
        readonly byte[] _header;
        long _emitted;      // bases emitted
        int _headerPos;
        int _col;
        ulong _state;
        public ulong Hash = 14695981039346656037UL; // FNV-1a 64 of the normalised bases, computed here
        public long Soft, Ambiguous;

        public GeneratedFastaStream(long bases, int width, ulong seed)
        {
            _bases = bases;
            _width = width;
            _state = seed;
            _header = ">big generated record\r\n"u8.ToArray();
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> dst)
        {
            int o = 0;
            while (o < dst.Length && _headerPos < _header.Length) dst[o++] = _header[_headerPos++];
            while (o < dst.Length && _emitted < _bases)
            {
                if (_col == _width)
                {
                    dst[o++] = (byte)'\n';
                    _col = 0;
                    continue;
                }
                _state ^= _state << 13;
                _state ^= _state >> 7;
                _state ^= _state << 17;
                uint r = (uint)(_state >> 32);
                byte normal;
                byte c;
                uint pick = r % 64;
                if (pick < 60) c = normal = (byte)"ACGT"[(int)(pick & 3)];
                else if (pick == 60) c = normal = (byte)'N';
                else { c = (byte)"RYK"[(int)(pick - 61)]; normal = (byte)'N'; Ambiguous++; }
                if (((r >> 8) & 7) == 0) { c = (byte)(c | 0x20); Soft++; }
                dst[o++] = c;
                Hash = (Hash ^ normal) * 1099511628211UL;
                _emitted++;
                _col++;
            }
            return o;
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    [Fact]
    public void Streams_A20MbpRecord_WithFlatMemory()
    {
        const long length = 20_000_000;
        var gen = new GeneratedFastaStream(length, 61, 0x9E3779B97F4A7C15UL);
        using var reader = new FastaReader(gen, "generated");
        Assert.True(reader.NextRecord(out var h));
        Assert.Equal("big", h.Name);
        var buf = new byte[1 << 16];
        ulong hash = 14695981039346656037UL;
        long total = 0;
        long allocatedBefore = GC.GetAllocatedBytesForCurrentThread();
        int n;
        while ((n = reader.ReadBases(buf)) > 0)
        {
            for (int i = 0; i < n; i++) hash = (hash ^ buf[i]) * 1099511628211UL;
            total += n;
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - allocatedBefore;
        Assert.Equal(length, total);
        Assert.Equal(length, reader.Length);
        Assert.Equal(gen.Hash, hash);
        Assert.Equal(gen.Soft, reader.SoftMaskedCount);
        Assert.Equal(gen.Ambiguous, reader.AmbiguousCount);
        Assert.True(allocated < 1 << 20, $"streaming 20 Mbp allocated {allocated} bytes; memory must not grow with the record");
        Assert.False(reader.NextRecord(out _));
    }

    [Fact]
    public void LargeGzip_ManyDeflateSlices_ReadsExactly()
    {
        // ~2 MB of text in one member plus a bgzip-style copy: exercises the decoder's slice bookkeeping and CRC.
        var gen = new GeneratedFastaStream(2_000_000, 80, 12345);
        var text = new MemoryStream();
        gen.CopyTo(text);
        byte[] bytes = text.ToArray();
        using var dir = new GenomicsIoKit.TempDir();
        foreach (var (name, data) in new[] { ("one.fa.gz", GenomicsIoKit.Gzip(bytes)), ("bgzf.fa.gz", GenomicsIoKit.Bgzf(bytes, 65280)) })
        {
            string path = dir.File(name);
            File.WriteAllBytes(path, data);
            var all = FastaReader.ReadFile(path);
            Assert.Single(all);
            ulong hash = 14695981039346656037UL;
            foreach (byte b in all[0].Bases) hash = (hash ^ b) * 1099511628211UL;
            Assert.Equal(gen.Hash, hash);
            Assert.Equal(gen.Soft, all[0].SoftMaskedCount);
        }
    }

    static void Consume(string path)
    {
        using var reader = FastaReader.Open(path);
        var buf = new byte[37];
        while (reader.NextRecord(out _))
            while (reader.ReadBases(buf) > 0) { }
    }

    [Theory]
    [InlineData("ACGT\n>r\nACGT\n", 1, "sequence data before the first '>' header")]
    [InlineData("\n\r\n  \nacgt\n>r\nACGT\n", 4, "sequence data before the first '>' header")]
    [InlineData(">\nACGT\n", 1, "empty name")]
    [InlineData(">ok\nACGT\n>   \nACGT\n", 3, "empty name")]
    [InlineData(">r1\nACGT\nAC-T\n", 3, "invalid character '-' in sequence of record r1")]
    [InlineData(">r1\r\nACGT\r\nAC*T\r\n", 3, "invalid character '*' in sequence of record r1")]
    [InlineData(">r1\nAC\n>r2 x\nACGT\nA.GT", 5, "invalid character '.' in sequence of record r2")]
    [InlineData(">r1\nACGT7\n", 2, "invalid character '7'")]
    [InlineData(">r1\nACGU\n", 2, "invalid character 'U'")]
    [InlineData(">r1\nACGX\n", 2, "invalid character 'X'")]
    [InlineData(">r1\nAC>G\n", 2, "invalid character '>'")]
    [InlineData(">r1\nAC\u00e9G\n", 2, "invalid character 0xC3")]
    public void Malformed_ReportsFileLineAndReason(string text, int line, string reason)
    {
        using var dir = new GenomicsIoKit.TempDir();
        // The reference parser agrees on the line (for the cases it models).
        string path = dir.File("bad.fa");
        File.WriteAllText(path, text);
        var e = Record.Exception(() => Consume(path));
        GenomicsIoKit.AssertError(e!, path, line, reason);
        // Same through gzip and through a stream with a display name.
        string gz = dir.File("bad.fa.gz");
        File.WriteAllBytes(gz, GenomicsIoKit.Gzip(Encoding.UTF8.GetBytes(text)));
        GenomicsIoKit.AssertError(Record.Exception(() => Consume(gz))!, gz, line, reason);
    }

    [Fact]
    public void Malformed_ReferenceParserAgreesOnLines()
    {
        var rnd = new Random(507);
        for (int trial = 0; trial < 40; trial++)
        {
            var (text, _) = RandomFasta.Make(rnd, maxRecords: 3, maxLength: 300);
            // Put one bad character somewhere in a sequence line.
            var lines = text.Split('\n');
            var seqLines = Enumerable.Range(0, lines.Length).Where(i => lines[i].TrimEnd('\r').Length > 0 && !lines[i].StartsWith('>')).ToList();
            if (seqLines.Count == 0) continue;
            int li = seqLines[rnd.Next(seqLines.Count)];
            string l = lines[li].TrimEnd('\r');
            int at = rnd.Next(l.Length);
            char bad = "-*.0X!"[rnd.Next(6)];
            lines[li] = l[..at] + bad + l[(at + 1)..] + (lines[li].EndsWith('\r') ? "\r" : "");
            string corrupted = string.Join('\n', lines);
            var refError = Assert.Throws<FormatException>(() => ReferenceFasta.Parse(corrupted)).Message.Split('|');
            using var reader = new FastaReader(new MemoryStream(Encoding.ASCII.GetBytes(corrupted)), "mem.fa");
            var e = Record.Exception(() => reader.ReadAll().ToList());
            GenomicsIoKit.AssertError(e!, "mem.fa", long.Parse(refError[0]), $"invalid character '{bad}'");
        }
    }

    [Fact]
    public void TruncatedGzip_IsAnError_WhereverItIsCut()
    {
        var rnd = new Random(508);
        var (text, _) = RandomFasta.Make(rnd, maxRecords: 4, maxLength: 20000);
        byte[] bytes = Encoding.ASCII.GetBytes(text);
        byte[] gz = GenomicsIoKit.Gzip(bytes);
        byte[] members = GenomicsIoKit.GzipMembers(bytes, rnd, 3);
        using var dir = new GenomicsIoKit.TempDir();
        var cuts = new List<(byte[] Data, int Keep)>
        {
            (gz, gz.Length / 2), (gz, gz.Length - 1), (gz, gz.Length - 4), (gz, gz.Length - 8), (gz, gz.Length - 9),
            (gz, 5), (gz, 10), (gz, 12), (members, members.Length / 2), (members, members.Length - 3),
        };
        for (int k = 0; k < 8; k++) cuts.Add((gz, 2 + rnd.Next(gz.Length - 2)));
        foreach (var (data, keep) in cuts)
        {
            string path = dir.File($"cut{keep}.fa.gz");
            File.WriteAllBytes(path, data[..keep]);
            var e = Record.Exception(() => Consume(path));
            Assert.IsType<InvalidDataException>(e);
            Assert.True(e!.Message.StartsWith($"{path}: truncated gzip stream"), $"cut at {keep} of {data.Length}: {e.Message}");
        }
        // A whole file with a corrupted CRC is corrupt, not truncated.
        byte[] badCrc = (byte[])gz.Clone();
        badCrc[^6] ^= 0x55;
        string crcPath = dir.File("crc.fa.gz");
        File.WriteAllBytes(crcPath, badCrc);
        var crcError = Record.Exception(() => Consume(crcPath));
        Assert.IsType<InvalidDataException>(crcError);
        Assert.StartsWith($"{crcPath}: corrupt gzip stream", crcError!.Message);
        // Garbage after the data is reported; zero padding is not.
        string garbage = dir.File("garbage.fa.gz");
        File.WriteAllBytes(garbage, [.. gz, .. "junk"u8]);
        Assert.Contains("corrupt gzip stream", Record.Exception(() => Consume(garbage))!.Message);
        string padded = dir.File("padded.fa.gz");
        File.WriteAllBytes(padded, [.. gz, 0, 0, 0, 0]);
        Consume(padded);
    }

    [Fact]
    public void CorruptGzip_IsAnInvalidDataExceptionNamingTheFile()
    {
        var rnd = new Random(509);
        var (text, _) = RandomFasta.Make(rnd, maxRecords: 2, maxLength: 20000);
        byte[] gz = GenomicsIoKit.Gzip(Encoding.ASCII.GetBytes(text));
        using var dir = new GenomicsIoKit.TempDir();
        for (int k = 0; k < 10; k++)
        {
            byte[] bad = (byte[])gz.Clone();
            int at = 10 + rnd.Next(bad.Length - 18);
            bad[at] ^= (byte)(1 + rnd.Next(255));
            string path = dir.File($"flip{k}.fa.gz");
            File.WriteAllBytes(path, bad);
            var e = Record.Exception(() => Consume(path));
            // Depending on the byte, the inflater rejects the data, the CRC check fails, the data runs past the end
            // (truncated), or a changed byte is reported as an invalid base first: always an error naming the file.
            Assert.IsType<InvalidDataException>(e);
            Assert.StartsWith($"{path}:", e!.Message);
        }
    }

    [Fact]
    public void GzipHeaderOptionalFields_AreSkipped()
    {
        var rnd = new Random(510);
        var (text, truth) = RandomFasta.Make(rnd);
        byte[] data = GenomicsIoKit.GzipWithNameAndComment(Encoding.ASCII.GetBytes(text));
        using var reader = new FastaReader(new TrickleStream(data, rnd, 5), "named.gz");
        AssertSame(truth, reader.ReadAll().ToList());
    }

    [Fact]
    public void EmptyInputs()
    {
        using (var reader = new FastaReader(new MemoryStream(), "empty.fa")) Assert.False(reader.NextRecord(out _));
        using (var reader = new FastaReader(new MemoryStream(GenomicsIoKit.BgzfEof), "empty.fa.gz")) Assert.False(reader.NextRecord(out _));
        using (var reader = new FastaReader(new MemoryStream("\n\r\n"u8.ToArray()), "blank.fa")) Assert.False(reader.NextRecord(out _));
        using (var reader = new FastaReader(new MemoryStream("\uFEFF>bom\nAC\n"u8.ToArray()), "bom.fa"))
        {
            Assert.True(reader.NextRecord(out var h));
            Assert.Equal("bom", h.Name);
        }
        List<FastaRecord> only;
        using (var reader = new FastaReader(new MemoryStream(">e1\n>e2 d\n>e3"u8.ToArray()), "mem.fa")) only = reader.ReadAll().ToList();
        Assert.Equal(["e1", "e2", "e3"], only.Select(r => r.Name));
        Assert.All(only, r => Assert.Empty(r.Bases));
    }

    [Fact]
    public void MissingFile_IsFileNotFoundNamingThePath()
    {
        string path = Path.Combine(Path.GetTempPath(), "ssm-no-such-dir-" + Guid.NewGuid().ToString("N"), "x.fa");
        var e = Assert.Throws<FileNotFoundException>(() => FastaReader.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Throws<FileNotFoundException>(() => FastqReader.Open(path));
        Assert.Throws<FileNotFoundException>(() => VcfReader.Open(path));
    }
}

public class FastqTests
{
    sealed record Truth(string Name, string Bases, byte[] Quality, long Soft, long Ambiguous);

    static (string Text, List<Truth> Records) Make(Random rnd)
    {
        var sb = new StringBuilder();
        var list = new List<Truth>();
        string nl = rnd.Next(2) == 0 ? "\n" : "\r\n";
        int count = rnd.Next(30);
        for (int r = 0; r < count; r++)
        {
            string name = $"read{r}/{1 + rnd.Next(2)}";
            int len = rnd.Next(6) == 0 ? 0 : rnd.Next(300);
            var raw = new StringBuilder();
            var norm = new StringBuilder();
            long soft = 0, amb = 0;
            var q = new byte[len];
            var qs = new StringBuilder();
            for (int i = 0; i < len; i++)
            {
                char c = "ACGTNRYacgtnk"[rnd.Next(13)];
                raw.Append(c);
                char u = char.ToUpperInvariant(c);
                if (c != u) soft++;
                if (u is 'R' or 'Y' or 'K') { amb++; u = 'N'; }
                norm.Append(u);
                q[i] = (byte)rnd.Next(94);
                qs.Append((char)(q[i] + 33));
            }
            sb.Append('@').Append(name).Append(rnd.Next(2) == 0 ? " extra words" : "").Append(nl);
            sb.Append(raw).Append(nl);
            sb.Append('+').Append(rnd.Next(2) == 0 ? name : "").Append(nl);
            sb.Append(qs);
            if (r + 1 < count || rnd.Next(2) == 0) sb.Append(nl);
            list.Add(new Truth(name, norm.ToString(), q, soft, amb));
        }
        return (sb.ToString(), list);
    }

    [Fact]
    public void RandomFiles_ReadBack_PlainAndGzip()
    {
        var rnd = new Random(601);
        for (int trial = 0; trial < 30; trial++)
        {
            var (text, truth) = Make(rnd);
            byte[] bytes = Encoding.ASCII.GetBytes(text);
            byte[] stored = trial % 3 == 0 ? bytes : trial % 3 == 1 ? GenomicsIoKit.Gzip(bytes) : GenomicsIoKit.Bgzf(bytes, 1 + rnd.Next(5000));
            using var reader = new FastqReader(new TrickleStream(stored, rnd, 1 + rnd.Next(64)), "reads.fq");
            var got = reader.Records().ToList();
            Assert.Equal(truth.Count, got.Count);
            for (int i = 0; i < truth.Count; i++)
            {
                Assert.Equal(truth[i].Name, got[i].Name);
                Assert.Equal(truth[i].Bases, Encoding.ASCII.GetString(got[i].Bases));
                Assert.Equal(truth[i].Quality, got[i].Quality);
                Assert.Equal(truth[i].Soft, got[i].SoftMaskedCount);
                Assert.Equal(truth[i].Ambiguous, got[i].AmbiguousCount);
                Assert.Equal(4L * i + 1, got[i].LineNumber);
            }
            Assert.Equal(truth.Sum(t => t.Soft), reader.SoftMaskedCount);
            Assert.Equal(truth.Sum(t => t.Ambiguous), reader.AmbiguousCount);
            Assert.Equal(truth.Count, reader.RecordCount);
        }
    }

    [Fact]
    public void Fixture_Reads()
    {
        string path = GenomicsIoKit.Fixture("example.fq");
        // Independent: the fixture's lines taken four at a time.
        string[] lines = File.ReadAllLines(path);
        using var reader = FastqReader.Open(path);
        var got = reader.Records().ToList();
        Assert.Equal(lines.Length / 4, got.Count);
        for (int i = 0; i < got.Count; i++)
        {
            Assert.Equal(lines[4 * i][1..].Split(' ')[0], got[i].Name);
            string expected = new(lines[4 * i + 1].ToUpperInvariant().Select(c => "ACGTN".Contains(c) ? c : 'N').ToArray());
            Assert.Equal(expected, Encoding.ASCII.GetString(got[i].Bases));
            Assert.Equal(lines[4 * i + 3].Select(c => (byte)(c - 33)), got[i].Quality);
        }
    }

    [Theory]
    [InlineData("@r1\nACGT\n+\nIIII\nr2\nACGT\n+\nIIII\n", 5, "expected '@' at the start of a FASTQ record, found 'r'")]
    [InlineData("@r1\nACGT\nIIII\n", 3, "expected a '+' line after the sequence of record r1")]
    [InlineData("@r1\nACGT\nACGT\n+\nIIII\n", 3, "multi-line FASTQ records are not supported")]
    [InlineData("@r1\nACGT\n+\nIII\n", 4, "quality length 3 differs from sequence length 4 in record r1")]
    [InlineData("@r1\r\nACGT\r\n+\r\nIIIII\r\n", 4, "quality length 5 differs from sequence length 4")]
    [InlineData("@r1\nACGT\n+\nII\u007fI\n", 4, "invalid quality character 0x7F in record r1")]
    [InlineData("@r1\nACGT\n+\nII I\n", 4, "invalid quality character 0x20 in record r1")]
    [InlineData("@r1\nAC-T\n+\nIIII\n", 2, "invalid character '-' in sequence of record r1")]
    [InlineData("@r1\nACGT\n+r2\nIIII\n", 3, "'+' line names 'r2' but the record is 'r1'")]
    [InlineData("@r1\nACGT\n+\nIIII\n@r2\nACGT\n", 7, "record r2 is truncated: missing '+' line")]
    [InlineData("@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\n", 8, "record r2 is truncated: missing quality line")]
    [InlineData("@r1", 2, "record r1 is truncated: missing sequence line")]
    [InlineData("@ \nACGT\n+\nIIII\n", 1, "empty name")]
    public void Malformed_ReportsFileLineAndReason(string text, int line, string reason)
    {
        using var dir = new GenomicsIoKit.TempDir();
        foreach (bool gz in new[] { false, true })
        {
            string path = dir.File(gz ? "bad.fq.gz" : "bad.fq");
            byte[] bytes = Encoding.UTF8.GetBytes(text);
            File.WriteAllBytes(path, gz ? GenomicsIoKit.Gzip(bytes) : bytes);
            var e = Record.Exception(() =>
            {
                using var reader = FastqReader.Open(path);
                reader.Records().ToList();
            });
            GenomicsIoKit.AssertError(e!, path, line, reason);
        }
    }

    [Fact]
    public void TruncatedGzip_IsAnError()
    {
        var rnd = new Random(602);
        string text;
        do text = Make(rnd).Text; while (text.Length < 4000);
        byte[] gz = GenomicsIoKit.Gzip(Encoding.ASCII.GetBytes(text));
        using var reader = new FastqReader(new MemoryStream(gz[..(gz.Length / 2)]), "half.fq.gz");
        var e = Record.Exception(() => reader.Records().ToList());
        Assert.IsType<InvalidDataException>(e);
        Assert.StartsWith("half.fq.gz: truncated gzip stream", e!.Message);
    }

    [Fact]
    public void GzipHeaderOptionalFields_AreSkipped()
    {
        byte[] data = GenomicsIoKit.GzipWithNameAndComment("@a\nAC\n+\n!~\n"u8.ToArray());
        using var reader = new FastqReader(new MemoryStream(data), "x");
        var r = Assert.Single(reader.Records().ToList());
        Assert.Equal([0, 93], r.Quality);
    }
}
