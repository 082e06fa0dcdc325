// DNA scoring benchmark (issue 5): bases per second of scoring a sequence with the causal DNA LM on the CPU, batch 1,
// at 1 kbp, 100 kbp and 1 Mbp, with the peak growth of the resident set, for
//   * streaming (DnaScoring.Score): pieces of --chunks bases through DnaLM.ForwardChunk, carrying the recurrent state,
//     so memory is bounded by the piece and does not grow with the sequence; one row per chunk length;
//   * one full forward (DnaScoring.ScoreFull) over the whole sequence, whose activations grow with its length: run up to
//     --full-limit bases; above it the row says what it would need, extrapolated linearly from the measured growth.
// Where both run, the two scores must agree up to float32 rounding (DnaScoring's contract); the table prints their
// relative difference as a check, never an assert.
// Sequences are seeded random A/C/G/T (the cost does not depend on the bases). Every measurement runs once untimed
// (JIT, allocator, thread pool), then --repeats times; the table gives the median time and the largest peak.
// Peak memory: before each run the allocator's free memory is handed back (GC, malloc_trim), the resident set is read
// (VmRSS) and its high-water mark reset (writing 5 to /proc/self/clear_refs resets VmHWM on Linux); after the run the
// row takes VmHWM - VmRSS(before). Prints Markdown tables naming the machine.
//   dotnet run -c Release --project bench/DnaBench [-- --lengths 1k,100k,1M --chunks 8192,1024 --repeats 3 --full-limit 200k --model DIR --quick]
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Ssm.Genomics;
using TorchSharp;
using static TorchSharp.torch;

const string DefaultModel = "models/human-dna-lm";
var lengths = new long[] { 1_000, 100_000, 1_000_000 };
var chunks = new[] { DnaScoring.DefaultChunkLength, 8192 };
long fullLimit = 200_000;
int repeats = 3, seed = 1;
int? threads = null;
string? modelDir = null;
string preset = "small";
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--lengths": lengths = Next().Split(',').Select(Bases.Parse).ToArray(); break;
            case "--chunks": chunks = Next().Split(',').Select(s => checked((int)Bases.Parse(s))).ToArray(); break;
            case "--full-limit": fullLimit = Bases.Parse(Next()); break;
            case "--repeats": repeats = int.Parse(Next(), CultureInfo.InvariantCulture); break;
            case "--threads": threads = int.Parse(Next(), CultureInfo.InvariantCulture); break;
            case "--model": modelDir = Next(); break;
            case "--preset": preset = Next(); break;
            case "--seed": seed = int.Parse(Next(), CultureInfo.InvariantCulture); break;
            case "--quick": lengths = [1_000, 20_000]; chunks = [DnaScoring.DefaultChunkLength]; repeats = 1; break;
            case "-h" or "--help":
                Console.WriteLine("usage: DnaBench [--lengths 1k,100k,1M] [--chunks 8192,1024] [--full-limit 200k] [--repeats 3] [--threads N]\n" +
                    "                [--model DIR | --preset small] [--seed 1] [--quick]\n" +
                    "  --lengths:    sequence lengths in bases (k = 1,000, M = 1,000,000; 'bp' may follow)\n" +
                    "  --chunks:     streaming piece lengths; one row each (the first is the default of DnaScoring.Score)\n" +
                    "  --full-limit: longest sequence run as one full forward; longer ones print the extrapolated memory\n" +
                    "  --repeats:    timed runs per measurement after one untimed warm-up (median time, largest peak);\n" +
                    "                full forwards of 1 Mbp or more run once\n" +
                    "  --model:      a causal DNA LM folder (config.json + model.safetensors); default models/human-dna-lm if it\n" +
                    "                exists, else a new model with random weights of --preset (tiny, small, medium)\n" +
                    "  --threads:    torch intra-op threads (default: all cores)\n" +
                    "  --quick:      1 kbp and 20 kbp, one chunk length, one repetition: checks that everything runs");
                return 0;
            default: throw new FormatException($"unknown argument '{args[i]}' (try --help)");
        }
    }
    if (lengths.Length == 0 || lengths.Any(l => l < 1 || l > int.MaxValue)) throw new FormatException("--lengths needs values from 1 to 2^31 - 1");
    if (chunks.Length == 0 || chunks.Any(c => c < 1)) throw new FormatException("--chunks needs positive values");
    if (repeats < 1) throw new FormatException("--repeats must be >= 1");
    if (fullLimit < 0) throw new FormatException("--full-limit must be >= 0");
    if (threads is < 1) throw new FormatException("--threads must be >= 1");
}
catch (Exception e) when (e is FormatException or OverflowException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
lengths = lengths.Distinct().Order().ToArray();
chunks = chunks.Distinct().ToArray();
torch.set_num_threads(threads ?? Environment.ProcessorCount);

// ---------------------------------------------------------------------------------------------- the model
DnaModel model;
string modelNote;
try
{
    string? dir = modelDir ?? Bases.FindUp(DefaultModel);
    if (dir is not null)
    {
        model = DnaModel.Load(dir);
        modelNote = $"model {Path.GetFullPath(dir)}";
    }
    else
    {
        torch.manual_seed(seed);
        model = DnaModel.Create(DnaModel.CausalModelType, preset);
        modelNote = $"no {DefaultModel} folder found: a new '{preset}' {DnaModel.CausalModelType} with random weights (the same cost as a " +
            "trained one of this shape; its bits/base are near 2 and mean nothing)";
    }
    _ = model.AsCausal;
}
catch (Exception e) when (e is InvalidDataException or ArgumentException or InvalidOperationException or IOException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
using var owned = model;
var lm = model.AsCausal;
lm.Model.eval();
var cfg = lm.Config;

var inv = CultureInfo.InvariantCulture;
string load = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "?";
Console.WriteLine($"# DNA scoring benchmark: {Machine.Describe()}");
Console.WriteLine(string.Create(inv, $"TorchSharp threads {torch.get_num_threads()}, OMP_WAIT_POLICY {Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") ?? "unset"}, " +
    $"load average at start {load}; float32, batch 1, no autograd; {modelNote}: d_model {cfg.DModel}, {cfg.NLayer} layers, d_state {cfg.DState}, " +
    $"{model.ParameterCount:N0} parameters."));
