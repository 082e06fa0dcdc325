// Streaming FASTA / FASTQ readers and a FASTA writer (issue 5).
//
// Everything here works on bytes, never on per-base strings: a chromosome is read through ReadBases into a caller's
// buffer, so memory stays flat whatever the record size. Input is plain text or gzip (detected by the magic bytes
// 1f 8b, not by the file name), including multi-member gzip such as bgzip output; a truncated gzip file is an error,
// not a silently shorter sequence (System.IO.Compression alone returns a short stream there, see GzipDecoder).
//
// Base normalisation (shared by FASTA and FASTQ):
//   A C G T N              -> themselves
//   a c g t n              -> upper case, counted in SoftMaskedCount (soft-masked repeats, as in UCSC/Ensembl files)
//   R Y S W K M B D H V    -> N, counted in AmbiguousCount (IUPAC ambiguity codes; lower case counts in both)
//   anything else          -> InvalidDataException "PATH:LINE: invalid character 'X' in sequence of record NAME"
//                             (gaps '-', '*', '.', digits, U, letters outside IUPAC; '>' inside a line)
// Spaces, tabs and '\r' inside sequence lines are skipped (Windows line endings, trailing blanks).

using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Ssm.Backbone.IO;

namespace Ssm.Genomics;

/// <summary>One FASTA header line: the first word after '&gt;' and the rest; LineNumber is 1-based.</summary>
public readonly record struct FastaHeader(string Name, string Description, long LineNumber);

/// <summary>A whole FASTA record in memory (normalised bases, see the file comment). For small files only.</summary>
public sealed record FastaRecord(string Name, string Description, byte[] Bases)
{
    public long LineNumber { get; init; }
    public long SoftMaskedCount { get; init; }
    public long AmbiguousCount { get; init; }
}

/// <summary>
/// Streaming FASTA reader: <see cref="NextRecord"/> moves to a record, <see cref="ReadBases"/> fills a buffer with its
/// normalised bases until it returns 0. Any line width, LF or CRLF, blank lines, a last line without newline,
/// header-only records (length 0). Errors are InvalidDataException "PATH:LINE: reason".
/// </summary>
public sealed class FastaReader : IDisposable
{
    readonly TextInput _in;
    bool _inRecord;          // NextRecord returned true and the record has not been left
    bool _recordDone = true; // ReadBases reached the end of the current record
    bool _atLineStart = true;
    bool _finished;
    FastaHeader _header;
    long _length, _soft, _amb;
    byte[]? _skipBuffer;

    /// <summary>Opens a file (gzip or plain, by content); "-" reads standard input.</summary>
    public static FastaReader Open(string path) => new(TextInput.Open(path));

    /// <summary>Reads FASTA from a stream (gzip or plain, by content); <paramref name="name"/> is used in messages.</summary>
    public FastaReader(Stream stream, string name, bool leaveOpen = false) : this(new TextInput(stream, name, leaveOpen)) { }

    FastaReader(TextInput input) => _in = input;

    /// <summary>The path or display name used in error messages.</summary>
    public string Name => _in.Name;

    /// <summary>The current record's header (default before the first NextRecord).</summary>
    public FastaHeader Current => _header;

    /// <summary>Bases of the current record returned so far; its length once ReadBases has returned 0.</summary>
    public long Length => _length;

    /// <summary>Lower-case (soft-masked) bases of the current record so far.</summary>
    public long SoftMaskedCount => _soft;

    /// <summary>IUPAC ambiguity codes (R Y S W K M B D H V, any case) of the current record so far, returned as N.</summary>
    public long AmbiguousCount => _amb;

    /// <summary>True once ReadBases has returned 0 for the current record (its statistics are then final).</summary>
    public bool RecordComplete => _recordDone;

    /// <summary>
    /// Moves to the next record, skipping (and validating) whatever is left of the current one. Returns false at the
    /// end of the input. Statistics are reset for the new record.
    /// </summary>
    public bool NextRecord(out FastaHeader header)
    {
        if (_inRecord && !_recordDone)
        {
            _skipBuffer ??= new byte[1 << 16];
            while (ReadBases(_skipBuffer) > 0) { }
        }
        _inRecord = false;
        header = default;
        if (_finished) return false;
        while (true)
        {
            if (!_in.EnsureData())
            {
                _finished = true;
                return false;
            }
            if (_in.Buf[_in.Pos] == (byte)'>') break;
            // Records end only at a '>' line start or at the end of input, so this is before the first header.
            long ln = _in.Line;
            _in.ReadLine(out var line);
            if (!TextInput.IsBlank(line)) throw _in.Error(ln, "sequence data before the first '>' header");
        }
        long headerLine = _in.Line;
        _in.ReadLine(out var text);
        var (name, description) = TextInput.SplitTitle(text[1..]);
        if (name.Length == 0) throw _in.Error(headerLine, "empty name in '>' header line");
        _header = header = new FastaHeader(name, description, headerLine);
        _inRecord = true;
        _recordDone = false;
        _atLineStart = true;
        _length = _soft = _amb = 0;
        return true;
    }

