// Image files in and out, and the conversion of any image to what a classifier expects.
//
// Reading: PNG, JPEG, BMP, GIF (first frame) and TGA through StbImageSharp, any size, 1-4 channels (grey, grey+alpha,
// RGB, RGBA), 8 bits per channel (16-bit PNGs are reduced to 8 bits by stb_image). stb_image decodes a truncated
// JPEG, BMP, TGA or GIF without complaint (missing data reads as zeros), so before decoding, the file's structure is
// walked far enough to know that all of its image data is there; a cut-off file is refused with the reason.
//
// To a model's input (ToModelInput), in this order, all in tensor ops:
//   1. bytes (h w c) -> float (c h w) in [0, 1]
//   2. alpha: composited over white (what viewers and browsers show behind a transparent image)
//   3. channels: grey -> RGB by repeating; RGB -> grey by ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B (PIL's "L")
//   4. polarity: Fashion-MNIST and MNIST show a light object on a black background. A model trained on such data
//      records "background": "dark" in its config; an input whose border is brighter than mid-grey (a photo on a
//      white background) is then inverted (InvertMode.Auto; Always / Never force it)
//   5. aspect: padded to a square with the mean colour of its border, so the object keeps its proportions
//   6. size: area averaging when shrinking (every source pixel counts, no aliasing), bilinear when enlarging
//   7. normalised like the training data: (x - mean) / std per channel
//
// Writing: PNG through StbImageWriteSharp (atomically): image grids, and a confusion-matrix heat map with a colour scale.
using System.Buffers.Binary;
using StbImageSharp;
using StbImageWriteSharp;
using TorchSharp;
using Ssm.Backbone.IO;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>An 8-bit image: <paramref name="Pixels"/> holds height x width x channels bytes, row-major, interleaved.</summary>
public sealed record RawImage(int Width, int Height, int Channels, byte[] Pixels)
{
    public byte this[int y, int x, int c] => Pixels[((long)y * Width + x) * Channels + c];
}

/// <summary>When to invert an input's intensities (see the file comment, step 4).</summary>
public enum InvertMode { Auto, Always, Never }

/// <summary>What a model expects: channels, square size, normalisation and the polarity of its training data.</summary>
public sealed record ImageSpec(int Channels, int Size, float[] Mean, float[] Std, bool DarkBackground = true)
{
    public void Validate()
    {
        if (Channels is not (1 or 3)) throw new ArgumentException($"models take 1 or 3 channels, not {Channels}");
        if (Size <= 0) throw new ArgumentException($"image size must be positive, not {Size}");
        if (Mean.Length != Channels || Std.Length != Channels)
            throw new ArgumentException($"normalisation needs one mean and one std per channel ({Channels}), got {Mean.Length} and {Std.Length}");
        if (Std.Any(s => !(s > 0))) throw new ArgumentException("normalisation std must be positive");
    }
}

public static class ImageIO
{
    /// <summary>File name extensions taken as images when a directory or glob is given.</summary>
    public static IReadOnlyList<string> Extensions { get; } = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga"];

    public static bool HasImageExtension(string path) =>
        Extensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    /// <summary>Reads and decodes an image file.</summary>
    /// <exception cref="InvalidDataException">Missing, empty, truncated, corrupt or not an image; the message names the file.</exception>
    public static RawImage Load(string path)
    {
        if (Directory.Exists(path)) throw new InvalidDataException($"{path}: is a directory, not an image");
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (FileNotFoundException) { throw new InvalidDataException($"{path}: not found"); }
        catch (DirectoryNotFoundException) { throw new InvalidDataException($"{path}: not found"); }
        catch (UnauthorizedAccessException) { throw new InvalidDataException($"{path}: permission denied"); }
        return Decode(bytes, path);
    }

