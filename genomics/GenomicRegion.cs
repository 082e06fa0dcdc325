// Region syntax as samtools/bcftools/tabix write it: "chr", "chr:start", "chr:start-", "chr:start-end".
// Start and end are 1-based and inclusive; thousands separators are allowed ("chr1:1,000-2,000").
// ZeroBasedStart / EndExclusive give the 0-based half-open interval that array slicing and BED use.

using System.Globalization;

namespace Ssm.Genomics;

/// <summary>
/// A chromosome interval: <see cref="Start"/> 1-based inclusive, <see cref="End"/> 1-based inclusive or null for "to
/// the end of the chromosome".
/// </summary>
public sealed record GenomicRegion
{
    public string Chrom { get; }
    public long Start { get; }
    public long? End { get; }

    public GenomicRegion(string chrom, long start = 1, long? end = null)
    {
        if (string.IsNullOrEmpty(chrom)) throw new ArgumentException("region has an empty chromosome name");
        if (start < 1) throw new ArgumentException($"region {chrom}: start {start} must be >= 1 (positions are 1-based)");
        if (end is long e && e < start) throw new ArgumentException($"region {chrom}: end {e} is before start {start}");
        Chrom = chrom;
        Start = start;
        End = end;
    }

    public void Deconstruct(out string chrom, out long start, out long? end) => (chrom, start, end) = (Chrom, Start, End);

    /// <summary>0-based start (Start - 1).</summary>
    public long ZeroBasedStart => Start - 1;

    /// <summary>0-based exclusive end (equal to the 1-based inclusive End); null when the region runs to the end.</summary>
    public long? EndExclusive => End;

    /// <summary>True when the region is the whole chromosome ("chr").</summary>
    public bool IsWholeChromosome => Start == 1 && End is null;

    /// <summary>
    /// The 0-based half-open interval on a chromosome of the given length (an open or too-large end is clipped to the
    /// length). ArgumentException when the region starts beyond the chromosome.
    /// </summary>
    public (long Start, long End) Resolve(long chromLength)
    {
        if (chromLength < 0) throw new ArgumentException($"chromosome length {chromLength} is negative");
        if (ZeroBasedStart >= chromLength && !(chromLength == 0 && IsWholeChromosome))
            throw new ArgumentException($"region {this} starts beyond the end of {Chrom} (length {chromLength})");
        long end = Math.Min(End ?? chromLength, chromLength);
        return (Math.Min(ZeroBasedStart, end), end);
    }

    /// <summary>True when 1-based <paramref name="position"/> on <paramref name="chrom"/> lies in the region.</summary>
    public bool Contains(string chrom, long position) =>
        chrom == Chrom && position >= Start && (End is null || position <= End);

    /// <summary>True when the 0-based half-open interval [start, end) on <paramref name="chrom"/> shares a base with the
    /// region (an empty interval overlaps nothing).</summary>
    public bool Overlaps(string chrom, long start, long end) =>
        chrom == Chrom && end > start && end > ZeroBasedStart && (End is null || start < End);

    /// <summary>samtools form: "chr", "chr:start-" or "chr:start-end" (round-trips through Parse).</summary>
    public override string ToString() =>
        IsWholeChromosome ? Chrom
        : End is null ? $"{Chrom}:{Start.ToString(CultureInfo.InvariantCulture)}-"
        : $"{Chrom}:{Start.ToString(CultureInfo.InvariantCulture)}-{End.Value.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>
    /// Parses "chr", "chr:start", "chr:start-" or "chr:start-end" (1-based inclusive, commas allowed in numbers).
    /// The range follows the last ':' so names with colons work when a range is given ("HLA-A*01:01:1-100").
    /// ArgumentException with a one-line reason on bad syntax.
    /// </summary>
    public static GenomicRegion Parse(string text)
    {
        if (TryParse(text, out var region, out var error)) return region;
        throw new ArgumentException(error);
    }

    /// <summary>Parse without throwing: false with a one-line reason in <paramref name="error"/>.</summary>
    public static bool TryParse(string? text, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out GenomicRegion? region, out string error)
    {
        region = null;
        error = "";
        string s = (text ?? "").Trim();
        string Bad(string reason) => $"bad region '{text}': {reason}";
        if (s.Length == 0)
        {
            error = Bad("empty region");
            return false;
        }
        int colon = s.LastIndexOf(':');
        string chrom = colon < 0 ? s : s[..colon];
        if (chrom.Length == 0)
        {
            error = Bad("empty chromosome name");
            return false;
        }
        if (chrom.AsSpan().IndexOfAny(" \t") >= 0)
        {
            error = Bad("chromosome name contains whitespace");
            return false;
        }
        if (colon < 0)
        {
            region = new GenomicRegion(chrom);
            return true;
        }
        string range = s[(colon + 1)..];
        if (range.Length == 0)
        {
            error = Bad("nothing after ':' (expected start or start-end)");
            return false;
        }
        int dash = range.IndexOf('-');
        string startText = dash < 0 ? range : range[..dash];
        string? endText = dash < 0 ? null : range[(dash + 1)..];
        if (!TryPosition(startText, out long start, out string why))
        {
            error = Bad($"start {why}");
            return false;
        }
        long? end = null;
        if (!string.IsNullOrEmpty(endText))
        {
            if (!TryPosition(endText, out long e, out why))
            {
                error = Bad($"end {why}");
                return false;
            }
            end = e;
        }
        if (start < 1)
        {
            error = Bad($"start {start} must be >= 1 (positions are 1-based)");
            return false;
        }
        if (end is long ev && ev < start)
        {
            error = Bad($"end {ev} is before start {start}");
            return false;
        }
        region = new GenomicRegion(chrom, start, end);
        return true;
    }

    // Digits with optional thousands separators; no sign, no spaces.
    static bool TryPosition(string text, out long value, out string why)
    {
        value = 0;
        why = "";
        string digits = text.Replace(",", "", StringComparison.Ordinal);
        if (digits.Length == 0 || text.StartsWith(',') || text.EndsWith(','))
        {
            why = $"'{text}' is not a number";
            return false;
        }
        foreach (char c in digits)
            if (c is < '0' or > '9')
            {
                why = $"'{text}' is not a non-negative whole number";
                return false;
            }
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out value))
        {
            why = $"'{text}' is too large";
            return false;
        }
        return true;
    }
}
