// An audio data set on disk, as data/spoken-digits.sh and data/piano.sh write it (data/README.md, "Audio"):
//
//   DIR/dataset.json   {"name": "spoken-digits", "sample_rate": 16000, "clip_seconds": 1.0 (or null: whole pieces),
//                       "labels": ["zero", ..., "nine"] (class names in index order; [] when unlabelled),
//                       "splits": {"train": N, "valid": N, "test": N} (files per split), "script": "data/...sh",
//                       "source": "...", "split_rule": "..."}
//   DIR/manifest.tsv   header "file<TAB>split<TAB>label<TAB>speaker<TAB>group<TAB>seconds", then one line per file:
//                         file     path relative to DIR, e.g. train/seven_espeak-en-us+f3-p47-s163.wav
//                         split    train, valid or test
//                         label    a name from "labels", or empty for unlabelled data
//                         speaker  who/what produced it (a speech synthesiser voice setting; a piece's source)
//                         group    the unit the split was drawn by: every file of a group is in one split
//                                  (a voice variant for speech, a piece for music); checked on Open
//                         seconds  duration
//   DIR/{train,valid,test}/*.wav   mono WAV files at sample_rate (any format Wav reads)
//
// Loading: LoadSplit gives one fixed-length clip per file (the file's middle when longer, centred between zeros
// when shorter; resampled when another rate is asked for); LoadChunks cuts every file into consecutive
// non-overlapping windows and drops the remainder (the s4 repo's sample_len / drop_last scheme for long recordings).
// Errors: a missing folder, manifest or dataset.json says which and "run data/SCRIPT first"; a malformed one gives an
// InvalidDataException "PATH line N: reason".
using System.Globalization;
using System.Text.Json;
using static TorchSharp.torch;

namespace Ssm.Audio;

/// <summary>One file of an audio data set (a line of manifest.tsv); <see cref="Label"/> is -1 when unlabelled.</summary>
public sealed record AudioItem(string File, string Split, int Label, string LabelName, string Speaker, string Group, double Seconds);

/// <summary>Clips of one length: audio (n, l) float32, labels (n) int64 (-1 = none), and where each row came from.</summary>
public sealed class AudioBatch(Tensor audio, Tensor labels, IReadOnlyList<AudioItem> items, long[] starts, int sampleRate) : IDisposable
{
    /// <summary>(n, l) float32 waveforms, nominally in [-1, 1].</summary>
    public Tensor Audio { get; } = audio;

    /// <summary>(n) int64 class indices, -1 for unlabelled items.</summary>
    public Tensor Labels { get; } = labels;

    /// <summary>The file each row came from.</summary>
    public IReadOnlyList<AudioItem> Items { get; } = items;

    /// <summary>Sample offset (at <see cref="SampleRate"/>) of each row in its file; negative when zero-padded in front.</summary>
    public long[] Starts { get; } = starts;

    public int SampleRate { get; } = sampleRate;
    public long Count => Audio.shape[0];

    public void Dispose()
    {
        Audio.Dispose();
        Labels.Dispose();
    }
}

/// <summary>A prepared audio data set folder: dataset.json + manifest.tsv + split folders of WAV files.</summary>
public sealed class AudioDataset
{
    public const string ManifestName = "manifest.tsv";
    public const string InfoName = "dataset.json";
    public const string ManifestHeader = "file\tsplit\tlabel\tspeaker\tgroup\tseconds";
    public const string SpokenDigitsScript = "data/spoken-digits.sh";
    public const string PianoScript = "data/piano.sh";
    public static readonly IReadOnlyList<string> SplitNames = ["train", "valid", "test"];

    public string Directory { get; }
    public string Name { get; }
    /// <summary>Sample rate of the stored files.</summary>
    public int SampleRate { get; }
    /// <summary>Length of every file in seconds, or null when files have their own lengths.</summary>
    public double? ClipSeconds { get; }
    /// <summary>Class names in index order; empty for unlabelled data.</summary>
    public IReadOnlyList<string> Labels { get; }
    public IReadOnlyList<AudioItem> Items { get; }
    /// <summary>The script that makes this folder (for messages).</summary>
    public string Script { get; }

    AudioDataset(string dir, string name, int rate, double? clip, IReadOnlyList<string> labels, IReadOnlyList<AudioItem> items, string script)
    {
        Directory = dir; Name = name; SampleRate = rate; ClipSeconds = clip; Labels = labels; Items = items; Script = script;
    }

