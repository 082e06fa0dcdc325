using System.IO.MemoryMappedFiles;
using System.Text.Json;

// Loaders for the folders data/dna.sh prepares (default data/cache/dna; data/README.md, "DNA"):
//   human/human.json + human/*.seq   raw A C G T N bytes, one per base; the json names each file's split
//   apes/apes.tsv                    split, block, species, start, sequence (200-nt windows of the great-apes alignment)
//   splice/splice.tsv                split, class (EI | IE | N), sequence (60 nt)
//   promoters/promoters.tsv          split, class (+ | -), sequence (57 nt)
//   */TASK.json                      labels in index order (the loader falls back to the fixed orders below)
// The .seq files are memory-mapped: a 70 Mbp chromosome costs no managed memory and windows are read without copies.
namespace Ssm.Genomics;

/// <summary>Finds and opens the prepared DNA data folders.</summary>
public static class DnaDatasets
{
    /// <summary>The default folder, relative to the repository root.</summary>
    public const string DefaultRelative = "data/cache/dna";

    /// <summary>The labelled tasks and their label names in index order.</summary>
    public static readonly IReadOnlyDictionary<string, string[]> TaskLabels = new Dictionary<string, string[]>
    {
        ["splice"] = ["EI", "IE", "N"],
        ["promoters"] = ["+", "-"],
        ["apes"] = ["human", "chimp", "gorilla", "orangutan"],
    };

    /// <summary>
    /// The prepared folder: <paramref name="dir"/> if given (it must exist), else data/cache/dna in the current folder
    /// or any folder above it, or above the application's folder.
    /// </summary>
    public static string ResolveDirectory(string? dir = null)
    {
        if (!string.IsNullOrEmpty(dir))
        {
            if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: no such folder (prepare it with data/dna.sh --out {dir})");
            return Path.GetFullPath(dir);
        }
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            if (FindAbove(start) is { } found) return found;
        throw new DirectoryNotFoundException(
            $"{DefaultRelative} not found above {Directory.GetCurrentDirectory()} or {AppContext.BaseDirectory}; run data/dna.sh first (or pass the folder)");
    }

    /// <summary>data/cache/dna in <paramref name="start"/> or the nearest folder above it that has one, else null.</summary>
    public static string? FindAbove(string start)
    {
        for (var d = new DirectoryInfo(Path.GetFullPath(start)); d != null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, DefaultRelative);
            if (Directory.Exists(candidate)) return candidate;
        }
        return null;
    }

    /// <summary>Opens human/ of the prepared folder (train chrX 0-70 Mbp, valid chr20).</summary>
    public static HumanGenome OpenHuman(string? dir = null) => HumanGenome.Open(Path.Combine(ResolveDirectory(dir), "human"));

    /// <summary>
    /// Random windows of the given sequence files as a DnaWindowSource: a WindowSampler (uniform over start positions,
    /// files weighted by length, at most 10% N) seeded from the rng the trainer hands each step, so the windows are a
    /// function of (run seed, step) and a resumed run sees the same windows. (WindowSampler keeps its own Random, which
    /// would restart on resume; one sampler per call avoids that.)
    /// </summary>
    public static DnaWindowSource WindowSource(IReadOnlyList<SequenceFile> files) => (rng, batch, length) =>
    {
        if (length > int.MaxValue || batch * length > Array.MaxLength) throw new ArgumentException($"windows of {batch} x {length} bases are too many for one batch");
        var sampler = new WindowSampler(files, (int)length, rng.Next());
        var bytes = new byte[batch * length];
        for (long r = 0; r < batch; r++) sampler.Next(bytes.AsSpan((int)(r * length), (int)length));
        return TorchSharp.torch.tensor(bytes, new long[] { batch, length }, TorchSharp.torch.ScalarType.Byte);
    };

    /// <summary>Loads apes/, splice/ or promoters/ of the prepared folder.</summary>
    public static LabeledSequences LoadTask(string task, string? dir = null)
    {
        if (!TaskLabels.ContainsKey(task))
            throw new ArgumentException($"unknown DNA task '{task}' (one of {string.Join(", ", TaskLabels.Keys)})", nameof(task));
        return LabeledSequences.Load(Path.Combine(ResolveDirectory(dir), task), task);
    }
}

