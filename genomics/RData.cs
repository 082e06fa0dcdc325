using System.IO.Compression;
using System.Text;
using ICSharpCode.SharpZipLib.BZip2;

// A reader for R's .rda files, enough to convert the data sets R packages ship (mlbench's DNA, kernlab's
// promotergene) without R or python: `save()` output is "RDX2\n" or "RDX3\n" followed by R's XDR serialisation of a
// pairlist of named objects, the whole file gzip-, bzip2- or xz-compressed.
//
// Format reference: R Internals, section 1.8 "Serialization Formats", and R's src/main/serialize.c (read, not copied).
// Every item starts with a 32-bit big-endian flags word: bits 0-7 the SEXPTYPE, bit 8 "is object", bit 9 "has
// attributes", bit 10 "has tag", bits 12-27 the "levels" (gp) field; a few pseudo-types (NILVALUE_SXP = 254,
// REFSXP = 255, ...) stand for shared objects. Lengths are 32-bit (-1 then two words for long vectors).
//
// Decompression: gzip by System.IO.Compression, bzip2 by SharpZipLib (a dependency TorchSharp already brings), xz by
// the small LZMA2 decoder below (Xz), since .NET has none.
namespace Ssm.Genomics;

/// <summary>An R object read from a serialisation: a vector, a pairlist, a symbol or NULL, with attributes.</summary>
public abstract class RObject
{
    /// <summary>Attributes by name (names, class, levels, row.names, dim, ...), in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, RObject>> Attributes { get; internal set; } = [];

    /// <summary>The attribute called <paramref name="name"/>, or null.</summary>
    public RObject? Attribute(string name)
    {
        foreach (var kv in Attributes) if (kv.Key == name) return kv.Value;
        return null;
    }

    /// <summary>The "class" attribute's strings (empty if none).</summary>
    public IReadOnlyList<string?> Classes => (Attribute("class") as RStrings)?.Values ?? [];
}

/// <summary>R's NULL.</summary>
public sealed class RNull : RObject
{
    public static readonly RNull Instance = new();
    RNull() { }
}

/// <summary>A symbol (SYMSXP).</summary>
public sealed class RSymbol(string name) : RObject
{
    public string Name { get; } = name;
}

/// <summary>A pairlist (LISTSXP and its kin): tagged values in order.</summary>
public sealed class RPairList(IReadOnlyList<KeyValuePair<string?, RObject>> items) : RObject
{
    public IReadOnlyList<KeyValuePair<string?, RObject>> Items { get; } = items;
}

/// <summary>An integer or logical vector (INTSXP, LGLSXP); NA is <see cref="RInts.NA"/>.</summary>
public sealed class RInts(int[] values, bool logical) : RObject
{
    public const int NA = int.MinValue;
    public int[] Values { get; } = values;
    public bool IsLogical { get; } = logical;
    /// <summary>True for a factor (integer codes 1..levels with a "levels" attribute).</summary>
    public bool IsFactor => Attribute("levels") is RStrings;
}

/// <summary>A double vector (REALSXP); NA is a NaN.</summary>
public sealed class RDoubles(double[] values) : RObject
{
    public double[] Values { get; } = values;
}

/// <summary>A character vector (STRSXP); NA_character_ is null.</summary>
public sealed class RStrings(string?[] values) : RObject
{
    public string?[] Values { get; } = values;
}

/// <summary>A generic vector (VECSXP, EXPRSXP), e.g. a list or a data.frame.</summary>
public sealed class RList(RObject[] values) : RObject
{
    public RObject[] Values { get; } = values;
}

/// <summary>A data.frame as named columns of strings (factors become their levels, numbers invariant text).</summary>
public sealed record RDataFrame(IReadOnlyList<string> Names, IReadOnlyList<string?[]> Columns)
{
    public int Rows => Columns.Count == 0 ? 0 : Columns[0].Length;

    /// <summary>The column called <paramref name="name"/>; throws naming the column if there is none.</summary>
    public string?[] Column(string name)
    {
        for (int i = 0; i < Names.Count; i++) if (Names[i] == name) return Columns[i];
        string some = string.Join(", ", Names.Take(8)) + (Names.Count > 8 ? ", ..." : "");
        throw new KeyNotFoundException($"data.frame has no column '{name}' (columns: {some})");
    }
}