    /// <summary>The items of one split, in manifest order.</summary>
    public IReadOnlyList<AudioItem> Split(string split)
    {
        CheckSplit(split);
        return Items.Where(i => i.Split == split).ToList();
    }

    /// <summary>Absolute path of an item's WAV file.</summary>
    public string PathOf(AudioItem item) => Path.Combine(Directory, item.File);

    /// <summary>data/cache/spoken-digits (or <paramref name="directory"/>), made by data/spoken-digits.sh.</summary>
    public static AudioDataset OpenSpokenDigits(string? directory = null) =>
        Open(ResolveDirectory(directory, "spoken-digits", SpokenDigitsScript), SpokenDigitsScript);

    /// <summary>data/cache/piano (or <paramref name="directory"/>), made by data/piano.sh.</summary>
    public static AudioDataset OpenPiano(string? directory = null) =>
        Open(ResolveDirectory(directory, "piano", PianoScript), PianoScript);

    /// <summary>
    /// <paramref name="directory"/> if given, else data/cache/<paramref name="name"/> under the first folder, from the
    /// current directory and from the program's folder upwards, that holds <paramref name="script"/>.
    /// </summary>
    public static string ResolveDirectory(string? directory, string name, string script)
    {
        if (!string.IsNullOrEmpty(directory)) return Path.GetFullPath(directory);
        foreach (var start in new[] { System.IO.Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, script)))
                    return Path.Combine(d.FullName, "data", "cache", name);
        return Path.GetFullPath(Path.Combine("data", "cache", name));
    }

    /// <summary>Reads dataset.json and manifest.tsv of <paramref name="directory"/> and checks that they agree.</summary>
    /// <param name="script">Named in "run ... first" messages when the folder is missing (dataset.json names its own).</param>
    public static AudioDataset Open(string directory, string script = SpokenDigitsScript)
    {
        string dir = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(dir))
            throw new DirectoryNotFoundException($"audio data set folder {dir} does not exist: run {script} first");
        string info = Path.Combine(dir, InfoName), manifest = Path.Combine(dir, ManifestName);
        if (!File.Exists(info)) throw new FileNotFoundException($"{info} is missing: run {script} first", info);
        var (name, rate, clip, labels, counts, declaredScript) = ReadInfo(info, script);
        if (!File.Exists(manifest)) throw new FileNotFoundException($"{manifest} is missing: run {declaredScript} first", manifest);
        var items = ReadManifest(manifest, labels, declaredScript);
        if (counts is not null)
            foreach (var s in SplitNames)
            {
                int n = items.Count(i => i.Split == s);
                if (counts.TryGetValue(s, out int want) && want != n)
                    throw new InvalidDataException($"{info} says {want} {s} files, {ManifestName} lists {n}: rerun {declaredScript}");
            }
        return new AudioDataset(dir, name, rate, clip, labels, items, declaredScript);
    }

    static (string, int, double?, string[], Dictionary<string, int>?, string) ReadInfo(string path, string script)
    {
        JsonElement root;
        try { root = JsonDocument.Parse(File.ReadAllBytes(path)).RootElement; }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message.Split('\n')[0]})"); }
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: expected a JSON object");
        string Need(string key) => root.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString()! : throw new InvalidDataException($"{path}: \"{key}\" (a string) is missing");
        string name = Need("name");
        if (!root.TryGetProperty("sample_rate", out var r) || r.ValueKind != JsonValueKind.Number || !r.TryGetInt32(out int rate) || rate <= 0)
            throw new InvalidDataException($"{path}: \"sample_rate\" (a positive integer) is missing");
        if (!root.TryGetProperty("labels", out var l) || l.ValueKind != JsonValueKind.Array || l.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            throw new InvalidDataException($"{path}: \"labels\" (an array of class names, [] if none) is missing");
        var labels = l.EnumerateArray().Select(e => e.GetString()!).ToArray();
        if (labels.Distinct().Count() != labels.Length) throw new InvalidDataException($"{path}: \"labels\" has duplicates");
        double? clip = null;
        if (root.TryGetProperty("clip_seconds", out var c) && c.ValueKind == JsonValueKind.Number) clip = c.GetDouble();
        Dictionary<string, int>? counts = null;
        if (root.TryGetProperty("splits", out var sp) && sp.ValueKind == JsonValueKind.Object)
        {
            counts = [];
            foreach (var p in sp.EnumerateObject())
                if (p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int n)) counts[p.Name] = n;
        }
        if (root.TryGetProperty("script", out var s) && s.ValueKind == JsonValueKind.String) script = s.GetString()!;
        return (name, rate, clip, labels, counts, script);
    }

    static List<AudioItem> ReadManifest(string path, string[] labels, string script)
    {
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || lines[0] != ManifestHeader)
            throw new InvalidDataException($"{path}: expected the header '{ManifestHeader.Replace("\t", "<TAB>")}'; rerun {script}");
        var index = labels.Select((n, i) => (n, i)).ToDictionary(t => t.n, t => t.i);
        var items = new List<AudioItem>();
        var groupSplit = new Dictionary<string, string>();
        for (int k = 1; k < lines.Length; k++)
        {
            if (lines[k].Length == 0) continue;
            var f = lines[k].Split('\t');
            string where = $"{path} line {k + 1}";
            if (f.Length != 6) throw new InvalidDataException($"{where}: expected 6 tab-separated fields, found {f.Length}");
            string file = f[0], split = f[1], label = f[2];
            if (file.Length == 0 || Path.IsPathRooted(file) || file.Split('/', '\\').Contains(".."))
                throw new InvalidDataException($"{where}: file '{file}' must be a path inside the data set folder");
            if (!SplitNames.Contains(split)) throw new InvalidDataException($"{where}: unknown split '{split}' (train, valid or test)");
            int id = -1;
            if (labels.Length > 0 && !index.TryGetValue(label, out id))
                throw new InvalidDataException($"{where}: label '{label}' is not one of the {labels.Length} labels in {InfoName}");
            if (labels.Length == 0 && label.Length > 0)
                throw new InvalidDataException($"{where}: label '{label}' but {InfoName} declares no labels");
            if (!double.TryParse(f[5], NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) || !(seconds >= 0))
                throw new InvalidDataException($"{where}: seconds '{f[5]}' is not a non-negative number");
            if (groupSplit.TryGetValue(f[4], out var other) && other != split)
                throw new InvalidDataException($"{where}: group '{f[4]}' is in both {other} and {split} (splits must be group-disjoint); rerun {script}");
            groupSplit[f[4]] = split;
            items.Add(new AudioItem(file, split, id, label, f[3], f[4], seconds));
        }
        if (items.Count == 0) throw new InvalidDataException($"{path}: lists no files; rerun {script}");
        return items;
    }

    static void CheckSplit(string split)
    {
        if (!SplitNames.Contains(split)) throw new ArgumentException($"unknown split '{split}' (train, valid or test)", nameof(split));
    }

    static int Samples(double seconds, int rate)
    {
        if (!(seconds > 0)) throw new ArgumentOutOfRangeException(nameof(seconds), seconds, "clip length must be positive");
        long l = (long)Math.Round(seconds * rate);
        if (l < 1 || l > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(seconds), seconds, "clip length out of range");
        return (int)l;
    }

    void CheckExists(AudioItem item)
    {
        string path = PathOf(item);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path} is listed in {ManifestName} but missing: rerun {Script}", path);
    }

    float[] ReadItem(AudioItem item, int rate) => Wav.ReadMono(PathOf(item), rate);

    /// <summary>Parallel.For that rethrows the first failure itself (e.g. a corrupt file's InvalidDataException).</summary>
    static void ForEach(int count, Action<int> body)
    {
        try { Parallel.For(0, count, body); }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
        }
    }

    /// <summary>One clip of <paramref name="seconds"/> per file of <paramref name="split"/> at <paramref name="sampleRate"/>.</summary>
    /// <param name="where">Optional filter on the split's items (e.g. one source of the piano set: i.Speaker == "jam").</param>
    public AudioBatch LoadSplit(string split, int sampleRate, double seconds, Func<AudioItem, bool>? where = null)
    {
        CheckSplit(split);
        return Load(Split(split).Where(where ?? (_ => true)).ToList(), sampleRate, seconds);
    }

    /// <summary>
    /// One clip per item: the middle <paramref name="seconds"/> of a longer file, a shorter one centred between zeros.
    /// </summary>
    public AudioBatch Load(IReadOnlyList<AudioItem> items, int sampleRate, double seconds)
    {
        ArgumentNullException.ThrowIfNull(items);
        if (sampleRate <= 0) throw new ArgumentOutOfRangeException(nameof(sampleRate), sampleRate, "sample rate must be positive");
        int L = Samples(seconds, sampleRate);
        foreach (var item in items) CheckExists(item);
        var starts = new long[items.Count];
        return Fill(items.Count, L, items, starts, sampleRate, (rowOf, i) =>
        {
            var x = ReadItem(items[i], sampleRate);
            long start = ((long)x.Length - L) / 2;   // > 0: crop the middle; < 0: pad in front
            starts[i] = start;
            var row = rowOf(i);
            row.Clear();
            long from = Math.Max(0, start), to = Math.Min(x.Length, start + L);
            if (to > from) x.AsSpan((int)from, (int)(to - from)).CopyTo(row[(int)(from - start)..]);
        });
    }

    /// <summary>
    /// Every file of <paramref name="split"/> cut into consecutive windows of <paramref name="seconds"/> (the tail
    /// shorter than a window is dropped); rows in manifest order, windows in time order.
    /// </summary>
    /// <param name="where">Optional filter on the split's items.</param>
    public AudioBatch LoadChunks(string split, int sampleRate, double seconds, Func<AudioItem, bool>? where = null)
    {
        CheckSplit(split);
        if (sampleRate <= 0) throw new ArgumentOutOfRangeException(nameof(sampleRate), sampleRate, "sample rate must be positive");
        int L = Samples(seconds, sampleRate);
        var items = Split(split).Where(where ?? (_ => true)).ToList();
        // Count the windows from the headers first so the batch is allocated once.
        var first = new long[items.Count + 1];
        for (int i = 0; i < items.Count; i++)
        {
            CheckExists(items[i]);
            var info = Wav.Probe(PathOf(items[i]));
            long n = info.SampleRate == sampleRate ? info.Frames : Resample.OutputLength(info.Frames, info.SampleRate, sampleRate);
            first[i + 1] = first[i] + n / L;
        }
        long rows = first[items.Count];
        if (rows > int.MaxValue) throw new ArgumentException($"{rows} windows are too many for one batch: use longer windows");
        var rowItems = new AudioItem[rows];
        var starts = new long[rows];
        for (int i = 0; i < items.Count; i++)
            for (long r = first[i]; r < first[i + 1]; r++) { rowItems[r] = items[i]; starts[r] = (r - first[i]) * L; }
        return Fill(items.Count, L, rowItems, starts, sampleRate, (rowOf, i) =>
        {
            if (first[i + 1] == first[i]) return;
            var x = ReadItem(items[i], sampleRate);
            for (long r = first[i]; r < first[i + 1]; r++)
                x.AsSpan((int)starts[r], L).CopyTo(rowOf(r));
        });
    }

    /// <summary>Row r of the batch being filled, as a span over the tensor's memory.</summary>
    delegate Span<float> RowSpan(long row);

    /// <summary>
    /// Allocates (rows.Count, L) float32 on the CPU and lets <paramref name="fill"/> write the rows of work items
    /// 0 .. count-1 in parallel straight into the tensor's memory. (Building a float[] and calling torch.tensor, or
    /// TensorAccessor.CopyFrom, costs several times more than reading and decoding the WAV files.)
    /// </summary>
    static unsafe AudioBatch Fill(int count, int L, IReadOnlyList<AudioItem> rows, long[] starts, int rate, Action<RowSpan, int> fill)
    {
        var audio = empty([rows.Count, L], ScalarType.Float32);
        try
        {
            if (rows.Count > 0)
            {
                // The address of element 0 (a fresh tensor is contiguous): Tensor.bytes of a one-element view is a
                // span over the tensor's own memory, and its length stays small however large the batch is.
                nint data;
                using (var flat = audio.view(-1))
                using (var head = flat.narrow(0, 0, 1))
                    fixed (byte* p = head.bytes) data = (nint)p;
                ForEach(count, i => fill(r => new Span<float>((float*)data + r * L, L), i));
            }
            var labels = tensor(rows.Select(i => (long)i.Label).ToArray(), [rows.Count]);
            return new AudioBatch(audio, labels, rows, starts, rate);
        }
        catch
        {
            audio.Dispose();
            throw;
        }
    }
}
