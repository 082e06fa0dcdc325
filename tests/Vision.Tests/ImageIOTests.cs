// Image reading against files written here from the format specifications (PNG, BMP, TGA raw and RLE, GIF; JPEG via
// stb_image_write, compared with a tolerance), truncated and bad files, the conversion to a model's input against
// values computed by hand, and the PNG writers.
using System.Buffers.Binary;
using System.IO.Compression;
using TorchSharp;
using Ssm.Vision;
using static TorchSharp.torch;

namespace Ssm.Vision.Tests;

/// <summary>Minimal encoders written from the format specifications, independent of the code under test.</summary>
public static class TestImages
{
    static readonly uint[] CrcTable = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (byte b in data) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }

    static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> be = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(be, data.Length);
        s.Write(be);
        var typed = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        s.Write(typed);
        BinaryPrimitives.WriteUInt32BigEndian(be, Crc32(typed));
        s.Write(be);
    }

    /// <summary>PNG (8 bits; channels 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), filter 0 on every row, zlib via ZLibStream.</summary>
    public static byte[] Png(int w, int h, int channels, byte[] px)
    {
        var ms = new MemoryStream();
        ms.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(0), w);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), h);
        ihdr[8] = 8;
        ihdr[9] = channels switch { 1 => 0, 2 => 4, 3 => 2, 4 => 6, _ => throw new ArgumentException("channels") };
        Chunk(ms, "IHDR", ihdr);
        var raw = new MemoryStream();
        for (int y = 0; y < h; y++)
        {
            raw.WriteByte(0);
            raw.Write(px, y * w * channels, w * channels);
        }
        var z = new MemoryStream();
        using (var zs = new ZLibStream(z, CompressionLevel.Fastest, leaveOpen: true)) zs.Write(raw.ToArray());
        Chunk(ms, "IDAT", z.ToArray());
        Chunk(ms, "IEND", []);
        return ms.ToArray();
    }

    /// <summary>24-bit BMP: BITMAPFILEHEADER + BITMAPINFOHEADER, rows bottom-up, BGR, padded to 4 bytes.</summary>
    public static byte[] Bmp(int w, int h, byte[] rgb)
    {
        int stride = (w * 3 + 3) / 4 * 4;
        var b = new byte[54 + stride * h];
        b[0] = (byte)'B'; b[1] = (byte)'M';
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(2), b.Length);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(10), 54);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(14), 40);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(18), w);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(22), h);
        BinaryPrimitives.WriteInt16LittleEndian(b.AsSpan(26), 1);
        BinaryPrimitives.WriteInt16LittleEndian(b.AsSpan(28), 24);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int o = 54 + (h - 1 - y) * stride + x * 3, s = (y * w + x) * 3;
                b[o] = rgb[s + 2]; b[o + 1] = rgb[s + 1]; b[o + 2] = rgb[s];
            }
        return b;
    }

    /// <summary>TGA, true colour (24-bit BGR, type 2 or RLE type 10) or grey (8-bit, type 3), bottom-up rows.</summary>
    public static byte[] Tga(int w, int h, int channels, byte[] px, bool rle = false)
    {
        var b = new List<byte>(new byte[18]);
        b[2] = (byte)(channels == 1 ? 3 : rle ? 10 : 2);
        b[12] = (byte)w; b[13] = (byte)(w >> 8); b[14] = (byte)h; b[15] = (byte)(h >> 8);
        b[16] = (byte)(channels * 8);
        var pixels = new List<byte[]>();
        for (int y = h - 1; y >= 0; y--)
            for (int x = 0; x < w; x++)
            {
                int s = (y * w + x) * channels;
                pixels.Add(channels == 1 ? [px[s]] : [px[s + 2], px[s + 1], px[s]]);
            }
        if (!rle) { foreach (var p in pixels) b.AddRange(p); return b.ToArray(); }
        // Run packets for repeats, raw packets (up to 128 pixels) otherwise.
        for (int i = 0; i < pixels.Count;)
        {
            int run = 1;
            while (i + run < pixels.Count && run < 128 && pixels[i + run].SequenceEqual(pixels[i])) run++;
            if (run > 1) { b.Add((byte)(0x80 | (run - 1))); b.AddRange(pixels[i]); i += run; continue; }
            int raw = 1;
            while (i + raw < pixels.Count && raw < 128 && !(i + raw + 1 < pixels.Count && pixels[i + raw].SequenceEqual(pixels[i + raw + 1]))) raw++;
            b.Add((byte)(raw - 1));
            for (int k = 0; k < raw; k++) b.AddRange(pixels[i + k]);
            i += raw;
        }
        return b.ToArray();
    }

    /// <summary>
    /// GIF89a with a global palette of the image's colours (at most 256) and LZW data made only of literal codes, with a
    /// clear code every 100 pixels so the code width stays 9 bits (valid LZW: a decoder needs no compressed codes).
    /// </summary>
    public static byte[] Gif(int w, int h, byte[] rgb)
    {
        var colours = new List<(byte, byte, byte)>();
        var index = new byte[w * h];
        for (int i = 0; i < w * h; i++)
        {
            var c = (rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
            int k = colours.IndexOf(c);
            if (k < 0) { k = colours.Count; colours.Add(c); }
            index[i] = (byte)k;
        }
        if (colours.Count > 256) throw new ArgumentException("too many colours for a GIF");
        var b = new List<byte>();
        b.AddRange("GIF89a"u8.ToArray());
        b.AddRange([(byte)w, (byte)(w >> 8), (byte)h, (byte)(h >> 8), 0xF7, 0, 0]); // global table of 256 entries
        for (int i = 0; i < 256; i++)
        {
            var c = i < colours.Count ? colours[i] : ((byte)0, (byte)0, (byte)0);
            b.AddRange([c.Item1, c.Item2, c.Item3]);
        }
        b.AddRange([0x2C, 0, 0, 0, 0, (byte)w, (byte)(w >> 8), (byte)h, (byte)(h >> 8), 0, 8]);
        var codes = new List<int> { 256 };
        for (int i = 0; i < index.Length; i++)
        {
            if (i > 0 && i % 100 == 0) codes.Add(256);
            codes.Add(index[i]);
        }
        codes.Add(257);
        var data = new List<byte>();
        int acc = 0, bits = 0;
        foreach (int code in codes)
        {
            acc |= code << bits; bits += 9;
            while (bits >= 8) { data.Add((byte)acc); acc >>= 8; bits -= 8; }
        }
        if (bits > 0) data.Add((byte)acc);
        for (int i = 0; i < data.Count; i += 255)
        {
            int n = Math.Min(255, data.Count - i);
            b.Add((byte)n);
            b.AddRange(data.GetRange(i, n));
        }
        b.Add(0);
        b.Add(0x3B);
        return b.ToArray();
    }

    public static byte[] Jpeg(int w, int h, int channels, byte[] px, int quality = 95)
    {
        var ms = new MemoryStream();
        var comp = channels == 1 ? StbImageWriteSharp.ColorComponents.Grey : StbImageWriteSharp.ColorComponents.RedGreenBlue;
        new StbImageWriteSharp.ImageWriter().WriteJpg(px, w, h, comp, ms, quality);
        return ms.ToArray();
    }

    public static byte[] RandomPixels(Random rng, int n)
    {
        var b = new byte[n];
        rng.NextBytes(b);
        return b;
    }

    /// <summary>A smooth image (JPEG keeps it within a few levels).</summary>
    public static byte[] Smooth(int w, int h, int channels)
    {
        var px = new byte[w * h * channels];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < channels; c++)
                    px[(y * w + x) * channels + c] = (byte)(40 + 150.0 * (0.5 + 0.5 * Math.Sin(0.15 * x + 0.1 * y + c)));
        return px;
    }
}