/// <summary>One memory-mapped sequence file: raw bytes, one per base (A C G T N).</summary>
public sealed unsafe class SequenceFile : IDisposable
{
    readonly MemoryMappedFile? map;
    readonly MemoryMappedViewAccessor? view;
    readonly byte* data;
    bool disposed;

    public string Name { get; }
    public string Path { get; }
    public string Split { get; }
    public long Length { get; }
    /// <summary>N count from the description (human.json), or counted when the file was opened without one.</summary>
    public long NCount { get; }

    public SequenceFile(string path, string name, string split, long? nCount = null)
    {
        Path = path; Name = name; Split = split;
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: missing sequence file (run data/dna.sh)", path);
        Length = new FileInfo(path).Length;
        if (Length > 0)
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            data = p + view.PointerOffset;
        }
        NCount = nCount ?? CountN();
    }

    long CountN()
    {
        long n = 0;
        for (long s = 0; s < Length; s += 1 << 30)
        {
            var span = Slice(s, (int)Math.Min(1 << 30, Length - s));
            n += span.Length - CountAcgt(span);
        }
        return n;
    }

    static long CountAcgt(ReadOnlySpan<byte> s)
    {
        long n = 0;
        foreach (byte b in s) if (b is (byte)'A' or (byte)'C' or (byte)'G' or (byte)'T') n++;
        return n;
    }

    /// <summary>The bases [start, start + length) without a copy; valid until this file is disposed.</summary>
    public ReadOnlySpan<byte> Slice(long start, int length)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (start < 0 || length < 0 || start + length > Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"{Name}: window [{start}, {start + length}) outside 0..{Length}");
        return length == 0 ? [] : new ReadOnlySpan<byte>(data + start, length);
    }

    /// <summary>Copies the bases [start, start + destination.Length) into <paramref name="destination"/>.</summary>
    public void Read(long start, Span<byte> destination) => Slice(start, destination.Length).CopyTo(destination);

    /// <summary>Copies <paramref name="length"/> bases from <paramref name="start"/> into <paramref name="destination"/>.</summary>
    public void Read(long start, int length, Span<byte> destination) => Slice(start, length).CopyTo(destination);

    /// <summary>The whole file in chunks of at most <paramref name="chunk"/> bases (for streaming statistics).</summary>
    public IEnumerable<(long Start, int Length)> Chunks(int chunk = 1 << 24)
    {
        for (long s = 0; s < Length; s += chunk) yield return (s, (int)Math.Min(chunk, Length - s));
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        if (view != null) { view.SafeMemoryMappedViewHandle.ReleasePointer(); view.Dispose(); }
        map?.Dispose();
    }
}

/// <summary>The prepared human genome: chromosomes by split (human.json), memory-mapped.</summary>
public sealed class HumanGenome : IDisposable
{
    public string Directory { get; }
    public IReadOnlyList<SequenceFile> Files { get; }
    /// <summary>human.json's split_rule.</summary>
    public string SplitRule { get; }

    HumanGenome(string dir, IReadOnlyList<SequenceFile> files, string rule) { Directory = dir; Files = files; SplitRule = rule; }

