// ssm-dna: DNA language models and classifiers with state-space models (thin: parse the command line, call
// Ssm.Genomics, print). Results go to stdout (TSV, or JSON with --json), progress and notes to stderr; user errors are
// one line "error: ..." with a non-zero exit (Ssm.Apps.Cli.Guard: 1 bad input or a failed run, 2 bad usage, 70 libtorch,
// 130 interrupted).
//   score      per FASTA record: log-likelihood, bits per base, scored bases; streaming over records of any length
//   variants   zero-shot variant effect: log p(alt window) - log p(ref window), both strands averaged, one row per ALT
//   classify   labels FASTA records with a Caduceus classifier (splice junctions, great-ape species, or --model)
//   train      next-base LM pretraining (lm), Caduceus masked-LM pretraining (mlm), or fine-tuning a classifier
//   eval       an LM's bits per base on fixed validation windows of the human valid split, or a classifier's accuracy
//   baselines  order-k Markov chains on the same validation windows as eval; k-mer logistic regression on a task
//   info       a model's type, size, labels and config
//   doctor     the backend and the device self-test (shared with every ssm-* CLI)
// The embedded models (models/human-dna-lm, models/splice-caduceus, models/apes-caduceus) are copied next to the
// executable at build (see ssm-dna.csproj).
//
// Conventions shared with the library (DnaLM's file header): every scored sequence (a record, a region, a variant
// window, a validation window) is read from a zero state after [BOS]; only A/C/G/T targets are scored (N is read as
// input but never predicted), so "scored_bases" is the number of A/C/G/T in the sequence; log-likelihoods are natural
// logs (nats), bits per base are -log2 p / scored bases.
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ssm.Backbone;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using Ssm.Genomics;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Apps.Dna;

public static class DnaCli
{
    public const string DefaultModelName = "human-dna-lm", SpliceModelName = "splice-caduceus", ApesModelName = "apes-caduceus";

    /// <summary>Where the embedded models are copied at build and publish (see ssm-dna.csproj).</summary>
    public static string DefaultModelsDir => Path.Combine(AppContext.BaseDirectory, "models");

    /// <summary>
    /// The longest record (or region) that `score --strand both|reverse` holds in memory: the reverse strand starts at
    /// the record's end, which a FASTA stream reaches last. The forward strand streams with flat memory at any length.
    /// </summary>
    public const long MaxBufferedBases = 256_000_000;

    /// <summary>The longest record `classify` takes (the task classifiers are trained on 57-200 nt sequences).</summary>
    public const int MaxClassifyLength = 1 << 20;

    /// <summary>The fixed validation windows of `eval`, `baselines --markov` and training's final numbers (one set of defaults).</summary>
    public const int DefaultEvalWindows = 128, DefaultEvalLength = 1024;

    /// <summary>Seed of the fixed validation windows (the library's default, DnaTrainOptions.EvalSeed).</summary>
    public static long DefaultEvalSeed { get; } = new DnaTrainOptions().EvalSeed;

    /// <summary>The tasks of `train`: two pretraining objectives and the labelled tasks of the prepared data.</summary>
    public static readonly string[] TrainTasks = ["lm", "mlm", .. DnaDatasets.TaskLabels.Keys];

    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    // Relaxed escaping: the output is data, not HTML, and labels such as the promoters' "+" should read as themselves.
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Runs the CLI on Console.Out / Console.Error; returns the exit code.</summary>
    /// <param name="defaultModelsDir">The folder holding the embedded models (null: <see cref="DefaultModelsDir"/>).</param>
    public static int Run(string[] args, string? defaultModelsDir = null)
    {
        var defaults = new Defaults(defaultModelsDir ?? DefaultModelsDir);
        var root = new RootCommand(
            "DNA with state-space models: a causal Mamba language model over nucleotides (log-likelihood of FASTA records, " +
            "zero-shot variant effects) and Caduceus (bidirectional, reverse-complement aware) classifiers, trained with the " +
            $"suite's trainer. Without --model the embedded {DefaultModelName} (human DNA) is used.");
        root.Subcommands.Add(ScoreCommand(defaults));
        root.Subcommands.Add(VariantsCommand(defaults));
        root.Subcommands.Add(ClassifyCommand(defaults));
        root.Subcommands.Add(TrainCommand());
        root.Subcommands.Add(EvalCommand(defaults));
        root.Subcommands.Add(BaselinesCommand());
        root.Subcommands.Add(InfoCommand(defaults));
        root.Subcommands.Add(Doctor.Create());
        return Cli.Invoke(root, args);
    }

    sealed record Defaults(string ModelsDir)
    {
        public string Lm => Path.Combine(ModelsDir, DefaultModelName);

        /// <summary>The embedded classifier of a task, or null when none ships.</summary>
        public string? Classifier(string task) => task switch
        {
            "splice" => Path.Combine(ModelsDir, SpliceModelName),
            "apes" => Path.Combine(ModelsDir, ApesModelName),
            _ => null,
        };
    }

    // ------------------------------------------------------------------ shared pieces

    static Option<string?> ModelOption(string what) => new("--model", "-m")
    {
        Description = $"model folder (config.json + model.safetensors); default: {what}",
        HelpName = "DIR",
    };

    static Option<string?> DataOption() => new("--data")
    {
        Description = $"prepared DNA folder (data/dna.sh); default: {DnaDatasets.DefaultRelative} in the current folder or above",
        HelpName = "DIR",
    };

    static Option<string?> TaskOption(string description) => new("--task") { Description = description, HelpName = "TASK" };

    static bool IsModelFolder(string dir) =>
        File.Exists(Path.Combine(dir, ModelFolder.ConfigFile)) && File.Exists(Path.Combine(dir, ModelFolder.WeightsFile));

    static string ResolveLm(string? given, Defaults d)
    {
        if (given is not null) return given;
        if (IsModelFolder(d.Lm)) return d.Lm;
        throw new FileNotFoundException($"no default DNA language model is installed (looked in {d.Lm}); pass --model DIR, or train one: " +
            $"data/dna.sh && ssm-dna train --task lm --out models/{DefaultModelName} (a build copies models/{DefaultModelName} next to the app)");
    }

    static string ResolveClassifier(string? given, string? task, Defaults d)
    {
        if (given is not null) return given;
        if (task is null) throw new UsageException("give --task (splice or apes, the embedded classifiers) or --model DIR");
        string? dir = d.Classifier(task);
        if (dir is null)
            throw new FileNotFoundException($"no classifier for '{task}' ships with ssm-dna; pass --model DIR (train one: ssm-dna train --task {task} --out DIR)");
        if (IsModelFolder(dir)) return dir;
        throw new FileNotFoundException($"the {task} classifier is not installed (looked in {dir}); pass --model DIR, or train one: " +
            $"ssm-dna train --task {task} --out models/{Path.GetFileName(dir)}");
    }

    /// <summary>A task name checked against a list: a usage error (exit 2) naming the choices otherwise.</summary>
    static string CheckTask(string task, IReadOnlyCollection<string> allowed, string option = "--task")
    {
        string t = task.Trim().ToLowerInvariant();
        if (!allowed.Contains(t)) throw new UsageException($"{option} '{task}': unknown task (one of {string.Join(", ", allowed)})");
        return t;
    }

    static IEnumerable<KeyValuePair<string, string>> ParseSets(string[]? sets) => Cli.ParseSets(sets, "n_layer=8");

    static GenomicRegion? ParseRegion(string? text)
    {
        if (text is null) return null;
        return GenomicRegion.TryParse(text, out var region, out string error) ? region : throw new UsageException($"--region: {error}");
    }

    /// <summary>A number for TSV output; "NA" when undefined (no scored base, a skipped variant).</summary>
    static string Num(double v, string format) => double.IsFinite(v) ? (v + 0.0).ToString(format, Inv) : "NA";   // + 0.0: no "-0.0000"