    /// <summary>
    /// Fills <paramref name="buffer"/> with the next normalised bases (upper-case A C G T N) of the current record;
    /// returns fewer than buffer.Length only at the end of the record, and 0 once the record is exhausted.
    /// </summary>
    public int ReadBases(Span<byte> buffer)
    {
        if (buffer.Length == 0) throw new ArgumentException("ReadBases needs a non-empty buffer", nameof(buffer));
        if (!_inRecord || _recordDone) return 0;
        long[] table = BaseCodes.Packed;
        int o = 0;
        long counts = 0; // soft-masked count in the low 32 bits, ambiguous count from bit 32 (see BaseCodes.Packed)
        while (o < buffer.Length)
        {
            if (_in.Pos >= _in.Len && !_in.Fill())
            {
                _recordDone = true;
                break;
            }
            byte[] src = _in.Buf;
            int pos = _in.Pos;
            if (_atLineStart)
            {
                if (src[pos] == (byte)'>')
                {
                    _recordDone = true;
                    break;
                }
                _atLineStart = false;
            }
            // Hot loop: one table lookup per byte; stops at the first byte that is not a base (newline, '\r', bad).
            int n = Math.Min(_in.Len - pos, buffer.Length - o);
            var s = src.AsSpan(pos, n);
            var d = buffer.Slice(o, n);
            int i = 0;
            for (; i < s.Length; i++)
            {
                long e = table[s[i]];
                if (e == 0) break;
                d[i] = (byte)e;
                counts += e >> 8;
            }
            o += i;
            pos += i;
            if (i < n)
            {
                byte b = src[pos];
                if (b == (byte)'\n')
                {
                    _in.Line++;
                    _atLineStart = true;
                }
                else if (b != (byte)'\r' && b != (byte)' ' && b != (byte)'\t')
                {
                    _in.Pos = pos;
                    Flush(o, counts);
                    throw _in.Error(_in.Line, $"invalid character {TextInput.Show(b)} in sequence of record {_header.Name}");
                }
                pos++;
            }
            _in.Pos = pos;
        }
        Flush(o, counts);
        return o;
    }

    void Flush(int bases, long counts)
    {
        _length += bases;
        _soft += (uint)counts;
        _amb += counts >> 32;
    }

    /// <summary>Materialises every remaining record (normalised bases). Use for small files only.</summary>
    public IEnumerable<FastaRecord> ReadAll()
    {
        var chunk = new byte[1 << 16];
        while (NextRecord(out var h))
        {
            byte[] acc = new byte[1 << 12];
            int len = 0;
            int n;
            while ((n = ReadBases(chunk)) > 0)
            {
                if ((long)len + n > Array.MaxLength)
                    throw _in.Error(h.LineNumber, $"record {h.Name} is too long to load into memory; stream it with ReadBases");
                if (len + n > acc.Length) Array.Resize(ref acc, (int)Math.Min(Array.MaxLength, Math.Max((long)acc.Length * 2, len + n)));
                chunk.AsSpan(0, n).CopyTo(acc.AsSpan(len));
                len += n;
            }
            yield return new FastaRecord(h.Name, h.Description, acc.AsSpan(0, len).ToArray())
            {
                LineNumber = h.LineNumber,
                SoftMaskedCount = _soft,
                AmbiguousCount = _amb,
            };
        }
    }

    /// <summary>All records of a (small) file in memory.</summary>
    public static List<FastaRecord> ReadFile(string path)
    {
        using var reader = Open(path);
        return reader.ReadAll().ToList();
    }

    /// <summary>
    /// Streams each record of a file as consecutive chunks of <paramref name="chunkSize"/> normalised bases (the last
    /// chunk of a record may be shorter; a header-only record yields one empty chunk). Each chunk is a fresh array,
    /// safe to keep.
    /// </summary>
    public static IEnumerable<(FastaHeader Header, ReadOnlyMemory<byte> Bases)> Chunks(string path, int chunkSize)
    {
        if (chunkSize < 1) throw new ArgumentException($"chunk size must be >= 1, got {chunkSize}", nameof(chunkSize));
        return ChunksIterator(path, chunkSize);
    }