bool peakWorks = Peak.CanReset();
if (!peakWorks) Console.WriteLine("(this system cannot reset VmHWM through /proc/self/clear_refs: the memory columns are n/a)");
Console.WriteLine();

// ---------------------------------------------------------------------------------------------- measurements
var bases = Bases.Random(lengths[^1], seed);
var rows = new List<string>();
var summary = new List<string>();
var fullPoints = new List<(long Length, double Ms, double PeakMb)>();
var streamRate = new Dictionary<(int Chunk, long Length), double>();
var streamPeak = new Dictionary<(int Chunk, long Length), double>();

foreach (var len in lengths)
{
    var mem = bases.AsMemory(0, (int)len);
    string label = Bases.Label(len);

    // Full forward first, so the streaming rows can print their agreement with it.
    Result? full = null;
    if (len <= fullLimit)
    {
        int reps = len >= 1_000_000 ? 1 : repeats;
        Console.Error.WriteLine($"{label}: full forward, warm-up + {reps} run(s) ...");
        // A full forward of 1 Mbp or more (only with a raised --full-limit) warms up on 100 kbp instead of itself.
        var warm = bases.AsMemory(0, (int)Math.Min(len, 100_000));
        full = Run(reps, () => DnaScoring.ScoreFull(lm, mem.Span), len >= 1_000_000 ? () => DnaScoring.ScoreFull(lm, warm.Span) : null);
        fullPoints.Add((len, full.Ms, full.PeakMb));
    }

    foreach (var chunk in chunks)
    {
        Console.Error.WriteLine($"{label}: streaming, chunk {chunk}, warm-up + {repeats} run(s) ...");
        var warm = bases.AsMemory(0, (int)Math.Min(len, 2L * chunk));                       // two pieces (one when shorter)
        var s = Run(repeats, () => DnaScoring.Score(lm, mem, chunk), () => DnaScoring.Score(lm, warm, chunk));
        streamRate[(chunk, len)] = len / (s.Ms / 1e3);
        streamPeak[(chunk, len)] = s.PeakMb;
        string diff = full is null ? "-" : RelDiff(s.Score.Nats, full.Score.Nats);
        rows.Add(Row(label, $"streaming, chunk {chunk:N0}", s, diff));
    }

    if (full is not null)
        rows.Add(Row(label, "full forward", full, "(reference)"));
    else
        rows.Add($"| {label} | full forward | - | {Skipped(len)} | - | - | - | - |");
}

