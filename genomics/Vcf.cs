// A minimal VCF reader (VCF 4.x, https://samtools.github.io/hts-specs/VCFv4.3.pdf): the '##' meta lines, the
// '#CHROM' column line, and CHROM POS ID REF ALT of each record, for SNVs, MNVs and short indels. Columns after ALT
// (QUAL, FILTER, INFO, genotypes) are not parsed. Plain, gzip or bgzip input (detected by content; bgzip is a chain
// of gzip members, each checked, see GzipDecoder in Fasta.cs).
//
// ALT alleles that do not spell bases are "symbolic": <DEL>, <*>, breakends (G]17:198982], .A), the '*' allele
// (overlapping deletion). They are dropped from a record's ALT list; a record left with no ALT is skipped and counted
// in SkippedSymbolic. ALT '.' (no alternate allele) skips the record, counted in SkippedNoAlt.

using System.Globalization;
using System.Text;

namespace Ssm.Genomics;

/// <summary>Kind of a variant allele, by REF and ALT lengths (VCF's padding base included).</summary>
public enum VariantKind
{
    /// <summary>one base replaced by one base</summary>
    Snv,
    /// <summary>several bases replaced by as many (MNP)</summary>
    Mnv,
    /// <summary>ALT longer than REF</summary>
    Insertion,
    /// <summary>ALT shorter than REF</summary>
    Deletion,
    /// <summary>a multi-allelic record whose ALTs are of different kinds</summary>
    Mixed,
}

/// <summary>
/// One VCF record: 1-based <paramref name="Position"/> of the first REF base, REF and ALT upper-case strings of
/// A C G T N, ALTs in file order (symbolic ones removed), and the line it came from.
/// </summary>
public sealed record VcfVariant(string Chrom, long Position, string Id, string Ref, IReadOnlyList<string> Alts, int LineNumber)
{
    /// <summary>True when ALT number <paramref name="altIndex"/> is a single-base substitution.</summary>
    public bool IsSnv(int altIndex = 0) => KindOf(altIndex) == VariantKind.Snv;

    /// <summary>True when any ALT changes the length (an insertion or a deletion).</summary>
    public bool IsIndel
    {
        get
        {
            foreach (var alt in Alts)
                if (alt.Length != Ref.Length) return true;
            return false;
        }
    }

    /// <summary>The kind shared by all ALTs, or <see cref="VariantKind.Mixed"/>.</summary>
    public VariantKind Kind
    {
        get
        {
            if (Alts.Count == 0) throw new InvalidOperationException($"variant at {Chrom}:{Position} has no ALT allele");
            var kind = KindOf(0);
            for (int i = 1; i < Alts.Count; i++)
                if (KindOf(i) != kind) return VariantKind.Mixed;
            return kind;
        }
    }

    /// <summary>The kind of ALT number <paramref name="altIndex"/>.</summary>
    public VariantKind KindOf(int altIndex)
    {
        if ((uint)altIndex >= (uint)Alts.Count)
            throw new ArgumentOutOfRangeException(nameof(altIndex), $"variant at {Chrom}:{Position} has {Alts.Count} ALT allele(s), asked for #{altIndex}");
        string alt = Alts[altIndex];
        if (alt.Length == Ref.Length) return Ref.Length == 1 ? VariantKind.Snv : VariantKind.Mnv;
        return alt.Length > Ref.Length ? VariantKind.Insertion : VariantKind.Deletion;
    }

    /// <summary>0-based start of the REF span.</summary>
    public long ZeroBasedStart => Position - 1;

    /// <summary>0-based exclusive end of the REF span.</summary>
    public long EndExclusive => Position - 1 + Ref.Length;

    /// <summary>
    /// One biallelic variant per ALT (same position, REF, ID and line). REF/ALT are not trimmed: a split deletion keeps
    /// the REF of the multi-allelic record (as bcftools norm -m- does without a reference).
    /// </summary>
    public IReadOnlyList<VcfVariant> Split()
    {
        var result = new VcfVariant[Alts.Count];
        for (int i = 0; i < Alts.Count; i++) result[i] = this with { Alts = new[] { Alts[i] } };
        return result;
    }

    public override string ToString() => $"{Chrom}:{Position} {Ref}>{string.Join(',', Alts)}";
}

/// <summary>
/// Streaming VCF reader: the header (meta lines and the '#CHROM' line, required before any data) is read by Open;
/// <see cref="Variants"/> streams the records. Errors are InvalidDataException "PATH:LINE: reason".
/// </summary>
public sealed class VcfReader : IDisposable
{
    static readonly string[] RequiredColumns = ["#CHROM", "POS", "ID", "REF", "ALT"];
    readonly TextInput _in;
    readonly List<string> _meta = [];
    string[] _columns = [];

    /// <summary>Opens a .vcf or .vcf.gz (gzip/bgzip by content); "-" reads standard input. Reads the header.</summary>
    public static VcfReader Open(string path)
    {
        var input = TextInput.Open(path);
        try
        {
            return new VcfReader(input);
        }
        catch
        {
            input.Dispose();
            throw;
        }
    }

    /// <summary>Reads VCF from a stream (gzip or plain by content); <paramref name="name"/> is used in messages.</summary>
    public VcfReader(Stream stream, string name, bool leaveOpen = false) : this(new TextInput(stream, name, leaveOpen)) { }

    VcfReader(TextInput input)
    {
        _in = input;
        ReadHeader();
    }

    public string Name => _in.Name;

    /// <summary>The '##' meta lines, as written (without the line end).</summary>
    public IReadOnlyList<string> MetaLines => _meta;

    /// <summary>The fields of the '#CHROM' line ("#CHROM", "POS", ... and the sample names).</summary>
    public IReadOnlyList<string> HeaderColumns => _columns;