    static IEnumerable<(FastaHeader Header, ReadOnlyMemory<byte> Bases)> ChunksIterator(string path, int chunkSize)
    {
        using var reader = Open(path);
        var scratch = new byte[chunkSize];
        while (reader.NextRecord(out var h))
        {
            bool any = false;
            int n;
            while ((n = reader.ReadBases(scratch)) > 0)
            {
                any = true;
                yield return (h, scratch.AsSpan(0, n).ToArray());
            }
            if (!any) yield return (h, ReadOnlyMemory<byte>.Empty);
        }
    }

    public void Dispose() => _in.Dispose();
}

/// <summary>Writes FASTA files (plain, or gzip when the path ends in .gz), atomically.</summary>
public static class FastaWriter
{
    /// <summary>
    /// Writes the records to <paramref name="path"/> through a temp file in the same folder renamed over the target.
    /// <paramref name="gzip"/> null: gzip when the path ends in ".gz". lineWidth 0: one line per record.
    /// Names may carry a description after a space. Bases are written as given (case kept) and must be IUPAC letters.
    /// </summary>
    public static void Write(string path, IEnumerable<(string Name, ReadOnlyMemory<byte> Bases)> records, int lineWidth = 60, bool? gzip = null)
    {
        ArgumentNullException.ThrowIfNull(records);
        if (lineWidth < 0) throw new ArgumentException($"line width must be >= 0, got {lineWidth}", nameof(lineWidth));
        bool gz = gzip ?? path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase);
        AtomicFile.Write(path, stream =>
        {
            if (!gz)
            {
                Write(stream, records, lineWidth);
                return;
            }
            using var z = new GZipStream(stream, CompressionLevel.Optimal, leaveOpen: true);
            Write(z, records, lineWidth);
        });
    }

    /// <summary>Writes the records as FASTA text to a stream (no compression, not closed).</summary>
    public static void Write(Stream stream, IEnumerable<(string Name, ReadOnlyMemory<byte> Bases)> records, int lineWidth = 60)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(records);
        if (lineWidth < 0) throw new ArgumentException($"line width must be >= 0, got {lineWidth}", nameof(lineWidth));
        // Not disposed: that would close the caller's stream (AtomicFile still has to flush it to disk).
        var output = new BufferedStream(stream, 1 << 16);
        foreach (var (name, bases) in records)
        {
            if (string.IsNullOrEmpty(name) || char.IsWhiteSpace(name[0]) || name.AsSpan().ContainsAny('\n', '\r'))
                throw new ArgumentException($"FASTA record name '{name}' is empty, starts with a space or contains a newline", nameof(records));
            var span = bases.Span;
            for (int i = 0; i < span.Length; i++)
                if (BaseCodes.Packed[span[i]] == 0)
                    throw new ArgumentException($"record {name}: byte {TextInput.Show(span[i])} at offset {i} is not a nucleotide code", nameof(records));
            output.WriteByte((byte)'>');
            output.Write(Encoding.UTF8.GetBytes(name));
            output.WriteByte((byte)'\n');
            int width = lineWidth == 0 ? Math.Max(1, span.Length) : lineWidth;
            for (int i = 0; i < span.Length; i += width)
            {
                output.Write(span.Slice(i, Math.Min(width, span.Length - i)));
                output.WriteByte((byte)'\n');
            }
        }
        output.Flush();
    }
}

/// <summary>One FASTQ record: normalised bases and phred qualities (character - 33).</summary>
public sealed record FastqRecord(string Name, byte[] Bases, byte[] Quality)
{
    public string Description { get; init; } = "";
    public long LineNumber { get; init; }
    public long SoftMaskedCount { get; init; }
    public long AmbiguousCount { get; init; }
}

/// <summary>
/// FASTQ reader for 4-line records (@title, sequence, '+' [title], quality), plain or gzip. Checks the '@' and '+'
/// lines, equal sequence and quality lengths, quality characters in '!'..'~', and normalises bases like FASTA.
/// Multi-line FASTQ is not supported. Errors are InvalidDataException "PATH:LINE: reason".
/// </summary>
public sealed class FastqReader : IDisposable
{
    readonly TextInput _in;

    /// <summary>Opens a file (gzip or plain, by content); "-" reads standard input.</summary>
    public static FastqReader Open(string path) => new(TextInput.Open(path));