Console.WriteLine("Scoring one sequence of seeded random A/C/G/T (-ln p of every base, batch 1): median wall time of the timed runs, " +
    "bases per second, and the largest growth of the resident set over its value before a run (VmHWM reset before each run). " +
    "rel. diff = |nats(streaming) - nats(full)| / nats(full) where both ran (float32; a check, not an assert).");
Console.WriteLine();
Console.WriteLine("| length | mode | runs | median time s | bases/s | peak extra RSS MB | bits/base | rel. diff vs full |");
Console.WriteLine("|---:|---|---:|---:|---:|---:|---:|---:|");
foreach (var r in rows) Console.WriteLine(r);
Console.WriteLine();

// ---------------------------------------------------------------------------------------------- summary
foreach (var chunk in chunks)
{
    var rates = lengths.Select(l => streamRate[(chunk, l)]).ToArray();
    var peaks = lengths.Select(l => streamPeak[(chunk, l)]).ToArray();
    // Sequences shorter than the chunk run as one shorter piece and need less; from one chunk on, the peak should be flat.
    var atLeastChunk = lengths.Where(l => l >= chunk).Select(l => streamPeak[(chunk, l)]).ToArray();
    string flat = !peakWorks || atLeastChunk.Length < 2 ? ""
        : atLeastChunk.Max() <= 1.5 * atLeastChunk.Min() + 16 ? $" (flat from {chunk:N0} bases on: bounded by the chunk)"
        : " (grows with the length beyond one chunk: unexpected)";
    string chr1 = lengths[^1] < 1_000_000 ? ""
        : string.Create(inv, $"; a 250 Mbp chromosome (human chr1) would take ≈{250e6 / rates[^1] / 3600:F1} h per strand at this rate");
    summary.Add(string.Create(inv, $"- streaming, chunk {chunk:N0}: {rates[^1]:N0} bases/s at {Bases.Label(lengths[^1])} " +
        $"({rates[^1] / rates[0]:F2}x the rate at {Bases.Label(lengths[0])}); peak extra RSS {peaks.Min():F0}-{peaks.Max():F0} MB over all lengths") +
        flat + chr1 + ".");
}
if (fullPoints.Count > 0)
{
    var (fl, fms, fpk) = fullPoints[^1];
    double fullRate = fl / (fms / 1e3);
    string vs = string.Join(", ", chunks.Select(c => string.Create(inv, $"{fullRate / streamRate[(c, fl)]:F2}x streaming with chunk {c:N0}")));
    string mems = string.Join(", ", chunks.Select(c => string.Create(inv, $"{streamPeak[(c, fl)]:F0} MB streaming with chunk {c:N0}")));
    summary.Add(string.Create(inv, $"- full forward at {Bases.Label(fl)}: {fullRate:N0} bases/s ({vs}); ") +
        (peakWorks ? string.Create(inv, $"peak extra RSS {fpk:F0} MB ({fpk * 1024 * 1024 / fl:F0} bytes per base) against {mems}.") : "peak memory n/a."));
}
foreach (var line in summary) Console.WriteLine(line);
Console.WriteLine();
Console.WriteLine($"load average at the end {(File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "?")} (a shared machine: other jobs' load shows as noise).");
return 0;

// ---------------------------------------------------------------------------------------------- helpers

// One untimed warm-up (warmup, or body itself), then reps timed runs, each from a trimmed allocator with a fresh
// high-water mark.
Result Run(int reps, Func<DnaScore> body, Func<DnaScore>? warmup = null)
{
    (warmup ?? body)();
    var times = new List<double>();
    double peak = 0;
    DnaScore score = DnaScore.Zero;
    for (int r = 0; r < reps; r++)
    {
        long before = Peak.Reset();
        var sw = Stopwatch.StartNew();
        score = body();
        sw.Stop();
        times.Add(sw.Elapsed.TotalMilliseconds);
        Console.Error.WriteLine(string.Create(inv, $"  run {r + 1}/{reps}: {sw.Elapsed.TotalSeconds:F2} s"));
        peak = Math.Max(peak, Math.Max(0, Measure.Status("VmHWM") - before) / 1024.0);
    }
    times.Sort();
    return new Result(times[times.Count / 2], peak, score, reps);
}

