using System.Buffers;
using System.Buffers.Binary;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Unicode;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.IO;

/// <summary>
/// A safetensors file that breaks the format; the message names the file and the reason.
/// An <see cref="IOException"/> because <see cref="InvalidDataException"/> is sealed: a caller that handles a
/// checkpoint it cannot read (missing or corrupt) catches one type.
/// </summary>
public sealed class SafeTensorsException : IOException
{
    public SafeTensorsException(string path, string reason, Exception? inner = null)
        : base($"Invalid safetensors file '{path}': {reason}", inner) { }
}

/// <summary>
/// The safetensors checkpoint format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
/// (<c>{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}</c>),
/// then the raw little-endian tensor bytes, offsets relative to the start of that buffer.
/// </summary>
public static class SafeTensors
{
    internal const string MetadataKey = "__metadata__";

    // The Python/Rust implementation refuses larger headers; so do we, before allocating one.
    internal const long MaxHeaderBytes = 100_000_000;

    // Every TorchSharp dtype that safetensors names (complex128 and the quantized types have no name), with its byte size.
    private static readonly (string Name, ScalarType Type, int Size)[] DtypeTable =
    [
        ("F64", ScalarType.Float64, 8), ("F32", ScalarType.Float32, 4), ("F16", ScalarType.Float16, 2),
        ("BF16", ScalarType.BFloat16, 2), ("I64", ScalarType.Int64, 8), ("I32", ScalarType.Int32, 4),
        ("I16", ScalarType.Int16, 2), ("I8", ScalarType.Int8, 1), ("U8", ScalarType.Byte, 1),
        ("BOOL", ScalarType.Bool, 1), ("C64", ScalarType.ComplexFloat32, 8),
    ];

    internal static readonly Dictionary<string, (ScalarType Type, int Size)> TypeByName =
        DtypeTable.ToDictionary(d => d.Name, d => (d.Type, d.Size), StringComparer.Ordinal);
    private static readonly Dictionary<ScalarType, string> NameByType = DtypeTable.ToDictionary(d => d.Type, d => d.Name);

