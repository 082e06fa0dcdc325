// MambaByte's English byte corpus (issue 7, section 3), as prepared by data/text-corpus.sh:
//   DIR/train.bin, valid.bin, test.bin   whole documents, each followed by one 0x00 byte (the model learns it as
//                                        "end of document"; the text itself never contains 0x00)
//   DIR/manifest.tsv                     id, source, bytes, split: one line per document, in the order of the .bin files
// The split holds out whole documents (addresses, novels, Bible books, Brown files), about 90/5/5 by bytes.
//
// Training windows are a pure function of (seed, step), like the backbone's EpochSampler, so a resumed run sees the same
// data: epoch e cuts the training bytes into K = (n - L) / L windows of L + 1 bytes (inputs and the next-byte targets;
// consecutive windows share one byte) starting at a random phase in [0, n - 1 - K L], and visits them in a random order;
// phase and order come from Trainer.StepSeed(seed, e). Every byte is a target once per epoch (but for < 2L bytes at the
// ends, which other epochs' phases cover), and window boundaries move from epoch to epoch.
//
// Evaluation windows are TextScoring.Windows (through MambaByte.Score): windows of L + 1 bytes overlapping by one byte,
// so every byte but the first is predicted exactly once, with the context restarting every L bytes.
//
// Glossary: n bytes in a split, L window length (predicted bytes per window), B windows per batch, K windows per epoch.
using System.Globalization;
using TorchSharp;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Language;

public enum ByteSplit { Train, Valid, Test }

/// <summary>One document of the corpus: its bytes are <c>split[Offset .. Offset + Length)</c>, followed by a 0x00 byte.</summary>
public sealed record ByteDocument(string Id, string Source, ByteSplit Split, long Offset, int Length);

public sealed class ByteCorpus
{
    /// <summary>The byte that ends every document in the .bin files.</summary>
    public const byte DocumentEnd = 0;
    /// <summary>The script that prepares the corpus, relative to the repository root.</summary>
    public const string Script = "data/text-corpus.sh";
    /// <summary>Where the script writes by default, relative to the repository root.</summary>
    public const string DefaultRelativeDirectory = "data/cache/text";

    readonly byte[][] _splits;

    /// <summary>The folder it was loaded from (null when built from arrays).</summary>
    public string? Directory { get; }
    public IReadOnlyList<ByteDocument> Documents { get; }

    public byte[] Train => _splits[0];
    public byte[] Valid => _splits[1];
    public byte[] Test => _splits[2];
    public byte[] this[ByteSplit split] => _splits[(int)split];

    /// <summary>A corpus from bytes already in memory (documents: none listed unless given).</summary>
    public ByteCorpus(byte[] train, byte[] valid, byte[] test, IReadOnlyList<ByteDocument>? documents = null, string? directory = null)
    {
        _splits = [train ?? throw new ArgumentNullException(nameof(train)),
                   valid ?? throw new ArgumentNullException(nameof(valid)),
                   test ?? throw new ArgumentNullException(nameof(test))];
        Documents = documents ?? [];
        Directory = directory;
    }

    public IEnumerable<ByteDocument> DocumentsOf(ByteSplit split) => Documents.Where(d => d.Split == split);

    /// <summary>The bytes of one document (without its 0x00 terminator).</summary>
    public ReadOnlyMemory<byte> Bytes(ByteDocument doc) => this[doc.Split].AsMemory((int)doc.Offset, doc.Length);

    public static string SplitName(ByteSplit split) => split switch
    {
        ByteSplit.Train => "train", ByteSplit.Valid => "valid", ByteSplit.Test => "test",
        _ => throw new ArgumentOutOfRangeException(nameof(split)),
    };

    public static ByteSplit ParseSplit(string name) => name.ToLowerInvariant() switch
    {
        "train" => ByteSplit.Train, "valid" or "validation" => ByteSplit.Valid, "test" => ByteSplit.Test,
        _ => throw new ArgumentException($"unknown split '{name}' (train, valid or test)", nameof(name)),
    };