    /// <summary>A number for JSON output; null when undefined (JSON has no NaN).</summary>
    static JsonNode? Json(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;

    static void Print(JsonNode node) => Console.WriteLine(node.ToJsonString(Indented));

    /// <summary>
    /// The current record's bases [from, to) (to: long.MaxValue for "to the end") as consecutive slices of one reused
    /// buffer, read as they are consumed: each slice is valid until the next is asked for (DnaScoring.Score encodes
    /// each before asking). Stops reading at <paramref name="to"/>; NextRecord skips (and checks) the rest.
    /// </summary>
    static IEnumerable<ReadOnlyMemory<byte>> RecordSlices(FastaReader reader, byte[] buffer, long from, long to)
    {
        long pos = 0;
        int n;
        while (pos < to && (n = reader.ReadBases(buffer)) > 0)
        {
            long s = Math.Max(pos, from), e = Math.Min(pos + n, to);
            if (e > s) yield return buffer.AsMemory((int)(s - pos), (int)(e - s));
            pos += n;
        }
    }

    /// <summary>The current record's bases [from, to) in one array, refusing more than <paramref name="limit"/> bases.</summary>
    static byte[] ReadRecord(FastaReader reader, byte[] buffer, long from, long to, long limit, Func<string> tooLong)
    {
        var acc = new byte[1 << 16];
        int len = 0;
        foreach (var slice in RecordSlices(reader, buffer, from, to))
        {
            if ((long)len + slice.Length > Math.Min(limit, Array.MaxLength)) throw new InvalidDataException(tooLong());
            if (len + slice.Length > acc.Length)
                Array.Resize(ref acc, (int)Math.Min(Array.MaxLength, Math.Max(2L * acc.Length, len + slice.Length)));
            slice.Span.CopyTo(acc.AsSpan(len));
            len += slice.Length;
        }
        return acc.AsSpan(0, len).ToArray();
    }

    /// <summary>The region's 0-based half-open bounds as far as they can be known before reading (open end: long.MaxValue).</summary>
    static (long From, long To) Bounds(GenomicRegion? region) =>
        region is null ? (0, long.MaxValue) : (region.ZeroBasedStart, region.EndExclusive ?? long.MaxValue);

    /// <summary>
    /// The interval actually covered once a record (or region of it) has been read: the region clipped to the record,
    /// or the whole record. A region that starts beyond the record is an error naming the file.
    /// </summary>
    static (long Start, long End) Covered(FastaReader reader, GenomicRegion? region, long fed, string path)
    {
        if (region is null) return (0, fed);
        if (!reader.RecordComplete) return (region.ZeroBasedStart, region.ZeroBasedStart + fed);   // stopped at the region's end
        try { return region.Resolve(reader.Length); }
        catch (ArgumentException e) { throw new InvalidDataException($"{path}: {e.Message}"); }
    }

    // ------------------------------------------------------------------ score

    static Command ScoreCommand(Defaults defaults)
    {
        var files = new Argument<string[]>("FILE") { Description = "FASTA files (plain or gzip/bgzip; '-' reads stdin); every record is scored", Arity = ArgumentArity.OneOrMore };
        var strand = new Option<string>("--strand")
        {
            Description = "forward (streams, any length), reverse (the reverse complement), or both (the average of the two; " +
                          $"holds each record in memory, up to {MaxBufferedBases / 1_000_000} Mbp)",
            DefaultValueFactory = _ => "forward",
        }.AcceptOnlyFromAmong("forward", "reverse", "both");
        var regionOpt = new Option<string?>("--region", "-r") { Description = "score only this part of one record: chr, chr:start-end or chr:start- (1-based, inclusive)", HelpName = "REGION" };
        var chunk = new Option<int>("--chunk") { Description = "bases per forward pass (memory is bounded by it; the result does not depend on it)", DefaultValueFactory = _ => DnaScoring.DefaultChunkLength };
        var model = ModelOption($"the embedded {DefaultModelName}");
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption("the rows (an array)");
        var cmd = new Command("score",
            "Log-likelihood of every FASTA record under the causal DNA LM: one TSV row per record with name, length, scored_bases " +
            "(A/C/G/T; N is read but not predicted), log_likelihood (natural log, nats) and bits_per_base; with --strand both " +
            "also each strand's numbers. Records of any length stream through the model chunk by chunk.")
        {
            files, strand, regionOpt, chunk, model, device, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            var paths = pr.GetValue(files) ?? [];
            Cli.RejectOptionLike(paths);
            var region = ParseRegion(pr.GetValue(regionOpt));
            int chunkLength = pr.GetValue(chunk);
            if (chunkLength < 1) throw new UsageException($"--chunk must be at least 1, got {chunkLength}");
            string mode = pr.GetValue(strand)!;
            foreach (var p in paths)
                if (p != "-" && !File.Exists(p)) throw new FileNotFoundException($"{p}: no such file");

            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            string dir = ResolveLm(pr.GetValue(model), defaults);
            using var m = DnaModel.Load(dir, dev);
            var lm = m.AsCausal;
            bool asJson = pr.GetValue(json);
            var rows = new JsonArray();
            if (!asJson)
                Console.WriteLine(mode == "both"
                    ? "name\tlength\tscored_bases\tlog_likelihood\tbits_per_base\tlog_likelihood_fwd\tbits_per_base_fwd\tlog_likelihood_rev\tbits_per_base_rev"
                    : "name\tlength\tscored_bases\tlog_likelihood\tbits_per_base");
            var buffer = new byte[1 << 16];
            var (from, to) = Bounds(region);
            using var bar = new ProgressBar("score", 0, "bases");
            foreach (var path in paths)
            {
                using var reader = FastaReader.Open(path);
                bool any = false, found = false;
                while (reader.NextRecord(out var header))
                {
                    any = true;
                    if (region is not null && header.Name != region.Chrom) continue;
                    found = true;
                    bar.Advance(0, header.Name);
                    DnaScore score;
                    DnaStrandScores? strands = null;
                    long length;
                    (long Start, long End) covered;
                    if (mode == "forward")
                    {
                        long fed = 0;
                        var counted = RecordSlices(reader, buffer, from, to).Select(s => { fed += s.Length; return s; });
                        score = DnaScoring.Score(lm, counted, chunkLength, bar);
                        covered = Covered(reader, region, fed, path);
                        length = fed;
                    }
                    else
                    {
                        string name = header.Name;
                        long line = header.LineNumber;
                        var bases = ReadRecord(reader, buffer, from, to, MaxBufferedBases, () =>
                            $"{path}:{line}: record {name} is longer than the {MaxBufferedBases / 1_000_000} Mbp that --strand {mode} holds in memory " +
                            "(the reverse strand is read from the record's end); use --strand forward (streams any length) or score parts with --region");
                        covered = Covered(reader, region, bases.Length, path);
                        length = bases.Length;
                        if (mode == "both")
                        {
                            strands = DnaScoring.ScoreStrands(lm, bases, chunkLength, bar);
                            score = strands.Both;
                        }
                        else score = DnaScoring.ScoreReverseComplement(lm, bases.Length, (s, n) => bases.AsSpan((int)s, n).ToArray(), chunkLength, bar);
                    }
                    string label = region is null ? header.Name
                        : $"{header.Name}:{(covered.Start + 1).ToString(Inv)}-{covered.End.ToString(Inv)}";
                    if (asJson)
                    {
                        var row = new JsonObject
                        {
                            ["name"] = label, ["file"] = path, ["length"] = length, ["scored_bases"] = score.Bases,
                            ["log_likelihood"] = Json(score.LogLikelihood), ["bits_per_base"] = Json(score.BitsPerBase),
                        };
                        if (strands is not null)
                        {
                            row["log_likelihood_fwd"] = Json(strands.Forward.LogLikelihood);
                            row["bits_per_base_fwd"] = Json(strands.Forward.BitsPerBase);
                            row["log_likelihood_rev"] = Json(strands.Reverse.LogLikelihood);
                            row["bits_per_base_rev"] = Json(strands.Reverse.BitsPerBase);
                        }
                        rows.Add(row);
                    }
                    else
                    {
                        string line = $"{label}\t{length.ToString(Inv)}\t{score.Bases.ToString(Inv)}\t{Num(score.LogLikelihood, "0.0000")}\t{Num(score.BitsPerBase, "0.000000")}";
                        if (strands is not null)
                            line += $"\t{Num(strands.Forward.LogLikelihood, "0.0000")}\t{Num(strands.Forward.BitsPerBase, "0.000000")}" +
                                    $"\t{Num(strands.Reverse.LogLikelihood, "0.0000")}\t{Num(strands.Reverse.BitsPerBase, "0.000000")}";
                        Console.WriteLine(line);
                    }
                    if (region is not null) break;
                }
                if (!any) throw new InvalidDataException($"{path}: no FASTA records (expected '>' header lines)");
                if (region is not null && !found) throw new InvalidDataException($"{path}: no record named '{region.Chrom}' (--region {region})");
            }
            if (asJson) Print(rows);
            return Cli.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ variants

    /// <summary>One output row of `variants`: a biallelic variant, its windows and its scores.</summary>
    sealed record VariantRow(VcfVariant Variant, string Status, string Note)
    {
        public string Chrom => Variant.Chrom;
        public string Alt => Variant.Alts[0];
        public long WindowStart { get; init; } = -1;     // 0-based start of the reference window (-1: not scored)
        public long WindowEnd { get; init; } = -1;       // 0-based exclusive end
        public byte[]? RefWindow { get; init; }
        public byte[]? AltWindow { get; init; }
        public double Fwd { get; set; } = double.NaN;
        public double Rev { get; set; } = double.NaN;
        public double Llr => (Fwd + Rev) / 2;
    }

    static Command VariantsCommand(Defaults defaults)
    {
        var refOpt = new Option<string>("--ref") { Description = "reference FASTA (plain or gzip; only the chromosomes that the VCF names are kept in memory)", Required = true, HelpName = "REF.fa" };
        var vcfOpt = new Option<string>("--vcf") { Description = "VCF (plain, gzip or bgzip); multi-allelic records give one row per ALT; symbolic ALTs are skipped", Required = true, HelpName = "FILE.vcf" };
        var window = new Option<int>("--window", "-w") { Description = "reference bases in each window, centred on the variant (clipped at the chromosome ends)", DefaultValueFactory = _ => DefaultEvalLength };
        var strict = new Option<bool>("--strict") { Description = "stop with an error at the first variant that does not fit the reference (REF mismatch, unknown chromosome, past its end)" };
        var batch = new Option<int>("--batch-size", "--batch") { Description = "windows per forward pass", DefaultValueFactory = _ => 64 };
        var model = ModelOption($"the embedded {DefaultModelName}");
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption("the rows (an array)");
        var cmd = new Command("variants",
            "Zero-shot variant effect: llr = log p(alt window) - log p(ref window) in nats, averaged over both strands (llr_fwd on the " +
            "given strand, llr_rev on the reverse complement of both windows). The ref window is --window reference bases centred " +
            "on the REF allele; the alt window has the same flanks around the ALT allele. For indels the two windows differ in " +
            "length and llr compares their total log-likelihoods (so it includes the inserted or deleted bases' own probability). " +
            "Columns: chrom, pos, ref, alt, llr, llr_fwd, llr_rev, status (ok, ref_mismatch, unknown_chrom, out_of_range) and note " +
            "(clipped_start / clipped_end where a chromosome end cuts the window, n_in_window=K when the window holds N, indel).")
        {
            refOpt, vcfOpt, window, strict, batch, model, device, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string refPath = pr.GetValue(refOpt)!, vcfPath = pr.GetValue(vcfOpt)!;
            int win = pr.GetValue(window), bs = pr.GetValue(batch);
            if (win < 1) throw new UsageException($"--window must be at least 1, got {win}");
            if (bs < 1) throw new UsageException($"--batch-size must be at least 1, got {bs}");
            foreach (var p in new[] { refPath, vcfPath })
                if (p != "-" && !File.Exists(p)) throw new FileNotFoundException($"{p}: no such file");
            bool isStrict = pr.GetValue(strict);

            // The VCF first: it names the chromosomes to keep from the reference.
            var variants = new List<VcfVariant>();
            long skippedSymbolic, skippedNoAlt;
            using (var vcf = VcfReader.Open(vcfPath))
            {
                foreach (var v in vcf.Variants()) variants.AddRange(v.Split());
                skippedSymbolic = vcf.SkippedSymbolic + vcf.DroppedSymbolicAlleles;
                skippedNoAlt = vcf.SkippedNoAlt;
            }
            var chromosomes = LoadReference(refPath, variants.Select(v => v.Chrom).ToHashSet(StringComparer.Ordinal));

            // Statuses first (cheap, no windows): --strict stops before any output; windows are built block by block below.
            var rows = variants.Select(v => Prepare(v, chromosomes, win, withWindows: false)).ToList();
            if (isStrict && rows.FirstOrDefault(r => r.Status != "ok") is { } bad)
                throw new InvalidDataException($"{vcfPath}:{bad.Variant.LineNumber}: {bad.Note} (--strict)");

            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            string dir = ResolveLm(pr.GetValue(model), defaults);
            using var m = DnaModel.Load(dir, dev);
            var lm = m.AsCausal;
            bool asJson = pr.GetValue(json);
            var output = new JsonArray();
            if (!asJson) Console.WriteLine("chrom\tpos\tref\talt\tllr\tllr_fwd\tllr_rev\tstatus\tnote");
            const int Block = 1024;   // variants per group of windows: bounds memory, rows print as they are done
            using (var bar = new ProgressBar("variants", rows.Count, "variants"))
            {
                for (int first = 0; first < rows.Count; first += Block)
                {
                    var block = variants.GetRange(first, Math.Min(Block, rows.Count - first)).Select(v => Prepare(v, chromosomes, win, withWindows: true)).ToList();
                    var scored = block.Where(r => r.Status == "ok").ToList();
                    // Four windows per variant: ref, alt, and their reverse complements; LogLikelihoods batches equal lengths.
                    var windows = new List<ReadOnlyMemory<byte>>(4 * scored.Count);
                    foreach (var r in scored)
                    {
                        windows.Add(r.RefWindow!);
                        windows.Add(r.AltWindow!);
                        windows.Add(DnaTokenizer.ReverseComplement(r.RefWindow!));
                        windows.Add(DnaTokenizer.ReverseComplement(r.AltWindow!));
                    }
                    var ll = DnaScoring.LogLikelihoods(lm, windows, bs);
                    for (int i = 0; i < scored.Count; i++)
                    {
                        scored[i].Fwd = ll[4 * i + 1] - ll[4 * i];
                        scored[i].Rev = ll[4 * i + 3] - ll[4 * i + 2];
                    }
                    foreach (var r in block)
                    {
                        if (asJson)   // window_start..window_end: the reference window, 1-based inclusive
                            output.Add(new JsonObject
                            {
                                ["chrom"] = r.Chrom, ["pos"] = r.Variant.Position, ["id"] = r.Variant.Id, ["ref"] = r.Variant.Ref, ["alt"] = r.Alt,
                                ["llr"] = Json(r.Llr), ["llr_fwd"] = Json(r.Fwd), ["llr_rev"] = Json(r.Rev), ["status"] = r.Status, ["note"] = r.Note,
                                ["window_start"] = r.WindowStart < 0 ? null : r.WindowStart + 1, ["window_end"] = r.WindowEnd < 0 ? null : r.WindowEnd,
                                ["line"] = r.Variant.LineNumber,
                            });
                        else
                            Console.WriteLine($"{r.Chrom}\t{r.Variant.Position.ToString(Inv)}\t{r.Variant.Ref}\t{r.Alt}\t{Num(r.Llr, "0.000000")}\t" +
                                              $"{Num(r.Fwd, "0.000000")}\t{Num(r.Rev, "0.000000")}\t{r.Status}\t{(r.Note.Length == 0 ? "." : r.Note)}");
                    }
                    bar.Advance(block.Count);
                }
            }
            if (asJson) Print(output);

            int ok = rows.Count(r => r.Status == "ok");
            Console.Error.WriteLine($"{ok} of {rows.Count} variant allele(s) scored with windows of {win} bases on both strands ({m.ModelType}, {dir})");
            foreach (var (status, what) in new[] { ("ref_mismatch", "REF does not match the reference"), ("unknown_chrom", "chromosome not in the reference"),
                                                   ("out_of_range", "REF runs past the chromosome's end") })
            {
                int n = rows.Count(r => r.Status == status);
                if (n > 0) Console.Error.WriteLine($"warning: {n} variant allele(s) not scored: {what} (status {status}; --strict makes this an error)");
            }
            int withN = rows.Count(r => r.Note.Contains("n_in_window", StringComparison.Ordinal));
            if (withN > 0) Console.Error.WriteLine($"note: {withN} window(s) contain N (scored; N is read but not predicted)");
            if (skippedSymbolic + skippedNoAlt > 0)
                Console.Error.WriteLine($"note: skipped {skippedSymbolic} symbolic ALT allele(s)/record(s) and {skippedNoAlt} record(s) without ALT");
            return Cli.Ok;
        }));
        return cmd;
    }

    /// <summary>
    /// The reference records the VCF names, in memory (one byte per base). A VCF chromosome missing from the reference
    /// matches a record that differs only by a "chr" prefix ("20" and "chr20"), with a note.
    /// </summary>
    static Dictionary<string, byte[]> LoadReference(string path, HashSet<string> wanted)
    {
        var found = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var buffer = new byte[1 << 16];
        var fasta = new List<string>();
        using var reader = FastaReader.Open(path);
        while (found.Count < wanted.Count && reader.NextRecord(out var h))
        {
            fasta.Add(h.Name);
            string? key = wanted.Contains(h.Name) ? h.Name : wanted.Contains(ChrAlias(h.Name)) ? ChrAlias(h.Name) : null;
            if (key is null || found.ContainsKey(key)) continue;
            string name = h.Name;
            long line = h.LineNumber;
            found[key] = ReadRecord(reader, buffer, 0, long.MaxValue, Array.MaxLength, () => $"{path}:{line}: record {name} is too long to hold in memory");
            if (key != h.Name) Console.Error.WriteLine($"note: VCF chromosome {key} is reference record {h.Name}");
        }
        if (found.Count == 0 && wanted.Count > 0)
            Console.Error.WriteLine($"warning: {path} has none of the VCF's chromosomes ({string.Join(", ", wanted.Take(5))}{(wanted.Count > 5 ? ", ..." : "")}); " +
                                    $"its records: {string.Join(", ", fasta.Take(5))}{(fasta.Count > 5 ? ", ..." : "")}");
        return found;
    }

    static string ChrAlias(string name) => name.StartsWith("chr", StringComparison.Ordinal) ? name[3..] : "chr" + name;

    /// <summary>
    /// Checks a biallelic variant against the reference and builds its windows: the ref window is the REF allele with
    /// left = (window - |REF|) / 2 bases before it and window - |REF| - left after it (both clipped at the chromosome's
    /// ends); the alt window is the same flanks around ALT.
    /// </summary>
    static VariantRow Prepare(VcfVariant v, Dictionary<string, byte[]> chromosomes, int window, bool withWindows)
    {
        string where = $"{v.Chrom}:{v.Position.ToString(Inv)}";
        if (!chromosomes.TryGetValue(v.Chrom, out var seq))
            return new VariantRow(v, "unknown_chrom", $"chromosome {v.Chrom} is not in the reference");
        long s = v.ZeroBasedStart, e = v.EndExclusive;
        if (e > seq.Length)
            return new VariantRow(v, "out_of_range", $"{where} {v.Ref}: REF runs past the end of {v.Chrom} (length {seq.Length.ToString(Inv)})");
        var actual = seq.AsSpan((int)s, (int)(e - s));
        if (!actual.SequenceEqual(System.Text.Encoding.ASCII.GetBytes(v.Ref)))
            return new VariantRow(v, "ref_mismatch", $"REF {v.Ref} does not match the reference {System.Text.Encoding.ASCII.GetString(actual)} at {where}");
        long left = Math.Max(0, (window - v.Ref.Length) / 2), right = Math.Max(0, window - v.Ref.Length - left);
        long ws = Math.Max(0, s - left), we = Math.Min(seq.Length, e + right);
        var notes = new List<string>();
        if (ws > s - left) notes.Add("clipped_start");
        if (we < e + right) notes.Add("clipped_end");
        int nCount = (int)(we - ws) - CountAcgt(seq.AsSpan((int)ws, (int)(we - ws)));
        if (nCount > 0) notes.Add($"n_in_window={nCount.ToString(Inv)}");
        if (v.IsIndel) notes.Add("indel");
        if (!withWindows) return new VariantRow(v, "ok", string.Join(';', notes)) { WindowStart = ws, WindowEnd = we };
        var refWindow = seq.AsSpan((int)ws, (int)(we - ws)).ToArray();
        var altWindow = new byte[(s - ws) + v.Alt().Length + (we - e)];
        seq.AsSpan((int)ws, (int)(s - ws)).CopyTo(altWindow);
        System.Text.Encoding.ASCII.GetBytes(v.Alt()).CopyTo(altWindow.AsSpan((int)(s - ws)));
        seq.AsSpan((int)e, (int)(we - e)).CopyTo(altWindow.AsSpan((int)(s - ws) + v.Alt().Length));
        return new VariantRow(v, "ok", string.Join(';', notes)) { WindowStart = ws, WindowEnd = we, RefWindow = refWindow, AltWindow = altWindow };
    }

    static string Alt(this VcfVariant v) => v.Alts[0];

    static int CountAcgt(ReadOnlySpan<byte> s)
    {
        int n = 0;
        foreach (byte b in s) if (b is (byte)'A' or (byte)'C' or (byte)'G' or (byte)'T') n++;
        return n;
    }

    // ------------------------------------------------------------------ classify

    static Command ClassifyCommand(Defaults defaults)
    {
        var file = new Argument<string>("FILE") { Description = "FASTA file of sequences to label (plain or gzip; '-' reads stdin)" };
        var task = TaskOption($"the embedded classifier: splice ({SpliceModelName}: exon/intron boundary EI, IE or neither N; 60 nt) " +
                              $"or apes ({ApesModelName}: human, chimp, gorilla, orangutan; 200 nt); with --model, checks the model's labels");
        var model = ModelOption("the embedded classifier of --task");
        var conjoin = new Option<bool>("--conjoin") { Description = "average the logits of each sequence and its reverse complement (post-hoc conjoining, Caduceus section 4.1)" };
        var batch = new Option<int>("--batch-size", "--batch") { Description = "sequences per forward pass", DefaultValueFactory = _ => 256 };
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption("the rows (an array)");
        var cmd = new Command("classify",
            "Label every FASTA record with a Caduceus sequence classifier: name, label, and the probability of each class (p_LABEL columns).")
        {
            file, task, model, conjoin, batch, device, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string path = pr.GetValue(file)!;
            Cli.RejectOptionLike([path]);
            string? t = pr.GetValue(task) is { } given ? CheckTask(given, DnaDatasets.TaskLabels.Keys.ToArray()) : null;
            int bs = pr.GetValue(batch);
            if (bs < 1) throw new UsageException($"--batch-size must be at least 1, got {bs}");
            if (path != "-" && !File.Exists(path)) throw new FileNotFoundException($"{path}: no such file");
            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            string dir = ResolveClassifier(pr.GetValue(model), t, defaults);
            using var m = DnaModel.Load(dir, dev);
            if (m.Task != DnaTask.SequenceClassification)
                throw new InvalidDataException($"{dir}: a {m.ModelType} {DnaModel.TaskName(m.Task)} model, not a classifier (classify needs a sequence-classification model)");
            if (t is not null && !m.Labels.SequenceEqual(DnaDatasets.TaskLabels[t]))
                throw new InvalidDataException($"{dir}: its labels ({string.Join(", ", m.Labels)}) are not those of the {t} task ({string.Join(", ", DnaDatasets.TaskLabels[t])})");
            bool asJson = pr.GetValue(json), conj = pr.GetValue(conjoin);
            var output = new JsonArray();
            if (!asJson) Console.WriteLine("name\tlabel\t" + string.Join('\t', m.Labels.Select(l => "p_" + l)));
            var names = new List<string>();
            var seqs = new List<ReadOnlyMemory<byte>>();
            var buffer = new byte[1 << 16];
            using var bar = new ProgressBar("classify", 0, "sequences");

            void Flush()
            {
                if (seqs.Count == 0) return;
                var results = m.Classify(seqs, bs, conj);
                for (int i = 0; i < results.Length; i++)
                {
                    var (label, probs) = results[i];
                    if (asJson)
                    {
                        var p = new JsonObject();
                        for (int k = 0; k < probs.Length; k++) p[m.Labels[k]] = probs[k];
                        output.Add(new JsonObject { ["name"] = names[i], ["label"] = m.Labels[label], ["probabilities"] = p });
                    }
                    else Console.WriteLine($"{names[i]}\t{m.Labels[label]}\t{string.Join('\t', probs.Select(p => p.ToString("0.000000", Inv)))}");
                }
                bar.Advance(seqs.Count);
                names.Clear();
                seqs.Clear();
            }

            using (var reader = FastaReader.Open(path))
            {
                while (reader.NextRecord(out var h))
                {
                    var bases = ReadRecord(reader, buffer, 0, long.MaxValue, MaxClassifyLength, () =>
                        $"{path}:{h.LineNumber}: record {h.Name} is longer than {MaxClassifyLength:N0} bases; classify labels short sequences (the task models see 57-200 nt)");
                    if (bases.Length == 0) throw new InvalidDataException($"{path}:{h.LineNumber}: record {h.Name} has no bases");
                    names.Add(h.Name);
                    seqs.Add(bases);
                    if (seqs.Count >= 4 * bs) Flush();
                }
            }
            Flush();
            if (asJson) Print(output);
            return Cli.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ data sources

    /// <summary>Sequences of equal length as a labelled set (uint8 bases (n, L), int64 labels (n)).</summary>
    static DnaLabelledSet LabelledSet(IReadOnlyList<LabeledSequence> items, string what)
    {
        int len = items[0].Sequence.Length;
        if (items.Any(i => i.Sequence.Length != len))
            throw new InvalidDataException($"{what}: sequences of different lengths ({items.Min(i => i.Sequence.Length)} to {items.Max(i => i.Sequence.Length)}); " +
                                           "the classifier trains on equal-length batches");
        var bytes = new byte[(long)items.Count * len];
        for (int i = 0; i < items.Count; i++) items[i].Sequence.CopyTo(bytes, (long)i * len);
        return new DnaLabelledSet(torch.tensor(bytes, new long[] { items.Count, len }, ScalarType.Byte),
            torch.tensor(items.Select(i => (long)i.Label).ToArray(), new long[] { items.Count }, ScalarType.Int64));
    }

    static void Dispose(DnaLabelledSet? set)
    {
        set?.Ids.Dispose();
        set?.Labels.Dispose();
    }

    /// <summary>Bits per base of a causal LM on fixed validation windows (the numbers of eval and of the model card).</summary>
    static DnaScore EvalLm(DnaModel model, DnaWindowSource valid, int windows, int length, long seed, int batch)
    {
        using var ids = DnaTraining.ValidationWindows(valid, windows, length, seed);
        var total = DnaScore.Zero;
        using var bar = new ProgressBar("eval", windows, "windows");
        for (int r = 0; r < windows; r += batch)
        {
            int n = Math.Min(batch, windows - r);
            using var part = ids.narrow(0, r, n);
            total += DnaTraining.EvalCausal(model, part, batch);
            bar.Advance(n);
        }
        return total;
    }

    static JsonObject ConfusionJson(ClassifierEval e, IReadOnlyList<string> labels)
    {
        var o = new JsonObject();
        for (int t = 0; t < labels.Count; t++)
        {
            var row = new JsonObject();
            for (int p = 0; p < labels.Count; p++) row[labels[p]] = e.Confusion[t, p];
            o[labels[t]] = row;
        }
        return o;
    }

    static string FormatConfusion(ClassifierEval e, IReadOnlyList<string> labels)
    {
        int w = Math.Max(6, labels.Max(l => l.Length) + 1);
        var sb = new System.Text.StringBuilder();
        sb.Append("true\\pred".PadRight(w + 2));
        foreach (var l in labels) sb.Append(l.PadLeft(w));
        for (int t = 0; t < labels.Count; t++)
        {
            sb.AppendLine().Append(labels[t].PadRight(w + 2));
            for (int p = 0; p < labels.Count; p++) sb.Append(e.Confusion[t, p].ToString(Inv).PadLeft(w));
        }
        return sb.ToString();
    }

    // ------------------------------------------------------------------ train

    sealed record TaskDefaults(long Steps, int Batch, double Lr, double WeightDecay);

    // Pretraining runs long on random windows; the labelled sets are small (promoters: 86 training sequences), so their
    // defaults are a few dozen epochs. Override any of them on the command line.
    static readonly Dictionary<string, TaskDefaults> Recipes = new()
    {
        ["lm"] = new(20000, 16, 2e-3, 0.1),
        ["mlm"] = new(20000, 16, 2e-3, 0.1),
        ["splice"] = new(2000, 64, 1e-3, 0.05),
        ["apes"] = new(10000, 64, 1e-3, 0.05),
        ["promoters"] = new(300, 32, 1e-3, 0.05),
    };

    static Command TrainCommand()
    {
        var task = new Option<string>("--task")
        {
            Description = "lm (next-base pretraining of ssm-dna-lm on the human train split), mlm (Caduceus masked-LM pretraining), " +
                          "or a labelled task to fine-tune a Caduceus classifier on: splice, apes, promoters",
            Required = true, HelpName = "TASK",
        };
        var data = DataOption();
        var output = new Option<string>("--out", "-o") { Description = "output folder: checkpoints, log.jsonl, the final model and eval.json", Required = true, HelpName = "DIR" };
        var init = new Option<string?>("--init") { Description = "classifier tasks: start from this pretrained caduceus folder (masked LM or classifier; the head is new)", HelpName = "DIR" };
        var type = new Option<string?>("--model-type") { Description = $"{DnaModel.CausalModelType} (lm) or {DnaModel.CaduceusModelType} (mlm and the classifier tasks); default: the task's", HelpName = "TYPE" };
        var preset = new Option<string?>("--preset")
        {
            Description = $"config preset ({DnaModel.CausalModelType}: {string.Join(", ", DnaLMConfig.Presets.Keys)}; {DnaModel.CaduceusModelType}: {string.Join(", ", CaduceusConfig.Presets.Keys)}); default: small",
        };
        var set = new Option<string[]>("--set") { Description = "change a config field, FIELD=VALUE, repeatable (e.g. --set n_layer=8 --set rcps=true)", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var steps = new Option<long?>("--steps") { Description = "optimizer steps (default: lm/mlm 20000, splice 2000, apes 10000, promoters 300)" };
        var batch = new Option<int?>("--batch-size", "--batch") { Description = "windows or sequences per step (default: lm/mlm 16, splice/apes 64, promoters 32)" };
        var length = new Option<int>("--length") { Description = "lm/mlm: bases per training window (validation windows have the same length)", DefaultValueFactory = _ => DefaultEvalLength };
        var lr = new Option<double?>("--lr") { Description = "peak learning rate (AdamW; linear warm-up, then cosine to 10%; default: lm/mlm 2e-3, classifiers 1e-3)" };
        var wd = new Option<double?>("--weight-decay") { Description = "AdamW decoupled weight decay (default: lm/mlm 0.1, classifiers 0.05)" };
        var warmup = new Option<long?>("--warmup-steps", "--warmup") { Description = "linear warm-up steps (default: 2% of the run)" };
        var clip = new Option<double>("--grad-clip") { Description = "global gradient-norm clip (0: off)", DefaultValueFactory = _ => 1.0 };
        var evalEvery = new Option<long?>("--eval-every") { Description = "validation every N steps (default: a tenth of the run; 0: only at the end)" };
        var ckEvery = new Option<long?>("--checkpoint-every") { Description = "checkpoint every N steps (default: as --eval-every)" };
        var logEvery = new Option<long>("--log-every") { Description = "a log.jsonl line every N steps", DefaultValueFactory = _ => 50 };
        var evalLimit = new Option<int?>("--eval-limit") { Description = "classifier tasks: evaluate on N sequences spread evenly over each of the valid and test splits (every k-th; default: all of them)" };
        var evalWindows = new Option<int>("--eval-windows") { Description = "lm/mlm: fixed validation windows of the human valid split scored at each evaluation", DefaultValueFactory = _ => DefaultEvalWindows };
        var evalSeed = new Option<long>("--eval-seed") { Description = "lm/mlm: seed of the validation windows (as eval --seed)", DefaultValueFactory = _ => DefaultEvalSeed };
        var noRc = new Option<bool>("--no-rc-augment") { Description = "do not replace training sequences by their reverse complement half of the time (Caduceus-Ph augmentation)" };
        var seed = new Option<long>("--seed") { Description = "seed of the initialisation and the data order", DefaultValueFactory = _ => 0 };
        var resume = new Option<bool>("--resume") { Description = "continue from the newest checkpoint in --out (same settings); Ctrl+C checkpoints and stops" };
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var json = Cli.JsonOption("the final summary");
        var cmd = new Command("train",
            "Train a DNA model with the suite's trainer (AdamW, warm-up + cosine, checkpoints, exact --resume): lm = next-base " +
            "pretraining on random windows of the human train split (validation: bits/base on fixed windows of the valid split), " +
            "mlm = Caduceus masked-LM pretraining, splice/apes/promoters = a Caduceus classifier (from --init or from scratch). " +
            "Writes OUT/eval.json with the final validation numbers (and test accuracy for the classifier tasks).")
        {
            task, data, output, init, type, preset, set, steps, batch, length, lr, wd, warmup, clip, evalEvery, ckEvery, logEvery,
            evalWindows, evalLimit, evalSeed, noRc, seed, resume, device, precision, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string t = CheckTask(pr.GetValue(task)!, TrainTasks);
            var recipe = Recipes[t];
            bool pretraining = t is "lm" or "mlm";
            long total = pr.GetValue(steps) ?? recipe.Steps;
            int bs = pr.GetValue(batch) ?? recipe.Batch;
            double rate = pr.GetValue(lr) ?? recipe.Lr, decay = pr.GetValue(wd) ?? recipe.WeightDecay, gradClip = pr.GetValue(clip);
            int len = pr.GetValue(length), windows = pr.GetValue(evalWindows);
            if (total < 1) throw new UsageException($"--steps must be at least 1, got {total}");
            if (bs < 1) throw new UsageException($"--batch-size must be at least 1, got {bs}");
            if (len < 2) throw new UsageException($"--length must be at least 2, got {len}");
            if (windows < 0) throw new UsageException($"--eval-windows must be >= 0, got {windows}");
            if (!double.IsFinite(rate) || rate <= 0) throw new UsageException("--lr must be positive");
            if (!double.IsFinite(decay) || decay < 0) throw new UsageException("--weight-decay must be >= 0");
            if (!double.IsFinite(gradClip) || gradClip < 0) throw new UsageException("--grad-clip must be >= 0");
            if (pr.GetValue(warmup) is long w && (w < 0 || w > total)) throw new UsageException($"--warmup-steps must be in 0..{total}, got {w}");
            foreach (var (name, v) in new[] { ("--eval-every", pr.GetValue(evalEvery)), ("--checkpoint-every", pr.GetValue(ckEvery)) })
                if (v is < 0) throw new UsageException($"{name} must be >= 0");
            if (pr.GetValue(logEvery) < 0) throw new UsageException("--log-every must be >= 0");
            var mixed = Cli.ParsePrecision(pr.GetValue(precision));
            string? initDir = pr.GetValue(init);
            string? modelType = pr.GetValue(type)?.Trim().ToLowerInvariant();
            if (initDir is not null && pretraining) throw new UsageException($"--init fine-tunes a classifier; --task {t} trains from scratch");
            if (initDir is not null && (modelType is not null || pr.GetValue(preset) is not null || pr.GetValue(set) is { Length: > 0 }))
                throw new UsageException("--init takes the architecture from its folder: leave out --model-type, --preset and --set");
            string wantType = t == "lm" ? DnaModel.CausalModelType : DnaModel.CaduceusModelType;
            if (modelType is not null && modelType != wantType)
                throw new UsageException(t == "lm" ? $"--task lm trains a {DnaModel.CausalModelType}; for a caduceus model use --task mlm"
                                                    : $"--task {t} trains a {DnaModel.CaduceusModelType} model, not {modelType}");

            string outDir = pr.GetValue(output)!;
            bool resuming = pr.GetValue(resume);
            bool existing = Directory.Exists(outDir) && (File.Exists(Path.Combine(outDir, ModelFolder.ConfigFile)) || Trainer.LatestCheckpoint(outDir) is not null);
            if (existing && !resuming)
                throw new UsageException($"{outDir}: already holds a training run; pass --resume to continue it, or choose another --out");

            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            long runSeed = pr.GetValue(seed);
            long every = pr.GetValue(evalEvery) ?? Math.Max(1, total / 10);
            var options = new TrainOptions
            {
                Steps = total, LearningRate = rate, WeightDecay = decay, Beta1 = 0.9, Beta2 = 0.95,
                WarmupSteps = pr.GetValue(warmup) ?? (long)Math.Round(0.02 * total), MinLrRatio = 0.1, GradClip = gradClip,
                EvalEvery = every, CheckpointEvery = pr.GetValue(ckEvery) ?? every, LogEvery = pr.GetValue(logEvery),
                Seed = runSeed, OutputDir = outDir, Resume = resuming,
            };
            var dto = new DnaTrainOptions
            {
                BatchSize = bs, SeqLen = len, EvalWindows = windows, EvalSeed = pr.GetValue(evalSeed), RcAugment = !pr.GetValue(noRc),
                EvalBatch = pretraining ? 16 : 256, Precision = mixed,
            };
            var sets = ParseSets(pr.GetValue(set)).ToList();
            torch.manual_seed(runSeed);
            var summary = new JsonObject { ["task"] = t, ["out"] = outDir };
            TrainResult result;
            DnaModel model;
            if (pretraining)
            {
                using var human = DnaDatasets.OpenHuman(pr.GetValue(data));
                var train = DnaDatasets.WindowSource(human.Split("train"));
                var valid = DnaDatasets.WindowSource(human.Split("valid"));
                model = DnaModel.Create(wantType, pr.GetValue(preset), sets).To(dev);
                using (model)
                {
                    Console.Error.WriteLine($"human train: {string.Join(", ", human.Split("train").Select(f => f.Name))}; valid: {string.Join(", ", human.Split("valid").Select(f => f.Name))} ({human.Directory})");
                    result = t == "lm" ? DnaTraining.TrainCausal(model, train, valid, options, dto, Cli.Interrupt)
                                       : DnaTraining.TrainMaskedLM(model, train, valid, options, dto, Cli.Interrupt);
                    Describe(summary, model, result, total);
                    if (result.Steps >= total && windows > 0)
                    {
                        summary["valid_windows"] = windows;
                        summary["window_length"] = len;
                        summary["eval_seed"] = dto.EvalSeed;
                        if (t == "lm")
                        {
                            var s = result.LastEval.TryGetValue("valid_bits_per_base", out double bpb) ? null : EvalLm(model, valid, windows, len, dto.EvalSeed, dto.EvalBatch);
                            summary["valid_bits_per_base"] = Json(s?.BitsPerBase ?? bpb);
                        }
                        else
                        {
                            double loss, acc;
                            if (!(result.LastEval.TryGetValue("valid_mlm_loss", out loss) && result.LastEval.TryGetValue("valid_mlm_accuracy", out acc)))
                            {
                                using var ids = DnaTraining.ValidationWindows(valid, windows, len, dto.EvalSeed);
                                (loss, acc, _) = DnaTraining.EvalMaskedLM(model, ids, dto.EvalSeed, dto.EvalBatch, dto.MaskRate);
                            }
                            summary["valid_mlm_loss"] = Json(loss);
                            summary["valid_mlm_accuracy"] = Json(acc);
                        }
                    }
                }
            }
            else
            {
                var ds = DnaDatasets.LoadTask(t, pr.GetValue(data));
                var trainSet = LabelledSet(ds.Split("train"), $"{t} train split");
                DnaLabelledSet? validSet = null, testSet = null;
                try
                {
                    if (pr.GetValue(evalLimit) is < 1) throw new UsageException("--eval-limit must be at least 1");
                    // Every k-th sequence, so that a subset still covers every block of a split ordered by block.
                    IReadOnlyList<LabeledSequence> Spread(IReadOnlyList<LabeledSequence> items) =>
                        pr.GetValue(evalLimit) is int n && n < items.Count ? items.Where((_, i) => i % (items.Count / n) == 0).Take(n).ToList() : items;
                    validSet = LabelledSet(Spread(ds.Split("valid")), $"{t} valid split");
                    testSet = ds.Items.Any(i => i.Split == "test") ? LabelledSet(Spread(ds.Split("test")), $"{t} test split") : null;
                    model = initDir is not null ? DnaModel.ClassifierFromPretrained(initDir, ds.Labels, dev)
                                                : DnaModel.Create(wantType, pr.GetValue(preset), sets, ds.Labels).To(dev);
                    using (model)
                    {
                        if (initDir is not null) Console.Error.WriteLine($"fine-tuning from {initDir} (new classification head for {string.Join(", ", ds.Labels)})");
                        result = DnaTraining.TrainClassifier(model, trainSet, validSet, options, dto, Cli.Interrupt);
                        Describe(summary, model, result, total);
                        summary["init"] = initDir;
                        summary["labels"] = new JsonArray(ds.Labels.Select(l => (JsonNode?)l).ToArray());
                        summary["train_count"] = trainSet.Count;
                        if (result.Steps >= total)
                        {
                            var v = DnaTraining.EvalClassifier(model, validSet, dto.EvalBatch);
                            summary["valid_accuracy"] = v.Accuracy;
                            summary["valid_loss"] = Json(v.Loss);
                            summary["valid_count"] = v.Count;
                            if (testSet is not null)
                            {
                                var e = DnaTraining.EvalClassifier(model, testSet, dto.EvalBatch);
                                summary["test_accuracy"] = e.Accuracy;
                                summary["test_loss"] = Json(e.Loss);
                                summary["test_count"] = e.Count;
                                summary["test_confusion"] = ConfusionJson(e, ds.Labels);
                            }
                        }
                    }
                }
                finally
                {
                    Dispose(trainSet);
                    Dispose(validSet);
                    Dispose(testSet);
                }
            }

            bool done = result.Steps >= total;
            if (done) AtomicFile.WriteAllText(Path.Combine(outDir, "eval.json"), summary.ToJsonString(Indented) + "\n");
            if (pr.GetValue(json)) Print(summary);
            else if (!done) Console.WriteLine($"stopped at step {result.Steps} of {total}; continue with --resume");
            else
            {
                Console.WriteLine($"trained {summary["model_type"]!.GetValue<string>()} ({summary["parameters"]!.GetValue<long>():N0} parameters) for {result.Steps} steps: {outDir}");
                if (summary["valid_bits_per_base"] is JsonNode b)
                    Console.WriteLine($"validation: {Num(b.GetValue<double>(), "0.0000")} bits/base on {windows} fixed windows of {len} bases of the human valid split");
                if (summary["valid_mlm_loss"] is JsonNode ml && summary["valid_mlm_accuracy"] is JsonNode ma)
                    Console.WriteLine($"validation: masked-LM loss {Num(ml.GetValue<double>(), "0.0000")} nats, accuracy {Num(100 * ma.GetValue<double>(), "0.00")}% on {windows} fixed windows of {len} bases");
                if (summary["valid_accuracy"] is JsonNode va)
                    Console.WriteLine($"valid accuracy {Num(100 * va.GetValue<double>(), "0.00")}% ({summary["valid_count"]} sequences)");
                if (summary["test_accuracy"] is JsonNode ta)
                    Console.WriteLine($"test accuracy {Num(100 * ta.GetValue<double>(), "0.00")}% ({summary["test_count"]} sequences)");
                Console.WriteLine($"wrote {Path.Combine(outDir, "eval.json")}");
            }
            return done ? Cli.Ok : Cli.Interrupted;
        }));
        return cmd;
    }

    static void Describe(JsonObject summary, DnaModel model, TrainResult result, long total)
    {
        summary["model_type"] = model.ModelType;
        summary["model_task"] = DnaModel.TaskName(model.Task);
        summary["parameters"] = model.ParameterCount;
        summary["steps"] = result.Steps;
        summary["completed"] = result.Steps >= total;
        summary["resumed_from"] = result.ResumedFrom;
        summary["final_train_loss"] = Json(result.LastLoss);                                 // nats (per base or per sequence)
        if (model.Task == DnaTask.CausalLM) summary["final_train_bits_per_base"] = Json(result.LastLoss / Math.Log(2));
    }

    // ------------------------------------------------------------------ eval

    static Command EvalCommand(Defaults defaults)
    {
        var model = ModelOption($"the embedded {DefaultModelName}; with --task and no --model, the task's embedded classifier");
        var data = DataOption();
        var windows = new Option<int>("--windows") { Description = "LM: fixed validation windows of the human valid split", DefaultValueFactory = _ => DefaultEvalWindows };
        var length = new Option<int>("--length") { Description = "LM: bases per window", DefaultValueFactory = _ => DefaultEvalLength };
        var seed = new Option<long>("--seed") { Description = "LM: seed of the windows (the same seed, count and length give the same windows everywhere)", DefaultValueFactory = _ => DefaultEvalSeed };
        var task = TaskOption("classifier: the labelled task to measure on (splice, apes, promoters; default: the one whose labels the model has)");
        var split = new Option<string>("--split") { Description = "classifier: the split to measure on (train, valid, test)", DefaultValueFactory = _ => "test" }.AcceptOnlyFromAmong("train", "valid", "test");
        var conjoin = new Option<bool>("--conjoin") { Description = "classifier: average the logits of each sequence and its reverse complement" };
        var batch = new Option<int>("--batch-size", "--batch") { Description = "windows or sequences per forward pass", DefaultValueFactory = _ => 16 };
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption("the numbers");
        var cmd = new Command("eval",
            "A language model's bits per base on fixed validation windows of the human valid split (drawn with --seed; the numbers " +
            "of the model card, and the windows of `baselines --markov`), a masked LM's masked-base loss and accuracy on them, " +
            "or a classifier's accuracy and confusion matrix on a split of its task.")
        {
            model, data, windows, length, seed, task, split, conjoin, batch, device, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string? t = pr.GetValue(task) is { } given ? CheckTask(given, DnaDatasets.TaskLabels.Keys.ToArray()) : null;
            int n = pr.GetValue(windows), len = pr.GetValue(length), bs = pr.GetValue(batch);
            if (n < 1) throw new UsageException($"--windows must be at least 1, got {n}");
            if (len < 1) throw new UsageException($"--length must be at least 1, got {len}");
            if (bs < 1) throw new UsageException($"--batch-size must be at least 1, got {bs}");
            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            string dir = pr.GetValue(model) is null && t is not null ? ResolveClassifier(null, t, defaults) : ResolveLm(pr.GetValue(model), defaults);
            using var m = DnaModel.Load(dir, dev);
            bool asJson = pr.GetValue(json);
            var doc = new JsonObject { ["model"] = dir, ["model_type"] = m.ModelType, ["model_task"] = DnaModel.TaskName(m.Task), ["parameters"] = m.ParameterCount };
            if (m.Task == DnaTask.SequenceClassification)
            {
                t ??= DnaDatasets.TaskLabels.FirstOrDefault(kv => kv.Value.SequenceEqual(m.Labels)).Key
                      ?? throw new UsageException($"{dir}: labels {string.Join(", ", m.Labels)} match no task; give --task");
                var ds = DnaDatasets.LoadTask(t, pr.GetValue(data));
                if (!ds.Labels.SequenceEqual(m.Labels))
                    throw new InvalidDataException($"{dir}: its labels ({string.Join(", ", m.Labels)}) are not those of the {t} data ({string.Join(", ", ds.Labels)})");
                string sp = pr.GetValue(split)!;
                var set = LabelledSet(ds.Split(sp), $"{t} {sp} split");
                try
                {
                    var e = DnaTraining.EvalClassifier(m, set, Math.Max(bs, 64), pr.GetValue(conjoin));
                    doc["task"] = t; doc["split"] = sp; doc["conjoin"] = pr.GetValue(conjoin);
                    doc["accuracy"] = e.Accuracy; doc["loss"] = e.Loss; doc["count"] = e.Count; doc["confusion"] = ConfusionJson(e, ds.Labels);
                    if (asJson) Print(doc);
                    else
                    {
                        Console.WriteLine($"{t} {sp}: accuracy {Num(100 * e.Accuracy, "0.00")}% on {e.Count:N0} sequences, loss {Num(e.Loss, "0.0000")} nats " +
                                          $"({m.ModelType}{(pr.GetValue(conjoin) ? ", conjoined" : "")}, {dir})");
                        Console.WriteLine(FormatConfusion(e, ds.Labels));
                    }
                }
                finally { Dispose(set); }
                return Cli.Ok;
            }
            if (t is not null) throw new UsageException($"--task measures classifiers; {dir} is a {DnaModel.TaskName(m.Task)} model");
            using var human = DnaDatasets.OpenHuman(pr.GetValue(data));
            var valid = human.Split("valid");
            var source = DnaDatasets.WindowSource(valid);
            long seedValue = pr.GetValue(seed);
            doc["data"] = human.Directory; doc["split"] = "valid"; doc["sequences"] = new JsonArray(valid.Select(f => (JsonNode?)f.Name).ToArray());
            doc["windows"] = n; doc["window_length"] = len; doc["seed"] = seedValue;
            if (m.Task == DnaTask.CausalLM)
            {
                var s = EvalLm(m, source, n, len, seedValue, bs);
                doc["bits_per_base"] = Json(s.BitsPerBase); doc["scored_bases"] = s.Bases; doc["skipped"] = s.Skipped; doc["nats"] = s.Nats;
                if (asJson) Print(doc);
                else Console.WriteLine($"human valid ({string.Join(", ", valid.Select(f => f.Name))}): {Num(s.BitsPerBase, "0.0000")} bits/base over {s.Bases:N0} bases " +
                                       $"({n} windows of {len}, seed {seedValue}; {m.ModelType}, {dir})");
                return Cli.Ok;
            }
            using (var ids = DnaTraining.ValidationWindows(source, n, len, seedValue))
            {
                var (loss, acc, masked) = DnaTraining.EvalMaskedLM(m, ids, seedValue, bs);
                doc["mlm_loss"] = Json(loss); doc["mlm_accuracy"] = Json(acc); doc["masked"] = masked;
                if (asJson) Print(doc);
                else Console.WriteLine($"human valid: masked-LM loss {Num(loss, "0.0000")} nats, accuracy {Num(100 * acc, "0.00")}% over {masked:N0} masked bases " +
                                       $"({n} windows of {len}, seed {seedValue}; {dir})");
            }
            return Cli.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ baselines

    static Command BaselinesCommand()
    {
        var markov = new Option<bool>("--markov") { Description = "order-k Markov chains (k = 0..--max-order) fitted on the human train split, scored on eval's fixed validation windows" };
        var maxOrder = new Option<int>("--max-order") { Description = "highest Markov order", DefaultValueFactory = _ => 8 };
        var alpha = new Option<double>("--alpha") { Description = "add-alpha smoothing of the Markov counts", DefaultValueFactory = _ => 1.0 };
        var windows = new Option<int>("--windows") { Description = "Markov: validation windows (as eval --windows)", DefaultValueFactory = _ => DefaultEvalWindows };
        var length = new Option<int>("--length") { Description = "Markov: bases per window (as eval --length)", DefaultValueFactory = _ => DefaultEvalLength };
        var seed = new Option<long>("--seed") { Description = "Markov: seed of the windows (as eval --seed); k-mer: seed of the minibatches", DefaultValueFactory = _ => DefaultEvalSeed };
        var kmer = new Option<bool>("--kmer") { Description = "a k-mer frequency logistic regression on --task (fitted on train; valid and test accuracy)" };
        var task = TaskOption("the labelled task of --kmer: splice, apes, promoters");
        var ks = new Option<string>("--k") { Description = "k-mer sizes of --kmer, comma-separated", DefaultValueFactory = _ => "1,2,3,4" };
        var kmerSteps = new Option<int>("--kmer-steps") { Description = "Adam steps of the logistic regression", DefaultValueFactory = _ => 300 };
        var l2 = new Option<double>("--l2") { Description = "L2 penalty of the logistic regression", DefaultValueFactory = _ => 1e-3 };
        var data = DataOption();
        var json = Cli.JsonOption("the tables");
        var cmd = new Command("baselines",
            "Non-neural baselines measured the way the models are: --markov gives bits/base of order-0..8 Markov chains on the SAME " +
            "fixed validation windows that `eval` scores (same --windows, --length, --seed; the first bases of a window use the " +
            "highest order their context allows, as the LM starts from [BOS]); --kmer --task T gives a k-mer logistic regression's accuracy.")
        {
            markov, maxOrder, alpha, windows, length, seed, kmer, task, ks, kmerSteps, l2, data, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            bool doMarkov = pr.GetValue(markov), doKmer = pr.GetValue(kmer);
            if (!doMarkov && !doKmer) throw new UsageException("choose --markov and/or --kmer --task TASK");
            string? t = pr.GetValue(task) is { } given ? CheckTask(given, DnaDatasets.TaskLabels.Keys.ToArray()) : null;
            if (doKmer && t is null) throw new UsageException("--kmer needs --task (splice, apes or promoters)");
            int k = pr.GetValue(maxOrder), n = pr.GetValue(windows), len = pr.GetValue(length);
            if (k < 0 || k > MarkovChain.MaxSupportedOrder) throw new UsageException($"--max-order must be in 0..{MarkovChain.MaxSupportedOrder}, got {k}");
            if (n < 1 || len < 1) throw new UsageException("--windows and --length must be at least 1");
            double a = pr.GetValue(alpha);
            if (!(a > 0) || !double.IsFinite(a)) throw new UsageException("--alpha must be positive");
            int[] kmerKs = ParseKs(pr.GetValue(ks)!);
            bool asJson = pr.GetValue(json);
            var doc = new JsonObject();
            long seedValue = pr.GetValue(seed);

            if (doMarkov)
            {
                using var human = DnaDatasets.OpenHuman(pr.GetValue(data));
                var train = human.Split("train");
                var chains = Enumerable.Range(0, k + 1).Select(o => new MarkovChain(o, a)).ToArray();
                using (var bar = new ProgressBar("fit markov", train.Sum(f => f.Length), "bases"))
                    foreach (var f in train)
                        foreach (var (start, count) in f.Chunks(1 << 30))
                        {
                            MarkovChain.FitMany(chains, f.Slice(start, count));
                            bar.Advance(count, f.Name);
                        }
                var valid = DnaTraining.ValidationWindowBytes(DnaDatasets.WindowSource(human.Split("valid")), n, len, seedValue);
                var scores = MarkovChain.ScoreWithBackoff(chains, valid);
                var table = new JsonArray(scores.Select((s, o) => (JsonNode?)new JsonObject
                {
                    ["order"] = o, ["valid_bits_per_base"] = Json(s.BitsPerBase), ["scored_bases"] = s.Scored,
                }).ToArray());
                doc["markov"] = new JsonObject
                {
                    ["data"] = human.Directory, ["train"] = new JsonArray(train.Select(f => (JsonNode?)f.Name).ToArray()),
                    ["valid"] = new JsonArray(human.Split("valid").Select(f => (JsonNode?)f.Name).ToArray()),
                    ["windows"] = n, ["window_length"] = len, ["seed"] = seedValue, ["alpha"] = a, ["orders"] = table,
                };
                if (!asJson)
                {
                    Console.WriteLine($"Markov chains fitted on {string.Join(", ", train.Select(f => f.Name))} (add-{a.ToString(Inv)}), " +
                                      $"scored on {n} validation windows of {len} bases of {string.Join(", ", human.Split("valid").Select(f => f.Name))} (seed {seedValue}):");
                    Console.WriteLine("order\tvalid_bits_per_base\tscored_bases");
                    for (int o = 0; o < scores.Length; o++) Console.WriteLine($"{o}\t{Num(scores[o].BitsPerBase, "0.0000")}\t{scores[o].Scored}");
                }
            }
            if (doKmer)
            {
                var ds = DnaDatasets.LoadTask(t!, pr.GetValue(data));
                var train = ds.Split("train");
                var options = new KmerLogisticOptions { Ks = kmerKs, Steps = pr.GetValue(kmerSteps), L2 = pr.GetValue(l2), Seed = (int)(seedValue & int.MaxValue) };
                if (options.Steps < 1) throw new UsageException("--kmer-steps must be at least 1");
                Console.Error.WriteLine($"fitting a k-mer (k = {string.Join(",", kmerKs)}) logistic regression on {train.Count:N0} {t} training sequences");
                var fit = KmerLogistic.Fit(train.Select(i => i.Sequence).ToList(), train.Select(i => i.Label).ToList(), ds.Labels.Count, options);
                var result = new JsonObject { ["task"] = t, ["k"] = new JsonArray(kmerKs.Select(x => (JsonNode?)x).ToArray()), ["steps"] = options.Steps, ["l2"] = options.L2 };
                foreach (var sp in new[] { "train", "valid", "test" })
                {
                    if (!ds.Items.Any(i => i.Split == sp)) continue;
                    var items = ds.Split(sp);
                    result[$"{sp}_accuracy"] = fit.Accuracy(items.Select(i => i.Sequence).ToList(), items.Select(i => i.Label).ToList());
                    result[$"{sp}_count"] = items.Count;
                }
                doc["kmer"] = result;
                if (!asJson)
                {
                    Console.WriteLine($"k-mer logistic regression on {t} (k = {string.Join(",", kmerKs)}, {options.Steps} steps, L2 {options.L2.ToString(Inv)}):");
                    foreach (var sp in new[] { "train", "valid", "test" })
                        if (result[$"{sp}_accuracy"] is JsonNode acc)
                            Console.WriteLine($"{sp}\t{Num(100 * acc.GetValue<double>(), "0.00")}%\t({result[$"{sp}_count"]} sequences)");
                }
            }
            if (asJson) Print(doc);
            return Cli.Ok;
        }));
        return cmd;
    }

    static int[] ParseKs(string text)
    {
        var ks = Cli.ParseIds(text, "--k");
        foreach (int k in ks)
            if (k is < 1 or > 10) throw new UsageException($"--k: k = {k} outside 1..10");
        return ks;
    }

    // ------------------------------------------------------------------ info

    static Command InfoCommand(Defaults defaults)
    {
        var model = ModelOption($"the embedded {DefaultModelName}");
        var task = TaskOption("describe the embedded classifier of this task (splice or apes) instead");
        var type = new Option<string?>("--model-type") { Description = $"describe a fresh model of this type instead ({string.Join(", ", DnaModel.ModelTypes)}; with --preset, --set)" };
        var preset = new Option<string?>("--preset") { Description = "preset of --model-type" };
        var set = new Option<string[]>("--set") { Description = "change a config field of --model-type, FIELD=VALUE", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var json = Cli.JsonOption("the description");
        var cmd = new Command("info", "A model's type, task, parameter count, size, labels and config.") { model, task, type, preset, set, json };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string? t = pr.GetValue(type);
            string? tk = pr.GetValue(task) is { } given ? CheckTask(given, DnaDatasets.TaskLabels.Keys.ToArray()) : null;
            if (t is null && (pr.GetValue(preset) is not null || pr.GetValue(set) is { Length: > 0 }))
                throw new UsageException("--preset and --set describe a fresh model: give --model-type too");
            if (new[] { t is not null, pr.GetValue(model) is not null, tk is not null }.Count(x => x) > 1)
                throw new UsageException("give one of --model, --task and --model-type");
            string? dir = t is not null ? null : tk is not null ? ResolveClassifier(null, tk, defaults) : ResolveLm(pr.GetValue(model), defaults);
            using var m = dir is not null ? DnaModel.Load(dir) : DnaModel.Create(t!, pr.GetValue(preset), ParseSets(pr.GetValue(set)).ToList());
            long bytes = m.Module.parameters().DistinctBy(p => p.Handle).Sum(p => p.numel() * p.element_size());
            var config = m.ConfigJson();
            if (pr.GetValue(json))
            {
                Print(new JsonObject
                {
                    ["model"] = dir, ["model_type"] = m.ModelType, ["task"] = DnaModel.TaskName(m.Task), ["parameters"] = m.ParameterCount, ["bytes"] = bytes,
                    ["rc_equivariant"] = m.IsRcEquivariant, ["labels"] = new JsonArray(m.Labels.Select(l => (JsonNode?)l).ToArray()), ["config"] = config,
                });
                return Cli.Ok;
            }
            Console.WriteLine($"{(dir ?? $"a fresh {t} ({pr.GetValue(preset) ?? "small"})")}: {m.ModelType} {DnaModel.TaskName(m.Task)}, " +
                              $"{m.ParameterCount:N0} parameters ({Num(bytes / 1e6, "0.0")} MB){(m.IsRcEquivariant ? ", RC-equivariant" : "")}" +
                              (m.Labels.Count > 0 ? $", labels {string.Join(", ", m.Labels)}" : ""));
            Console.WriteLine(config.ToJsonString(Indented));
            return Cli.Ok;
        }));
        return cmd;
    }
}