    /// <summary>
    /// Writes <paramref name="tensors"/> (any device, any layout) sorted by name, atomically: on failure the previous
    /// file at <paramref name="path"/> is left as it was. Tensors are brought to CPU one at a time while writing,
    /// so saving a GPU model never holds a second full copy in host memory.
    /// </summary>
    /// <exception cref="ArgumentException">A name is "__metadata__", or a dtype has no safetensors name (e.g. complex128).</exception>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        RequireLittleEndian();
        var names = tensors.Keys.Order(StringComparer.Ordinal).ToArray();
        var header = new ArrayBufferWriter<byte>();
        // Relaxed escaping keeps names such as "a+b" readable; the output is still plain JSON.
        using (var json = new Utf8JsonWriter(header, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(MetadataKey);
                foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (string name in names)
            {
                Tensor t = tensors[name];
                if (name == MetadataKey)
                    throw new ArgumentException($"'{MetadataKey}' is reserved and cannot name a tensor.", nameof(tensors));
                if (!NameByType.TryGetValue(t.dtype, out var dtype))
                    throw new ArgumentException($"Tensor '{name}' has dtype {t.dtype}, which safetensors cannot store.", nameof(tensors));
                long end = offset + t.numel() * t.ElementSize;
                json.WriteStartObject(name);
                json.WriteString("dtype", dtype);
                json.WriteStartArray("shape");
                foreach (long dim in t.shape) json.WriteNumberValue(dim);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(end);
                json.WriteEndArray();
                json.WriteEndObject();
                offset = end;
            }
            json.WriteEndObject();
        }
        // Pad with spaces to a multiple of 8 (as the Python library does) so the buffer starts 8-byte aligned.
        int padding = (8 - header.WrittenCount % 8) % 8;
        AtomicFile.Write(path, stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)(header.WrittenCount + padding));
            stream.Write(length);
            stream.Write(header.WrittenSpan);
            stream.Write("       "u8[..padding]);
            foreach (string name in names)
            {
                using var scope = NewDisposeScope();
                // Conjugate/negative views are lazy bits over unchanged memory: materialise them before copying bytes.
                var t = tensors[name].cpu().resolve_conj().resolve_neg().contiguous();
                ForEachChunk(t, chunk => stream.Write(chunk));
            }
        });
    }

    /// <summary>Reads every tensor of the file onto <paramref name="device"/> (CPU when null).</summary>
    public static Dictionary<string, Tensor> Load(string path, Device? device = null)
    {
        using var file = Open(path);
        var result = new Dictionary<string, Tensor>(file.Names.Count);
        try
        {
            foreach (string name in file.Names) result.Add(name, file.Read(name, device));
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Opens the file and validates its header only; tensors are read one at a time with <see cref="SafeTensorsFile.Read"/>.</summary>
    public static SafeTensorsFile Open(string path) => new(path);

    internal static void RequireLittleEndian()
    {
        // Tensors are copied as raw bytes, which matches the format only on a little-endian host.
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors IO needs a little-endian machine.");
    }

    /// <summary>Calls <paramref name="action"/> on the raw bytes of a contiguous CPU tensor, in pieces because a span holds at most 2 GiB.</summary>
    internal static void ForEachChunk(Tensor contiguous, Action<Span<byte>> action)
    {
        const long chunkBytes = 1L << 30;
        using var flat = contiguous.reshape(-1); // a view: writes through the chunks land in the tensor
        long step = chunkBytes / contiguous.ElementSize, count = flat.numel();
        for (long start = 0; start < count; start += step)
        {
            using var part = flat.narrow(0, start, Math.Min(step, count - start));
            action(part.bytes);
        }
    }
}

/// <summary>
/// An open safetensors file whose header has been read and validated; <see cref="Read"/> loads one tensor's bytes,
/// so a shard far larger than memory can be consumed tensor by tensor. Reads are positional and thread-safe.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    private sealed record Entry(ScalarType Dtype, long[] Shape, long Begin, long End);

    private readonly SafeFileHandle _handle;
    private readonly long _dataStart;
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);

    public string Path { get; }

    /// <summary>Tensor names in the order their bytes appear in the file.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>The "__metadata__" strings; empty when the file has none.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    internal SafeTensorsFile(string path)
    {
        SafeTensors.RequireLittleEndian();
        Path = path;
        _handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            long fileLength = RandomAccess.GetLength(_handle);
            if (fileLength < 8)
                throw Error($"file is {fileLength} bytes, shorter than the 8-byte header length.");
            Span<byte> prefix = stackalloc byte[8];
            ReadExactly(prefix, 0);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (headerLength > SafeTensors.MaxHeaderBytes)
                throw Error($"header length {headerLength} exceeds the {SafeTensors.MaxHeaderBytes}-byte limit.");
            if ((long)headerLength > fileLength - 8)
                throw Error($"header length {headerLength} runs past the end of the {fileLength}-byte file.");
            var header = new byte[headerLength];
            ReadExactly(header, 8);
            _dataStart = 8 + (long)headerLength;
            (Names, Metadata) = ParseHeader(header, fileLength - _dataStart);
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    public (ScalarType dtype, long[] shape) Info(string name)
    {
        var e = Find(name);
        return (e.Dtype, (long[])e.Shape.Clone());
    }

    /// <summary>Reads one tensor into fresh memory on <paramref name="device"/> (CPU when null).</summary>
    public Tensor Read(string name, Device? device = null)
    {
        ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
        var e = Find(name);
        var t = empty(e.Shape, e.Dtype);
        try
        {
            long position = _dataStart + e.Begin;
            SafeTensors.ForEachChunk(t, chunk =>
            {
                ReadExactly(chunk, position);
                position += chunk.Length;
            });
        }
        catch
        {
            t.Dispose();
            throw;
        }
        if (device is null || device.type == DeviceType.CPU) return t;
        using (t) return t.to(device);
    }

    public void Dispose() => _handle.Dispose();

    private Entry Find(string name) =>
        _entries.TryGetValue(name, out var e) ? e : throw new KeyNotFoundException($"No tensor '{name}' in '{Path}'.");

    private SafeTensorsException Error(string reason, Exception? inner = null) => new(Path, reason, inner);

    private void ReadExactly(Span<byte> buffer, long offset)
    {
        while (!buffer.IsEmpty)
        {
            int n = RandomAccess.Read(_handle, buffer, offset);
            if (n == 0) throw Error($"unexpected end of file at byte {offset} (truncated while open?).");
            buffer = buffer[n..];
            offset += n;
        }
    }

    private (IReadOnlyList<string>, IReadOnlyDictionary<string, string>) ParseHeader(byte[] header, long bufferLength)
    {
        // JsonDocument passes invalid UTF-8 inside strings through unchecked, so validate it up front.
        if (!Utf8.IsValid(header)) throw Error("header is not valid UTF-8.");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException ex) { throw Error($"header is not valid JSON ({ex.Message})", ex); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Error($"header is a JSON {root.ValueKind}, not an object.");
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            bool sawMetadata = false;
            foreach (var property in root.EnumerateObject())
            {
                if (property.Name == SafeTensors.MetadataKey)
                {
                    if (sawMetadata) throw Error($"duplicate '{SafeTensors.MetadataKey}'.");
                    sawMetadata = true;
                    ParseMetadata(property.Value, metadata);
                }
                else if (!_entries.TryAdd(property.Name, ParseEntry(property.Name, property.Value, bufferLength)))
                    throw Error($"duplicate tensor name '{property.Name}'.");
            }
            return (CheckTiling(bufferLength), metadata);
        }
    }

    private void ParseMetadata(JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object) throw Error($"'{SafeTensors.MetadataKey}' is not an object.");
        foreach (var item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
                throw Error($"metadata '{item.Name}' is a JSON {item.Value.ValueKind}, not a string.");
            if (!metadata.TryAdd(item.Name, item.Value.GetString()!)) throw Error($"duplicate metadata key '{item.Name}'.");
        }
    }

    private Entry ParseEntry(string name, JsonElement value, long bufferLength)
    {
        string where = $"tensor '{name}'";
        if (value.ValueKind != JsonValueKind.Object) throw Error($"{where} is a JSON {value.ValueKind}, not an object.");
        if (!value.TryGetProperty("dtype", out var dtypeJson) || dtypeJson.ValueKind != JsonValueKind.String)
            throw Error($"{where} has no string 'dtype'.");
        string dtypeName = dtypeJson.GetString()!;
        if (!SafeTensors.TypeByName.TryGetValue(dtypeName, out var dtype))
            throw Error($"{where} has unknown or unsupported dtype '{dtypeName}'.");
        long[] shape = ReadIntegers(value, "shape", where, count: null);
        long[] offsets = ReadIntegers(value, "data_offsets", where, count: 2);
        (long begin, long end) = (offsets[0], offsets[1]);
        if (begin > end) throw Error($"{where} data_offsets begin {begin} is after end {end}.");
        if (end > bufferLength)
            throw Error($"{where} ends at byte {end} but the data buffer has only {bufferLength} bytes (truncated file?).");
        long expected;
        try { expected = checked(shape.Aggregate(1L, (n, d) => n * d) * dtype.Size); }
        catch (OverflowException) { throw Error($"{where} shape [{string.Join(", ", shape)}] is too large."); }
        if (end - begin != expected)
            throw Error($"{where} spans {end - begin} bytes but dtype {dtypeName} and shape [{string.Join(", ", shape)}] need {expected}.");
        return new Entry(dtype.Type, shape, begin, end);
    }

    /// <summary>Each of "shape" and "data_offsets" is an array of non-negative integers.</summary>
    private long[] ReadIntegers(JsonElement value, string key, string where, int? count)
    {
        if (!value.TryGetProperty(key, out var array) || array.ValueKind != JsonValueKind.Array)
            throw Error($"{where} has no array '{key}'.");
        if (count is int c && array.GetArrayLength() != c)
            throw Error($"{where} '{key}' has {array.GetArrayLength()} entries, not {c}.");
        var result = new long[array.GetArrayLength()];
        int i = 0;
        foreach (var item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long n) || n < 0)
                throw Error($"{where} '{key}' entry {item.GetRawText()} is not a non-negative integer.");
            result[i++] = n;
        }
        return result;
    }

    /// <summary>
    /// Like the reference implementation, tensors must tile the buffer exactly: no overlaps (one tensor's bytes
    /// aliasing another's), no gaps, no trailing bytes. Returns the names in file order.
    /// </summary>
    private List<string> CheckTiling(long bufferLength)
    {
        var ordered = _entries.OrderBy(kv => kv.Value.Begin).ThenBy(kv => kv.Value.End).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        long next = 0;
        foreach (var (name, e) in ordered)
        {
            if (e.Begin < next) throw Error($"tensor '{name}' at bytes [{e.Begin}, {e.End}) overlaps the tensor before it, which ends at {next}.");
            if (e.Begin > next) throw Error($"unused gap of bytes [{next}, {e.Begin}) before tensor '{name}'.");
            next = e.End;
        }
        if (next != bufferLength) throw Error($"{bufferLength - next} unused bytes after the last tensor.");
        return ordered.Select(kv => kv.Key).ToList();
    }
}