string Row(string label, string mode, Result r, string diff)
{
    long len = r.Score.Bases + r.Score.Skipped;
    return string.Create(inv, $"| {label} | {mode} | {r.Runs} | {r.Ms / 1e3:F3} | {len / (r.Ms / 1e3):N0} | " +
        $"{(peakWorks ? r.PeakMb.ToString("F1", inv) : "n/a")} | {r.Score.BitsPerBase:F4} | {diff} |");
}

string RelDiff(double a, double b) => (Math.Abs(a - b) / Math.Abs(b)).ToString("0.0e+0", inv);

// The memory a skipped full forward would need: linear in the length through the two longest measured full forwards
// (a fixed part plus activations per base), or proportional to the one measured; time likewise.
string Skipped(long len)
{
    if (!peakWorks || fullPoints.Count == 0)
        return $"skipped (above --full-limit {fullLimit:N0}; no measured full forward to extrapolate from)";
    var (l2, ms2, m2) = fullPoints[^1];
    double mb = m2 * len / l2;
    if (fullPoints.Count >= 2)
    {
        var (l1, _, m1) = fullPoints[^2];
        double slope = (m2 - m1) / (l2 - l1);
        if (slope > 0) mb = m2 + slope * (len - l2);
    }
    return string.Create(inv, $"skipped (would need ~{mb / 1024:F1} GB, ~{ms2 * len / l2 / 1e3:F0} s)");
}

sealed record Result(double Ms, double PeakMb, DnaScore Score, int Runs);

static class Bases
{
    /// <summary>"1000", "100k", "1M", "1Mbp", "100 kbp" -> bases.</summary>
    public static long Parse(string text)
    {
        string s = text.Trim().Replace(" ", "", StringComparison.Ordinal).Replace("_", "", StringComparison.Ordinal);
        if (s.EndsWith("bp", StringComparison.OrdinalIgnoreCase)) s = s[..^2];
        long scale = 1;
        if (s.Length > 0 && char.ToLowerInvariant(s[^1]) is 'k' or 'm' or 'g')
        {
            scale = char.ToLowerInvariant(s[^1]) switch { 'k' => 1_000, 'm' => 1_000_000, _ => 1_000_000_000 };
            s = s[..^1];
        }
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || v < 0 || v * scale > long.MaxValue || v * scale != Math.Floor(v * scale))
            throw new FormatException($"'{text}' is not a length in bases (e.g. 1000, 100k, 1M)");
        return (long)(v * scale);
    }

    public static string Label(long n) =>
        n % 1_000_000 == 0 ? $"{n / 1_000_000} Mbp" : n % 1_000 == 0 ? $"{n / 1_000} kbp" : string.Create(CultureInfo.InvariantCulture, $"{n:N0} bp");

    /// <summary>Seeded random A/C/G/T (ASCII).</summary>
    public static byte[] Random(long n, int seed)
    {
        var rng = new System.Random(seed);
        var acgt = "ACGT"u8.ToArray();
        var b = new byte[n];
        for (long i = 0; i < n; i++) b[i] = acgt[rng.Next(4)];
        return b;
    }

    /// <summary>A folder relative to the working directory, or to the app's folder or any folder above it (the repo root).</summary>
    public static string? FindUp(string relative)
    {
        if (Directory.Exists(relative)) return relative;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, relative);
            if (Directory.Exists(p)) return p;
        }
        return null;
    }
}

static class Peak
{
    [DllImport("libc")]
    static extern int malloc_trim(nuint pad);

    /// <summary>Hands free memory back (GC, malloc_trim), resets VmHWM; returns VmRSS (kB) after that.</summary>
    public static long Reset()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        try { malloc_trim(0); } catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        long rss = Measure.Status("VmRSS");
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return rss;
    }

    /// <summary>Whether resetting works here: touching 64 MB of native memory (mmap'd by malloc, unmapped by free) raises
    /// VmHWM; after a reset it must be back near VmRSS.</summary>
    public static unsafe bool CanReset()
    {
        const int size = 64 << 20;
        void* p = NativeMemory.Alloc(size);
        NativeMemory.Fill(p, size, 1);
        NativeMemory.Free(p);
        long rss = Reset();
        long hwm = Measure.Status("VmHWM");
        return rss > 0 && hwm > 0 && hwm < rss + (32 << 10);
    }
}