/// <summary>Reads .rda files (R's save(): "RDX2"/"RDX3" + XDR serialisation; gzip, bzip2, xz or uncompressed).</summary>
public static class RData
{
    /// <summary>The named objects of an .rda file.</summary>
    public static IReadOnlyDictionary<string, RObject> Load(string path)
    {
        byte[] raw;
        try { raw = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidDataException($"{path}: cannot read the .rda file ({e.Message})", e);
        }
        return Load(raw, path);
    }

    /// <summary>The named objects of .rda bytes (compressed or not); <paramref name="name"/> appears in errors.</summary>
    public static IReadOnlyDictionary<string, RObject> Load(byte[] fileBytes, string name = "<rda>")
    {
        byte[] b = Decompress(fileBytes, name);
        if (b.Length < 7 || !(b.AsSpan(0, 5).SequenceEqual("RDX2\n"u8) || b.AsSpan(0, 5).SequenceEqual("RDX3\n"u8)))
            throw new InvalidDataException($"{name}: not an .rda file (no RDX2/RDX3 header after decompression)");
        var top = Unserialize(b.AsSpan(5).ToArray(), name);
        var result = new Dictionary<string, RObject>();
        if (top is RNull) return result;
        if (top is not RPairList list)
            throw new InvalidDataException($"{name}: expected a pairlist of named objects at the top level");
        foreach (var kv in list.Items)
            result[kv.Key ?? throw new InvalidDataException($"{name}: an object without a name at the top level")] = kv.Value;
        return result;
    }

    /// <summary>Decompresses gzip, bzip2 or xz data (by the magic bytes); other bytes are returned as they are.</summary>
    public static byte[] Decompress(byte[] data, string name = "<data>")
    {
        try
        {
            if (data.Length >= 2 && data[0] == 0x1f && data[1] == 0x8b)
            {
                using var z = new GZipStream(new MemoryStream(data), CompressionMode.Decompress);
                using var o = new MemoryStream();
                z.CopyTo(o);
                return o.ToArray();
            }
            if (data.Length >= 3 && data[0] == (byte)'B' && data[1] == (byte)'Z' && data[2] == (byte)'h')
            {
                using var z = new BZip2InputStream(new MemoryStream(data));
                using var o = new MemoryStream();
                z.CopyTo(o);
                return o.ToArray();
            }
            if (Xz.IsXz(data)) return Xz.Decompress(data, name);
        }
        catch (Exception e) when (e is not InvalidDataException)
        {
            throw new InvalidDataException($"{name}: corrupt compressed data ({e.Message})", e);
        }
        return data;
    }

    /// <summary>Reads one serialised object: "X\n" (XDR), version 2 or 3 header, then the object.</summary>
    public static RObject Unserialize(byte[] b, string name = "<serialized>") => new Reader(b, name).ReadTop();

    /// <summary>Turns a data.frame (a VECSXP with class "data.frame") into string columns.</summary>
    public static RDataFrame ToDataFrame(RObject obj, string what = "object")
    {
        if (obj is not RList list || !obj.Classes.Contains("data.frame"))
            throw new InvalidDataException($"{what}: not a data.frame");
        var names = (obj.Attribute("names") as RStrings)?.Values
            ?? throw new InvalidDataException($"{what}: data.frame without names");
        if (names.Length != list.Values.Length) throw new InvalidDataException($"{what}: {names.Length} names for {list.Values.Length} columns");
        var cols = new List<string?[]>();
        for (int j = 0; j < list.Values.Length; j++) cols.Add(AsStrings(list.Values[j], $"{what}${names[j]}"));
        int n = cols.Count == 0 ? 0 : cols[0].Length;
        for (int j = 0; j < cols.Count; j++)
            if (cols[j].Length != n) throw new InvalidDataException($"{what}: column '{names[j]}' has {cols[j].Length} rows, not {n}");
        return new RDataFrame(names.Select(s => s ?? "").ToArray(), cols);
    }