    public FastqReader(Stream stream, string name, bool leaveOpen = false) : this(new TextInput(stream, name, leaveOpen)) { }

    FastqReader(TextInput input) => _in = input;

    public string Name => _in.Name;

    /// <summary>Records read so far.</summary>
    public long RecordCount { get; private set; }

    /// <summary>Lower-case bases over all records read so far.</summary>
    public long SoftMaskedCount { get; private set; }

    /// <summary>IUPAC ambiguity codes (returned as N) over all records read so far.</summary>
    public long AmbiguousCount { get; private set; }

    /// <summary>The remaining records, one at a time.</summary>
    public IEnumerable<FastqRecord> Records()
    {
        while (TryRead(out var record)) yield return record;
    }

    /// <summary>Reads the next record; false at the end of the input.</summary>
    public bool TryRead(out FastqRecord record)
    {
        record = null!;
        long ln;
        ReadOnlySpan<byte> line;
        do
        {
            ln = _in.Line;
            if (!_in.ReadLine(out line)) return false;
        } while (TextInput.IsBlank(line));
        if (line[0] != (byte)'@')
            throw _in.Error(ln, $"expected '@' at the start of a FASTQ record, found {TextInput.Show(line[0])}");
        string title = Encoding.UTF8.GetString(line[1..]).TrimEnd();
        var (name, description) = TextInput.SplitTitle(line[1..]);
        if (name.Length == 0) throw _in.Error(ln, "empty name in '@' header line");

        long seqLine = _in.Line;
        if (!_in.ReadLine(out line)) throw _in.Error(seqLine, $"record {name} is truncated: missing sequence line");
        var bases = new byte[line.Length];
        int bad = BaseCodes.Normalise(line, bases, out long soft, out long amb, out int written);
        if (bad >= 0)
            throw _in.Error(seqLine, $"invalid character {TextInput.Show(line[bad])} in sequence of record {name}");
        if (written != bases.Length) Array.Resize(ref bases, written);

        long plusLine = _in.Line;
        if (!_in.ReadLine(out line)) throw _in.Error(plusLine, $"record {name} is truncated: missing '+' line");
        if (line.Length == 0 || line[0] != (byte)'+')
        {
            string hint = BaseCodes.Normalise(line, new byte[line.Length], out _, out _, out _) < 0
                ? " (multi-line FASTQ records are not supported)" : "";
            throw _in.Error(plusLine, $"expected a '+' line after the sequence of record {name}{hint}");
        }
        if (line.Length > 1)
        {
            string repeated = Encoding.UTF8.GetString(line[1..]).TrimEnd();
            if (repeated != title && repeated != name)
                throw _in.Error(plusLine, $"'+' line names '{repeated}' but the record is '{name}'");
        }

        long qualLine = _in.Line;
        // A zero-length read at the very end may legitimately have its empty quality line without a newline.
        if (!_in.ReadLine(out line) && bases.Length > 0)
            throw _in.Error(qualLine, $"record {name} is truncated: missing quality line");
        var q = line.TrimEnd((byte)' ');
        if (q.Length != bases.Length)
            throw _in.Error(qualLine, $"quality length {q.Length} differs from sequence length {bases.Length} in record {name}");
        var quality = new byte[q.Length];
        for (int i = 0; i < q.Length; i++)
        {
            byte c = q[i];
            if (c < (byte)'!' || c > (byte)'~')
                throw _in.Error(qualLine, $"invalid quality character {TextInput.Show(c)} in record {name}");
            quality[i] = (byte)(c - 33);
        }
        RecordCount++;
        SoftMaskedCount += soft;
        AmbiguousCount += amb;
        record = new FastqRecord(name, bases, quality)
        {
            Description = description,
            LineNumber = ln,
            SoftMaskedCount = soft,
            AmbiguousCount = amb,
        };
        return true;
    }

    public void Dispose() => _in.Dispose();
}

/// <summary>The byte -> normalised base table shared by the FASTA and FASTQ readers.</summary>
internal static class BaseCodes
{
    /// <summary>
    /// Per input byte: 0 when not a nucleotide code; else the upper-case output base in bits 0..7, plus 1 &lt;&lt; 8 for a
    /// lower-case (soft-masked) letter and 1 &lt;&lt; 40 for an IUPAC ambiguity code. Adding entry &gt;&gt; 8 over a run
    /// counts both at once (soft-masked in the low 32 bits, ambiguous above).
    /// </summary>
    internal static readonly long[] Packed = Build();

