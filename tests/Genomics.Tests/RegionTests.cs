// GenomicRegion.Parse against the samtools region rules (1-based inclusive, "chr", "chr:start", "chr:start-end",
// thousands separators), the 0-based half-open view, and bad syntax reported as one-line ArgumentExceptions.

namespace Ssm.Genomics.Tests;

public class RegionTests
{
    [Theory]
    [InlineData("chr1:1,000-2,000", "chr1", 1000L, 2000L)]
    [InlineData("chr1:1000-2000", "chr1", 1000L, 2000L)]
    [InlineData("  chrX:5-5 ", "chrX", 5L, 5L)]
    [InlineData("chr2:17", "chr2", 17L, null)]
    [InlineData("chr2:17-", "chr2", 17L, null)]
    [InlineData("chrM", "chrM", 1L, null)]
    [InlineData("HLA-A*01:01:01:01:1-100", "HLA-A*01:01:01:01", 1L, 100L)]
    [InlineData("1:1,234,567-9,999,999", "1", 1234567L, 9999999L)]
    public void Parse_AcceptsSamtoolsForms(string text, string chrom, long start, long? end)
    {
        var r = GenomicRegion.Parse(text);
        Assert.Equal(chrom, r.Chrom);
        Assert.Equal(start, r.Start);
        Assert.Equal(end, r.End);
        // The 0-based half-open view: [start-1, end).
        Assert.Equal(start - 1, r.ZeroBasedStart);
        Assert.Equal(end, r.EndExclusive);
    }

    [Theory]
    [InlineData("", "empty region")]
    [InlineData("   ", "empty region")]
    [InlineData(":1-2", "empty chromosome name")]
    [InlineData("chr1:", "nothing after ':'")]
    [InlineData("chr1:0-5", "start 0 must be >= 1")]
    [InlineData("chr1:10-5", "end 5 is before start 10")]
    [InlineData("chr1:a-b", "start 'a' is not a non-negative whole number")]
    [InlineData("chr1:5-x", "end 'x' is not a non-negative whole number")]
    [InlineData("chr1:-5", "start '' is not a number")]
    [InlineData("chr1:1-2-3", "end '2-3' is not a non-negative whole number")]
    [InlineData("chr1:1,-3", "start '1,' is not a number")]
    [InlineData("chr1:99999999999999999999", "is too large")]
    [InlineData("chr 1:1-3", "whitespace")]
    [InlineData("chr1:+5", "start '+5'")]
    public void Parse_RejectsBadSyntaxWithAReason(string text, string reason)
    {
        var e = Assert.Throws<ArgumentException>(() => GenomicRegion.Parse(text));
        Assert.Contains(reason, e.Message);
        Assert.Contains($"'{text}'", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.False(GenomicRegion.TryParse(text, out _, out var error));
        Assert.Equal(e.Message, error);
    }

    [Fact]
    public void ToString_RoundTrips_AndResolveMatchesSlicing()
    {
        var rnd = new Random(801);
        for (int i = 0; i < 500; i++)
        {
            long start = 1 + rnd.Next(10000);
            long? end = rnd.Next(3) == 0 ? null : start + rnd.Next(10000);
            var r = rnd.Next(5) == 0 ? new GenomicRegion($"c{i}") : new GenomicRegion($"c{i}", start, end);
            Assert.Equal(r, GenomicRegion.Parse(r.ToString()));

            // Resolve against a chromosome: the slice [s, e) of a 0-based array holds exactly the 1-based positions
            // the region contains.
            int length = 1 + rnd.Next(20000);
            if (r.ZeroBasedStart >= length)
            {
                Assert.Throws<ArgumentException>(() => r.Resolve(length));
                continue;
            }
            var (s, e) = r.Resolve(length);
            var inside = Enumerable.Range(1, length).Where(p => r.Contains(r.Chrom, p)).ToList();
            Assert.Equal(inside.Count, (int)(e - s));
            if (inside.Count > 0) Assert.Equal((inside[0] - 1L, (long)inside[^1]), (s, e));
            Assert.False(r.Contains(r.Chrom + "x", r.Start));
        }
    }

    [Fact]
    public void Overlaps_AgreesWithContains()
    {
        var rnd = new Random(802);
        for (int i = 0; i < 300; i++)
        {
            long start = 1 + rnd.Next(50);
            var r = new GenomicRegion("c", start, rnd.Next(3) == 0 ? null : start + rnd.Next(30));
            long a = rnd.Next(100), b = a + rnd.Next(20);
            bool expected = false;
            for (long p0 = a; p0 < b; p0++) expected |= r.Contains("c", p0 + 1);
            Assert.Equal(expected, r.Overlaps("c", a, b));
        }
    }

    [Fact]
    public void Constructor_Validates()
    {
        Assert.Throws<ArgumentException>(() => new GenomicRegion("", 1, 2));
        Assert.Throws<ArgumentException>(() => new GenomicRegion("c", 0, 2));
        Assert.Throws<ArgumentException>(() => new GenomicRegion("c", 5, 4));
        var (chrom, start, end) = new GenomicRegion("c", 3, 9);
        Assert.Equal(("c", 3L, (long?)9), (chrom, start, end));
    }
}
