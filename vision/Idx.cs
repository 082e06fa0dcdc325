// The IDX format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"):
//   bytes 0-1   0x00 0x00                 magic
//   byte  2     element type              0x08 unsigned byte (the only type these data sets use; others are refused)
//   byte  3     number of dimensions d    1 for labels, 3 for images (count, rows, cols)
//   4 d bytes   each dimension, big-endian int32
//   then        the elements, row-major, exactly prod(dims) of them
// Files may be gzip-compressed (as distributed: *-ubyte.gz); compression is detected from the content (1f 8b), not
// from the name. Every failure is an InvalidDataException naming the file and the reason.
using System.Buffers.Binary;
using System.IO.Compression;

namespace Ssm.Vision;

/// <summary>An IDX array of unsigned bytes: the dimensions and the elements in row-major order.</summary>
public sealed record IdxArray(int[] Dims, byte[] Data)
{
    public long Count => Dims.Length == 0 ? 0 : Dims[0];
}

public static class Idx
{
    /// <summary>The IDX element-type code of unsigned bytes.</summary>
    public const byte UnsignedByte = 0x08;

    static string TypeName(byte code) => code switch
    {
        0x08 => "unsigned byte", 0x09 => "signed byte", 0x0B => "int16", 0x0C => "int32", 0x0D => "float32", 0x0E => "float64",
        _ => "unknown",
    };

    /// <summary>Reads an IDX file (gzip or not) of unsigned bytes.</summary>
    /// <param name="expectedDims">If set, the number of dimensions the file must have (1 for labels, 3 for images).</param>
    /// <exception cref="InvalidDataException">Missing, bad magic, unsupported type, wrong dimensions, truncated or too long.</exception>
    public static IdxArray Read(string path, int? expectedDims = null)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (FileNotFoundException) { throw new InvalidDataException($"{path}: not found"); }
        catch (DirectoryNotFoundException) { throw new InvalidDataException($"{path}: not found"); }
        if (bytes.Length >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B) bytes = Gunzip(path, bytes);
        return Parse(path, bytes, expectedDims);
    }

    /// <summary>Reads an image file: dims (count, rows, cols).</summary>
    public static IdxArray ReadImages(string path) => Read(path, 3);

    /// <summary>Reads a label file: dims (count).</summary>
    public static IdxArray ReadLabels(string path) => Read(path, 1);

    static byte[] Gunzip(string path, byte[] gz)
    {
        try
        {
            using var input = new GZipStream(new MemoryStream(gz), CompressionMode.Decompress);
            using var output = new MemoryStream();
            input.CopyTo(output);
            return output.ToArray();
        }
        // A cut-off gzip stream ends early (EndOfStream) or fails its checks (InvalidData), depending on where it was cut.
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or IOException)
        {
            throw new InvalidDataException($"{path}: truncated or corrupt gzip data ({e.Message})", e);
        }
    }

    /// <summary>Parses the bytes of an (uncompressed) IDX file; <paramref name="name"/> is used in errors.</summary>
    public static IdxArray Parse(string name, ReadOnlySpan<byte> bytes, int? expectedDims = null)
    {
        if (bytes.Length < 4)
            throw new InvalidDataException($"{name}: truncated: {bytes.Length} bytes, an IDX header needs at least 4");
        if (bytes[0] != 0 || bytes[1] != 0)
            throw new InvalidDataException($"{name}: bad magic number 0x{bytes[0]:X2}{bytes[1]:X2}{bytes[2]:X2}{bytes[3]:X2} (an IDX file starts with 0x0000, then the type and the number of dimensions)");
        byte type = bytes[2];
        if (type != UnsignedByte)
            throw new InvalidDataException($"{name}: element type 0x{type:X2} ({TypeName(type)}) is not supported; expected 0x08 (unsigned byte)");
        int nd = bytes[3];
        if (nd == 0) throw new InvalidDataException($"{name}: the header declares 0 dimensions");
        if (expectedDims is int want && nd != want)
            throw new InvalidDataException($"{name}: has {nd} dimension(s), expected {want} ({(want == 3 ? "images: count, rows, cols" : want == 1 ? "labels: count" : "")})");
        int header = 4 + 4 * nd;
        if (bytes.Length < header)
            throw new InvalidDataException($"{name}: truncated: the header declares {nd} dimensions ({header} bytes) but the file has {bytes.Length} bytes");
        var dims = new int[nd];
        long total = 1;
        for (int i = 0; i < nd; i++)
        {
            int d = BinaryPrimitives.ReadInt32BigEndian(bytes.Slice(4 + 4 * i, 4));
            if (d <= 0) throw new InvalidDataException($"{name}: dimension {i} is {d}; every dimension must be positive");
            dims[i] = d;
            total *= d;
            if (total > Array.MaxLength) throw new InvalidDataException($"{name}: the dimensions [{string.Join(", ", dims.Take(i + 1))}] hold more than {Array.MaxLength} elements");
        }
        long have = bytes.Length - header;
        if (have < total)
            throw new InvalidDataException($"{name}: truncated: dimensions [{string.Join(", ", dims)}] need {total} bytes of data, the file has {have}");
        if (have > total)
            throw new InvalidDataException($"{name}: {have - total} unexpected bytes after the data of dimensions [{string.Join(", ", dims)}]");
        return new IdxArray(dims, bytes.Slice(header).ToArray());
    }

    /// <summary>Encodes unsigned bytes with their dimensions as an IDX file's bytes.</summary>
    public static byte[] Encode(ReadOnlySpan<byte> data, params int[] dims)
    {
        if (dims.Length is 0 or > 255) throw new ArgumentException("IDX needs 1 to 255 dimensions", nameof(dims));
        long total = 1;
        foreach (int d in dims)
        {
            if (d <= 0) throw new ArgumentException("IDX dimensions must be positive", nameof(dims));
            total *= d;
        }
        if (total != data.Length) throw new ArgumentException($"{data.Length} elements do not fill dimensions [{string.Join(", ", dims)}]", nameof(data));
        var bytes = new byte[4 + 4 * dims.Length + data.Length];
        bytes[2] = UnsignedByte;
        bytes[3] = (byte)dims.Length;
        for (int i = 0; i < dims.Length; i++) BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + 4 * i, 4), dims[i]);
        data.CopyTo(bytes.AsSpan(4 + 4 * dims.Length));
        return bytes;
    }

    /// <summary>Writes an IDX file atomically, gzip-compressed when <paramref name="gzip"/> (or the name ends in .gz).</summary>
    public static void Write(string path, ReadOnlySpan<byte> data, int[] dims, bool? gzip = null)
    {
        byte[] bytes = Encode(data, dims);
        bool gz = gzip ?? path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase);
        if (!gz) { Ssm.Backbone.IO.AtomicFile.WriteAllBytes(path, bytes); return; }
        Ssm.Backbone.IO.AtomicFile.Write(path, s =>
        {
            using var z = new GZipStream(s, CompressionLevel.Optimal, leaveOpen: true);
            z.Write(bytes);
        });
    }
}