    /// <summary>A vector as strings: factor codes become level names, NA becomes null.</summary>
    public static string?[] AsStrings(RObject v, string what = "vector")
    {
        switch (v)
        {
            case RStrings s: return s.Values;
            case RInts i when i.IsFactor:
                var levels = ((RStrings)i.Attribute("levels")!).Values;
                return i.Values.Select(c => c == RInts.NA ? null
                    : c >= 1 && c <= levels.Length ? levels[c - 1]
                    : throw new InvalidDataException($"{what}: factor code {c} outside 1..{levels.Length}")).ToArray();
            case RInts i when i.IsLogical: return i.Values.Select(c => c == RInts.NA ? null : c != 0 ? "TRUE" : "FALSE").ToArray();
            case RInts i: return i.Values.Select(c => c == RInts.NA ? null : c.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
            case RDoubles d: return d.Values.Select(x => double.IsNaN(x) ? null : x.ToString("R", System.Globalization.CultureInfo.InvariantCulture)).ToArray();
            default: throw new InvalidDataException($"{what}: a {v.GetType().Name} is not an atomic vector");
        }
    }

    sealed class Reader(byte[] b, string name)
    {
        int pos;
        readonly List<RObject> refs = [];

        public RObject ReadTop()
        {
            if (b.Length < 2 || b[0] != (byte)'X' || b[1] != (byte)'\n')
                throw new InvalidDataException($"{name}: only R's XDR serialisation (\"X\\n\") is supported, found \"{Encoding.ASCII.GetString(b, 0, Math.Min(2, b.Length)).Replace("\n", "\\n")}\"");
            pos = 2;
            int version = Int();
            Int(); Int();                                  // the writer's R version, the minimal reader version
            if (version == 3) { int n = Int(); Need(n); pos += n; }   // the native encoding's name
            else if (version != 2) throw new InvalidDataException($"{name}: serialisation version {version} (2 or 3 supported)");
            return Item();
        }

        void Need(long n)
        {
            if (n < 0 || pos + n > b.Length) throw new InvalidDataException($"{name}: truncated R data at byte {pos}");
        }

        int Int()
        {
            Need(4);
            int v = (b[pos] << 24) | (b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3];
            pos += 4;
            return v;
        }

        int Length()
        {
            int n = Int();
            if (n >= 0) return n;
            if (n != -1) throw new InvalidDataException($"{name}: negative length {n} at byte {pos - 4}");
            long hi = (uint)Int(), lo = (uint)Int();
            long len = (hi << 32) | lo;
            if (len > Array.MaxLength) throw new InvalidDataException($"{name}: vector of {len} elements is too long");
            return (int)len;
        }

        RObject Item()
        {
            int flags = Int();
            int type = flags & 0xFF;
            bool hasAttr = (flags & (1 << 9)) != 0, hasTag = (flags & (1 << 10)) != 0;
            switch (type)
            {
                case 254: return RNull.Instance;                                  // NILVALUE_SXP
                case 242: case 241: case 253: case 250: case 252: case 251:      // EMPTYENV, BASEENV, GLOBALENV, BASENAMESPACE, UNBOUNDVALUE, MISSINGARG
                    return RNull.Instance;
                case 255:                                                         // REFSXP: index in the high bits or in the next word
                {
                    int k = flags >> 8;
                    if (k == 0) k = Int();
                    if (k < 1 || k > refs.Count) throw new InvalidDataException($"{name}: reference {k} to an unknown object");
                    return refs[k - 1];
                }
                case 1:                                                           // SYMSXP: a CHARSXP follows
                {
                    var printName = Item() as RChars ?? throw new InvalidDataException($"{name}: a symbol without a name");
                    var sym = new RSymbol(printName.Value ?? "NA");
                    refs.Add(sym);
                    return sym;
                }
                case 2: case 3: case 5: case 6: case 17: case 239: case 240:    // LISTSXP, CLOSXP, PROMSXP, LANGSXP, DOTSXP, ATTRLANG, ATTRLIST
                {
                    var items = new List<KeyValuePair<string?, RObject>>();
                    IReadOnlyList<KeyValuePair<string, RObject>> attrs = [];
                    bool first = true;
                    // A pairlist is a chain of cells (attributes, tag, CAR, CDR); walk the CDRs in a loop, not by recursion.
                    while (true)
                    {
                        var a = hasAttr ? Attrs(Item()) : [];
                        if (first) { attrs = a; first = false; }
                        string? tag = hasTag ? (Item() as RSymbol)?.Name : null;
                        items.Add(new(tag, Item()));
                        int next = Int();
                        int t = next & 0xFF;
                        if (t is 2 or 239)
                        {
                            hasAttr = (next & (1 << 9)) != 0; hasTag = (next & (1 << 10)) != 0;
                            continue;
                        }
                        pos -= 4;
                        var cdr = Item();
                        if (cdr is not RNull) items.Add(new(null, cdr));   // a dotted pair: keep its CDR as the last item
                        break;
                    }
                    return new RPairList(items) { Attributes = attrs };
                }
                case 9:                                                           // CHARSXP
                {
                    int n = Int();
                    if (n == -1) return new RChars(null);
                    Need(n);
                    bool latin1 = (flags & (1 << 14)) != 0;                       // LATIN1_MASK (1 << 2) in the levels
                    string s = latin1 ? Encoding.Latin1.GetString(b, pos, n) : Encoding.UTF8.GetString(b, pos, n);
                    pos += n;
                    return new RChars(s);
                }
                case 10: case 13:                                                 // LGLSXP, INTSXP
                {
                    int n = Length();
                    Need(4L * n);
                    var v = new int[n];
                    for (int i = 0; i < n; i++) v[i] = Int();
                    return WithAttrs(new RInts(v, type == 10), hasAttr);
                }
                case 14:                                                          // REALSXP
                {
                    int n = Length();
                    Need(8L * n);
                    var v = new double[n];
                    for (int i = 0; i < n; i++)
                    {
                        long hi = (uint)Int(), lo = (uint)Int();
                        v[i] = BitConverter.Int64BitsToDouble((hi << 32) | lo);
                    }
                    return WithAttrs(new RDoubles(v), hasAttr);
                }
                case 16:                                                          // STRSXP: CHARSXPs
                {
                    int n = Length();
                    var v = new string?[n];
                    for (int i = 0; i < n; i++)
                        v[i] = (Item() as RChars ?? throw new InvalidDataException($"{name}: a character vector holds a non-string")).Value;
                    return WithAttrs(new RStrings(v), hasAttr);
                }
                case 19: case 20:                                                 // VECSXP, EXPRSXP
                {
                    int n = Length();
                    var v = new RObject[n];
                    for (int i = 0; i < n; i++) v[i] = Item();
                    return WithAttrs(new RList(v), hasAttr);
                }
                case 238:                                                         // ALTREP_SXP (version 3): class info, state, attributes
                {
                    var info = Item() as RPairList;
                    var state = Item();
                    var attr = Item();
                    string cls = info is { Items.Count: > 0 } && info.Items[0].Value is RSymbol s ? s.Name : "?";
                    RObject value = cls switch
                    {
                        "compact_intseq" when state is RDoubles d && d.Values.Length == 3 =>
                            new RInts(Enumerable.Range(0, (int)d.Values[0]).Select(i => (int)(d.Values[1] + i * d.Values[2])).ToArray(), false),
                        "compact_realseq" when state is RDoubles d && d.Values.Length == 3 =>
                            new RDoubles(Enumerable.Range(0, (int)d.Values[0]).Select(i => d.Values[1] + i * d.Values[2]).ToArray()),
                        _ when cls.StartsWith("wrap_", StringComparison.Ordinal) && state is RPairList w && w.Items.Count >= 1 => w.Items[0].Value,
                        _ when cls.StartsWith("wrap_", StringComparison.Ordinal) && state is RList w && w.Values.Length >= 1 => w.Values[0],
                        _ => throw new InvalidDataException($"{name}: ALTREP class '{cls}' is not supported"),
                    };
                    if (attr is RPairList ap) value.Attributes = Attrs(ap);
                    return value;
                }
                default:
                    throw new InvalidDataException($"{name}: R type {type} (at byte {pos - 4}) is not supported by this reader");
            }
        }

        RObject WithAttrs(RObject v, bool hasAttr)
        {
            if (hasAttr) v.Attributes = Attrs(Item());
            return v;
        }

        IReadOnlyList<KeyValuePair<string, RObject>> Attrs(RObject pl) => pl switch
        {
            RPairList p => p.Items.Select(kv => new KeyValuePair<string, RObject>(kv.Key ?? "", kv.Value)).ToArray(),
            RNull => [],
            _ => throw new InvalidDataException($"{name}: attributes are not a pairlist"),
        };
    }

    /// <summary>A CHARSXP while reading (it only lives inside symbols and character vectors).</summary>
    sealed class RChars(string? value) : RObject
    {
        public string? Value { get; } = value;
    }
}

/// <summary>
/// An .xz decoder (XZ file format 1.x, LZMA2 filter only, as liblzma writes for R's save(compress = "xz")).
/// The container: stream header (magic, flags, CRC32), blocks (header, LZMA2 data, padding, check), index, footer.
/// LZMA2 chunks: 0x00 end; 0x01/0x02 stored bytes (with/without dictionary reset); 0x80-0xFF an LZMA chunk whose bits
/// 5-6 say what is reset (nothing / state / state + properties / everything) and whose range coder starts afresh.
/// The LZMA decoder is the one of Igor Pavlov's LZMA specification (lzma-specification.txt in the LZMA SDK):
/// a binary range coder with 11-bit probabilities, 12 states, literal/match/rep0-3 packets.
/// </summary>
public static class Xz
{
    static ReadOnlySpan<byte> Magic => [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];