    /// <summary>Sample names (columns after FORMAT), empty for a sites-only VCF.</summary>
    public IReadOnlyList<string> Samples => _columns.Length > 9 ? _columns[9..] : [];

    /// <summary>Records skipped because every ALT was symbolic.</summary>
    public long SkippedSymbolic { get; private set; }

    /// <summary>Symbolic ALT alleles dropped from records that kept other ALTs.</summary>
    public long DroppedSymbolicAlleles { get; private set; }

    /// <summary>Records skipped because ALT was '.' (no alternate allele).</summary>
    public long SkippedNoAlt { get; private set; }

    void ReadHeader()
    {
        while (true)
        {
            long ln = _in.Line;
            if (!_in.ReadLine(out var line)) throw _in.Error(ln, "missing '#CHROM' header line (no data lines either)");
            if (line.StartsWith("##"u8))
            {
                _meta.Add(Encoding.UTF8.GetString(line));
                continue;
            }
            if (TextInput.IsBlank(line)) continue;
            if (line.StartsWith("#CHROM"u8))
            {
                _columns = Encoding.UTF8.GetString(line).Split('\t');
                for (int i = 0; i < RequiredColumns.Length; i++)
                    if (i >= _columns.Length || _columns[i] != RequiredColumns[i])
                        throw _in.Error(ln, $"'#CHROM' header line must start with the tab-separated columns {string.Join(' ', RequiredColumns)}");
                return;
            }
            if (line[0] == (byte)'#') throw _in.Error(ln, "header line starts with a single '#' but is not the '#CHROM' line");
            throw _in.Error(ln, "data line before the '#CHROM' header line");
        }
    }

    /// <summary>The remaining records with at least one base-spelled ALT (see the file comment for what is skipped).</summary>
    public IEnumerable<VcfVariant> Variants()
    {
        while (TryRead(out var v)) yield return v;
    }

    /// <summary>Reads the next kept record; false at the end of the input.</summary>
    public bool TryRead(out VcfVariant variant)
    {
        variant = null!;
        Span<Range> fields = stackalloc Range[5];
        while (true)
        {
            long ln = _in.Line;
            if (!_in.ReadLine(out var line)) return false;
            if (TextInput.IsBlank(line)) continue;
            if (line[0] == (byte)'#') throw _in.Error(ln, "header line after the '#CHROM' line");
            // Only the first five columns are looked at; the rest (INFO, genotypes) can be long and stays unparsed.
            int count = 0;
            foreach (var r in line.Split((byte)'\t'))
            {
                fields[count++] = r;
                if (count == 5) break;
            }
            if (count < 5)
                throw _in.Error(ln, $"expected at least 5 tab-separated columns (CHROM POS ID REF ALT), found {count}");
            var chromBytes = line[fields[0]];
            if (chromBytes.Length == 0) throw _in.Error(ln, "empty CHROM");
            var posBytes = line[fields[1]];
            if (posBytes.Length == 0 || posBytes.IndexOfAnyExceptInRange((byte)'0', (byte)'9') >= 0 ||
                !long.TryParse(posBytes, NumberStyles.None, CultureInfo.InvariantCulture, out long pos) || pos < 1)
                throw _in.Error(ln, $"POS '{Encoding.UTF8.GetString(posBytes)}' is not a positive integer");
            string refAllele = Bases(line[fields[3]], "REF", ln);
            var altBytes = line[fields[4]];
            if (altBytes.SequenceEqual("."u8))
            {
                SkippedNoAlt++;
                continue;
            }
            var alts = new List<string>();
            int dropped = 0;
            foreach (var r in altBytes.Split((byte)','))
            {
                var alt = altBytes[r];
                if (IsSymbolic(alt))
                {
                    dropped++;
                    continue;
                }
                alts.Add(Bases(alt, "ALT", ln));
            }
            if (alts.Count == 0)
            {
                SkippedSymbolic++;
                continue;
            }
            DroppedSymbolicAlleles += dropped;
            string id = Encoding.UTF8.GetString(line[fields[2]]);
            int lineNumber = (int)Math.Min(ln, int.MaxValue);
            variant = new VcfVariant(Encoding.UTF8.GetString(chromBytes), pos, id, refAllele, alts, lineNumber);
            return true;
        }
    }

    // <...> symbolic alleles, breakends (with '[' or ']', or single breakends with a leading/trailing '.'), '*'.
    static bool IsSymbolic(ReadOnlySpan<byte> alt) =>
        alt.Length > 0 && (alt[0] == (byte)'<' || alt.SequenceEqual("*"u8) || alt.IndexOfAny("[]"u8) >= 0 ||
                           (alt.Length > 1 && (alt[0] == (byte)'.' || alt[^1] == (byte)'.')));

    string Bases(ReadOnlySpan<byte> allele, string column, long ln)
    {
        if (allele.Length == 0) throw _in.Error(ln, $"empty {column} allele");
        Span<byte> upper = allele.Length <= 256 ? stackalloc byte[allele.Length] : new byte[allele.Length];
        for (int i = 0; i < allele.Length; i++)
        {
            byte b = allele[i];
            byte u = b is >= (byte)'a' and <= (byte)'z' ? (byte)(b - 32) : b;
            if (u is not ((byte)'A' or (byte)'C' or (byte)'G' or (byte)'T' or (byte)'N'))
                throw _in.Error(ln, $"{column} '{Encoding.UTF8.GetString(allele)}' has {TextInput.Show(b)}; only A, C, G, T, N are allowed");
            upper[i] = u;
        }
        return Encoding.ASCII.GetString(upper);
    }

    public void Dispose() => _in.Dispose();
}