    /// <summary>Opens a folder with human.json (as data/dna.sh writes it).</summary>
    public static HumanGenome Open(string dir)
    {
        string json = System.IO.Path.Combine(dir, "human.json");
        if (!File.Exists(json)) throw new FileNotFoundException($"{json}: missing (run data/dna.sh --what human)", json);
        var files = new List<SequenceFile>();
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            var root = doc.RootElement;
            string rule = root.TryGetProperty("split_rule", out var r) ? r.GetString() ?? "" : "";
            foreach (var f in root.GetProperty("files").EnumerateArray())
            {
                string file = f.GetProperty("file").GetString() ?? throw new InvalidDataException($"{json}: a file without a name");
                if (file.Contains('/') || file.Contains('\\')) throw new InvalidDataException($"{json}: file '{file}' must be a plain name");
                long? n = f.TryGetProperty("n_count", out var nc) ? nc.GetInt64() : null;
                var seq = new SequenceFile(System.IO.Path.Combine(dir, file), f.GetProperty("name").GetString() ?? file,
                    f.GetProperty("split").GetString() ?? "", n);
                files.Add(seq);
                if (f.TryGetProperty("length", out var len) && len.GetInt64() != seq.Length)
                    throw new InvalidDataException($"{seq.Path}: {seq.Length} bytes, human.json says {len.GetInt64()} (rerun data/dna.sh --what human --force)");
            }
            if (files.Count == 0) throw new InvalidDataException($"{json}: no files");
            return new HumanGenome(System.IO.Path.GetFullPath(dir), files, rule);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            foreach (var f in files) f.Dispose();
            throw new InvalidDataException($"{json}: malformed ({e.Message})", e);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>The files of one split ("train", "valid", ...); throws if there are none.</summary>
    public IReadOnlyList<SequenceFile> Split(string split)
    {
        var list = Files.Where(f => f.Split == split).ToArray();
        if (list.Length == 0)
            throw new ArgumentException($"{Directory}: no sequence in split '{split}' (splits: {string.Join(", ", Files.Select(f => f.Split).Distinct())})", nameof(split));
        return list;
    }

    public void Dispose() { foreach (var f in Files) f.Dispose(); }
}

/// <summary>
/// Random training windows over one or more sequence files: a window is drawn uniformly over all valid start positions
/// (files weighted by their length) and redrawn while more than <c>maxNFraction</c> of it is N. The draws are a pure
/// function of the seed (System.Random with a seed is deterministic on .NET).
/// </summary>
public sealed class WindowSampler
{
    readonly IReadOnlyList<SequenceFile> files;
    readonly long[] cumulative;               // cumulative number of start positions per file
    readonly Random rng;

    public int WindowLength { get; }
    public double MaxNFraction { get; }

    public WindowSampler(IReadOnlyList<SequenceFile> files, int windowLength, int seed, double maxNFraction = 0.1)
    {
        if (windowLength < 1) throw new ArgumentOutOfRangeException(nameof(windowLength), "window length must be at least 1");
        if (maxNFraction is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(maxNFraction), "maxNFraction must be in [0, 1]");
        this.files = files;
        WindowLength = windowLength; MaxNFraction = maxNFraction;
        cumulative = new long[files.Count];
        long total = 0;
        for (int i = 0; i < files.Count; i++) { total += Math.Max(0, files[i].Length - windowLength + 1); cumulative[i] = total; }
        if (total == 0) throw new ArgumentException($"no sequence is at least {windowLength} bases long", nameof(files));
        rng = new Random(seed);
    }

    /// <summary>Fills <paramref name="window"/> (length WindowLength) with the next window; returns (file, start).</summary>
    public (SequenceFile File, long Start) Next(Span<byte> window)
    {
        if (window.Length != WindowLength) throw new ArgumentException($"window buffer has {window.Length} bytes, not {WindowLength}", nameof(window));
        int maxN = (int)Math.Floor(MaxNFraction * WindowLength);
        for (int attempt = 0; attempt < 10_000; attempt++)
        {
            long r = rng.NextInt64(cumulative[^1]);
            int f = 0;
            while (r >= cumulative[f]) f++;
            long start = r - (f == 0 ? 0 : cumulative[f - 1]);
            var s = files[f].Slice(start, WindowLength);
            int n = s.Length - CountAcgt(s);
            if (n <= maxN) { s.CopyTo(window); return (files[f], start); }
        }
        throw new InvalidDataException($"no window of {WindowLength} bases with at most {MaxNFraction:P0} N found in 10,000 draws (is the sequence mostly N?)");
    }

    static int CountAcgt(ReadOnlySpan<byte> s)
    {
        int n = 0;
        foreach (byte b in s) if (b is (byte)'A' or (byte)'C' or (byte)'G' or (byte)'T') n++;
        return n;
    }
}

/// <summary>One labelled sequence of a classification task.</summary>
/// <param name="Split">"train", "valid" or "test".</param>
/// <param name="Label">Index into the task's labels.</param>
/// <param name="Group">The unit of the split (the alignment block for apes, else empty).</param>
/// <param name="Sequence">Upper-case A C G T N bytes.</param>
public sealed record LabeledSequence(string Split, int Label, string LabelName, string Group, byte[] Sequence);

/// <summary>A labelled task (apes, splice, promoters) read from its TSV.</summary>
public sealed class LabeledSequences
{
    public string Task { get; }
    public IReadOnlyList<string> Labels { get; }
    public IReadOnlyList<LabeledSequence> Items { get; }