    public static bool IsXz(ReadOnlySpan<byte> data) => data.Length >= 6 && data[..6].SequenceEqual(Magic);

    /// <summary>Decompresses a whole .xz file (all its streams); checks CRC32/CRC64/SHA-256 of every block.</summary>
    public static byte[] Decompress(byte[] x, string name = "<xz>")
    {
        try { return DecompressStreams(x, name); }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentException)
        {
            throw new InvalidDataException($"{name}: corrupt or truncated xz data", e);
        }
    }

    static byte[] DecompressStreams(byte[] x, string name)
    {
        var output = new Output();
        int p = 0;
        bool any = false;
        while (p < x.Length)
        {
            if (any && x[p] == 0) { p++; continue; }                      // stream padding between streams
            if (x.Length - p < 12 || !IsXz(x.AsSpan(p))) throw new InvalidDataException($"{name}: not an xz stream at byte {p}");
            if (Crc32(x.AsSpan(p + 6, 2)) != ReadLE32(x, p + 8)) throw new InvalidDataException($"{name}: xz stream header CRC mismatch");
            int check = x[p + 7] & 0x0F;
            int checkSize = check switch { 0 => 0, 1 => 4, 4 => 8, 10 => 32, _ => throw new InvalidDataException($"{name}: xz check type {check} is not supported") };
            int streamFlags = x[p + 7];
            p += 12;
            ulong blocks = 0;
            while (true)
            {
                if (p >= x.Length) throw new InvalidDataException($"{name}: truncated xz stream");
                if (x[p] == 0) break;                                       // the index starts: no more blocks
                blocks++;
                int blockStart = output.Length;
                p = DecodeBlock(x, p, output, name);
                while ((p & 3) != 0) { if (x[p++] != 0) throw new InvalidDataException($"{name}: non-zero xz block padding"); }
                VerifyCheck(check, x.AsSpan(p, checkSize), output.Span(blockStart, output.Length - blockStart), name);
                p += checkSize;
            }
            p = SkipIndexAndFooter(x, p, blocks, streamFlags, name);
            any = true;
        }
        return output.ToArray();
    }

