using System.Buffers.Binary;
using System.Text;
using Ssm.Backbone.IO;
using TorchSharp;
using static TorchSharp.torch;

public sealed class SafeTensorsTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "safetensors-tests-" + Guid.NewGuid().ToString("N"));
    private readonly Random _random = new();

    public SafeTensorsTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string PathOf(string name) => Path.Combine(_dir, name);

    private static readonly ScalarType[] AllDtypes =
    [
        ScalarType.Float64, ScalarType.Float32, ScalarType.Float16, ScalarType.BFloat16, ScalarType.Int64, ScalarType.Int32,
        ScalarType.Int16, ScalarType.Int8, ScalarType.Byte, ScalarType.Bool, ScalarType.ComplexFloat32,
    ];

    public static TheoryData<ScalarType> Dtypes => new(AllDtypes);

    /// <summary>Fresh random contents. Floats get random bit patterns (NaN payloads, infinities, subnormals) so equality is bit-exact.</summary>
    private Tensor Random(ScalarType dtype, params long[] shape)
    {
        if (dtype == ScalarType.Bool) return rand(shape) > 0.5;
        var t = empty(shape, dtype);
        var bytes = new byte[t.numel() * t.ElementSize];
        _random.NextBytes(bytes);
        t.bytes = bytes;
        return t;
    }

    private static void AssertSame(Tensor expected, Tensor actual)
    {
        Assert.Equal(expected.dtype, actual.dtype);
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(expected.contiguous().bytes.ToArray(), actual.bytes.ToArray());
    }

    [Theory]
    [MemberData(nameof(Dtypes))]
    public void RoundTripsEveryDtypeBitExactly(ScalarType dtype)
    {
        var tensors = new Dictionary<string, Tensor>
        {
            ["matrix"] = Random(dtype, 3, 5),
            ["cube.weight"] = Random(dtype, 2, 3, 4),
            ["scalar"] = Random(dtype),
            ["empty"] = Random(dtype, 0, 7),
            ["vector"] = Random(dtype, 17),
        };
        string path = PathOf("all.safetensors");
        SafeTensors.Save(path, tensors);

        var loaded = SafeTensors.Load(path);
        Assert.Equal(tensors.Keys.Order(), loaded.Keys.Order());
        foreach (var (name, t) in tensors) AssertSame(t, loaded[name]);
        Assert.Equal(0, loaded["scalar"].dim());
    }

    [Fact]
    public void RoundTripsMixedDtypesInOneFile()
    {
        var tensors = AllDtypes.ToDictionary(d => d.ToString(), d => Random(d, 4, 3));
        string path = PathOf("mixed.safetensors");
        SafeTensors.Save(path, tensors);
        var loaded = SafeTensors.Load(path);
        foreach (var (name, t) in tensors) AssertSame(t, loaded[name]);
    }

    [Fact]
    public void SavesNonContiguousOffsetAndConjugatedViewsByValue()
    {
        var baseTensor = arange(24, dtype: ScalarType.Float32).reshape(4, 6);
        var c = complex(randn(3), randn(3));
        var tensors = new Dictionary<string, Tensor>
        {
            ["transposed"] = baseTensor.t(),
            ["sliced"] = baseTensor[TensorIndex.Slice(1, 3), TensorIndex.Slice(2, 5)],
            ["conj"] = c.conj(),
        };
        string path = PathOf("views.safetensors");
        SafeTensors.Save(path, tensors);
        var loaded = SafeTensors.Load(path);
        AssertSame(baseTensor.t(), loaded["transposed"]);
        AssertSame(baseTensor[TensorIndex.Slice(1, 3), TensorIndex.Slice(2, 5)], loaded["sliced"]);
        Assert.Equal(-c.imag[1].item<float>(), loaded["conj"].imag[1].item<float>());
    }

    [Fact]
    public void RoundTripsMetadata()
    {
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcödé \"quoted\" a+b<c>", ["empty"] = "" };
        string path = PathOf("meta.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = ones(2) }, metadata);
        using var file = SafeTensors.Open(path);
        Assert.Equal(metadata.OrderBy(kv => kv.Key), file.Metadata.OrderBy(kv => kv.Key));

        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = ones(2) });
        using var bare = SafeTensors.Open(path);
        Assert.Empty(bare.Metadata);
    }

    [Fact]
    public void OpenReadsOneTensorAtATime()
    {
        var a = Random(ScalarType.Float32, 2, 3);
        var b = Random(ScalarType.BFloat16, 4);
        var c = Random(ScalarType.Int64, 1, 1, 5);
        string path = PathOf("open.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["c"] = c, ["a"] = a, ["b"] = b });

        using var file = SafeTensors.Open(path);
        Assert.Equal(new[] { "a", "b", "c" }, file.Names);
        var (dtype, shape) = file.Info("b");
        Assert.Equal(ScalarType.BFloat16, dtype);
        Assert.Equal(new[] { 4L }, shape);
        AssertSame(b, file.Read("b"));
        AssertSame(c, file.Read("c", CPU));
        AssertSame(a, file.Read("a"));
        Assert.Throws<KeyNotFoundException>(() => file.Read("missing"));
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.Read("a"));
    }

    /// <summary>Builds a file from its parts by hand, independently of the writer.</summary>
    private static byte[] HandMade(string json, byte[] data, ulong? headerLength = null) =>
        HandMade(Encoding.UTF8.GetBytes(json), data, headerLength);

    private static byte[] HandMade(byte[] header, byte[] data, ulong? headerLength = null)
    {
        var file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, headerLength ?? (ulong)header.Length);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Length);
        return file;
    }

    [Fact]
    public void ReadsAHandWrittenFile()
    {
        // Header in arbitrary order, offsets not in name order, unpadded, with whitespace: all legal per the spec.
        string json = """
            { "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]},
              "__metadata__": {"format": "pt"},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "none": {"dtype": "I64", "shape": [0], "data_offsets": [24, 24]} }
            """;
        float[] values = [0.5f, -1.25f, 1f, 2f, 3f, float.NegativeInfinity];
        var data = values.SelectMany(BitConverter.GetBytes).ToArray();
        string path = PathOf("hand.safetensors");
        File.WriteAllBytes(path, HandMade(json, data));

        var loaded = SafeTensors.Load(path);
        Assert.Equal(new[] { 0.5f, -1.25f }, loaded["b"].data<float>().ToArray());
        Assert.Equal(new long[] { 2, 2 }, loaded["w"].shape);
        Assert.Equal(new[] { 1f, 2f, 3f, float.NegativeInfinity }, loaded["w"].data<float>().ToArray());
        Assert.Equal(ScalarType.Int64, loaded["none"].dtype);
        Assert.Equal(0, loaded["none"].numel());
        using var file = SafeTensors.Open(path);
        Assert.Equal(new[] { "b", "w", "none" }, file.Names); // file order
        Assert.Equal("pt", file.Metadata["format"]);
    }

    [Fact]
    public void WritesTheLayoutTheSpecDescribes()
    {
        string path = PathOf("layout.safetensors");
        SafeTensors.Save(path,
            new Dictionary<string, Tensor> { ["z"] = tensor(new short[] { 7, -2 }), ["a"] = tensor(new[] { 1.5f }) },
            new Dictionary<string, string> { ["k"] = "v" });
        var bytes = File.ReadAllBytes(path);

        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.Equal("""{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"I16","shape":[2],"data_offsets":[4,8]}}""",
            header.TrimEnd(' '));
        Assert.Matches("^[^ ]* {0,7}$", header);
        Assert.Equal(1.5f, BitConverter.ToSingle(bytes, 8 + (int)n));
        Assert.Equal((short)7, BitConverter.ToInt16(bytes, 12 + (int)n));
        Assert.Equal((short)-2, BitConverter.ToInt16(bytes, 14 + (int)n));
        Assert.Equal(8 + (int)n + 8, bytes.Length);
    }

    private const string GoodTensor = """ "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} """;

    public static TheoryData<string, byte[]> Malformed => new()
    {
        { "empty file", [] },
        { "7 bytes", new byte[7] },
        { "header length past end", HandMade("{}", [], headerLength: 3) },
        { "header length over 100 MB", HandMade("{}", new byte[16], headerLength: 100_000_001) },
        { "header length u64 max", HandMade("{}", [], headerLength: ulong.MaxValue) },
        { "invalid UTF-8", HandMade([.. "{\"__metadata__\": {\"k\": \""u8.ToArray(), 0xFF, .. "\"}}"u8.ToArray()], []) },
        { "invalid JSON", HandMade("{\"t\": ", []) },
        { "trailing comma", HandMade("{\"a\": 1,}", []) },
        { "JSON array", HandMade("[]", []) },
        { "JSON number", HandMade("42", []) },
        { "entry not object", HandMade("{\"t\": 3}", []) },
        { "unknown dtype", HandMade("""{"t": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}""", new byte[1]) },
        { "lower-case dtype", HandMade("""{"t": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}""", new byte[4]) },
        { "missing dtype", HandMade("""{"t": {"shape": [1], "data_offsets": [0, 4]}}""", new byte[4]) },
        { "missing shape", HandMade("""{"t": {"dtype": "F32", "data_offsets": [0, 4]}}""", new byte[4]) },
        { "missing offsets", HandMade("""{"t": {"dtype": "F32", "shape": [1]}}""", new byte[4]) },
        { "negative dim", HandMade("""{"t": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}""", new byte[16]) },
        { "fractional dim", HandMade("""{"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}""", new byte[4]) },
        { "overflowing shape", HandMade("""{"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}""", new byte[4]) },
        { "one offset", HandMade("""{"t": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}""", new byte[4]) },
        { "three offsets", HandMade("""{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}""", new byte[8]) },
        { "negative offset", HandMade("""{"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}""", new byte[4]) },
        { "string offset", HandMade("""{"t": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}}""", new byte[4]) },
        { "fractional offset", HandMade("""{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}""", new byte[4]) },
        { "begin after end", HandMade("""{"t": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}""", new byte[4]) },
        { "end beyond buffer", HandMade("""{"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}""", new byte[8]) },
        { "size mismatch", HandMade("""{"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}""", new byte[8]) },
        { "overlap", HandMade("{" + GoodTensor + """, "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}""", new byte[12]) },
        { "same bytes twice", HandMade("{" + GoodTensor + """, "u": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}""", new byte[8]) },
        { "gap", HandMade("{" + GoodTensor + """, "u": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}""", new byte[16]) },
        { "gap at start", HandMade("""{"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}""", new byte[8]) },
        { "trailing bytes", HandMade("{" + GoodTensor + "}", new byte[9]) },
        { "truncated data", HandMade("{" + GoodTensor + "}", new byte[5]) },
        { "duplicate name", HandMade("{" + GoodTensor + ", " + GoodTensor.Replace("0, 8", "8, 16") + "}", new byte[16]) },
        { "duplicate metadata", HandMade("""{"__metadata__": {}, "__metadata__": {}}""", []) },
        { "metadata not object", HandMade("""{"__metadata__": "pt"}""", []) },
        { "metadata value not string", HandMade("""{"__metadata__": {"epoch": 3}}""", []) },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void RejectsMalformedFilesWithSafeTensorsException(string why, byte[] bytes)
    {
        string path = PathOf("bad.safetensors");
        File.WriteAllBytes(path, bytes);
        var open = Assert.Throws<SafeTensorsException>(() => SafeTensors.Open(path));
        Assert.Contains(path, open.Message);
        Assert.IsAssignableFrom<IOException>(open);
        Assert.Throws<SafeTensorsException>(() => SafeTensors.Load(path));
        Assert.False(string.IsNullOrEmpty(why));
    }

    [Fact]
    public void TruncationIsNamedInTheMessage()
    {
        string path = PathOf("cut.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["t"] = ones(100) });
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^10]);
        var ex = Assert.Throws<SafeTensorsException>(() => SafeTensors.Load(path));
        Assert.Contains("truncated", ex.Message);
    }

    [Fact]
    public void FailedSaveKeepsTheOldFileAndLeavesNoTempFile()
    {
        string path = PathOf("model.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["w"] = ones(3) });
        var before = File.ReadAllBytes(path);

        var unsavable = new Dictionary<string, Tensor> { ["w"] = zeros(3), ["z"] = zeros(2, dtype: ScalarType.ComplexFloat64) };
        Assert.Throws<ArgumentException>(() => SafeTensors.Save(path, unsavable));
        var reserved = new Dictionary<string, Tensor> { ["__metadata__"] = zeros(1) };
        Assert.Throws<ArgumentException>(() => SafeTensors.Save(path, reserved));

        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(new[] { path }, Directory.GetFiles(_dir));
    }

    [Fact]
    public void AtomicFileKeepsTheOldFileWhenTheWriterThrowsMidway()
    {
        string path = PathOf("state.json");
        AtomicFile.WriteAllText(path, "old");
        Assert.Throws<IOException>(() => AtomicFile.Write(path, stream =>
        {
            stream.Write(new byte[1 << 16]);
            throw new IOException("disk full");
        }));
        Assert.Equal("old", File.ReadAllText(path));
        Assert.Equal(new[] { path }, Directory.GetFiles(_dir));
    }

    [Fact]
    public void AtomicFileCreatesTheDirectoryAndReplacesContents()
    {
        string path = Path.Combine(_dir, "nested", "deeper", "data.bin");
        AtomicFile.WriteAllBytes(path, [1, 2, 3]);
        Assert.Equal(new byte[] { 1, 2, 3 }, File.ReadAllBytes(path));
        AtomicFile.WriteAllText(path, "héllo");
        Assert.Equal(Encoding.UTF8.GetBytes("héllo"), File.ReadAllBytes(path)); // no byte-order mark
        AtomicFile.Write(path, s => s.Write([9]));
        Assert.Equal(new byte[] { 9 }, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(Path.GetDirectoryName(path)!));
    }
}