public sealed class ImageIOTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-imageio-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string Put(string name, byte[] bytes)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void PngOfEveryChannelLayoutDecodesToItsPixels(int channels)
    {
        var rng = new Random(channels);
        int w = 13, h = 7;
        var px = TestImages.RandomPixels(rng, w * h * channels);
        var img = ImageIO.Load(Put($"c{channels}.png", TestImages.Png(w, h, channels, px)));
        Assert.Equal((w, h, channels), (img.Width, img.Height, img.Channels));
        Assert.Equal(px, img.Pixels);
    }

    [Fact]
    public void BmpTgaAndGifDecodeToTheirPixels()
    {
        var rng = new Random(7);
        int w = 9, h = 6;
        var rgb = TestImages.RandomPixels(rng, w * h * 3);
        var bmp = ImageIO.Load(Put("a.bmp", TestImages.Bmp(w, h, rgb)));
        Assert.Equal((w, h, 3), (bmp.Width, bmp.Height, bmp.Channels));
        Assert.Equal(rgb, bmp.Pixels);

        var tga = ImageIO.Load(Put("a.tga", TestImages.Tga(w, h, 3, rgb)));
        Assert.Equal(rgb, tga.Pixels);
        // RLE: an image with runs (rows of equal pixels) and raw stretches.
        var runs = (byte[])rgb.Clone();
        for (int x = 0; x < w; x++) { runs[3 * x] = 10; runs[3 * x + 1] = 20; runs[3 * x + 2] = 30; }
        var tgaRle = ImageIO.Load(Put("rle.tga", TestImages.Tga(w, h, 3, runs, rle: true)));
        Assert.Equal(runs, tgaRle.Pixels);
        var grey = TestImages.RandomPixels(rng, w * h);
        var tgaGrey = ImageIO.Load(Put("g.tga", TestImages.Tga(w, h, 1, grey)));
        Assert.Equal(1, tgaGrey.Channels);
        Assert.Equal(grey, tgaGrey.Pixels);

        // GIF: a palette image (few colours), decoded as RGB or RGBA; compare the colour channels.
        var pal = new byte[w * h * 3];
        for (int i = 0; i < w * h; i++) { int k = rng.Next(5); pal[3 * i] = (byte)(50 * k); pal[3 * i + 1] = (byte)(255 - 40 * k); pal[3 * i + 2] = (byte)(17 * k); }
        var gif = ImageIO.Load(Put("a.gif", TestImages.Gif(w, h, pal)));
        Assert.Equal((w, h), (gif.Width, gif.Height));
        for (int i = 0; i < w * h; i++)
            for (int c = 0; c < 3; c++) Assert.Equal(pal[3 * i + c], gif.Pixels[i * gif.Channels + c]);
    }

    [Theory]
    [InlineData(3)]
    [InlineData(1)]
    public void JpegDecodesCloseToItsPixels(int channels)
    {
        int w = 32, h = 24;
        var px = TestImages.Smooth(w, h, channels);
        var img = ImageIO.Load(Put($"a{channels}.jpg", TestImages.Jpeg(w, h, channels, px)));
        Assert.Equal((w, h), (img.Width, img.Height));
        // Compare in grey where the writer may have stored a grey image as colour (or the other way round).
        double err = 0;
        for (int i = 0; i < w * h; i++)
        {
            double want = channels == 1 ? px[i] : (px[3 * i] + px[3 * i + 1] + px[3 * i + 2]) / 3.0;
            double got = img.Channels == 1 ? img.Pixels[i] : (img.Pixels[i * img.Channels] + img.Pixels[i * img.Channels + 1] + img.Pixels[i * img.Channels + 2]) / 3.0;
            err += Math.Abs(want - got);
        }
        Assert.True(err / (w * h) < 4, $"mean abs error {err / (w * h)}");
    }

    public static IEnumerable<object[]> Formats() =>
    [
        ["png", (Func<int, int, byte[], byte[]>)((w, h, px) => TestImages.Png(w, h, 3, px))],
        ["jpg", (Func<int, int, byte[], byte[]>)((w, h, px) => TestImages.Jpeg(w, h, 3, px))],
        ["bmp", (Func<int, int, byte[], byte[]>)TestImages.Bmp],
        ["tga", (Func<int, int, byte[], byte[]>)((w, h, px) => TestImages.Tga(w, h, 3, px))],
        ["rle.tga", (Func<int, int, byte[], byte[]>)((w, h, px) => TestImages.Tga(w, h, 3, px, rle: true))],
        ["gif", (Func<int, int, byte[], byte[]>)((w, h, px) => TestImages.Gif(w, h, px.Select(v => (byte)(v & 0xC0)).ToArray()))],
    ];

    [Theory]
    [MemberData(nameof(Formats))]
    public void TruncatedFilesAreRefusedByName(string ext, Func<int, int, byte[], byte[]> encode)
    {
        int w = 40, h = 30;
        var bytes = encode(w, h, TestImages.RandomPixels(new Random(8), w * h * 3));
        Assert.NotNull(ImageIO.Decode(bytes, "whole"));
        foreach (double frac in new[] { 0.95, 0.6, 0.3 })
        {
            string p = Put($"cut-{frac}.{ext}", bytes[..(int)(bytes.Length * frac)]);
            var e = Assert.Throws<InvalidDataException>(() => ImageIO.Load(p));
            Assert.StartsWith(p + ": ", e.Message);
            Assert.Matches("truncated|corrupt", e.Message);
        }
    }

    [Fact]
    public void MissingEmptyAndNonImageFilesAreRefusedByName()
    {
        string missing = Path.Combine(_dir, "missing.png");
        Assert.Equal($"{missing}: not found", Assert.Throws<InvalidDataException>(() => ImageIO.Load(missing)).Message);
        string empty = Put("empty.png", []);
        Assert.Equal($"{empty}: empty file", Assert.Throws<InvalidDataException>(() => ImageIO.Load(empty)).Message);
        string text = Put("notes.png", "this is not an image, only text"u8.ToArray());
        Assert.Contains("not an image", Assert.Throws<InvalidDataException>(() => ImageIO.Load(text)).Message);
        Assert.Contains("is a directory", Assert.Throws<InvalidDataException>(() => ImageIO.Load(_dir)).Message);
    }

    static ImageSpec Spec(int channels, int size, bool dark = true) =>
        new(channels, size, Enumerable.Repeat(0.25f, channels).ToArray(), Enumerable.Repeat(0.5f, channels).ToArray(), dark);

    static float[] Values(Tensor t) => t.contiguous().data<float>().ToArray();

    [Fact]
    public void ShrinkingAveragesBlocksAndNormalises()
    {
        // 56x56 grey -> 28x28: each output pixel is the mean of a 2x2 block, then (x - 0.25) / 0.5.
        var rng = new Random(9);
        var px = TestImages.RandomPixels(rng, 56 * 56);
        for (int x = 0; x < 56; x++) { px[x] = 0; px[55 * 56 + x] = 0; px[x * 56] = 0; px[x * 56 + 55] = 0; } // dark border: no inversion
        var t = ImageIO.ToModelInput(new RawImage(56, 56, 1, px), Spec(1, 28), InvertMode.Auto);
        Assert.Equal(new long[] { 1, 28, 28 }, t.shape);
        var v = Values(t);
        for (int y = 0; y < 28; y++)
            for (int x = 0; x < 28; x++)
            {
                double m = (px[2 * y * 56 + 2 * x] + px[2 * y * 56 + 2 * x + 1] + px[(2 * y + 1) * 56 + 2 * x] + px[(2 * y + 1) * 56 + 2 * x + 1]) / 4.0 / 255;
                Assert.Equal((m - 0.25) / 0.5, v[y * 28 + x], 4);
            }
    }

    [Fact]
    public void EnlargingIsBilinearWithHalfPixelCentres()
    {
        // 2x2 -> 4x4: output pixel i samples source coordinate (i + 0.5) / 2 - 0.5, clamped to [0, 1].
        var px = new byte[] { 0, 100, 200, 40 };
        var t = ImageIO.ToModelInput(new RawImage(2, 2, 1, px), new ImageSpec(1, 4, [0f], [1f]), InvertMode.Never);
        var v = Values(t);
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++)
            {
                double sy = Math.Clamp((y + 0.5) / 2 - 0.5, 0, 1), sx = Math.Clamp((x + 0.5) / 2 - 0.5, 0, 1);
                double top = px[0] * (1 - sx) + px[1] * sx, bottom = px[2] * (1 - sx) + px[3] * sx;
                Assert.Equal((top * (1 - sy) + bottom * sy) / 255, v[y * 4 + x], 4);
            }
    }

    [Fact]
    public void ColourBecomesLumaAndGreyBecomesColour()
    {
        var rng = new Random(10);
        var rgb = TestImages.RandomPixels(rng, 5 * 5 * 3);
        var grey = ImageIO.ToModelInput(new RawImage(5, 5, 3, rgb), new ImageSpec(1, 5, [0f], [1f]), InvertMode.Never);
        var g = Values(grey);
        for (int i = 0; i < 25; i++)
            Assert.Equal((0.299 * rgb[3 * i] + 0.587 * rgb[3 * i + 1] + 0.114 * rgb[3 * i + 2]) / 255, g[i], 4);

        var mono = TestImages.RandomPixels(rng, 25);
        var colour = Values(ImageIO.ToModelInput(new RawImage(5, 5, 1, mono), new ImageSpec(3, 5, [0f, 0f, 0f], [1f, 1f, 1f]), InvertMode.Never));
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 25; i++) Assert.Equal(mono[i] / 255.0, colour[c * 25 + i], 5);
    }

    [Fact]
    public void AlphaIsCompositedOverWhite()
    {
        var rng = new Random(12);
        var rgba = TestImages.RandomPixels(rng, 4 * 4 * 4);
        var v = Values(ImageIO.ToModelInput(new RawImage(4, 4, 4, rgba), new ImageSpec(3, 4, [0f, 0f, 0f], [1f, 1f, 1f]), InvertMode.Never));
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 16; i++)
            {
                double a = rgba[4 * i + 3] / 255.0;
                Assert.Equal(rgba[4 * i + c] / 255.0 * a + (1 - a), v[c * 16 + i], 4);
            }
        var ga = TestImages.RandomPixels(rng, 4 * 4 * 2);
        var gv = Values(ImageIO.ToModelInput(new RawImage(4, 4, 2, ga), new ImageSpec(1, 4, [0f], [1f]), InvertMode.Never));
        for (int i = 0; i < 16; i++)
        {
            double a = ga[2 * i + 1] / 255.0;
            Assert.Equal(ga[2 * i] / 255.0 * a + (1 - a), gv[i], 4);
        }
    }

    [Fact]
    public void LightBackgroundsAreInvertedForDarkBackgroundModels()
    {
        // A dark square on white: for a model trained on light-on-dark images it becomes a light square on black.
        var px = Enumerable.Repeat((byte)255, 8 * 8).ToArray();
        for (int y = 2; y < 6; y++) for (int x = 2; x < 6; x++) px[y * 8 + x] = 30;
        var img = new RawImage(8, 8, 1, px);
        var unit = new ImageSpec(1, 8, [0f], [1f], DarkBackground: true);
        var auto = Values(ImageIO.ToModelInput(img, unit, InvertMode.Auto));
        var never = Values(ImageIO.ToModelInput(img, unit, InvertMode.Never));
        var lightModel = Values(ImageIO.ToModelInput(img, unit with { DarkBackground = false }, InvertMode.Auto));
        for (int i = 0; i < 64; i++)
        {
            Assert.Equal(1 - px[i] / 255.0, auto[i], 5);
            Assert.Equal(px[i] / 255.0, never[i], 5);
            Assert.Equal(px[i] / 255.0, lightModel[i], 5);
        }
        // An image that already has a dark border is left alone; Always inverts anyway.
        var dark = new RawImage(8, 8, 1, px.Select(b => (byte)(255 - b)).ToArray());
        Assert.Equal(Values(ImageIO.ToModelInput(dark, unit, InvertMode.Never)), Values(ImageIO.ToModelInput(dark, unit, InvertMode.Auto)));
        Assert.Equal(auto, Values(ImageIO.ToModelInput(img, unit, InvertMode.Always)));
    }

    [Fact]
    public void NonSquareImagesArePaddedWithTheirBorderColour()
    {
        // 6 wide, 2 high -> 6x6 with the image in rows 2-3 and the border mean elsewhere.
        var rng = new Random(13);
        var px = TestImages.RandomPixels(rng, 12);
        double border = px.Average(b => (double)b) / 255; // every pixel of a 2-row image is on its border
        var v = Values(ImageIO.ToModelInput(new RawImage(6, 2, 1, px), new ImageSpec(1, 6, [0f], [1f]), InvertMode.Never));
        for (int y = 0; y < 6; y++)
            for (int x = 0; x < 6; x++)
                Assert.Equal(y is 2 or 3 ? px[(y - 2) * 6 + x] / 255.0 : border, v[y * 6 + x], 5);
    }

    [Fact]
    public void GridIsWrittenAsPngAndReadsBack()
    {
        var rng = new Random(14);
        int n = 5, c = 3, h = 4, w = 3, cols = 2, gap = 1;
        var vals = Enumerable.Range(0, n * c * h * w).Select(_ => (float)Math.Round(rng.NextDouble() * 255) / 255f).ToArray();
        using var images = torch.tensor(vals, [n, c, h, w]);
        var grid = ImageIO.Grid(images, cols, gap);
        string p = Path.Combine(_dir, "grid.png");
        ImageIO.SavePng(p, grid);
        var back = ImageIO.Load(p);
        Assert.Equal((cols * w + 3 * gap, 3 * h + 4 * gap, 3), (back.Width, back.Height, back.Channels));
        for (int i = 0; i < n; i++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int k = 0; k < c; k++)
                    {
                        int gy = gap + i / cols * (h + gap) + y, gx = gap + i % cols * (w + gap) + x;
                        Assert.Equal((byte)Math.Round(vals[((i * c + k) * h + y) * w + x] * 255), back[gy, gx, k]);
                    }
        Assert.Equal(128, back[0, 0, 0]); // the mid-grey gap
    }

    [Fact]
    public void ConfusionHeatMapColoursEachCellByItsRowFraction()
    {
        var rng = new Random(15);
        int k = 4;
        var m = new long[k, k];
        for (int i = 0; i < k; i++) for (int j = 0; j < k; j++) m[i, j] = rng.Next(0, 50);
        m[2, 0] = m[2, 1] = m[2, 2] = m[2, 3] = 0; // an empty row stays at the bottom of the scale
        var img = ImageIO.ConfusionHeatMap(m);
        string p = Path.Combine(_dir, "confusion.png");
        ImageIO.SavePng(p, img);
        var back = ImageIO.Load(p);
        Assert.Equal((img.Width, img.Height, 3), (back.Width, back.Height, back.Channels));
        Assert.True(back.Width >= ImageIO.HeatMargin + k * ImageIO.HeatCell + ImageIO.HeatBarWidth);
        for (int i = 0; i < k; i++)
        {
            long row = Enumerable.Range(0, k).Sum(j => m[i, j]);
            for (int j = 0; j < k; j++)
            {
                // The cell's corner pixel (the number is drawn in its middle).
                int y = ImageIO.HeatMargin + i * ImageIO.HeatCell + 1, x = ImageIO.HeatMargin + j * ImageIO.HeatCell + 1;
                var want = ImageIO.ColourOf(row == 0 ? 0 : (double)m[i, j] / row);
                Assert.Equal((want.R, want.G, want.B), (back[y, x, 0], back[y, x, 1], back[y, x, 2]));
            }
        }
        // The scale runs from dark (0) to light (1): luminance rises monotonically.
        double Lum((byte R, byte G, byte B) c) => 0.299 * c.R + 0.587 * c.G + 0.114 * c.B;
        for (int s = 1; s <= 20; s++) Assert.True(Lum(ImageIO.ColourOf(s / 20.0)) > Lum(ImageIO.ColourOf((s - 1) / 20.0)));
    }
}