    static int DecodeBlock(byte[] x, int p, Output output, string name)
    {
        int headerSize = (x[p] + 1) * 4;
        if (p + headerSize > x.Length) throw new InvalidDataException($"{name}: truncated xz block header");
        if (Crc32(x.AsSpan(p, headerSize - 4)) != ReadLE32(x, p + headerSize - 4)) throw new InvalidDataException($"{name}: xz block header CRC mismatch");
        int flags = x[p + 1];
        int q = p + 2;
        if ((flags & 0x40) != 0) ReadVarint(x, ref q);                     // compressed size
        if ((flags & 0x80) != 0) ReadVarint(x, ref q);                     // uncompressed size
        int filters = (flags & 3) + 1;
        for (int f = 0; f < filters; f++)
        {
            ulong id = ReadVarint(x, ref q);
            ulong propSize = ReadVarint(x, ref q);
            if (id != 0x21 || f != filters - 1 || propSize != 1)
                throw new InvalidDataException($"{name}: xz filter 0x{id:X} is not supported (LZMA2 only)");
            q += 1;                                                         // dictionary size: the whole output is the dictionary here
        }
        return new Lzma2(x, p + headerSize, output, name).Run();
    }

    /// <summary>Checks the index (record count, CRC32) and the stream footer (CRC32, flags, "YZ"); returns the end.</summary>
    static int SkipIndexAndFooter(byte[] x, int p, ulong blocks, int streamFlags, string name)
    {
        int start = p;
        p++;                                                                // index indicator 0x00
        ulong records = ReadVarint(x, ref p);
        if (records != blocks) throw new InvalidDataException($"{name}: xz index lists {records} blocks, the stream has {blocks}");
        for (ulong r = 0; r < records; r++) { ReadVarint(x, ref p); ReadVarint(x, ref p); }
        while (((p - start) & 3) != 0) { if (x[p++] != 0) throw new InvalidDataException($"{name}: non-zero xz index padding"); }
        if (Crc32(x.AsSpan(start, p - start)) != ReadLE32(x, p)) throw new InvalidDataException($"{name}: xz index CRC mismatch");
        p += 4;
        int footer = p;                                                     // CRC32, backward size, flags, "YZ"
        p += 12;
        if (p > x.Length || x[p - 2] != (byte)'Y' || x[p - 1] != (byte)'Z' || x[footer + 9] != streamFlags
            || Crc32(x.AsSpan(footer + 4, 6)) != ReadLE32(x, footer)
            || ((long)ReadLE32(x, footer + 4) + 1) * 4 != footer - start)
            throw new InvalidDataException($"{name}: bad xz stream footer");
        return p;
    }