    static long[] Build()
    {
        var t = new long[256];
        const long soft = 1L << 8, ambiguous = 1L << 40;
        foreach (char c in "ACGTN")
        {
            t[c] = c;
            t[char.ToLowerInvariant(c)] = c | soft;
        }
        foreach (char c in "RYSWKMBDHV")
        {
            t[c] = 'N' | ambiguous;
            t[char.ToLowerInvariant(c)] = 'N' | ambiguous | soft;
        }
        return t;
    }

    /// <summary>
    /// Normalises one line: returns the index of the first invalid byte, or -1. Spaces, tabs and '\r' are skipped, so
    /// <paramref name="written"/> may be smaller than the input.
    /// </summary>
    internal static int Normalise(ReadOnlySpan<byte> src, Span<byte> dst, out long soft, out long ambiguous, out int written)
    {
        long[] table = Packed;
        long counts = 0;
        int o = 0;
        for (int i = 0; i < src.Length; i++)
        {
            byte b = src[i];
            long e = table[b];
            if (e != 0)
            {
                dst[o++] = (byte)e;
                counts += e >> 8;
            }
            else if (b != (byte)' ' && b != (byte)'\t' && b != (byte)'\r')
            {
                soft = (uint)counts;
                ambiguous = counts >> 32;
                written = o;
                return i;
            }
        }
        soft = (uint)counts;
        ambiguous = counts >> 32;
        written = o;
        return -1;
    }
}

/// <summary>
/// Byte input shared by the genomic readers: a file or stream, gzip detected by its magic bytes, a refillable buffer
/// (Buf[Pos..Len)), the current 1-based line number, and "NAME:LINE: reason" errors.
/// </summary>
internal sealed class TextInput : IDisposable
{
    const int BufferSize = 1 << 16;
    public readonly string Name;
    public byte[] Buf = new byte[BufferSize];
    public int Pos, Len;
    /// <summary>1-based number of the line holding Buf[Pos]; readers advance it as they consume '\n'.</summary>
    public long Line = 1;
    readonly Stream _raw;
    readonly Stream _source; // _raw, or a GzipDecoder over it
    readonly bool _leaveOpen;
    readonly bool _gzip;
    bool _eof;
    byte[] _lineBuf = new byte[256];

    /// <summary>Opens a path ("-" = standard input); FileNotFoundException names the path.</summary>
    public static TextInput Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (path == "-") return new TextInput(Console.OpenStandardInput(), "<stdin>", leaveOpen: false);
        if (!File.Exists(path))
        {
            if (Directory.Exists(path)) throw new InvalidDataException($"{path}: is a directory, not a file");
            throw new FileNotFoundException($"{path}: no such file", path);
        }
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        try
        {
            return new TextInput(stream, path, leaveOpen: false);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    public TextInput(Stream stream, string name, bool leaveOpen)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Name = name;
        _raw = stream;
        _leaveOpen = leaveOpen;
        // Sniff the first two bytes: gzip is recognised by content so that misnamed files still work.
        int got = 0;
        while (got < 2)
        {
            int n = stream.Read(Buf, got, 2 - got);
            if (n == 0) break;
            got += n;
        }
        if (got == 2 && Buf[0] == 0x1f && Buf[1] == 0x8b)
        {
            _gzip = true;
            _source = new GzipDecoder(stream, Buf.AsSpan(0, 2));
        }
        else
        {
            _source = stream;
            Len = got;
            if (got == 0) _eof = true;
        }
        // A UTF-8 byte-order mark (some Windows editors write one) is not part of the first line.
        if (EnsureBytes(3) && Buf[Pos] == 0xEF && Buf[Pos + 1] == 0xBB && Buf[Pos + 2] == 0xBF) Pos += 3;
    }

    public InvalidDataException Error(long line, string reason) => new($"{Name}:{line}: {reason}");

    /// <summary>True when at least one unread byte is in Buf (refilling if needed).</summary>
    public bool EnsureData() => Pos < Len || Fill();

    bool EnsureBytes(int count)
    {
        while (Len - Pos < count)
            if (!FillMore()) return false;
        return true;
    }

    /// <summary>Refills an exhausted buffer (Pos == Len): false at the end of input.</summary>
    public bool Fill()
    {
        Pos = Len = 0;
        return FillMore();
    }