    /// <summary>Decodes image bytes; <paramref name="name"/> is used in errors.</summary>
    public static RawImage Decode(byte[] bytes, string name)
    {
        if (bytes.Length == 0) throw new InvalidDataException($"{name}: empty file");
        string format = Sniff(bytes);
        string? problem = format switch
        {
            "JPEG" => CheckJpeg(bytes),
            "BMP" => CheckBmp(bytes),
            "GIF" => CheckGif(bytes),
            "TGA" => CheckTga(bytes),
            _ => null, // PNG: stb_image checks the zlib stream itself and fails on a cut-off file
        };
        if (problem is not null) throw new InvalidDataException($"{name}: {problem}");
        ImageResult img;
        try { img = ImageResult.FromMemory(bytes, StbImageSharp.ColorComponents.Default); }
        catch (Exception e) // stb_image reports every failure as a plain exception with its short reason
        {
            string reason = e.Message.Trim();
            if (format == "unknown" || reason == "unknown image type")
                throw new InvalidDataException($"{name}: not an image in a supported format (PNG, JPEG, BMP, GIF, TGA)");
            throw new InvalidDataException($"{name}: corrupt or truncated {format} data" + (reason.Length > 0 ? $" ({reason})" : ""));
        }
        int c = img.Comp switch
        {
            StbImageSharp.ColorComponents.Grey => 1,
            StbImageSharp.ColorComponents.GreyAlpha => 2,
            StbImageSharp.ColorComponents.RedGreenBlue => 3,
            StbImageSharp.ColorComponents.RedGreenBlueAlpha => 4,
            _ => throw new InvalidDataException($"{name}: unsupported channel layout {img.Comp}"),
        };
        if (img.Width <= 0 || img.Height <= 0 || img.Data is null || img.Data.LongLength != (long)img.Width * img.Height * c)
            throw new InvalidDataException($"{name}: the decoder returned no usable pixels");
        return new RawImage(img.Width, img.Height, c, img.Data);
    }

    /// <summary>The format by its signature bytes (TGA has none: anything else is tried as TGA by stb_image).</summary>
    static string Sniff(byte[] b)
    {
        if (b.Length >= 8 && b[0] == 0x89 && b[1] == 'P' && b[2] == 'N' && b[3] == 'G') return "PNG";
        if (b.Length >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return "JPEG";
        if (b.Length >= 6 && b[0] == 'G' && b[1] == 'I' && b[2] == 'F' && b[3] == '8') return "GIF";
        if (b.Length >= 2 && b[0] == 'B' && b[1] == 'M') return "BMP";
        if (b.Length >= 18 && b[1] <= 1 && b[2] is 1 or 2 or 3 or 9 or 10 or 11) return "TGA";
        return "unknown";
    }

    // JPEG (ITU T.81, Annex B): SOI, then marker segments (FF xx + 2-byte big-endian length); each SOS header is
    // followed by entropy-coded data in which FF is stuffed as FF 00 and RSTn markers (FF D0-D7) may appear; the image
    // is complete when EOI (FF D9) is reached. A file that ends before EOI is truncated.
    static string? CheckJpeg(byte[] b)
    {
        int p = 2;
        while (true)
        {
            while (p < b.Length && b[p] != 0xFF) p++;           // tolerate junk between segments, as decoders do
            while (p < b.Length && b[p] == 0xFF) p++;           // fill bytes
            if (p >= b.Length) return "truncated JPEG (the file ends before the end-of-image marker)";
            byte m = b[p++];
            if (m == 0xD9) return null;                          // EOI
            if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue; // markers without a length
            if (p + 2 > b.Length) return "truncated JPEG (the file ends inside a marker segment)";
            int len = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(p, 2));
            if (len < 2) return "corrupt JPEG (a marker segment has a length below 2)";
            if (p + len > b.Length) return "truncated JPEG (the file ends inside a marker segment)";
            p += len;
            if (m != 0xDA) continue;
            // SOS: skip the entropy-coded data up to the next marker that is neither stuffing nor a restart marker.
            while (true)
            {
                while (p < b.Length && b[p] != 0xFF) p++;
                if (p + 1 >= b.Length) return "truncated JPEG (the file ends inside the image data)";
                byte next = b[p + 1];
                if (next == 0x00 || (next >= 0xD0 && next <= 0xD7) || next == 0xFF) { p += next == 0xFF ? 1 : 2; continue; }
                break;
            }
        }
    }