    static ulong ReadVarint(byte[] x, ref int p)
    {
        ulong v = 0;
        for (int shift = 0; shift < 63; shift += 7)
        {
            if (p >= x.Length) throw new InvalidDataException("truncated xz varint");
            byte b = x[p++];
            v |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return v;
        }
        throw new InvalidDataException("xz varint too long");
    }

    static uint ReadLE32(byte[] x, int p) => (uint)(x[p] | (x[p + 1] << 8) | (x[p + 2] << 16) | (x[p + 3] << 24));

    static void VerifyCheck(int check, ReadOnlySpan<byte> stored, ReadOnlySpan<byte> data, string name)
    {
        bool ok = check switch
        {
            0 => true,
            1 => Crc32(data) == (uint)(stored[0] | (stored[1] << 8) | (stored[2] << 16) | (stored[3] << 24)),
            4 => Crc64(data) == BitConverter.ToUInt64(stored),
            10 => System.Security.Cryptography.SHA256.HashData(data).AsSpan().SequenceEqual(stored),
            _ => false,
        };
        if (!ok) throw new InvalidDataException($"{name}: xz block check mismatch (corrupt data)");
    }

    static readonly uint[] Crc32Table = MakeTable32();
    static readonly ulong[] Crc64Table = MakeTable64();

    static uint[] MakeTable32()
    {
        var t = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }

    static ulong[] MakeTable64()
    {
        var t = new ulong[256];
        for (ulong i = 0; i < 256; i++)
        {
            ulong c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xC96C5795D7870F42ul ^ (c >> 1) : c >> 1;   // ECMA-182, reflected
            t[i] = c;
        }
        return t;
    }

    /// <summary>CRC-32 (IEEE 802.3, as in zlib and xz).</summary>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (byte b in data) c = Crc32Table[(c ^ b) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }

    /// <summary>CRC-64/XZ (ECMA-182 polynomial, reflected).</summary>
    public static ulong Crc64(ReadOnlySpan<byte> data)
    {
        ulong c = ulong.MaxValue;
        foreach (byte b in data) c = Crc64Table[(c ^ b) & 0xFF] ^ (c >> 8);
        return ~c;
    }

    /// <summary>The decoded bytes so far; LZMA matches copy from it (the whole output is the dictionary).</summary>
    sealed class Output
    {
        byte[] buf = new byte[1 << 16];
        public int Length;

        public void Reserve(int extra)
        {
            if (Length + extra <= buf.Length) return;
            long size = Math.Max((long)buf.Length * 2, (long)Length + extra);
            if (size > Array.MaxLength) throw new InvalidDataException("xz output larger than 2 GB");
            Array.Resize(ref buf, (int)size);
        }

        public void Add(byte b) { Reserve(1); buf[Length++] = b; }
        public byte Back(int distance) => buf[Length - distance];           // distance 1 = the last byte
        public ReadOnlySpan<byte> Span(int start, int length) => buf.AsSpan(start, length);
        public void Append(ReadOnlySpan<byte> s) { Reserve(s.Length); s.CopyTo(buf.AsSpan(Length)); Length += s.Length; }

        public void Copy(int distance, int length)
        {
            Reserve(length);
            for (int i = 0; i < length; i++, Length++) buf[Length] = buf[Length - distance];   // may overlap: byte by byte
        }

        public byte[] ToArray() => buf.AsSpan(0, Length).ToArray();
    }

    /// <summary>One block's LZMA2 chunks, decoded into the output.</summary>
    sealed class Lzma2(byte[] x, int p, Output o, string name)
    {
        const int NumStates = 12, MatchMinLen = 2, EndPosModelIndex = 14, NumFullDistances = 128, AlignBits = 4;

        // range decoder
        uint range, code;
        int inEnd;
        // model
        int lc, lp, pb;
        ushort[] literal = [];
        readonly ushort[] isMatch = new ushort[NumStates << 4], isRep = new ushort[NumStates], isRepG0 = new ushort[NumStates],
            isRepG1 = new ushort[NumStates], isRepG2 = new ushort[NumStates], isRep0Long = new ushort[NumStates << 4],
            posSlot = new ushort[4 << 6], posSpecial = new ushort[1 + NumFullDistances - EndPosModelIndex], align = new ushort[1 << AlignBits];
        readonly LenDecoder lenDec = new(), repLenDec = new();
        int state;
        uint rep0, rep1, rep2, rep3;
        int dictStart;
        bool needProps = true, needDictReset = true;