    // Appends to Buf after moving the unread bytes to the front; false when the input has ended.
    bool FillMore()
    {
        if (_eof) return false;
        if (Pos > 0)
        {
            Buffer.BlockCopy(Buf, Pos, Buf, 0, Len - Pos);
            Len -= Pos;
            Pos = 0;
        }
        int n;
        try
        {
            n = _source.Read(Buf, Len, Buf.Length - Len);
        }
        catch (InvalidDataException e) when (_gzip)
        {
            throw new InvalidDataException($"{Name}: {e.Message} (decompressed data ends in line {Line})", e);
        }
        if (n == 0)
        {
            _eof = true;
            return false;
        }
        Len += n;
        return true;
    }

    /// <summary>
    /// Reads one line without its '\n' and trailing '\r' and advances Line; false at the end of input. The span is
    /// valid until the next call.
    /// </summary>
    public bool ReadLine(out ReadOnlySpan<byte> line)
    {
        if (!EnsureData())
        {
            line = default;
            return false;
        }
        int nl = Buf.AsSpan(Pos, Len - Pos).IndexOf((byte)'\n');
        if (nl >= 0)
        {
            line = TrimCr(Buf.AsSpan(Pos, nl));
            Pos += nl + 1;
            Line++;
            return true;
        }
        // The line continues past the buffer: gather it in _lineBuf.
        int len = 0;
        while (true)
        {
            int avail = Len - Pos;
            nl = Buf.AsSpan(Pos, avail).IndexOf((byte)'\n');
            int take = nl >= 0 ? nl : avail;
            if (len + take > _lineBuf.Length) Array.Resize(ref _lineBuf, Math.Max(_lineBuf.Length * 2, len + take));
            Buf.AsSpan(Pos, take).CopyTo(_lineBuf.AsSpan(len));
            len += take;
            if (nl >= 0)
            {
                Pos += nl + 1;
                Line++;
                break;
            }
            Pos = Len;
            if (!Fill())
            {
                Line++;
                break;
            }
        }
        line = TrimCr(_lineBuf.AsSpan(0, len));
        return true;
    }

    static ReadOnlySpan<byte> TrimCr(ReadOnlySpan<byte> s) => s.Length > 0 && s[^1] == (byte)'\r' ? s[..^1] : s;

    public static bool IsBlank(ReadOnlySpan<byte> line) => line.IndexOfAnyExcept((byte)' ', (byte)'\t', (byte)'\r') < 0;

    /// <summary>Splits a header title into its first word and the rest (both trimmed).</summary>
    public static (string Name, string Description) SplitTitle(ReadOnlySpan<byte> title)
    {
        title = title.Trim(" \t\r"u8);
        int sp = title.IndexOfAny((byte)' ', (byte)'\t');
        if (sp < 0) return (Encoding.UTF8.GetString(title), "");
        return (Encoding.UTF8.GetString(title[..sp]), Encoding.UTF8.GetString(title[(sp + 1)..].Trim(" \t"u8)));
    }

    /// <summary>A byte for a message: 'X' when printable ASCII, else its hex code.</summary>
    public static string Show(byte b) => b is >= 0x21 and < 0x7f ? $"'{(char)b}'" : $"0x{b:X2}";

    public void Dispose()
    {
        if (_source != _raw) _source.Dispose();
        if (!_leaveOpen) _raw.Dispose();
    }
}

/// <summary>
/// Gzip decoder (RFC 1952) over DeflateStream that, unlike GZipStream, reports a truncated file: GZipStream treats the
/// end of its input as the end of the data, so a half-copied .gz reads as a shorter valid file. Here each member's
/// header is parsed by this class, its raw deflate data is inflated by DeflateStream, and its trailer (CRC-32 and length mod
/// 2^32 of the member's output) is checked by us. Members may be concatenated (bgzip/BGZF files are a series of
/// small members); trailing zero padding is ignored.
/// </summary>
internal sealed class GzipDecoder : ForwardOnlyStream
{
    // DeflateStream pulls its input from Feeder in slices of at most MaxSlice bytes. It only asks for more input once
    // it has consumed the previous slice, so when a member's deflate data ends, its end lies in the last slice (or
    // the one before): the 8-byte trailer is searched there, which also gives where the next member starts.
    const int MaxSlice = 1 << 14;
    readonly Stream _raw;
    byte[] _in = new byte[1 << 16];
    int _inPos, _inLen;
    bool _rawEof;
    int _prevSlice, _lastSlice; // start offsets in _in of the last two slices handed to the inflater
    DeflateStream? _inflate;
    uint _crc, _size;
    int _members;
    bool _done;
    bool _starved; // the inflater asked for input after the end of the file: the member's deflate data is cut