    // BMP: the file header's pixel-data offset and the info header's width, height and bits per pixel fix how many
    // bytes the pixel rows take (rows padded to 4 bytes); compressed bitmaps (RLE) carry that size in biSizeImage.
    static string? CheckBmp(byte[] b)
    {
        if (b.Length < 26) return "truncated BMP (the file ends inside its headers)";
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(10, 4));
        uint headerSize = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(14, 4));
        long width, height; int bpp; uint compression = 0, sizeImage = 0;
        if (headerSize == 12)
        {
            width = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(18, 2));
            height = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(20, 2));
            bpp = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(24, 2));
        }
        else
        {
            if (b.Length < 54) return "truncated BMP (the file ends inside its headers)";
            width = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(18, 4));
            height = Math.Abs((long)BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(22, 4)));
            bpp = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(28, 2));
            compression = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(30, 4));
            sizeImage = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(34, 4));
        }
        if (width <= 0 || height <= 0 || bpp is not (1 or 4 or 8 or 16 or 24 or 32))
            return $"corrupt BMP header ({width}x{height}, {bpp} bits per pixel)";
        long need = compression is 0 or 3 or 6 ? (width * bpp + 31) / 32 * 4 * height : sizeImage;
        if (offset + need > b.Length)
            return $"truncated BMP (the pixel data needs {offset + need} bytes, the file has {b.Length})";
        return null;
    }

    // GIF (89a spec): header, logical screen descriptor, optional global colour table, then blocks: extensions (21)
    // and image descriptors (2C), each followed by sub-blocks ending in a zero-length one, and the trailer (3B).
    // The first frame (the one decoded) must be complete.
    static string? CheckGif(byte[] b)
    {
        const string cut = "truncated GIF (the file ends before the first frame's data is complete)";
        if (b.Length < 13) return cut;
        int p = 13;
        if ((b[10] & 0x80) != 0) p += 3 << ((b[10] & 7) + 1);
        while (true)
        {
            if (p >= b.Length) return cut;
            byte block = b[p++];
            if (block == 0x3B) return "GIF without any image";
            if (block == 0x21)
            {
                if (p >= b.Length) return cut;
                p++; // the extension label
                if (!SkipSubBlocks(b, ref p)) return cut;
            }
            else if (block == 0x2C)
            {
                if (p + 9 > b.Length) return cut;
                byte flags = b[p + 8];
                p += 9;
                if ((flags & 0x80) != 0) p += 3 << ((flags & 7) + 1);
                p++; // LZW minimum code size
                return p <= b.Length && SkipSubBlocks(b, ref p) ? null : cut;
            }
            else return $"corrupt GIF (unexpected block 0x{block:X2})";
        }
    }

    static bool SkipSubBlocks(byte[] b, ref int p)
    {
        while (true)
        {
            if (p >= b.Length) return false;
            int n = b[p++];
            if (n == 0) return true;
            p += n;
        }
    }

    // TGA (Truevision spec 2.0): an 18-byte header, an image ID, an optional colour map, then width x height pixels,
    // raw (types 1-3) or run-length packets (9-11: a count byte, then one pixel for a run or count pixels for a raw packet).
    static string? CheckTga(byte[] b)
    {
        int idLen = b[0], type = b[2];
        int cmapLen = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(5, 2)), cmapBits = b[7];
        int width = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(12, 2));
        int height = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(14, 2));
        int bpp = b[16];
        if (width == 0 || height == 0 || bpp is not (8 or 15 or 16 or 24 or 32)) return null; // not ours to judge: let stb_image decide
        int pixelBytes = (bpp + 7) / 8;
        long p = 18 + idLen + (b[1] == 1 ? (long)cmapLen * ((cmapBits + 7) / 8) : 0);
        long pixels = (long)width * height;
        if (type is 1 or 2 or 3)
            return p + pixels * pixelBytes > b.Length ? $"truncated TGA (the pixel data needs {p + pixels * pixelBytes} bytes, the file has {b.Length})" : null;
        for (long done = 0; done < pixels;)
        {
            if (p >= b.Length) return "truncated TGA (the file ends inside the run-length data)";
            int head = b[p++];
            int count = (head & 0x7F) + 1;
            p += (head & 0x80) != 0 ? pixelBytes : (long)count * pixelBytes;
            done += count;
            if (p > b.Length) return "truncated TGA (the file ends inside the run-length data)";
        }
        return null;
    }

    // ---------------------------------------------------------------- to a model's input

    /// <summary>An image as a float tensor (c, h, w) in [0, 1], on the CPU.</summary>
    public static Tensor ToTensor(RawImage img)
    {
        using var scope = torch.NewDisposeScope();
        var t = torch.tensor(img.Pixels, [img.Height, img.Width, img.Channels], dtype: ScalarType.Byte);
        return t.permute(2, 0, 1).to_type(ScalarType.Float32).div_(255f).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Converts a decoded image to a model's input (c, size, size), normalised (steps 2-7 of the file comment).
    /// </summary>
    public static Tensor ToModelInput(RawImage img, ImageSpec spec, InvertMode invert = InvertMode.Auto)
    {
        spec.Validate();
        using var scope = torch.NewDisposeScope();
        var x = ToTensor(img);                                                   // (c h w) in [0, 1]
        if (img.Channels is 2 or 4)
        {
            var alpha = x[^1..];                                                 // (1 h w)
            x = x[..^1] * alpha + (1 - alpha);                                   // over white
        }
        x = ConvertChannels(x, spec.Channels);
        if (invert == InvertMode.Always || (invert == InvertMode.Auto && spec.DarkBackground && BorderMean(x).mean().item<float>() > 0.5f))
            x = 1 - x;
        x = PadToSquare(x);
        x = Resize(x, spec.Size);
        var mean = torch.tensor(spec.Mean).view(-1, 1, 1);
        var std = torch.tensor(spec.Std).view(-1, 1, 1);
        return ((x - mean) / std).MoveToOuterDisposeScope();
    }

    /// <summary>(c h w) with c in {1, 3} -> (channels h w): BT.601 luma for RGB -> grey, repetition for grey -> RGB.</summary>
    public static Tensor ConvertChannels(Tensor x, int channels)
    {
        long c = x.shape[0];
        if (c == channels) return x;
        if (c == 3 && channels == 1)
        {
            var w = torch.tensor(new[] { 0.299f, 0.587f, 0.114f }, dtype: x.dtype, device: x.device).view(3, 1, 1);
            return (x * w).sum(0, keepdim: true);
        }
        if (c == 1 && channels == 3) return x.expand(3, -1, -1).contiguous();
        throw new ArgumentException($"cannot convert {c} channels to {channels}");
    }

    /// <summary>Mean of each channel over the one-pixel border of (c h w): (c).</summary>
    public static Tensor BorderMean(Tensor x)
    {
        long h = x.shape[1], w = x.shape[2];
        if (h <= 2 || w <= 2) return x.mean([1, 2]);
        var top = x[.., 0, ..].sum(1);
        var bottom = x[.., -1, ..].sum(1);
        var left = x[.., 1..^1, 0].sum(1);
        var right = x[.., 1..^1, -1].sum(1);
        return (top + bottom + left + right) / (2 * w + 2 * (h - 2));
    }

    /// <summary>Pads (c h w) to a square, centred, with the mean colour of its border.</summary>
    public static Tensor PadToSquare(Tensor x)
    {
        long h = x.shape[1], w = x.shape[2];
        if (h == w) return x;
        long s = Math.Max(h, w);
        var fill = BorderMean(x).view(-1, 1, 1).expand(-1, s, s);
        var outT = fill.contiguous();
        long top = (s - h) / 2, left = (s - w) / 2;
        outT[TensorIndex.Colon, TensorIndex.Slice(top, top + h), TensorIndex.Slice(left, left + w)] = x;
        return outT;
    }

    /// <summary>Resizes a square (c s s) image to (c size size): area averaging to shrink, bilinear to enlarge.</summary>
    public static Tensor Resize(Tensor x, int size)
    {
        long s = x.shape[1];
        if (s == size && x.shape[2] == size) return x;
        var b = x.unsqueeze(0);
        var r = s > size
            ? nn.functional.interpolate(b, [size, size], mode: InterpolationMode.Area)
            : nn.functional.interpolate(b, [size, size], mode: InterpolationMode.Bilinear, align_corners: false);
        return r.squeeze(0);
    }

    // ---------------------------------------------------------------- writing

    /// <summary>Writes an 8-bit image (1-4 channels) as PNG, atomically.</summary>
    public static void SavePng(string path, RawImage img)
    {
        var comp = img.Channels switch
        {
            1 => StbImageWriteSharp.ColorComponents.Grey,
            2 => StbImageWriteSharp.ColorComponents.GreyAlpha,
            3 => StbImageWriteSharp.ColorComponents.RedGreenBlue,
            4 => StbImageWriteSharp.ColorComponents.RedGreenBlueAlpha,
            _ => throw new ArgumentException($"PNG takes 1-4 channels, not {img.Channels}"),
        };
        AtomicFile.Write(path, s => new ImageWriter().WritePng(img.Pixels, img.Width, img.Height, comp, s));
    }

    /// <summary>An 8-bit image from a float tensor (c h w) in [0, 1] (values outside are clipped).</summary>
    public static RawImage FromTensor(Tensor chw)
    {
        using var scope = torch.NewDisposeScope();
        var hwc = chw.detach().to(torch.CPU).to_type(ScalarType.Float32).clamp(0, 1).mul(255).round().to_type(ScalarType.Byte).permute(1, 2, 0).contiguous();
        return new RawImage((int)chw.shape[2], (int)chw.shape[1], (int)chw.shape[0], hwc.data<byte>().ToArray());
    }

    /// <summary>
    /// Tiles images (n c h w) in [0, 1] into a grid of <paramref name="columns"/> columns with a
    /// <paramref name="gap"/>-pixel mid-grey gap, each image enlarged <paramref name="scale"/> times (nearest).
    /// </summary>
    public static RawImage Grid(Tensor images, int columns = 8, int gap = 2, int scale = 1)
    {
        if (images.dim() != 4) throw new ArgumentException("Grid takes images (n, c, h, w)");
        if (columns <= 0 || scale <= 0 || gap < 0) throw new ArgumentException("Grid needs columns > 0, scale > 0 and gap >= 0");
        using var scope = torch.NewDisposeScope();
        long n = images.shape[0], c = images.shape[1], h = images.shape[2] * scale, w = images.shape[3] * scale;
        var x = images.detach().to(torch.CPU).to_type(ScalarType.Float32);
        if (scale > 1) x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3);
        long cols = Math.Min(columns, Math.Max(n, 1)), rows = (n + cols - 1) / cols;
        var canvas = torch.full([c, rows * h + (rows + 1) * gap, cols * w + (cols + 1) * gap], 0.5f);
        for (long i = 0; i < n; i++)
        {
            long r = i / cols, k = i % cols;
            long y0 = gap + r * (h + gap), x0 = gap + k * (w + gap);
            canvas[TensorIndex.Colon, TensorIndex.Slice(y0, y0 + h), TensorIndex.Slice(x0, x0 + w)] = x[i];
        }
        return FromTensor(canvas);
    }

    // The colour scale of the heat map: viridis (perceptually uniform, readable in grey and by colour-blind readers),
    // given by five of its colours and interpolated linearly between them.
    static readonly (float R, float G, float B)[] Viridis =
    [
        (0x44, 0x01, 0x54), (0x3B, 0x52, 0x8B), (0x21, 0x91, 0x8C), (0x5E, 0xC9, 0x62), (0xFD, 0xE7, 0x25),
    ];

    /// <summary>The heat-map colour of a value in [0, 1].</summary>
    public static (byte R, byte G, byte B) ColourOf(double v)
    {
        v = Math.Clamp(double.IsFinite(v) ? v : 0, 0, 1) * (Viridis.Length - 1);
        int i = Math.Min((int)v, Viridis.Length - 2);
        double f = v - i;
        var (a, b) = (Viridis[i], Viridis[i + 1]);
        return ((byte)Math.Round(a.R + (b.R - a.R) * f), (byte)Math.Round(a.G + (b.G - a.G) * f), (byte)Math.Round(a.B + (b.B - a.B) * f));
    }

    // A 3x5 pixel font for the digits, one row per string, drawn at 2x.
    static readonly string[][] Digits =
    [
        ["###", "#.#", "#.#", "#.#", "###"], [".#.", "##.", ".#.", ".#.", "###"], ["###", "..#", "###", "#..", "###"],
        ["###", "..#", "###", "..#", "###"], ["#.#", "#.#", "###", "..#", "..#"], ["###", "#..", "###", "..#", "###"],
        ["###", "#..", "###", "#.#", "###"], ["###", "..#", "..#", "..#", "..#"], ["###", "#.#", "###", "#.#", "###"],
        ["###", "#.#", "###", "..#", "###"],
    ];

    const int FontScale = 2, GlyphW = 3 * FontScale, GlyphH = 5 * FontScale, GlyphGap = FontScale;

    static int TextWidth(string s) => s.Length * (GlyphW + GlyphGap) - GlyphGap;

    static void DrawText(byte[] px, int width, int x0, int y0, string s, (byte R, byte G, byte B) colour)
    {
        int height = px.Length / (3 * width);
        for (int k = 0; k < s.Length; k++)
        {
            if (s[k] is < '0' or > '9') continue;
            var g = Digits[s[k] - '0'];
            for (int gy = 0; gy < 5; gy++)
                for (int gx = 0; gx < 3; gx++)
                {
                    if (g[gy][gx] != '#') continue;
                    for (int dy = 0; dy < FontScale; dy++)
                        for (int dx = 0; dx < FontScale; dx++)
                        {
                            int x = x0 + k * (GlyphW + GlyphGap) + gx * FontScale + dx, y = y0 + gy * FontScale + dy;
                            if (x < 0 || y < 0 || x >= width || y >= height) continue;
                            long o = ((long)y * width + x) * 3;
                            px[o] = colour.R; px[o + 1] = colour.G; px[o + 2] = colour.B;
                        }
                }
        }
    }

    static void FillRect(byte[] px, int width, int x0, int y0, int w, int h, (byte R, byte G, byte B) colour)
    {
        for (int y = y0; y < y0 + h; y++)
            for (int x = x0; x < x0 + w; x++)
            {
                long o = ((long)y * width + x) * 3;
                px[o] = colour.R; px[o + 1] = colour.G; px[o + 2] = colour.B;
            }
    }

    /// <summary>Layout constants of <see cref="ConfusionHeatMap"/> (exposed for tests).</summary>
    public const int HeatCell = 32, HeatMargin = 28, HeatBarWidth = 16, HeatBarGap = 12;

    /// <summary>
    /// A confusion-matrix heat map (RGB): row i = true class i, column j = predicted class j; each cell's colour is the
    /// fraction of class i's samples predicted as j (rows sum to 1; viridis, dark = 0, yellow = 1) and its number the
    /// same fraction in percent. Class indices label the rows (left) and columns (top); a colour bar with its 0 and 100
    /// ends stands at the right. The class names belong in the accompanying text (eval prints them).
    /// </summary>
    public static RawImage ConfusionHeatMap(long[,] counts)
    {
        int k = counts.GetLength(0);
        if (k == 0 || counts.GetLength(1) != k) throw new ArgumentException("a confusion matrix is square and not empty");
        int gridW = k * HeatCell;
        int width = HeatMargin + gridW + HeatBarGap + HeatBarWidth + 4 + TextWidth("100") + 4;
        int height = HeatMargin + gridW + 8;
        var px = new byte[width * height * 3];
        Array.Fill(px, (byte)255);
        var black = ((byte)0, (byte)0, (byte)0);
        bool text = HeatCell >= TextWidth("100") + 4;
        for (int i = 0; i < k; i++)
        {
            long row = 0;
            for (int j = 0; j < k; j++) row += counts[i, j];
            string label = i.ToString(System.Globalization.CultureInfo.InvariantCulture);
            DrawText(px, width, HeatMargin - 4 - TextWidth(label), HeatMargin + i * HeatCell + (HeatCell - GlyphH) / 2, label, black);
            DrawText(px, width, HeatMargin + i * HeatCell + (HeatCell - TextWidth(label)) / 2, (HeatMargin - GlyphH) / 2, label, black);
            for (int j = 0; j < k; j++)
            {
                double f = row > 0 ? (double)counts[i, j] / row : 0;
                var colour = ColourOf(f);
                FillRect(px, width, HeatMargin + j * HeatCell, HeatMargin + i * HeatCell, HeatCell, HeatCell, colour);
                if (!text) continue;
                string pct = Math.Round(f * 100).ToString(System.Globalization.CultureInfo.InvariantCulture);
                // Light text on the dark end of the scale, dark text on the light end.
                var ink = f < 0.6 ? ((byte)255, (byte)255, (byte)255) : black;
                DrawText(px, width, HeatMargin + j * HeatCell + (HeatCell - TextWidth(pct)) / 2,
                    HeatMargin + i * HeatCell + (HeatCell - GlyphH) / 2, pct, ink);
            }
        }
        // Colour bar: 1 (100%) at the top, 0 at the bottom.
        int barX = HeatMargin + gridW + HeatBarGap;
        for (int y = 0; y < gridW; y++)
            FillRect(px, width, barX, HeatMargin + y, HeatBarWidth, 1, ColourOf(1 - (double)y / Math.Max(1, gridW - 1)));
        DrawText(px, width, barX + HeatBarWidth + 4, HeatMargin, "100", black);
        DrawText(px, width, barX + HeatBarWidth + 4, HeatMargin + gridW - GlyphH, "0", black);
        return new RawImage(width, height, 3, px);
    }
}