        public int Run()
        {
            while (true)
            {
                if (p >= x.Length) throw new InvalidDataException($"{name}: truncated LZMA2 data");
                int control = x[p++];
                if (control == 0x00) return p;
                if (control is 0x01 or 0x02)
                {
                    if (control == 0x01) { dictStart = o.Length; needDictReset = false; }
                    else if (needDictReset) throw new InvalidDataException($"{name}: LZMA2 data does not start with a dictionary reset");
                    int size = ((x[p] << 8) | x[p + 1]) + 1;
                    p += 2;
                    if (p + size > x.Length) throw new InvalidDataException($"{name}: truncated LZMA2 stored chunk");
                    o.Append(x.AsSpan(p, size));
                    p += size;
                    continue;
                }
                if (control < 0x80) throw new InvalidDataException($"{name}: invalid LZMA2 control byte 0x{control:X2}");
                int unpacked = (((control & 0x1F) << 16) | (x[p] << 8) | x[p + 1]) + 1;
                int packed = ((x[p + 2] << 8) | x[p + 3]) + 1;
                p += 4;
                int reset = (control >> 5) & 3;
                if (reset == 3) { dictStart = o.Length; needDictReset = false; }
                else if (needDictReset) throw new InvalidDataException($"{name}: LZMA2 data does not start with a dictionary reset");
                if (reset >= 2) { SetProps(x[p++]); needProps = false; }
                else if (needProps) throw new InvalidDataException($"{name}: LZMA2 chunk without properties");
                if (reset >= 1) ResetState();
                if (p + packed > x.Length) throw new InvalidDataException($"{name}: truncated LZMA2 chunk");
                inEnd = p + packed;
                InitRange();
                DecodeChunk(o.Length + unpacked);
                // a finished range coder has read exactly the chunk and its code is 0 (the encoder flushed 'low')
                if (p != inEnd || code != 0) throw new InvalidDataException($"{name}: corrupt LZMA2 chunk (size or end mismatch)");
            }
        }

        void SetProps(int props)
        {
            if (props > 224) throw new InvalidDataException($"{name}: invalid LZMA properties byte {props}");
            lc = props % 9; props /= 9; lp = props % 5; pb = props / 5;
            if (lc + lp > 4) throw new InvalidDataException($"{name}: LZMA2 needs lc + lp <= 4");
            literal = new ushort[0x300 << (lc + lp)];
        }

        void ResetState()
        {
            foreach (var a in new[] { literal, isMatch, isRep, isRepG0, isRepG1, isRepG2, isRep0Long, posSlot, posSpecial, align })
                Array.Fill(a, (ushort)1024);
            lenDec.Reset(); repLenDec.Reset();
            state = 0; rep0 = rep1 = rep2 = rep3 = 0;
        }

        void InitRange()
        {
            if (x[p] != 0) throw new InvalidDataException($"{name}: LZMA range coder does not start with 0");
            code = (uint)((x[p + 1] << 24) | (x[p + 2] << 16) | (x[p + 3] << 8) | x[p + 4]);
            range = 0xFFFFFFFF;
            p += 5;
        }

        void Normalize()
        {
            if (range < (1u << 24))
            {
                if (p >= inEnd) throw new InvalidDataException($"{name}: LZMA chunk overrun");
                range <<= 8;
                code = (code << 8) | x[p++];
            }
        }

        int Bit(ushort[] probs, int i)
        {
            uint bound = (range >> 11) * probs[i];
            int bit;
            if (code < bound) { range = bound; probs[i] += (ushort)((2048 - probs[i]) >> 5); bit = 0; }
            else { range -= bound; code -= bound; probs[i] -= (ushort)(probs[i] >> 5); bit = 1; }
            Normalize();
            return bit;
        }

        uint Direct(int count)
        {
            uint v = 0;
            for (int i = 0; i < count; i++)
            {
                range >>= 1;
                uint bit = code >= range ? 1u : 0u;
                if (bit == 1) code -= range;
                v = (v << 1) | bit;
                Normalize();
            }
            return v;
        }

        int Tree(ushort[] probs, int offset, int bits)
        {
            int m = 1;
            for (int i = 0; i < bits; i++) m = (m << 1) | Bit(probs, offset + m);
            return m - (1 << bits);
        }