    public GzipDecoder(Stream raw, ReadOnlySpan<byte> alreadyRead)
    {
        _raw = raw;
        alreadyRead.CopyTo(_in);
        _inLen = alreadyRead.Length;
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        if (buffer.Length == 0) return 0;
        while (!_done)
        {
            if (_inflate == null && !BeginMember())
            {
                _done = true;
                break;
            }
            int n;
            try
            {
                n = _inflate!.Read(buffer);
            }
            catch (InvalidDataException e)
            {
                throw new InvalidDataException($"corrupt gzip stream in member {_members + 1} ({e.Message})", e);
            }
            if (n > 0)
            {
                _crc = Crc32.Update(_crc, buffer[..n]);
                _size += (uint)n;
                return n;
            }
            EndMember();
        }
        return 0;
    }

    bool BeginMember()
    {
        _prevSlice = _lastSlice = _inPos;
        if (!Ensure(1)) return false;
        if (_in[_inPos] != 0x1f)
        {
            // Anything after the last member: zero padding is tolerated (gzip does too), other data is an error.
            while (true)
            {
                if (_in.AsSpan(_inPos, _inLen - _inPos).IndexOfAnyExcept((byte)0) >= 0)
                    throw new InvalidDataException($"corrupt gzip stream: unexpected data after member {_members}");
                _inPos = _inLen;
                _prevSlice = _lastSlice = _inPos;
                if (!Ensure(1)) return false;
            }
        }
        if (!Ensure(10)) throw new InvalidDataException("truncated gzip stream");
        if (_in[_inPos + 1] != 0x8b) throw new InvalidDataException($"corrupt gzip stream: bad magic in member {_members + 1}");
        if (_in[_inPos + 2] != 8) throw new InvalidDataException($"corrupt gzip stream: unknown compression method {_in[_inPos + 2]}");
        byte flags = _in[_inPos + 3];
        if ((flags & 0xE0) != 0) throw new InvalidDataException("corrupt gzip stream: reserved header flags set");
        Skip(10);
        if ((flags & 0x04) != 0) // FEXTRA (bgzip stores its block size here)
        {
            if (!Ensure(2)) throw new InvalidDataException("truncated gzip stream");
            int xlen = _in[_inPos] | (_in[_inPos + 1] << 8);
            Skip(2);
            Skip(xlen);
        }
        if ((flags & 0x08) != 0) SkipZeroTerminated(); // FNAME
        if ((flags & 0x10) != 0) SkipZeroTerminated(); // FCOMMENT
        if ((flags & 0x02) != 0) Skip(2);              // FHCRC
        _prevSlice = _lastSlice = _inPos;
        _crc = 0;
        _size = 0;
        _starved = false;
        _inflate = new DeflateStream(new Feeder(this), CompressionMode.Decompress, leaveOpen: false);
        return true;
    }

