// The IDX reader against files built byte by byte here (not with Idx.Encode), the data-folder reader, and the
// cutting of OpenCV's digits.png against a synthetic sheet whose every cell is recognisable.
using System.IO.Compression;
using System.Text.Json.Nodes;
using Ssm.Vision;

namespace Ssm.Vision.Tests;

public sealed class IdxTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-idx-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>An IDX file written from the format description: 0, 0, type, ndims, big-endian dims, data.</summary>
    static byte[] Handmade(byte type, int[] dims, byte[] data)
    {
        var b = new List<byte> { 0, 0, type, (byte)dims.Length };
        foreach (int d in dims) b.AddRange([(byte)(d >> 24), (byte)(d >> 16), (byte)(d >> 8), (byte)d]);
        b.AddRange(data);
        return b.ToArray();
    }

    static byte[] Gzip(byte[] raw)
    {
        var ms = new MemoryStream();
        using (var z = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true)) z.Write(raw);
        return ms.ToArray();
    }

    string Put(string name, byte[] bytes)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    static byte[] RandomBytes(Random rng, int n)
    {
        var b = new byte[n];
        rng.NextBytes(b);
        return b;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReadsASyntheticImageFileExactly(bool gzip)
    {
        var rng = new Random(11);
        int n = rng.Next(1, 9), rows = rng.Next(1, 12), cols = rng.Next(1, 12);
        var data = RandomBytes(rng, n * rows * cols);
        var raw = Handmade(0x08, [n, rows, cols], data);
        string p = Put(gzip ? "img.gz" : "img", gzip ? Gzip(raw) : raw);
        var a = Idx.ReadImages(p);
        Assert.Equal(new[] { n, rows, cols }, a.Dims);
        Assert.Equal(data, a.Data);
    }

    [Fact]
    public void DetectsGzipByContentNotName()
    {
        var data = RandomBytes(new Random(2), 7);
        string p = Put("labels-without-gz-suffix", Gzip(Handmade(0x08, [7], data)));
        Assert.Equal(data, Idx.ReadLabels(p).Data);
    }

    [Fact]
    public void WriteThenReadRoundTrips()
    {
        var data = RandomBytes(new Random(3), 3 * 5 * 4);
        foreach (var name in new[] { "w.idx", "w.idx.gz" })
        {
            string p = Path.Combine(_dir, name);
            Idx.Write(p, data, [3, 5, 4]);
            var a = Idx.ReadImages(p);
            Assert.Equal(new[] { 3, 5, 4 }, a.Dims);
            Assert.Equal(data, a.Data);
        }
        Assert.Equal(0x1F, File.ReadAllBytes(Path.Combine(_dir, "w.idx.gz"))[0]);
    }

    static void AssertRejected(string path, Func<string, IdxArray> read, params string[] words)
    {
        var e = Assert.Throws<InvalidDataException>(() => read(path));
        Assert.Contains(path, e.Message);
        foreach (var w in words) Assert.Contains(w, e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void RejectsBadMagic()
    {
        var raw = Handmade(0x08, [2], [1, 2]);
        raw[0] = 0x01;
        AssertRejected(Put("magic", raw), Idx.ReadLabels, "magic");
        // A PNG passed as IDX.
        AssertRejected(Put("png", [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), Idx.ReadLabels, "magic");
    }

    [Fact]
    public void RejectsOtherElementTypes()
    {
        AssertRejected(Put("float", Handmade(0x0D, [1], [0, 0, 0, 0])), Idx.ReadLabels, "0x0D", "float32");
    }

    [Fact]
    public void RejectsWrongNumberOfDimensions()
    {
        string labels = Put("labels", Handmade(0x08, [4], [0, 1, 2, 3]));
        AssertRejected(labels, Idx.ReadImages, "1 dimension", "expected 3");
        string images = Put("images", Handmade(0x08, [1, 2, 2], [0, 1, 2, 3]));
        AssertRejected(images, Idx.ReadLabels, "3 dimension", "expected 1");
        AssertRejected(Put("zero-dims", [0, 0, 8, 0]), Idx.ReadLabels, "0 dimensions");
        AssertRejected(Put("zero-size", Handmade(0x08, [0, 28, 28], [])), Idx.ReadImages, "dimension 0 is 0");
        var negative = Handmade(0x08, [1, 1, 1], [5]);
        negative[8] = 0xFF; // dims[1] = 0xFF000001 < 0
        AssertRejected(Put("negative", negative), Idx.ReadImages, "positive");
    }

    [Fact]
    public void RejectsTruncatedFiles()
    {
        var data = RandomBytes(new Random(4), 2 * 3 * 3);
        var raw = Handmade(0x08, [2, 3, 3], data);
        AssertRejected(Put("cut-data", raw[..^1]), Idx.ReadImages, "truncated", "18 bytes", "17");
        AssertRejected(Put("cut-header", raw[..10]), Idx.ReadImages, "truncated");
        AssertRejected(Put("tiny", raw[..3]), Idx.ReadImages, "truncated");
        AssertRejected(Put("empty", []), Idx.ReadImages, "truncated");
        var gz = Gzip(raw);
        AssertRejected(Put("cut.gz", gz[..(gz.Length / 2)]), Idx.ReadImages, "truncated");
    }

    [Fact]
    public void RejectsTrailingBytes()
    {
        var raw = Handmade(0x08, [2], [1, 2]).Append((byte)9).ToArray();
        AssertRejected(Put("long", raw), Idx.ReadLabels, "1 unexpected bytes");
    }

    [Fact]
    public void MissingFileIsNamed()
    {
        string p = Path.Combine(_dir, "nope.gz");
        AssertRejected(p, Idx.ReadImages, "not found");
    }

    [Fact]
    public void DatasetChecksThatImagesAndLabelsAgree()
    {
        string img = Put("i", Handmade(0x08, [3, 2, 2], new byte[12]));
        string lab2 = Put("l2", Handmade(0x08, [2], [0, 1]));
        var e = Assert.Throws<InvalidDataException>(() => ImageDataset.FromIdx(img, lab2, 10));
        Assert.Contains("2 labels for 3 images", e.Message);
        string labBad = Put("l3", Handmade(0x08, [3], [0, 1, 10]));
        e = Assert.Throws<InvalidDataException>(() => ImageDataset.FromIdx(img, labBad, 10));
        Assert.Contains("label 10 at index 2", e.Message);
        Assert.Contains(labBad, e.Message);
    }

    [Fact]
    public void FourDimensionalImagesAreChannelsLast()
    {
        // (n h w c) on disk -> (n c h w) in memory.
        var rng = new Random(5);
        int n = 2, h = 3, w = 4, c = 3;
        var data = RandomBytes(rng, n * h * w * c);
        string img = Put("rgb", Handmade(0x08, [n, h, w, c], data));
        string lab = Put("rgb-l", Handmade(0x08, [n], [1, 0]));
        var ds = ImageDataset.FromIdx(img, lab, 2);
        Assert.Equal((3, 3, 4), (ds.Channels, ds.Height, ds.Width));
        for (int i = 0; i < n; i++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int k = 0; k < c; k++)
                        Assert.Equal(data[((i * h + y) * w + x) * c + k], ds.Pixels[((i * c + k) * h + y) * w + x]);
    }

    [Fact]
    public void DataFolderReadsItsDescriptorAndTheMnistLayout()
    {
        var rng = new Random(6);
        string dir = Path.Combine(_dir, "folder");
        Directory.CreateDirectory(dir);
        File.WriteAllBytes(Path.Combine(dir, "a-img.gz"), Gzip(Handmade(0x08, [4, 5, 5], RandomBytes(rng, 100))));
        File.WriteAllBytes(Path.Combine(dir, "a-lab"), Handmade(0x08, [4], [0, 2, 1, 2]));
        File.WriteAllText(Path.Combine(dir, "dataset.json"), new JsonObject
        {
            ["name"] = "toy", ["labels"] = new JsonArray("x", "y", "z"), ["hflip"] = true,
            ["splits"] = new JsonObject { ["train"] = new JsonObject { ["images"] = "a-img.gz", ["labels"] = "a-lab" } },
        }.ToJsonString());
        var f = DataFolder.Open(dir);
        Assert.Equal("toy", f.Name);
        Assert.Equal(new[] { "x", "y", "z" }, f.Labels);
        Assert.True(f.HFlip);
        var train = f.Load("train");
        Assert.Equal(new[] { 0, 2, 1, 2 }, train.Labels);
        var e = Assert.Throws<InvalidDataException>(() => f.Load("test"));
        Assert.Contains("no 'test' split", e.Message);

        string mnist = Path.Combine(_dir, "mnist");
        Directory.CreateDirectory(mnist);
        File.WriteAllBytes(Path.Combine(mnist, "t10k-images-idx3-ubyte"), Handmade(0x08, [2, 3, 3], RandomBytes(rng, 18)));
        File.WriteAllBytes(Path.Combine(mnist, "t10k-labels-idx1-ubyte.gz"), Gzip(Handmade(0x08, [2], [9, 3])));
        var m = DataFolder.Open(mnist);
        Assert.Equal(10, m.Labels.Count);
        Assert.Equal(new[] { 9, 3 }, m.Load("test").Labels);

        Assert.Contains("not found", Assert.Throws<InvalidDataException>(() => DataFolder.Open(Path.Combine(_dir, "none"))).Message);
        File.WriteAllText(Path.Combine(dir, "dataset.json"), "{\"labels\": [\"x\", \"y\"]}");
        Assert.Contains("\"splits\"", Assert.Throws<InvalidDataException>(() => DataFolder.Open(dir)).Message);
    }

    [Fact]
    public void DigitsSheetIsCutPaddedAndSplitAsDocumented()
    {
        // A synthetic digits.png: cell (row r, column k) is filled with a value that encodes its sample number within
        // its class, and its top-left pixel encodes the class, so every output image can be traced back to its cell.
        const int W = 2000, H = 1000;
        var px = new byte[W * H];
        for (int r = 0; r < 50; r++)
            for (int k = 0; k < 100; k++)
            {
                int digit = r / 5, sample = (r % 5) * 100 + k;
                for (int y = 0; y < 20; y++)
                    for (int x = 0; x < 20; x++)
                        px[(r * 20 + y) * W + k * 20 + x] = (byte)(sample % 251 + 1);
                px[(r * 20) * W + k * 20] = (byte)(200 + digit);
                px[(r * 20 + 19) * W + k * 20 + 19] = (byte)(sample / 251 + 1);
            }
        string png = Path.Combine(_dir, "digits.png");
        File.WriteAllBytes(png, TestImages.Png(W, H, 1, px));
        var splits = OpenCvDigits.Split(png);
        var expect = new Dictionary<string, (int From, int Count)> { ["train"] = (0, 360), ["val"] = (360, 40), ["test"] = (400, 100) };
        foreach (var (name, (from, count)) in expect)
        {
            var ds = splits[name];
            Assert.Equal((10 * count, 1, 28, 28), (ds.Count, ds.Channels, ds.Height, ds.Width));
            var seen = new HashSet<(int, int)>();
            for (int i = 0; i < ds.Count; i++)
            {
                var img = ds.Pixels.AsSpan(i * 784, 784);
                // 4-pixel black frame.
                for (int y = 0; y < 28; y++)
                    for (int x = 0; x < 28; x++)
                        if (y < 4 || y >= 24 || x < 4 || x >= 24) Assert.Equal(0, img[y * 28 + x]);
                int digit = img[4 * 28 + 4] - 200;
                int sample = img[5 * 28 + 5] - 1 + 251 * (img[23 * 28 + 23] - 1);
                Assert.Equal(digit, ds.Labels[i]);
                Assert.InRange(sample, from, from + count - 1);
                Assert.True(seen.Add((digit, sample)));
            }
            Assert.Equal(10 * count, seen.Count);
        }
        string wrong = Path.Combine(_dir, "small.png");
        File.WriteAllBytes(wrong, TestImages.Png(20, 20, 1, new byte[400]));
        Assert.Contains("expected OpenCV's digits.png", Assert.Throws<InvalidDataException>(() => OpenCvDigits.Split(wrong)).Message);
    }
}