        int ReverseTree(ushort[] probs, int offset, int bits)
        {
            int m = 1, sym = 0;
            for (int i = 0; i < bits; i++)
            {
                int bit = Bit(probs, offset + m);
                m = (m << 1) | bit;
                sym |= bit << i;
            }
            return sym;
        }

        void DecodeChunk(int end)
        {
            int pbMask = (1 << pb) - 1, lpMask = (1 << lp) - 1;
            while (o.Length < end)
            {
                // positions count from the last dictionary reset (xz-embedded's dict.pos; liblzma's encoder agrees)
                int pos = o.Length - dictStart, posState = pos & pbMask;
                if (Bit(isMatch, (state << 4) + posState) == 0)
                {
                    int prev = o.Length > dictStart ? o.Back(1) : 0;
                    int baseIdx = 0x300 * (((pos & lpMask) << lc) + (prev >> (8 - lc)));
                    int sym = 1;
                    if (state >= 7)
                    {
                        int matchByte = Distance(rep0) is var d && d <= o.Length - dictStart ? o.Back(d) : throw Corrupt();
                        do
                        {
                            int matchBit = (matchByte >> 7) & 1;
                            matchByte <<= 1;
                            int bit = Bit(literal, baseIdx + ((1 + matchBit) << 8) + sym);
                            sym = (sym << 1) | bit;
                            if (matchBit != bit) break;
                        } while (sym < 0x100);
                    }
                    while (sym < 0x100) sym = (sym << 1) | Bit(literal, baseIdx + sym);
                    o.Add((byte)sym);
                    state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
                    continue;
                }
                int len;
                if (Bit(isRep, state) == 0)
                {
                    rep3 = rep2; rep2 = rep1; rep1 = rep0;
                    len = lenDec.Decode(this, posState);
                    state = state < 7 ? 7 : 10;
                    rep0 = DecodeDistance(len);
                    if (rep0 == 0xFFFFFFFF) throw new InvalidDataException($"{name}: LZMA end marker inside LZMA2 data");
                }
                else
                {
                    if (Bit(isRepG0, state) == 0)
                    {
                        if (Bit(isRep0Long, (state << 4) + posState) == 0)
                        {
                            int d0 = Distance(rep0);
                            if (d0 > o.Length - dictStart) throw Corrupt();
                            o.Add(o.Back(d0));
                            state = state < 7 ? 9 : 11;
                            continue;
                        }
                    }
                    else
                    {
                        uint dist;
                        if (Bit(isRepG1, state) == 0) dist = rep1;
                        else
                        {
                            if (Bit(isRepG2, state) == 0) dist = rep2;
                            else { dist = rep3; rep3 = rep2; }
                            rep2 = rep1;
                        }
                        rep1 = rep0; rep0 = dist;
                    }
                    len = repLenDec.Decode(this, posState);
                    state = state < 7 ? 8 : 11;
                }
                int n = len + MatchMinLen, distance = Distance(rep0);
                if (distance > o.Length - dictStart || o.Length + n > end) throw Corrupt();
                o.Copy(distance, n);
            }
        }

        static int Distance(uint rep) => rep >= int.MaxValue ? int.MaxValue : (int)rep + 1;

        InvalidDataException Corrupt() => new($"{name}: corrupt LZMA data (a match reaches outside the data)");

        uint DecodeDistance(int len)
        {
            int lenState = Math.Min(len, 3);
            int slot = Tree(posSlot, lenState << 6, 6);
            if (slot < 4) return (uint)slot;
            int directBits = (slot >> 1) - 1;
            uint dist = (uint)((2 | (slot & 1)) << directBits);
            if (slot < EndPosModelIndex) return dist + (uint)ReverseTree(posSpecial, (int)dist - slot, directBits);
            dist += Direct(directBits - AlignBits) << AlignBits;
            return dist + (uint)ReverseTree(align, 0, AlignBits);
        }

        sealed class LenDecoder
        {
            readonly ushort[] choice = new ushort[2], low = new ushort[16 << 3], mid = new ushort[16 << 3], high = new ushort[256];

            public void Reset()
            {
                Array.Fill(choice, (ushort)1024); Array.Fill(low, (ushort)1024); Array.Fill(mid, (ushort)1024); Array.Fill(high, (ushort)1024);
            }

            public int Decode(Lzma2 d, int posState)
            {
                if (d.Bit(choice, 0) == 0) return d.Tree(low, posState << 3, 3);
                if (d.Bit(choice, 1) == 0) return 8 + d.Tree(mid, posState << 3, 3);
                return 16 + d.Tree(high, 0, 8);
            }
        }
    }
}