    LabeledSequences(string task, IReadOnlyList<string> labels, IReadOnlyList<LabeledSequence> items) { Task = task; Labels = labels; Items = items; }

    /// <summary>The items of one split, in file order; throws if there are none.</summary>
    public IReadOnlyList<LabeledSequence> Split(string name)
    {
        var list = Items.Where(i => i.Split == name).ToArray();
        if (list.Length == 0)
            throw new ArgumentException($"{Task}: no sequences in split '{name}' (splits: {string.Join(", ", Items.Select(i => i.Split).Distinct())})", nameof(name));
        return list;
    }

    /// <summary>
    /// Reads DIR/TASK.tsv. Columns are found by their header names: split, sequence, and class or species (the label);
    /// block, if present, is the group. Labels come from DIR/TASK.json ("labels") or the task's fixed order.
    /// </summary>
    public static LabeledSequences Load(string dir, string task)
    {
        string path = Path.Combine(dir, task + ".tsv");
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: missing (run data/dna.sh --what {task})", path);
        string[] labels = LabelsOf(dir, task);
        var index = new Dictionary<string, int>();
        for (int i = 0; i < labels.Length; i++) index[labels[i]] = i;

        var items = new List<LabeledSequence>();
        using var reader = new StreamReader(path);
        string header = reader.ReadLine() ?? throw new InvalidDataException($"{path}: empty file");
        var cols = header.Split('\t');
        int Col(params string[] names)
        {
            foreach (var n in names) { int k = Array.IndexOf(cols, n); if (k >= 0) return k; }
            return -1;
        }
        int cSplit = Col("split"), cSeq = Col("sequence"), cLabel = Col("class", "species", "label"), cGroup = Col("block");
        if (cSplit < 0 || cSeq < 0 || cLabel < 0)
            throw new InvalidDataException($"{path}: header needs split, sequence and class (or species) columns, found '{header}'");
        int need = Math.Max(Math.Max(cSplit, cSeq), Math.Max(cLabel, cGroup)) + 1;
        var splitNames = new Dictionary<string, string>();
        string? line;
        int lineNo = 1;
        while ((line = reader.ReadLine()) != null)
        {
            lineNo++;
            if (line.Length == 0) continue;
            var f = line.Split('\t');
            if (f.Length < need) throw new InvalidDataException($"{path}:{lineNo}: {f.Length} fields, expected {cols.Length}");
            if (!index.TryGetValue(f[cLabel], out int label))
                throw new InvalidDataException($"{path}:{lineNo}: label '{f[cLabel]}' is not one of {string.Join(", ", labels)}");
            string split = splitNames.TryGetValue(f[cSplit], out var s) ? s : splitNames[f[cSplit]] = f[cSplit];   // share the strings
            var seq = new byte[f[cSeq].Length];
            for (int i = 0; i < seq.Length; i++)
            {
                char c = char.ToUpperInvariant(f[cSeq][i]);
                seq[i] = c is 'A' or 'C' or 'G' or 'T' ? (byte)c : (byte)'N';
            }
            items.Add(new LabeledSequence(split, label, labels[label], cGroup >= 0 ? f[cGroup] : "", seq));
        }
        if (items.Count == 0) throw new InvalidDataException($"{path}: no rows");
        return new LabeledSequences(task, labels, items);
    }

    static string[] LabelsOf(string dir, string task)
    {
        string json = Path.Combine(dir, "TASK.json");
        if (File.Exists(json))
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(json));
                if (doc.RootElement.TryGetProperty("labels", out var l))
                    return l.EnumerateArray().Select(e => e.GetString() ?? throw new InvalidDataException($"{json}: a null label")).ToArray();
            }
            catch (JsonException e) { throw new InvalidDataException($"{json}: malformed ({e.Message})", e); }
        }
        return DnaDatasets.TaskLabels.TryGetValue(task, out var fixedLabels) ? fixedLabels
            : throw new InvalidDataException($"{json}: missing, and '{task}' has no built-in label order");
    }
}
