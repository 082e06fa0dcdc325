// NumPy .npy (format version 1.0): a magic string, a Python-dict header padded to a multiple of 64 bytes, then the raw
// little-endian C-order data. Enough for exchanging float32 arrays with Python (np.load) in interoperability checks.
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.IO;

public static class Npy
{
    static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0];

    static string Descr(ScalarType t) => t switch
    {
        ScalarType.Float32 => "<f4", ScalarType.Float64 => "<f8", ScalarType.Int64 => "<i8", ScalarType.Int32 => "<i4",
        ScalarType.Byte => "|u1", ScalarType.Int8 => "|i1", ScalarType.Float16 => "<f2", ScalarType.Bool => "|b1",
        _ => throw new ArgumentException($"npy: dtype {t} has no NumPy equivalent (convert to float32 first)"),
    };

    /// <summary>Writes a tensor (any device) as a C-order .npy file, atomically.</summary>
    public static void Save(string path, Tensor t)
    {
        using var cpu = t.detach().cpu().contiguous();
        string shape = t.dim() == 0 ? "()" : t.dim() == 1 ? $"({t.shape[0]},)" : "(" + string.Join(", ", t.shape) + ")";
        string dict = $"{{'descr': '{Descr(t.dtype)}', 'fortran_order': False, 'shape': {shape}, }}";
        int unpadded = Magic.Length + 2 + dict.Length + 1;
        string header = dict + new string(' ', (64 - unpadded % 64) % 64) + "\n";
        long bytes = cpu.numel() * cpu.ElementSize;
        AtomicFile.Write(path, s =>
        {
            s.Write(Magic);
            s.Write(BitConverter.GetBytes((ushort)header.Length));
            s.Write(Encoding.ASCII.GetBytes(header));
            if (bytes == 0) return;
            unsafe
            {
                var ptr = (byte*)Native.TensorPointer.Of(cpu);
                for (long off = 0; off < bytes; off += int.MaxValue / 2)
                    s.Write(new ReadOnlySpan<byte>(ptr + off, (int)Math.Min(int.MaxValue / 2, bytes - off)));
            }
        });
    }

    /// <summary>Reads a .npy file of a supported dtype (C order, little-endian).</summary>
    /// <exception cref="InvalidDataException">Not an .npy file, an unsupported dtype/order, or truncated data.</exception>
    public static Tensor Load(string path)
    {
        var data = File.ReadAllBytes(path);
        if (data.Length < 10 || !data.AsSpan(0, 6).SequenceEqual(Magic.AsSpan(0, 6)))
            throw new InvalidDataException($"{path}: not a .npy file");
        int major = data[6];
        int hlen = major == 1 ? BitConverter.ToUInt16(data, 8) : BitConverter.ToInt32(data, 8);
        int start = major == 1 ? 10 : 12;
        if (start + hlen > data.Length) throw new InvalidDataException($"{path}: truncated header");
        string header = Encoding.ASCII.GetString(data, start, hlen);
        string Field(string key)
        {
            int i = header.IndexOf($"'{key}'", StringComparison.Ordinal);
            if (i < 0) throw new InvalidDataException($"{path}: header lacks '{key}'");
            int colon = header.IndexOf(':', i);
            return header[(colon + 1)..].TrimStart();
        }
        string descr = Field("descr");
        descr = descr[1..descr.IndexOf(descr[0], 1)];
        if (Field("fortran_order").StartsWith("True", StringComparison.Ordinal)) throw new InvalidDataException($"{path}: Fortran order is not supported");
        string shapeText = Field("shape");
        shapeText = shapeText[1..shapeText.IndexOf(')')];
        long[] shape = shapeText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray();
        var type = descr switch
        {
            "<f4" => ScalarType.Float32, "<f8" => ScalarType.Float64, "<i8" => ScalarType.Int64, "<i4" => ScalarType.Int32,
            "|u1" => ScalarType.Byte, "|i1" => ScalarType.Int8, "<f2" => ScalarType.Float16, "|b1" => ScalarType.Bool,
            _ => throw new InvalidDataException($"{path}: dtype '{descr}' is not supported"),
        };
        var t = torch.empty(shape, type);
        long bytes = t.numel() * t.ElementSize;
        int offset = start + hlen;
        if (data.Length - offset != bytes) throw new InvalidDataException($"{path}: {data.Length - offset} data bytes, the header says {bytes}");
        if (bytes > 0) Marshal.Copy(data, offset, Native.TensorPointer.Of(t), (int)bytes);
        return t;
    }
}