    /// <summary>
    /// The prepared corpus folder: <paramref name="directory"/> if given, else data/cache/text under the first folder,
    /// from the current directory and from the program's folder upwards, that holds data/text-corpus.sh.
    /// </summary>
    public static string ResolveDirectory(string? directory = null)
    {
        if (!string.IsNullOrEmpty(directory)) return Path.GetFullPath(directory);
        foreach (var start in new[] { System.IO.Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, Script)))
                    return Path.Combine(d.FullName, DefaultRelativeDirectory);
        return Path.GetFullPath(DefaultRelativeDirectory);
    }

    /// <summary>Loads train/valid/test.bin and manifest.tsv and checks that they agree.</summary>
    public static ByteCorpus Load(string? directory = null)
    {
        string dir = ResolveDirectory(directory);
        if (!System.IO.Directory.Exists(dir))
            throw new DirectoryNotFoundException($"text corpus folder {dir} does not exist: run {Script} first");
        var splits = new byte[3][];
        foreach (var s in Enum.GetValues<ByteSplit>())
        {
            string f = Path.Combine(dir, SplitName(s) + ".bin");
            if (!File.Exists(f)) throw new FileNotFoundException($"{f} is missing: run {Script} first", f);
            splits[(int)s] = File.ReadAllBytes(f);
        }
        string manifest = Path.Combine(dir, "manifest.tsv");
        if (!File.Exists(manifest)) throw new FileNotFoundException($"{manifest} is missing: run {Script} first", manifest);
        var docs = ReadManifest(manifest, splits);
        return new ByteCorpus(splits[0], splits[1], splits[2], docs, dir);
    }

    static List<ByteDocument> ReadManifest(string path, byte[][] splits)
    {
        var docs = new List<ByteDocument>();
        var offset = new long[3];
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || lines[0] != "id\tsource\tbytes\tsplit")
            throw new InvalidDataException($"{path}: expected the header 'id<TAB>source<TAB>bytes<TAB>split'; rerun {Script} --force");
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            var f = lines[i].Split('\t');
            if (f.Length != 4 || !int.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out int len))
                throw new InvalidDataException($"{path} line {i + 1}: expected id, source, bytes, split separated by tabs");
            ByteSplit s;
            try { s = ParseSplit(f[3]); }
            catch (ArgumentException) { throw new InvalidDataException($"{path} line {i + 1}: unknown split '{f[3]}'"); }
            long o = offset[(int)s];
            var data = splits[(int)s];
            if (o + len >= data.Length || data[o + len] != DocumentEnd)
                throw new InvalidDataException(
                    $"{path} line {i + 1}: document {f[0]} does not end with a 0x00 byte in {SplitName(s)}.bin; rerun {Script} --force");
            docs.Add(new ByteDocument(f[0], f[1], s, o, len));
            offset[(int)s] = o + len + 1;
        }
        foreach (var s in Enum.GetValues<ByteSplit>())
            if (offset[(int)s] != splits[(int)s].Length)
                throw new InvalidDataException(
                    $"{path} lists {offset[(int)s]} bytes for {SplitName(s)}.bin, which has {splits[(int)s].Length}; rerun {Script} --force");
        return docs;
    }

    /// <summary>int64 tensor (offsets.Count, width) of data[o .. o + width) for each offset o.</summary>
    internal static Tensor Gather(byte[] data, IReadOnlyList<long> offsets, int width, Device? device)
    {
        var buf = new byte[offsets.Count * width];
        for (int i = 0; i < offsets.Count; i++)
            Array.Copy(data, offsets[i], buf, (long)i * width, width);
        using var bytes = torch.tensor(buf, new long[] { offsets.Count, width });
        return bytes.to(ScalarType.Int64, device ?? torch.CPU);
    }
}

/// <summary>
/// Training windows of L + 1 bytes as a pure function of (seed, global batch index): see the file header. With gradient
/// accumulation, pass <c>step * accumulation + micro</c> as the batch index.
/// </summary>
public sealed class ByteWindowSampler
{
    readonly byte[] _data;
    readonly long _seed;
    readonly int _slack;
    long _cachedEpoch = -1;
    int _phase;
    int[] _perm = [];

    public int Length { get; }
    public int BatchSize { get; }
    /// <summary>Non-overlapping windows per epoch: K = (n - L) / L.</summary>
    public int WindowsPerEpoch { get; }

    public ByteWindowSampler(byte[] data, int length, int batchSize, long seed)
    {
        _data = data ?? throw new ArgumentNullException(nameof(data));
        if (length < 1) throw new ArgumentOutOfRangeException(nameof(length), "the window length must be at least 1");
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), "the batch size must be at least 1");
        long k = (data.LongLength - length) / length;
        if (k < 1)
            throw new ArgumentException($"{data.Length} bytes are too few for windows of {length} + 1 bytes (need at least {2L * length})", nameof(data));
        if (k > int.MaxValue) throw new ArgumentException("too many windows per epoch; use a longer window", nameof(length));
        Length = length; BatchSize = batchSize; WindowsPerEpoch = (int)k; _seed = seed;
        _slack = (int)(data.LongLength - 1 - k * length);   // in [L - 1, 2L - 1): the phases that keep the last window inside
    }

    /// <summary>Epochs completed before global batch <paramref name="batch"/> (fractional).</summary>
    public double Epoch(long batch) => (double)batch * BatchSize / WindowsPerEpoch;

    /// <summary>Start of the window at position <paramref name="index"/> of the window stream (window = L + 1 bytes).</summary>
    public long Offset(long index)
    {
        if (index < 0) throw new ArgumentOutOfRangeException(nameof(index));
        long epoch = index / WindowsPerEpoch;
        if (epoch != _cachedEpoch)
        {
            var rng = new Random(Trainer.StepSeed(_seed, epoch));
            _phase = rng.Next(_slack + 1);
            if (_perm.Length != WindowsPerEpoch) _perm = new int[WindowsPerEpoch];
            for (int i = 0; i < _perm.Length; i++) _perm[i] = i;
            rng.Shuffle(_perm);
            _cachedEpoch = epoch;
        }
        return _phase + (long)_perm[index % WindowsPerEpoch] * Length;
    }

    /// <summary>The B window starts of global batch <paramref name="batch"/>.</summary>
    public long[] Offsets(long batch)
    {
        if (batch < 0) throw new ArgumentOutOfRangeException(nameof(batch));
        var o = new long[BatchSize];
        for (int i = 0; i < BatchSize; i++) o[i] = Offset(batch * BatchSize + i);
        return o;
    }

    /// <summary>int64 byte ids (B, L + 1) of global batch <paramref name="batch"/>: inputs [.., ..^1], targets [.., 1..].</summary>
    public Tensor Batch(long batch, Device? device = null) => ByteCorpus.Gather(_data, Offsets(batch), Length + 1, device);
}