    void EndMember()
    {
        _inflate!.Dispose();
        _inflate = null;
        if (_starved) throw new InvalidDataException("truncated gzip stream");
        // The trailer may extend past the last slice, and 2 more bytes show whether a member follows (indices shift).
        Ensure(_inPos - _prevSlice + 10, keepFrom: true);
        // Normally one position matches CRC and length. An empty member (CRC 0, length 0) has a trailer of 8 zero
        // bytes, which can also match one byte early inside its deflate data ("03 00"): prefer the match that is
        // followed by the end of input or another member's magic.
        int first = -1;
        bool sizeMatched = false;
        for (int p = _prevSlice; p <= _inPos && p + 8 <= _inLen; p++)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(_in.AsSpan(p + 4)) != _size) continue;
            sizeMatched = true;
            if (BinaryPrimitives.ReadUInt32LittleEndian(_in.AsSpan(p)) != _crc) continue;
            int next = p + 8;
            bool boundary = (next == _inLen && _rawEof) || (next + 1 < _inLen && _in[next] == 0x1f && _in[next + 1] == 0x8b);
            if (first < 0) first = p;
            if (boundary)
            {
                first = p;
                break;
            }
        }
        if (first >= 0)
        {
            _inPos = first + 8;
            _prevSlice = _lastSlice = _inPos;
            _members++;
            return;
        }
        if (sizeMatched) throw new InvalidDataException($"corrupt gzip stream: CRC mismatch in member {_members + 1}");
        // The deflate data ended but no trailer follows: cut within the 8 trailer bytes, or a damaged trailer.
        if (_rawEof && _inLen - _inPos < 8) throw new InvalidDataException($"truncated gzip stream (member {_members + 1} has no complete trailer)");
        throw new InvalidDataException($"corrupt gzip stream: length check failed in member {_members + 1}");
    }

    void Skip(int count)
    {
        while (count > 0)
        {
            if (!Ensure(1)) throw new InvalidDataException("truncated gzip stream");
            int k = Math.Min(count, _inLen - _inPos);
            _inPos += k;
            count -= k;
            _prevSlice = _lastSlice = _inPos;
        }
    }

    void SkipZeroTerminated()
    {
        while (true)
        {
            if (!Ensure(1)) throw new InvalidDataException("truncated gzip stream");
            int z = _in.AsSpan(_inPos, _inLen - _inPos).IndexOf((byte)0);
            _inPos = z >= 0 ? _inPos + z + 1 : _inLen;
            _prevSlice = _lastSlice = _inPos;
            if (z >= 0) return;
        }
    }

    // Makes at least `count` bytes available from the keep point (_prevSlice, which is <= _inPos) when keepFrom, else
    // from _inPos. Compacting moves the kept bytes to the front, shifting _inPos and the slice marks alike.
    bool Ensure(int count, bool keepFrom = false)
    {
        int start = keepFrom ? _prevSlice : _inPos;
        while (_inLen - start < count)
        {
            if (!Refill()) return false;
            start = keepFrom ? _prevSlice : _inPos;
        }
        return true;
    }

    bool Refill()
    {
        if (_rawEof) return false;
        int keep = Math.Min(_prevSlice, _inPos);
        if (keep > 0)
        {
            Buffer.BlockCopy(_in, keep, _in, 0, _inLen - keep);
            _inLen -= keep;
            _inPos -= keep;
            _prevSlice -= keep;
            _lastSlice -= keep;
        }
        if (_inLen == _in.Length) Array.Resize(ref _in, _in.Length * 2);
        int n = _raw.Read(_in, _inLen, _in.Length - _inLen);
        if (n == 0)
        {
            _rawEof = true;
            return false;
        }
        _inLen += n;
        return true;
    }

    // Hands the inflater the next slice of raw bytes, remembering where the last two slices began.
    int Feed(Span<byte> dst)
    {
        if (_inPos == _inLen && !Refill())
        {
            _starved = true;
            return 0;
        }
        int n = Math.Min(Math.Min(dst.Length, _inLen - _inPos), MaxSlice);
        _in.AsSpan(_inPos, n).CopyTo(dst);
        _prevSlice = _lastSlice;
        _lastSlice = _inPos;
        _inPos += n;
        return n;
    }

    sealed class Feeder(GzipDecoder owner) : ForwardOnlyStream
    {
        public override int Read(byte[] buffer, int offset, int count) => owner.Feed(buffer.AsSpan(offset, count));
        public override int Read(Span<byte> buffer) => owner.Feed(buffer);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _inflate?.Dispose();
        _inflate = null;
        base.Dispose(disposing);
    }
}

/// <summary>CRC-32 of gzip (IEEE 802.3, reflected polynomial 0xEDB88320), slicing by 8 bytes.</summary>
internal static class Crc32
{
    static readonly uint[] Table = Build();

    static uint[] Build()
    {
        var t = new uint[8 * 256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        // Table k advances a byte through k further zero bytes, so 8 bytes fold into 8 lookups.
        for (int k = 1; k < 8; k++)
            for (int i = 0; i < 256; i++)
                t[k * 256 + i] = (t[(k - 1) * 256 + i] >> 8) ^ t[t[(k - 1) * 256 + i] & 0xff];
        return t;
    }

    /// <summary>Continues a CRC (0 for the empty input) over <paramref name="data"/>.</summary>
    public static uint Update(uint crc, ReadOnlySpan<byte> data)
    {
        uint[] t = Table;
        uint c = ~crc;
        while (data.Length >= 8)
        {
            uint a = BinaryPrimitives.ReadUInt32LittleEndian(data) ^ c;
            uint b = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
            c = t[7 * 256 + (a & 0xff)] ^ t[6 * 256 + ((a >> 8) & 0xff)] ^ t[5 * 256 + ((a >> 16) & 0xff)] ^ t[4 * 256 + (a >> 24)]
              ^ t[3 * 256 + (b & 0xff)] ^ t[2 * 256 + ((b >> 8) & 0xff)] ^ t[256 + ((b >> 16) & 0xff)] ^ t[b >> 24];
            data = data[8..];
        }
        foreach (byte x in data) c = t[(c ^ x) & 0xff] ^ (c >> 8);
        return ~c;
    }
}

/// <summary>A stream that can only be read front to back: everything but Read says so.</summary>
internal abstract class ForwardOnlyStream : Stream
{
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
